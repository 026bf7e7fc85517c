//! `POST /v1/moderations`: OpenAI's moderation API over the guard model. `input` is a string
//! (one result), a list of strings (one result each, checked side by side), or a list of
//! `text` / `image_url` parts (one result for them together). Each input is checked as one
//! user turn under the server's policy. `model` is accepted and ignored: the answer is always
//! the guard's, and says its name.
//!
//! OpenAI's categories come from the S-codes as Meta's llama-stack maps them; a category's score
//! is the guard's P(unsafe) when its verdict names a code mapped to it, else 0. herd's own
//! reading is under `herd` in each result: the verdict, the codes, P(unsafe) and the guard's text.
//! A reply that is not a verdict is `flagged: false` with `herd.verdict: "parse_error"`.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::Json;
use herd_engine::guard::GuardResult;
use herd_text::Message;
use serde_json::{json, Map, Value};

use super::fields;
use crate::error::ApiError;
use crate::guard::GuardService;
use crate::state::AppState;
use crate::wire::kind;

/// The most strings one request may check.
pub const MAX_INPUTS: usize = 64;

/// OpenAI's moderation categories and the S-codes that flag each (llama-stack's map).
pub const OPENAI_CATEGORIES: [(&str, &[&str]); 13] = [
    ("harassment", &["S4"]),
    ("harassment/threatening", &["S1", "S4"]),
    ("hate", &["S10"]),
    ("hate/threatening", &["S10", "S1"]),
    ("illicit", &["S2"]),
    ("illicit/violent", &["S1", "S9"]),
    ("self-harm", &["S11"]),
    ("self-harm/intent", &["S11"]),
    ("self-harm/instructions", &["S11", "S6"]),
    ("sexual", &["S3", "S12"]),
    ("sexual/minors", &["S4"]),
    ("violence", &["S1"]),
    ("violence/graphic", &["S1"]),
];

pub async fn handle(State(state): State<Arc<AppState>>, body: Result<Bytes, BytesRejection>) -> Response {
    super::respond(&state.clone(), moderate(state, body)).await
}

/// One thing to check: its text parts and image URLs.
struct Input {
    parts: Vec<Value>,
    image_urls: Vec<String>,
}

async fn moderate(state: Arc<AppState>, body: Result<Bytes, BytesRejection>) -> Result<Response, ApiError> {
    let mut f = fields(body)?;
    let Some(guard) = state.guard.clone() else {
        return Err(ApiError::not_found(
            "this server has no guard model: start it with --guard PATH (or serve a Llama Guard model)",
        ));
    };
    let Some(input) = f.take("input") else {
        return Err(ApiError::invalid("input", "`input` is required"));
    };
    if let Some(model) = f.take("model") {
        if !model.is_string() {
            return Err(ApiError::invalid("model", "`model` must be a string"));
        }
    }
    f.finish()?;
    let inputs = read_input(input)?;
    let mut tasks = Vec::with_capacity(inputs.len());
    let mut budget = herd_engine::image::PixelBudget::for_request();
    for input in inputs {
        let has_images = !input.image_urls.is_empty();
        let pixels =
            super::chat::load_images(&state, input.image_urls, guard.has_vision(), &mut budget).await?;
        let types: &[&str] = if has_images { &["text", "image"] } else { &["text"] };
        let mut message = Message::new("user", "");
        message.content = herd_text::chat::Content::Parts(input.parts);
        let guard = guard.clone();
        tasks.push((
            types,
            // Aborted when dropped: an early error or a client gone stops the other checks.
            crate::guard::AbortOnDrop(tokio::spawn(async move {
                guard.check(&[message], pixels, true).await
            })),
        ));
    }
    let mut results = Vec::with_capacity(tasks.len());
    for (types, mut task) in tasks {
        let result = (&mut task.0)
            .await
            .map_err(|e| ApiError::internal(format!("moderation: {e}")))??;
        results.push(result_value(&result, &guard, types));
    }
    state.metrics.request_done(true);
    Ok(Json(json!({
        "id": super::response_id("modr"),
        "model": guard.name,
        "results": results,
    }))
    .into_response())
}

fn read_input(input: Value) -> Result<Vec<Input>, ApiError> {
    let text = |t: String| Input {
        parts: vec![json!({"type": "text", "text": t})],
        image_urls: Vec::new(),
    };
    match input {
        Value::String(s) => Ok(vec![text(s)]),
        Value::Array(items) if items.is_empty() => Err(ApiError::invalid("input", "`input` is empty")),
        Value::Array(items) if items.iter().all(Value::is_string) => {
            if items.len() > MAX_INPUTS {
                return Err(ApiError::invalid(
                    "input",
                    format!(
                        "`input` has {} strings; at most {MAX_INPUTS} per request",
                        items.len()
                    ),
                ));
            }
            Ok(items
                .into_iter()
                .filter_map(|v| v.as_str().map(str::to_string))
                .map(text)
                .collect())
        }
        Value::Array(items) if items.iter().all(Value::is_object) => {
            let mut one = Input {
                parts: Vec::new(),
                image_urls: Vec::new(),
            };
            for (i, item) in items.iter().enumerate() {
                match item.get("type").and_then(Value::as_str) {
                    Some("text") => {
                        let Some(t) = item.get("text").and_then(Value::as_str) else {
                            return Err(ApiError::invalid("input", format!("input[{i}]: `text` must be a string")));
                        };
                        one.parts.push(json!({"type": "text", "text": t}));
                    }
                    Some("image_url") => {
                        let url = super::part_url(item, "image_url").ok_or_else(|| ApiError::invalid("input", format!("input[{i}]: `image_url.url` must be a string")))?;
                        one.image_urls.push(url.to_string());
                        one.parts.push(json!({"type": "image"}));
                    }
                    _ => {
                        return Err(ApiError::invalid(
                            "input",
                            format!("input[{i}]: parts are {{\"type\": \"text\", …}} or {{\"type\": \"image_url\", …}}"),
                        ))
                    }
                }
            }
            if !one.parts.iter().any(|p| p["type"] == "text") {
                // Llama Guard writes a message only through its text parts.
                one.parts.push(json!({"type": "text", "text": ""}));
            }
            Ok(vec![one])
        }
        other => Err(ApiError::invalid(
            "input",
            format!(
                "`input` must be a string, a list of strings or a list of parts, found {}",
                kind(&other)
            ),
        )),
    }
}

fn result_value(result: &GuardResult, guard: &GuardService, types: &[&str]) -> Value {
    let codes = result.verdict.categories();
    let p = result.unsafe_probability.unwrap_or(0.0);
    let mut categories = Map::new();
    let mut scores = Map::new();
    let mut applied = Map::new();
    for (name, mapped) in OPENAI_CATEGORIES {
        let hit = mapped.iter().any(|m| codes.iter().any(|c| c == m));
        categories.insert(name.into(), json!(hit));
        scores.insert(name.into(), json!(if hit { p } else { 0.0 }));
        applied.insert(name.into(), json!(if hit { types.to_vec() } else { Vec::new() }));
    }
    let herd = result.to_json(guard.policy());
    json!({
        "flagged": result.verdict.is_unsafe(),
        "categories": categories,
        "category_scores": scores,
        "category_applied_input_types": applied,
        "herd": herd,
    })
}
