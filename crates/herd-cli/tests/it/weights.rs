//! Weight formats from the command line: peak memory of a load against `inspect`'s figure,
//! GGUF files in place of folders, `herd quantize` and `herd synth`.

use crate::{fails, fixture, ok, temp};

/// "resident weights when loaded (…): X (N B)" → N.
fn inspect_resident(args: &[&str]) -> u64 {
    let out = ok(args);
    let line = out
        .lines()
        .find(|l| l.starts_with("resident weights"))
        .expect("resident line");
    let bytes = line.rsplit('(').next().unwrap().trim_end_matches(" B)");
    bytes.parse().unwrap()
}

/// "…, peak RSS 123.4 MB]" from a generate summary → bytes.
fn peak_rss(stderr: &str) -> u64 {
    let mb: f64 = stderr
        .split("peak RSS ")
        .nth(1)
        .and_then(|s| s.split(" MB").next())
        .expect("peak RSS in the summary")
        .parse()
        .unwrap();
    (mb * 1e6) as u64
}

/// The one memory figure that is a test: loading a bf16 checkpoint holds the weights as stored,
/// so the process peaks near `inspect`'s resident figure (not at twice it, as an f32 upcast or a
/// mapped-and-copied file would).
#[test]
fn peak_memory_of_a_load_matches_inspect() {
    let dir = temp("synth-mem");
    ok(&[
        "synth",
        "--out",
        dir.to_str().unwrap(),
        "--layers",
        "2",
        "--vocab",
        "16000",
        "--quiet",
    ]);
    let model = dir.to_str().unwrap();
    let file = std::fs::metadata(dir.join("model.safetensors")).unwrap().len();
    for quant in [None, Some("q8_0"), Some("q4_k")] {
        let mut inspect = vec!["inspect", "--model", model];
        let mut generate = vec![
            "generate",
            "--model",
            model,
            "--tokens",
            "1,2,3",
            "--max-new-tokens",
            "2",
        ];
        if let Some(q) = quant {
            inspect.extend(["--quant", q]);
            generate.extend(["--quant", q]);
        }
        let resident = inspect_resident(&inspect);
        let out = crate::herd(&generate);
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let peak = peak_rss(&String::from_utf8_lossy(&out.stderr));
        println!("{quant:?}: file {file} B, inspect {resident} B, peak RSS {peak} B");
        // Generous margin: the process itself, the kernels' scratch, one tensor being
        // quantized, the KV cache and allocator slack.
        assert!(
            peak >= resident,
            "{quant:?}: peak {peak} below the weights {resident}"
        );
        assert!(
            peak <= resident + resident / 10 + 150_000_000,
            "{quant:?}: peak {peak} vs {resident}"
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn gguf_files_work_wherever_folders_do() {
    let gguf = format!("{}/model-q8_0.gguf", fixture("gguf-tiny"));
    // Generation from text with the GGUF's own vocabulary and template.
    let lone = temp("lone");
    std::fs::create_dir_all(&lone).unwrap();
    let copy = lone.join("model.gguf");
    std::fs::copy(&gguf, &copy).unwrap();
    let copy = copy.to_str().unwrap();
    let from_gguf = ok(&["tokenize", "--model", copy]);
    let _ = from_gguf;
    let tok = |model: &str| {
        let out = crate::herd_with_stdin(&["tokenize", "--model", model], "\"Hello there, héllo 123!\"\n");
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8(out.stdout).unwrap()
    };
    assert_eq!(
        tok(copy),
        tok(&fixture("gguf-tiny")),
        "GGUF vocabulary encodes as tokenizer.json does"
    );
    let messages = temp("messages.json");
    std::fs::write(&messages, r#"[{"role": "user", "content": "Hi"}]"#).unwrap();
    let m = messages.to_str().unwrap();
    assert_eq!(
        ok(&["render", "--model", copy, "--messages", m]),
        ok(&["render", "--model", &fixture("gguf-tiny"), "--messages", m]),
        "the GGUF's chat template renders as the folder's"
    );
    let text = ok(&[
        "generate",
        "--model",
        copy,
        "--prompt",
        "Hello",
        "--max-new-tokens",
        "4",
        "--temperature",
        "0",
    ]);
    assert!(!text.is_empty());
    let inspect = ok(&["inspect", "--model", copy]);
    assert!(
        inspect.contains("moe 4 experts") && inspect.contains("chunked 8192"),
        "{inspect}"
    );
    fails(
        &["generate", "--model", copy, "--prompt", "Hi", "--image", "x.png"],
        "GGUF",
    );
    fails(
        &["generate", "--model", "/nonexistent.gguf", "--tokens", "1"],
        "no such file",
    );
}

#[test]
fn quantize_writes_a_gguf_that_loads_and_refuses_bad_requests() {
    let out = temp("cli-q4.gguf");
    ok(&[
        "quantize",
        "--model",
        &fixture("gguf-tiny"),
        "--out",
        out.to_str().unwrap(),
        "--type",
        "Q4_K_M",
        "--quiet",
    ]);
    let ids = ok(&[
        "generate",
        "--model",
        out.to_str().unwrap(),
        "--tokens",
        "1,2,3",
        "--max-new-tokens",
        "3",
        "--temperature",
        "0",
    ]);
    let in_situ = ok(&[
        "generate",
        "--model",
        &fixture("gguf-tiny"),
        "--quant",
        "q4_k",
        "--tokens",
        "1,2,3",
        "--max-new-tokens",
        "3",
        "--temperature",
        "0",
    ]);
    assert_eq!(
        ids, in_situ,
        "the written GGUF generates what --quant q4_k generates"
    );
    fails(
        &[
            "quantize",
            "--model",
            &fixture("gguf-tiny"),
            "--out",
            out.to_str().unwrap(),
            "--type",
            "IQ2_XXS",
        ],
        "Q4_K_M",
    );
    fails(
        &[
            "quantize",
            "--model",
            &fixture("scout-tiny"),
            "--out",
            out.to_str().unwrap(),
            "--type",
            "Q8_0",
        ],
        "attention_chunk_size",
    );
    // A flag value clap rejects: exit code 2, with the accepted values named.
    let out = crate::herd(&[
        "generate",
        "--model",
        &fixture("gguf-tiny"),
        "--quant",
        "q3_k",
        "--tokens",
        "1",
    ]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr.contains("q3_k") && stderr.contains("q4_k") && !stderr.contains("panicked"),
        "{stderr}"
    );
}
