//! The sampler's filters and reproducibility, on hand-made logits.

use herd_engine::sampling::argmax;
use herd_engine::{EngineError, Sampler, SamplingParams};

fn params(f: impl FnOnce(&mut SamplingParams)) -> SamplingParams {
    let mut p = SamplingParams {
        seed: Some(7),
        ..SamplingParams::default()
    };
    f(&mut p);
    p
}

/// ln of probabilities 0.5, 0.25, 0.15, 0.1.
fn logits() -> Vec<f32> {
    [0.5f32, 0.25, 0.15, 0.1].iter().map(|p| p.ln()).collect()
}

fn ids(p: &[(u32, f32)]) -> Vec<u32> {
    p.iter().map(|c| c.0).collect()
}

#[test]
fn temperature_zero_is_argmax() {
    let mut s = Sampler::new(SamplingParams::greedy()).unwrap();
    assert_eq!(s.sample(&[0.1, 3.0, 2.9, -1.0], &[]), 1);
    assert_eq!(argmax(&[1.0, 1.0]), 0, "ties go to the lower id");
    assert_eq!(argmax(&[f32::NAN, 1.0, 2.0]), 2, "a NaN is never the largest");
}

#[test]
fn filters_keep_the_right_candidates() {
    let s = Sampler::new(params(|p| p.top_k = 2)).unwrap();
    let probs = s.filtered_probabilities(&logits());
    assert_eq!(ids(&probs), vec![0, 1]);
    assert!((probs[0].1 - 2.0 / 3.0).abs() < 1e-6, "renormalised");

    // Cumulative 0.5, 0.75, 0.9: top-p 0.7 needs the first two, 0.75 exactly too.
    let s = Sampler::new(params(|p| p.top_p = 0.7)).unwrap();
    assert_eq!(ids(&s.filtered_probabilities(&logits())), vec![0, 1]);
    let s = Sampler::new(params(|p| p.top_p = 0.8)).unwrap();
    assert_eq!(ids(&s.filtered_probabilities(&logits())), vec![0, 1, 2]);
    let s = Sampler::new(params(|p| p.top_p = 0.01)).unwrap();
    assert_eq!(ids(&s.filtered_probabilities(&logits())), vec![0], "never empty");

    // min-p 0.25: threshold 0.125 keeps 0.5, 0.25, 0.15 and drops 0.1.
    let s = Sampler::new(params(|p| p.min_p = 0.25)).unwrap();
    assert_eq!(ids(&s.filtered_probabilities(&logits())), vec![0, 1, 2]);

    // Temperature sharpens: at 0.5 the top probability is 0.25/(0.25+0.0625+0.0225+0.01).
    let s = Sampler::new(params(|p| p.temperature = 0.5)).unwrap();
    let top = s.filtered_probabilities(&logits())[0].1;
    assert!((top - 0.25 / 0.345).abs() < 1e-5, "{top}");
}

#[test]
fn samples_follow_the_distribution_and_never_leave_the_filter() {
    let mut s = Sampler::new(params(|p| p.top_k = 3)).unwrap();
    let mut counts = [0usize; 4];
    for _ in 0..20000 {
        counts[s.sample(&logits(), &[]) as usize] += 1;
    }
    assert_eq!(counts[3], 0, "top-k excluded token drawn");
    let p0 = counts[0] as f32 / 20000.0;
    assert!((p0 - 0.5 / 0.9).abs() < 0.02, "{p0}");
}

#[test]
fn same_seed_same_tokens_other_seed_other_tokens() {
    let draw = |seed| {
        let mut s = Sampler::new(params(|p| p.seed = Some(seed))).unwrap();
        (0..64).map(|_| s.sample(&logits(), &[])).collect::<Vec<_>>()
    };
    assert_eq!(draw(1), draw(1));
    assert_ne!(draw(1), draw(2));
}

#[test]
fn repetition_penalty_discourages_seen_tokens() {
    let mut s = Sampler::new(params(|p| {
        p.temperature = 0.0;
        p.repetition_penalty = 2.0;
    }))
    .unwrap();
    // Positive logit halved (3 → 1.5 < 2), negative doubled.
    assert_eq!(s.sample(&[3.0, 2.0, -1.0], &[0]), 1);
    assert_eq!(s.sample(&[-1.0, -1.5, -9.0], &[0]), 1);
}

