//! RMS normalisation: `x · rsqrt(mean(x²) + eps)`, computed in f32 and cast back, then (for
//! [`RmsNorm`]) multiplied by a learned weight. Llama 4 also applies it without a weight to q
//! and k (transformers calls that `Llama4TextL2Norm`, but it is an RMS norm).

use candle_core::{DType, Tensor, D};

use crate::error::Result;
use crate::weights::Weights;

#[derive(Debug, Clone)]
pub struct RmsNorm {
    weight: Tensor,
    eps: f64,
}

impl RmsNorm {
    pub fn load(vb: &Weights, name: &str, dim: usize, eps: f64) -> Result<Self> {
        Ok(RmsNorm {
            weight: vb.get(&format!("{name}.weight"), &[dim])?,
            eps,
        })
    }

    /// x: [..., D] → [..., D]
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        Ok(rms_normalize(x, self.eps)?.broadcast_mul(&self.weight)?)
    }

    pub fn stored_bytes(&self) -> usize {
        self.weight.elem_count() * self.weight.dtype().size_in_bytes()
    }
}

/// Weightless RMS normalisation over the last dimension, in f32, cast back to x's dtype.
pub fn rms_normalize(x: &Tensor, eps: f64) -> Result<Tensor> {
    let dtype = x.dtype();
    let x32 = x.to_dtype(DType::F32)?;
    let mean_sq = x32.sqr()?.mean_keepdim(D::Minus1)?;
    let inv_rms = (mean_sq + eps)?.sqrt()?.recip()?;
    Ok(x32.broadcast_mul(&inv_rms)?.to_dtype(dtype)?)
}
