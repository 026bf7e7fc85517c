//! AdamW exactly as `torch.optim.AdamW` computes it (decoupled weight decay, bias-corrected
//! moments, ε added after the square root), the learning-rate schedule of transformers'
//! `get_cosine_schedule_with_warmup`, and `clip_grad_norm_`'s global-norm clipping. All in f32
//! on host vectors, so the arithmetic and its order are fixed: a resumed run repeats an
//! uninterrupted one bit for bit.

use candle_core::{Device, Tensor, Var};

use crate::error::{Error, Result};

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AdamWConfig {
    pub lr: f64,
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    pub weight_decay: f64,
}

impl Default for AdamWConfig {
    fn default() -> Self {
        AdamWConfig {
            lr: 2e-4,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 0.0,
        }
    }
}

/// One parameter's moments.
#[derive(Debug, Clone, PartialEq)]
pub struct Moments {
    pub exp_avg: Vec<f32>,
    pub exp_avg_sq: Vec<f32>,
}

#[derive(Debug, Clone)]
pub struct AdamW {
    pub config: AdamWConfig,
    /// Optimizer steps taken.
    pub step: u64,
    pub moments: Vec<Moments>,
}

impl AdamW {
    pub fn new(config: AdamWConfig, sizes: &[usize]) -> Self {
        AdamW {
            config,
            step: 0,
            moments: sizes
                .iter()
                .map(|&n| Moments {
                    exp_avg: vec![0.0; n],
                    exp_avg_sq: vec![0.0; n],
                })
                .collect(),
        }
    }

    /// One update of every parameter with its gradient; `lr[i]` is parameter i's learning rate
    /// this step (the schedule times its layer's multiplier).
    pub fn update(&mut self, params: &[&Var], grads: &[Vec<f32>], lr: &[f64]) -> Result<()> {
        if params.len() != self.moments.len() || grads.len() != params.len() || lr.len() != params.len() {
            return Err(Error::Checkpoint(
                "optimizer state does not match the parameters".into(),
            ));
        }
        self.step += 1;
        let c = self.config;
        // torch computes these in Python floats (f64), then uses them as scalars.
        let bias_correction1 = 1.0 - c.beta1.powi(self.step as i32);
        let bias_correction2 = 1.0 - c.beta2.powi(self.step as i32);
        let bias_correction2_sqrt = bias_correction2.sqrt();
        for ((var, g), (m, &lr)) in params.iter().zip(grads).zip(self.moments.iter_mut().zip(lr)) {
            let mut p = var.as_tensor().flatten_all()?.to_vec1::<f32>()?;
            if p.len() != g.len() || p.len() != m.exp_avg.len() {
                return Err(Error::Checkpoint(
                    "a gradient or moment has the wrong size".into(),
                ));
            }
            let decay = (1.0 - lr * c.weight_decay) as f32;
            let step_size = (lr / bias_correction1) as f32;
            let (b1, b2) = (c.beta1 as f32, c.beta2 as f32);
            for i in 0..p.len() {
                p[i] *= decay;
                // exp_avg.lerp_(grad, 1 − β1)
                m.exp_avg[i] += (g[i] - m.exp_avg[i]) * (1.0 - b1);
                m.exp_avg_sq[i] = m.exp_avg_sq[i] * b2 + (1.0 - b2) * g[i] * g[i];
                let denom = (m.exp_avg_sq[i].sqrt() / bias_correction2_sqrt as f32) + c.eps as f32;
                p[i] -= step_size * m.exp_avg[i] / denom;
            }
            var.set(&Tensor::from_vec(p, var.dims(), &Device::Cpu)?)?;
        }
        Ok(())
    }
}

/// Linear warmup from 0, then a half cosine to 0 at `total` steps (transformers'
/// `get_cosine_schedule_with_warmup`): the multiplier for the update numbered `step` (0-based).
pub fn cosine_with_warmup(step: u64, warmup: u64, total: u64) -> f64 {
    if step < warmup {
        return step as f64 / warmup.max(1) as f64;
    }
    let progress = (step - warmup) as f64 / total.saturating_sub(warmup).max(1) as f64;
    (0.5 * (1.0 + (std::f64::consts::PI * progress).cos())).max(0.0)
}

/// Scales every gradient so their global L2 norm is at most `max_norm` (torch's
/// `clip_grad_norm_`: coefficient `max_norm / (norm + 1e-6)`, clamped to 1). Returns the norm
/// before clipping.
pub fn clip_grad_norm(grads: &mut [Vec<f32>], max_norm: f64) -> f64 {
    // torch: the norm of the per-tensor norms, each in f32.
    let norms: Vec<f32> = grads
        .iter()
        .map(|g| g.iter().map(|x| x * x).sum::<f32>().sqrt())
        .collect();
    let total = norms.iter().map(|n| n * n).sum::<f32>().sqrt();
    if max_norm > 0.0 {
        let coef = (max_norm as f32 / (total + 1e-6)).min(1.0);
        if coef < 1.0 {
            grads.iter_mut().flatten().for_each(|x| *x *= coef);
        }
    }
    total as f64
}
