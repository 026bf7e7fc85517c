//! gguf-tiny against transformers (tools/reference/make_gguf_fixtures.py): the bf16 checkpoint as
//! a safetensors folder and as llama.cpp's own converter wrote it into a GGUF, on every row of
//! two short prompts and across the 8192 chunk boundary of an 8200-token prompt; llama.cpp's
//! Q8_0, Q6_K, Q4_K_M, Q3_K_M, Q2_K, Q4_1, Q5_0 and Q5_1 files exactly on their dequantized
//! weights, and within stated bounds with the quantized kernels.

use candle_core::{DType, Tensor};
use herd_model::{LoadOptions, LogitsFor, TextModel};
use herd_testkit::{assert_close, fixture_path, Reference};

/// Logits at every position of one prefill, then `n` greedy tokens from the same cache with
/// the logits that chose them.
fn prefill_and_greedy(model: &TextModel, ids: &[u32], n: usize) -> (Tensor, Vec<u32>, Tensor) {
    let mut cache = model.new_cache();
    let all = model.forward(ids, &mut cache, LogitsFor::All).unwrap();
    let t = ids.len();
    let mut logits = all.narrow(0, t - 1, 1).unwrap();
    let (mut tokens, mut rows) = (Vec::new(), Vec::new());
    for _ in 0..n {
        let next = logits.argmax(1).unwrap().to_vec1::<u32>().unwrap()[0];
        tokens.push(next);
        rows.push(logits.clone());
        logits = model.forward(&[next], &mut cache, LogitsFor::Last).unwrap();
    }
    let rows = if rows.is_empty() {
        logits
    } else {
        Tensor::cat(&rows, 0).unwrap()
    };
    (all, tokens, rows)
}

fn rows_of(all: &Tensor, rows: &[u32]) -> Tensor {
    let idx = Tensor::from_vec(rows.to_vec(), rows.len(), all.device()).unwrap();
    all.index_select(&idx, 0).unwrap()
}

/// Checks `model` against the reference under `prefix` ("" or "q8_0."), exactly (`tol`) or,
/// with `tol` = None, returns the statistics of the differences instead.
fn check(model: &TextModel, prefix: &str, tol: f32, what: &str) {
    let r = Reference::load("gguf-tiny");
    for i in 0..2 {
        let ids = r.ids(&format!("short.{i}.ids"));
        let (all, greedy, greedy_logits) = prefill_and_greedy(model, &ids, 16);
        let d = assert_close(
            &all,
            &r.tensor(&format!("{prefix}short.{i}.logits")),
            tol,
            &format!("{what} short {i}"),
        );
        assert_close(
            &greedy_logits,
            &r.tensor(&format!("{prefix}short.{i}.greedy_logits")),
            tol,
            &format!("{what} short {i} greedy"),
        );
        assert_eq!(
            greedy,
            r.ids(&format!("{prefix}short.{i}.greedy")),
            "{what} short {i} greedy tokens"
        );
        println!("{what} short {i} ({} tokens): max abs diff {d:.2e}", ids.len());
    }
    let ids = r.ids("long.ids");
    let rows = r.ids("long.rows");
    let (all, greedy, greedy_logits) = prefill_and_greedy(model, &ids, 16);
    let d = assert_close(
        &rows_of(&all, &rows),
        &r.tensor(&format!("{prefix}long.logits")),
        tol,
        &format!("{what} long"),
    );
    assert_close(
        &greedy_logits,
        &r.tensor(&format!("{prefix}long.greedy_logits")),
        tol,
        &format!("{what} long greedy"),
    );
    assert_eq!(
        greedy,
        r.ids(&format!("{prefix}long.greedy")),
        "{what} long greedy tokens"
    );
    println!(
        "{what} long ({} tokens, rows across 8192): max abs diff {d:.2e}",
        ids.len()
    );
}

fn load(name: &str, dequantize: bool) -> TextModel {
    let dir = fixture_path("gguf-tiny");
    let path = if name.is_empty() { dir } else { dir.join(name) };
    let options = LoadOptions {
        dequantize,
        ..LoadOptions::new(DType::F32, &crate::test_device())
    };
    TextModel::load_with(&path, &options).unwrap()
}

#[test]
fn safetensors_folder_matches_transformers_across_the_chunk_boundary() {
    check(&load("", false), "", 1e-4, "safetensors bf16");
}

