//! herd-cli's one integration-test binary: runs the built `herd` as a user would.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests may panic: that is how they fail

use std::path::Path;
use std::process::{Command, Output};

use candle_core::Device;
use herd_testkit::{assert_close, fixture_path, Reference};

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
    fails(&["generate", "--model", &scout, "--prompt", "hello"], "--tokens");
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
