//! The server's guard: a Llama Guard model on its own engine thread (`herd serve --guard`), or
//! the served model itself when it is the guard (`herd serve --model Llama-Guard-4`). It answers
//! `/v1/moderations` and, with `--guard-mode`, screens chat requests and replies.
//!
//! Screening policy (documented in the README):
//! - `input`: the conversation's user and assistant turns are checked before anything is
//!   generated — before the first byte of a stream. Flagged: a 400 `content_filter` error, or
//!   with `--guard-refusal TEXT` a normal reply of TEXT with `finish_reason: "content_filter"`.
//! - `output`: each finished reply is checked (as the assistant turn after the conversation)
//!   before the client sees any of it: a streamed reply is held back and sent whole once
//!   screened. Flagged: its text (and tool calls) become TEXT, or nothing, with
//!   `finish_reason: "content_filter"`.
//! - A guard reply that is not a verdict counts as flagged unless `--guard-fail-open`; a
//!   guard that fails to run or stops before answering fails the request (503).
//! - What is checked: every message the client wrote — system, developer and tool messages
//!   are folded into the user turns — with input screening judging the last user turn.
//! - `/v1/completions` takes raw prompts the guard cannot frame as a conversation: while
//!   screening is on it answers 403.

use std::sync::Arc;

use herd_engine::frontend::images::ImageEncoder;
use herd_engine::frontend::Frontend;
use herd_engine::guard::{screening_conversation, Guard, GuardResult, Policy, Verdict};
use herd_engine::image::RgbImage;
use herd_engine::{Event, LanguageModel, SchedulerConfig};
use herd_text::chat::Content;
use herd_text::Message;
use serde_json::Value;

use crate::error::{ApiError, ServerError};
use crate::metrics::Metrics;
use crate::worker::EngineHandle;

/// What screening checks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GuardMode {
    Input,
    Output,
    Both,
}

impl GuardMode {
    pub fn input(self) -> bool {
        matches!(self, GuardMode::Input | GuardMode::Both)
    }

    pub fn output(self) -> bool {
        matches!(self, GuardMode::Output | GuardMode::Both)
    }
}

/// `--guard-mode` and what a flagged request gets.
#[derive(Debug, Clone)]
pub struct Screening {
    pub mode: GuardMode,
    /// The reply that replaces a flagged one (`None`: a 400 for a flagged input, an empty reply
    /// for a flagged output).
    pub refusal: Option<String>,
    /// Let a guard reply that is not a verdict pass.
    pub fail_open: bool,
}

impl Screening {
    /// Whether a check's result stops the text.
    pub fn blocks(&self, result: &GuardResult) -> bool {
        match result.verdict {
            Verdict::Safe => false,
            Verdict::Unsafe { .. } => true,
            Verdict::ParseError { .. } => !self.fail_open,
        }
    }
}

/// A guard model the server can ask.
pub struct GuardService {
    pub name: String,
    frontend: Frontend,
    guard: Guard,
    engine: EngineHandle,
    images: Option<ImageEncoder>,
    policy: Policy,
    max_positions: usize,
}

impl GuardService {
    /// A guard model on its own engine thread.
    pub fn spawn<M>(
        model: M,
        frontend: Frontend,
        images: Option<ImageEncoder>,
        scheduler: SchedulerConfig,
        policy: Policy,
        name: String,
    ) -> Result<Self, ServerError>
    where
        M: LanguageModel + Send + 'static,
    {
        let max_positions = model.max_positions();
        // The guard's engine reports to a metrics sink of its own: the served model's gauges
        // stay the served model's.
        let engine = EngineHandle::spawn(model, scheduler, Arc::new(Metrics::default()))?;
        GuardService::over(engine, frontend, images, policy, name, max_positions)
    }

    /// A guard that is the served model: checks share its engine thread.
    pub fn over(
        engine: EngineHandle,
        frontend: Frontend,
        images: Option<ImageEncoder>,
        policy: Policy,
        name: String,
        max_positions: usize,
    ) -> Result<Self, ServerError> {
        let guard = Guard::new(&frontend)?;
        if let Some(encoder) = &images {
            encoder
                .check_tokenizer(&frontend.tokenizer)
                .map_err(|e| ServerError::Config(format!("the guard: {e}")))?;
        }
        Ok(GuardService {
            name,
            frontend,
            guard,
            engine,
            images,
            policy,
            max_positions,
        })
    }

    pub fn policy(&self) -> &Policy {
        &self.policy
    }

    /// Whether the guard can see images.
    pub fn has_vision(&self) -> bool {
        self.images.is_some()
    }

