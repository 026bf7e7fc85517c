//! What every handler shares: the checkpoint's frontend, its vision tower, the engine thread's
//! handle, metrics and the server's options.

use std::sync::{Arc, OnceLock};

use herd_engine::frontend::json_mode::TokenBytes;

use herd_engine::frontend::images::ImageEncoder;
use herd_engine::frontend::Frontend;

use crate::metrics::Metrics;
use crate::worker::EngineHandle;

/// The server's settings (`herd serve` flags).
#[derive(Debug, Clone)]
pub struct ServerOptions {
    /// The name `/v1/models` lists and responses carry.
    pub model_name: String,
    /// When set, `/v1/*` needs `Authorization: Bearer <key>`.
    pub api_key: Option<String>,
    /// Largest request body, bytes.
    pub max_body_bytes: usize,
    /// `max_tokens` when a request gives none (capped by what the context has left).
    pub default_max_tokens: usize,
    /// How long a shutdown waits for requests in flight.
    pub shutdown_timeout: std::time::Duration,
    /// Fetch `http(s)://` image URLs (off: only `data:` URLs are taken). Bounded by
    /// `--limit image-bytes` and [`Self::image_url_timeout`].
    pub allow_image_urls: bool,
    /// The most one image fetch may take, connection to last byte.
    pub image_url_timeout: std::time::Duration,
    /// Screen chat requests and replies with the guard (`--guard-mode`).
    pub screening: Option<crate::guard::Screening>,
}

impl Default for ServerOptions {
    fn default() -> Self {
        ServerOptions {
            model_name: "herd".into(),
            api_key: None,
            max_body_bytes: 32 << 20,
            default_max_tokens: 1024,
            shutdown_timeout: std::time::Duration::from_secs(30),
            allow_image_urls: false,
            image_url_timeout: std::time::Duration::from_secs(10),
            screening: None,
        }
    }
}

pub struct AppState {
    pub frontend: Frontend,
    pub images: Option<ImageEncoder>,
    pub engine: EngineHandle,
    pub metrics: Arc<Metrics>,
    pub options: ServerOptions,
    /// Positions a sequence may hold (the model's context).
    pub max_positions: usize,
    /// Unix seconds the server started (`created` of `/v1/models`).
    pub started: u64,
    /// Every token's bytes, for JSON mode: built at the first request that asks.
    pub json_tokens: OnceLock<Arc<TokenBytes>>,
    /// The guard for `/v1/moderations` and screening.
    pub guard: Option<Arc<crate::guard::GuardService>>,
    /// LoRA adapters served beside the base (`--adapter NAME=DIR`): a request whose `model` is
    /// NAME runs on that adapter's engine thread (a copy of the model that shares the base
    /// weights and holds the adapter's low-rank updates).
    pub adapters: Vec<(String, EngineHandle)>,
}

/// Which engine runs a request, and the model name its response carries.
#[derive(Clone)]
pub struct Route {
    pub engine: EngineHandle,
    pub name: String,
}

impl AppState {
    /// The engine for a request's `model`: an adapter by its name, else the served model.
    /// Without adapters any name is accepted (clients send their own); with adapters a name
    /// that is neither is a 404, so a typo never silently runs the base model.
    pub fn route(&self, model: Option<&str>) -> Result<Route, crate::error::ApiError> {
        let base = Route {
            engine: self.engine.clone(),
            name: self.options.model_name.clone(),
        };
        let Some(model) = model else { return Ok(base) };
        if let Some((name, engine)) = self.adapters.iter().find(|(n, _)| n == model) {
            return Ok(Route {
                engine: engine.clone(),
                name: name.clone(),
            });
        }
        if self.adapters.is_empty() || model == self.options.model_name {
            return Ok(base);
        }
        let names: Vec<&str> = std::iter::once(self.options.model_name.as_str())
            .chain(self.adapters.iter().map(|(n, _)| n.as_str()))
            .collect();
        Err(crate::error::ApiError::model_not_found(model, &names))
    }

    /// The name a response carries for a request's `model` (checked by [`Self::route`]).
    pub fn served_name(&self, model: Option<&str>) -> String {
        model
            .and_then(|m| self.adapters.iter().find(|(n, _)| n == m))
            .map_or_else(|| self.options.model_name.clone(), |(n, _)| n.clone())
    }

    pub fn json_tokens(&self) -> Arc<TokenBytes> {
        self.json_tokens
            .get_or_init(|| Arc::new(TokenBytes::new(&self.frontend.tokenizer)))
            .clone()
    }

    /// `max_tokens` for a prompt of `prompt_tokens`: as asked, else the default, never past
    /// the context's end.
    pub fn max_tokens(&self, asked: Option<usize>, prompt_tokens: usize) -> usize {
        let left = self.max_positions.saturating_sub(prompt_tokens);
        asked.unwrap_or(self.options.default_max_tokens.min(left.max(1)))
    }
}

pub fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}
