//! Logits at every position equal the reference (transformers 5.24, f32) for every fixture,
//! however the tokens are fed: one full pass, one token at a time through the KV cache, or in
//! uneven pieces (chunked prefill). Prompts cross several attention chunks.

use candle_core::{DType, Device};
use herd_testkit::{assert_close, Reference, TEXT_FIXTURES};

use crate::{full_logits, greedy, load_fixture, piecewise_logits};

/// f32 parity bound. Observed agreement is ~1e-5 (the reference's own decode-vs-full gap).
const TOL_F32: f32 = 1e-4;

#[test]
fn full_pass_logits_match_reference_at_every_position() {
    for name in TEXT_FIXTURES {
        let model = load_fixture(name, DType::F32);
        let reference = Reference::load(name);
        for (i, p) in reference.prompts().iter().enumerate() {
            let got = full_logits(&model, &p.ids);
            let d = assert_close(
                &got,
                &p.logits,
                TOL_F32,
                &format!("{name} prompt {i} ({} tokens)", p.ids.len()),
            );
            println!(
                "{name} prompt {i} ({} tokens): full pass max |Δ| = {d:e}",
                p.ids.len()
            );
        }
    }
}

#[test]
fn one_token_decode_matches_reference_decode_and_full_pass() {
    for name in TEXT_FIXTURES {
        let model = load_fixture(name, DType::F32);
        let reference = Reference::load(name);
        for (i, p) in reference.prompts().iter().enumerate() {
            let got = piecewise_logits(&model, &p.ids, &[1]);
            let what = format!("{name} prompt {i} decode");
            let d = assert_close(&got, &p.decode_logits, TOL_F32, &what);
            assert_close(&got, &p.logits, TOL_F32, &format!("{what} vs full pass"));
            println!("{what}: max |Δ| = {d:e}");
        }
    }
}

#[test]
fn chunked_prefill_matches_full_pass() {
    for name in TEXT_FIXTURES {
        let model = load_fixture(name, DType::F32);
        let reference = Reference::load(name);
        for (i, p) in reference.prompts().iter().enumerate() {
            // Uneven pieces so boundaries fall inside, on, and across attention chunks.
            for pieces in [&[3usize, 5, 7][..], &[2, 11], &[13]] {
                let got = piecewise_logits(&model, &p.ids, pieces);
                assert_close(
                    &got,
                    &p.logits,
                    TOL_F32,
                    &format!("{name} prompt {i} pieces {pieces:?}"),
                );
            }
        }
    }
}

#[test]
fn greedy_tokens_and_their_logits_match_reference() {
    for name in TEXT_FIXTURES {
        let model = load_fixture(name, DType::F32);
        let reference = Reference::load(name);
        for (i, p) in reference.prompts().iter().enumerate() {
            let (tokens, logits) = greedy(&model, &p.ids, p.greedy.len());
            assert_eq!(tokens, p.greedy, "{name} prompt {i}: greedy tokens");
            assert_close(
                &logits,
                &p.greedy_logits,
                TOL_F32,
                &format!("{name} prompt {i} greedy logits"),
            );
        }
    }
}

/// bf16 compute (`--dtype bf16`) against the f32 reference. bf16 keeps 8 significant bits,
/// so a router-logit gap below ~1% of the logit size can flip an expert choice, after which
/// that token's logits legitimately move by O(1): an element-wise bound cannot hold at every
/// position. Stated bounds instead: the median position's max |Δ| stays within 3% of the
/// logit range, and the top-1 token agrees on at least 90% of positions.
const BF16_MEDIAN_RELATIVE_TOL: f32 = 0.03;
const BF16_MIN_TOP1_AGREEMENT: f32 = 0.9;

