//! A server over a tiny checkpoint (or a scripted fake), driven in-process through the router.

use std::sync::Arc;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use axum::Router;
use candle_core::{DType, Device};
use herd_engine::frontend::Frontend;
use herd_engine::{EngineError, LanguageModel, SchedulerConfig};
use herd_model::TextModel;
use herd_server::{AppState, ServerOptions};
use serde_json::Value;
use tower::ServiceExt;

pub fn chat_tiny() -> std::path::PathBuf {
    herd_testkit::fixture_path("chat-tiny")
}

pub fn model() -> TextModel {
    TextModel::load(&chat_tiny(), DType::F32, &Device::Cpu).unwrap()
}

pub fn frontend(model: &TextModel) -> Frontend {
    Frontend::load(&chat_tiny(), model.config()).unwrap()
}

pub fn scheduler() -> SchedulerConfig {
    SchedulerConfig {
        max_running: 16,
        max_tokens_per_step: 256,
        kv_budget_bytes: 1 << 30,
    }
}

/// A server over chat-tiny with `options`.
pub fn server_with(options: ServerOptions) -> (Router, Arc<AppState>) {
    let model = model();
    let frontend = frontend(&model);
    let state = herd_server::build_state(model, frontend, None, scheduler(), options).unwrap();
    (herd_server::router(state.clone()), state)
}

pub fn server() -> (Router, Arc<AppState>) {
    server_with(ServerOptions::default())
}

/// A model that writes `script` (then repeats its last token) whatever the prompt (fed whole).
pub struct Scripted {
    pub script: Vec<u32>,
    pub vocab: usize,
}

impl LanguageModel for Scripted {
    /// (positions fed, prompt length)
    type Cache = (usize, Option<usize>);

    fn new_cache(&self) -> Self::Cache {
        (0, None)
    }

    fn max_positions(&self) -> usize {
        4096
    }

    fn feed(&self, ids: &[u32], cache: &mut Self::Cache) -> Result<Vec<f32>, EngineError> {
        let start = *cache.1.get_or_insert(ids.len());
        cache.0 += ids.len();
        let i = (cache.0 - start).min(self.script.len() - 1);
        let mut logits = vec![0.0; self.vocab];
        logits[self.script[i] as usize] = 50.0;
        Ok(logits)
    }
}

/// A server over a [`Scripted`] model that answers `text` then `<|eot|>`.
pub fn scripted_server(text: &str) -> Router {
    let frontend = frontend(&model());
    let mut script = frontend
        .tokenizer
        .encode(text, herd_text::SpecialTokens::Parse)
        .unwrap();
    script.push(frontend.tokenizer.special_id("<|eot|>").unwrap());
    let vocab = frontend.tokenizer.vocab_size();
    let model = Scripted { script, vocab };
    let state = herd_server::build_state(
        model,
        frontend,
        None,
        SchedulerConfig {
            max_running: 1,
            ..scheduler()
        },
        ServerOptions::default(),
    )
    .unwrap();
    herd_server::router(state)
}

pub fn post(path: &str, body: &str) -> Request<Body> {
    Request::post(path)
        .header("content-type", "application/json")
        .body(Body::from(body.to_string()))
        .unwrap()
}

/// Status and JSON body.
pub async fn call(router: &Router, request: Request<Body>) -> (StatusCode, Value) {
    let response = router.clone().oneshot(request).await.unwrap();
    let status = response.status();
    let bytes = axum::body::to_bytes(response.into_body(), usize::MAX)
        .await
        .unwrap();
    let body = serde_json::from_slice(&bytes)
        .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into_owned()));
    (status, body)
}

/// The `data:` payloads of a server-sent event stream, `[DONE]` excluded (and required).
pub async fn stream(router: &Router, request: Request<Body>) -> Vec<Value> {
    let response = router.clone().oneshot(request).await.unwrap();
    assert_eq!(response.status(), 200);
    let bytes = axum::body::to_bytes(response.into_body(), usize::MAX)
        .await
        .unwrap();
    let text = String::from_utf8(bytes.to_vec()).unwrap();
    let data: Vec<&str> = text.lines().filter_map(|l| l.strip_prefix("data: ")).collect();
    assert_eq!(data.last(), Some(&"[DONE]"), "{text}");
    data[..data.len() - 1]
        .iter()
        .map(|d| serde_json::from_str(d).unwrap())
        .collect()
}

/// Concatenated `delta.content` of a chat stream's choice 0.
pub fn streamed_text(chunks: &[Value]) -> String {
    chunks
        .iter()
        .filter_map(|c| {
            c["choices"].get(0)?["delta"]["content"]
                .as_str()
                .map(str::to_string)
        })
        .collect()
}

/// `bytes` as a base64 `data:` URL of type `mime`.
pub fn data_url(mime: &str, bytes: &[u8]) -> String {
    format!(
        "data:{mime};base64,{}",
        base64::Engine::encode(&base64::engine::general_purpose::STANDARD, bytes)
    )
}

/// A server over vision-chat-tiny with its vision tower.
pub fn vision_server() -> axum::Router {
    let dir = herd_testkit::fixture_path("vision-chat-tiny");
    let model =
        herd_model::TextModel::load(&dir, candle_core::DType::F32, &candle_core::Device::Cpu).unwrap();
    let frontend = herd_engine::frontend::Frontend::load(&dir, model.config()).unwrap();
    let encoder = herd_engine::frontend::images::ImageEncoder::load(
        &dir,
        model.config().hidden_size,
        model.dtype(),
        model.device(),
    )
    .unwrap();
    let state = herd_server::build_state(
        model,
        frontend,
        encoder,
        scheduler(),
        herd_server::ServerOptions::default(),
    )
    .unwrap();
    herd_server::router(state)
}
