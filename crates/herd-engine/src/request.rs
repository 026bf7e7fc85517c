//! What a client asks the engine for, and what the engine reports back: token ids in, token
//! events out (the engine core knows no text).

use crate::constraint::TokenConstraint;
use crate::generate::FinishReason;
use crate::model::ImageFeatures;
use crate::sampling::SamplingParams;
use crate::scheduler::RequestId;

/// One generation request, already tokenized.
#[derive(Debug)]
pub struct Request {
    pub prompt: Vec<u32>,
    /// Features for the prompt's `<|patch|>` tokens, in order.
    pub images: Option<ImageFeatures>,
    /// `max_new_tokens` may be 0 when `prompt_logprobs` is asked for (scoring a prompt).
    pub params: SamplingParams,
    /// Log-probabilities of each generated token, with this many most likely alternatives.
    pub logprobs: Option<usize>,
    /// Log-probabilities of every prompt token after the first (given the ones before it),
    /// with this many alternatives.
    pub prompt_logprobs: Option<usize>,
    /// A rule the reply must follow (JSON mode).
    pub constraint: Option<Box<dyn TokenConstraint>>,
    /// Ids whose log-probabilities every generated token reports ([`TokenLogprob::watched`])
    /// whether or not they are likely: a classifier's answer tokens (Llama Guard's `unsafe`).
    /// Non-empty implies per-token logprobs.
    pub watch: Vec<u32>,
}

impl Request {
    pub fn new(prompt: Vec<u32>, params: SamplingParams) -> Self {
        Request {
            prompt,
            images: None,
            params,
            logprobs: None,
            prompt_logprobs: None,
            constraint: None,
            watch: Vec::new(),
        }
    }
}

/// A token's log-probability under the model (log-softmax of the raw logits, before any
/// penalty, bias or temperature) and the most likely tokens at its position.
#[derive(Debug, Clone, PartialEq)]
pub struct TokenLogprob {
    pub token: u32,
    pub logprob: f32,
    /// Most likely first.
    pub top: Vec<(u32, f32)>,
    /// The request's watched ids with theirs, in the order asked.
    pub watched: Vec<(u32, f32)>,
}

/// What a step reports of a request.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// The prompt's log-probabilities (positions 1..; the first token has none), once the
    /// prompt is fed.
    PromptLogprobs {
        id: RequestId,
        logprobs: Vec<TokenLogprob>,
    },
    /// A new token (never a stop token).
    Token {
        id: RequestId,
        token: u32,
        logprob: Option<TokenLogprob>,
    },
    /// The request is done; its memory is free.
    Finished {
        id: RequestId,
        reason: FinishReason,
        usage: Usage,
    },
    /// The request failed; its memory is free. Others go on.
    Failed { id: RequestId, message: String },
}