#[test]
fn bf16_compute_agrees_within_bf16_precision() {
    for name in TEXT_FIXTURES {
        let model = load_fixture(name, DType::BF16);
        let reference = Reference::load(name);
        let (mut row_errors, mut agree, mut total) = (Vec::new(), 0usize, 0usize);
        let mut scale = 0f32;
        for p in reference.prompts() {
            scale = scale.max(
                p.logits
                    .abs()
                    .unwrap()
                    .max_all()
                    .unwrap()
                    .to_scalar::<f32>()
                    .unwrap(),
            );
            // On the host, beside the reference (the model may run on a GPU).
            let got = full_logits(&model, &p.ids).to_device(&Device::Cpu).unwrap();
            let diff = (got.clone() - &p.logits).unwrap().abs().unwrap().max(1).unwrap();
            row_errors.extend(diff.to_vec1::<f32>().unwrap());
            let a = got.argmax(1).unwrap().to_vec1::<u32>().unwrap();
            let b = p.logits.argmax(1).unwrap().to_vec1::<u32>().unwrap();
            agree += a.iter().zip(&b).filter(|(x, y)| x == y).count();
            total += a.len();
        }
        row_errors.sort_by(f32::total_cmp);
        let median = row_errors[row_errors.len() / 2];
        let top1 = agree as f32 / total as f32;
        println!(
            "{name} bf16: median row max |Δ| {median:.4} (max |logit| {scale:.2}), worst {:.4}, top-1 agreement {:.1}%",
            row_errors[row_errors.len() - 1],
            100.0 * top1
        );
        assert!(
            median <= BF16_MEDIAN_RELATIVE_TOL * scale,
            "{name}: median {median} vs scale {scale}"
        );
        assert!(top1 >= BF16_MIN_TOP1_AGREEMENT, "{name}: top-1 agreement {top1}");
    }
}

#[test]
fn chunked_layers_keep_at_most_one_chunk_of_keys() {
    let model = load_fixture("scout-tiny", DType::F32);
    let reference = Reference::load("scout-tiny");
    let ids = reference.prompt(0).ids; // 41 tokens, chunk 8
    let mut cache = model.new_cache();
    let mut max_chunked = 0;
    for (i, id) in ids.iter().enumerate() {
        model
            .forward(&[*id], &mut cache, herd_model::LogitsFor::Last)
            .unwrap();
        for (layer, plan) in cache.layers().iter().zip(&model.config().layers) {
            match plan.attention.chunk_len() {
                Some(c) => {
                    assert!(layer.len() < c, "chunked layer holds {} keys", layer.len());
                    // Its buffers are reused block after block, never grown past the block.
                    assert!(
                        layer.capacity() <= c,
                        "chunked layer allocated {}",
                        layer.capacity()
                    );
                    assert_eq!(layer.start(), (i + 1) / c * c);
                    max_chunked = max_chunked.max(layer.len());
                }
                None => assert_eq!(layer.len(), i + 1, "global layers keep everything"),
            }
        }
    }
    assert_eq!(max_chunked, 7);
}

#[test]
fn kv_cache_grows_by_doubling_and_is_written_in_place() {
    // 600 one-token steps: a global layer's buffer is reallocated only when full (256, 512,
    // 1024 slots), never per token; a chunked layer keeps one block's buffer throughout.
    let model = load_fixture("scout-tiny", DType::F32);
    let mut cache = model.new_cache();
    let mut capacities: Vec<Vec<usize>> = vec![Vec::new(); model.config().layers.len()];
    for i in 0..600u32 {
        model
            .forward(&[i % 200 + 1], &mut cache, herd_model::LogitsFor::Last)
            .unwrap();
        for (seen, layer) in capacities.iter_mut().zip(cache.layers()) {
            if seen.last() != Some(&layer.capacity()) {
                seen.push(layer.capacity());
            }
        }
    }
    for (seen, plan) in capacities.iter().zip(&model.config().layers) {
        match plan.attention.chunk_len() {
            Some(c) => assert_eq!(seen, &vec![c.min(256)], "chunked layer"),
            None => assert_eq!(seen, &vec![256, 512, 1024], "global layer"),
        }
    }
}