#[test]
fn invalid_parameters_are_named() {
    let cases: [(&str, SamplingParams); 6] = [
        ("temperature", params(|p| p.temperature = -1.0)),
        ("temperature", params(|p| p.temperature = f32::NAN)),
        ("top_p", params(|p| p.top_p = 0.0)),
        ("min_p", params(|p| p.min_p = 1.5)),
        ("repetition_penalty", params(|p| p.repetition_penalty = 0.0)),
        ("max_new_tokens", params(|p| p.max_new_tokens = 0)),
    ];
    for (field, p) in cases {
        match p.validate() {
            Err(EngineError::InvalidParameter { field: f, .. }) => assert_eq!(f, field),
            other => panic!("{field}: {other:?}"),
        }
        assert!(Sampler::new(p).is_err());
    }
}

#[test]
fn denormal_temperatures_are_greedy_not_nan() {
    // 1e-45 divides logits into inf/NaN: every probability NaN, the least likely token drawn.
    for t in [1e-45f32, 1e-30, 9.9e-6] {
        let mut s = Sampler::new(params(|p| p.temperature = t)).unwrap();
        for _ in 0..20 {
            assert_eq!(s.sample(&logits(), &[]), 0, "temperature {t}");
        }
    }
}

/// Pseudo-random logits over a vocabulary of `n`, with a few ties and a steep head.
fn vocab_logits(n: usize, seed: u64) -> Vec<f32> {
    let mut state = seed.wrapping_mul(6364136223846793005).wrapping_add(1);
    (0..n)
        .map(|i| {
            state = state
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            let u = (state >> 40) as f32 / (1u64 << 24) as f32;
            if i % 997 == 0 {
                3.0 // ties at the top
            } else {
                u * 8.0 - 6.0
            }
        })
        .collect()
}

#[test]
fn fast_candidate_selection_agrees_with_the_full_sort() {
    // The partial-selection path sample() draws from, against the slow twin that sorts every
    // token, over filters that cut inside and beyond the first sorted prefix.
    type Case = Box<dyn Fn(&mut SamplingParams)>;
    let cases: Vec<Case> = vec![
        Box::new(|_| {}),
        Box::new(|p| p.top_k = 1),
        Box::new(|p| p.top_k = 40),
        Box::new(|p| p.top_k = 500),
        Box::new(|p| p.top_p = 0.9),
        Box::new(|p| p.top_p = 0.999),
        Box::new(|p| p.min_p = 0.05),
        Box::new(|p| p.min_p = 0.0001),
        Box::new(|p| {
            p.top_k = 300;
            p.top_p = 0.95;
            p.min_p = 0.01;
        }),
        Box::new(|p| {
            p.temperature = 0.3;
            p.top_p = 0.8;
        }),
        Box::new(|p| {
            p.temperature = 2.0;
            p.top_p = 0.5;
        }),
    ];
    for (n, seed) in [(10, 1), (3000, 2), (202_048, 3)] {
        let logits = vocab_logits(n, seed);
        for (c, case) in cases.iter().enumerate() {
            let mut s = Sampler::new(params(|p| case(p))).unwrap();
            let slow = s.filtered_probabilities(&logits);
            let fast = s.candidates_for(&logits);
            // The two sum the softmax denominator in different orders, so a top-p cut that
            // falls within rounding of a boundary may keep one token more or less; never more
            // than that, and only there.
            let (short, long) = if fast.len() <= slow.len() {
                (&fast, &slow)
            } else {
                (&slow, &fast)
            };
            assert!(
                long.len() - short.len() <= 1,
                "case {c}, vocab {n}: {} vs {}",
                fast.len(),
                slow.len()
            );
            assert_eq!(ids(short), ids(&long[..short.len()]), "case {c}, vocab {n}");
            if long.len() != short.len() {
                let unfiltered = Sampler::new(params(|p| {
                    case(p);
                    p.top_p = 1.0;
                    p.min_p = 0.0;
                }))
                .unwrap();
                let all = unfiltered.filtered_probabilities(&logits);
                let before: f32 = all[..short.len()].iter().map(|c| c.1).sum();
                let top_p = s.params().top_p;
                assert!(
                    (before - top_p).abs() < 1e-4,
                    "case {c}, vocab {n}: cut at {before} for top_p {top_p}"
                );
                continue;
            }
            for (f, w) in fast.iter().zip(&slow) {
                assert!(
                    (f.1 - w.1).abs() <= 1e-5 * w.1.max(1e-3),
                    "case {c}, vocab {n}: {f:?} vs {w:?}"
                );
            }
        }
    }
}

