//! One file per endpoint, and what the generating endpoints share: reading the body, running
//! a request's choices side by side, and server-sent events.

pub mod chat;
pub mod completions;
pub mod health;
pub mod metrics;
pub mod models;
pub mod moderations;

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Instant;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use herd_engine::frontend::json_mode::JsonConstraint;
use herd_engine::frontend::output::StopStrings;
use herd_engine::{ImageFeatures, Request, SamplingParams, TokenLogprob};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

use crate::error::ApiError;
use crate::generation::{Generation, Update};
use crate::state::AppState;
use crate::wire::{Common, Fields};

/// Runs a generating endpoint: its response, or — for an error before the first byte —
/// OpenAI's error shape, counted as a failed request.
pub async fn respond(
    state: &AppState,
    endpoint: impl std::future::Future<Output = Result<Response, ApiError>>,
) -> Response {
    match endpoint.await {
        Ok(response) => response,
        Err(e) => {
            state.metrics.request_done(false);
            e.into_response()
        }
    }
}

/// The body as JSON fields; a body over the limit is a 413 in OpenAI's error shape.
pub fn fields(body: Result<Bytes, BytesRejection>) -> Result<Fields, ApiError> {
    let body = body.map_err(|e| ApiError {
        status: e.status(),
        message: e.body_text(),
        kind: "invalid_request_error",
        param: None,
        code: None,
    })?;
    Fields::parse(&body)
}

/// One prompt's share of a request: `n` choices are `n` engine requests (seeds `seed + i`).
pub struct PromptJob {
    pub prompt: Vec<u32>,
    pub images: Option<ImageFeatures>,
    pub logprobs: Option<usize>,
    pub prompt_logprobs: Option<usize>,
    /// JSON mode: the reply must be one JSON object.
    pub json_object: bool,
}

/// Checks the prompt's length (a 400 about `prompt_param` when it overflows the context),
/// applies `max_tokens` and the stop ids, and submits every choice; returns them in order
/// (choice index = prompt index × n + i).
pub async fn submit(
    state: &Arc<AppState>,
    jobs: Vec<PromptJob>,
    common: &Common,
    arrived: Instant,
    prompt_param: &'static str,
) -> Result<Vec<Generation>, ApiError> {
    let route = state.route(common.model.as_deref())?;
    if !common.params.logit_bias.is_empty() {
        // A bias on an id past the tokenizer's would be ignored silently, or (a padding row of
        // the embedding) sample a token that cannot be decoded. (Asked only when there is a
        // bias: a tokenizer.json's vocabulary size is a copy of its whole vocabulary.)
        let vocab = state.frontend.tokenizer.vocab_size();
        if let Some((id, _)) = common
            .params
            .logit_bias
            .iter()
            .find(|(id, _)| *id as usize >= vocab)
        {
            return Err(ApiError::invalid(
                "logit_bias",
                format!("`logit_bias` token {id} is not an id below {vocab}"),
            ));
        }
    }
    // The stop strings' tables once for every choice.
    let stop = StopStrings::new(&common.stop);
    let mut choices = Vec::new();
    for job in jobs {
        if job.prompt.len() > state.max_positions {
            return Err(ApiError::invalid(
                prompt_param,
                format!(
                    "the prompt has {} tokens; the model's context holds {}",
                    job.prompt.len(),
                    state.max_positions
                ),
            ));
        }
        let max_tokens = state.max_tokens(common.max_tokens, job.prompt.len());
        if max_tokens == 0 && job.prompt_logprobs.is_none() {
            return Err(ApiError::invalid(
                "max_tokens",
                "`max_tokens` is 0: nothing to generate (with `echo` and `logprobs` a prompt is scored)",
            ));
        }
        for i in 0..common.n {
            let mut stop_token_ids = if common.ignore_eos {
                Vec::new()
            } else {
                state.frontend.stop_ids.clone()
            };
            stop_token_ids.dedup();
            let params = SamplingParams {
                seed: common.params.seed.map(|s| s.wrapping_add(i as u64)),
                max_new_tokens: max_tokens,
                stop_token_ids,
                ..common.params.clone()
            };
            let request = Request {
                prompt: job.prompt.clone(),
                images: job.images.clone(),
                params,
                logprobs: job.logprobs,
                prompt_logprobs: job.prompt_logprobs,
                constraint: job.json_object.then(|| {
                    Box::new(JsonConstraint::new(state.json_tokens()))
                        as Box<dyn herd_engine::constraint::TokenConstraint>
                }),
                watch: Vec::new(),
            };
            let (id, events) = route.engine.submit(request).await?;
            choices.push(Generation::new(
                state.clone(),
                route.engine.clone(),
                id,
                events,
                stop.clone(),
                job.prompt.len(),
                arrived,
            ));
        }
    }
    Ok(choices)
}

