//! RMS norm with a frozen or trainable weight.

use candle_core::{Tensor, Var};
use herd_model::nn::rms_normalize;

use crate::error::Result;

#[derive(Debug, Clone)]
pub enum NormWeight {
    Frozen(Tensor),
    Trainable(Var),
}

#[derive(Debug, Clone)]
pub struct TrainNorm {
    pub weight: NormWeight,
    pub eps: f64,
}

impl TrainNorm {
    /// x: [T, D] → [T, D]
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let w = match &self.weight {
            NormWeight::Frozen(t) => t.to_dtype(x.dtype())?,
            NormWeight::Trainable(v) => v.as_tensor().to_dtype(x.dtype())?,
        };
        Ok(rms_normalize(x, self.eps)?.broadcast_mul(&w)?)
    }
}
