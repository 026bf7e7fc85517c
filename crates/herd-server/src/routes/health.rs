//! `GET /health`: 200 while the engine threads run (the model's and each served adapter's),
//! 503 once one has stopped.

use std::sync::Arc;

use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use serde_json::{json, Value};

use crate::state::AppState;

pub async fn handle(State(state): State<Arc<AppState>>) -> (StatusCode, Json<Value>) {
    if !state.engine.is_alive() || state.adapters.iter().any(|(_, e)| !e.is_alive()) {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({"status": "engine stopped"})),
        );
    }
    let stats = state.metrics.engine_stats();
    (
        StatusCode::OK,
        Json(json!({"status": "ok", "running": stats.running, "waiting": stats.waiting})),
    )
}
