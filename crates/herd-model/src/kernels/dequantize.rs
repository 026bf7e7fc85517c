//! Block-quantized rows dequantized straight to the panels of a prefill product: bf16 for AMX
//! tiles and `vdpbf16ps`, f32 for the gemm kernel elsewhere. One pass over the blocks, written
//! as plain loops over each block's runs of 32 (or 16) values that the compiler vectorises.
//! Each value is computed as ggml computes it in f32 (the same operations in the same order as
//! [`crate::weights::QuantTensor::dequantize_rows_into`], the slow twin: candle's `to_float`,
//! herd's i-quant reading), then, for bf16, rounded to the nearest. Every format herd reads has
//! its loop (the match in `blocks` is exhaustive).

use half::bf16;

use super::isa::Isa;
use crate::weights::{iquant, QuantType};

/// What a panel holds: the f32 value as computed, or rounded.
pub trait Element: Copy {
    /// `v`, known finite (so the rounding needs no NaN branch and vectorises).
    fn finite(v: f32) -> Self;
    /// Any `v` (a corrupt block's NaN stays NaN).
    fn any(v: f32) -> Self;
}

impl Element for f32 {
    #[inline(always)]
    fn finite(v: f32) -> f32 {
        v
    }
    #[inline(always)]
    fn any(v: f32) -> f32 {
        v
    }
}

impl Element for bf16 {
    #[inline(always)]
    fn finite(v: f32) -> bf16 {
        round_finite(v)
    }
    #[inline(always)]
    fn any(v: f32) -> bf16 {
        bf16::from_f32(v)
    }
}

/// Rows of `ty` blocks (`w`, whole blocks) into `out`, one bf16 per value, on the current
/// [`Isa`].
///
/// # Panics
/// If `out` does not hold exactly the blocks' values.
pub fn dequantize_rows_bf16(ty: QuantType, w: &[u8], out: &mut [bf16]) {
    dequantize_rows_on(Isa::current(), ty, w, out)
}

/// Rows of `ty` blocks into bf16 or f32 values (f32: the weight's own values, bit for bit),
/// compiled for `isa`: the same loops, vectorised 512 or 256 bits wide (the portable build is
/// SSE2, which leaves this pass as slow as the tile product it feeds).
///
/// # Panics
/// As [`dequantize_rows_bf16`], or if this CPU lacks `isa`.
pub fn dequantize_rows_on<T: Element>(isa: Isa, ty: QuantType, w: &[u8], out: &mut [T]) {
    assert!(isa.is_supported());
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
    pub unsafe fn avx512<T: Element>(ty: QuantType, w: &[u8], out: &mut [T]) {
        blocks(ty, w, out)
    }

    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn avx2<T: Element>(ty: QuantType, w: &[u8], out: &mut [T]) {
        blocks(ty, w, out)
    }
}

