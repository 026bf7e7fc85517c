//! The feed-forward half of a layer in training: a SwiGLU MLP (dense layers, the shared
//! expert) or Llama 4's token-choice MoE. Routing is picked on the host from the router's
//! values (top-k is not differentiable, as in transformers), but the chosen scores are
//! `sigmoid` of the router's output tensor, so gradients reach the router.
//!
//! Shapes: T rows, D hidden, E experts, F expert width, n rows routed to one expert.

use candle_core::{DType, Device, Tensor, Var};
use herd_model::config::{RouterScoring, Routing, ScoreAt};
use herd_model::text::moe::route;

use super::attention::softmax_last;
use super::linear::TrainLinear;
use crate::error::Result;
use crate::frozen::FrozenLinear;
use crate::lora::{ExpertLora, PassKey};

#[derive(Debug, Clone)]
pub struct TrainMlp {
    pub gate_proj: TrainLinear,
    pub up_proj: TrainLinear,
    pub down_proj: TrainLinear,
}

impl TrainMlp {
    /// x: [T, D] → [T, D]
    pub fn forward(&self, x: &Tensor, pass: &PassKey) -> Result<Tensor> {
        let gate = self.gate_proj.forward(x, pass)?.silu()?;
        let up = self.up_proj.forward(x, pass)?;
        self.down_proj.forward(&(gate * up)?, pass)
    }
}

/// The routed experts' weights.
#[derive(Debug, Clone)]
pub enum ExpertWeights {
    /// Per expert (gate [F, D], up [F, D], down [D, F]) in their stored format.
    Frozen(Vec<[FrozenLinear; 3]>),
    /// transformers' fused layout, trainable: gate_up [E, D, 2F], down [E, F, D] (x @ W).
    Trainable { gate_up: Var, down: Var },
}

#[derive(Debug, Clone)]
pub struct TrainExperts {
    pub weights: ExpertWeights,
    pub gate_up_lora: Option<ExpertLora>,
    pub down_lora: Option<ExpertLora>,
    pub width: usize,
}

impl TrainExperts {
    /// Expert e on its rows: x [n, D] → [n, D]
    fn forward(&self, e: usize, x: &Tensor) -> Result<Tensor> {
        let f = self.width;
        let (mut gate, mut up) = match &self.weights {
            ExpertWeights::Frozen(experts) => (experts[e][0].forward(x)?, experts[e][1].forward(x)?),
            ExpertWeights::Trainable { gate_up, .. } => {
                let gu = x
                    .to_dtype(DType::F32)?
                    .matmul(&gate_up.as_tensor().get(e)?)?
                    .to_dtype(x.dtype())?; // [n, 2F]
                (gu.narrow(1, 0, f)?, gu.narrow(1, f, f)?)
            }
        };
        if let Some(lora) = &self.gate_up_lora {
            // gate_up's columns are gate then up (transformers' `chunk(2, dim=-1)`).
            let d = lora.delta(e, x)?; // [n, 2F]
            gate = (gate + d.narrow(1, 0, f)?)?;
            up = (up + d.narrow(1, f, f)?)?;
        }
        let act = (gate.silu()? * up)?; // [n, F]
        let mut y = match &self.weights {
            ExpertWeights::Frozen(experts) => experts[e][2].forward(&act)?,
            ExpertWeights::Trainable { down, .. } => act
                .to_dtype(DType::F32)?
                .matmul(&down.as_tensor().get(e)?)?
                .to_dtype(act.dtype())?,
        };
        if let Some(lora) = &self.down_lora {
            y = (y + lora.delta(e, &act)?)?;
        }
        Ok(y)
    }

    fn n_experts(&self) -> Result<usize> {
        Ok(match &self.weights {
            ExpertWeights::Frozen(e) => e.len(),
            ExpertWeights::Trainable { gate_up, .. } => gate_up.as_tensor().dim(0)?,
        })
    }
}

#[derive(Debug, Clone)]
pub struct TrainMoe {
    pub router: TrainLinear,
    pub experts: TrainExperts,
    pub shared_expert: TrainMlp,
    pub top_k: usize,
    pub routing: Routing,
}

impl TrainMoe {
    /// x: [T, D] → [T, D]
    pub fn forward(&self, x: &Tensor, pass: &PassKey) -> Result<Tensor> {
        let logits_te = self.router.forward(x, pass)?;
        let rows = logits_te.to_dtype(DType::F32)?.to_vec2::<f32>()?;
        let decision = route(&rows, self.top_k, self.routing.scoring);
        let scores_te = match self.routing.scoring {
            RouterScoring::Sigmoid => candle_nn::ops::sigmoid(&logits_te)?,
            RouterScoring::Softmax => softmax_last(&logits_te)?,
        };
        let shared = self.shared_expert.forward(x, pass)?;
        // Every expert's rows, then one scatter-add: an `index_add` per expert would copy the
        // whole [T, D] output each time (forward and backward).
        let mut all_tokens: Vec<u32> = Vec::new();
        let mut outputs = Vec::new();
        let n_experts = self.experts.n_experts()?;
        for (e, chosen) in decision.per_expert.iter().enumerate().take(n_experts) {
            if chosen.is_empty() {
                continue;
            }
            let tokens: Vec<u32> = chosen.iter().map(|(t, _)| *t).collect();
            let n = tokens.len();
            all_tokens.extend_from_slice(&tokens);
            let tokens = Tensor::from_vec(tokens, n, &Device::Cpu)?;
            let score_n1 = scores_te.index_select(&tokens, 0)?.narrow(1, e, 1)?; // [n, 1]
            let mut x_nd = x.index_select(&tokens, 0)?;
            if self.routing.score_at == ScoreAt::ExpertInput {
                x_nd = x_nd.broadcast_mul(&score_n1)?;
            }
            let mut y_nd = self.experts.forward(e, &x_nd)?;
            if self.routing.score_at == ScoreAt::ExpertOutput {
                y_nd = y_nd.broadcast_mul(&score_n1)?;
            }
            outputs.push(y_nd);
        }
        if outputs.is_empty() {
            return Ok(shared);
        }
        let n = all_tokens.len();
        let all_tokens = Tensor::from_vec(all_tokens, n, &Device::Cpu)?;
        let routed = Tensor::zeros(x.dims(), x.dtype(), x.device())?.index_add(
            &all_tokens,
            &Tensor::cat(&outputs, 0)?,
            0,
        )?;
        Ok((shared + routed)?)
    }
}

#[derive(Debug, Clone)]
pub enum TrainFeedForward {
    Dense(TrainMlp),
    Moe(Box<TrainMoe>),
}

impl TrainFeedForward {
    pub fn forward(&self, x: &Tensor, pass: &PassKey) -> Result<Tensor> {
        match self {
            TrainFeedForward::Dense(mlp) => mlp.forward(x, pass),
            TrainFeedForward::Moe(moe) => moe.forward(x, pass),
        }
    }
}
