//! LoRA as PEFT defines it: `y = W x + (α / r) · B A dropout(x)` on a targeted `nn.Linear`, and
//! PEFT's parameter-targeted form on a fused expert tensor (`target_parameters`), where one
//! `lora_A` and one `lora_B` hold every expert's factors and the update is added to the weight
//! (no dropout there: PEFT refuses it).
//!
//! For transformers' fused expert tensor W [E, d1, d2], used as `x @ W[e]` (gate_up_proj
//! [E, D, 2F], down_proj [E, F, D]), PEFT 0.21 (`ParamWrapper`, in/out swapped for Llama 4)
//! stores `lora_A` [r·E, d2] and `lora_B` [d1, r·E], and adds `ΔW[e] = (α/r) · B_e A_e` [d1, d2]
//! with `A_e = lora_A.reshape(E, r, d2)[e]` (rows e·r .. e·r+r) and
//! `B_e = lora_B.reshape(d1, r, E)[:, :, e]` (columns j·E + e). So B sits on the input side:
//! `x @ (W[e] + ΔW[e]) = x @ W[e] + (α/r) · (x @ B_e) @ A_e`. (Checked against PEFT's
//! `merge_and_unload` by tools/reference/make_lora_tiny.py.)

use candle_core::{DType, Device, Tensor, Var};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::error::{Error, Result};

/// What to adapt and how (PEFT's `LoraConfig` fields of the same names).
#[derive(Debug, Clone, PartialEq)]
pub struct LoraSettings {
    pub rank: usize,
    pub alpha: f64,
    pub dropout: f64,
    /// rsLoRA: scale by α / √r instead of α / r.
    pub use_rslora: bool,
    /// Module names matched as PEFT matches them: the whole path or its last components
    /// (`q_proj`, `shared_expert.gate_proj`, `router`, …).
    pub target_modules: Vec<String>,
    /// Fused expert tensors (`feed_forward.experts.gate_up_proj`, `feed_forward.experts.down_proj`)
    /// and the router's weight (`feed_forward.router.weight`: the form of a router LoRA PEFT can
    /// run, since Llama4Router's forward returns a tuple).
    pub target_parameters: Vec<String>,
}

/// The modules `all-linear` adapts: every nn.Linear of the decoder layers but the router
/// (PEFT's LoRA layer cannot wrap Llama4Router, whose forward returns a tuple; name `router`
/// to adapt it, and herd saves it as the parameter target PEFT runs).
pub const ALL_LINEAR: [&str; 7] = [
    "q_proj",
    "k_proj",
    "v_proj",
    "o_proj",
    "gate_proj",
    "up_proj",
    "down_proj",
];

/// The parameters a `target_parameters` entry can name.
pub const PARAMETER_TARGETS: [&str; 3] = [
    "feed_forward.experts.gate_up_proj",
    "feed_forward.experts.down_proj",
    "feed_forward.router.weight",
];

/// The router as a parameter target (PEFT's spelling of a router LoRA).
pub const ROUTER_PARAMETER: &str = "feed_forward.router.weight";

impl LoraSettings {
    pub fn scaling(&self) -> f64 {
        if self.use_rslora {
            self.alpha / (self.rank as f64).sqrt()
        } else {
            self.alpha / self.rank as f64
        }
    }

    pub fn validate(&self) -> Result<()> {
        if self.rank == 0 {
            return Err(Error::Config("LoRA rank must be at least 1".into()));
        }
        if !(0.0..1.0).contains(&self.dropout) {
            return Err(Error::Config(format!(
                "LoRA dropout must be in [0, 1), not {}",
                self.dropout
            )));
        }
        if !self.alpha.is_finite() {
            return Err(Error::Config("LoRA alpha must be finite".into()));
        }
        if self.target_modules.is_empty() && self.target_parameters.is_empty() {
            return Err(Error::Config(
                "LoRA needs at least one target module or target parameter".into(),
            ));
        }
        let router_module = self
            .target_modules
            .iter()
            .any(|m| m == "router" || m.ends_with(".router"));
        if self.dropout > 0.0 && (router_module || !self.target_parameters.is_empty()) {
            // PEFT refuses such an adapter (`ParamWrapper does not work with lora_dropout != 0`),
            // and the router and fused experts are parameter targets there.
            return Err(Error::Config(
                "LoRA dropout cannot be combined with the router or fused-expert targets (PEFT refuses to load such an adapter); use --lora-dropout 0 or leave those out".into(),
            ));
        }
        for t in &self.target_parameters {
            if !PARAMETER_TARGETS.iter().any(|p| suffix_match(p, t)) {
                return Err(Error::Config(format!(
                    "target parameter `{t}` is not one of {}",
                    PARAMETER_TARGETS.join(", ")
                )));
            }
        }
        Ok(())
    }

    /// Whether the module at `path` (`model.layers.3.self_attn.q_proj`) is adapted.
    pub fn targets_module(&self, path: &str) -> bool {
        if path.ends_with(".router") && self.targets_parameter(&format!("{path}.weight")) {
            return true;
        }
        self.target_modules.iter().any(|t| {
            if t == "all-linear" {
                ALL_LINEAR.iter().any(|m| suffix_match(path, m))
            } else {
                suffix_match(path, t)
            }
        })
    }

