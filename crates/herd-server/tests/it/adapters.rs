//! LoRA adapters served beside the model (`herd serve --adapter NAME=DIR`): a request's
//! `model` picks the engine, responses carry its name, `/v1/models` lists them, and an unknown
//! name is OpenAI's 404.

use axum::Router;
use herd_server::ServerOptions;

use super::support::{call, frontend, model, post, scheduler, stream, streamed_text, Scripted};

fn scripted(frontend: &herd_engine::frontend::Frontend, text: &str) -> Scripted {
    let mut script = frontend
        .tokenizer
        .encode(text, herd_text::SpecialTokens::Parse)
        .unwrap();
    script.push(frontend.tokenizer.special_id("<|eot|>").unwrap());
    Scripted {
        script,
        vocab: frontend.tokenizer.vocab_size(),
    }
}

fn server() -> Router {
    let frontend = frontend(&model());
    let base = scripted(&frontend, "Hello");
    let adapters = vec![
        ("fmt".to_string(), scripted(&frontend, "Paris")),
        ("other".to_string(), scripted(&frontend, "Merci")),
    ];
    let options = ServerOptions {
        model_name: "base".into(),
        ..ServerOptions::default()
    };
    let state = herd_server::build_state_with_adapters(
        base,
        adapters,
        frontend,
        None,
        scheduler(),
        options,
        herd_server::GuardChoice::None,
    )
    .unwrap();
    herd_server::router(state)
}

fn chat(model: Option<&str>, stream: bool) -> String {
    let model = model.map_or(String::new(), |m| format!("\"model\": \"{m}\", "));
    format!(
        r#"{{{model}"messages": [{{"role": "user", "content": "hi"}}], "max_tokens": 8, "stream": {stream}}}"#
    )
}

#[tokio::test]
async fn a_request_runs_on_the_adapter_its_model_names() {
    let router = server();
    for (model, text, name) in [
        (None, "Hello", "base"),
        (Some("base"), "Hello", "base"),
        (Some("fmt"), "Paris", "fmt"),
        (Some("other"), "Merci", "other"),
    ] {
        let (status, body) = call(&router, post("/v1/chat/completions", &chat(model, false))).await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["choices"][0]["message"]["content"], text, "{model:?}");
        assert_eq!(body["model"], name);
        let chunks = stream(&router, post("/v1/chat/completions", &chat(model, true))).await;
        assert_eq!(streamed_text(&chunks), text);
        assert!(chunks.iter().all(|c| c["model"] == name), "{chunks:?}");
    }
    let (status, body) = call(
        &router,
        post(
            "/v1/completions",
            r#"{"model": "fmt", "prompt": "x", "max_tokens": 8}"#,
        ),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["model"], "fmt");
    assert_eq!(body["choices"][0]["text"], "Paris");
}

#[tokio::test]
async fn an_unknown_model_is_a_404_when_adapters_are_served() {
    let router = server();
    let (status, body) = call(&router, post("/v1/chat/completions", &chat(Some("gpt-4"), false))).await;
    assert_eq!(status, 404);
    assert_eq!(body["error"]["code"], "model_not_found");
    assert_eq!(body["error"]["param"], "model");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("base, fmt, other"),
        "{body}"
    );
    let (status, body) = call(
        &router,
        post("/v1/chat/completions", r#"{"model": 3, "messages": []}"#),
    )
    .await;
    assert_eq!(status, 400, "{body}");
}

#[tokio::test]
async fn models_lists_the_adapters_with_their_parent() {
    let router = server();
    let (status, body) = call(
        &router,
        axum::http::Request::get("/v1/models")
            .body(axum::body::Body::empty())
            .unwrap(),
    )
    .await;
    assert_eq!(status, 200);
    let ids: Vec<&str> = body["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["base", "fmt", "other"]);
    assert_eq!(body["data"][1]["parent"], "base");
    assert!(body["data"][0].get("parent").is_none());
}

#[test]
fn adapter_names_must_be_distinct() {
    let frontend = frontend(&model());
    let adapters = vec![("base".to_string(), scripted(&frontend, "a"))];
    let options = ServerOptions {
        model_name: "base".into(),
        ..ServerOptions::default()
    };
    let result = herd_server::build_state_with_adapters(
        scripted(&frontend, "b"),
        adapters,
        frontend,
        None,
        scheduler(),
        options,
        herd_server::GuardChoice::None,
    );
    assert!(result.is_err());
}
