//! herd-cli's one integration-test binary: runs the built `herd` as a user would.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests may panic: that is how they fail

use std::path::Path;
use std::process::{Command, Output};

use candle_core::Device;
use herd_testkit::{assert_close, fixture_path, Reference};

mod bench;
mod finetune;
mod hostile;
mod safety;
mod video;
mod weights;

fn herd(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_herd"))
        .args(args)
        .output()
        .expect("run herd")
}

fn ok(args: &[&str]) -> String {
    let out = herd(args);
    assert!(
        out.status.success(),
        "herd {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("utf-8")
}

/// Runs herd expecting a clean failure: exit code 1, a message containing `needle`, no panic.
fn fails(args: &[&str], needle: &str) {
    let out = herd(args);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "herd {args:?}: {stderr}");
    assert!(
        stderr.contains(needle),
        "herd {args:?}: `{needle}` not in: {stderr}"
    );
    assert!(!stderr.contains("panicked"), "{stderr}");
}

fn ids_csv(ids: &[u32]) -> String {
    ids.iter().map(u32::to_string).collect::<Vec<_>>().join(",")
}

fn fixture(name: &str) -> String {
    fixture_path(name).to_string_lossy().into_owned()
}

fn temp(name: &str) -> std::path::PathBuf {
    std::env::temp_dir().join(format!("herd-cli-{}-{name}", std::process::id()))
}

#[test]
fn generate_greedy_prints_the_reference_tokens() {
    let reference = Reference::load("scout-tiny");
    let p = reference.prompt(0);
    let out = ok(&[
        "generate",
        "--model",
        &fixture("scout-tiny"),
        "--tokens",
        &ids_csv(&p.ids),
        "--temperature",
        "0",
        "--max-new-tokens",
        "16",
    ]);
    let got: Vec<u32> = out.split_whitespace().map(|t| t.parse().unwrap()).collect();
    assert_eq!(got, p.greedy);
}

#[test]
fn generate_with_seed_is_reproducible() {
    let args = [
        "generate",
        "--model",
        &fixture("maverick-tiny"),
        "--tokens",
        "1,5,9",
        "--seed",
        "3",
        "--top-p",
        "0.9",
        "--top-k",
        "40",
        "--min-p",
        "0.05",
        "--repetition-penalty",
        "1.2",
        "--max-new-tokens",
        "12",
    ];
    let first = ok(&args);
    assert_eq!(first, ok(&args));
    assert_eq!(first.split_whitespace().count(), 12);
}

#[test]
fn logits_full_and_decode_match_the_reference() {
    for (name, decode) in [("scout-tiny", false), ("sharded-bf16", true)] {
        let reference = Reference::load(name);
        let p = reference.prompt(0);
        let out = temp(&format!("{name}-logits.safetensors"));
        let model = fixture(name);
        let mut args = vec!["logits", "--model", &model, "--out", out.to_str().unwrap()];
        let csv = ids_csv(&p.ids);
        args.extend(["--tokens", &csv]);
        if decode {
            args.push("--decode");
        }
        ok(&args);
        let written = candle_core::safetensors::load(&out, &Device::Cpu).unwrap();
        assert_eq!(written.len(), 1);
        assert_close(&written["logits"], &p.logits, 1e-4, name);
    }
}

#[test]
fn inspect_reports_plan_parameters_and_cache() {
    let out = ok(&["inspect", "--model", &fixture("scout-tiny")]);
    assert!(out.contains("3  attention: nope, global, temperature"), "{out}");
    assert!(out.contains("moe 4 experts, top-1"), "{out}");
    assert!(
        out.contains("weight bytes as stored (text model): 975.8 KiB"),
        "{out}"
    );
    assert!(
        out.contains(
            "1 global layers: 256 B per token; 4 chunked layers: 1.0 KiB per token, at most 8 tokens"
        ),
        "{out}"
    );

    let scout = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../configs/llama4-scout-17b-16e-instruct");
    let out = ok(&["inspect", "--model", scout.to_str().unwrap(), "--dtype", "bf16"]);
    assert!(
        out.contains("parameters: 107.77B (107769861120) total, 17.17B (17172894720) active"),
        "{out}"
    );
    assert!(out.contains("12 global layers: 48.0 KiB per token; 36 chunked layers: 144.0 KiB per token, at most 8192 tokens"), "{out}");
}

