//! Block-quantized rows dequantized straight to bf16, for the AMX tiles: one pass over the
//! blocks with no f32 rows in between, written as plain loops over each block's runs of 32 (or
//! 16) values that the compiler vectorises. Each value is computed as ggml computes it in f32
//! (the same operations in the same order as [`super::quant_dot::dequantize_row`], the slow
//! twin), then rounded to the nearest bf16.

use half::bf16;

use super::isa::Isa;
use crate::weights::QuantType;

/// Whether [`dequantize_rows_bf16`] takes this format.
pub fn supports(ty: QuantType) -> bool {
    matches!(ty, QuantType::Q8_0 | QuantType::Q4K | QuantType::Q6K)
}

/// Rows of `ty` blocks (`w`, whole blocks) into `out`, one bf16 per value, on the current
/// [`Isa`].
///
/// # Panics
/// If `ty` is not supported or `out` does not hold exactly the blocks' values.
pub fn dequantize_rows_bf16(ty: QuantType, w: &[u8], out: &mut [bf16]) {
    dequantize_rows_bf16_on(Isa::current(), ty, w, out)
}

/// [`dequantize_rows_bf16`] compiled for `isa`: the same loops, vectorised 512 or 256 bits wide
/// (the portable build is SSE2, which leaves this pass as slow as the tile product it feeds).
///
/// # Panics
/// As [`dequantize_rows_bf16`], or if this CPU lacks `isa`.
pub fn dequantize_rows_bf16_on(isa: Isa, ty: QuantType, w: &[u8], out: &mut [bf16]) {
    assert!(supports(ty) && isa.is_supported());
    assert!(w.len().is_multiple_of(ty.block_bytes()));
    assert_eq!(out.len(), w.len() / ty.block_bytes() * ty.block_len());
    match isa {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: the CPU has AVX-512 F/BW/VL (asserted: part of this level).
        Isa::Avx512 | Isa::Avx512Bf16 | Isa::Amx => unsafe { x86::avx512(ty, w, out) },
        #[cfg(target_arch = "x86_64")]
        // SAFETY: the CPU has AVX2, FMA and F16C (asserted).
        Isa::Avx2 => unsafe { x86::avx2(ty, w, out) },
        _ => blocks(ty, w, out),
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::*;

    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma,f16c")]
    pub unsafe fn avx512(ty: QuantType, w: &[u8], out: &mut [bf16]) {
        blocks(ty, w, out)
    }

    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn avx2(ty: QuantType, w: &[u8], out: &mut [bf16]) {
        blocks(ty, w, out)
    }
}

/// Every block, inlined into whichever build calls it. Plain loops, no closures: a closure's
/// body is compiled without the calling build's target features, which left this pass SSE2 on
/// every build (7 % of a Q4_K_M prefill).
#[inline(always)]
fn blocks(ty: QuantType, w: &[u8], out: &mut [bf16]) {
    let blocks = w
        .chunks_exact(ty.block_bytes())
        .zip(out.chunks_exact_mut(ty.block_len()));
    match ty {
        QuantType::Q8_0 => {
            for (blk, y) in blocks {
                q8_0(blk, y)
            }
        }
        QuantType::Q4K => {
            for (blk, y) in blocks {
                q4_k(blk, y)
            }
        }
        _ => {
            for (blk, y) in blocks {
                q6_k(blk, y)
            }
        }
    }
}

#[inline(always)]
fn f16_at(b: &[u8], at: usize) -> f32 {
    half::f16::from_le_bytes([b[at], b[at + 1]]).to_f32()
}

/// Round to nearest even, as `bf16::from_f32` does for finite values, without its NaN branch so
/// the loops vectorise; a block whose scales are not finite takes `bf16::from_f32` instead.
#[inline(always)]
fn round_finite(v: f32) -> bf16 {
    let bits = v.to_bits();
    bf16::from_bits((bits.wrapping_add(0x7FFF + ((bits >> 16) & 1)) >> 16) as u16)
}

/// [d: f16][32 × i8]
#[inline(always)]
fn q8_0(blk: &[u8], y: &mut [bf16]) {
    let d = f16_at(blk, 0);
    if d.is_finite() {
        q8_0_rounded(blk, y, d, round_finite)
    } else {
        q8_0_rounded(blk, y, d, bf16::from_f32)
    }
}

// Each format's body takes its rounding as a type parameter: the branch-free one when the
// block's scales are finite (so every value is), half's otherwise (a corrupt block's NaN stays
// NaN), each compiled on its own so the common one vectorises.

#[inline(always)]
fn q8_0_rounded(blk: &[u8], y: &mut [bf16], d: f32, round: impl Fn(f32) -> bf16) {
    for (y, &q) in y.iter_mut().zip(&blk[2..34]) {
        *y = round(d * f32::from(q as i8));
    }
}

/// [d: f16][dmin: f16][12 bytes of 6-bit scales and mins][128 bytes of nibbles]: four runs of
/// 64 values, low nibbles then high, each half with its own scale and min.
#[inline(always)]
fn q4_k(blk: &[u8], y: &mut [bf16]) {
    let (d, dmin) = (f16_at(blk, 0), f16_at(blk, 2));
    if d.is_finite() && dmin.is_finite() {
        q4_k_rounded(blk, y, d, dmin, round_finite)
    } else {
        q4_k_rounded(blk, y, d, dmin, bf16::from_f32)
    }
}

#[inline(always)]
fn q4_k_rounded(blk: &[u8], y: &mut [bf16], d: f32, dmin: f32, round: impl Fn(f32) -> bf16) {
    let (sc, m) = super::quant_dot::scales_mins_k4(&blk[4..16]);
    for (j, (qs, y)) in blk[16..144]
        .chunks_exact(32)
        .zip(y.chunks_exact_mut(64))
        .enumerate()
    {
        let (s_lo, m_lo) = (d * f32::from(sc[2 * j]), dmin * f32::from(m[2 * j]));
        let (s_hi, m_hi) = (d * f32::from(sc[2 * j + 1]), dmin * f32::from(m[2 * j + 1]));
        let (lo, hi) = y.split_at_mut(32);
        for ((lo, hi), &q) in lo.iter_mut().zip(hi.iter_mut()).zip(qs) {
            *lo = round(s_lo * f32::from(q & 0xF) - m_lo);
            *hi = round(s_hi * f32::from(q >> 4) - m_hi);
        }
    }
}

/// [ql: 128][qh: 64][16 × i8 scales][d: f16]: two halves of 128 values; in each, value
/// 32i + l takes a nibble of ql (low for i < 2) and two bits of qh, minus 32, times the scale of
/// its 16-value group.
#[inline(always)]
fn q6_k(blk: &[u8], y: &mut [bf16]) {
    let d = f16_at(blk, 208);
    if d.is_finite() {
        q6_k_rounded(blk, y, d, round_finite)
    } else {
        q6_k_rounded(blk, y, d, bf16::from_f32)
    }
}

#[inline(always)]
fn q6_k_rounded(blk: &[u8], y: &mut [bf16], d: f32, round: impl Fn(f32) -> bf16) {
    for (n, y) in y.chunks_exact_mut(128).enumerate() {
        let ql = &blk[64 * n..64 * n + 64];
        let qh = &blk[128 + 32 * n..128 + 32 * n + 32];
        let sc = &blk[192 + 8 * n..192 + 8 * n + 8];
        for (i, y) in y.chunks_exact_mut(32).enumerate() {
            for (l, y) in y.iter_mut().enumerate() {
                let low = ql[32 * (i % 2) + l];
                let nibble = if i < 2 { low & 0xF } else { low >> 4 };
                let q = i32::from(nibble | (((qh[l] >> (2 * i)) & 3) << 4)) - 32;
                *y = round(d * f32::from(sc[2 * i + l / 16] as i8) * q as f32);
            }
        }
    }
}
