//! The training forward pass against herd-model's inference forward (itself checked against
//! transformers at 1e-5), and the backward against finite differences.

use candle_core::{DType, Device, Tensor};
use herd_model::{KvCache, LogitsFor, TextModel};
use herd_testkit::{assert_close, divergence, fixture_path};
use herd_train::lora::{LoraSettings, PassKey};
use herd_train::model::{Batch, Mode, TrainModel, TrainOptions};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

pub fn lora_everywhere(rank: usize) -> LoraSettings {
    LoraSettings {
        rank,
        alpha: 2.0 * rank as f64,
        dropout: 0.0,
        use_rslora: false,
        target_modules: vec!["all-linear".into()],
        target_parameters: vec![
            "feed_forward.experts.gate_up_proj".into(),
            "feed_forward.experts.down_proj".into(),
        ],
    }
}

pub fn options(mode: Mode) -> TrainOptions {
    TrainOptions {
        mode,
        seed: 7,
        quant: None,
        dtype: DType::F32,
    }
}

fn random_ids(n: usize, vocab: usize, seed: u64) -> Vec<u32> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    (0..n).map(|_| rng.random_range(4..vocab as u32)).collect()
}

/// Two samples (20 and 13 tokens: both cross a chunk boundary) on one axis.
fn two_samples(vocab: usize) -> (Batch, Vec<Vec<u32>>) {
    let samples = vec![random_ids(20, vocab, 1), random_ids(13, vocab, 2)];
    let mut batch = Batch::default();
    for s in &samples {
        batch.push(s, &vec![true; s.len()]);
    }
    (batch, samples)
}

/// Every sample's rows equal the inference model's logits for that sample alone.
fn check_against_inference(fixture: &str, mode: Mode) -> f32 {
    let dir = fixture_path(fixture);
    let reference = TextModel::load(&dir, DType::F32, &Device::Cpu).unwrap();
    let model = TrainModel::load(&dir, &options(mode)).unwrap();
    let (batch, samples) = two_samples(reference.config().vocab_size);
    let logits = model.logits(&batch, &PassKey::eval()).unwrap();
    let mut worst = 0f32;
    for (seg, ids) in batch.segments.iter().zip(&samples) {
        let mut cache: KvCache = reference.new_cache();
        let expected = reference.forward(ids, &mut cache, LogitsFor::All).unwrap();
        let actual = logits.narrow(0, seg.start, seg.len()).unwrap();
        worst = worst.max(assert_close(&actual, &expected, 1e-5, fixture));
    }
    worst
}

#[test]
fn training_forward_equals_inference_forward_with_frozen_base_and_zero_adapters() {
    for fixture in ["scout-tiny", "maverick-tiny", "chat-tiny"] {
        check_against_inference(fixture, Mode::Lora(lora_everywhere(4)));
    }
}

#[test]
fn training_forward_equals_inference_forward_with_every_weight_trainable() {
    for fixture in ["scout-tiny", "maverick-tiny"] {
        check_against_inference(fixture, Mode::Full);
    }
}

#[test]
fn packed_samples_do_not_see_each_other() {
    // Mutation twin of the tests above: the same rows as one sample give other logits.
    let dir = fixture_path("scout-tiny");
    let model = TrainModel::load(&dir, &options(Mode::Full)).unwrap();
    let (batch, samples) = two_samples(model.config().vocab_size);
    let mut merged = Batch::default();
    let all: Vec<u32> = samples.concat();
    merged.push(&all, &vec![true; all.len()]);
    let a = model.logits(&batch, &PassKey::eval()).unwrap();
    let b = model.logits(&merged, &PassKey::eval()).unwrap();
    let second = batch.segments[1].clone();
    let d = divergence(
        &a.narrow(0, second.start, second.len()).unwrap(),
        &b.narrow(0, second.start, second.len()).unwrap(),
        1e-3,
    );
    assert!(
        d.first_beyond.is_some(),
        "the second sample must not attend to the first"
    );
}

/// Central differences on a few entries of several parameters against the backward pass.
#[test]
fn gradients_match_finite_differences() {
    let dir = fixture_path("maverick-tiny");
    let model = TrainModel::load(&dir, &options(Mode::Lora(lora_everywhere(2)))).unwrap();
    // Non-zero B everywhere so every factor has a gradient.
    let mut rng = ChaCha8Rng::seed_from_u64(3);
    for p in model.params() {
        let n = p.var.elem_count();
        let v: Vec<f32> = (0..n).map(|_| rng.random_range(-0.3..0.3)).collect();
        p.var
            .set(&Tensor::from_vec(v, p.var.dims(), &Device::Cpu).unwrap())
            .unwrap();
    }
    let (mut batch, _) = two_samples(model.config().vocab_size);
    batch.trained[3] = false; // an untrained token inside a sample
    let pass = PassKey::eval();
    let loss = |m: &TrainModel| -> f64 {
        let (sum, n) = m.loss_sum(&batch, &pass).unwrap();
        sum.to_scalar::<f32>().unwrap() as f64 / n as f64
    };
    let (sum, n) = model.loss_sum(&batch, &pass).unwrap();
    let grads = (sum / n as f64).unwrap().backward().unwrap();
    let mut checked = 0;
    for p in model.params().iter().step_by(7) {
        let g = grads
            .get(p.var.as_tensor())
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        let base = p.var.as_tensor().flatten_all().unwrap().to_vec1::<f32>().unwrap();
        // The entry with the largest gradient (a clear signal over f32 rounding).
        let (i, _) = g
            .iter()
            .enumerate()
            .max_by(|a, b| a.1.abs().total_cmp(&b.1.abs()))
            .unwrap();
        let h = 1e-3f32;
        let at = |delta: f32| {
            let mut v = base.clone();
            v[i] += delta;
            p.var
                .set(&Tensor::from_vec(v, p.var.dims(), &Device::Cpu).unwrap())
                .unwrap();
            loss(&model)
        };
        let numeric = (at(h) - at(-h)) / (2.0 * h as f64);
        at(0.0);
        let analytic = g[i] as f64;
        let rel = (numeric - analytic).abs() / analytic.abs().max(1e-3);
        assert!(
            rel < 2e-2,
            "{}[{i}]: backward {analytic:e}, finite difference {numeric:e}",
            p.name
        );
        checked += 1;
    }
    assert!(checked >= 5);
}