#[test]
fn repetition_penalty_applies_once_per_distinct_token() {
    // A token repeated in the history is penalised once, not once per occurrence.
    let mut s = Sampler::new(params(|p| {
        p.temperature = 0.0;
        p.repetition_penalty = 2.0;
    }))
    .unwrap();
    // Once: 4.0 / 2 = 2.0 beats the unseen token 2's 1.9; three times (0.5) would not.
    assert_eq!(s.sample(&[4.0, 1.0, 1.9], &[0, 0, 0, 1, 1]), 0);
    // And the scratch is cleared: the next step with no history penalises nothing.
    assert_eq!(s.sample(&[4.0, 1.0, 4.5], &[]), 2);
    assert_eq!(s.sample(&[4.0, 1.0, 3.9], &[]), 0);
}

#[test]
fn logit_bias_presence_and_frequency_penalties() {
    // Greedy over [2.0, 1.9, 0.0]: token 0 every time, unless penalised.
    let logits = [2.0f32, 1.9, 0.0];
    let run = |p: SamplingParams, n: usize| {
        let mut s = Sampler::new(p).unwrap();
        (0..n).map(|_| s.sample(&logits, &[])).collect::<Vec<_>>()
    };
    assert_eq!(run(SamplingParams::greedy(), 3), [0, 0, 0]);
    let bias = SamplingParams {
        logit_bias: vec![(2, 5.0)],
        ..SamplingParams::greedy()
    };
    assert_eq!(run(bias, 2), [2, 2]);
    // Presence: after one 0, token 0 sits at 2.0 − 0.5 < 1.9; after one 1, both are penalised
    // once and 0 leads again.
    let presence = SamplingParams {
        presence_penalty: 0.5,
        ..SamplingParams::greedy()
    };
    assert_eq!(run(presence, 4), [0, 1, 0, 0]);
    // Frequency: each use costs 0.15 more: 0 (2.0), 1 (1.9 vs 1.85), 0 (1.85 vs 1.75), …
    let frequency = SamplingParams {
        frequency_penalty: 0.15,
        ..SamplingParams::greedy()
    };
    assert_eq!(run(frequency, 4), [0, 1, 0, 1]);
    // The prompt (history) does not count: only generated tokens do.
    let mut s = Sampler::new(SamplingParams {
        presence_penalty: 2.0,
        ..SamplingParams::greedy()
    })
    .unwrap();
    assert_eq!(s.sample(&logits, &[0, 0, 0]), 0);
}

#[test]
fn penalties_and_biases_out_of_range_are_refused() {
    for p in [
        params(|p| p.presence_penalty = 2.5),
        params(|p| p.frequency_penalty = -3.0),
        params(|p| p.logit_bias = vec![(1, 101.0)]),
        params(|p| p.presence_penalty = f32::NAN),
    ] {
        assert!(matches!(
            Sampler::new(p),
            Err(EngineError::InvalidParameter { .. })
        ));
    }
}

#[test]
fn a_masked_token_is_never_drawn_whatever_the_seed() {
    // One live token among many masked ones, and many live ones whose tail an f32 running sum
    // would lose: the draw never lands on −∞.
    let mut logits = vec![f32::NEG_INFINITY; 200_000];
    for (i, l) in logits.iter_mut().enumerate().take(150_000) {
        *l = -((i % 97) as f32) * 0.3;
    }
    for seed in 0..300 {
        let mut s = Sampler::new(params(|p| p.seed = Some(seed))).unwrap();
        let t = s.sample(&logits, &[]);
        assert!(
            logits[t as usize].is_finite(),
            "seed {seed} drew masked token {t}"
        );
    }
    let mut only = vec![f32::NEG_INFINITY; 1000];
    only[417] = -3.0;
    let mut s = Sampler::new(params(|p| p.seed = Some(1))).unwrap();
    assert_eq!(s.sample(&only, &[]), 417);
}
