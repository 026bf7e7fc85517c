//! `herd finetune`, `--adapter` and `herd merge` as a user runs them, on the tiny checkpoint
//! that tools/reference/make_lora_tiny.py made with transformers + PEFT.

use candle_core::{DType, Device, Tensor};
use herd_testkit::{assert_close, fixture_path};

use super::{fails, fixture, herd, ok, temp};

fn train_args<'a>(out: &'a str, extra: &[&'a str]) -> Vec<&'a str> {
    let mut args = vec![
        "-t",
        "1",
        "finetune",
        "--model",
        leak(fixture("lora-tiny")),
        "--data",
        leak(
            fixture_path("lora-tiny")
                .join("train.jsonl")
                .to_string_lossy()
                .into_owned(),
        ),
        "--out",
        out,
        "--max-len",
        "64",
        "--batch-size",
        "2",
        "--quiet",
    ];
    args.extend_from_slice(extra);
    args
}

/// A test's argument that outlives the call (tests only: a few bytes each).
fn leak(s: String) -> &'static str {
    Box::leak(s.into_boxed_str())
}

fn load(path: &std::path::Path) -> std::collections::HashMap<String, Tensor> {
    candle_core::safetensors::load(path, &Device::Cpu).unwrap()
}

/// Logits herd computes for `ids` with `extra` model flags.
fn logits(model: &str, ids: &[i64], extra: &[&str], name: &str) -> Tensor {
    let out = temp(name);
    let ids = ids.iter().map(i64::to_string).collect::<Vec<_>>().join(",");
    let mut args = vec!["logits", "--model", model, "--tokens", &ids, "--out"];
    let out_s = out.to_string_lossy().into_owned();
    args.push(&out_s);
    args.extend_from_slice(extra);
    ok(&args);
    let t = load(&out)["logits"].clone();
    let _ = std::fs::remove_file(&out);
    t
}

/// `herd chat` on `model` with `extra` flags, fed one user line: what it prints (the reply).
fn chat_reply(model: &str, extra: &[&str], line: &str) -> String {
    use std::io::Write;
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_herd"))
        .args([
            "chat",
            "--model",
            model,
            "--temperature",
            "0",
            "--max-new-tokens",
            "16",
        ])
        .args(extra)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(format!("{line}\n").as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn dry_run_shows_the_trained_spans_and_the_plan() {
    let out = temp("ft-dry");
    let out_s = out.to_string_lossy().into_owned();
    let printed = ok(&train_args(&out_s, &["--dry-run", "--dry-run-examples", "1"]));
    assert!(printed.contains("⟦ANSWER: "), "{printed}");
    assert!(
        printed.contains("<|eot|>⟧"),
        "the end-of-turn token is trained: {printed}"
    );
    assert!(
        !printed.contains("⟦<|header_start|>"),
        "headers are not trained: {printed}"
    );
    assert!(printed.contains("25 examples"), "{printed}");
    assert!(printed.contains("LoRA r=16"), "{printed}");
    assert!(!out.exists(), "a dry run writes nothing");
}

#[test]
fn bad_lines_are_reported_and_a_file_with_none_usable_is_an_error() {
    let data = temp("ft-bad.jsonl");
    std::fs::write(
        &data,
        "{\"messages\": [{\"role\": \"user\", \"content\": \"hi\"}]}\nnot json\n",
    )
    .unwrap();
    let out = temp("ft-bad");
    let (d, o) = (
        data.to_string_lossy().into_owned(),
        out.to_string_lossy().into_owned(),
    );
    fails(
        &[
            "finetune",
            "--model",
            &fixture("lora-tiny"),
            "--data",
            &d,
            "--out",
            &o,
        ],
        "line 2",
    );
    // One good line among bad ones trains, and says what it skipped.
    let good = std::fs::read_to_string(fixture_path("lora-tiny").join("train.jsonl")).unwrap();
    let first = good.lines().next().unwrap();
    std::fs::write(&data, format!("not json\n{first}\n")).unwrap();
    let run = herd(&[
        "finetune",
        "--model",
        &fixture("lora-tiny"),
        "--data",
        &d,
        "--out",
        &o,
        "--steps",
        "1",
        "--quiet",
    ]);
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(run.status.success(), "{stderr}");
    assert!(stderr.contains(":1: not JSON"), "{stderr}");
    let _ = std::fs::remove_dir_all(&out);
    let _ = std::fs::remove_file(&data);
}

/// The adapter committed in fixtures/lora-tiny/herd-adapter was written by this command
/// (tools/reference/make_herd_adapter_check.sh), and PEFT, loading it unchanged, computed
/// peft_logits.safetensors with it.
#[test]
fn an_adapter_trained_by_herd_is_the_one_peft_loaded_and_gives_pefts_logits() {
    let out = temp("ft-peft");
    let o = out.to_string_lossy().into_owned();
    ok(&train_args(
        &o,
        &[
            "--lora-rank",
            "4",
            "--lora-alpha",
            "8",
            "--lr",
            "5e-3",
            "--steps",
            "8",
            "--warmup-steps",
            "1",
            "--seed",
            "3",
            "--target-modules",
            "all-linear,router",
            "--target-parameters",
            "feed_forward.experts.gate_up_proj,feed_forward.experts.down_proj",
        ],
    ));
    let committed = fixture_path("lora-tiny").join("herd-adapter");
    let ours = load(&out.join("adapter_model.safetensors"));
    let theirs = load(&committed.join("adapter_model.safetensors"));
    assert_eq!(ours.len(), theirs.len());
    for (k, v) in &theirs {
        // The same run on another CPU's kernels: equal up to summation order.
        assert_close(&ours[k], v, 1e-5, k);
    }
    let config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("adapter_config.json")).unwrap()).unwrap();
    assert_eq!(config["target_parameters"][2], "feed_forward.router.weight");
    let peft = load(&committed.join("peft_logits.safetensors"));
    let ids = peft["ids"]
        .to_dtype(DType::I64)
        .unwrap()
        .to_vec2::<i64>()
        .unwrap();
    for (row, ids) in ids.iter().enumerate() {
        let got = logits(&fixture("lora-tiny"), ids, &["--adapter", &o], "ft-peft-logits");
        let want = peft["logits"].get(row).unwrap();
        assert_close(&got, &want, 1e-4, "herd --adapter vs PEFT on herd's adapter");
    }
    let _ = std::fs::remove_dir_all(&out);
}

