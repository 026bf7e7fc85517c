//! The vision encoder's 2-D RoPE (same interleaved-pair convention as the text model): for
//! patch p at column x = p % G, row y = p / G, with Dh/2 pairs and f_k = θ^(−2k/(Dh/2)),
//! pair m < Dh/4 turns by (x+1)·f_m and pair m ≥ Dh/4 by (y+1)·f_{m−Dh/4}; the class token
//! (last) is not rotated. Reference: transformers `Llama4VisionRotaryEmbedding`.

use candle_core::{Device, Tensor};

use crate::error::Result;

/// (cos, sin), each [P + 1, Dh/2], class token last.
pub fn tables(grid: usize, head_dim: usize, theta: f64, device: &Device) -> Result<(Tensor, Tensor)> {
    let angles = angles(grid, head_dim, theta);
    let n = angles.len() / (head_dim / 2);
    let cos: Vec<f32> = angles.iter().map(|a| a.cos()).collect();
    let sin: Vec<f32> = angles.iter().map(|a| a.sin()).collect();
    Ok((
        Tensor::from_vec(cos, (n, head_dim / 2), device)?,
        Tensor::from_vec(sin, (n, head_dim / 2), device)?,
    ))
}

/// Rotation angle of every (token, pair), row-major; f32 as transformers computes it.
pub fn angles(grid: usize, head_dim: usize, theta: f64) -> Vec<f32> {
    let freq_dim = head_dim / 2;
    let freqs: Vec<f32> = (0..freq_dim / 2)
        .map(|k| 1.0 / (theta as f32).powf((2 * k) as f32 / freq_dim as f32))
        .collect();
    let mut out = Vec::with_capacity((grid * grid + 1) * freq_dim);
    for p in 0..grid * grid {
        let (x, y) = ((p % grid + 1) as f32, (p / grid + 1) as f32);
        out.extend(freqs.iter().map(|f| x * f));
        out.extend(freqs.iter().map(|f| y * f));
    }
    out.extend(std::iter::repeat_n(0.0, freq_dim)); // class token
    out
}
