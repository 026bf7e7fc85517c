//! Llama 4 self-attention (LLAMA4.md §3): GQA with interleaved RoPE and QK RMS-norm on RoPE
//! layers, temperature-tuned queries on NoPE layers, chunked causal masks on local layers.
//!
//! Shapes: T tokens in the step, L cached + new keys, D hidden, H/Hkv query/KV heads,
//! G = H / Hkv queries per KV head, Dh head dim.
//! Reference: transformers `Llama4TextAttention.forward` (order: rope → qk-norm → temperature).

use candle_core::{DType, Tensor};

use crate::config::{AttentionKind, LayerPlan, ModelConfig, TemperatureTuning};
use crate::error::Result;
use crate::kernels::causal_attention::{causal_attention, has_blocked_build};
use crate::kernels::decode_attention::{decode_attention, CacheView, KvRows, Q8CacheView};
use crate::kernels::half_matmul::HalfElement;
use crate::kernels::isa::Isa;
use crate::kernels::kv_q8;
use crate::kv_cache::{widen_q8_0, LayerCache};
use crate::nn::norm::rms_normalize_fast;
use crate::nn::{Linear, RotaryTables};
use crate::step::{DecodeInputs, StepInputs};
use crate::text::mask;
use crate::weights::Weights;

/// One sequence's share of a batched step: its positions and masks, and its layer cache.
pub struct Segment<'a> {
    pub step: &'a StepInputs,
    pub cache: &'a mut LayerCache,
}

/// Most queries scored at once; bounds prefill memory to [H, QUERY_BLOCK, L] scores.
const QUERY_BLOCK: usize = 256;

/// Most queries per call of the CPU's causal kernel, which holds no score matrix: a narrow
/// cache's keys are widened once per run, so longer runs widen less (the bound keeps the f32
/// queries and outputs of a run to tens of MB at Scout's 40 heads).
const CAUSAL_QUERY_BLOCK: usize = 2048;

#[derive(Debug, Clone)]
pub struct Attention {
    q_proj: Linear,
    k_proj: Linear,
    v_proj: Linear,
    o_proj: Linear,
    kind: AttentionKind,
    uses_qk_norm: bool,
    temperature_tuning: Option<TemperatureTuning>,
    n_heads: usize,
    n_kv_heads: usize,
    head_dim: usize,
    norm_eps: f64,
}

impl Attention {
    pub fn load(vb: &Weights, config: &ModelConfig, plan: &LayerPlan) -> Result<Self> {
        let (d, dh) = (config.hidden_size, config.head_dim);
        Ok(Attention {
            q_proj: Linear::load(vb, "q_proj", d, config.n_heads * dh)?,
            k_proj: Linear::load(vb, "k_proj", d, config.n_kv_heads * dh)?,
            v_proj: Linear::load(vb, "v_proj", d, config.n_kv_heads * dh)?,
            o_proj: Linear::load(vb, "o_proj", config.n_heads * dh, d)?,
            kind: plan.attention,
            uses_qk_norm: plan.uses_qk_norm,
            temperature_tuning: plan.temperature_tuning,
            n_heads: config.n_heads,
            n_kv_heads: config.n_kv_heads,
            head_dim: dh,
            norm_eps: config.rms_norm_eps,
        })
    }

    /// x: [T, D] → [T, D]
    pub fn forward(&self, x_td: &Tensor, step: &StepInputs, cache: &mut LayerCache) -> Result<Tensor> {
        self.forward_batch(x_td, &mut [Segment { step, cache }], None)
    }

