//! Keys and values stored as ggml's Q8_0 (`--kv-dtype q8_0`, llama.cpp's `-ctk/-ctv q8_0`):
//! each run of 32 values of a row is one `block_q8_0`, an f16 scale `d` then 32 signed levels,
//! 34 bytes for 32 values where f16 takes 64. At long context a decode step is bound by
//! reading the cache, so this nearly halves what depth costs.
//!
//! Rows are quantized as llama.cpp's x86 build quantizes a Q8_0 cache's rows
//! ([`super::q8_activations::q8_0_block`]: levels x · (127 / max|x|) to the nearest, ties to
//! even, d = max|x| / 127 stored as its f16 rounding), and read back as d · q in
//! f32: the query stays f32 (llama.cpp quantizes it to Q8_0 as well), so the only error is the
//! cache's own rounding. The AVX-512 widening is the portable loop's arithmetic lane by lane,
//! and equals it bit for bit (the twin test); the portable loop equals
//! [`super::quant_dot::dequantize_row`], the block formats' slow twin.

use half::f16;

use super::isa::Isa;

/// Values per block.
pub const BLOCK: usize = 32;
/// Bytes per block: the f16 scale and 32 levels.
pub const BLOCK_BYTES: usize = 34;

/// Bytes a row of `head_dim` values takes (`head_dim` a multiple of [`BLOCK`]).
pub fn row_bytes(head_dim: usize) -> usize {
    head_dim / BLOCK * BLOCK_BYTES
}

/// Quantizes whole blocks of `x` into `out` ([`BLOCK_BYTES`] per [`BLOCK`] values).
///
/// # Panics
/// If `x` is not whole blocks or `out` is not their size.
pub fn quantize(x: &[f32], out: &mut [u8]) {
    assert!(x.len().is_multiple_of(BLOCK) && out.len() == x.len() / BLOCK * BLOCK_BYTES);
    let mut levels = [0i8; BLOCK];
    for (xb, ob) in x.chunks_exact(BLOCK).zip(out.chunks_exact_mut(BLOCK_BYTES)) {
        let d = super::q8_activations::q8_0_block(xb, &mut levels);
        ob[..2].copy_from_slice(&d.to_le_bytes());
        for (o, q) in ob[2..].iter_mut().zip(levels) {
            *o = q as u8;
        }
    }
}

/// Widens whole blocks `src` to f32 values `dst` on the best build `isa` has.
///
/// # Panics
/// If `src` is not whole blocks, `dst` not their size, or this CPU lacks `isa`.
pub fn dequantize_on(isa: Isa, src: &[u8], dst: &mut [f32]) {
    assert!(src.len().is_multiple_of(BLOCK_BYTES) && dst.len() == src.len() / BLOCK_BYTES * BLOCK);
    assert!(isa.is_supported());
    #[cfg(target_arch = "x86_64")]
    if matches!(isa, Isa::Avx512 | Isa::Avx512Bf16 | Isa::Amx) {
        // SAFETY: the CPU has this level (asserted), which includes AVX-512 F/BW and F16C; the
        // lengths match (asserted).
        unsafe { dequantize_avx512(src, dst) };
        return;
    }
    dequantize_portable(src, dst);
}

/// [`dequantize_on`] on [`Isa::current`].
pub fn dequantize(src: &[u8], dst: &mut [f32]) {
    dequantize_on(Isa::current(), src, dst)
}

fn dequantize_portable(src: &[u8], dst: &mut [f32]) {
    for (b, o) in src.chunks_exact(BLOCK_BYTES).zip(dst.chunks_exact_mut(BLOCK)) {
        let d = f16::from_le_bytes([b[0], b[1]]).to_f32();
        for (o, &q) in o.iter_mut().zip(&b[2..]) {
            *o = d * f32::from(q as i8);
        }
    }
}

/// 16 levels at a time: sign-extended to i32, converted (exact), times the block's scale
/// (widened by `vcvtph2ps`: `half`'s conversion per block cost as much as the rest).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma,f16c")]
unsafe fn dequantize_avx512(src: &[u8], dst: &mut [f32]) {
    use std::arch::x86_64::*;
    let blocks = src.len() / BLOCK_BYTES;
    debug_assert_eq!(dst.len(), blocks * BLOCK);
    let (s, o) = (src.as_ptr(), dst.as_mut_ptr());
    for b in 0..blocks {
        // SAFETY: block b's 34 bytes lie in src and its 32 values in dst (the caller's lengths).
        unsafe {
            let blk = s.add(b * BLOCK_BYTES);
            let bits = u16::from_le_bytes([*blk, *blk.add(1)]);
            let d = _mm512_set1_ps(_mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtsi32_si128(i32::from(bits)))));
            let lo = _mm_loadu_si128(blk.add(2).cast());
            let hi = _mm_loadu_si128(blk.add(18).cast());
            let out = o.add(b * BLOCK);
            _mm512_storeu_ps(
                out,
                _mm512_mul_ps(d, _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(lo))),
            );
            _mm512_storeu_ps(
                out.add(16),
                _mm512_mul_ps(d, _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(hi))),
            );
        }
    }
}
