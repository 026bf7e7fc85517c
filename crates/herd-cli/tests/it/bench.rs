//! `herd bench`: the table, the JSON line, the threads flag, and its refusals.

use super::{fails, fixture, herd, ok};

#[test]
fn bench_prints_a_table_then_one_json_line() {
    let out = ok(&[
        "-t",
        "1",
        "bench",
        "--model",
        &fixture("scout-tiny"),
        "-p",
        "8",
        "-n",
        "4",
        "-d",
        "0,4",
        "-r",
        "2",
    ]);
    for row in ["| pp8 ", "| tg4 ", "| pp8 @ d4 ", "| tg4 @ d4 "] {
        assert!(out.contains(row), "no {row:?} row in:\n{out}");
    }
    let line = out.lines().last().unwrap();
    let v: serde_json::Value = serde_json::from_str(line).unwrap();
    assert_eq!(v["bench"], "herd");
    assert_eq!(v["threads"], 1, "-t sets the kernels' threads");
    assert_eq!(v["device"], "cpu", "the device the run measured");
    assert!(
        out.contains("· device cpu ·"),
        "the table's header names the device:\n{out}"
    );
    assert_eq!(v["repetitions"], 2);
    let results = v["results"].as_array().unwrap();
    let tests: Vec<&str> = results.iter().map(|r| r["test"].as_str().unwrap()).collect();
    assert_eq!(tests, ["pp8", "tg4", "pp8 @ d4", "tg4 @ d4"]);
    for r in results {
        assert!(r["tok_s"].as_f64().unwrap() > 0.0, "{r}");
        let decode = r["kind"] == "tg";
        // Time to first token for prompts; bandwidth use for decode.
        assert_eq!(r["ttft_ms"].is_number(), !decode, "{r}");
        assert_eq!(r["bandwidth_use"].is_number(), decode, "{r}");
    }
    // A MoE model reads only its routed experts per token: less than all its weights.
    let (active, total) = (
        v["decode_bytes_per_token"].as_u64().unwrap(),
        v["weight_bytes"].as_u64().unwrap(),
    );
    assert!(active > 0 && active < total, "{active} of {total}");
    assert!(v["bandwidth_bytes_s"].as_f64().unwrap() > 1e8);
    assert!(v["peak_rss_bytes"].as_u64().unwrap() > 0);
}

#[test]
fn bench_json_prints_only_the_json_line() {
    let out = ok(&[
        "bench",
        "--model",
        &fixture("scout-tiny"),
        "-p",
        "4",
        "-n",
        "0",
        "-r",
        "1",
        "--json",
    ]);
    assert_eq!(out.lines().count(), 1, "{out}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["results"].as_array().unwrap().len(), 1, "-n 0 skips decode");
}

#[test]
fn bench_refuses_what_it_cannot_run() {
    let model = fixture("scout-tiny");
    // Argument errors are clap's: exit code 2, the range named.
    for (args, needle) in [
        (
            vec!["bench", "--model", &model, "-r", "0"],
            "0 is not in 1..=1000",
        ),
        (
            vec!["-t", "0", "bench", "--model", &model],
            "0 is not in 1..=1024",
        ),
    ] {
        let out = herd(&args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
        assert!(stderr.contains(needle), "{args:?}: {stderr}");
    }
    fails(
        &[
            "bench",
            "--model",
            &model,
            "-p",
            "8",
            "-n",
            "4",
            "-d",
            "100000000",
            "-r",
            "1",
        ],
        "positions",
    );
}

#[test]
fn bench_reports_the_kv_cache_dtype_it_ran_with() {
    let model = fixture("scout-tiny");
    let run = |extra: &[&str]| -> serde_json::Value {
        let mut args = vec!["bench", "--model", &model];
        let model_args = ["-p", "4", "-n", "4", "-d", "4", "-r", "1", "--json"];
        args.extend_from_slice(&model_args);
        args.extend_from_slice(extra);
        let out = ok(&args);
        serde_json::from_str(out.lines().last().unwrap()).unwrap()
    };
    assert_eq!(run(&[])["kv_dtype"], "f32", "the compute dtype by default");
    for kv in ["f16", "bf16", "f32"] {
        let v = run(&["--kv-dtype", kv]);
        assert_eq!(v["kv_dtype"], kv);
        assert!(v["results"][1]["tok_s"].as_f64().unwrap() > 0.0, "{v}");
    }
    let out = herd(&["bench", "--model", &fixture("scout-tiny"), "--kv-dtype", "f8"]);
    assert_eq!(out.status.code(), Some(2), "clap refuses an unknown cache dtype");
    assert!(String::from_utf8_lossy(&out.stderr).contains("invalid value 'f8'"));
    // Q8_0 blocks are 32 values: fp8-tiny's heads (32) take them, scout-tiny's (16) do not.
    let out = ok(&[
        "bench",
        "--model",
        &fixture("fp8-tiny"),
        "--kv-dtype",
        "q8_0",
        "-p",
        "4",
        "-n",
        "4",
        "-d",
        "20",
        "-r",
        "1",
        "--json",
    ]);
    let v: serde_json::Value = serde_json::from_str(out.lines().last().unwrap()).unwrap();
    assert_eq!(v["kv_dtype"], "q8_0");
    assert!(v["results"][1]["tok_s"].as_f64().unwrap() > 0.0, "{v}");
    let out = herd(&["bench", "--model", &fixture("scout-tiny"), "--kv-dtype", "q8_0"]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("KV cache: q8_0 stores blocks of 32 values"), "{err}");
}

#[test]
fn bench_reports_the_matmul_precision_it_ran_with() {
    let model = fixture("scout-tiny");
    let run = |extra: &[&str]| -> serde_json::Value {
        let mut args = vec![
            "bench", "--model", &model, "-p", "4", "-n", "0", "-r", "1", "--json",
        ];
        args.extend_from_slice(extra);
        let out = ok(&args);
        serde_json::from_str(out.lines().last().unwrap()).unwrap()
    };
    assert_eq!(
        run(&[])["matmul_precision"],
        "highest",
        "the f32 product by default"
    );
    for level in ["high", "medium", "highest"] {
        let v = run(&["--matmul-precision", level]);
        assert_eq!(v["matmul_precision"], level);
        assert!(v["results"][0]["tok_s"].as_f64().unwrap() > 0.0, "{v}");
    }
    let out = herd(&["bench", "--model", &model, "--matmul-precision", "low"]);
    assert_eq!(out.status.code(), Some(2), "clap refuses an unknown level");
    assert!(String::from_utf8_lossy(&out.stderr).contains("invalid value 'low'"));
}
