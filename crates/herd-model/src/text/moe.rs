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
//!
//! Two ways to route. On the host ([`route`]): the logits come back, each expert runs once
//! over its gathered tokens — right for prefill, where one expert sees many tokens. On the
//! device ([`Moe::forward_routed_on_device`], a decode step's few rows on a GPU): top-k on the
//! device (an argmax for k = 1, a sort beyond), then per (token, choice) row one
//! matrix-vector product that reads its
//! expert's matrix out of the stacked `[E, F, D]` weights by the id on the device — no host
//! sync per layer, each chosen expert's weights read once.
//! Shapes: T tokens, D hidden, E experts, F expert width, N tokens routed to one expert,
//! R = T·k (token, choice) rows.

use candle_core::{DType, Device, Tensor};

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
    /// The experts' dense weights stacked for device routing; each expert's `Linear`s are
    /// views of these (no second copy). Made at load on a GPU, or by [`Moe::stack_experts`].
    stacked: Option<StackedExperts>,
}

/// gate_proj and up_proj `[E, F, D]`, down_proj `[E, D, F]`.
#[derive(Debug, Clone)]
struct StackedExperts {
    gate_efd: Tensor,
    up_efd: Tensor,
    down_edf: Tensor,
}

/// The most (token, choice) rows a step routes on the device. Each row reads its expert's
/// whole matrices, so past a few rows (prefill) gathering each expert's tokens on the host and
/// reading its weights once wins.
pub const DEVICE_ROUTED_ROWS: usize = 8;

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
        let mut moe = Moe {
            router: Linear::load(vb, "router", d, n_experts)?,
            experts: vb.pp("experts").experts(n_experts, d, width)?,
            shared_expert: Mlp::load(&vb.pp("shared_expert"), d, width)?,
            top_k,
            routing: config.routing,
            stacked: None,
        };
        if !matches!(vb.device(), Device::Cpu) {
            moe.stack_experts()?;
        }
        Ok(moe)
    }

    /// Stacks the experts' weights for routing on the device (done at load on a GPU; on the
    /// CPU it lets tests run the GPU's decode path). `false` where the experts are not all
    /// dense in one dtype (quantized, adapted): those route on the host.
    pub fn stack_experts(&mut self) -> Result<bool> {
        let mut parts: [Vec<Tensor>; 3] = Default::default();
        for trio in &self.experts {
            for (part, linear) in parts.iter_mut().zip(trio) {
                let Linear::Dense(w) = linear else {
                    return Ok(false);
                };
                part.push(w.clone());
            }
        }
        let dtype = parts[0].first().map(Tensor::dtype);
        if dtype.is_none() || parts.iter().flatten().any(|w| Some(w.dtype()) != dtype) {
            return Ok(false);
        }
        let [gate, up, down] = parts;
        let stacked = StackedExperts {
            gate_efd: Tensor::stack(&gate, 0)?,
            up_efd: Tensor::stack(&up, 0)?,
            down_edf: Tensor::stack(&down, 0)?,
        };
        drop((gate, up, down));
        for (e, [g, u, dn]) in self.experts.iter_mut().enumerate() {
            *g = Linear::Dense(stacked.gate_efd.get(e)?);
            *u = Linear::Dense(stacked.up_efd.get(e)?);
            *dn = Linear::Dense(stacked.down_edf.get(e)?);
        }
        self.stacked = Some(stacked);
        Ok(true)
    }

    /// x: [T, D] → [T, D]
    pub fn forward(&self, x_td: &Tensor) -> Result<Tensor> {
        if self.stacked.is_some() && x_td.dim(0)? * self.top_k <= DEVICE_ROUTED_ROWS {
            return self.forward_routed_on_device(x_td);
        }
        self.forward_routed_on_host(x_td)
    }

    /// Routing on the device (see the module docs); the stacked weights must exist.
    /// x: [T, D] → [T, D]
    pub fn forward_routed_on_device(&self, x_td: &Tensor) -> Result<Tensor> {
        let Some(stacked) = &self.stacked else {
            return Err(crate::error::Error::Kernel(
                "device routing needs the experts stacked (Moe::stack_experts)".into(),
            ));
        };
        let (t, d) = x_td.dims2()?;
        let k = self.top_k.min(self.experts.len());
        let logits_te = self.router.forward(x_td)?.to_dtype(DType::F32)?;
        // Ties between equal logits may order either way here (the host route takes the
        // lower index); equal f32 logits do not occur in practice. Each op here is a kernel
        // launch, the cost of a decode step on a GPU: Scout's k = 1 takes an argmax, not a sort.
        let ids_tk = if k == 1 {
            logits_te.argmax_keepdim(1)?
        } else {
            logits_te
                .arg_sort_last_dim(false)?
                .narrow(1, 0, k)?
                .contiguous()?
        };
        let top_tk = logits_te.gather(&ids_tk, 1)?;
        let scores_tk = match self.routing.scoring {
            RouterScoring::Sigmoid => candle_nn::ops::sigmoid(&top_tk)?,
            RouterScoring::Softmax => {
                let max_t1 = logits_te.max_keepdim(1)?;
                let denominator_t1 = logits_te.broadcast_sub(&max_t1)?.exp()?.sum_keepdim(1)?;
                top_tk
                    .broadcast_sub(&max_t1)?
                    .exp()?
                    .broadcast_div(&denominator_t1)?
            }
        };
        let r = t * k;
        let ids_r = ids_tk.reshape(r)?;
        let scores_r1 = scores_tk.reshape((r, 1))?.to_dtype(x_td.dtype())?;
        // One row per (token, choice): [T, D] → [R, D] (the rows themselves when k = 1).
        let mut x_rd = if k == 1 {
            x_td.clone()
        } else {
            x_td.unsqueeze(1)?.broadcast_as((t, k, d))?.reshape((r, d))?
        };
        if self.routing.score_at == ScoreAt::ExpertInput {
            x_rd = x_rd.broadcast_mul(&scores_r1)?;
        }
        let gate_rf = expert_gemv(&stacked.gate_efd, &x_rd, &ids_r)?;
        let up_rf = expert_gemv(&stacked.up_efd, &x_rd, &ids_r)?;
        let act_rf = (candle_nn::ops::silu(&gate_rf)? * up_rf)?;
        let mut y_rd = expert_gemv(&stacked.down_edf, &act_rf, &ids_r)?;
        if self.routing.score_at == ScoreAt::ExpertOutput {
            y_rd = y_rd.broadcast_mul(&scores_r1)?;
        }
        let routed_td = if k == 1 {
            y_rd
        } else {
            y_rd.reshape((t, k, d))?.sum(1)?
        };
        Ok((self.shared_expert.forward(x_td)? + routed_td)?)
    }

    /// Routing on the host (see the module docs). x: [T, D] → [T, D]
    pub fn forward_routed_on_host(&self, x_td: &Tensor) -> Result<Tensor> {
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
        let before = self.expert_views();
        let visited = (|| {
            f(&format!("{prefix}router"), &mut self.router)?;
            for (e, [gate, up, down]) in self.experts.iter_mut().enumerate() {
                f(&format!("{prefix}experts.{e}.gate_proj"), gate)?;
                f(&format!("{prefix}experts.{e}.up_proj"), up)?;
                f(&format!("{prefix}experts.{e}.down_proj"), down)?;
            }
            self.shared_expert
                .visit_linears(&format!("{prefix}shared_expert."), f)
        })();
        // `f` may have replaced an expert (an adapter on it): the stacked copy would no longer
        // be it, and this layer routes on the host. One that left every expert the view it was
        // (an adapter on attention, the router or the shared expert) keeps routing on the
        // device: unstacking would cost a GPU decode step a host sync in every MoE layer.
        if self.expert_views() != before {
            self.stacked = None;
        }
        visited
    }

    /// Each expert projection's tensor, where it is dense (what [`Self::visit_linears`]
    /// compares to see whether the stacked weights are still the experts).
    fn expert_views(&self) -> Vec<Option<candle_core::TensorId>> {
        self.experts
            .iter()
            .flatten()
            .map(|linear| match linear {
                Linear::Dense(w) => Some(w.id()),
                _ => None,
            })
            .collect()
    }

    /// Does a decode step route on the device ([`Self::stack_experts`] done, no expert replaced
    /// since)?
    pub fn is_stacked(&self) -> bool {
        self.stacked.is_some()
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

/// `y [R, out] = x [R, in] · W[ids[r]]ᵀ`, W `[E, out, in]` stacked: herd's CUDA kernel, or
/// the gathered weights' batched product elsewhere (its slow twin).
fn expert_gemv(w_eoi: &Tensor, x_ri: &Tensor, ids_r: &Tensor) -> Result<Tensor> {
    #[cfg(feature = "cuda")]
    if let Some(y) = crate::cuda::gemv(w_eoi, x_ri, Some(ids_r))? {
        return Ok(y);
    }
    let w_roi = w_eoi.index_select(ids_r, 0)?.to_dtype(x_ri.dtype())?;
    // [R, 1, in] · [R, in, out] → [R, 1, out]
    let y_r1o = x_ri.unsqueeze(1)?.matmul(&w_roi.transpose(1, 2)?)?;
    Ok(y_r1o.squeeze(1)?)
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
