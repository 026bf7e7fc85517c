//! Chat models: the message type, the trait every attacker and target implements, and the
//! client for any OpenAI-compatible `/chat/completions` endpoint.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::error::RedteamError;
use crate::http::Endpoint;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    System,
    User,
    Assistant,
}

/// One chat message, serialised as OpenAI's `{"role": ..., "content": ...}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChatMessage {
    pub role: Role,
    pub content: String,
}

impl ChatMessage {
    pub fn system(content: impl Into<String>) -> Self {
        Self {
            role: Role::System,
            content: content.into(),
        }
    }

    pub fn user(content: impl Into<String>) -> Self {
        Self {
            role: Role::User,
            content: content.into(),
        }
    }

    pub fn assistant(content: impl Into<String>) -> Self {
        Self {
            role: Role::Assistant,
            content: content.into(),
        }
    }
}

/// A model that answers a conversation. Shared by the worker threads of a run, hence `Sync`.
pub trait ChatModel: Send + Sync {
    /// The assistant's next message after `messages`, at most `max_tokens` tokens long.
    fn reply(&self, messages: &[ChatMessage], max_tokens: usize) -> Result<String, RedteamError>;
}

/// A model served over the OpenAI API: POST `{base_url}/chat/completions`.
#[derive(Debug, Clone)]
pub struct OpenAiChat {
    endpoint: Endpoint,
    model: String,
    temperature: Option<f32>,
}

impl OpenAiChat {
    /// `base_url` is the API root (`http://127.0.0.1:8080/v1`); `timeout` bounds each request,
    /// connection to last byte; `api_key` is sent as `Authorization: Bearer`.
    pub fn new(
        base_url: &str,
        model: impl Into<String>,
        api_key: Option<String>,
        timeout: Duration,
    ) -> Result<Self, RedteamError> {
        Ok(Self {
            endpoint: Endpoint::new(base_url, api_key, timeout)?,
            model: model.into(),
            temperature: None,
        })
    }

    /// Samples at `temperature` instead of the server's default.
    pub fn with_temperature(mut self, temperature: f32) -> Self {
        self.temperature = Some(temperature);
        self
    }

    /// The URL requests go to.
    pub fn url(&self) -> String {
        self.endpoint.url("chat/completions")
    }
}

impl ChatModel for OpenAiChat {
    fn reply(&self, messages: &[ChatMessage], max_tokens: usize) -> Result<String, RedteamError> {
        let mut body = json!({
            "model": self.model,
            "messages": messages,
            "max_tokens": max_tokens,
        });
        if let (Some(t), Some(object)) = (self.temperature, body.as_object_mut()) {
            object.insert("temperature".into(), json!(t));
        }
        let answer = self.endpoint.post_json("chat/completions", &body)?;
        completion_text(&answer).ok_or_else(|| RedteamError::BadResponse {
            url: self.url(),
            reason: "no string at choices[0].message.content".into(),
        })
    }
}

fn completion_text(answer: &Value) -> Option<String> {
    answer
        .get("choices")?
        .get(0)?
        .get("message")?
        .get("content")?
        .as_str()
        .map(str::to_string)
}
