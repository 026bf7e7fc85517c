//! `POST /v1/completions`: raw prompts (text, token ids, or a list of either), `echo`,
//! `logprobs` — with `max_tokens: 0`, `echo` and `logprobs` a prompt is scored, which is what
//! lm-evaluation-harness' `local-completions` asks for loglikelihoods.

use std::sync::Arc;
use std::time::Instant;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::Json;
use herd_engine::TokenLogprob;
use herd_text::SpecialTokens;
use serde_json::{json, Map, Value};
use tokio::sync::mpsc;

use super::chat::usage_value;
use super::{collect, fields, run_choices, submit, token_text, Collected, PromptJob};
use crate::error::ApiError;
use crate::generation::Update;
use crate::state::{unix_now, AppState};
use crate::wire::{kind, Common, MAX_TOP_LOGPROBS};

/// OpenAI's default `max_tokens` for completions.
const DEFAULT_MAX_TOKENS: usize = 16;
/// The most prompts one request may hold.
const MAX_PROMPTS: usize = 64;

pub async fn handle(State(state): State<Arc<AppState>>, body: Result<Bytes, BytesRejection>) -> Response {
    super::respond(&state.clone(), complete(state, body, Instant::now())).await
}

/// A prompt as given: its text (for `echo`) and its ids.
struct Prompt {
    text: String,
    ids: Vec<u32>,
}

async fn complete(
    state: Arc<AppState>,
    body: Result<Bytes, BytesRejection>,
    arrived: Instant,
) -> Result<Response, ApiError> {
    if state.options.screening.is_some() {
        // A raw prompt is no conversation a guard can frame; unscreened text may not pass.
        return Err(ApiError {
            status: axum::http::StatusCode::FORBIDDEN,
            message:
                "this server screens traffic with a guard model (--guard-mode): use /v1/chat/completions"
                    .into(),
            kind: "permission_error",
            param: None,
            code: Some("content_filter"),
        });
    }
    let mut f = fields(body)?;
    let Some(prompt) = f.take("prompt") else {
        return Err(ApiError::invalid("prompt", "`prompt` is required"));
    };
    let echo = f.bool("echo")?.unwrap_or(false);
    let logprobs = f.count("logprobs", MAX_TOP_LOGPROBS)?;
    if let Some(best_of) = f.i64("best_of")? {
        if best_of != 1 {
            return Err(ApiError::invalid(
                "best_of",
                "herd does not support `best_of` other than 1",
            ));
        }
    }
    let mut common = Common::parse(&mut f, &["max_tokens"])?;
    f.finish()?;
    common.max_tokens = Some(common.max_tokens.unwrap_or(DEFAULT_MAX_TOKENS));
    let prompts = read_prompts(&state, prompt)?;
    let jobs = prompts
        .iter()
        .map(|p| PromptJob {
            prompt: p.ids.clone(),
            images: None,
            logprobs,
            prompt_logprobs: if echo { logprobs } else { None },
            json_object: false,
        })
        .collect();
    let choices = submit(&state, jobs, &common, arrived, "prompt").await?;
    let id = super::response_id("cmpl");
    let n = common.n;
    let model = state.served_name(common.model.as_deref());
    if common.stream {
        return Ok(stream(
            state,
            choices,
            id,
            prompts,
            n,
            echo,
            logprobs,
            common.include_usage,
            model,
        ));
    }
    let collected = collect(choices).await?;
    let mut usage = herd_engine::Usage::default();
    let choices: Vec<Value> = collected
        .iter()
        .enumerate()
        .map(|(index, c)| {
            let prompt = &prompts[index / n];
            if index % n == 0 {
                usage.prompt_tokens += c.usage.prompt_tokens;
            }
            usage.completion_tokens += c.usage.completion_tokens;
            let text = if echo {
                format!("{}{}", prompt.text, c.text)
            } else {
                c.text.clone()
            };
            json!({
                "index": index,
                "text": text,
                "logprobs": logprobs.map(|_| logprobs_value(&state, prompt, c, echo, &mut 0)),
                "finish_reason": c.finish_reason,
            })
        })
        .collect();
    state.metrics.request_done(true);
    Ok(Json(json!({
        "id": id,
        "object": "text_completion",
        "created": unix_now(),
        "model": model,
        "choices": choices,
        "usage": usage_value(usage),
    }))
    .into_response())
}