#[test]
fn bad_input_is_a_clear_error_not_a_panic() {
    let scout = fixture("scout-tiny");
    fails(
        &["generate", "--model", &scout, "--tokens", "1,x,3"],
        "`x` is not a token id",
    );
    fails(
        &["generate", "--model", &scout, "--tokens", "1,999"],
        "token id 999",
    );
    fails(
        &["generate", "--model", &scout, "--tokens", "1", "--top-p", "0"],
        "top_p",
    );
    fails(
        &[
            "generate",
            "--model",
            &scout,
            "--tokens",
            "1",
            "--temperature",
            "-1",
        ],
        "temperature",
    );
    fails(
        &["generate", "--model", &scout, "--prompt", "hello"],
        "no tokenizer in",
    );
    // Q3_K is read from GGUF files, not written: `--quant` offers only what herd writes.
    let out = herd(&["generate", "--model", &scout, "--tokens", "1", "--quant", "q3_k"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "a usage error: {stderr}");
    assert!(
        stderr.contains("`q3_k`: expected q8_0, q4_0, q4_k, q5_k or q6_k"),
        "{stderr}"
    );
    fails(
        &["inspect", "--model", &scout, "--quant", "q5_1"],
        "expected q8_0, q4_0, q4_k, q5_k or q6_k",
    );
    fails(
        &["generate", "--model", "/nonexistent/model", "--tokens", "1"],
        "/nonexistent/model",
    );
    fails(
        &["generate", "--model", &scout, "--tokens", "1", "--device", "tpu"],
        "--device tpu",
    );
    let long = ids_csv(&vec![5; 4097]);
    fails(
        &[
            "logits",
            "--model",
            &scout,
            "--tokens",
            &long,
            "--out",
            "/tmp/x.safetensors",
        ],
        "exceeds the model's context",
    );
    fails(&["inspect", "--model", "/nonexistent"], "config.json");
    // The server uses a GPU from several threads, which cudarc's events order: turning them
    // off is refused before anything loads, in any build.
    let out = Command::new(env!("CARGO_BIN_EXE_herd"))
        .args(["serve", "--model", &scout, "--device", "cuda", "--port", "0"])
        .env("HERD_CUDA_EVENT_TRACKING", "off")
        .output()
        .expect("run herd");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("HERD_CUDA_EVENT_TRACKING=off"), "{stderr}");
    // clap's own usage errors exit with 2.
    assert_eq!(herd(&["generate", "--model", &scout]).status.code(), Some(2));
}

#[test]
fn eos_ids_stop_generation_unless_ignored() {
    // Force a stop id: make the first greedy token a stop token.
    let reference = Reference::load("scout-tiny");
    let p = reference.prompt(0);
    let first = p.greedy[0].to_string();
    let csv = ids_csv(&p.ids);
    let base = [
        "generate",
        "--model",
        &fixture("scout-tiny"),
        "--tokens",
        &csv,
        "--temperature",
        "0",
        "--max-new-tokens",
        "4",
    ];
    let mut args = base.to_vec();
    args.extend(["--stop-token-id", &first]);
    assert_eq!(ok(&args).trim(), "");
    assert_eq!(ok(&base).split_whitespace().count(), 4);
}

/// Runs herd with `stdin` piped in.
fn herd_with_stdin(args: &[&str], stdin: &str) -> Output {
    use std::io::Write;
    let mut child = Command::new(env!("CARGO_BIN_EXE_herd"))
        .args(args)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(stdin.as_bytes()).unwrap();
    child.wait_with_output().unwrap()
}

/// `herd chat` on chat-tiny, greedy, 16 tokens per reply, with `stdin` as the user's lines.
fn chat_tiny_greedy(stdin: &str) -> Output {
    herd_with_stdin(
        &[
            "chat",
            "--model",
            &fixture("chat-tiny"),
            "--temperature",
            "0",
            "--max-new-tokens",
            "16",
        ],
        stdin,
    )
}

fn chat_cases() -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(fixture_path("chat-tiny").join("chat_cases.json")).unwrap())
        .unwrap()
}