    /// A step over several sequences on one flat token axis: x [T, D] holds each segment's
    /// rows in order (T = Σ Tᵢ). The projections run once over all T rows — where batching
    /// pays: the weights stream from memory once per step, not once per sequence — and each
    /// segment attends over its own cache with its own positions and masks. → [T, D]
    ///
    /// `decode` (several sequences, one token each) takes the batched-decode path: RoPE,
    /// QK-norm and temperature once over all rows, then per sequence only the cache write and
    /// the decode kernel.
    pub fn forward_batch(
        &self,
        x_td: &Tensor,
        segments: &mut [Segment<'_>],
        decode: Option<&DecodeInputs>,
    ) -> Result<Tensor> {
        let q_all = self.q_proj.forward(x_td)?; // [T, H·Dh]
        let k_all = self.k_proj.forward(x_td)?; // [T, Hkv·Dh]
        let v_all = self.v_proj.forward(x_td)?;
        if let Some(decode) = decode.filter(|_| x_td.device().is_cpu()) {
            let out_td = self.decode_batch(&q_all, &k_all, &v_all, segments, decode)?;
            return self.o_proj.forward(&out_td);
        }
        let mut outs = Vec::with_capacity(segments.len());
        let mut row = 0;
        for seg in segments.iter_mut() {
            let t = seg.step.len();
            let (q, k, v) = (
                q_all.narrow(0, row, t)?,
                k_all.narrow(0, row, t)?,
                v_all.narrow(0, row, t)?,
            );
            outs.push(self.attend_segment(&q, &k, &v, seg.step, seg.cache)?);
            row += t;
        }
        let out_td = if outs.len() == 1 {
            outs.pop().ok_or(crate::error::Error::EmptyInput)?
        } else {
            Tensor::cat(&outs, 0)?
        };
        self.o_proj.forward(&out_td)
    }

    /// Batched decode: T sequences, one query each. Projections [T, H·Dh] / [T, Hkv·Dh] →
    /// attention outputs [T, H·Dh] before the output projection.
    fn decode_batch(
        &self,
        q_td: &Tensor,
        k_td: &Tensor,
        v_td: &Tensor,
        segments: &mut [Segment<'_>],
        decode: &DecodeInputs,
    ) -> Result<Tensor> {
        let t = segments.len();
        let (h, dh) = (self.n_heads, self.head_dim);
        // The rows as one "sequence" for the row-wise ops: [1, n, T, Dh].
        let (q, k, v) = self.positioned_heads(
            q_td,
            k_td,
            v_td,
            &decode.rotary,
            decode.temperature_scales.as_ref(),
        )?;
        let dtype = q.dtype();
        // [T, H, Dh] in f32: row i is sequence i's query.
        let q_thd = q
            .squeeze(0)?
            .transpose(0, 1)?
            .to_dtype(DType::F32)?
            .flatten_all()?
            .to_vec1::<f32>()?;
        let (k, v) = (k.squeeze(0)?, v.squeeze(0)?); // [Hkv, T, Dh]
        let scale = (1.0 / (dh as f64).sqrt()) as f32;
        let mut out = vec![0f32; t * h * dh];
        for (i, seg) in segments.iter_mut().enumerate() {
            let (k_all, v_all) = seg.cache.extend(&k.narrow(1, i, 1)?, &v.narrow(1, i, 1)?)?;
            let position = seg.step.positions.start;
            let first_key = mask::chunk_start(position, self.kind.chunk_len()).max(seg.cache.start());
            let len = position + 1 - first_key;
            let k_run = k_all.narrow(1, first_key - seg.cache.start(), len)?;
            let v_run = v_all.narrow(1, first_key - seg.cache.start(), len)?;
            let q_i = &q_thd[i * h * dh..(i + 1) * h * dh];
            let row = match self.decode_one(q_i, &k_run, &v_run, scale)? {
                Some(row) => row,
                None => {
                    // A layout the kernel does not read: the general product.
                    let q_run = Tensor::from_slice(q_i, (h, 1, dh), q_td.device())?.to_dtype(dtype)?;
                    let (k_run, v_run) = (values(&k_run)?.to_dtype(dtype)?, values(&v_run)?.to_dtype(dtype)?);
                    let out = self.attend(&q_run, &k_run, &v_run, None)?;
                    out.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?
                }
            };
            out[i * h * dh..(i + 1) * h * dh].copy_from_slice(&row);
        }
        Ok(Tensor::from_vec(out, (t, h * dh), q_td.device())?.to_dtype(dtype)?)
    }

    /// Projections [T, H·Dh] / [T, Hkv·Dh] → heads [1, H, T, Dh] / [1, Hkv, T, Dh] with the
    /// rows' positions applied: RoPE (RoPE layers), QK-norm, then the temperature scales
    /// [1, 1, T, 1] (tuned NoPE layers). Reference order: rope → qk-norm → temperature.
    fn positioned_heads(
        &self,
        q_td: &Tensor,
        k_td: &Tensor,
        v_td: &Tensor,
        rotary: &RotaryTables,
        temperature_scales: Option<&Tensor>,
    ) -> Result<(Tensor, Tensor, Tensor)> {
        let t = q_td.dims2()?.0;
        let heads = |y: &Tensor, n: usize| -> Result<Tensor> {
            Ok(y.reshape((t, n, self.head_dim))?
                .transpose(0, 1)?
                .contiguous()?
                .unsqueeze(0)?)
        };
        let mut q = heads(q_td, self.n_heads)?;
        let mut k = heads(k_td, self.n_kv_heads)?;
        let v = heads(v_td, self.n_kv_heads)?;
        if self.kind.uses_rope() {
            q = rotary.apply(&q)?;
            k = rotary.apply(&k)?;
        }
        if self.uses_qk_norm {
            q = rms_normalize_fast(&q, self.norm_eps)?;
            k = rms_normalize_fast(&k, self.norm_eps)?;
        }
        if let (Some(_), Some(scales)) = (self.temperature_tuning, temperature_scales) {
            q = q.broadcast_mul(scales)?;
        }
        Ok((q, k, v))
    }

    /// One query [H·Dh] (f32) against a cache view [Hkv, L, Dh] of any stored dtype (or of
    /// Q8_0 rows), by the decode kernel → [H·Dh]; `None` for a layout the kernel does not read.
    fn decode_one(&self, q: &[f32], k: &Tensor, v: &Tensor, scale: f32) -> Result<Option<Vec<f32>>> {
        let (hkv, dh, len) = (self.n_kv_heads, self.head_dim, k.dims()[1]);
        let (k_store, kl) = k.storage_and_layout();
        let (v_store, vl) = v.storage_and_layout();
        let (candle_core::Storage::Cpu(kc), candle_core::Storage::Cpu(vc)) = (&*k_store, &*v_store) else {
            return Ok(None);
        };
        fn run<R: KvRows>(q: &[f32], k: Option<R>, v: Option<R>, scale: f32) -> Option<Vec<f32>> {
            Some(decode_attention(q, &k?, &v?, scale))
        }
        fn dense<E: HalfElement + candle_core::WithDType>(
            q: &[f32],
            (kc, kl): (&candle_core::CpuStorage, &candle_core::Layout),
            (vc, vl): (&candle_core::CpuStorage, &candle_core::Layout),
            (hkv, len, dh): (usize, usize, usize),
            scale: f32,
        ) -> Result<Option<Vec<f32>>> {
            let k = cache_view(kc.as_slice::<E>()?, kl, hkv, len, dh);
            let v = cache_view(vc.as_slice::<E>()?, vl, hkv, len, dh);
            Ok(run(q, k, v, scale))
        }
        let shape = (hkv, len, dh);
        match k.dtype() {
            DType::F32 => dense::<f32>(q, (kc, kl), (vc, vl), shape, scale),
            DType::BF16 => dense::<half::bf16>(q, (kc, kl), (vc, vl), shape, scale),
            DType::F16 => dense::<half::f16>(q, (kc, kl), (vc, vl), shape, scale),
            DType::U8 => {
                let k = q8_cache_view(kc.as_slice::<u8>()?, kl, hkv, len, dh);
                let v = q8_cache_view(vc.as_slice::<u8>()?, vl, hkv, len, dh);
                Ok(run(q, k, v, scale))
            }
            _ => Ok(None),
        }
    }

    /// One sequence's attention: its projections [T, H·Dh] / [T, Hkv·Dh] after the cache it
    /// extends → [T, H·Dh], before the output projection.
    fn attend_segment(
        &self,
        q_td: &Tensor,
        k_td: &Tensor,
        v_td: &Tensor,
        step: &StepInputs,
        cache: &mut LayerCache,
    ) -> Result<Tensor> {
        let t = step.len();
        let (q, k, v) =
            self.positioned_heads(q_td, k_td, v_td, &step.rotary, step.temperature_scales.as_ref())?;

        // [Hkv, L, Dh], keys for absolute positions cache.start() ..
        let (k_all, v_all) = cache.extend(&k.squeeze(0)?, &v.squeeze(0)?)?;
        let q_htd = q.squeeze(0)?;
        let keys_start = cache.start();
        let chunk_len = self.kind.chunk_len();

        let mut outs = Vec::new();
        // The CPU's causal kernel where it has its blocked build (Llama 4's head size on
        // AVX-512); the masked product otherwise.
        let causal = q.device().is_cpu() && has_blocked_build(Isa::current(), self.head_dim);
        let max_queries = if causal { CAUSAL_QUERY_BLOCK } else { QUERY_BLOCK };
        for run in mask::query_blocks(step.positions.clone(), chunk_len, max_queries) {
            let first_key = mask::chunk_start(run.start, chunk_len).max(keys_start);
            let keys = first_key..run.end;
            let q_run = q_htd.narrow(1, run.start - step.positions.start, run.len())?;
            let mut k_run = k_all.narrow(1, first_key - keys_start, keys.len())?;
            let mut v_run = v_all.narrow(1, first_key - keys_start, keys.len())?;
            if run.len() == 1 && q.device().is_cpu() {
                // One decode query reads the cache where it lies, whatever its dtype, through
                // the same kernel as a batched decode step (so a sequence decodes the same
                // alone or batched).
                let (h, _, dh) = q_run.dims3()?;
                let q32 = q_run.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?;
                let scale = (1.0 / (dh as f64).sqrt()) as f32;
                if let Some(out) = self.decode_one(&q32, &k_run, &v_run, scale)? {
                    outs.push(Tensor::from_vec(out, (h, 1, dh), q.device())?.to_dtype(q.dtype())?);
                    continue;
                }
            }
            // Q8_0 rows (`--kv-dtype q8_0`): the run this block of queries needs, widened to f32
            // once (the causal kernel and the masked product read values).
            k_run = values(&k_run)?;
            v_run = values(&v_run)?;
            if run.len() > 1 && causal {
                // A prompt's queries: each over its own causal prefix of the run's keys (the
                // first sees those up to its position, each later one a key more), in f32
                // whatever the compute dtype, as a decode step attends.
                outs.push(self.attend_causal(&q_run, &k_run, &v_run, run.start + 1 - first_key)?);
                continue;
            }
            if k_run.dtype() != q.dtype() {
                // A cache stored narrower than the compute dtype (`--kv-dtype`): widen the keys
                // this block of queries needs.
                k_run = k_run.to_dtype(q.dtype())?;
                v_run = v_run.to_dtype(q.dtype())?;
            }
            let mask = if run.len() > 1 {
                Some(step.mask(run.clone(), keys.clone(), chunk_len, q.dtype(), q.device())?)
            } else {
                // A single query sees every key handed to it (all ≤ it, all in its block).
                None
            };
            outs.push(self.attend(&q_run, &k_run, &v_run, mask.as_ref())?);
        }
        // [H, T, Dh] → [T, H·Dh]
        let out_htd = Tensor::cat(&outs, 1)?;
        Ok(out_htd
            .transpose(0, 1)?
            .reshape((t, self.n_heads * self.head_dim))?)
    }

    /// A run of queries q [H, Tq, Dh] over key runs k/v [Hkv, L, Dh], query i seeing the first
    /// `first_len + i` keys, by the causal kernel in f32 (no mask, no score matrix) →
    /// [H, Tq, Dh] in q's dtype.
    fn attend_causal(&self, q: &Tensor, k: &Tensor, v: &Tensor, first_len: usize) -> Result<Tensor> {
        let (h, tq, dh) = q.dims3()?;
        let dtype = q.dtype();
        let q = q.to_dtype(DType::F32)?;
        // A cache stored narrower than f32 (`--kv-dtype`) is widened once for the whole run,
        // not once per query; an f32 cache stays a view of its buffer.
        let (mut k, mut v) = (k.to_dtype(DType::F32)?, v.to_dtype(DType::F32)?);
        let q_thd = q.transpose(0, 1)?.flatten_all()?.to_vec1::<f32>()?; // [Tq, H, Dh]
        let scale = (1.0 / (dh as f64).sqrt()) as f32;
        let len = k.dims()[1];
        let out = loop {
            let (k_store, k_layout) = k.storage_and_layout();
            let (v_store, v_layout) = v.storage_and_layout();
            let (candle_core::Storage::Cpu(k_cpu), candle_core::Storage::Cpu(v_cpu)) = (&*k_store, &*v_store)
            else {
                return Err(candle_core::Error::Msg("causal attention needs CPU tensors".into()).into());
            };
            let views = (
                cache_view(k_cpu.as_slice::<f32>()?, k_layout, self.n_kv_heads, len, dh),
                cache_view(v_cpu.as_slice::<f32>()?, v_layout, self.n_kv_heads, len, dh),
            );
            if let (Some(k_view), Some(v_view)) = views {
                break causal_attention(&q_thd, tq, &k_view, &v_view, first_len, scale);
            }
            if k.is_contiguous() && v.is_contiguous() {
                return Err(candle_core::Error::Msg(format!(
                    "key run {:?} does not match {} heads of {dh}",
                    k.dims(),
                    self.n_kv_heads
                ))
                .into());
            }
            drop((k_store, v_store));
            (k, v) = (k.contiguous()?, v.contiguous()?);
        };
        Ok(Tensor::from_vec(out, (tq, h, dh), q.device())?
            .transpose(0, 1)?
            .to_dtype(dtype)?)
    }

    /// Calls `f(path, linear)` on q/k/v/o, path `{prefix}q_proj` etc.
    pub fn visit_linears(
        &mut self,
        prefix: &str,
        f: &mut dyn FnMut(&str, &mut Linear) -> Result<()>,
    ) -> Result<()> {
        f(&format!("{prefix}q_proj"), &mut self.q_proj)?;
        f(&format!("{prefix}k_proj"), &mut self.k_proj)?;
        f(&format!("{prefix}v_proj"), &mut self.v_proj)?;
        f(&format!("{prefix}o_proj"), &mut self.o_proj)
    }

    pub fn stored_bytes(&self) -> usize {
        [&self.q_proj, &self.k_proj, &self.v_proj, &self.o_proj]
            .iter()
            .map(|l| l.stored_bytes())
            .sum()
    }

    /// Scaled dot-product attention with grouped KV heads.
    /// q: [H, Tq, Dh], k/v: [Hkv, L, Dh], mask: [Tq, L] → [H, Tq, Dh]
    fn attend(&self, q: &Tensor, k: &Tensor, v: &Tensor, mask: Option<&Tensor>) -> Result<Tensor> {
        let (h, tq, dh) = q.dims3()?;
        let l = k.dims()[1];
        let g = h / self.n_kv_heads;
        // Query heads h·G .. h·G+G share KV head h: fold them into the row axis.
        let q = q.reshape((self.n_kv_heads, g * tq, dh))?;
        let scores = (q.matmul(&k.t()?)? * (1.0 / (dh as f64).sqrt()))?; // [Hkv, G·Tq, L]
        let scores = match mask {
            Some(m) => scores.reshape((self.n_kv_heads, g, tq, l))?.broadcast_add(m)?,
            None => scores,
        };
        let probs = softmax(&scores)?.reshape((self.n_kv_heads, g * tq, l))?;
        // v is a view of the cache's buffer (rows contiguous, heads a capacity apart): the
        // matmul reads it where it lies, no copy of the history per step.
        Ok(probs.matmul(v)?.reshape((h, tq, dh))?)
    }
}

/// A run of cached keys or values as values: Q8_0 rows (bytes) widened to f32 [Hkv, L, Dh],
/// any other dtype as it is.
fn values(run: &Tensor) -> Result<Tensor> {
    if run.dtype() == DType::U8 {
        widen_q8_0(run)
    } else {
        Ok(run.clone())
    }
}

/// A [Hkv, L, Dh] view of a cache buffer as the decode kernel reads it: rows contiguous, heads
/// `stride[0]` apart (the buffer narrowed along L); `None` for any other layout.
fn cache_view<'a, E>(
    all: &'a [E],
    layout: &candle_core::Layout,
    n_kv_heads: usize,
    len: usize,
    head_dim: usize,
) -> Option<CacheView<'a, E>> {
    let stride = layout.stride();
    let fits = stride.len() == 3 && stride[2] == 1 && stride[1] == head_dim;
    let view = CacheView {
        data: all.get(layout.start_offset()..)?,
        n_kv_heads,
        head_stride: *stride.first()?,
        len,
        head_dim,
    };
    (fits && view.in_bounds()).then_some(view)
}

/// [`cache_view`] for a buffer of Q8_0 rows (bytes [Hkv, capacity, Dh/32 · 34]).
fn q8_cache_view<'a>(
    all: &'a [u8],
    layout: &candle_core::Layout,
    n_kv_heads: usize,
    len: usize,
    head_dim: usize,
) -> Option<Q8CacheView<'a>> {
    let stride = layout.stride();
    let fits = stride.len() == 3 && stride[2] == 1 && stride[1] == kv_q8::row_bytes(head_dim);
    let view = Q8CacheView {
        data: all.get(layout.start_offset()..)?,
        n_kv_heads,
        head_stride: *stride.first()?,
        len,
        head_dim,
    };
    (fits && view.in_bounds()).then_some(view)
}

/// Softmax over the last axis, in f32 for reduced-precision activations.
fn softmax(x: &Tensor) -> Result<Tensor> {
    let dtype = x.dtype();
    if dtype == DType::F32 {
        return Ok(candle_nn::ops::softmax_last_dim(x)?);
    }
    Ok(candle_nn::ops::softmax_last_dim(&x.to_dtype(DType::F32)?)?.to_dtype(dtype)?)
}