impl Event {
    pub fn request(&self) -> RequestId {
        match self {
            Event::PromptLogprobs { id, .. }
            | Event::Token { id, .. }
            | Event::Finished { id, .. }
            | Event::Failed { id, .. } => *id,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Usage {
    pub prompt_tokens: usize,
    pub completion_tokens: usize,
}

/// log-softmax of `logits` at `token`, and the `top` most likely tokens with theirs.
pub fn token_logprob(logits: &[f32], token: u32, top: usize) -> TokenLogprob {
    token_logprob_watching(logits, token, top, &[])
}

/// [`token_logprob`], with the log-probabilities of `watch` too.
pub fn token_logprob_watching(logits: &[f32], token: u32, top: usize, watch: &[u32]) -> TokenLogprob {
    let max = logits
        .iter()
        .copied()
        .filter(|l| !l.is_nan())
        .fold(f32::NEG_INFINITY, f32::max);
    let log_z = f64::from(max) + sum_exp_below(logits, max).ln();
    let lp = |l: f32| (f64::from(l) - log_z) as f32;
    let mut best: Vec<(u32, f32)> = Vec::new();
    if top > 0 {
        let mut all: Vec<(u32, f32)> = logits
            .iter()
            .enumerate()
            .filter(|(_, l)| !l.is_nan())
            .map(|(i, &l)| (i as u32, l))
            .collect();
        let by_logit = |a: &(u32, f32), b: &(u32, f32)| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0));
        if top < all.len() {
            all.select_nth_unstable_by(top - 1, by_logit);
            all.truncate(top);
        }
        all.sort_by(by_logit);
        best = all.into_iter().map(|(i, l)| (i, lp(l))).collect();
    }
    TokenLogprob {
        token,
        logprob: logits.get(token as usize).map_or(f32::NEG_INFINITY, |&l| lp(l)),
        top: best,
        watched: watch
            .iter()
            .map(|&id| (id, logits.get(id as usize).map_or(f32::NEG_INFINITY, |&l| lp(l))))
            .collect(),
    }
}

/// Σ exp(l − max) over the non-NaN logits, with [`exp_nonpositive`] (vectorizable; a 200k
/// vocabulary takes a fraction of a millisecond), summed in f64.
fn sum_exp_below(logits: &[f32], max: f32) -> f64 {
    let mut total = 0f64;
    for chunk in logits.chunks(1024) {
        let mut part = 0f32;
        for &l in chunk {
            let e = exp_nonpositive(l - max);
            part += if l.is_nan() { 0.0 } else { e };
        }
        total += f64::from(part);
    }
    total
}

/// e^x for x ≤ 0 (−∞ and underflow give 0), relative error below 3·10⁻⁷ (Cephes' expf): n =
/// round(x·log₂e), r = x − n·ln 2 in two parts (exact to f32), e^r by a degree-6 polynomial,
/// 2^n by the exponent bits. No libm call, so the loop around it vectorizes.
fn exp_nonpositive(x: f32) -> f32 {
    let xc = x.max(-87.0);
    let t = xc * std::f32::consts::LOG2_E + 0.5;
    // floor without libm: truncate (toward zero), then step down where that rounded up.
    let i = t as i32;
    let n = i - i32::from((i as f32) > t);
    let nf = n as f32;
    let r = xc - nf * 0.693_359_4 + nf * 2.121_944_4e-4;
    let z = r * r;
    let p = ((((1.987_569_2e-4 * r + 1.398_199_9e-3) * r + 8.333_452e-3) * r + 4.166_579_6e-2) * r
        + 1.666_666_5e-1)
        * r
        + 0.5;
    let y = p * z + r + 1.0;
    let scale = f32::from_bits(((n + 127).max(0) as u32) << 23);
    if x < -87.0 {
        0.0
    } else {
        y * scale
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn logprobs_are_log_softmax_with_the_best_first() {
        let logits = [1.0f32, 3.0, 2.0, 3.0];
        let z: f64 = logits.iter().map(|&l| f64::from(l).exp()).sum();
        let t = token_logprob(&logits, 2, 3);
        assert!((f64::from(t.logprob) - (2.0 - z.ln())).abs() < 1e-6);
        // Ties go to the lower id, as argmax.
        assert_eq!(t.top.iter().map(|c| c.0).collect::<Vec<_>>(), [1, 3, 2]);
        assert!((t.top[0].1 - t.top[1].1).abs() < 1e-7);
        assert!(token_logprob(&logits, 0, 0).top.is_empty());
        // NaN logits take no probability; −∞ ones none either.
        let with_nan = [1.0f32, f32::NAN, 2.0, f32::NEG_INFINITY];
        let z = (1f64.exp() + 2f64.exp()).ln();
        assert!((f64::from(token_logprob(&with_nan, 2, 0).logprob) - (2.0 - z)).abs() < 1e-6);
        assert_eq!(token_logprob(&logits, 0, 10).top.len(), 4);
    }

    #[test]
    fn the_fast_exponential_agrees_with_the_precise_one() {
        let mut worst = 0f64;
        for k in 0..=100_000 {
            let x = -(k as f32) * 1e-3; // 0 … −100
            let precise = f64::from(x).exp();
            let fast = f64::from(exp_nonpositive(x));
            if precise > 1e-37 {
                worst = worst.max((fast - precise).abs() / precise);
            } else {
                assert!(fast < 1e-30, "{x}");
            }
        }
        assert!(worst < 3e-7, "relative error {worst:e}");
        assert_eq!(exp_nonpositive(f32::NEG_INFINITY), 0.0);
        // log-softmax over a large vocabulary: the fast sum against f64 throughout.
        let logits: Vec<f32> = (0..202_048u32)
            .map(|i| ((i.wrapping_mul(2_654_435_761) >> 8) % 6000) as f32 / 100.0 - 30.0)
            .collect();
        let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let exact: f64 = logits
            .iter()
            .map(|&l| (f64::from(l) - f64::from(max)).exp())
            .sum();
        let fast = sum_exp_below(&logits, max);
        assert!((fast.ln() - exact.ln()).abs() < 1e-6, "{fast} vs {exact}");
    }
}
