//! The CLI under hostile input: clear errors (exit 1, no panic) or the right result.

use std::path::Path;

use super::{fails, fixture, fixture_path, herd, herd_with_stdin, image_file, ok, temp};

fn copy_dir(from: &Path, to: &Path) {
    let _ = std::fs::remove_dir_all(to);
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let path = entry.unwrap().path();
        std::fs::copy(&path, to.join(path.file_name().unwrap())).unwrap();
    }
}

#[test]
fn out_never_replaces_links_devices_or_the_commands_inputs() {
    let vision = fixture("vision-tiny");
    let image = temp("input.jpg");
    std::fs::copy(image_file("dog.jpg"), &image).unwrap();
    let before = std::fs::read(&image).unwrap();
    let image_s = image.to_str().unwrap();
    fails(
        &[
            "preprocess",
            "--model",
            &vision,
            "--image",
            image_s,
            "--out",
            image_s,
        ],
        "an input of this command",
    );
    assert_eq!(std::fs::read(&image).unwrap(), before);

    let link = temp("link.safetensors");
    let _ = std::fs::remove_file(&link);
    std::os::unix::fs::symlink(&image, &link).unwrap();
    let dog = image_file("dog.jpg");
    fails(
        &[
            "preprocess",
            "--model",
            &vision,
            "--image",
            &dog,
            "--out",
            link.to_str().unwrap(),
        ],
        "symbolic link",
    );
    assert_eq!(
        std::fs::read(&image).unwrap(),
        before,
        "the link's target is untouched"
    );
    fails(
        &[
            "preprocess",
            "--model",
            &vision,
            "--image",
            &dog,
            "--out",
            "/dev/null",
        ],
        "not a regular file",
    );

    // The checkpoint being loaded.
    let model = temp("model-dir");
    copy_dir(&fixture_path("scout-tiny"), &model);
    let weights = model.join("model.safetensors");
    let before = std::fs::read(&weights).unwrap();
    let model_s = model.to_str().unwrap();
    fails(
        &[
            "logits",
            "--model",
            model_s,
            "--tokens",
            "1,2",
            "--out",
            weights.to_str().unwrap(),
        ],
        "an input of this command",
    );
    assert_eq!(std::fs::read(&weights).unwrap(), before);
    // A plain new file is written.
    let out = temp("fresh-logits.safetensors");
    ok(&[
        "logits",
        "--model",
        model_s,
        "--tokens",
        "1,2",
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(out.is_file());
}

#[test]
fn small_mistakes_are_named() {
    let scout = fixture("scout-tiny");
    fails(
        &["generate", "--model", &scout, "--tokens", "1,,2"],
        "field 2 is empty",
    );
    fails(
        &["generate", "--model", &scout, "--tokens", "1,2,"],
        "field 3 is empty",
    );
    fails(
        &["--limit", "nope=1", "inspect", "--model", &scout],
        "unknown limit `nope`",
    );
    fails(
        &["--limit", "prompt-bytes=lots", "inspect", "--model", &scout],
        "prompt-bytes",
    );

    // A config describing an absurd model: an error, not "0 B".
    let dir = temp("huge-config");
    copy_dir(&fixture_path("scout-tiny"), &dir);
    let mut config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("config.json")).unwrap()).unwrap();
    config["hidden_size"] = serde_json::json!(1u64 << 50);
    std::fs::write(dir.join("config.json"), config.to_string()).unwrap();
    fails(&["inspect", "--model", dir.to_str().unwrap()], "hidden_size");
}

#[test]
fn images_may_be_data_urls_and_cmyk() {
    use base64::Engine;
    let vision = fixture("vision-tiny");
    let dog = image_file("dog.jpg");
    let from_file = temp("dog-file.safetensors");
    let from_url = temp("dog-url.safetensors");
    ok(&[
        "preprocess",
        "--model",
        &vision,
        "--image",
        &dog,
        "--out",
        from_file.to_str().unwrap(),
    ]);
    let url = format!(
        "data:image/jpeg;base64,{}",
        base64::engine::general_purpose::STANDARD.encode(std::fs::read(&dog).unwrap())
    );
    ok(&[
        "preprocess",
        "--model",
        &vision,
        "--image",
        &url,
        "--out",
        from_url.to_str().unwrap(),
    ]);
    assert_eq!(
        std::fs::read(&from_file).unwrap(),
        std::fs::read(&from_url).unwrap()
    );
    let cmyk = temp("cmyk.safetensors");
    let cmyk_jpg = image_file("cmyk.jpg");
    ok(&[
        "preprocess",
        "--model",
        &vision,
        "--image",
        &cmyk_jpg,
        "--out",
        cmyk.to_str().unwrap(),
    ]);
    fails(
        &[
            "--limit",
            "image-bytes=100",
            "preprocess",
            "--model",
            &vision,
            "--image",
            &dog,
            "--out",
            cmyk.to_str().unwrap(),
        ],
        "image-bytes",
    );
}

#[test]
fn chat_rejects_unknown_commands_and_keeps_going() {
    let out = herd_with_stdin(
        &[
            "chat",
            "--model",
            &fixture("chat-tiny"),
            "--temperature",
            "0",
            "--max-new-tokens",
            "2",
        ],
        "/imagine a cat\n/exit\n",
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains("unknown command `/imagine`"), "{stderr}");
    assert!(out.stdout.is_empty(), "nothing went to the model");
}

#[test]
fn limits_are_enforced_and_raised_by_flag() {
    let gz = fixture_path("tokenizer").join("tokenizer.json.gz");
    let gz = gz.to_str().unwrap();
    let tokenize = |limit: Option<&str>| {
        let mut args = Vec::new();
        if let Some(l) = limit {
            args.extend(["--limit", l]);
        }
        args.extend(["tokenize", "--tokenizer", gz]);
        herd_with_stdin(&args, "\"hello\"\n")
    };
    let small = tokenize(Some("decompressed-bytes=1M"));
    let stderr = String::from_utf8_lossy(&small.stderr);
    assert_eq!(small.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("unpacks to more than") && !stderr.contains("panicked"),
        "{stderr}"
    );
    assert!(tokenize(None).status.success());

    // --help states the defaults the code uses.
    let help = String::from_utf8(herd(&["--help"]).stdout).unwrap();
    let help = help.split_whitespace().collect::<Vec<_>>().join(" ");
    let d = herd_limits::Limits::default();
    let mib = |n: u64| format!("{}M", n >> 20);
    for expected in [
        format!("config-bytes={}", mib(d.config_bytes)),
        format!("tokenizer-bytes={}", mib(d.tokenizer_bytes)),
        format!("template-bytes={}", mib(d.template_bytes)),
        format!("decompressed-bytes={}", mib(d.decompressed_bytes)),
        format!("template-steps={}", d.template_steps),
        format!("template-output-bytes={}", mib(d.template_output_bytes)),
        format!("prompt-bytes={}", mib(d.prompt_bytes)),
        format!("nesting-depth={}", d.nesting_depth),
        format!("image-bytes={}", mib(d.image_bytes)),
        format!("image-pixels={}", d.image_pixels),
        format!("request-pixels={}", d.request_pixels),
    ] {
        assert!(help.contains(&expected), "{expected} not in --help: {help}");
        // ... and so does the README's table.
        let readme =
            std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../../README.md")).unwrap();
        let (name, value) = expected.split_once('=').unwrap();
        assert!(
            readme.contains(&format!("| `{name}` | {value} |")),
            "README: {expected}"
        );
    }
}