#[test]
fn a_resumed_run_ends_bit_identical_to_an_uninterrupted_one() {
    let (a, b) = (temp("ft-run-a"), temp("ft-run-b"));
    let (a_s, b_s) = (a.to_string_lossy().into_owned(), b.to_string_lossy().into_owned());
    // Dropout on, so the masks must follow the step too.
    let extra = [
        "--steps",
        "6",
        "--save-every",
        "3",
        "--lora-dropout",
        "0.1",
        "--lr",
        "3e-3",
        "--seed",
        "5",
        "--grad-accum",
        "2",
    ];
    ok(&train_args(&a_s, &extra));
    let checkpoint = a.join("checkpoint-3").to_string_lossy().into_owned();
    let mut resumed = train_args(&b_s, &extra);
    resumed.extend_from_slice(&["--resume", &checkpoint]);
    ok(&resumed);
    let read = |d: &std::path::Path| std::fs::read(d.join("adapter_model.safetensors")).unwrap();
    assert_eq!(
        read(&a),
        read(&b),
        "the adapter after 6 steps, straight or resumed at 3"
    );
    let csv = |d: &std::path::Path| std::fs::read_to_string(d.join("loss.csv")).unwrap();
    let strip = |s: String| {
        s.lines()
            .map(|l| l.rsplit_once(',').unwrap().0.to_string())
            .collect::<Vec<_>>()
    };
    assert_eq!(
        strip(csv(&a)),
        strip(csv(&b)),
        "the same loss curve (timings aside)"
    );
    // Another seed is another run: resuming it from this checkpoint is refused.
    let c = temp("ft-run-c");
    let c_s = c.to_string_lossy().into_owned();
    let mut other = train_args(
        &c_s,
        &[
            "--steps",
            "6",
            "--lora-dropout",
            "0.1",
            "--lr",
            "3e-3",
            "--seed",
            "6",
            "--grad-accum",
            "2",
        ],
    );
    other.extend_from_slice(&["--resume", &checkpoint]);
    fails(&other, "seed was 5, now 6");
    for d in [a, b, c] {
        let _ = std::fs::remove_dir_all(d);
    }
}

