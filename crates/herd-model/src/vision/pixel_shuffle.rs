//! Pixel shuffle with ratio 0.5: a G×G grid of patch features becomes a G/2×G/2 grid whose
//! token (I, J) concatenates patches (2I, 2J), (2I, 2J+1), (2I+1, 2J), (2I+1, 2J+1).
//! Reference: transformers `pixel_shuffle` (verified order, LLAMA4.md §4.6).

use candle_core::Tensor;

use crate::error::Result;

/// x: [N, G·G, C] → [N, (G/2)², 4C]
pub fn pixel_shuffle(x: &Tensor, grid: usize) -> Result<Tensor> {
    let (n, _, c) = x.dims3()?;
    let half = grid / 2;
    // [N, I, a, J, b, C] → [N, I, J, a, b, C]
    let x = x.reshape((n, half, 2, half, 2, c))?.permute((0, 1, 3, 2, 4, 5))?;
    Ok(x.contiguous()?.reshape((n, half * half, 4 * c))?)
}

/// The slow twin: one tile's features as rows of a Vec, shuffled by index arithmetic.
pub fn pixel_shuffle_slow(patches: &[Vec<f32>], grid: usize) -> Vec<Vec<f32>> {
    let half = grid / 2;
    let mut out = Vec::with_capacity(half * half);
    for i in 0..half {
        for j in 0..half {
            let mut row = Vec::new();
            for (a, b) in [(0, 0), (0, 1), (1, 0), (1, 1)] {
                row.extend_from_slice(&patches[(2 * i + a) * grid + 2 * j + b]);
            }
            out.push(row);
        }
    }
    out
}