#[test]
fn tokenize_reads_json_lines_and_matches_the_reference() {
    let cases = chat_cases();
    let encodings = cases["encodings"].as_array().unwrap();
    let input: String = encodings.iter().map(|e| format!("{}\n", e["text"])).collect();
    // The reference is transformers' encode, which matches special-token text: --allow-special.
    let out = herd_with_stdin(
        &["tokenize", "--model", &fixture("chat-tiny"), "--allow-special"],
        &input,
    );
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let lines: Vec<serde_json::Value> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), encodings.len());
    for (line, e) in lines.iter().zip(encodings) {
        assert_eq!(line, &e["ids"], "{}", e["text"]);
    }
    // Round trip through --decode, and --bos / --allow-special on Meta's tokenizer.model.
    let ids = serde_json::to_string(&encodings[0]["ids"]).unwrap();
    let out = herd_with_stdin(
        &["tokenize", "--model", &fixture("chat-tiny"), "--decode"],
        &format!("{ids}\n"),
    );
    assert_eq!(
        String::from_utf8(out.stdout).unwrap().trim(),
        encodings[0]["text"].to_string()
    );
    let model = fixture_path("tokenizer").join("tokenizer.model");
    let model = model.to_str().unwrap();
    let out = herd_with_stdin(&["tokenize", "--tokenizer", model, "--bos"], "\"hi<|eot|>\"\n");
    let ids: Vec<u32> = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(ids[0], 200_000);
    assert!(!ids.contains(&200_008), "special text stays text by default");
    let out = herd_with_stdin(
        &["tokenize", "--tokenizer", model, "--allow-special"],
        "\"hi<|eot|>\"\n",
    );
    let ids: Vec<u32> = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(ids.last(), Some(&200_008));
}

#[test]
fn render_prints_the_template_ids_and_text() {
    let cases = chat_cases();
    let conversation = &cases["conversations"][1];
    let file = temp("messages.json");
    std::fs::write(&file, conversation["messages"].to_string()).unwrap();
    let out = ok(&[
        "render",
        "--model",
        &fixture("chat-tiny"),
        "--messages",
        file.to_str().unwrap(),
    ]);
    let ids: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(ids, conversation["ids"]);
    let text = ok(&[
        "render",
        "--model",
        &fixture("chat-tiny"),
        "--messages",
        file.to_str().unwrap(),
        "--text",
    ]);
    assert_eq!(
        text.strip_suffix('\n').unwrap(),
        conversation["text"].as_str().unwrap()
    );
    let no_prompt = ok(&[
        "render",
        "--model",
        &fixture("chat-tiny"),
        "--messages",
        file.to_str().unwrap(),
        "--text",
        "--no-generation-prompt",
    ]);
    assert!(!no_prompt.trim_end().ends_with("<|header_end|>"));
}

#[test]
fn chat_streams_greedy_replies_and_keeps_history() {
    let cases = chat_cases();
    let first = &cases["conversations"][0];
    let user = first["messages"][0]["content"].as_str().unwrap();
    let out = chat_tiny_greedy(&format!("{user}\n/reset\n{user}\n/exit\n"));
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let stdout = String::from_utf8(out.stdout).unwrap();
    let expected = first["greedy_text"].as_str().unwrap();
    // Both replies start from the same (reset) conversation, so both are the reference's.
    assert_eq!(stdout, format!("{expected}\n{expected}\n"));
}

#[test]
fn generate_from_text_prompt_streams_text() {
    let out = ok(&[
        "generate",
        "--model",
        &fixture("chat-tiny"),
        "--prompt",
        "Hello",
        "--temperature",
        "0",
        "--max-new-tokens",
        "8",
    ]);
    assert!(!out.trim().is_empty());
    assert!(
        out.chars().all(|c| !c.is_ascii_digit() || out.contains(c)),
        "text, not ids"
    );
    // A folder without a tokenizer gives a clear error.
    fails(
        &["generate", "--model", &fixture("scout-tiny"), "--prompt", "Hello"],
        "tokenizer",
    );
}

#[test]
fn text_commands_reject_bad_input_cleanly() {
    let out = herd_with_stdin(
        &["tokenize", "--model", &fixture("chat-tiny")],
        "\"ok\"\nnot json\n",
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("stdin line 2"));
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).lines().count(),
        1,
        "earlier lines were still answered"
    );
    let out = herd_with_stdin(
        &["tokenize", "--model", &fixture("chat-tiny"), "--decode"],
        "[1, 99999]\n",
    );
    assert_eq!(out.status.code(), Some(1));
    let file = temp("bad-messages.json");
    std::fs::write(&file, r#"[{"content": "no role"}]"#).unwrap();
    fails(
        &[
            "render",
            "--model",
            &fixture("chat-tiny"),
            "--messages",
            file.to_str().unwrap(),
        ],
        "role",
    );
    fails(
        &[
            "render",
            "--model",
            &fixture("chat-tiny"),
            "--messages",
            "/nonexistent.json",
        ],
        "/nonexistent.json",
    );
}

