//! `y = x Wᵀ` with a weight stored as nn.Linear stores it, `[out, in]`, no bias — in whatever
//! format the checkpoint holds it: dense f32 / bf16 / f16 (kept at that precision in memory) or
//! block-quantized (Q8_0, Q4_K, Q6_K, …). The compute dtype is the activations' dtype, a separate
//! choice: f32 activations against bf16 weights accumulate in f32 without upcasting the weight.
//!
//! [`Linear::forward_slow`] is every format's slow twin: the weight dequantized (or widened) to
//! f32, then a plain f32 matmul.

use std::sync::Arc;

use candle_core::{DType, Device, Tensor};
use half::{bf16, f16};

use crate::error::{Error, Result};
use crate::kernels::half_matmul::{self, HalfElement};
use crate::kernels::transposed_matmul;
use crate::nn::matmul_precision::{self, MatmulPrecision};
use crate::nn::LowRank;
use crate::weights::device_quant::DeviceQuantTensor;
use crate::weights::fp8::Fp8Matrix;
use crate::weights::{QuantTensor, QuantType, Weights};

/// What [`Linear::forward_then`] runs on a product's f32 result: (values [rows, out] flat, out).
pub type Epilogue<'a> = dyn Fn(&mut [f32], usize) + 'a;

#[derive(Debug, Clone)]
pub enum Linear {
    /// [out, in] in the stored dtype.
    Dense(Tensor),
    /// [out, in] in ggml blocks (CPU).
    Quantized(Arc<QuantTensor>),
    /// [out, in] in ggml blocks on a GPU (candle's CUDA kernels).
    QuantizedDevice(Arc<DeviceQuantTensor>),
    /// [out, in] float8_e4m3fn with a scale per output channel (CPU).
    Fp8(Arc<Fp8Matrix>),
    /// A base weight plus an unmerged low-rank update (a LoRA adapter).
    Adapted(Arc<(Linear, LowRank)>),
}

/// How a weight is held in memory, for reports and tests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WeightFormat {
    Dense(DType),
    Quantized(QuantType),
    Fp8,
}

impl std::fmt::Display for WeightFormat {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            WeightFormat::Dense(d) => write!(f, "{}", d.as_str()),
            WeightFormat::Quantized(q) => write!(f, "{q}"),
            WeightFormat::Fp8 => f.write_str("fp8_e4m3 (per-channel scale)"),
        }
    }
}

impl Linear {
    /// Loads `{name}.weight` with shape `[out_dim, in_dim]`, in its stored format (or
    /// quantized at load, when the view asks for that).
    pub fn load(vb: &Weights, name: &str, in_dim: usize, out_dim: usize) -> Result<Self> {
        vb.linear(&format!("{name}.weight"), in_dim, out_dim)
    }

    pub fn from_weight(weight: Tensor) -> Self {
        Linear::Dense(weight)
    }

    pub fn format(&self) -> WeightFormat {
        match self {
            Linear::Dense(w) => WeightFormat::Dense(w.dtype()),
            Linear::Quantized(q) => WeightFormat::Quantized(q.quant_type()),
            Linear::QuantizedDevice(q) => WeightFormat::Quantized(q.quant_type()),
            Linear::Fp8(_) => WeightFormat::Fp8,
            Linear::Adapted(pair) => pair.0.format(),
        }
    }

    /// This weight with a low-rank update beside it (the update's shape must match).
    pub fn adapted(self, update: LowRank) -> Result<Self> {
        if update.dims()? != self.dims()? {
            return Err(Error::Kernel(format!(
                "an update of shape {:?} on a weight of shape {:?}",
                update.dims()?,
                self.dims()?
            )));
        }
        let update = update.to_device(&self.device())?;
        Ok(Linear::Adapted(Arc::new((self, update))))
    }

    /// Where the product runs: the weight's device, or the base's for an adapted weight (a
    /// second adapter stacked on a GPU weight goes to the GPU too). Block-quantized and FP8
    /// weights on the host are CPU kernels.
    pub fn device(&self) -> Device {
        match self {
            Linear::Dense(w) => w.device().clone(),
            Linear::QuantizedDevice(q) => q.device().clone(),
            Linear::Quantized(_) | Linear::Fp8(_) => Device::Cpu,
            Linear::Adapted(pair) => pair.0.device(),
        }
    }

