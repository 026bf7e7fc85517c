//! `GET /v1/models`: the one model this server runs.

use std::sync::Arc;

use axum::extract::State;
use axum::Json;
use serde_json::{json, Value};

use crate::state::AppState;

pub async fn handle(State(state): State<Arc<AppState>>) -> Json<Value> {
    Json(json!({
        "object": "list",
        "data": [{
            "id": state.options.model_name,
            "object": "model",
            "created": state.started,
            "owned_by": "herd",
            "max_model_len": state.max_positions,
        }],
    }))
}