/// Every block, inlined into whichever build calls it. Plain loops, no closures: a closure's
/// body is compiled without the calling build's target features, which left this pass SSE2 on
/// every build (7 % of a Q4_K_M prefill).
#[inline(always)]
fn blocks<T: Element>(ty: QuantType, w: &[u8], out: &mut [T]) {
    let blocks = w
        .chunks_exact(ty.block_bytes())
        .zip(out.chunks_exact_mut(ty.block_len()));
    // One loop per arm, so each format's body is inlined and vectorised on its own.
    match ty {
        QuantType::Q8_0 => {
            for (blk, y) in blocks {
                q8_0(blk, y)
            }
        }
        QuantType::Q4_0 => {
            for (blk, y) in blocks {
                legacy::<T, false, false>(blk, y)
            }
        }
        QuantType::Q4_1 => {
            for (blk, y) in blocks {
                legacy::<T, false, true>(blk, y)
            }
        }
        QuantType::Q5_0 => {
            for (blk, y) in blocks {
                legacy::<T, true, false>(blk, y)
            }
        }
        QuantType::Q5_1 => {
            for (blk, y) in blocks {
                legacy::<T, true, true>(blk, y)
            }
        }
        QuantType::Q2K => {
            for (blk, y) in blocks {
                q2_k(blk, y)
            }
        }
        QuantType::Q3K => {
            for (blk, y) in blocks {
                q3_k(blk, y)
            }
        }
        QuantType::Q4K => {
            for (blk, y) in blocks {
                q4_k(blk, y)
            }
        }
        QuantType::Q5K => {
            for (blk, y) in blocks {
                q5_k(blk, y)
            }
        }
        QuantType::Q6K => {
            for (blk, y) in blocks {
                q6_k(blk, y)
            }
        }
        QuantType::Iq4Nl => {
            for (blk, y) in blocks {
                iq4_nl(blk, y)
            }
        }
        QuantType::Iq4Xs => {
            for (blk, y) in blocks {
                iq4_xs(blk, y)
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
fn q8_0<T: Element>(blk: &[u8], y: &mut [T]) {
    let d = f16_at(blk, 0);
    if d.is_finite() {
        q8_0_rounded(blk, y, d, T::finite)
    } else {
        q8_0_rounded(blk, y, d, T::any)
    }
}

// Each format's body takes its rounding as a type parameter: the branch-free one when the
// block's scales are finite (so every value is), half's otherwise (a corrupt block's NaN stays
// NaN), each compiled on its own so the common one vectorises.

#[inline(always)]
fn q8_0_rounded<T: Element>(blk: &[u8], y: &mut [T], d: f32, round: impl Fn(f32) -> T) {
    for (y, &q) in y.iter_mut().zip(&blk[2..34]) {
        *y = round(d * f32::from(q as i8));
    }
}

/// [d: f16][dmin: f16][12 bytes of 6-bit scales and mins][128 bytes of nibbles]: four runs of
/// 64 values, low nibbles then high, each half with its own scale and min.
#[inline(always)]
fn q4_k<T: Element>(blk: &[u8], y: &mut [T]) {
    let (d, dmin) = (f16_at(blk, 0), f16_at(blk, 2));
    if d.is_finite() && dmin.is_finite() {
        q4_k_rounded(blk, y, d, dmin, T::finite)
    } else {
        q4_k_rounded(blk, y, d, dmin, T::any)
    }
}

#[inline(always)]
fn q4_k_rounded<T: Element>(blk: &[u8], y: &mut [T], d: f32, dmin: f32, round: impl Fn(f32) -> T) {
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
fn q6_k<T: Element>(blk: &[u8], y: &mut [T]) {
    let d = f16_at(blk, 208);
    if d.is_finite() {
        q6_k_rounded(blk, y, d, T::finite)
    } else {
        q6_k_rounded(blk, y, d, T::any)
    }
}

#[inline(always)]
fn q6_k_rounded<T: Element>(blk: &[u8], y: &mut [T], d: f32, round: impl Fn(f32) -> T) {
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

/// The four legacy formats, as candle's `to_float` computes them: (q − offset)·d, or q·d + m.
/// Q4_0 `[d: f16][16 bytes of nibbles]` (value l < 16 the low nibble of byte l, 16 + l its
/// high one; offset 8); Q5_0 `[d][qh: u32][nibbles]` (bit l of qh value l's fifth bit; offset
/// 16); Q4_1, Q5_1 the same with `[m: f16]` after d and no offset. `FIVE`: the qh word; `MIN`:
/// the m.
#[inline(always)]
fn legacy<T: Element, const FIVE: bool, const MIN: bool>(blk: &[u8], y: &mut [T]) {
    let d = f16_at(blk, 0);
    let m = if MIN { f16_at(blk, 2) } else { 0.0 };
    if d.is_finite() && m.is_finite() {
        legacy_rounded::<T, FIVE, MIN>(blk, y, d, m, T::finite)
    } else {
        legacy_rounded::<T, FIVE, MIN>(blk, y, d, m, T::any)
    }
}

#[inline(always)]
fn legacy_rounded<T: Element, const FIVE: bool, const MIN: bool>(
    blk: &[u8],
    y: &mut [T],
    d: f32,
    m: f32,
    round: impl Fn(f32) -> T,
) {
    let head = if MIN { 4 } else { 2 };
    let qh = if FIVE {
        u32::from_le_bytes([blk[head], blk[head + 1], blk[head + 2], blk[head + 3]])
    } else {
        0
    };
    let qs = &blk[if FIVE { head + 4 } else { head }..][..16];
    let offset: i32 = match (FIVE, MIN) {
        (_, true) => 0,
        (false, false) => 8,
        (true, false) => 16,
    };
    let (lo, hi) = y.split_at_mut(16);
    for (l, ((lo, hi), &q)) in lo.iter_mut().zip(hi.iter_mut()).zip(qs).enumerate() {
        let (h0, h1) = (((qh >> l) & 1) << 4, ((qh >> (l + 16)) & 1) << 4);
        let x0 = i32::from(q & 0xF) | h0 as i32;
        let x1 = i32::from(q >> 4) | h1 as i32;
        if MIN {
            *lo = round(x0 as f32 * d + m);
            *hi = round(x1 as f32 * d + m);
        } else {
            *lo = round((x0 - offset) as f32 * d);
            *hi = round((x1 - offset) as f32 * d);
        }
    }
}

/// [16 scale bytes: scale low nibble, min high][64 bytes of 2-bit levels][d: f16][dmin: f16]:
/// two halves of 128 values; in each, value 32j + l takes bits 2j, 2j + 1 of qs[l], and the
/// 16-value group v / 16 its scale and min: (d·sc)·q − dmin·m.
#[inline(always)]
fn q2_k<T: Element>(blk: &[u8], y: &mut [T]) {
    let (d, dmin) = (f16_at(blk, 80), f16_at(blk, 82));
    if d.is_finite() && dmin.is_finite() {
        q2_k_rounded(blk, y, d, dmin, T::finite)
    } else {
        q2_k_rounded(blk, y, d, dmin, T::any)
    }
}

#[inline(always)]
fn q2_k_rounded<T: Element>(blk: &[u8], y: &mut [T], d: f32, dmin: f32, round: impl Fn(f32) -> T) {
    let scales = &blk[..16];
    for (n, y) in y.chunks_exact_mut(128).enumerate() {
        let qs = &blk[16 + 32 * n..16 + 32 * n + 32];
        for (j, y) in y.chunks_exact_mut(32).enumerate() {
            for (h, y) in y.chunks_exact_mut(16).enumerate() {
                let sc = scales[8 * n + 2 * j + h];
                let (dl, ml) = (d * f32::from(sc & 0xF), dmin * f32::from(sc >> 4));
                for (y, &q) in y.iter_mut().zip(&qs[16 * h..16 * h + 16]) {
                    *y = round(dl * f32::from((q >> (2 * j)) & 3) - ml);
                }
            }
        }
    }
}

/// [hmask: 32][64 bytes of 2-bit levels][12 bytes of 6-bit scales][d: f16]: as Q2_K's levels,
/// with bit 4n + j of hmask[l] as the third bit (clear: minus 4), times d·(sc − 32).
#[inline(always)]
fn q3_k<T: Element>(blk: &[u8], y: &mut [T]) {
    let d = f16_at(blk, 108);
    if d.is_finite() {
        q3_k_rounded(blk, y, d, T::finite)
    } else {
        q3_k_rounded(blk, y, d, T::any)
    }
}

/// ggml's Q3_K scale unpacking: twelve bytes into sixteen 6-bit scales (before the −32).
#[inline(always)]
fn q3_k_scales(s: &[u8]) -> [u8; 16] {
    let word = |at: usize| u32::from_le_bytes([s[at], s[at + 1], s[at + 2], s[at + 3]]);
    let (a0, a1, tmp) = (word(0), word(4), word(8));
    const LOW: u32 = 0x0F0F_0F0F;
    const HIGH: u32 = 0x0303_0303;
    let words = [
        (a0 & LOW) | ((tmp & HIGH) << 4),
        (a1 & LOW) | (((tmp >> 2) & HIGH) << 4),
        ((a0 >> 4) & LOW) | (((tmp >> 4) & HIGH) << 4),
        ((a1 >> 4) & LOW) | (((tmp >> 6) & HIGH) << 4),
    ];
    std::array::from_fn(|i| words[i / 4].to_le_bytes()[i % 4])
}

#[inline(always)]
fn q3_k_rounded<T: Element>(blk: &[u8], y: &mut [T], d: f32, round: impl Fn(f32) -> T) {
    let hmask = &blk[..32];
    let scales = q3_k_scales(&blk[96..108]);
    for (n, y) in y.chunks_exact_mut(128).enumerate() {
        let qs = &blk[32 + 32 * n..32 + 32 * n + 32];
        for (j, y) in y.chunks_exact_mut(32).enumerate() {
            let bit = 4 * n + j;
            for (h, y) in y.chunks_exact_mut(16).enumerate() {
                let dl = d * (f32::from(scales[8 * n + 2 * j + h]) - 32.0);
                let run = 16 * h..16 * h + 16;
                for ((y, &q), &m) in y.iter_mut().zip(&qs[run.clone()]).zip(&hmask[run]) {
                    let low = i32::from((q >> (2 * j)) & 3);
                    let level = low - if (m >> bit) & 1 == 0 { 4 } else { 0 };
                    *y = round(dl * level as f32);
                }
            }
        }
    }
}

/// [d: f16][dmin: f16][12 bytes of 6-bit scales and mins][qh: 32][128 bytes of nibbles]: Q4_K's
/// layout with a fifth bit per value (bit 2j of qh[l] for the low nibbles of run j, 2j + 1 for
/// the high).
#[inline(always)]
fn q5_k<T: Element>(blk: &[u8], y: &mut [T]) {
    let (d, dmin) = (f16_at(blk, 0), f16_at(blk, 2));
    if d.is_finite() && dmin.is_finite() {
        q5_k_rounded(blk, y, d, dmin, T::finite)
    } else {
        q5_k_rounded(blk, y, d, dmin, T::any)
    }
}

#[inline(always)]
fn q5_k_rounded<T: Element>(blk: &[u8], y: &mut [T], d: f32, dmin: f32, round: impl Fn(f32) -> T) {
    let (sc, m) = super::quant_dot::scales_mins_k4(&blk[4..16]);
    let qh = &blk[16..48];
    for (j, (qs, y)) in blk[48..176]
        .chunks_exact(32)
        .zip(y.chunks_exact_mut(64))
        .enumerate()
    {
        let (s_lo, m_lo) = (d * f32::from(sc[2 * j]), dmin * f32::from(m[2 * j]));
        let (s_hi, m_hi) = (d * f32::from(sc[2 * j + 1]), dmin * f32::from(m[2 * j + 1]));
        let (lo, hi) = y.split_at_mut(32);
        for (((lo, hi), &q), &h) in lo.iter_mut().zip(hi.iter_mut()).zip(qs).zip(qh) {
            let q_lo = (q & 0xF) | (((h >> (2 * j)) & 1) << 4);
            let q_hi = (q >> 4) | (((h >> (2 * j + 1)) & 1) << 4);
            *lo = round(s_lo * f32::from(q_lo) - m_lo);
            *hi = round(s_hi * f32::from(q_hi) - m_hi);
        }
    }
}

/// [d: f16][16 bytes of nibbles] indexing [`iquant::KVALUES`]: d·level.
#[inline(always)]
fn iq4_nl<T: Element>(blk: &[u8], y: &mut [T]) {
    let d = f16_at(blk, 0);
    if d.is_finite() {
        iq4_run(&blk[2..18], y, d, T::finite)
    } else {
        iq4_run(&blk[2..18], y, d, T::any)
    }
}

/// [d: f16][scales_h: u16][scales_l: 4][128 bytes of nibbles]: eight IQ4_NL runs of 32 values
/// without their own d, each times d·(ls − 32).
#[inline(always)]
fn iq4_xs<T: Element>(blk: &[u8], y: &mut [T]) {
    let d = f16_at(blk, 0);
    let scales = iquant::xs_scales(blk);
    for (j, (qs, y)) in blk[8..136]
        .chunks_exact(16)
        .zip(y.chunks_exact_mut(32))
        .enumerate()
    {
        let dl = d * (i32::from(scales[j]) - 32) as f32;
        if dl.is_finite() {
            iq4_run(qs, y, dl, T::finite)
        } else {
            iq4_run(qs, y, dl, T::any)
        }
    }
}

/// 32 values of 16 nibble bytes (low nibbles first), each `scale · KVALUES[nibble]`.
#[inline(always)]
fn iq4_run<T: Element>(qs: &[u8], y: &mut [T], scale: f32, round: impl Fn(f32) -> T) {
    let (lo, hi) = y.split_at_mut(16);
    for ((lo, hi), &q) in lo.iter_mut().zip(hi.iter_mut()).zip(qs) {
        *lo = round(scale * f32::from(iquant::KVALUES[usize::from(q & 0xF)]));
        *hi = round(scale * f32::from(iquant::KVALUES[usize::from(q >> 4)]));
    }
}