    /// (out, in)
    pub fn dims(&self) -> Result<(usize, usize)> {
        match self {
            Linear::Dense(w) => Ok(w.dims2()?),
            Linear::Quantized(q) => Ok((q.rows(), q.cols())),
            Linear::QuantizedDevice(q) => Ok((q.rows(), q.cols())),
            Linear::Fp8(m) => Ok((m.rows(), m.cols())),
            Linear::Adapted(pair) => pair.0.dims(),
        }
    }

    /// Bytes the weight occupies in memory.
    pub fn stored_bytes(&self) -> usize {
        match self {
            Linear::Dense(w) => w.elem_count() * w.dtype().size_in_bytes(),
            Linear::Quantized(q) => q.stored_bytes(),
            Linear::QuantizedDevice(q) => q.stored_bytes(),
            Linear::Fp8(m) => m.stored_bytes(),
            Linear::Adapted(pair) => pair.0.stored_bytes() + pair.1.stored_bytes(),
        }
    }

    /// x: [..., in] → [..., out], in x's dtype.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        self.product(x, None)
    }

    /// [`Linear::forward`] with `epilogue` run on the f32 result ([rows, out] flat, and out)
    /// before it becomes a tensor in x's dtype: a bias and an activation in f32, in the one pass
    /// the product's output takes anyway. Where the product is a tensor already (other devices,
    /// adapted weights) it goes through host f32 values for the epilogue: a CPU tool.
    pub fn forward_then(&self, x: &Tensor, epilogue: &Epilogue<'_>) -> Result<Tensor> {
        self.product(x, Some(epilogue))
    }

    fn product(&self, x: &Tensor, epilogue: Option<&Epilogue<'_>>) -> Result<Tensor> {
        let finish = |mut y: Vec<f32>, lead: Vec<usize>, n: usize| {
            if let Some(f) = epilogue {
                f(&mut y, n);
            }
            output(y, lead, n, x.device(), x.dtype())
        };
        let tensor = match self {
            // On the CPU herd's kernels take every dense dtype, accumulating in f32 whatever
            // the compute dtype (candle's bf16 matmul is scalar: 0.2 tok/s). One kernel for all
            // three also means the same values compute the same whichever dtype holds them (a
            // GGUF keeps the router in F32 where the folder had bf16).
            Linear::Dense(w) if w.device().is_cpu() && x.device().is_cpu() => match w.dtype() {
                // Narrow-float weights meet activations at the thread's matmul precision;
                // f32 weights (a GGUF's router) always at full precision, as llama.cpp's.
                DType::BF16 => return half_product::<bf16>(x, w, matmul_precision::current(), finish),
                DType::F16 => return half_product::<f16>(x, w, matmul_precision::current(), finish),
                DType::F32 => return half_product::<f32>(x, w, MatmulPrecision::Highest, finish),
                _ if w.dtype() == x.dtype() => x.broadcast_matmul(&w.t()?)?,
                _ => x.broadcast_matmul(&w.to_dtype(x.dtype())?.t()?)?,
            },
            Linear::Dense(w) => match device_gemv(w, x)? {
                Some(y) => y,
                None if w.dtype() == x.dtype() => x.broadcast_matmul(&w.t()?)?,
                None => x.broadcast_matmul(&w.to_dtype(x.dtype())?.t()?)?,
            },
            Linear::Quantized(q) => {
                return with_flat_f32(x, q.cols(), |lead, x32| {
                    let t = x32.len() / q.cols().max(1);
                    finish(q.matmul_t(x32, t)?, lead, q.rows())
                });
            }
            Linear::QuantizedDevice(q) => q.forward(x)?,
            Linear::Fp8(m) => {
                let (lead, mut x32) = flat_f32(x, m.cols())?;
                matmul_precision::current().round(&mut x32);
                let t = x32.len() / m.cols().max(1);
                return finish(m.matmul_t(&x32, t), lead, m.rows());
            }
            Linear::Adapted(pair) => (pair.0.forward(x)? + pair.1.delta(x)?)?,
        };
        let Some(f) = epilogue else { return Ok(tensor) };
        let dims = tensor.dims().to_vec();
        let n = dims.last().copied().unwrap_or(1);
        let mut values = tensor.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?;
        f(&mut values, n);
        Ok(Tensor::from_vec(values, dims, tensor.device())?.to_dtype(tensor.dtype())?)
    }

    /// The gradient a product sends back to its input: `∂L/∂x = ∂L/∂y · W` for
    /// grad_y [..., out] → [..., in], in grad_y's dtype (computed in f32). Dense CPU weights
    /// stay in their stored dtype ([`transposed_matmul`]); other formats are dequantized for
    /// the product.
    pub fn backward(&self, grad_y: &Tensor) -> Result<Tensor> {
        match self {
            Linear::Dense(w) if w.device().is_cpu() && grad_y.device().is_cpu() => match w.dtype() {
                DType::BF16 => transposed_product::<bf16>(grad_y, w),
                DType::F16 => transposed_product::<f16>(grad_y, w),
                DType::F32 => transposed_product::<f32>(grad_y, w),
                _ => self.backward_slow(grad_y),
            },
            Linear::Adapted(pair) => Ok((pair.0.backward(grad_y)? + pair.1.backward(grad_y)?)?),
            _ => self.backward_slow(grad_y),
        }
    }

    /// [`Self::backward`]'s slow twin: the weight as f32, one f32 matmul.
    pub fn backward_slow(&self, grad_y: &Tensor) -> Result<Tensor> {
        let w32 = self.weight_f32(grad_y.device())?;
        let g = grad_y.to_dtype(DType::F32)?.broadcast_matmul(&w32)?;
        Ok(g.to_dtype(grad_y.dtype())?)
    }

    /// The slow twin: the weight as f32 (dequantized or widened), one f32 matmul.
    pub fn forward_slow(&self, x: &Tensor) -> Result<Tensor> {
        let w32 = self.weight_f32(x.device())?;
        let y = x.to_dtype(DType::F32)?.broadcast_matmul(&w32.t()?)?;
        Ok(y.to_dtype(x.dtype())?)
    }

    /// The weight [out, in] as f32 (a full copy: for tests, reports and conversions).
    pub fn weight_f32(&self, device: &Device) -> Result<Tensor> {
        match self {
            Linear::Dense(w) => Ok(w.to_dtype(DType::F32)?.to_device(device)?),
            Linear::Quantized(q) => Ok(Tensor::from_vec(q.dequantize()?, (q.rows(), q.cols()), device)?),
            Linear::QuantizedDevice(q) => q.dequantize(device),
            Linear::Fp8(m) => Ok(Tensor::from_vec(m.dequantize(), (m.rows(), m.cols()), device)?),
            // The merged weight W + s·B A.
            Linear::Adapted(pair) => {
                Ok((pair.0.weight_f32(device)? + pair.1.weight_f32()?.to_device(device)?)?)
            }
        }
    }
}

