//! A prefix-scoped view of a [`WeightSource`], in the spirit of candle's `VarBuilder`: module
//! loaders ask for `vb.pp("self_attn").linear("q_proj.weight", …)`, so code and checkpoint keys
//! grep together. The view knows the compute dtype and device, and whether to quantize at load.

use std::sync::Arc;

use candle_core::{DType, Device, Tensor};

use super::device_quant::DeviceQuantTensor;
use super::plan::TensorRole;
use super::source::{to_dense, Stored, StoredFormat};
use super::{QuantPlan, QuantTensor, WeightSource};
use crate::error::Result;
use crate::nn::{Embedding, Linear};

#[derive(Clone)]
pub struct Weights<'a> {
    source: &'a WeightSource,
    prefix: String,
    dtype: DType,
    device: Device,
    quant: Option<QuantPlan>,
    dequantize: bool,
}

impl<'a> Weights<'a> {
    pub fn new(source: &'a WeightSource, prefix: &str, dtype: DType, device: &Device) -> Self {
        Weights {
            source,
            prefix: prefix.to_string(),
            dtype,
            device: device.clone(),
            quant: None,
            dequantize: false,
        }
    }

    /// The same view, widening quantized weights to dense f32 (the slow twin's weights).
    pub fn with_dequantize(mut self, dequantize: bool) -> Self {
        self.dequantize = dequantize;
        self
    }

    /// The same view, quantizing dense matrices at load as `plan` says.
    pub fn with_quant(mut self, plan: Option<QuantPlan>) -> Self {
        self.quant = plan;
        self
    }

    /// The same view one level deeper: `pp("layers").pp(3)` → `…layers.3.`.
    pub fn pp(&self, name: impl std::fmt::Display) -> Self {
        Weights {
            prefix: format!("{}{name}.", self.prefix),
            ..self.clone()
        }
    }

    /// Tensor `name` under this prefix, shape-checked, in the compute dtype (norms, biases and
    /// other small tensors that are not worth keeping in a stored format).
    pub fn get(&self, name: &str, shape: &[usize]) -> Result<Tensor> {
        self.get_absolute(&format!("{}{name}", self.prefix), shape)
    }

    /// Tensor by its full checkpoint name, ignoring the prefix, in the compute dtype.
    pub fn get_absolute(&self, name: &str, shape: &[usize]) -> Result<Tensor> {
        let dense = to_dense(name, &self.source.stored(name, shape)?)?;
        Ok(dense
            .to_dtype(self.dtype)?
            .to_device(&self.device)?
            .reshape(shape)?)
    }

    /// A linear layer's weight `name` [out, in] under this prefix, in its stored format.
    pub fn linear(&self, name: &str, in_dim: usize, out_dim: usize) -> Result<Linear> {
        self.linear_absolute(&format!("{}{name}", self.prefix), in_dim, out_dim)
    }

    pub fn linear_absolute(&self, name: &str, in_dim: usize, out_dim: usize) -> Result<Linear> {
        let shape = [out_dim, in_dim];
        let target = self
            .quant
            .and_then(|plan| plan.type_for(TensorRole::of(name), in_dim));
        if let (Some(ty), Ok(StoredFormat::Dense { .. })) = (target, self.source.stored_format(name)) {
            // Quantize a slab of rows at a time, read straight from the file: the dense
            // matrix is never whole in memory.
            let q = QuantTensor::quantize_with(ty, out_dim, in_dim, name, |first, values| {
                let n = values.len() / in_dim;
                let slab = to_dense(name, &self.source.stored_rows(name, &shape, first, n)?)?;
                let slab = slab.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?;
                values.copy_from_slice(&slab);
                Ok(())
            })?;
            return self.to_linear(name, Stored::Quantized(q));
        }
        let stored = self.source.stored(name, &shape)?;
        self.to_linear(name, stored)
    }

    /// The embedding table [V, D] by its full name.
    ///
    /// A quantized table stays on the host whatever the device: a step dequantizes the few
    /// rows it looks up there and sends only those.
    pub fn embedding_absolute(&self, name: &str, vocab: usize, dim: usize) -> Result<Embedding> {
        let host = Weights {
            device: Device::Cpu,
            ..self.clone()
        };
        Ok(match host.linear_absolute(name, dim, vocab)? {
            Linear::Dense(t) => Embedding::Dense(self.placed(t)?),
            Linear::Quantized(q) => Embedding::Quantized(q),
            // No checkpoint stores its embedding table in FP8; widen it if one does.
            other => Embedding::Dense(self.placed(other.weight_f32(&Device::Cpu)?)?),
        })
    }

