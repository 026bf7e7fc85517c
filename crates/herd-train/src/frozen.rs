//! A frozen weight in whatever format herd-model loaded it (f32, bf16, f16, Q8_0, Q4_K, FP8, …)
//! as a differentiable op on its input: the forward is herd-model's own product (the kernels
//! inference uses), the backward hands the gradient on to the input, `∂L/∂x = ∂L/∂y · W`, so
//! LoRA factors in earlier layers receive their gradients through a quantized base (QLoRA).
//! The weight itself never receives a gradient. Quantized weights are dequantized for each
//! product (see `cpu_fwd`), so QLoRA computes exactly with the weights the file holds.

use std::sync::Arc;

use candle_core::{CpuStorage, CustomOp1, DType, Layout, Shape, Tensor};
use herd_model::nn::Linear;

#[derive(Debug, Clone)]
pub struct FrozenLinear {
    linear: Arc<Linear>,
}

impl FrozenLinear {
    pub fn new(linear: Linear) -> Self {
        FrozenLinear {
            linear: Arc::new(linear),
        }
    }

    pub fn linear(&self) -> &Linear {
        &self.linear
    }

    /// (out, in)
    pub fn dims(&self) -> candle_core::Result<(usize, usize)> {
        self.linear.dims().map_err(candle_core::Error::wrap)
    }

    /// x: [..., in] (f32) → [..., out]
    pub fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        // The op is recorded for the backward only when x is tracked (depends on a Var).
        x.contiguous()?.apply_op1(self.clone())
    }
}

impl CustomOp1 for FrozenLinear {
    fn name(&self) -> &'static str {
        "frozen-linear"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let (start, end) = layout
            .contiguous_offsets()
            .ok_or_else(|| candle_core::Error::Msg("frozen linear: input not contiguous".into()))?;
        let x: Vec<f32> = match storage {
            CpuStorage::F32(v) => v[start..end].to_vec(),
            CpuStorage::BF16(v) => v[start..end].iter().map(|x| x.to_f32()).collect(),
            CpuStorage::F16(v) => v[start..end].iter().map(|x| x.to_f32()).collect(),
            _ => {
                return Err(candle_core::Error::Msg(
                    "frozen linear: float input expected".into(),
                ))
            }
        };
        let x = Tensor::from_vec(x, layout.shape(), &candle_core::Device::Cpu)?;
        let y = match &*self.linear {
            // Dense weights: herd's kernels, the exact f32 product whatever the stored dtype.
            Linear::Dense(_) => self.linear.forward(&x).map_err(candle_core::Error::wrap)?,
            // Block-quantized or FP8: the weight dequantized for this product. Inference's
            // kernels round activations (to bf16 or 8-bit blocks), fine for decoding but noise
            // in a gradient; a training step has many rows, so dequantizing once per product
            // costs 1/rows of the product itself.
            _ => self.linear.forward_slow(&x).map_err(candle_core::Error::wrap)?,
        };
        let shape = y.shape().clone();
        let values = y.flatten_all()?.to_vec1::<f32>()?;
        let out = match storage {
            CpuStorage::BF16(_) => CpuStorage::BF16(values.into_iter().map(half::bf16::from_f32).collect()),
            CpuStorage::F16(_) => CpuStorage::F16(values.into_iter().map(half::f16::from_f32).collect()),
            _ => CpuStorage::F32(values),
        };
        Ok((out, shape))
    }

    /// ∂L/∂x = ∂L/∂y · W: dense weights read in their stored dtype, a panel at a time
    /// (herd-model's `Linear::backward`); quantized ones dequantized for the product.
    fn bwd(&self, arg: &Tensor, _res: &Tensor, grad_res: &Tensor) -> candle_core::Result<Option<Tensor>> {
        let grad = self
            .linear
            .backward(&grad_res.to_dtype(DType::F32)?.contiguous()?)
            .map_err(candle_core::Error::wrap)?;
        Ok(Some(grad.to_dtype(arg.dtype())?))
    }
}
