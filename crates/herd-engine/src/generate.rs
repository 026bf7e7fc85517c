//! The generation loop: prefill the prompt (in pieces, so activation memory stays bounded on
//! long prompts), then decode one token at a time until a stop token, the token budget, or the
//! end of the context.

use std::ops::ControlFlow;

use crate::error::EngineError;
use crate::model::{ImageFeatures, LanguageModel};
use crate::sampling::{Sampler, SamplingParams};

/// Prompt tokens fed per forward step during prefill.
pub const PREFILL_PIECE: usize = 512;

/// Why generation ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FinishReason {
    /// A stop token was produced (not included in the output).
    Stop(u32),
    /// `max_new_tokens` were produced.
    Length,
    /// The sequence filled the model's context.
    ContextFull,
    /// The caller's callback asked to stop.
    Cancelled,
    /// A constrained reply was whole and no stop token could end it.
    Complete,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Generation {
    pub tokens: Vec<u32>,
    pub finish_reason: FinishReason,
    pub prompt_tokens: usize,
}

/// Generates a continuation of `prompt`, calling `on_token` with each new token as soon as it
/// is chosen; the callback may return `ControlFlow::Break` to stop.
pub fn generate<M: LanguageModel>(
    model: &M,
    prompt: &[u32],
    params: &SamplingParams,
    on_token: impl FnMut(u32) -> ControlFlow<()>,
) -> Result<Generation, EngineError> {
    generate_with_images(model, prompt, None, params, on_token)
}

/// [`generate`] for a prompt whose `<|patch|>` tokens take image features (the prompt is then
/// prefilled in one step, since the features belong to specific positions).
pub fn generate_with_images<M: LanguageModel>(
    model: &M,
    prompt: &[u32],
    images: Option<&ImageFeatures>,
    params: &SamplingParams,
    mut on_token: impl FnMut(u32) -> ControlFlow<()>,
) -> Result<Generation, EngineError> {
    if prompt.is_empty() {
        return Err(EngineError::EmptyPrompt);
    }
    if prompt.len() > model.max_positions() {
        return Err(EngineError::PromptTooLong {
            prompt_tokens: prompt.len(),
            max_positions: model.max_positions(),
        });
    }
    let mut sampler = Sampler::new(params.clone())?;
    let mut cache = model.new_cache();
    let mut logits = Vec::new();
    match images {
        Some(images) => logits = model.feed_with_images(prompt, images, &mut cache)?,
        None => {
            for piece in prompt.chunks(PREFILL_PIECE) {
                logits = model.feed(piece, &mut cache)?;
            }
        }
    }
    let mut history = prompt.to_vec();
    let mut tokens = Vec::new();
    let finish_reason = loop {
        // -inf is a masked token; NaN or +inf means the forward pass went wrong, and sampling
        // from it would pick garbage (token 0 forever) without a word.
        if logits.iter().any(|l| l.is_nan() || *l == f32::INFINITY) {
            return Err(EngineError::NonFiniteLogits {
                position: history.len() - 1,
            });
        }
        let next = sampler.sample(&logits, &history);
        if params.stop_token_ids.contains(&next) {
            break FinishReason::Stop(next);
        }
        tokens.push(next);
        history.push(next);
        if on_token(next).is_break() {
            break FinishReason::Cancelled;
        }
        if tokens.len() >= params.max_new_tokens {
            break FinishReason::Length;
        }
        if history.len() >= model.max_positions() {
            break FinishReason::ContextFull;
        }
        logits = model.feed(&[next], &mut cache)?;
    };
    Ok(Generation {
        tokens,
        finish_reason,
        prompt_tokens: prompt.len(),
    })
}
