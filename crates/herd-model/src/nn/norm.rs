//! RMS normalisation: `x · rsqrt(mean(x²) + eps)`, computed in f32 and cast back, then (for
//! [`RmsNorm`]) multiplied by a learned weight. Llama 4 also applies it without a weight to q
//! and k (transformers calls that `Llama4TextL2Norm`, but it is an RMS norm). Beside it the
//! vision tower's layer norm ([`LayerNorm`]).

use candle_core::{DType, Tensor, D};

use crate::error::Result;
use crate::weights::Weights;

#[derive(Debug, Clone)]
pub struct RmsNorm {
    weight: Tensor,
    /// The weight's values when it is an f32 CPU tensor, for the fused kernel.
    weight_f32: Option<Vec<f32>>,
    eps: f64,
}

impl RmsNorm {
    pub fn load(vb: &Weights, name: &str, dim: usize, eps: f64) -> Result<Self> {
        let weight = vb.get(&format!("{name}.weight"), &[dim])?;
        let weight_f32 = if weight.dtype() == DType::F32 && weight.device().is_cpu() {
            Some(weight.to_vec1::<f32>()?)
        } else {
            None
        };
        Ok(RmsNorm {
            weight,
            weight_f32,
            eps,
        })
    }

    /// x: [..., D] → [..., D]
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        if let Some(w) = &self.weight_f32 {
            if let Some(y) = fused(x, Some(w), self.eps)? {
                return Ok(y);
            }
        }
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

/// [`rms_normalize`] for inference: the fused kernel ([`crate::kernels::rms_norm`], the same
/// bits) on f32 CPU tensors that track no gradient, candle's ops otherwise.
pub fn rms_normalize_fast(x: &Tensor, eps: f64) -> Result<Tensor> {
    match fused(x, None, eps)? {
        Some(y) => Ok(y),
        None => rms_normalize(x, eps),
    }
}

/// The fused kernel's result where it applies: an f32 CPU tensor outside autograd (herd-train
/// differentiates through [`rms_normalize`]), on a CPU whose candle sums it reproduces.
fn fused(x: &Tensor, weight: Option<&[f32]>, eps: f64) -> Result<Option<Tensor>> {
    use crate::kernels::rms_norm;
    if x.dtype() != DType::F32 || !x.device().is_cpu() || x.track_op() || !rms_norm::supported() {
        return Ok(None);
    }
    let n = x.dim(D::Minus1)?;
    let y = crate::nn::linear::with_cpu_values(x, |values: &[f32]| {
        rms_norm::rms_norm_rows(values, n, weight, eps)
    })?;
    Ok(Some(Tensor::from_vec(y, x.shape(), x.device())?))
}

/// Layer normalisation with a weight and a bias (the vision tower's): herd's kernel
/// ([`crate::kernels::layer_norm`], candle's arithmetic on the barrier pool) for f32 on the
/// CPU, candle's op otherwise.
#[derive(Debug, Clone)]
pub struct LayerNorm {
    candle: candle_nn::LayerNorm,
    /// α and β in f32, for the kernel.
    alpha: Vec<f32>,
    beta: Vec<f32>,
    eps: f64,
}

impl LayerNorm {
    pub fn load(vb: &Weights, name: &str, dim: usize, eps: f64) -> Result<Self> {
        let weight = vb.get(&format!("{name}.weight"), &[dim])?;
        let bias = vb.get(&format!("{name}.bias"), &[dim])?;
        Ok(LayerNorm {
            alpha: weight.to_dtype(DType::F32)?.to_vec1::<f32>()?,
            beta: bias.to_dtype(DType::F32)?.to_vec1::<f32>()?,
            candle: candle_nn::LayerNorm::new(weight, bias, eps),
            eps,
        })
    }

    /// x: [..., D] → [..., D]
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        use candle_core::Module;
        if x.device().is_cpu() && x.dtype() == DType::F32 && self.candle.weight().dtype() == DType::F32 {
            let y = crate::nn::linear::with_cpu_values(x, |values: &[f32]| {
                crate::kernels::layer_norm::layer_norm(values, &self.alpha, &self.beta, self.eps as f32)
            })?;
            return Ok(Tensor::from_vec(y, x.shape(), x.device())?);
        }
        Ok(self.candle.forward(x)?)
    }
}
