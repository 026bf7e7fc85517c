//! CI's share of fuzzing: every saved regression input replays without a crash, and every
//! target fuzzes briefly (a few seconds each; `tools/fuzz/run.sh` runs them for real).

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests may panic: that is how they fail

use std::process::Command;

const TARGETS: [&str; 10] = [
    "safetensors",
    "gguf",
    "config",
    "tokenizer-json",
    "tokenizer-model",
    "encode",
    "chat-template",
    "tool-calls",
    "image",
    "json-mode",
];

fn herd_fuzz(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_herd-fuzz"))
        .args(args)
        .output()
        .unwrap()
}

#[test]
fn targets_listed_are_the_targets_tested() {
    let list = String::from_utf8(herd_fuzz(&["list"]).stdout).unwrap();
    let names: Vec<&str> = list.lines().filter_map(|l| l.split_whitespace().next()).collect();
    assert_eq!(names, TARGETS);
}

#[test]
fn regressions_replay_and_each_target_survives_a_short_run() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz/regressions");
    let out = std::env::temp_dir().join(format!("herd-fuzz-smoke-{}", std::process::id()));
    for target in TARGETS {
        let dir = root.join(target);
        if dir.is_dir() {
            let o = herd_fuzz(&["replay", target, dir.to_str().unwrap()]);
            assert!(
                o.status.success(),
                "{target}: {}",
                String::from_utf8_lossy(&o.stderr)
            );
        }
        let o = herd_fuzz(&[
            "run",
            target,
            "--seconds",
            "4",
            "--out",
            out.to_str().unwrap(),
            "--seed",
            "7",
        ]);
        let stdout = String::from_utf8_lossy(&o.stdout);
        assert!(
            o.status.success(),
            "{target}: {stdout} {}",
            String::from_utf8_lossy(&o.stderr)
        );
        let report: serde_json::Value = serde_json::from_str(stdout.trim()).unwrap();
        assert_eq!(report["crashes"], 0, "{report}");
        assert!(report["executions"].as_u64().unwrap() > 0, "{report}");
    }
}