#[test]
fn merge_writes_a_checkpoint_that_computes_what_the_adapter_does() {
    let adapter = fixture_path("lora-tiny")
        .join("herd-adapter")
        .to_string_lossy()
        .into_owned();
    let out = temp("ft-merged");
    let o = out.to_string_lossy().into_owned();
    ok(&[
        "merge",
        "--model",
        &fixture("lora-tiny"),
        "--adapter",
        &adapter,
        "--out",
        &o,
    ]);
    assert!(out.join("config.json").exists() && out.join("tokenizer.json").exists());
    let ids = [1i64, 40, 7, 300, 12, 99, 5, 250, 18, 77, 3, 410];
    let merged = logits(&o, &ids, &[], "ft-merged-logits");
    let adapted = logits(
        &fixture("lora-tiny"),
        &ids,
        &["--adapter", &adapter],
        "ft-adapted-logits",
    );
    assert_close(&merged, &adapted, 1e-5, "merged checkpoint vs unmerged adapter");
    let base = logits(&fixture("lora-tiny"), &ids, &[], "ft-base-logits");
    let d = herd_testkit::divergence(&merged, &base, 1e-3);
    assert!(d.first_beyond.is_some(), "the merge changed the weights");
    let _ = std::fs::remove_dir_all(&out);
}

#[test]
fn full_fine_tuning_writes_a_checkpoint_herd_loads() {
    let out = temp("ft-full");
    let o = out.to_string_lossy().into_owned();
    ok(&train_args(&o, &["--full", "--steps", "3", "--lr", "1e-3"]));
    for f in [
        "config.json",
        "model.safetensors",
        "tokenizer.json",
        "loss.csv",
        "loss.png",
        "trainer_state.json",
    ] {
        assert!(out.join(f).exists(), "{f} missing");
    }
    let ids = [1i64, 40, 7, 300, 12, 99];
    let tuned = logits(&o, &ids, &[], "ft-full-logits");
    let base = logits(&fixture("lora-tiny"), &ids, &[], "ft-full-base");
    assert!(herd_testkit::divergence(&tuned, &base, 1e-4)
        .first_beyond
        .is_some());
    let _ = std::fs::remove_dir_all(&out);
}

#[test]
fn finetune_refuses_what_peft_could_not_load_and_an_occupied_out() {
    let out = temp("ft-refuse");
    let o = out.to_string_lossy().into_owned();
    fails(
        &train_args(
            &o,
            &[
                "--lora-dropout",
                "0.1",
                "--target-parameters",
                "feed_forward.experts.down_proj",
            ],
        ),
        "dropout",
    );
    fails(
        &train_args(&o, &["--target-parameters", "experts.gate_proj"]),
        "is not one of",
    );
    std::fs::create_dir_all(&out).unwrap();
    std::fs::write(out.join("keep.txt"), "x").unwrap();
    fails(&train_args(&o, &["--steps", "1"]), "is not empty");
    let _ = std::fs::remove_dir_all(&out);
}

/// The README's worked example, as written there: the tiny checkpoint learns the format.
#[test]
fn the_readme_example_learns_the_answer_format() {
    let out = temp("ft-readme");
    let o = out.to_string_lossy().into_owned();
    let data =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/finetune/answer-format.jsonl");
    let d = data.to_string_lossy().into_owned();
    #[rustfmt::skip]
    ok(&[
        "finetune", "--model", &fixture("chat-tiny"), "--data", &d, "--out", &o,
        "--target-modules", "all-linear", "--lr", "3e-3", "--epochs", "10", "--no-packing", "--batch-size", "4",
        "--warmup-steps", "10", "--validation-fraction", "0.1", "--eval-every", "20", "--quiet",
    ]);
    let question = "What is the capital of France?";
    let chat = |extra: &[&str]| chat_reply(&fixture("chat-tiny"), extra, question);
    assert!(!chat(&[]).contains("ANSWER:"));
    let after = chat(&["--adapter", &o]);
    assert!(after.starts_with("ANSWER: Paris."), "{after}");
    let csv = std::fs::read_to_string(out.join("loss.csv")).unwrap();
    let last = csv.lines().last().unwrap();
    let loss: f64 = last.split(',').nth(2).unwrap().parse().unwrap();
    assert!(loss < 0.5, "final loss {loss}");
    let _ = std::fs::remove_dir_all(&out);
}