    /// Whether the fused expert parameter at `path` (`model.layers.1.feed_forward.experts.gate_up_proj`)
    /// is adapted.
    pub fn targets_parameter(&self, path: &str) -> bool {
        self.target_parameters.iter().any(|t| suffix_match(path, t))
    }
}

/// PEFT's rule: the target is the whole name or its trailing dot-separated components.
fn suffix_match(path: &str, target: &str) -> bool {
    path == target || path.ends_with(&format!(".{target}"))
}

/// One adapted `nn.Linear`'s factors: A [r, in], B [out, r].
#[derive(Debug, Clone)]
pub struct LoraPair {
    pub a: Var,
    pub b: Var,
    pub scaling: f64,
    pub dropout: f64,
    /// Distinguishes this module's dropout masks from every other's.
    pub id: u64,
}

/// Fused experts' factors for W [E, d1, d2]: A [r·E, d2], B [d1, r·E].
#[derive(Debug, Clone)]
pub struct ExpertLora {
    pub a: Var,
    pub b: Var,
    pub rank: usize,
    pub n_experts: usize,
    pub scaling: f64,
}

/// Which pass this is, for the dropout masks: the same (seed, step, micro-batch) draws the same
/// masks, so a resumed run repeats an uninterrupted one bit for bit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PassKey {
    pub training: bool,
    pub seed: u64,
    pub step: u64,
    pub micro: u64,
}

impl PassKey {
    pub fn eval() -> Self {
        PassKey {
            training: false,
            seed: 0,
            step: 0,
            micro: 0,
        }
    }
}

impl LoraPair {
    /// x: [T, in] → the update [T, out] (`scaling · B A dropout(x)`).
    pub fn delta(&self, x: &Tensor, pass: &PassKey) -> Result<Tensor> {
        let x = if pass.training && self.dropout > 0.0 {
            let keep = dropout_mask(
                x.dims(),
                self.dropout,
                mix(&[pass.seed, pass.step, pass.micro, self.id]),
            )?;
            x.broadcast_mul(&keep.to_dtype(x.dtype())?)?
        } else {
            x.clone()
        };
        // In f32 whatever the activations' dtype (candle's bf16 matmul is scalar code).
        let x32 = x.to_dtype(DType::F32)?;
        let y = x32
            .matmul(&self.a.as_tensor().t()?)?
            .matmul(&self.b.as_tensor().t()?)?;
        Ok((y * self.scaling)?.to_dtype(x.dtype())?)
    }
}

impl ExpertLora {
    /// Expert e's A [r, d2].
    pub fn a_of(&self, e: usize) -> Result<Tensor> {
        Ok(self.a.as_tensor().narrow(0, e * self.rank, self.rank)?)
    }

    /// Expert e's B [d1, r].
    pub fn b_of(&self, e: usize) -> Result<Tensor> {
        let d1 = self.b.as_tensor().dim(0)?;
        Ok(self
            .b
            .as_tensor()
            .reshape((d1, self.rank, self.n_experts))?
            .narrow(2, e, 1)?
            .reshape((d1, self.rank))?)
    }

    /// Expert e's update on its input: x [n, d1] → (α/r)·(x B_e) A_e [n, d2].
    pub fn delta(&self, e: usize, x: &Tensor) -> Result<Tensor> {
        let x32 = x.to_dtype(DType::F32)?;
        let y = x32.matmul(&self.b_of(e)?)?.matmul(&self.a_of(e)?)?;
        Ok((y * self.scaling)?.to_dtype(x.dtype())?)
    }
}

/// PEFT's default initialisation: A ~ U(−1/√in, 1/√in) (kaiming_uniform with a = √5), B = 0,
/// so training starts from the base model exactly.
pub fn init_pair(rows_a: usize, in_dim: usize, out_dim: usize, seed: u64) -> Result<(Var, Var)> {
    let bound = 1.0 / (in_dim as f64).sqrt();
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let a: Vec<f32> = (0..rows_a * in_dim)
        .map(|_| rng.random_range(-bound..bound) as f32)
        .collect();
    let a = Var::from_tensor(&Tensor::from_vec(a, (rows_a, in_dim), &Device::Cpu)?)?;
    let b = Var::from_tensor(&Tensor::zeros((out_dim, rows_a), DType::F32, &Device::Cpu)?)?;
    Ok((a, b))
}

/// A keep-mask scaled by 1 / (1 − p), from its own seed.
fn dropout_mask(dims: &[usize], p: f64, seed: u64) -> Result<Tensor> {
    let n: usize = dims.iter().product();
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let scale = (1.0 / (1.0 - p)) as f32;
    let keep: Vec<f32> = (0..n)
        .map(|_| if rng.random::<f64>() < p { 0.0 } else { scale })
        .collect();
    Ok(Tensor::from_vec(keep, dims, &Device::Cpu)?)
}

/// A well-spread seed from several integers (splitmix64 steps).
pub fn mix(parts: &[u64]) -> u64 {
    parts.iter().fold(0x9e37_79b9_7f4a_7c15_u64, |h, &p| {
        let mut z = h ^ p.wrapping_add(0x9e37_79b9_7f4a_7c15);
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    })
}