/// Runs the choices side by side; their updates arrive tagged with the choice index. When the
/// receiver is dropped (the client left), each choice's task ends and cancels its request.
pub fn run_choices(choices: Vec<Generation>) -> mpsc::Receiver<(usize, Result<Update, ApiError>)> {
    let (tx, rx) = mpsc::channel(256);
    for (index, mut generation) in choices.into_iter().enumerate() {
        let tx = tx.clone();
        tokio::spawn(async move {
            loop {
                let next = tokio::select! {
                    next = generation.next() => next,
                    _ = tx.closed() => return,
                };
                let Some(update) = next else { return };
                let failed = update.is_err();
                if tx.send((index, update)).await.is_err() || failed {
                    return;
                }
            }
        });
    }
    rx
}

/// A finished choice, collected from its updates.
#[derive(Debug, Default)]
pub struct Collected {
    pub text: String,
    pub tokens: Vec<crate::generation::GeneratedToken>,
    pub prompt_logprobs: Option<Vec<TokenLogprob>>,
    pub finish_reason: &'static str,
    pub usage: herd_engine::Usage,
}

/// Waits for every choice to finish.
pub async fn collect(choices: Vec<Generation>) -> Result<Vec<Collected>, ApiError> {
    let n = choices.len();
    let mut out: Vec<Collected> = (0..n).map(|_| Collected::default()).collect();
    let mut rx = run_choices(choices);
    let mut finished = 0;
    while finished < n {
        let Some((i, update)) = rx.recv().await else {
            return Err(ApiError::unavailable(
                "the engine stopped before the request ended",
            ));
        };
        let c = &mut out[i];
        match update? {
            Update::PromptLogprobs(lp) => c.prompt_logprobs = Some(lp),
            Update::Text { text, tokens } => {
                c.text.push_str(&text);
                c.tokens.extend(tokens);
            }
            Update::Done { finish_reason, usage } => {
                c.finish_reason = finish_reason;
                c.usage = usage;
                finished += 1;
            }
        }
    }
    Ok(out)
}

/// Server-sent events from a producer that writes JSON chunks; `data: [DONE]` ends the stream.
/// The producer's sends fail once the client is gone, which ends it (and its choices).
pub fn sse<F, Fut>(produce: F) -> Response
where
    F: FnOnce(mpsc::Sender<serde_json::Value>) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let (tx, rx) = mpsc::channel::<serde_json::Value>(64);
    let (out_tx, out_rx) = mpsc::channel::<Result<SseEvent, Infallible>>(64);
    tokio::spawn(produce(tx));
    tokio::spawn(async move {
        let mut rx = rx;
        loop {
            // A client that leaves is noticed at once, not at the next chunk: dropping `rx`
            // ends the producer, whose choices then cancel their requests.
            let chunk = tokio::select! {
                chunk = rx.recv() => chunk,
                _ = out_tx.closed() => return,
            };
            let Some(chunk) = chunk else { break };
            if out_tx
                .send(Ok(SseEvent::default().data(chunk.to_string())))
                .await
                .is_err()
            {
                return;
            }
        }
        let _ = out_tx.send(Ok(SseEvent::default().data("[DONE]"))).await;
    });
    Sse::new(ReceiverStream::new(out_rx))
        .keep_alive(KeepAlive::default())
        .into_response()
}

/// The URL of a content part (`{"image_url": {"url": …}}`, or the bare string clients also
/// send: `{"image_url": "…"}`), for `key` `image_url` or `video_url`.
pub fn part_url<'a>(part: &'a serde_json::Value, key: &str) -> Option<&'a str> {
    part.get(key)
        .and_then(|u| u.get("url").or(Some(u)))
        .and_then(serde_json::Value::as_str)
}

/// A token's text for logprobs (lossy where a token is part of a character).
pub fn token_text(state: &AppState, id: u32) -> String {
    state.frontend.tokenizer.decode(&[id]).unwrap_or_default()
}

pub fn token_bytes(state: &AppState, id: u32) -> Vec<u8> {
    state
        .frontend
        .tokenizer
        .token_bytes(id)
        .unwrap_or_else(|_| token_text(state, id).into_bytes())
}

/// A short random-looking id (`chatcmpl-…`): unique per process, not a secret.
pub fn response_id(prefix: &str) -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    format!("{prefix}-{:016x}{n:04x}", t ^ 0x9e37_79b9_7f4a_7c15)
}
