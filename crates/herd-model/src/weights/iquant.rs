//! The 4-bit i-quants herd reads (ggml's IQ4_NL and IQ4_XS): 4-bit indices into one fixed
//! non-linear table of levels, so a block is a scale and 32 (or 256) nibbles. candle has no
//! blocks for them, so their bytes are kept as read and these are their reference readings
//! (ggml's `dequantize_row_iq4_nl` / `dequantize_row_iq4_xs`); the integer kernels are in
//! [`crate::kernels::quant_dot`].
//!
//! Layouts (little-endian):
//! - IQ4_NL (18 B / 32 values): f16 d, qs[16]; value l (l < 16) is `KVALUES[qs[l] & 15]`, value
//!   16 + l is `KVALUES[qs[l] >> 4]`; w = d·level.
//! - IQ4_XS (136 B / 256): f16 d, u16 scales_h, scales_l[4], qs[128]; eight sub-blocks of 32
//!   values, sub-block j with the 6-bit scale `ls` (low 4 bits: nibble j % 2 of scales_l[j / 2];
//!   high 2: bits 2j, 2j + 1 of scales_h) and its 16 bytes of qs laid out as IQ4_NL's;
//!   w = (d·(ls − 32))·level.

use half::f16;

use super::QuantType;

/// ggml's `kvalues_iq4nl`: the 16 levels a nibble indexes (−127, not −128, so that |level|
/// fits the unsigned side of `vpmaddubsw`).
pub const KVALUES: [i8; 16] = [
    -127, -104, -83, -65, -49, -35, -22, -10, 1, 13, 25, 38, 53, 69, 89, 113,
];

/// Whether `ty` is an i-quant (kept as bytes, computed by herd alone).
pub fn is_iquant(ty: QuantType) -> bool {
    matches!(ty, QuantType::Iq4Nl | QuantType::Iq4Xs)
}

/// The 32 levels of 16 nibble bytes, in value order (low nibbles, then high).
pub fn levels_32(qs: &[u8]) -> [i8; 32] {
    std::array::from_fn(|v| {
        let nibble = if v < 16 { qs[v] & 0xF } else { qs[v - 16] >> 4 };
        KVALUES[usize::from(nibble)]
    })
}

/// The eight 6-bit sub-block scales of an IQ4_XS block, before the −32 offset.
pub fn xs_scales(blk: &[u8]) -> [u8; 8] {
    let high = u16::from_le_bytes([blk[2], blk[3]]);
    std::array::from_fn(|j| {
        let low = (blk[4 + j / 2] >> (4 * (j % 2))) & 0xF;
        low | ((((high >> (2 * j)) & 3) as u8) << 4)
    })
}

pub fn f16_at(b: &[u8], at: usize) -> f32 {
    f16::from_le_bytes([b[at], b[at + 1]]).to_f32()
}

/// Whole blocks of `ty` (an i-quant) into f32, as ggml dequantizes them.
///
/// # Panics
/// If `ty` is not an i-quant, or `out` is not `bytes`' values.
pub fn dequantize(ty: QuantType, bytes: &[u8], out: &mut [f32]) {
    assert!(is_iquant(ty));
    assert_eq!(out.len() / ty.block_len() * ty.block_bytes(), bytes.len());
    assert!(out.len().is_multiple_of(ty.block_len()));
    for (blk, y) in bytes
        .chunks_exact(ty.block_bytes())
        .zip(out.chunks_exact_mut(ty.block_len()))
    {
        let d = f16_at(blk, 0);
        if ty == QuantType::Iq4Nl {
            for (slot, level) in y.iter_mut().zip(levels_32(&blk[2..18])) {
                *slot = d * f32::from(level);
            }
            continue;
        }
        let scales = xs_scales(blk);
        for (j, (sub, y)) in blk[8..136]
            .chunks_exact(16)
            .zip(y.chunks_exact_mut(32))
            .enumerate()
        {
            let dl = d * (i32::from(scales[j]) - 32) as f32;
            for (slot, level) in y.iter_mut().zip(levels_32(sub)) {
                *slot = dl * f32::from(level);
            }
        }
    }
}
