//! Block-quantized rows dequantized straight to bf16, for the AMX tiles: one pass over the
//! blocks with no f32 rows in between, written as plain loops over each block's runs of 32 (or
//! 16) values that the compiler vectorises. Each value is computed as ggml computes it in f32
//! (the same operations in the same order as [`super::quant_dot::dequantize_row`], the slow
//! twin), then rounded to the nearest bf16.

use half::bf16;

use crate::weights::QuantType;

/// Whether [`dequantize_rows_bf16`] takes this format.
pub fn supports(ty: QuantType) -> bool {
    matches!(ty, QuantType::Q8_0 | QuantType::Q4K | QuantType::Q6K)
}

/// Rows of `ty` blocks (`w`, whole blocks) into `out`, one bf16 per value.
///
/// # Panics
/// If `ty` is not supported or `out` does not hold exactly the blocks' values.
pub fn dequantize_rows_bf16(ty: QuantType, w: &[u8], out: &mut [bf16]) {
    assert!(supports(ty));
    assert!(w.len().is_multiple_of(ty.block_bytes()));
    assert_eq!(out.len(), w.len() / ty.block_bytes() * ty.block_len());
    let blocks = w
        .chunks_exact(ty.block_bytes())
        .zip(out.chunks_exact_mut(ty.block_len()));
    match ty {
        QuantType::Q8_0 => blocks.for_each(|(blk, y)| q8_0(blk, y)),
        QuantType::Q4K => blocks.for_each(|(blk, y)| q4_k(blk, y)),
        _ => blocks.for_each(|(blk, y)| q6_k(blk, y)),
    }
}

fn f16_at(b: &[u8], at: usize) -> f32 {
    half::f16::from_le_bytes([b[at], b[at + 1]]).to_f32()
}

/// [d: f16][32 × i8]
fn q8_0(blk: &[u8], y: &mut [bf16]) {
    let d = f16_at(blk, 0);
    for (y, &q) in y.iter_mut().zip(&blk[2..34]) {
        *y = bf16::from_f32(d * f32::from(q as i8));
    }
}

/// [d: f16][dmin: f16][12 bytes of 6-bit scales and mins][128 bytes of nibbles]: four runs of
/// 64 values, low nibbles then high, each half with its own scale and min.
fn q4_k(blk: &[u8], y: &mut [bf16]) {
    let (d, dmin) = (f16_at(blk, 0), f16_at(blk, 2));
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
            *lo = bf16::from_f32(s_lo * f32::from(q & 0xF) - m_lo);
            *hi = bf16::from_f32(s_hi * f32::from(q >> 4) - m_hi);
        }
    }
}

/// [ql: 128][qh: 64][16 × i8 scales][d: f16]: two halves of 128 values; in each, value
/// 32i + l takes a nibble of ql (low for i < 2) and two bits of qh, minus 32, times the scale of
/// its 16-value group.
fn q6_k(blk: &[u8], y: &mut [bf16]) {
    let d = f16_at(blk, 208);
    for (n, y) in y.chunks_exact_mut(128).enumerate() {
        let ql = &blk[64 * n..64 * n + 64];
        let qh = &blk[128 + 32 * n..128 + 32 * n + 32];
        let sc = &blk[192 + 8 * n..192 + 8 * n + 8];
        for (i, y) in y.chunks_exact_mut(32).enumerate() {
            for (l, y) in y.iter_mut().enumerate() {
                let low = ql[32 * (i % 2) + l];
                let nibble = if i < 2 { low & 0xF } else { low >> 4 };
                let q = i32::from(nibble | (((qh[l] >> (2 * i)) & 3) << 4)) - 32;
                *y = bf16::from_f32(d * f32::from(sc[2 * i + l / 16] as i8) * q as f32);
            }
        }
    }
}