/// `prompt`: a string, a list of strings, a list of token ids, or a list of lists of ids.
fn read_prompts(state: &AppState, value: Value) -> Result<Vec<Prompt>, ApiError> {
    let text = |s: &str| -> Result<Prompt, ApiError> {
        let ids = state
            .frontend
            .completion_prompt(s, SpecialTokens::AsText, &[], 0)
            .map_err(|e| ApiError::invalid("prompt", e.to_string()))?;
        Ok(Prompt {
            text: s.to_string(),
            ids,
        })
    };
    let ids = |items: &[Value]| -> Result<Prompt, ApiError> {
        let vocab = state.frontend.tokenizer.vocab_size();
        let ids = items
            .iter()
            .map(|v| {
                v.as_u64()
                    .filter(|&id| id < vocab as u64)
                    .map(|id| id as u32)
                    .ok_or_else(|| {
                        ApiError::invalid("prompt", format!("prompt token {v} is not an id below {vocab}"))
                    })
            })
            .collect::<Result<Vec<u32>, _>>()?;
        Ok(Prompt {
            text: state.frontend.tokenizer.decode(&ids).unwrap_or_default(),
            ids,
        })
    };
    let prompts = match value {
        Value::String(s) => vec![text(&s)?],
        Value::Array(items) if items.is_empty() => {
            return Err(ApiError::invalid("prompt", "`prompt` is empty"))
        }
        Value::Array(items) if items.iter().all(Value::is_number) => vec![ids(&items)?],
        Value::Array(items) => {
            if items.len() > MAX_PROMPTS {
                return Err(ApiError::invalid(
                    "prompt",
                    format!("at most {MAX_PROMPTS} prompts a request"),
                ));
            }
            items
                .iter()
                .map(|item| match item {
                    Value::String(s) => text(s),
                    Value::Array(inner) => ids(inner),
                    other => Err(ApiError::invalid(
                        "prompt",
                        format!(
                            "a prompt must be a string or a list of token ids, found {}",
                            kind(other)
                        ),
                    )),
                })
                .collect::<Result<_, _>>()?
        }
        other => {
            return Err(ApiError::invalid(
                "prompt",
                format!("`prompt` must be a string or a list, found {}", kind(&other)),
            ))
        }
    };
    if prompts.iter().any(|p| p.ids.is_empty()) {
        return Err(ApiError::invalid("prompt", "a prompt is empty"));
    }
    Ok(prompts)
}

/// OpenAI's legacy logprobs: parallel lists of tokens, their logprobs, the top alternatives
/// (as `{token: logprob}`) and each token's offset in the text.
/// Offsets count from `*offset` (a stream's earlier chunks), which is left past the last token.
fn logprobs_value(state: &AppState, prompt: &Prompt, c: &Collected, echo: bool, offset: &mut usize) -> Value {
    let mut tokens = Vec::new();
    let mut token_logprobs = Vec::new();
    let mut top_logprobs = Vec::new();
    let mut text_offset = Vec::new();
    let mut push = |id: u32, lp: Option<&TokenLogprob>| {
        let t = token_text(state, id);
        text_offset.push(*offset);
        *offset += t.len();
        tokens.push(Value::String(t));
        token_logprobs.push(lp.map_or(Value::Null, |l| json!(l.logprob)));
        top_logprobs.push(lp.map_or(Value::Null, |l| {
            let mut m = Map::new();
            for &(id, v) in &l.top {
                m.insert(token_text(state, id), json!(v));
            }
            Value::Object(m)
        }));
    };
    if echo {
        let scored = c.prompt_logprobs.as_deref().unwrap_or_default();
        for (i, &id) in prompt.ids.iter().enumerate() {
            // The first token has nothing before it to be predicted from.
            push(id, i.checked_sub(1).and_then(|j| scored.get(j)));
        }
    }
    for t in &c.tokens {
        push(t.id, t.logprob.as_ref());
    }
    json!({
        "tokens": tokens,
        "token_logprobs": token_logprobs,
        "top_logprobs": top_logprobs,
        "text_offset": text_offset,
    })
}