/// One row against a weight on the GPU: herd's memory-bound matrix-vector kernel (a decode
/// step's every projection), where it takes the dtypes; `None` sends the caller to cuBLAS.
#[cfg(feature = "cuda")]
fn device_gemv(w: &Tensor, x: &Tensor) -> Result<Option<Tensor>> {
    let k = x.dims().last().copied().unwrap_or(0);
    if !x.device().is_cuda() || k == 0 || x.elem_count() != k {
        return Ok(None);
    }
    let y = crate::cuda::gemv(w, &x.reshape((1, k))?, None)?;
    let mut dims = x.dims().to_vec();
    let out = w.dims().first().copied().unwrap_or(0);
    if let Some(last) = dims.last_mut() {
        *last = out;
    }
    Ok(match y {
        Some(y) => Some(y.reshape(dims)?),
        None => None,
    })
}

#[cfg(not(feature = "cuda"))]
fn device_gemv(_: &Tensor, _: &Tensor) -> Result<Option<Tensor>> {
    Ok(None)
}

/// f32 activations (rounded to `precision`) against a bf16/f16/f32 weight, on the CPU, without
/// widening the whole weight; `finish` makes the f32 result [rows, n] a tensor.
fn half_product<W: HalfElement + candle_core::WithDType>(
    x: &Tensor,
    w: &Tensor,
    precision: MatmulPrecision,
    finish: impl FnOnce(Vec<f32>, Vec<usize>, usize) -> Result<Tensor>,
) -> Result<Tensor> {
    let (n, k) = w.dims2()?;
    let product = |x32: &[f32]| {
        let t = x32.len() / k.max(1);
        with_cpu_values(w, |values: &[W]| half_matmul::matmul_t(x32, t, values, n, k))
    };
    match precision {
        MatmulPrecision::Highest => return with_flat_f32(x, k, |lead, x32| finish(product(x32)?, lead, n)),
        MatmulPrecision::Medium => {
            // Rounded as the activations are packed, where the product takes bf16 blocks.
            return with_flat_f32(x, k, |lead, x32| {
                let t = x32.len() / k.max(1);
                let y = with_cpu_values(w, |values: &[W]| {
                    half_matmul::matmul_t_rounded(x32, t, values, n, k)
                })?;
                finish(y, lead, n)
            });
        }
        MatmulPrecision::High => {}
    }
    let (lead, mut x32) = flat_f32(x, k)?;
    // Rounded activations need fewer bf16 planes, so the block kernels take fewer passes.
    precision.round(&mut x32);
    finish(product(&x32)?, lead, n)
}

