//! `OpenAiChat` against a local one-shot server: the request it sends, the answers it reads,
//! and the answers it refuses.

use std::time::{Duration, Instant};

use herd_redteam::{ChatMessage, ChatModel, OpenAiChat, RedteamError};
use serde_json::json;

use crate::local_server::{serve_once, serve_silence};

const TIMEOUT: Duration = Duration::from_secs(10);

fn completion(content: &str) -> String {
    json!({"id": "c1", "object": "chat.completion", "choices": [
        {"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": "stop"}
    ]})
    .to_string()
}

#[test]
fn a_chat_request_is_sent_as_openai_expects_and_its_answer_read() {
    let server = serve_once("200 OK", "", &completion("Hello there."));
    let chat = OpenAiChat::new(
        &format!("{}/", server.base_url),
        "attacker-model",
        Some("sk-test".into()),
        TIMEOUT,
    )
    .unwrap()
    .with_temperature(1.0);
    assert_eq!(chat.url(), format!("{}/chat/completions", server.base_url));
    let messages = [ChatMessage::system("be brief"), ChatMessage::user("hi")];
    assert_eq!(chat.reply(&messages, 77).unwrap(), "Hello there.");
    let request = server.request();
    assert!(
        request.head.starts_with("POST /v1/chat/completions HTTP/1.1\r\n"),
        "{}",
        request.head
    );
    assert!(
        request.head.contains("Authorization: Bearer sk-test\r\n"),
        "{}",
        request.head
    );
    assert_eq!(
        request.json(),
        json!({
            "model": "attacker-model",
            "messages": [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"}],
            "max_tokens": 77,
            "temperature": 1.0,
        })
    );
}

#[test]
fn no_key_means_no_authorization_header() {
    let server = serve_once("200 OK", "", &completion("ok"));
    let chat = OpenAiChat::new(&server.base_url, "m", None, TIMEOUT).unwrap();
    chat.reply(&[ChatMessage::user("hi")], 5).unwrap();
    let request = server.request();
    assert!(!request.head.to_ascii_lowercase().contains("authorization"));
    assert!(request.json().get("temperature").is_none());
}

#[test]
fn error_statuses_and_bad_bodies_are_errors_naming_the_url() {
    let cases = [
        (
            "500 Internal Server Error",
            "{\"error\": {\"message\": \"boom\"}}",
        ),
        ("200 OK", "<html>not json</html>"),
        ("200 OK", "{\"choices\": []}"),
        ("200 OK", "{\"choices\": [{\"message\": {\"content\": null}}]}"),
        ("200 OK", "[1, 2, 3]"),
    ];
    for (status, body) in cases {
        let server = serve_once(status, "", body);
        let chat = OpenAiChat::new(&server.base_url, "m", None, TIMEOUT).unwrap();
        let err = chat.reply(&[ChatMessage::user("hi")], 5).unwrap_err();
        let text = err.to_string();
        assert!(text.contains(&chat.url()), "{text}");
        match (status, &err) {
            (
                "500 Internal Server Error",
                RedteamError::Status {
                    status: 500, body, ..
                },
            ) => {
                assert!(body.contains("boom"))
            }
            ("200 OK", RedteamError::BadResponse { .. }) => {}
            _ => panic!("{status} {body}: {err:?}"),
        }
        server.request();
    }
}

#[test]
fn redirects_are_not_followed() {
    // The Location points at a server that must never be contacted.
    let elsewhere = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    elsewhere.set_nonblocking(true).unwrap();
    let location = format!(
        "Location: http://{}/v1/chat/completions\r\n",
        elsewhere.local_addr().unwrap()
    );
    let server = serve_once("302 Found", &location, "");
    let chat = OpenAiChat::new(&server.base_url, "m", None, TIMEOUT).unwrap();
    let err = chat.reply(&[ChatMessage::user("hi")], 5).unwrap_err();
    assert!(matches!(err, RedteamError::Status { status: 302, .. }), "{err:?}");
    server.request();
    assert!(elsewhere.accept().is_err(), "the redirect target was contacted");
}

#[test]
fn a_silent_server_times_out() {
    let base_url = serve_silence(Duration::from_secs(5));
    let chat = OpenAiChat::new(&base_url, "m", None, Duration::from_millis(300)).unwrap();
    let started = Instant::now();
    let err = chat.reply(&[ChatMessage::user("hi")], 5).unwrap_err();
    assert!(matches!(err, RedteamError::Transport { .. }), "{err:?}");
    assert!(started.elapsed() < Duration::from_secs(4));
}

#[test]
fn only_http_base_urls_with_a_host_are_accepted() {
    for url in [
        "ftp://host/v1",
        "127.0.0.1:8080/v1",
        "http://",
        "http:///v1",
        "http://h/v1?x=1",
        "http://h/v 1",
    ] {
        let err = OpenAiChat::new(url, "m", None, TIMEOUT).unwrap_err();
        assert!(matches!(err, RedteamError::BadUrl { .. }), "{url}: {err:?}");
    }
    assert!(OpenAiChat::new("https://api.example.com/v1", "m", None, TIMEOUT).is_ok());
}

#[test]
fn a_refused_connection_is_a_transport_error_naming_the_url_once() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let chat = OpenAiChat::new(&format!("http://127.0.0.1:{port}/v1"), "m", None, TIMEOUT).unwrap();
    let err = chat.reply(&[ChatMessage::user("hi")], 5).unwrap_err();
    assert!(matches!(err, RedteamError::Transport { .. }), "{err:?}");
    let text = err.to_string();
    assert_eq!(text.matches(&chat.url()).count(), 1, "{text}");
    assert!(text.contains("refused"), "{text}");
}
