//! The HTTP API end to end, in process: shapes, streaming, logprobs, tool calls, and every
//! refusal a bad request deserves — with the server still serving afterwards.

use std::ops::ControlFlow;

use axum::body::Body;
use axum::http::Request;
use herd_engine::{generate, SamplingParams};
use herd_model::LogitsFor;
use herd_server::ServerOptions;
use herd_text::Message;
use serde_json::{json, Value};

use super::support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chat_answers_in_openai_shape_with_the_engines_greedy_tokens() {
    let (router, _) = server();
    let body = r#"{"model": "x", "messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hello!"}],
                   "max_tokens": 12, "temperature": 0, "user": "someone"}"#;
    let (status, v) = call(&router, post("/v1/chat/completions", body)).await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["object"], "chat.completion");
    assert!(v["id"].as_str().unwrap().starts_with("chatcmpl-"));
    let choice = &v["choices"][0];
    assert_eq!(choice["message"]["role"], "assistant");
    // The same prompt through the single-request loop.
    let model = model();
    let frontend = frontend(&model);
    let messages = [
        Message::new("system", "Be brief."),
        Message::new("user", "Hello!"),
    ];
    let prompt = frontend.chat_prompt(&messages, None, &[], 0).unwrap();
    let params = SamplingParams {
        max_new_tokens: 12,
        stop_token_ids: frontend.stop_ids.clone(),
        ..SamplingParams::greedy()
    };
    let g = generate(&model, &prompt, &params, |_| ControlFlow::Continue(())).unwrap();
    let expected = frontend.tokenizer.decode(&g.tokens).unwrap();
    assert_eq!(choice["message"]["content"], expected.as_str());
    assert_eq!(v["usage"]["prompt_tokens"], prompt.len());
    assert_eq!(v["usage"]["completion_tokens"], g.tokens.len());
    assert_eq!(v["usage"]["total_tokens"], prompt.len() + g.tokens.len());
    assert_eq!(
        choice["finish_reason"],
        if g.tokens.len() == 12 { "length" } else { "stop" }
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_reassembles_to_the_non_streamed_text_for_the_same_seed() {
    let (router, _) = server();
    let body = |stream: bool| {
        json!({"messages": [{"role": "user", "content": "Tell me a story"}], "max_tokens": 20,
               "temperature": 1.0, "top_p": 0.9, "seed": 1234, "stream": stream,
               "stream_options": if stream { json!({"include_usage": true}) } else { Value::Null }})
        .to_string()
    };
    let (_, whole) = call(&router, post("/v1/chat/completions", &body(false))).await;
    let chunks = stream(&router, post("/v1/chat/completions", &body(true))).await;
    assert_eq!(
        streamed_text(&chunks),
        whole["choices"][0]["message"]["content"].as_str().unwrap()
    );
    assert_eq!(chunks[0]["choices"][0]["delta"]["role"], "assistant");
    assert_eq!(chunks[0]["object"], "chat.completion.chunk");
    let finish = &chunks[chunks.len() - 2]["choices"][0]["finish_reason"];
    assert_eq!(finish, &whole["choices"][0]["finish_reason"]);
    let usage = &chunks[chunks.len() - 1];
    assert!(
        chunks[..chunks.len() - 1].iter().all(|c| c["usage"].is_null()),
        "usage is null until the last chunk"
    );
    assert!(chunks[0].as_object().unwrap().contains_key("usage"));
    assert_eq!(usage["choices"], json!([]));
    assert_eq!(usage["usage"], whole["usage"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn echoed_prompt_logprobs_are_the_log_softmax_of_the_models_logits() {
    let (router, state) = server();
    let ids: Vec<u32> = vec![1, 40, 77, 120, 300, 12, 9];
    let body = json!({"prompt": ids, "max_tokens": 0, "echo": true, "logprobs": 2, "temperature": 0});
    let (status, v) = call(&router, post("/v1/completions", &body.to_string())).await;
    assert_eq!(status, 200, "{v}");
    let lp = &v["choices"][0]["logprobs"];
    let got: Vec<Value> = lp["token_logprobs"].as_array().unwrap().clone();
    assert_eq!(got.len(), ids.len());
    assert!(got[0].is_null(), "the first token has no logprob");
    let model = model();
    let mut cache = model.new_cache();
    let logits = model.forward(&ids, &mut cache, LogitsFor::All).unwrap();
    let rows = logits.to_vec2::<f32>().unwrap();
    for i in 1..ids.len() {
        let row = &rows[i - 1];
        let max = row.iter().cloned().fold(f32::NEG_INFINITY, f32::max);
        let z: f64 = row.iter().map(|&l| f64::from(l - max).exp()).sum();
        let expected = f64::from(row[ids[i] as usize] - max) - z.ln();
        let actual = got[i].as_f64().unwrap();
        assert!(
            (actual - expected).abs() < 1e-4,
            "position {i}: {actual} vs {expected}"
        );
        assert_eq!(lp["top_logprobs"][i].as_object().unwrap().len(), 2);
    }
    assert_eq!(lp["tokens"].as_array().unwrap().len(), ids.len());
    assert_eq!(v["choices"][0]["finish_reason"], "length");
    assert_eq!(v["usage"]["completion_tokens"], 0);
    let _ = state;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn completions_take_text_lists_and_n_and_stop_strings() {
    let (router, _) = server();
    let body =
        r#"{"prompt": ["Once upon", "A long time"], "n": 2, "max_tokens": 6, "temperature": 0.8, "seed": 5}"#;
    let (status, v) = call(&router, post("/v1/completions", body)).await;
    assert_eq!(status, 200, "{v}");
    let choices = v["choices"].as_array().unwrap();
    assert_eq!(choices.len(), 4);
    for (i, c) in choices.iter().enumerate() {
        assert_eq!(c["index"], i);
    }
    // A stop string cuts the text before it (greedy output, cut at its third character).
    let (_, greedy) = call(
        &router,
        post(
            "/v1/completions",
            r#"{"prompt": "Once upon", "max_tokens": 10, "temperature": 0}"#,
        ),
    )
    .await;
    let text = greedy["choices"][0]["text"].as_str().unwrap().to_string();
    let cut: String = text.chars().skip(2).take(2).collect();
    if !cut.trim().is_empty() {
        let body = json!({"prompt": "Once upon", "max_tokens": 10, "temperature": 0, "stop": [cut]});
        let (_, v) = call(&router, post("/v1/completions", &body.to_string())).await;
        let stopped = v["choices"][0]["text"].as_str().unwrap();
        assert_eq!(stopped, &text[..text.find(cut.as_str()).unwrap()]);
        assert_eq!(v["choices"][0]["finish_reason"], "stop");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tool_calls_come_back_as_tool_calls_streamed_or_not() {
    let router = scripted_server(r#"[get_weather(city="Paris", days=2)]"#);
    let body = |stream: bool| {
        json!({"messages": [{"role": "user", "content": "Weather?"}], "stream": stream,
               "tools": [{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}]})
        .to_string()
    };
    let (status, v) = call(&router, post("/v1/chat/completions", &body(false))).await;
    assert_eq!(status, 200, "{v}");
    let choice = &v["choices"][0];
    assert_eq!(choice["finish_reason"], "tool_calls");
    assert!(choice["message"]["content"].is_null());
    let call0 = &choice["message"]["tool_calls"][0];
    assert_eq!(call0["type"], "function");
    assert_eq!(call0["function"]["name"], "get_weather");
    let args: Value = serde_json::from_str(call0["function"]["arguments"].as_str().unwrap()).unwrap();
    assert_eq!(args, json!({"city": "Paris", "days": 2}));
    let chunks = stream(&router, post("/v1/chat/completions", &body(true))).await;
    let streamed_call = chunks
        .iter()
        .find_map(|c| c["choices"][0]["delta"].get("tool_calls").cloned())
        .expect("a tool_calls delta");
    assert_eq!(streamed_call[0]["function"]["name"], "get_weather");
    assert_eq!(streamed_call[0]["index"], 0);
    assert!(chunks
        .iter()
        .any(|c| c["choices"][0]["finish_reason"] == "tool_calls"));
    assert_eq!(streamed_text(&chunks), "", "the call is not echoed as text");
    // Without tools the same text is plain content.
    let (_, v) = call(
        &router,
        post(
            "/v1/chat/completions",
            r#"{"messages": [{"role": "user", "content": "x"}]}"#,
        ),
    )
    .await;
    assert_eq!(v["choices"][0]["finish_reason"], "stop");
    assert!(v["choices"][0]["message"]["content"]
        .as_str()
        .unwrap()
        .contains("get_weather"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chat_logprobs_and_models_health_metrics() {
    let (router, _) = server();
    let body = r#"{"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 3, "temperature": 0, "logprobs": true, "top_logprobs": 3}"#;
    let (_, v) = call(&router, post("/v1/chat/completions", body)).await;
    let content = v["choices"][0]["logprobs"]["content"].as_array().unwrap();
    assert_eq!(
        content.len(),
        v["usage"]["completion_tokens"].as_u64().unwrap() as usize
    );
    for entry in content {
        let top = entry["top_logprobs"].as_array().unwrap();
        assert_eq!(top.len(), 3);
        // Greedy: the chosen token is the most likely one.
        assert_eq!(entry["logprob"], top[0]["logprob"]);
        assert!(entry["bytes"].is_array());
    }
    let get = |p: &str| Request::get(p).body(Body::empty()).unwrap();
    let (status, models) = call(&router, get("/v1/models")).await;
    assert_eq!(status, 200);
    assert_eq!(models["data"][0]["id"], "herd");
    let (status, health) = call(&router, get("/health")).await;
    assert_eq!((status.as_u16(), health["status"].as_str()), (200, Some("ok")));
    let (_, metrics) = call(&router, get("/metrics")).await;
    let metrics = metrics.as_str().unwrap();
    assert!(
        metrics.contains("herd_requests_total{status=\"ok\"} 1"),
        "{metrics}"
    );
    assert!(metrics.contains("herd_time_to_first_token_seconds_count 1"));
    assert!(metrics.contains("herd_kv_budget_bytes 1073741824"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_api_key_is_required_when_set() {
    let (router, _) = server_with(ServerOptions {
        api_key: Some("sesame".into()),
        ..ServerOptions::default()
    });
    let body = r#"{"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 1}"#;
    let (status, v) = call(&router, post("/v1/chat/completions", body)).await;
    assert_eq!(status, 401);
    assert_eq!(v["error"]["type"], "authentication_error");
    let with = |key: &str| {
        Request::post("/v1/chat/completions")
            .header("authorization", format!("Bearer {key}"))
            .body(Body::from(body))
            .unwrap()
    };
    assert_eq!(call(&router, with("wrong")).await.0, 401);
    assert_eq!(call(&router, with("sesame")).await.0, 200);
    let models = Request::get("/v1/models").body(Body::empty()).unwrap();
    assert_eq!(call(&router, models).await.0, 401);
    let health = Request::get("/health").body(Body::empty()).unwrap();
    assert_eq!(
        call(&router, health).await.0,
        200,
        "health stays open for load balancers"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_are_400s_naming_the_problem_and_the_server_keeps_serving() {
    let (router, _) = server_with(ServerOptions {
        max_body_bytes: 64 << 10,
        ..ServerOptions::default()
    });
    let long: Vec<u32> = vec![5; 5000];
    let cases: Vec<(String, &str, &str)> = vec![
        ("{not json".into(), "", "not valid JSON"),
        ("[1, 2]".into(), "", "JSON object"),
        (r#"{"messages": "hi"}"#.into(), "messages", "list"),
        (r#"{"messages": []}"#.into(), "messages", "empty"),
        (r#"{"messages": [{"role": "wizard", "content": "x"}]}"#.into(), "messages", "wizard"),
        (r#"{"messages": [{"role": "user", "content": 5}]}"#.into(), "messages", "content"),
        (r#"{"messages": [{"role": "user", "content": "x"}], "temperature": "warm"}"#.into(), "temperature", "number"),
        (r#"{"messages": [{"role": "user", "content": "x"}], "n": 0}"#.into(), "n", "between 1"),
        (r#"{"messages": [{"role": "user", "content": "x"}], "n": 99}"#.into(), "n", "between 1"),
        (r#"{"messages": [{"role": "user", "content": "x"}], "max_tokens": -5}"#.into(), "max_tokens", "at least 0"),
        (r#"{"messages": [{"role": "user", "content": "x"}], "max_tokens": 0}"#.into(), "max_tokens", "nothing to generate"),
        (r#"{"messages": [{"role": "user", "content": "x"}], "best_answer": true}"#.into(), "best_answer", "unknown field"),
        (r#"{"messages": [{"role": "user", "content": "x"}], "response_format": {"type": "json_schema"}}"#.into(), "response_format", "json_schema"),
        (r#"{"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}]}]}"#.into(), "messages", "no images"),
        (r#"{"messages": [{"role": "user", "content": [{"type": "audio"}]}]}"#.into(), "messages", "parts are"),
        (r#"{"messages": [{"role": "user", "content": [{"type": "video"}]}]}"#.into(), "messages", "list of frame URLs"),
        (json!({"prompt": long}).to_string(), "prompt", "5000 tokens; the model's context holds 4096"),
        (r#"{"prompt": [1, 99999999]}"#.into(), "prompt", "not an id"),
        (r#"{"prompt": {"a": 1}}"#.into(), "prompt", "string or a list"),
        (r#"{"prompt": "x", "logprobs": 50}"#.into(), "logprobs", "between 0 and 20"),
        (r#"{"messages": [{"role": "user", "content": "x"}], "logit_bias": {"99999999": 5}}"#.into(), "logit_bias", "not an id below"),
        (r#"{"prompt": "x", "logit_bias": {"5": 250}}"#.into(), "logit_bias", "from -100 to 100"),
    ];
    for (body, param, words) in &cases {
        let path = if body.contains("prompt") {
            "/v1/completions"
        } else {
            "/v1/chat/completions"
        };
        let (status, v) = call(&router, post(path, body)).await;
        assert_eq!(status, 400, "{body}: {v}");
        let message = v["error"]["message"].as_str().unwrap();
        assert!(message.contains(words), "{body}: {message}");
        assert_eq!(v["error"]["type"], "invalid_request_error");
        if !param.is_empty() {
            assert_eq!(v["error"]["param"], *param, "{body}");
        }
    }
    // Over the body limit: 413, in the same error shape.
    let big = json!({"messages": [{"role": "user", "content": "x".repeat(100 << 10)}]}).to_string();
    let (status, v) = call(&router, post("/v1/chat/completions", &big)).await;
    assert_eq!(status, 413, "{v}");
    assert!(v["error"]["message"].is_string());
    let (status, _) = call(&router, Request::get("/v2/nothing").body(Body::empty()).unwrap()).await;
    assert_eq!(status, 404);
    // Still serving.
    let (status, _) = call(
        &router,
        post(
            "/v1/chat/completions",
            r#"{"messages": [{"role": "user", "content": "x"}], "max_tokens": 2}"#,
        ),
    )
    .await;
    assert_eq!(status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_leaves_mid_stream_frees_its_sequence() {
    use http_body_util::BodyExt;
    use tower::ServiceExt;
    let (router, state) = server();
    let body = r#"{"messages": [{"role": "user", "content": "Go on forever"}], "max_tokens": 3000, "stream": true, "ignore_eos": true}"#;
    let response = router
        .clone()
        .oneshot(post("/v1/chat/completions", body))
        .await
        .unwrap();
    let mut body = response.into_body();
    // Read until a content delta arrives: the request is running.
    let mut seen = String::new();
    while !seen.contains("\"content\":\"") || seen.matches("data:").count() < 3 {
        let frame = body.frame().await.unwrap().unwrap();
        if let Ok(data) = frame.into_data() {
            seen.push_str(&String::from_utf8_lossy(&data));
        }
    }
    assert!(state.metrics.engine_stats().running >= 1 || state.metrics.engine_stats().waiting >= 1);
    drop(body);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        let stats = state.metrics.engine_stats();
        if stats.running == 0 && stats.kv_reserved_bytes == 0 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the request kept running: {stats:?}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_clients_each_get_their_sequential_result() {
    let (router, _) = server();
    let body = |i: usize| {
        json!({"messages": [{"role": "user", "content": format!("Question number {i}: {}", "why ".repeat(i))}],
               "max_tokens": 8 + i, "temperature": 0.7, "seed": i, "stream": i.is_multiple_of(2)})
        .to_string()
    };
    let text_of = |stream: bool, v: Value| -> String {
        if stream {
            streamed_text(v.as_array().unwrap())
        } else {
            v["choices"][0]["message"]["content"]
                .as_str()
                .unwrap()
                .to_string()
        }
    };
    let run = |router: axum::Router, i: usize| async move {
        let request = post("/v1/chat/completions", &body(i));
        if i.is_multiple_of(2) {
            Value::Array(stream(&router, request).await)
        } else {
            call(&router, request).await.1
        }
    };
    let mut sequential = Vec::new();
    for i in 0..8usize {
        sequential.push(text_of(i.is_multiple_of(2), run(router.clone(), i).await));
    }
    let handles: Vec<_> = (0..8usize)
        .map(|i| tokio::spawn(run(router.clone(), i)))
        .collect();
    for (i, h) in handles.into_iter().enumerate() {
        let v = h.await.unwrap();
        assert_eq!(text_of(i.is_multiple_of(2), v), sequential[i], "client {i}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_image_is_encoded_once_and_answers_as_the_single_request_path_does() {
    use base64::Engine;
    use herd_engine::frontend::images::ImageEncoder;
    use herd_engine::generate_with_images;
    use herd_text::chat::Content;

    let dir = herd_testkit::fixture_path("vision-chat-tiny");
    let model =
        herd_model::TextModel::load(&dir, candle_core::DType::F32, &candle_core::Device::Cpu).unwrap();
    let frontend = herd_engine::frontend::Frontend::load(&dir, model.config()).unwrap();
    let encoder = ImageEncoder::load(&dir, model.config().hidden_size, model.dtype(), model.device())
        .unwrap()
        .unwrap();
    // The single-request path: the same prompt and features through `generate_with_images`.
    let png = std::fs::read(herd_testkit::fixture_path("images").join("wide.png")).unwrap();
    let pixels = herd_engine::image::decode(&png, "wide.png").unwrap();
    let encoded = encoder.encode(&[pixels]).unwrap().unwrap();
    let mut message = Message::new("user", "");
    message.content = Content::Parts(vec![
        json!({"type": "image"}),
        json!({"type": "text", "text": "What is this?"}),
    ]);
    let prompt = frontend
        .chat_prompt(&[message], None, &encoded.grids, encoded.tokens_per_tile)
        .unwrap();
    let params = SamplingParams {
        max_new_tokens: 8,
        stop_token_ids: frontend.stop_ids.clone(),
        ..SamplingParams::greedy()
    };
    let g = generate_with_images(&model, &prompt, Some(&encoded.features), &params, |_| {
        ControlFlow::Continue(())
    })
    .unwrap();
    let expected = frontend.tokenizer.decode(&g.tokens).unwrap();

    let state = herd_server::build_state(
        model,
        frontend,
        Some(encoder),
        scheduler(),
        ServerOptions::default(),
    )
    .unwrap();
    let router = herd_server::router(state);
    let url = format!(
        "data:image/png;base64,{}",
        base64::engine::general_purpose::STANDARD.encode(&png)
    );
    let body = json!({"messages": [{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": url}}, {"type": "text", "text": "What is this?"}]}],
        "max_tokens": 8, "temperature": 0});
    let (status, v) = call(&router, post("/v1/chat/completions", &body.to_string())).await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["choices"][0]["message"]["content"], expected.as_str());
    assert_eq!(v["usage"]["prompt_tokens"], prompt.len());
    // Prefilled in pieces of 5 tokens: each piece takes its own image rows.
    let model =
        herd_model::TextModel::load(&dir, candle_core::DType::F32, &candle_core::Device::Cpu).unwrap();
    let frontend = herd_engine::frontend::Frontend::load(&dir, model.config()).unwrap();
    let encoder =
        ImageEncoder::load(&dir, model.config().hidden_size, model.dtype(), model.device()).unwrap();
    let small_steps = herd_engine::SchedulerConfig {
        max_running: 4,
        max_tokens_per_step: 5,
        kv_budget_bytes: 1 << 30,
    };
    let state =
        herd_server::build_state(model, frontend, encoder, small_steps, ServerOptions::default()).unwrap();
    let pieces = herd_server::router(state);
    assert!(prompt.len() > 10, "the prompt spans several pieces");
    let (_, v2) = call(&pieces, post("/v1/chat/completions", &body.to_string())).await;
    assert_eq!(v2["choices"][0]["message"]["content"], expected.as_str());
    // A corrupt image and a remote URL are 400s.
    for url in [
        "data:image/png;base64,bm90IGFuIGltYWdl",
        "https://example.com/cat.png",
    ] {
        let body = json!({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": url}}]}]});
        let (status, v) = call(&router, post("/v1/chat/completions", &body.to_string())).await;
        assert_eq!(status, 400, "{url}: {v}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_mode_replies_with_a_json_object() {
    use herd_engine::frontend::json_mode::JsonPrefix;
    let (router, _) = server();
    for seed in 0..3 {
        let body = json!({"messages": [{"role": "user", "content": "Give me JSON"}], "max_tokens": 400,
                          "temperature": 0.7, "seed": seed, "response_format": {"type": "json_object"}});
        let (status, v) = call(&router, post("/v1/chat/completions", &body.to_string())).await;
        assert_eq!(status, 200, "{v}");
        let content = v["choices"][0]["message"]["content"].as_str().unwrap();
        let mut prefix = JsonPrefix::new();
        assert!(
            prefix.feed(content.as_bytes()),
            "not a JSON object prefix: {content:?}"
        );
        if v["choices"][0]["finish_reason"] == "stop" {
            assert!(prefix.is_complete(), "{content:?}");
            let parsed: Value = serde_json::from_str(content).unwrap();
            assert!(parsed.is_object(), "{content}");
        } else {
            assert_eq!(v["choices"][0]["finish_reason"], "length");
        }
    }
}

/// A raw HTTP server on loopback: `/img.png` serves `png`, `/big` declares a body beyond any
/// image limit, `/missing` is a 404, `/slow` never answers.
async fn image_host(png: Vec<u8>) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((mut socket, _)) = listener.accept().await else {
                return;
            };
            let png = png.clone();
            tokio::spawn(async move {
                let mut request = vec![0u8; 4096];
                let n = socket.read(&mut request).await.unwrap_or(0);
                let head = String::from_utf8_lossy(&request[..n]).to_string();
                let path = head.split_whitespace().nth(1).unwrap_or("/").to_string();
                let reply: Vec<u8> = match path.as_str() {
                    "/img.png" => {
                        let mut r = format!("HTTP/1.1 200 OK\r\nContent-Type: image/png\r\nContent-Length: {}\r\nConnection: close\r\n\r\n", png.len()).into_bytes();
                        r.extend(&png);
                        r
                    }
                    "/big" => b"HTTP/1.1 200 OK\r\nContent-Length: 999999999999\r\nConnection: close\r\n\r\n"
                        .to_vec(),
                    "/slow" => {
                        tokio::time::sleep(std::time::Duration::from_secs(30)).await;
                        Vec::new()
                    }
                    _ => b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n".to_vec(),
                };
                let _ = socket.write_all(&reply).await;
            });
        }
    });
    format!("http://{addr}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn image_urls_are_fetched_only_when_allowed_and_within_bounds() {
    use herd_engine::frontend::images::ImageEncoder;
    let dir = herd_testkit::fixture_path("vision-chat-tiny");
    let png = std::fs::read(herd_testkit::fixture_path("images").join("tiny.png")).unwrap();
    let host = image_host(png.clone()).await;
    let server = |allow: bool| {
        let model =
            herd_model::TextModel::load(&dir, candle_core::DType::F32, &candle_core::Device::Cpu).unwrap();
        let frontend = herd_engine::frontend::Frontend::load(&dir, model.config()).unwrap();
        let encoder =
            ImageEncoder::load(&dir, model.config().hidden_size, model.dtype(), model.device()).unwrap();
        let options = ServerOptions {
            allow_image_urls: allow,
            image_url_timeout: std::time::Duration::from_secs(1),
            ..ServerOptions::default()
        };
        herd_server::router(herd_server::build_state(model, frontend, encoder, scheduler(), options).unwrap())
    };
    let body = |url: &str| {
        json!({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": url}},
               {"type": "text", "text": "What is this?"}]}], "max_tokens": 4, "temperature": 0})
        .to_string()
    };
    let allowed = server(true);
    let (status, fetched) = call(
        &allowed,
        post("/v1/chat/completions", &body(&format!("{host}/img.png"))),
    )
    .await;
    assert_eq!(status, 200, "{fetched}");
    use base64::Engine;
    let data_url = format!(
        "data:image/png;base64,{}",
        base64::engine::general_purpose::STANDARD.encode(&png)
    );
    let (_, inline) = call(&allowed, post("/v1/chat/completions", &body(&data_url))).await;
    assert_eq!(
        fetched["choices"][0]["message"]["content"],
        inline["choices"][0]["message"]["content"]
    );
    assert_eq!(fetched["usage"], inline["usage"]);
    for (path, words) in [("/big", "more than"), ("/missing", "404"), ("/slow", "")] {
        let started = std::time::Instant::now();
        let (status, v) = call(
            &allowed,
            post("/v1/chat/completions", &body(&format!("{host}{path}"))),
        )
        .await;
        assert_eq!(status, 400, "{path}: {v}");
        assert!(
            v["error"]["message"].as_str().unwrap().contains(words),
            "{path}: {v}"
        );
        assert!(
            started.elapsed() < std::time::Duration::from_secs(10),
            "{path} was not bounded in time"
        );
    }
    let (status, v) = call(
        &server(false),
        post("/v1/chat/completions", &body(&format!("{host}/img.png"))),
    )
    .await;
    assert_eq!(status, 400);
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("--allow-image-urls"),
        "{v}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streamed_completion_logprobs_match_the_whole_response() {
    let (router, _) = server();
    let body = |stream: bool| {
        json!({"prompt": [1, 40, 77, 120], "max_tokens": 6, "temperature": 0, "echo": true,
               "logprobs": 2, "stream": stream})
        .to_string()
    };
    let (_, whole) = call(&router, post("/v1/completions", &body(false))).await;
    let chunks = stream(&router, post("/v1/completions", &body(true))).await;
    // Concatenating the chunks' logprobs gives the whole response's, offsets included.
    let mut joined: std::collections::BTreeMap<&str, Vec<Value>> = Default::default();
    for c in &chunks {
        let lp = &c["choices"][0]["logprobs"];
        if lp.is_null() {
            continue;
        }
        for key in ["tokens", "token_logprobs", "top_logprobs", "text_offset"] {
            joined
                .entry(key)
                .or_default()
                .extend(lp[key].as_array().unwrap().iter().cloned());
        }
    }
    let expected = &whole["choices"][0]["logprobs"];
    for key in ["tokens", "token_logprobs", "text_offset"] {
        assert_eq!(&Value::Array(joined[key].clone()), &expected[key], "{key}");
    }
    let text: String = chunks
        .iter()
        .filter_map(|c| c["choices"][0]["text"].as_str())
        .collect();
    assert_eq!(text, whole["choices"][0]["text"].as_str().unwrap());
}

/// CRC-32 (PNG's chunk checksum).
fn crc32(bytes: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &b in bytes {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = if crc & 1 == 1 {
                (crc >> 1) ^ 0xEDB8_8320
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

/// A request's images share one budget of decoded pixels (`--limit request-pixels`, by default
/// one largest image's), spent from each header before its pixels are decoded: many images,
/// each within `--limit image-pixels`, cannot all be decoded before the prompt is measured.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_requests_images_share_one_budget_of_decoded_pixels() {
    let router = vision_server();

    // tiny.png (40×30) with a header claiming 16384×16384: exactly the largest image herd
    // takes, its data still a 40×30 image's.
    let tiny = std::fs::read(herd_testkit::fixture_path("images").join("tiny.png")).unwrap();
    let mut huge = tiny.clone();
    huge[16..20].copy_from_slice(&16_384u32.to_be_bytes());
    huge[20..24].copy_from_slice(&16_384u32.to_be_bytes());
    let crc = crc32(&huge[12..29]);
    huge[29..33].copy_from_slice(&crc.to_be_bytes());
    let url = |png: &[u8]| data_url("image/png", png);
    let ask = |urls: &[&str]| {
        let mut parts: Vec<Value> = urls
            .iter()
            .map(|u| json!({"type": "image_url", "image_url": {"url": u}}))
            .collect();
        parts.push(json!({"type": "text", "text": "What is this?"}));
        json!({"messages": [{"role": "user", "content": parts}], "max_tokens": 1}).to_string()
    };
    let (tiny, huge) = (url(&tiny), url(&huge));
    // Alone, the claim passes every bound and fails in decoding the data that is not there.
    let (status, v) = call(&router, post("/v1/chat/completions", &ask(&[&huge]))).await;
    assert_eq!(status, 400, "{v}");
    let alone = v["error"]["message"].as_str().unwrap().to_string();
    assert!(!alone.contains("request-pixels"), "{alone}");
    // After a real image the same claim is over the request's budget: refused from its header.
    let (status, v) = call(&router, post("/v1/chat/completions", &ask(&[&tiny, &huge]))).await;
    assert_eq!(status, 400, "{v}");
    let message = v["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("image 2") && message.contains("--limit request-pixels"),
        "{message}"
    );
    // Frames of a video part spend the same budget as the pictures beside them.
    let body = json!({"messages": [{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": tiny}},
        {"type": "video", "video": [huge], "fps": 1},
        {"type": "text", "text": "What happens?"}]}], "max_tokens": 1});
    let (status, v) = call(&router, post("/v1/chat/completions", &body.to_string())).await;
    assert_eq!(status, 400, "{v}");
    assert!(
        v["error"]["message"].as_str().unwrap().contains("request-pixels"),
        "{v}"
    );
    // Two real images are well within it.
    let (status, v) = call(&router, post("/v1/chat/completions", &ask(&[&tiny, &tiny]))).await;
    assert_eq!(status, 200, "{v}");
}

/// A checkpoint whose config.json names another image token than the tokenizer's `<|patch|>`
/// would have every image ignored (its rows matched by no token): refused when the server
/// starts, and a request whose patch tokens do not pair with its image rows is refused by
/// the engine.
#[test]
fn an_image_token_other_than_the_tokenizers_patch_is_refused_at_startup() {
    let dir = std::env::temp_dir().join(format!("herd-server-image-token-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir); // a leftover of a run with this pid
    std::fs::create_dir_all(&dir).unwrap();
    for entry in std::fs::read_dir(herd_testkit::fixture_path("vision-chat-tiny")).unwrap() {
        let path = entry.unwrap().path();
        if path.is_file() {
            std::fs::copy(&path, dir.join(path.file_name().unwrap())).unwrap();
        }
    }
    let mut config: Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("config.json")).unwrap()).unwrap();
    let patch = config["image_token_index"].as_u64().unwrap();
    config["image_token_index"] = json!(patch - 1);
    std::fs::write(dir.join("config.json"), config.to_string()).unwrap();
    let model =
        herd_model::TextModel::load(&dir, candle_core::DType::F32, &candle_core::Device::Cpu).unwrap();
    let frontend = herd_engine::frontend::Frontend::load(&dir, model.config()).unwrap();
    let encoder = herd_engine::frontend::images::ImageEncoder::for_model(&dir, &model).unwrap();
    let err = herd_server::build_state(model, frontend, encoder, scheduler(), ServerOptions::default())
        .err()
        .expect("a server with a mismatched image token started")
        .to_string();
    assert!(
        err.contains("image_token_index") && err.contains("<|patch|>"),
        "{err}"
    );
    std::fs::remove_dir_all(&dir).ok();
}
