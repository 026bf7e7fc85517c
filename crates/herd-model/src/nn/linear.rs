//! `y = x Wᵀ` with a weight stored as nn.Linear stores it, `[out, in]`, no bias.

use candle_core::Tensor;

use crate::error::Result;
use crate::weights::Weights;

#[derive(Debug, Clone)]
pub struct Linear {
    /// [out, in]
    weight: Tensor,
}

impl Linear {
    /// Loads `{name}.weight` with shape `[out_dim, in_dim]`.
    pub fn load(vb: &Weights, name: &str, in_dim: usize, out_dim: usize) -> Result<Self> {
        Ok(Linear {
            weight: vb.get(&format!("{name}.weight"), &[out_dim, in_dim])?,
        })
    }

    pub fn from_weight(weight: Tensor) -> Self {
        Linear { weight }
    }

    /// x: [T, in] → [T, out]
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        Ok(x.matmul(&self.weight.t()?)?)
    }

    pub fn weight(&self) -> &Tensor {
        &self.weight
    }
}