/// grad_y [..., n] times a bf16/f16/f32 weight [n, k] on the CPU → [..., k].
fn transposed_product<W: HalfElement + candle_core::WithDType>(
    grad_y: &Tensor,
    w: &Tensor,
) -> Result<Tensor> {
    let (n, k) = w.dims2()?;
    let (lead, g32) = flat_f32(grad_y, n)?;
    let t = g32.len() / n.max(1);
    let y = with_cpu_values(w, |values: &[W]| {
        transposed_matmul::matmul_n(&g32, t, values, n, k)
    })?;
    output(y, lead, k, grad_y.device(), grad_y.dtype())
}

/// `f` over a CPU tensor's values where they lie (row-major; made contiguous first if needed).
pub(crate) fn with_cpu_values<W: candle_core::WithDType, R>(
    w: &Tensor,
    f: impl FnOnce(&[W]) -> R,
) -> Result<R> {
    let w = w.contiguous()?;
    let (storage, layout) = w.storage_and_layout();
    let candle_core::Storage::Cpu(cpu) = &*storage else {
        return Err(Error::Kernel(
            "herd's CPU kernels got a tensor on another device".into(),
        ));
    };
    let all = cpu.as_slice::<W>()?;
    let (start, end) = layout
        .contiguous_offsets()
        .ok_or_else(|| Error::Kernel("tensor is not contiguous".into()))?;
    let values = all
        .get(start..end)
        .ok_or_else(|| Error::Kernel("tensor layout outside its storage".into()))?;
    Ok(f(values))
}

/// x [..., k] as one flat f32 vector, and its leading dims.
fn flat_f32(x: &Tensor, k: usize) -> Result<(Vec<usize>, Vec<f32>)> {
    let lead = lead_dims(x, k)?;
    let v = x.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?;
    Ok((lead, v))
}

/// `f(lead dims, x [..., k] as flat f32 values)`: the values where they lie when x is a
/// contiguous f32 tensor on the CPU (a prompt's activations are megabytes, and the copy
/// [`flat_f32`] makes ran on one thread while the pool waited: 2.4 % of a Q4_K_M prefill),
/// a converted copy otherwise.
fn with_flat_f32<R>(x: &Tensor, k: usize, f: impl FnOnce(Vec<usize>, &[f32]) -> Result<R>) -> Result<R> {
    let lead = lead_dims(x, k)?;
    if x.dtype() == DType::F32 && x.device().is_cpu() {
        return with_cpu_values(x, |values: &[f32]| f(lead, values))?;
    }
    let (lead, v) = flat_f32(x, k)?;
    f(lead, &v)
}

