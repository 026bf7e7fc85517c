//! `GET /health`: 200 while the engine thread is up.

use std::sync::Arc;

use axum::extract::State;
use axum::Json;
use serde_json::{json, Value};

use crate::state::AppState;

pub async fn handle(State(state): State<Arc<AppState>>) -> Json<Value> {
    let stats = state.metrics.engine_stats();
    Json(json!({"status": "ok", "running": stats.running, "waiting": stats.waiting}))
}
