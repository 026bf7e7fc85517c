//! Sampling parameters and the sampler.
//!
//! Order of operations (as transformers' logits processors): repetition penalty → temperature
//! → top-k → top-p → min-p → draw. Temperature 0 means greedy (argmax after the penalty).

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use crate::error::EngineError;

/// Temperatures below this are greedy (as vLLM's `_SAMPLING_EPS`): dividing logits by a
/// denormal makes every probability inf/NaN and the draw meaningless.
pub const MIN_TEMPERATURE: f32 = 1e-5;

/// Everything that decides which tokens a request produces. Validate with
/// [`SamplingParams::validate`] before use.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct SamplingParams {
    /// 0 (or below [`MIN_TEMPERATURE`]) = greedy; otherwise logits are divided by it.
    pub temperature: f32,
    /// Nucleus: keep the smallest set of most likely tokens whose probability sum reaches it.
    /// 1 = off.
    pub top_p: f32,
    /// Keep only the k most likely tokens. 0 = off.
    pub top_k: usize,
    /// Drop tokens less likely than `min_p` × the most likely one's probability. 0 = off.
    pub min_p: f32,
    /// transformers-style: logits of tokens already in the sequence (prompt included) are
    /// divided by it when positive, multiplied when negative. 1 = off.
    pub repetition_penalty: f32,
    /// Same seed, same model, same prompt ⇒ same tokens. None: seeded from the OS.
    pub seed: Option<u64>,
    pub max_new_tokens: usize,
    /// Generation stops when one of these is produced (it is not emitted).
    pub stop_token_ids: Vec<u32>,
}

impl Default for SamplingParams {
    fn default() -> Self {
        SamplingParams {
            temperature: 1.0,
            top_p: 1.0,
            top_k: 0,
            min_p: 0.0,
            repetition_penalty: 1.0,
            seed: None,
            max_new_tokens: 256,
            stop_token_ids: Vec::new(),
        }
    }
}

impl SamplingParams {
    pub fn greedy() -> Self {
        SamplingParams {
            temperature: 0.0,
            ..Self::default()
        }
    }

    pub fn validate(&self) -> Result<(), EngineError> {
        let bad =
            |field: &'static str, message: String| Err(EngineError::InvalidParameter { field, message });
        if !(self.temperature.is_finite() && self.temperature >= 0.0) {
            return bad(
                "temperature",
                format!("{} must be a finite number ≥ 0", self.temperature),
            );
        }
        if !(self.top_p > 0.0 && self.top_p <= 1.0) {
            return bad("top_p", format!("{} must be in (0, 1]", self.top_p));
        }
        if !(0.0..=1.0).contains(&self.min_p) {
            return bad("min_p", format!("{} must be in [0, 1]", self.min_p));
        }
        if !(self.repetition_penalty.is_finite() && self.repetition_penalty > 0.0) {
            return bad(
                "repetition_penalty",
                format!("{} must be a finite number > 0", self.repetition_penalty),
            );
        }
        if self.max_new_tokens == 0 {
            return bad("max_new_tokens", "must be at least 1".into());
        }
        Ok(())
    }
}

/// Draws tokens under one request's [`SamplingParams`], with its own seeded generator.
pub struct Sampler {
    params: SamplingParams,
    rng: ChaCha8Rng,
}

impl Sampler {
    pub fn new(params: SamplingParams) -> Result<Self, EngineError> {
        params.validate()?;
        let rng = match params.seed {
            Some(seed) => ChaCha8Rng::seed_from_u64(seed),
            None => ChaCha8Rng::from_os_rng(),
        };
        Ok(Sampler { params, rng })
    }

    pub fn params(&self) -> &SamplingParams {
        &self.params
    }

    /// Picks the next token from `logits` ([V]) given the sequence so far.
    pub fn sample(&mut self, logits: &[f32], history: &[u32]) -> u32 {
        let mut logits = logits.to_vec();
        apply_repetition_penalty(&mut logits, history, self.params.repetition_penalty);
        if self.params.temperature < MIN_TEMPERATURE {
            return argmax(&logits);
        }
        let probs = self.filtered_probabilities(&logits);
        let draw: f32 = self.rng.random();
        let mut cumulative = 0.0;
        for &(id, p) in &probs {
            cumulative += p;
            if draw < cumulative {
                return id;
            }
        }
        // Rounding left the sum a hair below 1: the last candidate takes the remainder.
        probs.last().map_or_else(|| argmax(&logits), |&(id, _)| id)
    }

    /// The candidates after temperature, top-k, top-p and min-p, most likely first,
    /// renormalised.
    pub fn filtered_probabilities(&self, logits: &[f32]) -> Vec<(u32, f32)> {
        let p = &self.params;
        let mut candidates: Vec<(u32, f32)> = logits
            .iter()
            .enumerate()
            .filter(|(_, l)| !l.is_nan())
            .map(|(i, &l)| (i as u32, l / p.temperature))
            .collect();
        candidates.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
        if p.top_k > 0 {
            candidates.truncate(p.top_k);
        }
        softmax_in_place(&mut candidates);
        if p.top_p < 1.0 {
            let mut cumulative = 0.0;
            let keep = candidates
                .iter()
                .take_while(|(_, prob)| {
                    let before = cumulative;
                    cumulative += prob;
                    before < p.top_p
                })
                .count();
            candidates.truncate(keep.max(1));
        }
        if p.min_p > 0.0 {
            let threshold = p.min_p * candidates.first().map_or(0.0, |c| c.1);
            candidates.retain(|(_, prob)| *prob >= threshold);
        }
        let total: f32 = candidates.iter().map(|c| c.1).sum();
        for c in &mut candidates {
            c.1 /= total;
        }
        candidates
    }
}

fn apply_repetition_penalty(logits: &mut [f32], history: &[u32], penalty: f32) {
    if penalty == 1.0 {
        return;
    }
    let mut seen = vec![false; logits.len()];
    for &id in history {
        if let Some(s) = seen.get_mut(id as usize) {
            *s = true;
        }
    }
    for (l, _) in logits.iter_mut().zip(&seen).filter(|(_, s)| **s) {
        *l = if *l > 0.0 { *l / penalty } else { *l * penalty };
    }
}

/// Index of the largest logit; the lowest index among ties (as torch.argmax).
pub fn argmax(logits: &[f32]) -> u32 {
    let mut best = 0;
    for (i, l) in logits.iter().enumerate() {
        if *l > logits[best] {
            best = i;
        }
    }
    best as u32
}

/// Softmax over candidates already sorted most likely first.
fn softmax_in_place(candidates: &mut [(u32, f32)]) {
    let Some(&(_, max)) = candidates.first() else {
        return;
    };
    let mut total = 0.0;
    for c in candidates.iter_mut() {
        c.1 = (c.1 - max).exp();
        total += c.1;
    }
    for c in candidates.iter_mut() {
        c.1 /= total;
    }
}