/// x's dims before the last, which must be k.
fn lead_dims(x: &Tensor, k: usize) -> Result<Vec<usize>> {
    let dims = x.dims();
    let (last, lead) = dims
        .split_last()
        .ok_or_else(|| Error::Kernel("a linear layer needs at least one dimension".into()))?;
    if *last != k {
        return Err(Error::Kernel(format!(
            "input has {last} features, the weight takes {k}"
        )));
    }
    Ok(lead.to_vec())
}

fn output(y: Vec<f32>, mut lead: Vec<usize>, n: usize, device: &Device, dtype: DType) -> Result<Tensor> {
    lead.push(n);
    Ok(Tensor::from_vec(y, lead, device)?.to_dtype(dtype)?)
}

/// `y = x Wᵀ + b` (the vision tower's layers): the weight through [`Linear`], in its stored
/// format; the bias, small, in the compute dtype.
#[derive(Debug, Clone)]
pub struct BiasedLinear {
    linear: Linear,
    /// [out]
    bias: Tensor,
}

impl BiasedLinear {
    /// Loads `{name}.weight` [out, in] and `{name}.bias` [out].
    pub fn load(vb: &Weights, name: &str, in_dim: usize, out_dim: usize) -> Result<Self> {
        Ok(BiasedLinear {
            linear: Linear::load(vb, name, in_dim, out_dim)?,
            bias: vb.get(&format!("{name}.bias"), &[out_dim])?,
        })
    }

    /// A layer from its weight [out, in] and bias [out].
    pub fn new(linear: Linear, bias: Tensor) -> Self {
        BiasedLinear { linear, bias }
    }

    /// Several layers that read the same input as one, their outputs side by side ([W₁; W₂; …]
    /// and [b₁; b₂; …]): one product instead of several, the input packed once. Each output
    /// row's sum is the one its own layer computes (a row's products do not depend on the rows
    /// beside it). None unless all weights are dense, in one dtype, on one device.
    pub fn stack(parts: &[&BiasedLinear]) -> Result<Option<BiasedLinear>> {
        let mut weights = Vec::with_capacity(parts.len());
        for part in parts {
            let Linear::Dense(w) = &part.linear else {
                return Ok(None);
            };
            weights.push(w.clone());
        }
        let Some(first) = weights.first() else {
            return Ok(None);
        };
        let (dtype, device) = (first.dtype(), first.device().clone());
        if weights
            .iter()
            .any(|w| w.dtype() != dtype || !w.device().same_device(&device))
            || parts.iter().any(|p| p.bias.dtype() != parts[0].bias.dtype())
        {
            return Ok(None);
        }
        let biases: Vec<Tensor> = parts.iter().map(|p| p.bias.clone()).collect();
        Ok(Some(BiasedLinear {
            linear: Linear::Dense(Tensor::cat(&weights, 0)?),
            bias: Tensor::cat(&biases, 0)?,
        }))
    }

    /// x: [..., in] → [..., out]
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        self.forward_act(x, false)
    }

    /// x: [..., in] → GELU(x Wᵀ + b) [..., out], the exact (erf) GELU.
    pub fn forward_gelu(&self, x: &Tensor) -> Result<Tensor> {
        self.forward_act(x, true)
    }

    fn forward_act(&self, x: &Tensor, gelu: bool) -> Result<Tensor> {
        if x.device().is_cpu() {
            // Bias and activation in f32 on the product's f32 result, before its one
            // conversion to the compute dtype (candle's bf16 add and erf are scalar loops).
            let bias = self.bias.to_dtype(DType::F32)?.to_vec1::<f32>()?;
            return self.linear.forward_then(x, &|y, _| {
                crate::kernels::gelu::add_bias_then_gelu(y, &bias, gelu)
            });
        }
        let y = self.linear.forward(x)?.broadcast_add(&self.bias)?;
        Ok(if gelu { y.gelu_erf()? } else { y })
    }
}
