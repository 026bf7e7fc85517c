//! Tokenization throughput on the ~10 MB multilingual text of
//! `fixtures/tokenizer/throughput.json` (the same text the Python side times):
//! `cargo bench -p herd-text --bench tokenize`. Prints a table, then one JSON line.
//! Run `tools/bench/tokenizer.sh` to time Python's tiktoken beside it.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a bench may panic on a broken fixture

use std::path::PathBuf;
use std::time::Instant;

use herd_text::{SpecialTokens, Tokenizer};
use serde_json::Value;

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../fixtures/tokenizer")
}

/// `(separator.join(case[id].text for id in case_ids) + separator) * times`
fn bench_text() -> (String, Value) {
    let spec: Value =
        serde_json::from_str(&std::fs::read_to_string(fixtures().join("throughput.json")).unwrap()).unwrap();
    let recipe = &spec["text_recipe"];
    let cases: Vec<Value> = std::fs::read_to_string(fixtures().join("cases.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let text_of = |id: u64| {
        cases
            .iter()
            .find(|c| c["id"] == id)
            .and_then(|c| c["text"].as_str())
            .unwrap()
            .to_string()
    };
    let sep = recipe["separator"].as_str().unwrap();
    let ids: Vec<u64> = recipe["case_ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_u64().unwrap())
        .collect();
    let unit = ids.iter().map(|&i| text_of(i)).collect::<Vec<_>>().join(sep) + sep;
    let text = unit.repeat(recipe["times"].as_u64().unwrap() as usize);
    assert_eq!(
        text.len() as u64,
        spec["bytes"].as_u64().unwrap(),
        "benchmark text differs from the Python side's"
    );
    (text, spec)
}

fn best_of<T>(reps: usize, mut f: impl FnMut() -> T) -> (f64, T) {
    let mut best = f64::INFINITY;
    let mut out = None;
    for _ in 0..reps {
        let t = Instant::now();
        let r = f();
        best = best.min(t.elapsed().as_secs_f64());
        out = Some(r);
    }
    (best, out.unwrap())
}

fn main() {
    let (text, spec) = bench_text();
    let mb = text.len() as f64 / 1e6;
    let meta = Tokenizer::from_file(&fixtures().join("tokenizer.model")).unwrap();
    let hf = Tokenizer::from_file(&fixtures().join("tokenizer.json.gz")).unwrap();
    let pieces: Vec<&str> = {
        let mut v = Vec::new();
        let mut rest = text.as_str();
        while !rest.is_empty() {
            let end = rest.char_indices().nth(400_000).map_or(rest.len(), |(i, _)| i);
            v.push(&rest[..end]);
            rest = &rest[end..];
        }
        v
    };
    let (t_meta, ids_meta) = best_of(3, || meta.encode(&text, SpecialTokens::AsText).unwrap());
    let (t_hf, ids_hf) = best_of(3, || {
        pieces
            .iter()
            .flat_map(|p| hf.encode(p, SpecialTokens::Parse).unwrap())
            .collect::<Vec<u32>>()
    });
    assert_eq!(
        ids_meta.len() as u64,
        spec["meta_tokens"].as_u64().unwrap(),
        "token count differs from Meta's"
    );
    assert_eq!(ids_meta, ids_hf, "both formats give the same ids on this text");
    println!(
        "tokenization of {mb:.2} MB ({} tokens), best of 3, 1 thread",
        ids_meta.len()
    );
    println!("{:<44} {:>8}", "tokenizer", "MB/s");
    println!(
        "{:<44} {:>8.2}",
        "herd tokenizer.model (Meta encode semantics)",
        mb / t_meta
    );
    println!(
        "{:<44} {:>8.2}",
        "herd tokenizer.json (400k-char pieces)",
        mb / t_hf
    );
    println!(
        "{}",
        serde_json::json!({"bench": "tokenize", "bytes": text.len(), "tokens": ids_meta.len(),
            "herd_tiktoken_mb_per_s": mb / t_meta, "herd_tokenizer_json_mb_per_s": mb / t_hf})
    );
}
