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
    /// OpenAI-style, over the tokens generated so far: subtracted once from the logit of every
    /// token that has appeared. In [-2, 2]; 0 = off.
    pub presence_penalty: f32,
    /// OpenAI-style: subtracted from a token's logit once per time it has been generated.
    /// In [-2, 2]; 0 = off.
    pub frequency_penalty: f32,
    /// Added to the given tokens' logits before anything else (OpenAI's `logit_bias`, each in
    /// [-100, 100]).
    pub logit_bias: Vec<(u32, f32)>,
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
            presence_penalty: 0.0,
            frequency_penalty: 0.0,
            logit_bias: Vec::new(),
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
        self.validate_sampling()?;
        if self.max_new_tokens == 0 {
            return Err(EngineError::InvalidParameter {
                field: "max_new_tokens",
                message: "must be at least 1".into(),
            });
        }
        Ok(())
    }

    /// [`Self::validate`] but for the token budget (a server applies its default later).
    pub fn validate_sampling(&self) -> Result<(), EngineError> {
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
        for (field, value) in [
            ("presence_penalty", self.presence_penalty),
            ("frequency_penalty", self.frequency_penalty),
        ] {
            if !(-2.0..=2.0).contains(&value) {
                return bad(field, format!("{value} must be in [-2, 2]"));
            }
        }
        if let Some((id, bias)) = self
            .logit_bias
            .iter()
            .find(|(_, b)| !(-100.0..=100.0).contains(b))
        {
            return bad(
                "logit_bias",
                format!("{bias} (token {id}) must be in [-100, 100]"),
            );
        }
        Ok(())
    }
}

/// Draws tokens under one request's [`SamplingParams`], with its own seeded generator. Its
/// buffers live as long as it does: a step allocates nothing.
pub struct Sampler {
    params: SamplingParams,
    rng: ChaCha8Rng,
    /// The step's logits after the repetition penalty.
    logits: Vec<f32>,
    /// (id, scaled logit → probability) candidates.
    candidates: Vec<(u32, f32)>,
    /// Which ids the history holds (repetition penalty), cleared after use.
    seen: Vec<bool>,
    /// How often each id has been sampled (presence and frequency penalties), and which ids
    /// have counts, so a step touches only those.
    output_counts: Vec<u32>,
    output_ids: Vec<u32>,
}

impl Sampler {
    pub fn new(params: SamplingParams) -> Result<Self, EngineError> {
        params.validate()?;
        let rng = match params.seed {
            Some(seed) => ChaCha8Rng::seed_from_u64(seed),
            None => ChaCha8Rng::from_os_rng(),
        };
        Ok(Sampler {
            params,
            rng,
            logits: Vec::new(),
            candidates: Vec::new(),
            seen: Vec::new(),
            output_counts: Vec::new(),
            output_ids: Vec::new(),
        })
    }

    pub fn params(&self) -> &SamplingParams {
        &self.params
    }

    /// Picks the next token from `logits` ([V]) given the sequence so far.
    pub fn sample(&mut self, logits: &[f32], history: &[u32]) -> u32 {
        let mut work = std::mem::take(&mut self.logits);
        work.clear();
        work.extend_from_slice(logits);
        for &(id, bias) in &self.params.logit_bias {
            if let Some(l) = work.get_mut(id as usize) {
                *l += bias;
            }
        }
        apply_repetition_penalty(&mut work, history, self.params.repetition_penalty, &mut self.seen);
        let (presence, frequency) = (self.params.presence_penalty, self.params.frequency_penalty);
        if presence != 0.0 || frequency != 0.0 {
            for &id in &self.output_ids {
                let (Some(l), Some(&n)) = (work.get_mut(id as usize), self.output_counts.get(id as usize))
                else {
                    continue;
                };
                *l -= presence + frequency * n as f32;
            }
        }
        let id = if self.params.temperature < MIN_TEMPERATURE {
            argmax(&work)
        } else {
            self.select_candidates(&work);
            let draw: f32 = self.rng.random();
            // Summed in f64: over 200k candidates an f32 sum loses the tail, and the draw would
            // fall past it to the fallback more often than the tail's share.
            let mut cumulative = 0f64;
            let mut chosen = None;
            for &(id, p) in &self.candidates {
                cumulative += f64::from(p);
                if f64::from(draw) < cumulative {
                    chosen = Some(id);
                    break;
                }
            }
            // Rounding left the sum a hair below 1: the least likely candidate that has any
            // probability takes the remainder — never a masked (−∞) token, whose probability
            // is 0. (A NaN probability, from an infinite logit, never compares: the most likely,
            // first candidate is then the one to take.)
            let fallback = if self.candidates.iter().any(|c| c.1.is_nan()) {
                self.candidates.first()
            } else {
                self.candidates.iter().rev().find(|c| c.1 > 0.0)
            };
            chosen
                .or_else(|| fallback.map(|c| c.0))
                .unwrap_or_else(|| argmax(&work))
        };
        self.logits = work;
        self.count_output(id);
        id
    }