#[test]
fn bad_adapters_and_data_are_clear_errors() {
    let dir = temp("ft-bad-adapter");
    std::fs::create_dir_all(&dir).unwrap();
    let d = dir.to_string_lossy().into_owned();
    let ids = "1,2,3";
    let out = temp("ft-bad-adapter.safetensors").to_string_lossy().into_owned();
    let run = |adapter: &str, needle: &str| {
        fails(
            &[
                "logits",
                "--model",
                &fixture("lora-tiny"),
                "--tokens",
                ids,
                "--out",
                &out,
                "--adapter",
                adapter,
            ],
            needle,
        )
    };
    run(&d, "adapter_config.json");
    let herd_adapter = fixture_path("lora-tiny").join("herd-adapter");
    let config = std::fs::read_to_string(herd_adapter.join("adapter_config.json")).unwrap();
    std::fs::write(dir.join("adapter_config.json"), &config).unwrap();
    run(&d, "adapter_model.safetensors is missing");
    std::fs::write(
        dir.join("adapter_model.safetensors"),
        b"\x08\x00\x00\x00\x00\x00\x00\x00{}garbage",
    )
    .unwrap();
    run(&d, "adapter_model.safetensors");
    std::fs::copy(
        herd_adapter.join("adapter_model.safetensors"),
        dir.join("adapter_model.safetensors"),
    )
    .unwrap();
    std::fs::write(
        dir.join("adapter_config.json"),
        config.replace("\"use_dora\": false", "\"use_dora\": true"),
    )
    .unwrap();
    run(&d, "use_dora");
    // Another model's adapter (lora-tiny's experts are 24 wide, chat-tiny's 32).
    std::fs::write(dir.join("adapter_config.json"), &config).unwrap();
    fails(
        &[
            "logits",
            "--model",
            &fixture("chat-tiny"),
            "--tokens",
            ids,
            "--out",
            &out,
            "--adapter",
            &d,
        ],
        "adapter",
    );
    // Training data that is a folder, or absent.
    let o = temp("ft-bad-data-out").to_string_lossy().into_owned();
    fails(
        &[
            "finetune",
            "--model",
            &fixture("lora-tiny"),
            "--data",
            &d,
            "--out",
            &o,
        ],
        &d,
    );
    fails(
        &[
            "finetune",
            "--model",
            &fixture("lora-tiny"),
            "--data",
            "/nonexistent.jsonl",
            "--out",
            &o,
        ],
        "nonexistent",
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// One HTTP POST with a JSON body over a plain socket → the response's JSON body.
fn post_json(base: &str, path: &str, body: &str) -> serde_json::Value {
    use std::io::{Read, Write};
    let host = base
        .trim_start_matches("http://")
        .split('/')
        .next()
        .unwrap()
        .to_string();
    let mut socket = std::net::TcpStream::connect(&host).unwrap();
    write!(
        socket,
        "POST {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut response = String::new();
    socket.read_to_string(&mut response).unwrap();
    let (_, body) = response.split_once("\r\n\r\n").unwrap();
    serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {response}"))
}

/// `herd serve --adapter NAME=DIR`: the request's `model` picks the adapter, and its reply is
/// what `herd chat --adapter DIR` writes.
#[test]
fn serve_picks_a_named_adapter_per_request() {
    let adapter = fixture_path("lora-tiny")
        .join("herd-adapter")
        .to_string_lossy()
        .into_owned();
    let named = format!("tuned={adapter}");
    let (mut server, url) = super::safety::serve_with(&fixture("lora-tiny"), &["--adapter", &named]);
    let ask = |model: &str| {
        let body = format!(
            r#"{{"model": "{model}", "messages": [{{"role": "user", "content": "Say hello."}}], "max_tokens": 16, "temperature": 0}}"#
        );
        let reply = post_json(&url, "/v1/chat/completions", &body);
        assert_eq!(reply["model"], model, "{reply}");
        reply["choices"][0]["message"]["content"]
            .as_str()
            .unwrap()
            .to_string()
    };
    let (base, tuned) = (ask("lora-tiny"), ask("tuned"));
    let _ = server.kill();
    let _ = server.wait();
    let chat = |extra: &[&str]| chat_reply(&fixture("lora-tiny"), extra, "Say hello.");
    assert_ne!(base, tuned, "the adapter changes the reply");
    assert_eq!(tuned.trim_end(), chat(&["--adapter", &adapter]).trim_end());
    assert_eq!(base.trim_end(), chat(&[]).trim_end());
    // Outside `serve` a named adapter is an error that says why.
    fails(
        &[
            "generate",
            "--model",
            &fixture("lora-tiny"),
            "--tokens",
            "1,2",
            "--adapter",
            &named,
        ],
        "named adapters are served",
    );
}

/// A multimodal checkpoint's text layers are `language_model.model.layers.*` in PEFT; the
/// config names them by a regex so PEFT leaves the vision tower's `q_proj`s alone.
#[test]
fn an_adapter_for_a_multimodal_checkpoint_names_its_text_layers_as_peft_does() {
    let out = temp("ft-mm");
    let o = out.to_string_lossy().into_owned();
    let data = fixture_path("lora-tiny")
        .join("train.jsonl")
        .to_string_lossy()
        .into_owned();
    #[rustfmt::skip]
    ok(&[
        "finetune", "--model", &fixture("vision-chat-tiny"), "--data", &data, "--out", &o,
        "--max-len", "64", "--steps", "2", "--lora-rank", "4", "--quiet",
    ]);
    let tensors = load(&out.join("adapter_model.safetensors"));
    assert!(!tensors.is_empty());
    for k in tensors.keys() {
        assert!(
            k.starts_with("base_model.model.language_model.model.layers."),
            "{k}"
        );
    }
    let config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("adapter_config.json")).unwrap()).unwrap();
    let regex = config["target_modules"].as_str().unwrap();
    assert!(regex.starts_with("language_model\\.model\\.layers\\."), "{regex}");
    assert!(regex.contains("q_proj"), "{regex}");
    // herd reads it back and applies it to the text layers.
    ok(&[
        "logits",
        "--model",
        &fixture("vision-chat-tiny"),
        "--tokens",
        "1,2,3",
        "--adapter",
        &o,
        "--out",
        &temp("ft-mm.st").to_string_lossy(),
    ]);
    let _ = std::fs::remove_dir_all(&out);
}

#[test]
fn finetune_checks_its_settings_before_training() {
    let o = temp("ft-checks");
    let os = o.to_string_lossy().into_owned();
    // --out is a file.
    std::fs::write(&o, "x").unwrap();
    fails(&train_args(&os, &["--steps", "1"]), "is not a folder");
    std::fs::remove_file(&o).unwrap();
    // Numbers out of range.
    fails(&train_args(&os, &["--steps", "1", "--adam-eps", "0"]), "epsilon");
    fails(
        &train_args(&os, &["--steps", "1", "--layer-lr", "9=0.5"]),
        "the model has layers 0 to 3",
    );
    // A full fine-tune of a GGUF base cannot be written back: refused before any step.
    let gguf = fixture_path("gguf-tiny")
        .join("model-q8_0.gguf")
        .to_string_lossy()
        .into_owned();
    let data = fixture_path("lora-tiny")
        .join("train.jsonl")
        .to_string_lossy()
        .into_owned();
    fails(
        &[
            "finetune", "--model", &gguf, "--data", &data, "--out", &os, "--full", "--steps", "1",
        ],
        "not a checkpoint folder",
    );
    assert!(!o.join("loss.csv").exists(), "no step ran");
    // An adapter made with other settings is not a starting point.
    let herd_adapter = fixture_path("lora-tiny")
        .join("herd-adapter")
        .to_string_lossy()
        .into_owned();
    let _ = std::fs::remove_dir_all(&o);
    fails(
        &train_args(
            &os,
            &[
                "--steps",
                "1",
                "--lora-rank",
                "4",
                "--init-adapter",
                &herd_adapter,
            ],
        ),
        "alpha=8",
    );
    // A folder whose name holds `=` is a folder, not NAME=DIR.
    let odd = temp("lr=3e-3");
    std::fs::create_dir_all(&odd).unwrap();
    let odd_s = odd.to_string_lossy().into_owned();
    fails(
        &[
            "logits",
            "--model",
            &fixture("lora-tiny"),
            "--tokens",
            "1,2",
            "--out",
            &os,
            "--adapter",
            &odd_s,
        ],
        "adapter_config.json",
    );
    let _ = std::fs::remove_dir_all(&odd);
    let _ = std::fs::remove_dir_all(&o);
}