    /// The routed experts under this prefix as (gate, up, down) linears per expert, each
    /// converted to its final format before the next is read.
    pub fn experts(&self, n_experts: usize, d: usize, f: usize) -> Result<Vec<[Linear; 3]>> {
        let names = ["gate_proj", "up_proj", "down_proj"].map(|p| format!("{}{p}", self.prefix));
        (0..n_experts)
            .map(|e| {
                let [g, u, dn] = self.source.expert(&self.prefix, e, n_experts, d, f)?;
                Ok([
                    self.to_linear(&names[0], g)?,
                    self.to_linear(&names[1], u)?,
                    self.to_linear(&names[2], dn)?,
                ])
            })
            .collect()
    }

    /// Stored → Linear: quantized stays quantized; dense stays in its stored dtype (moved to
    /// the device) unless the quantization plan picks a type for it.
    fn to_linear(&self, name: &str, stored: Stored) -> Result<Linear> {
        match stored {
            Stored::Quantized(q) if self.dequantize => {
                let w = Tensor::from_vec(q.dequantize()?, (q.rows(), q.cols()), &Device::Cpu)?;
                Ok(Linear::Dense(self.placed(w)?))
            }
            Stored::Quantized(q) if self.device.is_cpu() => Ok(Linear::Quantized(Arc::new(q))),
            Stored::Quantized(q) => Ok(Linear::QuantizedDevice(Arc::new(DeviceQuantTensor::upload(
                &q,
                &self.device,
            )?))),
            // herd's fp8 product is a CPU kernel: on a GPU the weight is widened to the compute
            // dtype at load (twice the memory of fp8 in bf16; exact, as the CPU's product is).
            Stored::Fp8(m) if self.dequantize || !self.device.is_cpu() => {
                let w = Tensor::from_vec(m.dequantize(), (m.rows(), m.cols()), &Device::Cpu)?;
                Ok(Linear::Dense(self.placed(w)?))
            }
            Stored::Fp8(m) => Ok(Linear::Fp8(Arc::new(m))),
            Stored::Dense(t) => {
                let (rows, cols) = t.dims2()?;
                let target = self
                    .quant
                    .and_then(|plan| plan.type_for(TensorRole::of(name), cols));
                match target {
                    Some(ty) => {
                        let values = t.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?;
                        let q = QuantTensor::quantize(ty, rows, cols, &values, name)?;
                        self.to_linear(name, Stored::Quantized(q))
                    }
                    None => Ok(Linear::Dense(self.placed(t)?)),
                }
            }
        }
    }

    /// A stored dense weight on the view's device. Under f32 compute on the CPU it keeps its
    /// stored dtype (herd's kernels multiply f32 activations by bf16/f16 weights directly);
    /// otherwise a weight of another dtype is converted once, here, so the same-dtype matmuls
    /// (candle's, cuBLAS) apply without a conversion per product.
    fn placed(&self, t: Tensor) -> Result<Tensor> {
        let keeps_stored = self.dtype == DType::F32 && self.device.is_cpu();
        let t = if t.dtype() != self.dtype && !keeps_stored {
            t.to_dtype(self.dtype)?
        } else if !self.device.is_cpu() && !spans_its_storage(&t) {
            // A view (a fused expert's gate or up half) moves with its whole buffer: copy out
            // the part the device keeps.
            t.force_contiguous()?
        } else {
            t
        };
        Ok(t.to_device(&self.device)?)
    }

    pub fn dtype(&self) -> DType {
        self.dtype
    }

    pub fn device(&self) -> &Device {
        &self.device
    }

    pub fn source(&self) -> &WeightSource {
        self.source
    }
}

/// Whether a host tensor's values are its whole buffer (not a view into a larger one).
fn spans_its_storage(t: &Tensor) -> bool {
    let (storage, layout) = t.storage_and_layout();
    let len = match &*storage {
        candle_core::Storage::Cpu(candle_core::CpuStorage::BF16(v)) => v.len(),
        candle_core::Storage::Cpu(candle_core::CpuStorage::F16(v)) => v.len(),
        candle_core::Storage::Cpu(candle_core::CpuStorage::F32(v)) => v.len(),
        _ => return true,
    };
    layout.start_offset() == 0 && len == t.elem_count()
}