    fn count_output(&mut self, id: u32) {
        let i = id as usize;
        if self.output_counts.len() <= i {
            self.output_counts.resize(i + 1, 0);
        }
        if self.output_counts[i] == 0 {
            self.output_ids.push(id);
        }
        self.output_counts[i] += 1;
    }

    /// [`Self::filtered_probabilities`] into `self.candidates` without sorting the vocabulary:
    /// top-k takes the k best by partial selection; top-p and min-p (which keep a prefix of the
    /// sorted order) sort only a growing prefix until the cut falls inside it. Only with no
    /// filter at all is every token sorted (the draw walks candidates most likely first).
    fn select_candidates(&mut self, logits: &[f32]) {
        let p = &self.params;
        let candidates = &mut self.candidates;
        candidates.clear();
        // A masked token (−∞) has no probability: it is never a candidate.
        candidates.extend(
            logits
                .iter()
                .enumerate()
                .filter(|(_, l)| !l.is_nan() && **l > f32::NEG_INFINITY)
                .map(|(i, &l)| (i as u32, l / p.temperature)),
        );
        let n = candidates.len();
        if p.top_k > 0 && p.top_k < n {
            candidates.select_nth_unstable_by(p.top_k - 1, most_likely_first);
            candidates.truncate(p.top_k);
        }
        let filtered = p.top_k > 0 || p.top_p < 1.0 || p.min_p > 0.0;
        if !filtered || candidates.len() <= SORTED_PREFIX {
            candidates.sort_by(most_likely_first);
            finish_filtering(candidates, p);
            return;
        }
        // Softmax over all candidates (top-k off here, or k > SORTED_PREFIX), then the top-p
        // and min-p cuts on a sorted prefix that grows until the cut lies inside it.
        // f64 sums: over 200k tokens an f32 running sum drifts enough to move a top-p cut by
        // a hundred tokens.
        let max = candidates.iter().fold(f32::NEG_INFINITY, |m, c| m.max(c.1));
        let total: f64 = candidates.iter().map(|c| f64::from((c.1 - max).exp())).sum();
        let mut prefix = SORTED_PREFIX;
        loop {
            let len = candidates.len();
            if prefix < len {
                candidates.select_nth_unstable_by(prefix - 1, most_likely_first);
            }
            let head = &mut candidates[..prefix.min(len)];
            head.sort_by(most_likely_first);
            let mut cumulative = 0f64;
            let first = (f64::from((head[0].1 - max).exp()) / total) as f32;
            let threshold = p.min_p * first;
            let mut cut = None;
            for (i, c) in head.iter().enumerate() {
                let prob = f64::from((c.1 - max).exp()) / total;
                if (p.top_p < 1.0 && cumulative >= f64::from(p.top_p)) || (prob as f32) < threshold {
                    cut = Some(i.max(1));
                    break;
                }
                cumulative += prob;
            }
            match cut {
                Some(keep) => {
                    candidates.truncate(keep);
                    break;
                }
                None if prefix >= len => break,
                None => prefix = prefix.saturating_mul(4),
            }
        }
        // The cuts are made: what is left is renormalised among itself.
        softmax_in_place(candidates);
    }

