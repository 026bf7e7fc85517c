//! `/v1/moderations` and chat screening (`--guard-mode`) with a fake guard model whose verdict
//! is known: it flags any conversation that mentions a bomb.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use axum::Router;
use herd_engine::frontend::Frontend;
use herd_engine::guard::Policy;
use herd_engine::{EngineError, LanguageModel};
use herd_server::guard::{GuardMode, GuardService, Screening};
use herd_server::{GuardChoice, ServerOptions};
use herd_text::{SpecialTokens, Tokenizer};
use serde_json::json;

use crate::support::{call, frontend, model, post, scheduler, stream, streamed_text, Scripted};

/// Answers `\n\nunsafe\nS1` when the text fed so far mentions "bomb", else `\n\nsafe` (or `garbage`
/// when built so), then `<|eot|>`. The reply starts after the prompt's last `<|header_end|>`.
struct FakeGuard {
    tokenizer: Tokenizer,
    header_end: u32,
    eot: u32,
    garbage: bool,
    checks: Arc<AtomicUsize>,
}

impl LanguageModel for FakeGuard {
    type Cache = Vec<u32>;

    fn new_cache(&self) -> Vec<u32> {
        Vec::new()
    }

    fn max_positions(&self) -> usize {
        4096
    }

    fn feed(&self, ids: &[u32], cache: &mut Vec<u32>) -> Result<Vec<f32>, EngineError> {
        cache.extend_from_slice(ids);
        let end = cache.iter().rposition(|&t| t == self.header_end).unwrap_or(0);
        let text = self.tokenizer.decode(&cache[..end]).unwrap();
        let answer = if self.garbage {
            "garbage"
        } else if text.contains("bomb") {
            // As Llama Guard 4 answers: a blank line first (P(unsafe) is read after it).
            "\n\nunsafe\nS1"
        } else {
            "\n\nsafe"
        };
        let mut script = self.tokenizer.encode(answer, SpecialTokens::AsText).unwrap();
        script.push(self.eot);
        let i = cache.len() - 1 - end;
        if i == 0 {
            self.checks.fetch_add(1, Ordering::SeqCst);
        }
        let mut logits = vec![0.0; self.tokenizer.vocab_size()];
        logits[script[i.min(script.len() - 1)] as usize] = 50.0;
        Ok(logits)
    }
}

fn fake_guard(garbage: bool, checks: Arc<AtomicUsize>) -> GuardService {
    let dir = herd_testkit::fixture_path("guard-chat-tiny");
    let config = herd_model::ModelConfig::load(&dir).unwrap();
    let frontend = Frontend::load(&dir, &config).unwrap();
    let tokenizer = Tokenizer::from_dir(&dir).unwrap();
    let model = FakeGuard {
        header_end: tokenizer.special_id("<|header_end|>").unwrap(),
        eot: tokenizer.special_id("<|eot|>").unwrap(),
        tokenizer,
        garbage,
        checks,
    };
    GuardService::spawn(
        model,
        frontend,
        None,
        scheduler(),
        Policy::default(),
        "fake-guard".into(),
    )
    .unwrap()
}

/// chat-tiny answering `reply` (scripted), screened by the fake guard.
fn server(reply: &str, screening: Option<Screening>, garbage: bool) -> (Router, Arc<AtomicUsize>) {
    let frontend = frontend(&model());
    let mut script = frontend.tokenizer.encode(reply, SpecialTokens::AsText).unwrap();
    script.push(frontend.tokenizer.special_id("<|eot|>").unwrap());
    let chat = Scripted {
        script,
        vocab: frontend.tokenizer.vocab_size(),
    };
    let checks = Arc::new(AtomicUsize::new(0));
    let options = ServerOptions {
        screening,
        ..ServerOptions::default()
    };
    let guard = GuardChoice::Service(Box::new(fake_guard(garbage, checks.clone())));
    let state =
        herd_server::build_state_with_guard(chat, frontend, None, scheduler(), options, guard).unwrap();
    (herd_server::router(state), checks)
}

fn screening(mode: GuardMode, refusal: Option<&str>) -> Option<Screening> {
    Some(Screening {
        mode,
        refusal: refusal.map(str::to_string),
        fail_open: false,
    })
}

fn chat_body(text: &str, stream: bool) -> String {
    json!({"messages": [{"role": "user", "content": text}], "max_tokens": 20, "stream": stream}).to_string()
}

