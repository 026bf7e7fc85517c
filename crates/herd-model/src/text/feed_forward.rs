//! The feed-forward half of a decoder layer: a dense SwiGLU or a mixture of experts, as the
//! layer's plan says.

use candle_core::Tensor;

use crate::config::{FeedForwardKind, LayerPlan, ModelConfig};
use crate::error::Result;
use crate::nn::{Linear, Mlp};
use crate::text::moe::Moe;
use crate::weights::Weights;

#[derive(Debug, Clone)]
pub enum FeedForward {
    Dense(Mlp),
    Moe(Moe),
}

impl FeedForward {
    pub fn load(vb: &Weights, config: &ModelConfig, plan: &LayerPlan) -> Result<Self> {
        Ok(match plan.feed_forward {
            FeedForwardKind::Dense { width } => FeedForward::Dense(Mlp::load(vb, config.hidden_size, width)?),
            FeedForwardKind::Moe {
                n_experts,
                top_k,
                width,
            } => FeedForward::Moe(Moe::load(vb, config, n_experts, top_k, width)?),
        })
    }

    /// x: [T, D] → [T, D]
    pub fn forward(&self, x_td: &Tensor) -> Result<Tensor> {
        match self {
            FeedForward::Dense(mlp) => mlp.forward(x_td),
            FeedForward::Moe(moe) => moe.forward(x_td),
        }
    }

    /// Stacks a MoE half's experts for routing on the device ([`Moe::stack_experts`]).
    pub fn stack_experts(&mut self) -> Result<bool> {
        match self {
            FeedForward::Dense(_) => Ok(false),
            FeedForward::Moe(moe) => moe.stack_experts(),
        }
    }

    /// A MoE half whose experts are stacked ([`Moe::is_stacked`]).
    pub fn experts_stacked(&self) -> bool {
        matches!(self, FeedForward::Moe(moe) if moe.is_stacked())
    }

    /// Calls `f(path, linear)` on every projection of this half (see [`Moe::visit_linears`]).
    pub fn visit_linears(
        &mut self,
        prefix: &str,
        f: &mut dyn FnMut(&str, &mut Linear) -> Result<()>,
    ) -> Result<()> {
        match self {
            FeedForward::Dense(mlp) => mlp.visit_linears(prefix, f),
            FeedForward::Moe(moe) => moe.visit_linears(prefix, f),
        }
    }

    pub fn stored_bytes(&self) -> usize {
        match self {
            FeedForward::Dense(mlp) => mlp.stored_bytes(),
            FeedForward::Moe(moe) => moe.stored_bytes(),
        }
    }

    /// Weight bytes one token reads (router, shared expert and top-k routed experts of a MoE).
    pub fn active_bytes(&self) -> usize {
        match self {
            FeedForward::Dense(mlp) => mlp.stored_bytes(),
            FeedForward::Moe(moe) => moe.active_bytes(),
        }
    }
}