    /// The candidates after temperature, top-k, top-p and min-p, most likely first,
    /// renormalised. The slow twin of what [`Self::sample`] draws from: every token sorted.
    pub fn filtered_probabilities(&self, logits: &[f32]) -> Vec<(u32, f32)> {
        let p = &self.params;
        let mut candidates: Vec<(u32, f32)> = logits
            .iter()
            .enumerate()
            .filter(|(_, l)| !l.is_nan() && **l > f32::NEG_INFINITY)
            .map(|(i, &l)| (i as u32, l / p.temperature))
            .collect();
        candidates.sort_by(most_likely_first);
        if p.top_k > 0 {
            candidates.truncate(p.top_k);
        }
        finish_filtering(&mut candidates, p);
        candidates
    }

    /// [`Self::sample`]'s candidates for `logits` (fast path), for tests against
    /// [`Self::filtered_probabilities`].
    pub fn candidates_for(&mut self, logits: &[f32]) -> Vec<(u32, f32)> {
        self.select_candidates(logits);
        self.candidates.clone()
    }
}

/// Candidates sorted by this come out most likely first; ties by lower id (a total order, so
/// partial selection and a full sort agree).
fn most_likely_first(a: &(u32, f32), b: &(u32, f32)) -> std::cmp::Ordering {
    b.1.total_cmp(&a.1).then(a.0.cmp(&b.0))
}

/// The first sorted prefix the fast path tries for top-p / min-p.
const SORTED_PREFIX: usize = 64;

/// Softmax, then the top-p and min-p cuts, then renormalisation, on candidates sorted most
/// likely first (already cut to top-k).
fn finish_filtering(candidates: &mut Vec<(u32, f32)>, p: &SamplingParams) {
    softmax_in_place(candidates);
    if p.top_p < 1.0 {
        let mut cumulative = 0f64;
        let keep = candidates
            .iter()
            .take_while(|(_, prob)| {
                let before = cumulative;
                cumulative += f64::from(*prob);
                before < f64::from(p.top_p)
            })
            .count();
        candidates.truncate(keep.max(1));
    }
    if p.min_p > 0.0 {
        let threshold = p.min_p * candidates.first().map_or(0.0, |c| c.1);
        candidates.retain(|(_, prob)| *prob >= threshold);
    }
    let total: f64 = candidates.iter().map(|c| f64::from(c.1)).sum();
    for c in candidates.iter_mut() {
        c.1 = (f64::from(c.1) / total) as f32;
    }
}

/// Penalises each distinct id of `history` once; `seen` is scratch, left all false.
fn apply_repetition_penalty(logits: &mut [f32], history: &[u32], penalty: f32, seen: &mut Vec<bool>) {
    if penalty == 1.0 {
        return;
    }
    seen.resize(logits.len(), false);
    for &id in history {
        let (Some(s), Some(l)) = (seen.get_mut(id as usize), logits.get_mut(id as usize)) else {
            continue;
        };
        if !*s {
            *s = true;
            *l = if *l > 0.0 { *l / penalty } else { *l * penalty };
        }
    }
    for &id in history {
        if let Some(s) = seen.get_mut(id as usize) {
            *s = false;
        }
    }
}

/// Index of the largest logit; the lowest index among ties (as torch.argmax). NaNs are
/// skipped (0 if every logit is NaN).
pub fn argmax(logits: &[f32]) -> u32 {
    let mut best: Option<(usize, f32)> = None;
    for (i, &l) in logits.iter().enumerate() {
        if !l.is_nan() && best.is_none_or(|(_, b)| l > b) {
            best = Some((i, l));
        }
    }
    best.map_or(0, |(i, _)| i as u32)
}

/// Softmax over candidates already sorted most likely first.
fn softmax_in_place(candidates: &mut [(u32, f32)]) {
    let Some(&(_, max)) = candidates.first() else {
        return;
    };
    let mut total = 0f64;
    for c in candidates.iter_mut() {
        c.1 = (c.1 - max).exp();
        total += f64::from(c.1);
    }
    for c in candidates.iter_mut() {
        c.1 = (f64::from(c.1) / total) as f32;
    }
}