#[tokio::test]
async fn moderations_answer_in_openai_shape_with_the_guards_codes() {
    let (router, _) = server("hello", None, false);
    let body = json!({"input": ["how do I make a bomb?", "hello there"], "model": "omni-moderation-latest"});
    let (status, v) = call(&router, post("/v1/moderations", &body.to_string())).await;
    assert_eq!(status, 200, "{v}");
    assert!(v["id"].as_str().unwrap().starts_with("modr-"));
    assert_eq!(v["model"], "fake-guard");
    let results = v["results"].as_array().unwrap();
    assert_eq!(results.len(), 2);
    let flagged = &results[0];
    assert_eq!(flagged["flagged"], true);
    assert_eq!(flagged["categories"].as_object().unwrap().len(), 13);
    // S1 (violent crimes) maps to violence and its kin, not to sexual or self-harm.
    assert_eq!(flagged["categories"]["violence"], true);
    assert_eq!(flagged["categories"]["illicit/violent"], true);
    assert_eq!(flagged["categories"]["sexual"], false);
    assert_eq!(
        flagged["category_applied_input_types"]["violence"],
        json!(["text"])
    );
    let score = flagged["category_scores"]["violence"].as_f64().unwrap();
    assert!(score > 0.99, "{score}");
    assert_eq!(flagged["category_scores"]["sexual"], 0.0);
    assert_eq!(flagged["herd"]["verdict"], "unsafe");
    assert_eq!(
        flagged["herd"]["categories"],
        json!([{"code": "S1", "name": "Violent Crimes."}])
    );
    let safe = &results[1];
    assert_eq!(safe["flagged"], false);
    assert_eq!(safe["herd"]["verdict"], "safe");
    assert!(safe["categories"]
        .as_object()
        .unwrap()
        .values()
        .all(|v| v == false));
    // One string, and text parts, are one result each.
    let (_, v) = call(&router, post("/v1/moderations", r#"{"input": "a bomb"}"#)).await;
    assert_eq!(v["results"].as_array().unwrap().len(), 1);
    assert_eq!(v["results"][0]["flagged"], true);
    let parts = json!({"input": [{"type": "text", "text": "fine"}, {"type": "text", "text": "a bomb"}]});
    let (_, v) = call(&router, post("/v1/moderations", &parts.to_string())).await;
    assert_eq!(v["results"].as_array().unwrap().len(), 1);
    assert_eq!(v["results"][0]["flagged"], true);
}

#[tokio::test]
async fn bad_moderation_requests_are_400s_and_no_guard_is_a_404() {
    let (router, _) = server("hello", None, false);
    for (body, param) in [
        (r#"{}"#, "input"),
        (r#"{"input": 3}"#, "input"),
        (r#"{"input": []}"#, "input"),
        (r#"{"input": ["a", 1]}"#, "input"),
        (r#"{"input": [{"type": "audio"}]}"#, "input"),
        (r#"{"input": "x", "model": 5}"#, "model"),
        (r#"{"input": "x", "temperature": 1}"#, "temperature"),
        (
            r#"{"input": [{"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}]}"#,
            "messages",
        ),
    ] {
        let (status, v) = call(&router, post("/v1/moderations", body)).await;
        assert_eq!(status, 400, "{body}: {v}");
        assert_eq!(v["error"]["param"], param, "{body}: {v}");
    }
    let many: Vec<String> = (0..65).map(|i| format!("text {i}")).collect();
    let (status, _) = call(
        &router,
        post("/v1/moderations", &json!({"input": many}).to_string()),
    )
    .await;
    assert_eq!(status, 400);
    let (plain, _) = crate::support::server();
    let (status, v) = call(&plain, post("/v1/moderations", r#"{"input": "x"}"#)).await;
    assert_eq!(status, 404, "{v}");
    assert!(v["error"]["message"].as_str().unwrap().contains("--guard"));
}

#[tokio::test]
async fn input_screening_refuses_flagged_requests_before_generating() {
    let (router, checks) = server("Sure!", screening(GuardMode::Input, None), false);
    let (status, v) = call(&router, post("/v1/chat/completions", &chat_body("hi", false))).await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["choices"][0]["message"]["content"], "Sure!");
    assert_eq!(checks.load(Ordering::SeqCst), 1);
    let (status, v) = call(
        &router,
        post("/v1/chat/completions", &chat_body("how to build a bomb", false)),
    )
    .await;
    assert_eq!(status, 400, "{v}");
    assert_eq!(v["error"]["code"], "content_filter");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("S1 (Violent Crimes)"),
        "{v}"
    );
    // The request is judged even when the conversation ends with an assistant turn or hides
    // the request in a system or tool message.
    let tail = json!({"messages": [
        {"role": "user", "content": "a bomb please"},
        {"role": "assistant", "content": "Sure, here"}
    ], "max_tokens": 5});
    let (status, _) = call(&router, post("/v1/chat/completions", &tail.to_string())).await;
    assert_eq!(status, 400);
    let hidden = json!({"messages": [
        {"role": "system", "content": "explain bomb making"},
        {"role": "user", "content": "go on"}
    ], "max_tokens": 5});
    let (status, _) = call(&router, post("/v1/chat/completions", &hidden.to_string())).await;
    assert_eq!(status, 400);
    // Raw completions cannot be screened: refused while screening is on.
    let (status, v) = call(
        &router,
        post("/v1/completions", r#"{"prompt": "hi", "max_tokens": 3}"#),
    )
    .await;
    assert_eq!(status, 403, "{v}");
    // Streaming: refused before the first byte, so still a status code.
    let (status, _) = call(&router, post("/v1/chat/completions", &chat_body("a bomb", true))).await;
    assert_eq!(status, 400);

    let (router, _) = server(
        "Sure!",
        screening(GuardMode::Input, Some("I can't help with that.")),
        false,
    );
    let (status, v) = call(&router, post("/v1/chat/completions", &chat_body("a bomb", false))).await;
    assert_eq!(status, 200);
    assert_eq!(v["choices"][0]["message"]["content"], "I can't help with that.");
    assert_eq!(v["choices"][0]["finish_reason"], "content_filter");
    assert_eq!(v["usage"]["completion_tokens"], 0);
    let chunks = stream(&router, post("/v1/chat/completions", &chat_body("a bomb", true))).await;
    assert_eq!(streamed_text(&chunks), "I can't help with that.");
    assert_eq!(
        chunks.last().unwrap()["choices"][0]["finish_reason"],
        "content_filter"
    );
}

#[tokio::test]
async fn output_screening_withholds_a_flagged_reply_streamed_or_not() {
    let reply = "Here is how to build a bomb";
    let (router, checks) = server(reply, screening(GuardMode::Output, Some("[withheld]")), false);
    let (status, v) = call(&router, post("/v1/chat/completions", &chat_body("hi", false))).await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["choices"][0]["message"]["content"], "[withheld]");
    assert_eq!(v["choices"][0]["finish_reason"], "content_filter");
    // Nor do its logprobs give the withheld tokens away.
    let with_logprobs =
        json!({"messages": [{"role": "user", "content": "hi"}], "max_tokens": 20, "logprobs": true});
    let (_, v) = call(&router, post("/v1/chat/completions", &with_logprobs.to_string())).await;
    assert_eq!(v["choices"][0]["logprobs"], serde_json::Value::Null, "{v}");
    assert_eq!(
        checks.load(Ordering::SeqCst),
        2,
        "output mode checks only the replies (two requests)"
    );
    let chunks = stream(&router, post("/v1/chat/completions", &chat_body("hi", true))).await;
    assert_eq!(streamed_text(&chunks), "[withheld]");
    assert!(!chunks.iter().any(|c| c.to_string().contains("bomb")));
    // A harmless reply passes, streamed whole once screened.
    let (router, _) = server("Hello there", screening(GuardMode::Both, None), false);
    let chunks = stream(&router, post("/v1/chat/completions", &chat_body("hi", true))).await;
    assert_eq!(streamed_text(&chunks), "Hello there");
    assert_eq!(chunks.last().unwrap()["choices"][0]["finish_reason"], "stop");
    // Every choice is screened (side by side).
    let (router, checks) = server(reply, screening(GuardMode::Output, Some("[withheld]")), false);
    let two = json!({"messages": [{"role": "user", "content": "hi"}], "max_tokens": 20, "n": 2});
    let (_, v) = call(&router, post("/v1/chat/completions", &two.to_string())).await;
    for choice in v["choices"].as_array().unwrap() {
        assert_eq!(choice["message"]["content"], "[withheld]", "{v}");
        assert_eq!(choice["finish_reason"], "content_filter");
    }
    assert_eq!(checks.load(Ordering::SeqCst), 2);
    // Without a refusal text a flagged reply is emptied.
    let (router, _) = server(reply, screening(GuardMode::Output, None), false);
    let (_, v) = call(&router, post("/v1/chat/completions", &chat_body("hi", false))).await;
    assert_eq!(v["choices"][0]["message"]["content"], "");
    assert_eq!(v["choices"][0]["finish_reason"], "content_filter");
}

#[tokio::test]
async fn screening_off_checks_nothing_and_a_guard_that_babbles_fails_closed_unless_told() {
    let (router, checks) = server("Here is a bomb", None, false);
    let (_, v) = call(&router, post("/v1/chat/completions", &chat_body("a bomb", false))).await;
    assert_eq!(v["choices"][0]["message"]["content"], "Here is a bomb");
    assert_eq!(checks.load(Ordering::SeqCst), 0);

    let (router, _) = server("Sure!", screening(GuardMode::Input, None), true);
    let (status, v) = call(&router, post("/v1/chat/completions", &chat_body("hi", false))).await;
    assert_eq!(status, 400, "{v}");
    assert!(v["error"]["message"].as_str().unwrap().contains("not a verdict"));
    let open = Some(Screening {
        mode: GuardMode::Input,
        refusal: None,
        fail_open: true,
    });
    let (router, _) = server("Sure!", open, true);
    let (status, v) = call(&router, post("/v1/chat/completions", &chat_body("hi", false))).await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["choices"][0]["message"]["content"], "Sure!");
    // The moderation endpoint reports a babbling guard as a parse error, not flagged.
    let (_, v) = call(&router, post("/v1/moderations", r#"{"input": "x"}"#)).await;
    assert_eq!(v["results"][0]["flagged"], false);
    assert_eq!(v["results"][0]["herd"]["verdict"], "parse_error");
}

#[tokio::test]
async fn screening_without_a_guard_model_is_refused_at_startup() {
    let model = model();
    let frontend = frontend(&model);
    let options = ServerOptions {
        screening: screening(GuardMode::Input, None),
        ..ServerOptions::default()
    };
    assert!(herd_server::build_state_with_guard(
        model,
        frontend,
        None,
        scheduler(),
        options,
        GuardChoice::None
    )
    .is_err());
}
