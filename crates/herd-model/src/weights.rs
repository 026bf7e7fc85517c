//! A prefix-scoped view of a [`Checkpoint`], in the spirit of candle's `VarBuilder`: module
//! loaders ask for `vb.pp("self_attn").get("q_proj.weight", shape)`, so code and checkpoint keys
//! grep together.

use candle_core::{DType, Device, Tensor};

use crate::checkpoint::Checkpoint;
use crate::error::Result;

#[derive(Clone)]
pub struct Weights<'a> {
    checkpoint: &'a Checkpoint,
    prefix: String,
    dtype: DType,
    device: Device,
}

impl<'a> Weights<'a> {
    pub fn new(checkpoint: &'a Checkpoint, prefix: &str, dtype: DType, device: &Device) -> Self {
        Weights {
            checkpoint,
            prefix: prefix.to_string(),
            dtype,
            device: device.clone(),
        }
    }

    /// The same view one level deeper: `pp("layers").pp(3)` → `…layers.3.`.
    pub fn pp(&self, name: impl std::fmt::Display) -> Self {
        Weights {
            prefix: format!("{}{name}.", self.prefix),
            ..self.clone()
        }
    }

    /// Tensor `name` under this prefix, shape-checked, in the compute dtype.
    pub fn get(&self, name: &str, shape: &[usize]) -> Result<Tensor> {
        self.get_absolute(&format!("{}{name}", self.prefix), shape)
    }

    /// Tensor by its full checkpoint name, ignoring the prefix.
    pub fn get_absolute(&self, name: &str, shape: &[usize]) -> Result<Tensor> {
        self.checkpoint.tensor(name, shape, self.dtype, &self.device)
    }

    pub fn dtype(&self) -> DType {
        self.dtype
    }

    pub fn device(&self) -> &Device {
        &self.device
    }
}
