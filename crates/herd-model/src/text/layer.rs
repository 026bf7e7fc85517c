//! One pre-norm decoder layer: `h = x + attn(norm(x)); out = h + ffn(norm(h))`.

use candle_core::Tensor;

use crate::config::{LayerPlan, ModelConfig};
use crate::error::Result;
use crate::kv_cache::LayerCache;
use crate::nn::{Linear, RmsNorm};
use crate::step::{DecodeInputs, StepInputs};
use crate::text::attention::Segment;
use crate::text::{Attention, FeedForward};
use crate::weights::Weights;

#[derive(Debug, Clone)]
pub struct DecoderLayer {
    input_layernorm: RmsNorm,
    self_attn: Attention,
    post_attention_layernorm: RmsNorm,
    feed_forward: FeedForward,
}

impl DecoderLayer {
    pub fn load(vb: &Weights, config: &ModelConfig, plan: &LayerPlan) -> Result<Self> {
        let (d, eps) = (config.hidden_size, config.rms_norm_eps);
        Ok(DecoderLayer {
            input_layernorm: RmsNorm::load(vb, "input_layernorm", d, eps)?,
            self_attn: Attention::load(&vb.pp("self_attn"), config, plan)?,
            post_attention_layernorm: RmsNorm::load(vb, "post_attention_layernorm", d, eps)?,
            feed_forward: FeedForward::load(&vb.pp("feed_forward"), config, plan)?,
        })
    }

    /// x: [T, D] → [T, D]
    pub fn forward(&self, x: &Tensor, step: &StepInputs, cache: &mut LayerCache) -> Result<Tensor> {
        self.forward_batch(x, &mut [Segment { step, cache }], None)
    }

    /// Several sequences' rows on one token axis, each segment with its own positions and
    /// cache (see [`Attention::forward_batch`]). x: [T, D] → [T, D]
    pub fn forward_batch(
        &self,
        x: &Tensor,
        segments: &mut [Segment<'_>],
        decode: Option<&DecodeInputs>,
    ) -> Result<Tensor> {
        let h = (x + self
            .self_attn
            .forward_batch(&self.input_layernorm.forward(x)?, segments, decode)?)?;
        Ok((&h
            + self
                .feed_forward
                .forward(&self.post_attention_layernorm.forward(&h)?)?)?)
    }

    /// Calls `f(path, linear)` on every linear of the layer, paths under `prefix`
    /// (`layers.3.self_attn.q_proj`, `layers.3.feed_forward.experts.0.gate_proj`, …).
    pub fn visit_linears(
        &mut self,
        prefix: &str,
        f: &mut dyn FnMut(&str, &mut Linear) -> Result<()>,
    ) -> Result<()> {
        self.self_attn.visit_linears(&format!("{prefix}self_attn."), f)?;
        self.feed_forward
            .visit_linears(&format!("{prefix}feed_forward."), f)
    }

    /// See [`crate::text::moe::Moe::stack_experts`].
    pub fn stack_experts(&mut self) -> Result<bool> {
        self.feed_forward.stack_experts()
    }

    /// See [`crate::text::moe::Moe::is_stacked`].
    pub fn experts_stacked(&self) -> bool {
        self.feed_forward.experts_stacked()
    }

    pub fn stored_bytes(&self) -> usize {
        self.input_layernorm.stored_bytes()
            + self.self_attn.stored_bytes()
            + self.post_attention_layernorm.stored_bytes()
            + self.feed_forward.stored_bytes()
    }

    /// Weight bytes one token reads here (only its routed experts of a MoE layer).
    pub fn active_bytes(&self) -> usize {
        self.input_layernorm.stored_bytes()
            + self.self_attn.stored_bytes()
            + self.post_attention_layernorm.stored_bytes()
            + self.feed_forward.active_bytes()
    }
}
