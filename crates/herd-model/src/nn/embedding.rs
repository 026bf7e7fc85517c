//! The token embedding table [V, D], kept in its stored format; a lookup widens or dequantizes
//! only the rows it returns.

use std::sync::Arc;

use candle_core::{DType, Device, Tensor};

use super::Linear;
use crate::error::Result;
use crate::weights::device_quant::DeviceQuantTensor;
use crate::weights::QuantTensor;

#[derive(Debug, Clone)]
pub enum Embedding {
    /// [V, D] in the stored dtype.
    Dense(Tensor),
    Quantized(Arc<QuantTensor>),
}

impl Embedding {
    /// ids → [T, D] in `dtype`. The ids must already be checked against V.
    pub fn forward(&self, ids: &[u32], dtype: DType, device: &Device) -> Result<Tensor> {
        match self {
            Embedding::Dense(table) => {
                let ids_t = Tensor::from_slice(ids, ids.len(), device)?;
                Ok(table.index_select(&ids_t, 0)?.to_dtype(dtype)?)
            }
            Embedding::Quantized(q) => {
                let rows = q.rows_f32(ids)?;
                Ok(Tensor::from_vec(rows, (ids.len(), q.cols()), device)?.to_dtype(dtype)?)
            }
        }
    }

    /// The same table used as the output projection (tied embeddings).
    pub fn as_linear(&self) -> Linear {
        match self {
            Embedding::Dense(t) => Linear::Dense(t.clone()),
            Embedding::Quantized(q) => Linear::Quantized(q.clone()),
        }
    }

    /// [`Self::as_linear`] for products on `device`: on a GPU a quantized table gets a copy
    /// of its blocks there (the lookups keep the host's).
    pub fn as_linear_on(&self, device: &Device) -> Result<Linear> {
        Ok(match self {
            Embedding::Quantized(q) if !device.is_cpu() => {
                Linear::QuantizedDevice(Arc::new(DeviceQuantTensor::upload(q, device)?))
            }
            _ => self.as_linear(),
        })
    }

    pub fn stored_bytes(&self) -> usize {
        self.as_linear().stored_bytes()
    }
}