#[test]
fn converter_bf16_gguf_matches_transformers_across_the_chunk_boundary() {
    check(&load("model-bf16.gguf", false), "", 1e-4, "GGUF bf16");
}

/// llama.cpp's own quantized files: the converter's Q8_0, and llama-quantize's others made from
/// the converter's BF16 (tools/reference/make_gguf_fixtures.py).
/// Q3_K_M and Q2_K bring Q3_K and Q2_K blocks (with Q4_K … Q6_K where llama.cpp's rules give
/// more bits); Q4_1, Q5_0 and Q5_1 are the legacy 32-value formats; IQ4_NL and IQ4_XS the 4-bit
/// i-quants.
const QUANTIZED: [(&str, &str); 10] = [
    ("model-q8_0.gguf", "q8_0."),
    ("model-q4_k_m.gguf", "q4_k_m."),
    ("model-q6_k.gguf", "q6_k."),
    ("model-q3_k_m.gguf", "q3_k_m."),
    ("model-q2_k.gguf", "q2_k."),
    ("model-q4_1.gguf", "q4_1."),
    ("model-q5_0.gguf", "q5_0."),
    ("model-q5_1.gguf", "q5_1."),
    ("model-iq4_nl.gguf", "iq4_nl."),
    ("model-iq4_xs.gguf", "iq4_xs."),
];

#[test]
fn llama_cpp_quantized_files_decode_exactly() {
    // Dequantized to f32 at load, each file is the reference's model: every block decodes as
    // gguf-py decodes it.
    for (file, prefix) in QUANTIZED {
        check(&load(file, true), prefix, 1e-4, &format!("{file} dequantized"));
    }
}

/// The mutation twin of the exact check: each file's decode checked against a neighbouring
/// format's reference misses the 1e-4 tolerance by orders of magnitude, so a block type read as
/// the wrong format could not pass it.
#[test]
fn each_quantized_files_reference_tells_it_from_its_neighbours() {
    let r = Reference::load("gguf-tiny");
    let ids = r.ids("short.1.ids");
    for (i, (file, _)) in QUANTIZED.iter().enumerate() {
        let (_, other) = QUANTIZED[(i + 1) % QUANTIZED.len()];
        let (all, _, _) = prefill_and_greedy(&load(file, true), &ids, 0);
        let theirs = r.tensor(&format!("{other}short.1.logits"));
        let d = (all - theirs)
            .unwrap()
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        assert!(d > 1e-2, "{file} against {other}: {d}");
    }
}

/// The quantized kernels round activations to 8 bits too (as llama.cpp does), so they are not
/// exact. Stated bounds, per row of logits (max abs difference over the row's max |logit|),
/// against transformers on each file's dequantized weights, over every reference row (two
/// short prompts and 24 rows of the 8200-token one):
/// - median within 5% for every format; top-1 agreement at least 90%, except Q3_K_M: 85%;
/// - Q8_0 only: every short-prompt row within 7%. Its short prompts' router gaps (≥ 8.5e-2)
///   exceed the activation noise, so no expert choice flips there. The K-quant files' gaps
///   (1.5e-2, 2.6e-2) and the long prompt's (down to 3e-5) do not: a token routed to another
///   expert differs wholesale, as it does in llama.cpp.
///
/// Q3_K_M's reference has the most near-tied expert choices of all files (six long-prompt
/// router decisions under 5e-4, down to 6.1e-5), and llama.cpp itself agrees with it on 92.8%
/// of the rows, with herd on 87%: top-1 there measures which near-ties the activation rounding tips, not the
/// kernel. The median, which a wrong kernel moves, keeps the common 5% bound.
///
/// Observed (herd; llama.cpp on the same file, tools/reference/quantized_rows_vs_llama_cpp.py):
/// median / top-1 — Q8_0 1.2% / 98.6% (2.8% / 100%); Q6_K 3.7% / 94.2% (3.8% / 94.2%); Q4_K_M
/// 3.9% / 94.2% (3.9% / 95.7%); Q3_K_M 3.3% / 88.4% (4.1% / 92.8%); Q2_K 1.4% / 100% (3.9% /
/// 94.2%); Q4_1 1.3% / 98.6%; Q5_0 1.3% / 100%; Q5_1 1.3% / 97.1% (llama.cpp 2.7–2.8%,
/// 95.7–97.1%); IQ4_NL 1.5% / 97.1% (2.8% / 95.7%); IQ4_XS 1.5% / 95.7% (4.1% / 89.9%).
/// herd's prompts multiply Q2_K, Q3_K, Q5_K, the legacy formats and the i-quants on
/// dequantized panels (bf16 against bf16-rounded activations on AVX-512 BF16 and AMX, f32
/// elsewhere; never 8-bit activations), hence its smaller medians there.
#[test]
fn llama_cpp_quantized_files_with_quantized_kernels_are_within_their_bounds() {
    // (file, prefix, bound on every short-prompt row, top-1 bound)
    let bounds = [
        ("model-q8_0.gguf", "q8_0.", Some(0.07), 0.9),
        ("model-q6_k.gguf", "q6_k.", None, 0.9),
        ("model-q4_k_m.gguf", "q4_k_m.", None, 0.9),
        ("model-q3_k_m.gguf", "q3_k_m.", None, 0.85),
        ("model-q2_k.gguf", "q2_k.", None, 0.9),
        ("model-q4_1.gguf", "q4_1.", None, 0.9),
        ("model-q5_0.gguf", "q5_0.", None, 0.9),
        ("model-q5_1.gguf", "q5_1.", None, 0.9),
        ("model-iq4_nl.gguf", "iq4_nl.", None, 0.9),
        ("model-iq4_xs.gguf", "iq4_xs.", None, 0.9),
    ];
    let mut missed = Vec::new();
    for (file, prefix, short_max, top1) in bounds {
        let (s_max, a_med, a_top1) = kernel_stats(&load(file, false), prefix, file);
        if short_max.is_some_and(|bound| s_max >= bound) {
            missed.push(format!("{file}: short-prompt rows max {s_max}"));
        }
        if !(a_med < 0.05 && a_top1 >= top1) {
            missed.push(format!("{file}: all rows median {a_med}, top-1 {a_top1}"));
        }
    }
    assert!(missed.is_empty(), "{missed:#?}");
}

