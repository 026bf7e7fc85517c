//! Token-choice mixture of experts with a shared expert (LLAMA4.md §3):
//!
//! ```text
//! r = x Wrᵀ                       [T, E] router logits
//! top = topk(r, k)                on raw logits
//! s_e = sigmoid(r_e), e ∈ top     no softmax, no renormalisation
//! out = Shared(x) + Σ_{e∈top} Expert_e(x · s_e)     the score scales the expert INPUT
//! ```
//!
//! Deviation: transformers and Meta run every expert on every token (zeros for the unrouted);
//! herd gathers each expert's tokens and runs only those — same sums, E/k times less work.
//! Shapes: T tokens, D hidden, E experts, F expert width, N tokens routed to one expert.

use candle_core::{DType, Tensor};

use crate::config::{ModelConfig, RouterScoring, Routing, ScoreAt};
use crate::error::Result;
use crate::nn::{Linear, Mlp};
use crate::weights::Weights;

#[derive(Debug, Clone)]
pub struct Moe {
    router: Linear,
    /// Per expert: gate_proj and up_proj [F, D], down_proj [D, F], each in its stored format.
    experts: Vec<[Linear; 3]>,
    shared_expert: Mlp,
    top_k: usize,
    routing: Routing,
}

/// Which experts each token goes to, with the weight of each choice.
#[derive(Debug, Clone, PartialEq)]
pub struct RoutingDecision {
    /// Per expert: (token index, score) pairs, tokens ascending.
    pub per_expert: Vec<Vec<(u32, f32)>>,
}

impl Moe {
    pub fn load(
        vb: &Weights,
        config: &ModelConfig,
        n_experts: usize,
        top_k: usize,
        width: usize,
    ) -> Result<Self> {
        let d = config.hidden_size;
        Ok(Moe {
            router: Linear::load(vb, "router", d, n_experts)?,
            experts: vb.pp("experts").experts(n_experts, d, width)?,
            shared_expert: Mlp::load(&vb.pp("shared_expert"), d, width)?,
            top_k,
            routing: config.routing,
        })
    }

    /// x: [T, D] → [T, D]
    pub fn forward(&self, x_td: &Tensor) -> Result<Tensor> {
        let router_logits_te = self.router.forward(x_td)?;
        let decision = route(
            &router_logits_te.to_dtype(DType::F32)?.to_vec2::<f32>()?,
            self.top_k,
            self.routing.scoring,
        );
        let mut out_td = self.shared_expert.forward(x_td)?;
        // In f32 the routed outputs are added into one buffer row by row; `index_add` would
        // copy the whole [T, D] output once per expert (16 copies a layer in prefill).
        let mut sum_td = if out_td.dtype() == DType::F32 && out_td.device().is_cpu() {
            Some(out_td.flatten_all()?.to_vec1::<f32>()?)
        } else {
            None
        };
        let d = x_td.dim(1)?;
        for (e, routed) in decision.per_expert.iter().enumerate() {
            if routed.is_empty() {
                continue;
            }
            let n = routed.len();
            let tokens: Vec<u32> = routed.iter().map(|(t, _)| *t).collect();
            let scores: Vec<f32> = routed.iter().map(|(_, s)| *s).collect();
            let tokens_n = Tensor::from_vec(tokens, n, x_td.device())?;
            let scores_n1 = Tensor::from_vec(scores, (n, 1), x_td.device())?.to_dtype(x_td.dtype())?;

            let mut x_nd = x_td.index_select(&tokens_n, 0)?;
            if self.routing.score_at == ScoreAt::ExpertInput {
                x_nd = x_nd.broadcast_mul(&scores_n1)?;
            }
            let [gate_proj, up_proj, down_proj] = &self.experts[e];
            let gate_nf = gate_proj.forward(&x_nd)?;
            let up_nf = up_proj.forward(&x_nd)?;
            let act_nf = (candle_nn::ops::silu(&gate_nf)? * up_nf)?;
            let mut y_nd = down_proj.forward(&act_nf)?;
            if self.routing.score_at == ScoreAt::ExpertOutput {
                y_nd = y_nd.broadcast_mul(&scores_n1)?;
            }
            match &mut sum_td {
                Some(sum) => {
                    let y = y_nd.flatten_all()?.to_vec1::<f32>()?;
                    for (&(t, _), y_row) in routed.iter().zip(y.chunks_exact(d)) {
                        let row = &mut sum[t as usize * d..(t as usize + 1) * d];
                        row.iter_mut().zip(y_row).for_each(|(o, y)| *o += y);
                    }
                }
                None => out_td = out_td.index_add(&tokens_n, &y_nd, 0)?,
            }
        }
        if let Some(sum) = sum_td {
            out_td = Tensor::from_vec(sum, out_td.dims(), out_td.device())?;
        }
        Ok(out_td)
    }

    /// Calls `f(path, linear)` on the router, each routed expert's projections
    /// (`{prefix}experts.{e}.gate_proj`, …) and the shared expert's.
    pub fn visit_linears(
        &mut self,
        prefix: &str,
        f: &mut dyn FnMut(&str, &mut Linear) -> Result<()>,
    ) -> Result<()> {
        f(&format!("{prefix}router"), &mut self.router)?;
        for (e, [gate, up, down]) in self.experts.iter_mut().enumerate() {
            f(&format!("{prefix}experts.{e}.gate_proj"), gate)?;
            f(&format!("{prefix}experts.{e}.up_proj"), up)?;
            f(&format!("{prefix}experts.{e}.down_proj"), down)?;
        }
        self.shared_expert
            .visit_linears(&format!("{prefix}shared_expert."), f)
    }

    /// Weight bytes one token reads: the router, the shared expert and `top_k` routed experts.
    pub fn active_bytes(&self) -> usize {
        let per_expert = self
            .experts
            .first()
            .map_or(0, |e| e.iter().map(Linear::stored_bytes).sum::<usize>());
        self.router.stored_bytes()
            + self.shared_expert.stored_bytes()
            + self.top_k.min(self.experts.len()) * per_expert
    }

    pub fn stored_bytes(&self) -> usize {
        self.router.stored_bytes()
            + self.shared_expert.stored_bytes()
            + self
                .experts
                .iter()
                .flatten()
                .map(Linear::stored_bytes)
                .sum::<usize>()
    }
}

/// Picks each token's top-k experts by raw router logit (ties: lower expert index) and scores
/// them. `logits_te`: one row of E logits per token.
pub fn route(logits_te: &[Vec<f32>], top_k: usize, scoring: RouterScoring) -> RoutingDecision {
    let n_experts = logits_te.first().map_or(0, Vec::len);
    let mut per_expert = vec![Vec::new(); n_experts];
    for (t, row) in logits_te.iter().enumerate() {
        let mut order: Vec<usize> = (0..row.len()).collect();
        order.sort_by(|&a, &b| row[b].total_cmp(&row[a]).then(a.cmp(&b)));
        let softmax_denominator: f32 = match scoring {
            RouterScoring::Softmax => {
                let max = row[order[0]];
                row.iter().map(|r| (r - max).exp()).sum()
            }
            RouterScoring::Sigmoid => 1.0,
        };
        for &e in order.iter().take(top_k) {
            let score = match scoring {
                RouterScoring::Sigmoid => 1.0 / (1.0 + (-row[e]).exp()),
                RouterScoring::Softmax => (row[e] - row[order[0]]).exp() / softmax_denominator,
            };
            per_expert[e].push((t as u32, score));
        }
    }
    RoutingDecision { per_expert }
}
