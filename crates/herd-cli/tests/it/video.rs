//! `herd generate --video` and `herd chat`'s `/video` on the tiny vision checkpoint.

use super::{fails, fixture, herd, herd_with_stdin};

fn clip(name: &str) -> String {
    herd_testkit::fixture_path("video")
        .join(name)
        .to_string_lossy()
        .into_owned()
}

#[test]
fn generate_with_a_video_reports_its_frames_and_prompt() {
    let model = fixture("vision-chat-tiny");
    let out = herd(&[
        "generate",
        "--model",
        &model,
        "--prompt",
        "What happens?",
        "--video",
        &clip("segments.gif"),
        "--frames",
        "4",
        "--temperature",
        "0",
        "--max-new-tokens",
        "4",
    ]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stderr.contains("video: 10.0 s, 4 frames at 0:01.3, 0:03.8, 0:06.3, 0:08.8, ≤ "),
        "{stderr}"
    );
    assert!(stderr.contains("prompt: "), "{stderr}");
    // A budget too small for the frames thins them, and says so.
    let out = herd(&[
        "generate",
        "--model",
        &model,
        "--prompt",
        "x",
        "--video",
        &clip("frames"),
        "--frames",
        "4",
        "--max-video-tokens",
        "40",
        "--max-new-tokens",
        "1",
    ]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains("of 4 selected; thinned"), "{stderr}");
}

#[test]
fn video_mistakes_are_clear_errors() {
    let model = fixture("vision-chat-tiny");
    fails(
        &[
            "generate",
            "--model",
            &fixture("chat-tiny"),
            "--prompt",
            "x",
            "--video",
            &clip("segments.gif"),
        ],
        "no vision tower",
    );
    fails(
        &[
            "generate",
            "--model",
            &model,
            "--prompt",
            "x",
            "--video",
            "/nonexistent.mp4",
        ],
        "/nonexistent.mp4",
    );
    fails(
        &[
            "generate",
            "--model",
            &model,
            "--prompt",
            "x",
            "--video",
            &clip("segments.gif"),
            "--frames",
            "0",
        ],
        "frame count",
    );
    if !cfg!(feature = "video") {
        fails(
            &[
                "generate",
                "--model",
                &model,
                "--prompt",
                "x",
                "--video",
                &clip("segments.mp4"),
            ],
            "`video` feature",
        );
    }
    // --video goes with --prompt (the frames' labels are text).
    fails(
        &[
            "generate",
            "--model",
            &model,
            "--tokens",
            "1,2",
            "--video",
            &clip("segments.gif"),
        ],
        "--video needs --prompt",
    );
}

#[test]
fn chat_attaches_a_video_to_the_next_message() {
    let out = herd_with_stdin(
        &[
            "chat",
            "--model",
            &fixture("vision-chat-tiny"),
            "--temperature",
            "0",
            "--max-new-tokens",
            "4",
            "--frames",
            "2",
        ],
        &format!(
            "/video {}\nWhat happens?\n/video /nonexistent\n/exit\n",
            clip("frames")
        ),
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains("2 frames at 0:01, 0:03"), "{stderr}");
    assert!(stderr.contains("/nonexistent"), "{stderr}");
}