/// (short-prompt max, all-rows median, all-rows top-1) of the row differences.
fn kernel_stats(model: &TextModel, prefix: &str, what: &str) -> (f32, f32, f32) {
    let r = Reference::load("gguf-tiny");
    let argmax = |v: &[f32]| {
        v.iter()
            .enumerate()
            .fold(0, |best, (i, x)| if *x > v[best] { i } else { best })
    };
    // (row diff / row scale, top-1 agrees) per row.
    let stats = |ours: &Tensor, theirs: &Tensor| -> Vec<(f32, bool)> {
        let ours = ours.to_vec2::<f32>().unwrap();
        let theirs = theirs.to_vec2::<f32>().unwrap();
        ours.iter()
            .zip(&theirs)
            .map(|(a, b)| {
                let d = a.iter().zip(b).fold(0f32, |m, (x, y)| m.max((x - y).abs()));
                let scale = b.iter().fold(0f32, |m, y| m.max(y.abs()));
                (d / scale, argmax(a) == argmax(b))
            })
            .collect()
    };
    let mut short = Vec::new();
    for i in 0..2 {
        let ids = r.ids(&format!("short.{i}.ids"));
        let (all, _, _) = prefill_and_greedy(model, &ids, 0);
        short.extend(stats(&all, &r.tensor(&format!("{prefix}short.{i}.logits"))));
    }
    let (all, _, _) = prefill_and_greedy(model, &r.ids("long.ids"), 0);
    let long = stats(
        &rows_of(&all, &r.ids("long.rows")),
        &r.tensor(&format!("{prefix}long.logits")),
    );
    let summary = |rows: &[(f32, bool)]| {
        let mut d: Vec<f32> = rows.iter().map(|r| r.0).collect();
        d.sort_by(f32::total_cmp);
        let top1 = rows.iter().filter(|r| r.1).count() as f32 / rows.len() as f32;
        (d[d.len() / 2], d[d.len() - 1], top1)
    };
    let (s_med, s_max, s_top1) = summary(&short);
    let all_rows: Vec<(f32, bool)> = short.iter().chain(&long).copied().collect();
    let (a_med, a_max, a_top1) = summary(&all_rows);
    println!(
        "{what} kernels vs transformers on its dequantized weights: short prompts {} rows: median {s_med:.4}, max {s_max:.4}, top-1 {:.1}%; all {} rows: median {a_med:.4}, max {a_max:.4}, top-1 {:.1}%",
        short.len(),
        s_top1 * 100.0,
        all_rows.len(),
        a_top1 * 100.0
    );
    (s_max, a_med, a_top1)
}
