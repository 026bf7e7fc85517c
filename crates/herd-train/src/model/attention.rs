//! Llama 4 self-attention for training: the same numerics as herd-model's
//! `text::attention` (RoPE → QK-norm → temperature, chunked causal masks on local layers),
//! built only from ops candle can differentiate, over a flat axis of packed samples where each
//! sample attends only to itself.
//!
//! Shapes: T rows of the micro-batch, t rows of one sample, H/Hkv query/KV heads,
//! G = H / Hkv, Dh head dim.

use candle_core::{DType, Device, Tensor, D};
use herd_model::config::{AttentionKind, RopePairing, TemperatureTuning};
use herd_model::nn::rms_normalize;
use herd_model::text::mask::additive_mask;

use super::batch::Geometry;
use super::linear::TrainLinear;
use crate::error::Result;
use crate::lora::PassKey;

#[derive(Debug, Clone)]
pub struct TrainAttention {
    pub q_proj: TrainLinear,
    pub k_proj: TrainLinear,
    pub v_proj: TrainLinear,
    pub o_proj: TrainLinear,
    pub kind: AttentionKind,
    pub uses_qk_norm: bool,
    pub temperature_tuning: Option<TemperatureTuning>,
    pub n_heads: usize,
    pub n_kv_heads: usize,
    pub head_dim: usize,
    pub norm_eps: f64,
    pub rope_pairing: RopePairing,
}

impl TrainAttention {
    /// x: [T, D] → [T, D]
    pub fn forward(&self, x: &Tensor, geo: &Geometry, pass: &PassKey) -> Result<Tensor> {
        let t = x.dim(0)?;
        let (h, hkv, dh) = (self.n_heads, self.n_kv_heads, self.head_dim);
        let heads = |y: Tensor, n: usize| -> Result<Tensor> {
            Ok(y.reshape((t, n, dh))?.transpose(0, 1)?.contiguous()?)
        };
        let mut q = heads(self.q_proj.forward(x, pass)?, h)?; // [H, T, Dh]
        let mut k = heads(self.k_proj.forward(x, pass)?, hkv)?; // [Hkv, T, Dh]
        let v = heads(self.v_proj.forward(x, pass)?, hkv)?;
        if self.kind.uses_rope() {
            q = rotate(&q, &geo.cos, &geo.sin, self.rope_pairing)?;
            k = rotate(&k, &geo.cos, &geo.sin, self.rope_pairing)?;
        }
        if self.uses_qk_norm {
            q = rms_normalize(&q, self.norm_eps)?;
            k = rms_normalize(&k, self.norm_eps)?;
        }
        if self.temperature_tuning.is_some() {
            if let Some(scales) = &geo.temperature_scales {
                q = q.broadcast_mul(&scales.to_dtype(q.dtype())?)?; // [1, T, 1]
            }
        }
        let chunk_len = self.kind.chunk_len();
        let mut outs = Vec::with_capacity(geo.segments.len());
        for seg in &geo.segments {
            let len = seg.len();
            let qs = q.narrow(1, seg.start, len)?;
            let ks = k.narrow(1, seg.start, len)?;
            let vs = v.narrow(1, seg.start, len)?;
            let mask = Tensor::from_vec(additive_mask(0..len, 0..len, chunk_len), (len, len), &Device::Cpu)?;
            outs.push(self.attend(&qs, &ks, &vs, &mask)?);
        }
        let out_htd = Tensor::cat(&outs, 1)?.to_dtype(x.dtype())?; // [H, T, Dh]
        let out_td = out_htd.transpose(0, 1)?.reshape((t, h * dh))?;
        self.o_proj.forward(&out_td, pass)
    }

    /// q: [H, t, Dh], k/v: [Hkv, t, Dh], mask [t, t] → [H, t, Dh]
    fn attend(&self, q: &Tensor, k: &Tensor, v: &Tensor, mask: &Tensor) -> Result<Tensor> {
        // Scores, softmax and the weighted sum in f32 whatever the activations' dtype (the
        // reference's eager attention upcasts the softmax; candle's bf16 matmul is scalar).
        let (q, k, v) = (
            q.to_dtype(DType::F32)?,
            k.to_dtype(DType::F32)?,
            v.to_dtype(DType::F32)?,
        );
        let (h, t, dh) = q.dims3()?;
        let (hkv, g) = (self.n_kv_heads, h / self.n_kv_heads);
        // Query heads h·G .. h·G+G share KV head h: fold them into the row axis.
        let q = q.reshape((hkv, g * t, dh))?;
        let scores = (q.matmul(&k.t()?)? * (1.0 / (dh as f64).sqrt()))?; // [Hkv, G·t, t]
        let scores = scores.reshape((hkv, g, t, t))?.broadcast_add(mask)?;
        let probs = softmax_last(&scores)?.reshape((hkv, g * t, t))?;
        Ok(probs.matmul(&v)?.reshape((h, t, dh))?)
    }
}

/// Softmax over the last axis; the max is a constant for the backward (it cancels).
pub fn softmax_last(x: &Tensor) -> Result<Tensor> {
    let max = x.max_keepdim(D::Minus1)?.detach();
    let e = x.broadcast_sub(&max)?.exp()?;
    Ok(e.broadcast_div(&e.sum_keepdim(D::Minus1)?)?)
}

/// RoPE from differentiable ops. x: [n, T, Dh]; cos/sin: [T, Dh/2] → [n, T, Dh]
pub fn rotate(x: &Tensor, cos: &Tensor, sin: &Tensor, pairing: RopePairing) -> Result<Tensor> {
    let (n, t, dh) = x.dims3()?;
    let half = dh / 2;
    let (cos, sin) = (cos.to_dtype(x.dtype())?, sin.to_dtype(x.dtype())?);
    Ok(match pairing {
        RopePairing::Interleaved => {
            // Pairs (x[2m], x[2m+1]) rotate as the complex number x[2m] + i·x[2m+1].
            let pairs = x.reshape((n, t, half, 2))?;
            let (x0, x1) = (pairs.narrow(3, 0, 1)?, pairs.narrow(3, 1, 1)?);
            let (c, s) = (cos.reshape((1, t, half, 1))?, sin.reshape((1, t, half, 1))?);
            let r0 = (x0.broadcast_mul(&c)? - x1.broadcast_mul(&s)?)?;
            let r1 = (x0.broadcast_mul(&s)? + x1.broadcast_mul(&c)?)?;
            Tensor::cat(&[r0, r1], 3)?.reshape((n, t, dh))?
        }
        RopePairing::Halves => {
            let (x0, x1) = (x.narrow(2, 0, half)?, x.narrow(2, half, half)?);
            let (c, s) = (cos.reshape((1, t, half))?, sin.reshape((1, t, half))?);
            let r0 = (x0.broadcast_mul(&c)? - x1.broadcast_mul(&s)?)?;
            let r1 = (x0.broadcast_mul(&s)? + x1.broadcast_mul(&c)?)?;
            Tensor::cat(&[r0, r1], 2)?
        }
    })
}
