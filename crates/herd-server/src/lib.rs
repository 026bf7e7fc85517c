//! herd-server: `herd serve`, an OpenAI-compatible HTTP API over herd's continuous-batching
//! engine. The server only translates wire types and streams events: prompts are assembled by
//! the engine's frontend, batching and sampling happen on the engine thread ([`worker`]).
//!
//! Routes: `POST /v1/chat/completions`, `POST /v1/completions`, `POST /v1/moderations`,
//! `GET /v1/models`, `GET /health`, `GET /metrics`.

pub mod error;
pub mod fetch;
pub mod generation;
pub mod guard;
pub mod metrics;
pub mod routes;
pub mod state;
pub mod temp_file;
pub mod wire;
pub mod worker;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use axum::extract::{Request, State};
use axum::http::header::AUTHORIZATION;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use herd_engine::frontend::images::ImageEncoder;
use herd_engine::frontend::Frontend;
use herd_engine::{LanguageModel, SchedulerConfig};

pub use error::{ApiError, ServerError};
pub use metrics::Metrics;
pub use state::{AppState, ServerOptions};
pub use worker::EngineHandle;

/// Which model answers `/v1/moderations` and screens traffic.
pub enum GuardChoice {
    /// No moderation endpoint, no screening.
    None,
    /// The served model is the guard (its frontend loaded a second time, and the policy);
    /// moderation shares its engine thread. Text only.
    ServedModel(Box<Frontend>, herd_engine::guard::Policy),
    /// A guard on its own engine thread (`--guard`).
    Service(Box<guard::GuardService>),
}

/// Starts the engine thread over `model` and builds the shared state.
pub fn build_state<M>(
    model: M,
    frontend: Frontend,
    images: Option<ImageEncoder>,
    scheduler: SchedulerConfig,
    options: ServerOptions,
) -> Result<Arc<AppState>, ServerError>
where
    M: LanguageModel + Send + 'static,
{
    build_state_with_guard(model, frontend, images, scheduler, options, GuardChoice::None)
}

/// [`build_state`] with a guard. Screening (`options.screening`) needs a separate guard.
pub fn build_state_with_guard<M>(
    model: M,
    frontend: Frontend,
    images: Option<ImageEncoder>,
    scheduler: SchedulerConfig,
    options: ServerOptions,
    guard: GuardChoice,
) -> Result<Arc<AppState>, ServerError>
where
    M: LanguageModel + Send + 'static,
{
    build_state_with_adapters(model, Vec::new(), frontend, images, scheduler, options, guard)
}

/// [`build_state_with_guard`] with LoRA adapters served beside the model: `(name, model with
/// the adapter applied)`, each on its own engine thread with its own scheduler (and KV budget);
/// a request's `model` picks one (see [`AppState::route`]).
pub fn build_state_with_adapters<M>(
    model: M,
    adapters: Vec<(String, M)>,
    frontend: Frontend,
    images: Option<ImageEncoder>,
    scheduler: SchedulerConfig,
    options: ServerOptions,
    guard: GuardChoice,
) -> Result<Arc<AppState>, ServerError>
where
    M: LanguageModel + Send + 'static,
{
    for (i, (name, _)) in adapters.iter().enumerate() {
        if name.is_empty() || *name == options.model_name || adapters[..i].iter().any(|(n, _)| n == name) {
            return Err(ServerError::Config(format!(
                "adapter name `{name}` must be non-empty and differ from the model's and the other adapters' names"
            )));
        }
    }
    if let Some(encoder) = &images {
        encoder
            .check_tokenizer(&frontend.tokenizer)
            .map_err(|e| ServerError::Config(e.to_string()))?;
    }
    if options.screening.is_some() && !matches!(guard, GuardChoice::Service(_)) {
        return Err(ServerError::Config(
            "screening (--guard-mode) needs a guard model (--guard)".into(),
        ));
    }
    let metrics = Arc::new(Metrics::default());
    let max_positions = model.max_positions();
    let engine = EngineHandle::spawn(model, scheduler, metrics.clone())?;
    let adapters = adapters
        .into_iter()
        .map(|(name, m)| Ok((name, EngineHandle::spawn(m, scheduler, metrics.clone())?)))
        .collect::<Result<Vec<_>, ServerError>>()?;
    let guard = match guard {
        GuardChoice::None => None,
        GuardChoice::ServedModel(guard_frontend, policy) => Some(Arc::new(guard::GuardService::over(
            engine.clone(),
            *guard_frontend,
            None,
            policy,
            options.model_name.clone(),
            max_positions,
        )?)),
        GuardChoice::Service(service) => Some(Arc::new(*service)),
    };
    Ok(Arc::new(AppState {
        frontend,
        images,
        engine,
        metrics,
        options,
        max_positions,
        started: state::unix_now(),
        json_tokens: std::sync::OnceLock::new(),
        guard,
        adapters,
    }))
}