#[allow(clippy::too_many_arguments)]
fn stream(
    state: Arc<AppState>,
    choices: Vec<crate::generation::Generation>,
    id: String,
    prompts: Vec<Prompt>,
    n: usize,
    echo: bool,
    logprobs: Option<usize>,
    include_usage: bool,
    model: String,
) -> Response {
    super::sse(move |tx: mpsc::Sender<Value>| async move {
        let total = choices.len();
        let created = unix_now();
        let chunk = |index: usize, text: String, lp: Value, finish: Value| {
            let mut c = json!({
                "id": id,
                "object": "text_completion",
                "created": created,
                "model": model,
                "choices": [{"index": index, "text": text, "logprobs": lp, "finish_reason": finish}],
            });
            if include_usage {
                c["usage"] = Value::Null;
            }
            c
        };
        let mut rx = run_choices(choices);
        let mut usage = herd_engine::Usage::default();
        let mut finished = 0;
        let mut echoed = vec![!echo; total];
        // Each choice's text offset so far (logprobs' `text_offset` counts from its start).
        let mut offsets = vec![0usize; total];
        let mut ok = true;
        while finished < total {
            let next = tokio::select! {
                next = rx.recv() => next,
                _ = tx.closed() => return,
            };
            let Some((index, update)) = next else {
                break;
            };
            let mut out = Vec::new();
            let prompt = &prompts[index / n];
            if !echoed[index] {
                // The echoed prompt, with its logprobs when asked (they come first).
                echoed[index] = true;
                let lp = match (&update, logprobs) {
                    (Ok(Update::PromptLogprobs(scored)), Some(_)) => {
                        let c = Collected {
                            prompt_logprobs: Some(scored.clone()),
                            ..Collected::default()
                        };
                        logprobs_value(&state, prompt, &c, true, &mut offsets[index])
                    }
                    _ => Value::Null,
                };
                out.push(chunk(index, prompt.text.clone(), lp, Value::Null));
            }
            match update {
                Err(e) => {
                    let _ = tx.send(e.body()).await;
                    ok = false;
                    break;
                }
                Ok(Update::PromptLogprobs(_)) => {}
                Ok(Update::Text { text, tokens }) => {
                    let lp = if logprobs.is_some() {
                        let c = Collected {
                            tokens,
                            ..Collected::default()
                        };
                        logprobs_value(&state, prompt, &c, false, &mut offsets[index])
                    } else {
                        Value::Null
                    };
                    if !text.is_empty() || !lp.is_null() {
                        out.push(chunk(index, text, lp, Value::Null));
                    }
                }
                Ok(Update::Done {
                    finish_reason,
                    usage: u,
                }) => {
                    if index % n == 0 {
                        usage.prompt_tokens += u.prompt_tokens;
                    }
                    usage.completion_tokens += u.completion_tokens;
                    out.push(chunk(index, String::new(), Value::Null, json!(finish_reason)));
                    finished += 1;
                }
            }
            for c in out {
                if tx.send(c).await.is_err() {
                    return;
                }
            }
        }
        if ok && include_usage {
            let _ = tx
                .send(json!({
                    "id": id,
                    "object": "text_completion",
                    "created": created,
                    "model": model,
                    "choices": [],
                    "usage": usage_value(usage),
                }))
                .await;
        }
        state.metrics.request_done(ok);
    })
}
