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
    let max = logits
        .iter()
        .copied()
        .filter(|l| !l.is_nan())
        .fold(f32::NEG_INFINITY, f32::max);
    // exp in f32 (each term exact to its rounding; glibc's expf is several times faster than
    // exp over a 200k vocabulary), summed in f64.
    let sum: f64 = logits
        .iter()
        .filter(|l| !l.is_nan())
        .map(|&l| f64::from((l - max).exp()))
        .sum();
    let log_z = f64::from(max) + sum.ln();
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
        assert_eq!(token_logprob(&logits, 0, 10).top.len(), 4);
    }
}
