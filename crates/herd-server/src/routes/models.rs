//! `GET /v1/models`: the model this server runs, and the LoRA adapters it serves beside it
//! (vLLM's listing: each adapter with its base as `parent`).

use std::sync::Arc;

use axum::extract::State;
use axum::Json;
use serde_json::{json, Value};

use crate::state::AppState;

pub async fn handle(State(state): State<Arc<AppState>>) -> Json<Value> {
    let mut data = vec![json!({
        "id": state.options.model_name,
        "object": "model",
        "created": state.started,
        "owned_by": "herd",
        "max_model_len": state.max_positions,
    })];
    for (name, _) in &state.adapters {
        data.push(json!({
            "id": name,
            "object": "model",
            "created": state.started,
            "owned_by": "herd",
            "max_model_len": state.max_positions,
            "parent": state.options.model_name,
        }));
    }
    Json(json!({ "object": "list", "data": data }))
}