/// The routes, with the API key check on `/v1/*`, the body limit and one log line per request.
pub fn router(state: Arc<AppState>) -> Router {
    let v1 = Router::new()
        .route("/v1/chat/completions", post(routes::chat::handle))
        .route("/v1/completions", post(routes::completions::handle))
        .route("/v1/moderations", post(routes::moderations::handle))
        .route("/v1/models", get(routes::models::handle))
        .route_layer(axum::middleware::from_fn_with_state(
            state.clone(),
            require_api_key,
        ));
    Router::new()
        .merge(v1)
        .route("/health", get(routes::health::handle))
        .route("/metrics", get(routes::metrics::handle))
        .fallback(|| async { ApiError::not_found("no such route") })
        .layer(axum::extract::DefaultBodyLimit::max(state.options.max_body_bytes))
        .layer(axum::middleware::from_fn(log_request))
        .with_state(state)
}

async fn require_api_key(State(state): State<Arc<AppState>>, request: Request, next: Next) -> Response {
    if let Some(key) = &state.options.api_key {
        let given = request
            .headers()
            .get(AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "));
        if !given.is_some_and(|g| constant_time_eq(g.as_bytes(), key.as_bytes())) {
            return ApiError::unauthorized().into_response();
        }
    }
    next.run(request).await
}

/// Compares without an early exit, so response time says nothing of how much of a key matched.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

async fn log_request(request: Request, next: Next) -> Response {
    let started = Instant::now();
    let (method, path) = (request.method().clone(), request.uri().path().to_string());
    let response = next.run(request).await;
    tracing::info!(
        "{method} {path} {} {:.1} ms",
        response.status().as_u16(),
        started.elapsed().as_secs_f64() * 1e3
    );
    response
}

/// Serves until SIGINT/SIGTERM, then stops taking connections and lets requests in flight
/// finish for up to `shutdown_timeout`. Prints the address once listening (port 0 picks one).
pub fn serve_blocking(state: Arc<AppState>, addr: SocketAddr) -> Result<(), ServerError> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .map_err(|source| ServerError::Bind {
                addr: addr.to_string(),
                source,
            })?;
        let local = listener.local_addr()?;
        tracing::info!("herd serve: listening on http://{local}");
        eprintln!("listening on http://{local}");
        let timeout = state.options.shutdown_timeout;
        let app = router(state);
        axum::serve(listener, app)
            .with_graceful_shutdown(async move {
                shutdown_signal().await;
                tracing::info!("shutting down: draining requests in flight (up to {timeout:?})");
                eprintln!("shutting down: draining requests in flight (up to {timeout:?})");
                // The deadline: past it, the process ends whatever is still running.
                std::thread::spawn(move || {
                    std::thread::sleep(timeout);
                    eprintln!("shutdown deadline reached; exiting");
                    std::process::exit(0);
                });
            })
            .await?;
        Ok(())
    })
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
}