#[test]
fn ctrl_c_stops_a_reply_without_quitting() {
    use std::io::{BufRead, BufReader, Write};
    let mut child = Command::new(env!("CARGO_BIN_EXE_herd"))
        .args([
            "chat",
            "--model",
            &fixture("chat-tiny"),
            "--temperature",
            "0",
            "--ignore-eos",
            "--max-new-tokens",
            "3000",
        ])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    writeln!(stdin, "Hello! Who are you?").unwrap();
    // Wait until the reply is streaming, then interrupt it.
    let mut stdout = child.stdout.take().unwrap();
    let mut first = [0u8; 1];
    std::io::Read::read_exact(&mut stdout, &mut first).unwrap();
    let status = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    // Still alive: it answers a command, then exits normally.
    writeln!(stdin, "/exit").unwrap();
    drop(stdin);
    let stderr = BufReader::new(child.stderr.take().unwrap());
    let lines: Vec<String> = stderr.lines().map(Result::unwrap).collect();
    assert!(child.wait().unwrap().success());
    assert!(
        lines.iter().any(|l| l.contains("finished by cancelled")),
        "{lines:?}"
    );
}

fn image_file(name: &str) -> String {
    herd_testkit::fixtures_dir()
        .join("images")
        .join(name)
        .to_string_lossy()
        .into_owned()
}

#[test]
fn preprocess_writes_pixel_values_and_aspect_ratio() {
    let out = temp("dog-pixels.safetensors");
    ok(&[
        "preprocess",
        "--model",
        &fixture("vision-tiny"),
        "--image",
        &image_file("dog.jpg"),
        "--out",
        out.to_str().unwrap(),
    ]);
    let written = candle_core::safetensors::load(&out, &Device::Cpu).unwrap();
    let reference = Reference::load("vision-tiny");
    assert_eq!(written["aspect_ratio"].to_vec1::<i64>().unwrap(), vec![2, 2]);
    // Bit-exact (herd-engine's image tests: the resize is the reference's fixed point).
    assert_close(
        &written["pixel_values"],
        &reference.tensor("img.0.pixel_values"),
        0.0,
        "pixels",
    );
    fails(
        &[
            "preprocess",
            "--model",
            &fixture("vision-tiny"),
            "--image",
            "/nonexistent.png",
            "--out",
            "/tmp/x",
        ],
        "/nonexistent.png",
    );
    let junk = temp("junk.png");
    std::fs::write(&junk, b"not an image").unwrap();
    fails(
        &[
            "preprocess",
            "--model",
            &fixture("vision-tiny"),
            "--image",
            junk.to_str().unwrap(),
            "--out",
            "/tmp/x",
        ],
        "image",
    );
}

/// From the image files end to end: decoding, preprocessing (bit-exact), vision tower,
/// projector, fusion, text model: within the bound herd-model's vision parity test holds when
/// fed the reference's own pixels (1e-4 on every logit; observed 1.2e-5). The greedy tokens
/// must agree exactly.
#[test]
fn logits_and_generation_with_image_files_match_reference() {
    let reference = Reference::load("vision-tiny");
    let ids = ids_csv(&reference.ids("prompt.ids"));
    let out = temp("vision-logits.safetensors");
    let model = fixture("vision-tiny");
    let (dog, wide) = (image_file("dog.jpg"), image_file("wide.png"));
    ok(&[
        "logits",
        "--model",
        &model,
        "--tokens",
        &ids,
        "--image",
        &dog,
        "--image",
        &wide,
        "--out",
        out.to_str().unwrap(),
    ]);
    let written = candle_core::safetensors::load(&out, &Device::Cpu).unwrap();
    let d = assert_close(
        &written["logits"],
        &reference.tensor("prompt.logits"),
        1e-4,
        "logits from image files",
    );
    println!("vision-tiny logits from image files: max |Δ| = {d:e}");
    let generated = ok(&[
        "generate",
        "--model",
        &model,
        "--tokens",
        &ids,
        "--image",
        &dog,
        "--image",
        &wide,
        "--temperature",
        "0",
        "--max-new-tokens",
        "8",
        "--ignore-eos",
    ]);
    let got: Vec<u32> = generated.split_whitespace().map(|t| t.parse().unwrap()).collect();
    assert_eq!(got, reference.ids("prompt.greedy"));
    // One image too few for the prompt's <|patch|> tokens.
    fails(
        &[
            "logits",
            "--model",
            &model,
            "--tokens",
            &ids,
            "--image",
            &dog,
            "--out",
            "/tmp/x.safetensors",
        ],
        "<|patch|>",
    );
    // A text-only checkpoint has no vision tower.
    fails(
        &[
            "logits",
            "--model",
            &fixture("scout-tiny"),
            "--tokens",
            "1,2",
            "--image",
            &dog,
            "--out",
            "/tmp/x.safetensors",
        ],
        "vision",
    );
}

