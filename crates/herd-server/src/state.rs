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
}

impl AppState {
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
