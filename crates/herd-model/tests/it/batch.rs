//! Continuous batching's invariant: several sequences fed in one step (a flat token axis, each
//! with its own positions, chunk masks and cache) give what each gives alone.

use candle_core::{DType, Tensor};
use herd_model::{BatchItem, KvCache, KvFormat, LogitsFor, TextModel};
use herd_testkit::assert_close;

use super::{full_logits, load_fixture};

/// Three prompts of mixed lengths, crossing the fixture's 8-token chunks at different points.
fn prompts(vocab: usize) -> Vec<Vec<u32>> {
    [21usize, 6, 13]
        .iter()
        .enumerate()
        .map(|(s, &n)| (0..n).map(|i| ((i * 37 + s * 101 + 5) % vocab) as u32).collect())
        .collect()
}

/// Feeds the prompts in batched steps; `plan[step][seq]` is how many tokens each sequence
/// advances that step (0: it sits out). Returns each sequence's logits at every position.
fn batched(model: &TextModel, prompts: &[Vec<u32>], plan: &[[usize; 3]]) -> Vec<Tensor> {
    let mut caches: Vec<KvCache> = prompts.iter().map(|_| model.new_cache()).collect();
    let mut done = vec![0usize; prompts.len()];
    let mut rows: Vec<Vec<Tensor>> = vec![Vec::new(); prompts.len()];
    for step in plan {
        let mut items = Vec::new();
        let mut which = Vec::new();
        for (s, cache) in caches.iter_mut().enumerate() {
            let n = step[s];
            if n == 0 {
                continue;
            }
            items.push(BatchItem {
                ids: &prompts[s][done[s]..done[s] + n],
                cache,
                logits_for: LogitsFor::All,
                images: None,
            });
            which.push(s);
            done[s] += n;
        }
        let out = model.forward_batch(&mut items).expect("batched step");
        assert_eq!(out.len(), which.len());
        for (s, logits) in which.into_iter().zip(out) {
            rows[s].push(logits);
        }
    }
    for (s, p) in prompts.iter().enumerate() {
        assert_eq!(done[s], p.len(), "the plan feeds sequence {s} whole");
    }
    rows.iter().map(|r| Tensor::cat(r, 0).unwrap()).collect()
}

// Prefill pieces beside single-token decodes in one step, a sequence sitting out a step, and
// pieces that end inside and across chunks.
const PLAN: [[usize; 3]; 6] = [[5, 1, 9], [1, 1, 0], [7, 1, 1], [1, 3, 3], [7, 0, 0], [0, 0, 0]];

fn check(fixture: &str) {
    let model = load_fixture(fixture, DType::F32);
    let prompts = prompts(model.config().vocab_size);
    let batch = batched(&model, &prompts, &PLAN);
    for (s, ids) in prompts.iter().enumerate() {
        let alone = full_logits(&model, ids);
        // The same sums in another grouping of rows: equal to f32 rounding.
        assert_close(
            &batch[s],
            &alone,
            1e-5,
            &format!("{fixture}: sequence {s} batched vs alone"),
        );
    }
}

#[test]
fn a_batched_step_equals_each_sequence_alone_scout() {
    check("scout-tiny");
}

#[test]
fn a_batched_step_equals_each_sequence_alone_maverick() {
    check("maverick-tiny");
}