#[test]
fn chat_image_on_a_text_only_model_is_an_error_and_the_chat_goes_on() {
    let cases = chat_cases();
    let first = &cases["conversations"][0];
    let user = first["messages"][0]["content"].as_str().unwrap();
    let out = chat_tiny_greedy(&format!(
        "/image {}\n{user}\n{user}\n/image /nonexistent.png\n/exit\n",
        image_file("dog.jpg")
    ));
    assert!(out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("no vision tower"), "{stderr}");
    assert!(stderr.contains("/nonexistent.png"), "{stderr}");
    // The failed turn left no trace: the next one is the reference reply.
    assert_eq!(
        String::from_utf8(out.stdout).unwrap(),
        format!("{}\n", first["greedy_text"].as_str().unwrap())
    );
}

/// Writes a random multimodal checkpoint at the real tile geometry (336-px tiles of 14-px
/// patches: 144 tokens per tile) but tiny widths; returns its folder.
fn real_geometry_checkpoint() -> std::path::PathBuf {
    use std::collections::HashMap;
    let dir = temp("real-geometry");
    std::fs::create_dir_all(&dir).unwrap();
    let config = serde_json::json!({
        "model_type": "llama4", "image_token_index": 319,
        "text_config": {
            "model_type": "llama4_text", "vocab_size": 320, "hidden_size": 64, "num_hidden_layers": 2,
            "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 16, "intermediate_size": 32,
            "intermediate_size_mlp": 96, "interleave_moe_layer_step": 0, "moe_layers": [],
            "num_local_experts": 0, "max_position_embeddings": 4096, "attention_chunk_size": 256,
            "bos_token_id": 1, "eos_token_id": 2
        },
        "vision_config": {
            "hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2, "intermediate_size": 128,
            "image_size": 336, "patch_size": 14, "pixel_shuffle_ratio": 0.5, "projector_input_dim": 64,
            "projector_output_dim": 64, "vision_output_dim": 64, "rope_theta": 10000
        }
    });
    std::fs::write(dir.join("config.json"), config.to_string()).unwrap();
    let dev = Device::Cpu;
    let mut t: HashMap<String, candle_core::Tensor> = HashMap::new();
    let mut add = |name: &str, shape: &[usize]| {
        t.insert(
            name.into(),
            (candle_core::Tensor::randn(0f32, 1.0, shape, &dev).unwrap() * 0.1).unwrap(),
        );
    };
    let p = "language_model.model";
    add(&format!("{p}.embed_tokens.weight"), &[320, 64]);
    add(&format!("{p}.norm.weight"), &[64]);
    add("language_model.lm_head.weight", &[320, 64]);
    for l in 0..2 {
        let q = format!("{p}.layers.{l}");
        for (name, shape) in [
            ("input_layernorm.weight", vec![64]),
            ("post_attention_layernorm.weight", vec![64]),
            ("self_attn.q_proj.weight", vec![64, 64]),
            ("self_attn.k_proj.weight", vec![32, 64]),
            ("self_attn.v_proj.weight", vec![32, 64]),
            ("self_attn.o_proj.weight", vec![64, 64]),
            ("feed_forward.gate_proj.weight", vec![96, 64]),
            ("feed_forward.up_proj.weight", vec![96, 64]),
            ("feed_forward.down_proj.weight", vec![64, 96]),
        ] {
            add(&format!("{q}.{name}"), &shape);
        }
    }
    let v = "vision_model";
    add(&format!("{v}.patch_embedding.linear.weight"), &[32, 588]);
    add(&format!("{v}.class_embedding"), &[32]);
    add(&format!("{v}.positional_embedding_vlm"), &[577, 32]);
    for ln in [
        "layernorm_pre",
        "layernorm_post",
        "model.layers.0.input_layernorm",
        "model.layers.0.post_attention_layernorm",
    ] {
        add(&format!("{v}.{ln}.weight"), &[32]);
        add(&format!("{v}.{ln}.bias"), &[32]);
    }
    for proj in ["q_proj", "k_proj", "v_proj", "o_proj"] {
        add(&format!("{v}.model.layers.0.self_attn.{proj}.weight"), &[32, 32]);
        add(&format!("{v}.model.layers.0.self_attn.{proj}.bias"), &[32]);
    }
    add(&format!("{v}.model.layers.0.mlp.fc1.weight"), &[128, 32]);
    add(&format!("{v}.model.layers.0.mlp.fc1.bias"), &[128]);
    add(&format!("{v}.model.layers.0.mlp.fc2.weight"), &[32, 128]);
    add(&format!("{v}.model.layers.0.mlp.fc2.bias"), &[32]);
    add(&format!("{v}.vision_adapter.mlp.fc1.weight"), &[64, 128]);
    add(&format!("{v}.vision_adapter.mlp.fc2.weight"), &[64, 64]);
    add("multi_modal_projector.linear_1.weight", &[64, 64]);
    candle_core::safetensors::save(&t, dir.join("model.safetensors")).unwrap();
    dir
}

