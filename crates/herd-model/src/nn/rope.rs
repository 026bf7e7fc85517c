//! Rotary position embedding tables and their application.
//!
//! Llama 4 rotates *adjacent* pairs `(x[2m], x[2m+1])` as the complex number
//! `x[2m] + i·x[2m+1]` times `exp(i·pos·inv_freq[m])` (Meta's `apply_rotary_emb`, kept by the HF
//! conversion, which does not permute q/k rows). Angles are `f32(pos) · inv_freq` in f32.
//! The fast path is candle's `rope_i`; [`rotate_slow`] is its loop-by-loop twin.

use std::ops::Range;

use candle_core::{DType, Device, Tensor};

use crate::config::RopePairing;
use crate::error::Result;

/// cos/sin of every (position, pair) of one step. Shapes: [T, Dh/2].
#[derive(Debug, Clone)]
pub struct RotaryTables {
    cos: Tensor,
    sin: Tensor,
    pairing: RopePairing,
}

impl RotaryTables {
    pub fn new(
        inv_freq: &[f32],
        positions: Range<usize>,
        pairing: RopePairing,
        dtype: DType,
        device: &Device,
    ) -> Result<Self> {
        let (cos, sin) = angles(inv_freq, positions.clone())
            .map(|a| (a.cos(), a.sin()))
            .unzip::<f32, f32, Vec<f32>, Vec<f32>>();
        let shape = (positions.len(), inv_freq.len());
        Ok(RotaryTables {
            cos: Tensor::from_vec(cos, shape, device)?.to_dtype(dtype)?,
            sin: Tensor::from_vec(sin, shape, device)?.to_dtype(dtype)?,
            pairing,
        })
    }

    /// x: [1, H, T, Dh] (contiguous) → same shape, rotated.
    /// The tables of several steps' positions, one after another (a batch's rows).
    pub fn cat(tables: &[&RotaryTables]) -> Result<Self> {
        let cos: Vec<&Tensor> = tables.iter().map(|t| &t.cos).collect();
        let sin: Vec<&Tensor> = tables.iter().map(|t| &t.sin).collect();
        Ok(RotaryTables {
            cos: Tensor::cat(&cos, 0)?,
            sin: Tensor::cat(&sin, 0)?,
            pairing: tables.first().map_or(RopePairing::Interleaved, |t| t.pairing),
        })
    }

    pub fn apply(&self, x: &Tensor) -> Result<Tensor> {
        let x = x.contiguous()?;
        Ok(match self.pairing {
            RopePairing::Interleaved => candle_nn::rotary_emb::rope_i(&x, &self.cos, &self.sin)?,
            RopePairing::Halves => candle_nn::rotary_emb::rope(&x, &self.cos, &self.sin)?,
        })
    }
}

/// `f32(pos) · inv_freq[m]`, row-major over (position, pair).
fn angles(inv_freq: &[f32], positions: Range<usize>) -> impl Iterator<Item = f32> + '_ {
    positions.flat_map(move |pos| inv_freq.iter().map(move |f| pos as f32 * f))
}

/// The slow twin of the interleaved rotation: one head vector `x` ([Dh]) at one position.
pub fn rotate_slow(x: &[f32], pos: usize, inv_freq: &[f32]) -> Vec<f32> {
    x.chunks_exact(2)
        .zip(inv_freq)
        .flat_map(|(pair, f)| {
            let (sin, cos) = (pos as f32 * f).sin_cos();
            [pair[0] * cos - pair[1] * sin, pair[0] * sin + pair[1] * cos]
        })
        .collect()
}