#[test]
fn batched_decode_steps_equal_each_sequence_alone_with_every_cache_dtype() {
    // After their prompts, all three sequences decode one token a step together (the batched
    // decode path), across chunk boundaries, with f32, f16 and bf16 caches, and Q8_0 where the
    // heads are whole blocks (fp8-tiny's 32).
    let plan: Vec<[usize; 3]> = [[13, 4, 7]]
        .into_iter()
        .chain(std::iter::repeat_n([1, 1, 1], 2))
        .chain([[7, 1, 6], [0, 0, 0]])
        .collect();
    let dense = [
        None,
        Some(KvFormat::Dtype(DType::F16)),
        Some(KvFormat::Dtype(DType::BF16)),
    ];
    let with_q8 = [dense[0], dense[1], dense[2], Some(KvFormat::Q8_0)];
    // A Q8_0 cache is read by herd's CPU kernels only (a GPU refuses it).
    let with_q8 = if crate::test_device().is_cpu() {
        &with_q8[..]
    } else {
        &dense[..]
    };
    for (fixture, formats) in [
        ("scout-tiny", &dense[..]),
        ("maverick-tiny", &dense[..]),
        ("fp8-tiny", with_q8),
    ] {
        let mut model = load_fixture(fixture, DType::F32);
        let prompts = prompts(model.config().vocab_size);
        let lengths: Vec<usize> = (0..3).map(|s| plan.iter().map(|p| p[s]).sum()).collect();
        let prompts: Vec<Vec<u32>> = prompts
            .iter()
            .zip(&lengths)
            .map(|(p, &n)| p.iter().cycle().take(n).copied().collect())
            .collect();
        let sizes = |s: usize| -> Vec<usize> { plan.iter().map(|p| p[s]).filter(|&n| n > 0).collect() };
        model.set_kv_dtype(None);
        let exact: Vec<_> = (0..3)
            .map(|s| super::piecewise_logits(&model, &prompts[s], &sizes(s)))
            .collect();
        for &kv in formats {
            model.set_kv_format(kv).unwrap();
            let batch = batched(&model, &prompts, &plan);
            for (s, ids) in prompts.iter().enumerate() {
                // Alone, fed the same way: its prefill, then one token at a time.
                let alone = super::piecewise_logits(&model, ids, &sizes(s));
                let what = format!("{fixture} {kv:?}: sequence {s} batched vs alone");
                // An f32 cache holds what both computed: equal up to summation order. Batched
                // rows meet the weights in products of more rows than one sequence alone, which
                // take other kernels (block products or f32 panels past the dot kernel's four
                // rows), so the same sums are added in another order: seen up to 7.5e-6 on
                // AVX-512 and 1.12e-5 on AVX2 (fp8-tiny, logits up to 6.5: ~24 f32 steps),
                // against the reference bound's 1e-4 (`parity::TOL_F32`). A narrow cache
                // rounds each key and value; a last-bit difference in a projection (another
                // grouping of rows, another kernel on another ISA) can move one of them by a
                // rounding step, 2⁻¹¹ (f16) or 2⁻⁸ (bf16) relative. Such flips perturb the logits
                // by at most what the cache's rounding does as a whole, which is measured here
                // (the same sequence alone with an f32 cache): batched and alone may differ by
                // that much, and never by more than the bounds below (seen on AVX-512 with
                // f16: 1.3e-3 against a rounding effect of 3.7e-3; on AMX ≤ 6e-5). A Q8_0
                // level is up to 1/127 of its block's largest value.
                let rounding = herd_testkit::divergence(&alone, &exact[s], 0.0).max_abs;
                let tol = match kv {
                    None => 2e-5,
                    Some(KvFormat::Dtype(DType::F16)) => rounding.clamp(5e-4, 4e-3),
                    Some(KvFormat::Q8_0) => rounding.clamp(4e-3, 6e-2),
                    _ => rounding.clamp(4e-3, 3e-2),
                };
                println!("{what}: cache rounding moves the logits by {rounding:e}; tolerance {tol:e}");
                assert_close(&batch[s], &alone, tol, &what);
            }
        }
    }
}

#[test]
fn mutation_one_cache_for_two_sequences_is_caught() {
    // Feeding sequence 1's tokens after sequence 0's in the same cache (what a batch that lost
    // track of its segments would compute) must not pass for sequence 1 alone.
    let model = load_fixture("scout-tiny", DType::F32);
    let prompts = prompts(model.config().vocab_size);
    let mut cache = model.new_cache();
    model.forward(&prompts[0], &mut cache, LogitsFor::Last).unwrap();
    let mixed = model.forward(&prompts[1], &mut cache, LogitsFor::All).unwrap();
    let alone = full_logits(&model, &prompts[1]);
    let d = herd_testkit::divergence(&mixed, &alone, 1e-5);
    assert!(d.max_abs > 1e-3, "shared cache went unnoticed: {}", d.max_abs);
}

#[test]
fn a_bad_item_leaves_every_cache_untouched() {
    let model = load_fixture("scout-tiny", DType::F32);
    let (mut a, mut b) = (model.new_cache(), model.new_cache());
    let bad = [model.config().vocab_size as u32];
    let mut items = [
        BatchItem {
            ids: &[1, 2, 3],
            cache: &mut a,
            logits_for: LogitsFor::Last,
            images: None,
        },
        BatchItem {
            ids: &bad,
            cache: &mut b,
            logits_for: LogitsFor::Last,
            images: None,
        },
    ];
    assert!(model.forward_batch(&mut items).is_err());
    assert_eq!((a.n_positions(), b.n_positions()), (0, 0));
    assert!(model.forward_batch(&mut []).unwrap().is_empty());
}