    /// Checks a chat as [`screening_conversation`] lays it out (`request`: judge the last user
    /// turn, for input screening; else the last turn). Its `{"type": "image"}` parts take
    /// `images` (the chat's, in order) when the guard has a vision tower; a text-only guard
    /// checks the text alone.
    pub async fn check(
        self: &Arc<Self>,
        messages: &[Message],
        images: Vec<RgbImage>,
        request: bool,
    ) -> Result<GuardResult, ApiError> {
        let (mut conversation, order) = screening_conversation(messages, request);
        if conversation.is_empty() {
            return Err(ApiError::invalid("messages", "nothing to check"));
        }
        let encoded = if self.images.is_some() && !order.is_empty() {
            let picked: Vec<RgbImage> = order
                .iter()
                .map(|&i| {
                    images
                        .get(i)
                        .cloned()
                        .ok_or_else(|| ApiError::internal("the guard lost track of an image"))
                })
                .collect::<Result<_, _>>()?;
            let this = self.clone();
            tokio::task::spawn_blocking(move || {
                this.images
                    .as_ref()
                    .ok_or_else(|| ApiError::internal("the guard's vision tower went away"))?
                    .encode(&picked)
                    .map_err(ApiError::from)
            })
            .await
            .map_err(|e| ApiError::internal(format!("guard image encoding: {e}")))??
        } else {
            strip_images(&mut conversation);
            None
        };
        let (grids, tokens_per_tile, features) = match encoded {
            Some(e) => (e.grids, e.tokens_per_tile, Some(e.features)),
            None => (Vec::new(), 0, None),
        };
        let prompt = self
            .guard
            .prompt(
                &self.frontend,
                &conversation,
                &self.policy,
                &grids,
                tokens_per_tile,
            )
            .map_err(ApiError::from)?;
        if prompt.len() >= self.max_positions {
            return Err(ApiError::invalid(
                "messages",
                format!(
                    "the guard prompt has {} tokens; the guard's context holds {}",
                    prompt.len(),
                    self.max_positions
                ),
            ));
        }
        let request = self
            .guard
            .request(prompt, features, &self.policy, self.max_positions);
        let (_id, mut events) = self.engine.submit(request).await?;
        let mut reader = self.guard.reader(&self.frontend);
        // Dropping `events` when done cancels the request in the engine.
        let mut complete = false;
        while let Some(event) = events.recv().await {
            match event {
                Event::Token { token, logprob, .. } => {
                    if reader.push(&self.frontend, token, logprob.as_ref()) {
                        complete = true;
                        break;
                    }
                }
                Event::Finished { .. } => {
                    complete = true;
                    break;
                }
                Event::Failed { message, .. } => {
                    return Err(ApiError::unavailable(format!("the guard failed: {message}")))
                }
                Event::PromptLogprobs { .. } => {}
            }
        }
        // A guard that went away mid-reply gave no verdict: nothing passes on it.
        if !complete {
            return Err(ApiError::unavailable("the guard stopped before it answered"));
        }
        reader
            .finish(&self.frontend, &self.policy)
            .map_err(ApiError::from)
    }
}

/// A spawned check that stops when its request does (an early error or a client gone drops
/// it).
pub struct AbortOnDrop(pub tokio::task::JoinHandle<Result<GuardResult, ApiError>>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Image parts out (a guard that cannot see them checks the text).
fn strip_images(conversation: &mut Vec<Message>) {
    for m in conversation.iter_mut() {
        if let Content::Parts(parts) = &mut m.content {
            parts.retain(|p| p.get("type").and_then(Value::as_str) != Some("image"));
        }
    }
    conversation.retain(|m| !matches!(&m.content, Content::Parts(p) if p.is_empty()));
}

/// The 400 a flagged input gets without a refusal text.
pub fn flagged_error(result: &GuardResult, policy: &Policy, what: &str) -> ApiError {
    let categories: Vec<String> = result
        .verdict
        .categories()
        .iter()
        .map(|code| match policy.get(code) {
            Some(c) => format!("{code} ({})", c.name.trim_end_matches('.')),
            None => code.clone(),
        })
        .collect();
    let why = match &result.verdict {
        Verdict::ParseError { .. } => "the guard's reply was not a verdict".to_string(),
        _ if categories.is_empty() => "unsafe".to_string(),
        _ => format!("unsafe: {}", categories.join(", ")),
    };
    ApiError {
        status: axum::http::StatusCode::BAD_REQUEST,
        message: format!("the {what} was flagged by the guard model ({why})"),
        kind: "invalid_request_error",
        param: Some("messages".into()),
        code: Some("content_filter"),
    }
}
