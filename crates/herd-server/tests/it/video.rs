//! Video in chat messages: a `video` part (a list of frames) and a `video_url` part (a clip as
//! a data URL) become `Frame at M:SS:` text and image parts — the same prompt a client gets by
//! sending those parts itself.

use serde_json::{json, Value};

use crate::support::{call, data_url, post, vision_server};

fn ask(parts: Vec<Value>) -> String {
    let mut content = parts;
    content.push(json!({"type": "text", "text": "What happens?"}));
    json!({"messages": [{"role": "user", "content": content}], "max_tokens": 6, "temperature": 0}).to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_video_is_its_labelled_frames() {
    let router = vision_server();
    let frames = herd_testkit::fixture_path("video").join("frames");
    let names = ["0-red", "1-green", "2-blue", "3-white"];
    let urls: Vec<String> = names
        .iter()
        .map(|n| {
            data_url(
                "image/png",
                &std::fs::read(frames.join(format!("{n}.png"))).unwrap(),
            )
        })
        .collect();
    // What a client could send by hand: each frame's label, then the frame.
    let by_hand: Vec<Value> = urls
        .iter()
        .zip(["0:00.5", "0:01.5", "0:02.5", "0:03.5"])
        .flat_map(|(u, t)| {
            [
                json!({"type": "text", "text": format!("Frame at {t}:")}),
                json!({"type": "image_url", "image_url": {"url": u}}),
            ]
        })
        .collect();
    let (status, expected) = call(&router, post("/v1/chat/completions", &ask(by_hand))).await;
    assert_eq!(status, 200, "{expected}");
    let video = json!({"type": "video", "video": urls, "fps": 1, "frames": 4});
    let (status, got) = call(&router, post("/v1/chat/completions", &ask(vec![video]))).await;
    assert_eq!(status, 200, "{got}");
    assert_eq!(got["choices"][0]["message"], expected["choices"][0]["message"]);
    assert_eq!(got["usage"]["prompt_tokens"], expected["usage"]["prompt_tokens"]);

    // A clip as a data URL (an animated GIF works in every build).
    let gif = std::fs::read(herd_testkit::fixture_path("video").join("segments.gif")).unwrap();
    let clip = json!({"type": "video_url", "video_url": {"url": data_url("image/gif", &gif)}, "frames": 3});
    let (status, v) = call(&router, post("/v1/chat/completions", &ask(vec![clip]))).await;
    assert_eq!(status, 200, "{v}");
    assert!(v["usage"]["prompt_tokens"].as_u64().unwrap() > 3 * 5);
    if cfg!(feature = "video") {
        let mp4 = std::fs::read(herd_testkit::fixture_path("video").join("segments.mp4")).unwrap();
        let clip =
            json!({"type": "video_url", "video_url": {"url": data_url("video/mp4", &mp4)}, "frames": 3});
        let (status, w) = call(&router, post("/v1/chat/completions", &ask(vec![clip]))).await;
        assert_eq!(status, 200, "{w}");
        assert_eq!(w["usage"]["prompt_tokens"], v["usage"]["prompt_tokens"]);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_videos_are_400s() {
    let router = vision_server();
    for part in [
        json!({"type": "video_url", "video_url": {"url": "https://example.com/clip.mp4"}}),
        json!({"type": "video_url", "video_url": {"url": "data:video/mp4;base64,bm90IGEgdmlkZW8="}}),
        json!({"type": "video_url", "video_url": {"url": 3}}),
        json!({"type": "video", "video": []}),
        json!({"type": "video", "video": "x"}),
        json!({"type": "video", "video": ["data:image/png;base64,AAAA"]}),
        json!({"type": "video", "video": [], "frames": -1}),
        json!({"type": "video", "video": ["x"], "fps": "fast"}),
    ] {
        let (status, v) = call(&router, post("/v1/chat/completions", &ask(vec![part.clone()]))).await;
        assert_eq!(status, 400, "{part}: {v}");
        assert_eq!(v["error"]["param"], "messages", "{part}: {v}");
    }
    // Images are decoded in one pass and numbered as the request orders them.
    let png = std::fs::read(
        herd_testkit::fixture_path("video")
            .join("frames")
            .join("0-red.png"),
    )
    .unwrap();
    let two = vec![
        json!({"type": "image_url", "image_url": {"url": data_url("image/png", &png)}}),
        json!({"type": "image_url", "image_url": {"url": "data:image/png;base64,bm90IGFuIGltYWdl"}}),
    ];
    let (status, v) = call(&router, post("/v1/chat/completions", &ask(two))).await;
    assert_eq!(status, 400, "{v}");
    assert!(
        v["error"]["message"].as_str().unwrap().starts_with("image 2:"),
        "{v}"
    );
    // A text-only model takes no video.
    let (plain, _) = crate::support::server();
    let gif = std::fs::read(herd_testkit::fixture_path("video").join("segments.gif")).unwrap();
    let clip = json!({"type": "video_url", "video_url": {"url": data_url("image/gif", &gif)}});
    let (status, v) = call(&plain, post("/v1/chat/completions", &ask(vec![clip]))).await;
    assert_eq!(status, 400, "{v}");
    assert!(v["error"]["message"]
        .as_str()
        .unwrap()
        .contains("no vision tower"));
}
