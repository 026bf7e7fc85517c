//! The training loop's settings: per-layer learning rates, gradient accumulation.

use herd_testkit::fixture_path;
use herd_train::data::PackedSequence;
use herd_train::model::{Mode, TrainModel};
use herd_train::trainer::{LayerLr, TrainConfig, Trainer};

use super::model::{lora_everywhere, options};

fn sequences(vocab: u32) -> Vec<PackedSequence> {
    (0..4u32)
        .map(|s| {
            let ids: Vec<u32> = (0..12u32).map(|i| (s * 31 + i * 17 + 5) % vocab).collect();
            PackedSequence {
                trained: (0..12).map(|i| i > 0).collect(),
                positions: (0..12).collect(),
                segments: std::iter::once(0..12).collect(),
                lines: vec![s as usize + 1],
                ids,
            }
        })
        .collect()
}

fn config(layer_lr: Vec<LayerLr>, batch_size: usize, grad_accum: usize) -> TrainConfig {
    TrainConfig {
        lr: 1e-2,
        beta1: 0.9,
        beta2: 0.999,
        eps: 1e-8,
        weight_decay: 0.0,
        warmup_steps: 0,
        total_steps: 2,
        batch_size,
        grad_accum,
        max_grad_norm: 1.0,
        seed: 1,
        layer_lr,
    }
}

fn snapshot(model: &TrainModel) -> Vec<(String, Option<usize>, Vec<f32>)> {
    model
        .params()
        .iter()
        .map(|p| {
            (
                p.name.clone(),
                p.layer,
                p.var.as_tensor().flatten_all().unwrap().to_vec1::<f32>().unwrap(),
            )
        })
        .collect()
}

#[test]
fn a_zero_layer_multiplier_freezes_that_layer_only() {
    let model = TrainModel::load(
        &fixture_path("maverick-tiny"),
        &options(Mode::Lora(lora_everywhere(2))),
    )
    .unwrap();
    let before = snapshot(&model);
    let vocab = model.config().vocab_size as u32;
    let layer_lr = vec!["1=0".parse::<LayerLr>().unwrap()];
    let mut trainer = Trainer::new(
        &model,
        config(layer_lr, 2, 1),
        sequences(vocab),
        Vec::new(),
        "t".into(),
    )
    .unwrap();
    trainer.train_step().unwrap();
    trainer.train_step().unwrap();
    for ((name, layer, a), (_, _, b)) in before.iter().zip(snapshot(&model)) {
        // B starts at zero: only B moves in the first steps of a LoRA (A's gradient is B-scaled).
        if !name.ends_with("lora_B.weight") {
            continue;
        }
        if *layer == Some(1) {
            assert_eq!(a, &b, "{name} is in the frozen layer");
        } else {
            assert_ne!(a, &b, "{name} should have moved");
        }
    }
}

#[test]
fn layer_ranges_parse_and_bad_ones_are_refused() {
    let r: LayerLr = "2-5=0.5".parse().unwrap();
    assert_eq!((r.first, r.last, r.multiplier), (2, 5, 0.5));
    let open: LayerLr = "3-=2".parse().unwrap();
    assert_eq!((open.first, open.last), (3, usize::MAX));
    for bad in ["5-2=1", "x=1", "1=-1", "1", "1=nan"] {
        assert!(bad.parse::<LayerLr>().is_err(), "{bad}");
    }
}

#[test]
fn accumulating_two_micro_batches_equals_one_batch_of_both() {
    let run = |batch_size: usize, grad_accum: usize| {
        let model = TrainModel::load(
            &fixture_path("maverick-tiny"),
            &options(Mode::Lora(lora_everywhere(2))),
        )
        .unwrap();
        let vocab = model.config().vocab_size as u32;
        let mut trainer = Trainer::new(
            &model,
            config(Vec::new(), batch_size, grad_accum),
            sequences(vocab),
            Vec::new(),
            "t".into(),
        )
        .unwrap();
        let rec = trainer.train_step().unwrap();
        (rec.loss, rec.grad_norm, snapshot(&model))
    };
    let (l1, n1, p1) = run(2, 1);
    let (l2, n2, p2) = run(1, 2);
    assert!(
        (l1 - l2).abs() < 1e-6 && (n1 - n2).abs() < 1e-5 * n1,
        "{l1} {l2} {n1} {n2}"
    );
    for ((name, _, a), (_, _, b)) in p1.iter().zip(&p2) {
        let d = a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0f32, f32::max);
        assert!(d < 1e-6, "{name}: {d}");
    }
}