#[test]
fn real_sized_image_prompt_runs_end_to_end() {
    use herd_text::image_layout::{image_layout, ImageTokenIds};
    let dir = real_geometry_checkpoint();
    let ids = ImageTokenIds {
        image_start: 314,
        image_end: 315,
        tile_x_separator: 316,
        tile_y_separator: 317,
        image: 318,
        patch: 319,
    };
    // pasta.jpeg is 1280²: a 4×4 grid plus the global tile, 2,467 image tokens.
    let layout = image_layout(&ids, (4, 4), 144);
    assert_eq!(layout.len(), 2467);
    let prompt: Vec<u32> = std::iter::once(1).chain(layout).chain([5, 6, 7]).collect();
    let out = ok(&[
        "generate",
        "--model",
        dir.to_str().unwrap(),
        "--tokens",
        &ids_csv(&prompt),
        "--image",
        &image_file("pasta.jpeg"),
        "--temperature",
        "0",
        "--max-new-tokens",
        "4",
        "--ignore-eos",
    ]);
    assert_eq!(out.split_whitespace().count(), 4);
    // The same prompt with the dog (2×2 + global) has the wrong number of <|patch|> tokens.
    fails(
        &[
            "generate",
            "--model",
            dir.to_str().unwrap(),
            "--tokens",
            &ids_csv(&prompt),
            "--image",
            &image_file("dog.jpg"),
        ],
        "<|patch|>",
    );
}

/// The chat prompt of every test image (1×1, 2×2, 1×4, 4×1, 4×4) and of two images, as
/// transformers' Llama4Processor writes it: template rendering, then layout expansion.
#[test]
fn image_prompts_match_the_reference_processor_for_every_grid() {
    use herd_text::image_layout::{expand_images, ImageTokenIds};
    use herd_text::{ChatTemplate, Message, SpecialTokens, Tokenizer};
    let tokenizer_dir = fixture_path("tokenizer");
    let tokenizer = Tokenizer::from_file(&tokenizer_dir.join("tokenizer.model")).unwrap();
    let template = ChatTemplate::from_dir(&tokenizer_dir).unwrap();
    let ids = ImageTokenIds::from_tokenizer(&tokenizer).unwrap();
    let reference = Reference::load("images");
    let message = |n: usize| -> Vec<Message> {
        let mut parts: Vec<serde_json::Value> =
            (0..n).map(|_| serde_json::json!({"type": "image"})).collect();
        parts.push(serde_json::json!({"type": "text", "text": "Describe."}));
        serde_json::from_value(serde_json::json!([{"role": "user", "content": parts}])).unwrap()
    };
    let grid = |name: &str| {
        let r = reference.ids(&format!("{name}.aspect_ratio"));
        (r[0], r[1])
    };
    let names = [
        "pasta",
        "dog",
        "wide",
        "tall",
        "tiny",
        "grey",
        "alpha",
        "palette",
        "square316",
    ];
    for name in names {
        let rendered = template
            .encode(&tokenizer, &message(1), None, true, SpecialTokens::AsText)
            .unwrap();
        let expanded = expand_images(&rendered, &ids, &[grid(name)], 144).unwrap();
        assert_eq!(expanded, reference.ids(&format!("{name}.prompt_ids")), "{name}");
    }
    let rendered = template
        .encode(&tokenizer, &message(2), None, true, SpecialTokens::AsText)
        .unwrap();
    let expanded = expand_images(&rendered, &ids, &[grid("pasta"), grid("dog")], 144).unwrap();
    assert_eq!(expanded, reference.ids("two.prompt_ids"));
}
