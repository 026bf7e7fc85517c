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
        dequantize: false,
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

/// Random non-zero values in every trainable tensor (so LoRA paths carry signal).
fn randomize(model: &TrainModel, seed: u64) {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    for p in model.params() {
        let v: Vec<f32> = (0..p.var.elem_count())
            .map(|_| rng.random_range(-0.2..0.2))
            .collect();
        p.var
            .set(&Tensor::from_vec(v, p.var.dims(), &Device::Cpu).unwrap())
            .unwrap();
    }
}

/// QLoRA: the frozen base quantized at load computes through herd's quantized kernels; its
/// slow twin is the same base dequantized to f32. Logits and gradients agree, and both differ
/// from the unquantized base (the quantization happened).
#[test]
fn qlora_on_a_quantized_base_equals_lora_on_its_dequantized_weights() {
    let dir = fixture_path("maverick-tiny");
    for quant in [herd_model::QuantType::Q8_0, herd_model::QuantType::Q4K] {
        let make = |dequantize: bool, quant: Option<herd_model::QuantType>| {
            let model = TrainModel::load(
                &dir,
                &TrainOptions {
                    quant,
                    dequantize,
                    ..options(Mode::Lora(lora_everywhere(2)))
                },
            )
            .unwrap();
            randomize(&model, 9);
            model
        };
        let (fast, slow, exact) = (
            make(false, Some(quant)),
            make(true, Some(quant)),
            make(false, None),
        );
        let (batch, _) = two_samples(fast.config().vocab_size);
        let pass = PassKey::eval();
        let (lf, ls, le) = (
            fast.logits(&batch, &pass).unwrap(),
            slow.logits(&batch, &pass).unwrap(),
            exact.logits(&batch, &pass).unwrap(),
        );
        assert_close(
            &lf,
            &ls,
            1e-4,
            &format!("{quant:?}: quantized kernels vs dequantized f32"),
        );
        assert!(
            divergence(&lf, &le, 1e-3).first_beyond.is_some(),
            "{quant:?} changed nothing"
        );
        let grads = |m: &TrainModel| {
            let (sum, n) = m.loss_sum(&batch, &pass).unwrap();
            let store = (sum / n as f64).unwrap().backward().unwrap();
            m.params()
                .iter()
                .map(|p| store.get(p.var.as_tensor()).unwrap().clone())
                .collect::<Vec<_>>()
        };
        for (a, b) in grads(&fast).iter().zip(grads(&slow)) {
            let scale = b
                .abs()
                .unwrap()
                .max_all()
                .unwrap()
                .to_scalar::<f32>()
                .unwrap()
                .max(1e-3);
            assert_close(a, &b, 1e-4 * scale.max(1.0), &format!("{quant:?} gradient"));
        }
    }
}

#[test]
fn a_gguf_base_trains_with_the_same_forward_as_inference() {
    for file in ["model-q8_0.gguf", "model-q4_k_m.gguf", "model-bf16.gguf"] {
        let path = fixture_path("gguf-tiny").join(file);
        // Inference's quantized kernels round activations; its slow twin (the weights
        // dequantized, f32 products) is what training computes.
        let load = herd_model::LoadOptions {
            dequantize: true,
            ..herd_model::LoadOptions::new(DType::F32, &Device::Cpu)
        };
        let reference = TextModel::load_with(&path, &load).unwrap();
        let model = TrainModel::load(&path, &options(Mode::Lora(lora_everywhere(2)))).unwrap();
        let (batch, samples) = two_samples(reference.config().vocab_size);
        let logits = model.logits(&batch, &PassKey::eval()).unwrap();
        for (seg, ids) in batch.segments.iter().zip(&samples) {
            let expected = reference
                .forward(ids, &mut reference.new_cache(), LogitsFor::All)
                .unwrap();
            assert_close(
                &logits.narrow(0, seg.start, seg.len()).unwrap(),
                &expected,
                1e-5,
                file,
            );
        }
    }
}

/// bf16 activations: the loss stays near f32's and the gradients point the same way.
#[test]
fn bf16_compute_tracks_f32() {
    let dir = fixture_path("maverick-tiny");
    let make = |dtype: DType| {
        let m = TrainModel::load(
            &dir,
            &TrainOptions {
                dtype,
                ..options(Mode::Lora(lora_everywhere(2)))
            },
        )
        .unwrap();
        randomize(&m, 4);
        m
    };
    let (f32m, bf16m) = (make(DType::F32), make(DType::BF16));
    let (batch, _) = two_samples(f32m.config().vocab_size);
    let pass = PassKey::eval();
    let run = |m: &TrainModel| {
        let (sum, n) = m.loss_sum(&batch, &pass).unwrap();
        let loss = (sum / n as f64).unwrap();
        let store = loss.backward().unwrap();
        let g: Vec<f32> = m
            .params()
            .iter()
            .flat_map(|p| {
                store
                    .get(p.var.as_tensor())
                    .unwrap()
                    .flatten_all()
                    .unwrap()
                    .to_vec1::<f32>()
                    .unwrap()
            })
            .collect();
        (loss.to_scalar::<f32>().unwrap(), g)
    };
    let ((l32, g32), (l16, g16)) = (run(&f32m), run(&bf16m));
    assert!(
        (l32 - l16).abs() < 0.05 * l32.abs(),
        "loss {l32} (f32) vs {l16} (bf16)"
    );
    assert!(l32 != l16, "bf16 compute must actually round");
    let dot: f32 = g32.iter().zip(&g16).map(|(a, b)| a * b).sum();
    let norm = |g: &[f32]| g.iter().map(|x| x * x).sum::<f32>().sqrt();
    let cosine = dot / (norm(&g32) * norm(&g16));
    assert!(cosine > 0.98, "gradient cosine {cosine}");
}
