//! A linear layer in training: a frozen base (any stored format) or a trainable one (full
//! fine-tuning), plus an optional LoRA update.

use candle_core::{Tensor, Var};

use crate::error::Result;
use crate::frozen::FrozenLinear;
use crate::lora::{LoraPair, PassKey};

#[derive(Debug, Clone)]
pub enum Base {
    Frozen(FrozenLinear),
    /// [out, in], f32.
    Trainable(Var),
}

#[derive(Debug, Clone)]
pub struct TrainLinear {
    pub base: Base,
    pub lora: Option<LoraPair>,
}

impl TrainLinear {
    /// x: [T, in] → [T, out]
    pub fn forward(&self, x: &Tensor, pass: &PassKey) -> Result<Tensor> {
        let y = match &self.base {
            Base::Frozen(f) => f.forward(x)?,
            // f32 products whatever the activations' dtype (candle's bf16 matmul is scalar).
            Base::Trainable(w) => x
                .to_dtype(candle_core::DType::F32)?
                .matmul(&w.as_tensor().t()?)?
                .to_dtype(x.dtype())?,
        };
        match &self.lora {
            Some(lora) => Ok((y + lora.delta(x, pass)?)?),
            None => Ok(y),
        }
    }
}
