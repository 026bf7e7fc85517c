//! Out-of-place transpose of a row-major matrix, in cache-sized tiles (candle's strided copy
//! walks one element at a time, which made transposing transformers' fused experts at load
//! the slowest part of loading).

use candle_core::{DType, Tensor};
use half::{bf16, f16};

use crate::error::Result;

const TILE: usize = 32;

/// `src` [rows, cols] → [cols, rows].
pub fn transpose<T: Copy>(src: &[T], rows: usize, cols: usize) -> Vec<T> {
    debug_assert_eq!(src.len(), rows * cols);
    let mut dst = Vec::with_capacity(src.len());
    // SAFETY-free fill: every element is written exactly once below before it is read; start
    // from a copy so the vector is initialised.
    dst.extend_from_slice(src);
    for r0 in (0..rows).step_by(TILE) {
        for c0 in (0..cols).step_by(TILE) {
            for r in r0..(r0 + TILE).min(rows) {
                for c in c0..(c0 + TILE).min(cols) {
                    dst[c * rows + r] = src[r * cols + c];
                }
            }
        }
    }
    dst
}

/// [`transpose`] over all cores, for big matrices at load (a fused expert's `[D, 2F]` slab is
/// 168 MB at Scout's width): each task fills a band of `TILE` destination rows. Not for the
/// kernels' own small transposes, which already run inside a parallel region.
pub fn transpose_parallel<T: Copy + Send + Sync>(src: &[T], rows: usize, cols: usize) -> Vec<T> {
    use rayon::prelude::*;
    debug_assert_eq!(src.len(), rows * cols);
    let Some(&first) = src.first() else {
        return Vec::new();
    };
    let mut dst = vec![first; src.len()];
    dst.par_chunks_mut(TILE * rows)
        .enumerate()
        .for_each(|(band, out)| {
            let c0 = band * TILE;
            let band_cols = out.len() / rows;
            for r0 in (0..rows).step_by(TILE) {
                for c in 0..band_cols {
                    for r in r0..(r0 + TILE).min(rows) {
                        out[c * rows + r] = src[r * cols + c0 + c];
                    }
                }
            }
        });
    dst
}

/// The slow twin: candle's own transpose.
pub fn transpose_slow(t: &Tensor) -> Result<Tensor> {
    Ok(t.t()?.contiguous()?)
}

/// A 2-D CPU tensor transposed, in its dtype, read where it lies (no copy of the source: at
/// load, fresh buffers of hundreds of MB cost more in page faults than the transpose itself).
pub fn transpose_tensor(t: &Tensor) -> Result<Tensor> {
    match t.dtype() {
        DType::BF16 => transpose_in_place_read::<bf16>(t),
        DType::F16 => transpose_in_place_read::<f16>(t),
        DType::F32 => transpose_in_place_read::<f32>(t),
        _ => transpose_slow(t),
    }
}

fn transpose_in_place_read<T: candle_core::WithDType + Send + Sync>(t: &Tensor) -> Result<Tensor> {
    let (rows, cols) = t.dims2()?;
    let t = t.contiguous()?;
    let (storage, layout) = t.storage_and_layout();
    let (candle_core::Storage::Cpu(cpu), Some((start, end))) = (&*storage, layout.contiguous_offsets())
    else {
        drop(storage);
        return transpose_slow(&t);
    };
    let values = cpu
        .as_slice::<T>()?
        .get(start..end)
        .ok_or_else(|| crate::error::Error::Kernel("transpose: layout outside its storage".into()))?;
    let out = transpose_parallel(values, rows, cols);
    drop(storage);
    Ok(Tensor::from_vec(out, (cols, rows), t.device())?)
}

/// Register transposes for the AVX-512 kernels.
#[cfg(target_arch = "x86_64")]
pub(crate) mod x86 {
    use std::arch::x86_64::*;

    /// The 16 × 16 transpose of 32-bit words: out[c] holds word c of every input row, row i in
    /// lane i (32-bit, then 64-bit interleaves within 128-bit lanes, then a 4 × 4 transpose of
    /// the 128-bit lanes: 64 shuffles).
    #[inline(always)]
    pub(crate) unsafe fn transpose16(r: &[__m512i; 16]) -> [__m512i; 16] {
        let mut t = [_mm512_setzero_si512(); 16];
        for i in 0..8 {
            t[2 * i] = _mm512_unpacklo_epi32(r[2 * i], r[2 * i + 1]);
            t[2 * i + 1] = _mm512_unpackhi_epi32(r[2 * i], r[2 * i + 1]);
        }
        // u[4m + c], 128-bit lane L: rows 4m .. 4m + 4 at word 4L + c.
        let mut u = [_mm512_setzero_si512(); 16];
        for m in 0..4 {
            let (lo, hi) = (4 * m, 4 * m + 2);
            u[4 * m] = _mm512_unpacklo_epi64(t[lo], t[hi]);
            u[4 * m + 1] = _mm512_unpackhi_epi64(t[lo], t[hi]);
            u[4 * m + 2] = _mm512_unpacklo_epi64(t[lo + 1], t[hi + 1]);
            u[4 * m + 3] = _mm512_unpackhi_epi64(t[lo + 1], t[hi + 1]);
        }
        let mut out = [_mm512_setzero_si512(); 16];
        for c in 0..4 {
            let y0 = _mm512_shuffle_i32x4::<0x44>(u[c], u[4 + c]);
            let y1 = _mm512_shuffle_i32x4::<0xEE>(u[c], u[4 + c]);
            let y2 = _mm512_shuffle_i32x4::<0x44>(u[8 + c], u[12 + c]);
            let y3 = _mm512_shuffle_i32x4::<0xEE>(u[8 + c], u[12 + c]);
            out[c] = _mm512_shuffle_i32x4::<0x88>(y0, y2);
            out[4 + c] = _mm512_shuffle_i32x4::<0xDD>(y0, y2);
            out[8 + c] = _mm512_shuffle_i32x4::<0x88>(y1, y3);
            out[12 + c] = _mm512_shuffle_i32x4::<0xDD>(y1, y3);
        }
        out
    }
}
