//! herd against transformers + PEFT on `fixtures/lora-tiny` (tools/reference/make_lora_tiny.py):
//! a PEFT adapter (every module kind, the router and the fused experts) loads in herd and gives
//! PEFT's logits; one batch's loss and gradients; a 10-step AdamW trajectory; full fine-tuning
//! gradients.

use std::collections::HashMap;

use candle_core::{DType, Device, Tensor};
use herd_model::{LogitsFor, TextModel};
use herd_testkit::{assert_close, divergence, fixture_path, Reference};
use herd_train::adapter::Adapter;
use herd_train::data::PackedSequence;
use herd_train::lora::PassKey;
use herd_train::model::{Batch, Mode, TrainModel, TrainOptions};
use herd_train::trainer::{TrainConfig, Trainer};

const FIXTURE: &str = "lora-tiny";

fn reference() -> Reference {
    Reference::load(FIXTURE)
}

/// The batch's two rows and their loss masks (label ≠ −100).
fn rows(r: &Reference) -> Vec<(Vec<u32>, Vec<bool>)> {
    let ids = r
        .tensor("batch.ids")
        .to_dtype(DType::I64)
        .unwrap()
        .to_vec2::<i64>()
        .unwrap();
    let labels = r.tensor("batch.labels").to_vec2::<i64>().unwrap();
    ids.iter()
        .zip(&labels)
        .map(|(i, l)| {
            (
                i.iter().map(|&x| x as u32).collect(),
                l.iter().map(|&x| x != -100).collect(),
            )
        })
        .collect()
}

fn batch(r: &Reference) -> Batch {
    let mut b = Batch::default();
    for (ids, trained) in rows(r) {
        b.push(&ids, &trained);
    }
    b
}

fn peft_adapter() -> Adapter {
    Adapter::load(&fixture_path(FIXTURE).join("peft-adapter")).unwrap()
}

/// A training model set to the PEFT adapter's values.
fn train_model_with_adapter(adapter: &Adapter) -> TrainModel {
    let options = TrainOptions {
        mode: Mode::Lora(adapter.settings.clone()),
        seed: 0,
        quant: None,
        dtype: DType::F32,
        dequantize: false,
    };
    let model = TrainModel::load(&fixture_path(FIXTURE), &options).unwrap();
    let values: HashMap<String, Tensor> = adapter.tensors.clone().into_iter().collect();
    model.set_params(&values).unwrap();
    model
}

fn row_logits(all: &Tensor, row: usize) -> Tensor {
    all.get(row).unwrap()
}

#[test]
fn a_peft_adapter_applied_for_inference_gives_peft_logits() {
    let r = reference();
    let mut model = TextModel::load(&fixture_path(FIXTURE), DType::F32, &Device::Cpu).unwrap();
    let base_logits = r.tensor("logits_base");
    let expected = r.tensor("logits_adapter");
    for (i, (ids, _)) in rows(&r).iter().enumerate() {
        let mut cache = model.new_cache();
        let logits = model.forward(ids, &mut cache, LogitsFor::All).unwrap();
        assert_close(&logits, &row_logits(&base_logits, i), 1e-5, "base");
    }
    peft_adapter().apply(&mut model).unwrap();
    for (i, (ids, _)) in rows(&r).iter().enumerate() {
        let mut cache = model.new_cache();
        let logits = model.forward(ids, &mut cache, LogitsFor::All).unwrap();
        let d = assert_close(&logits, &row_logits(&expected, i), 1e-4, "adapter (inference)");
        eprintln!("row {i}: max |Δ| vs PEFT {d:e}");
    }
}

#[test]
fn an_adapter_with_its_expert_factors_swapped_is_caught() {
    // Mutation twin: gate_up's factors under down_proj's key and back (shapes differ) must be
    // refused, and a scaled adapter must move the logits past the tolerance.
    let mut adapter = peft_adapter();
    let keys: Vec<String> = adapter
        .tensors
        .keys()
        .filter(|k| k.contains("experts.base_layer"))
        .cloned()
        .collect();
    for k in keys {
        let v = adapter.tensors.remove(&k).unwrap();
        let other = k.replace("experts.base_layer", "experts");
        let w = adapter.tensors.insert(other, v).unwrap();
        adapter.tensors.insert(k, w);
    }
    let mut model = TextModel::load(&fixture_path(FIXTURE), DType::F32, &Device::Cpu).unwrap();
    assert!(
        adapter.apply(&mut model).is_err(),
        "swapped expert factors must not fit"
    );

    let r = reference();
    let mut adapter = peft_adapter();
    adapter.settings.alpha *= 1.01;
    let mut model = TextModel::load(&fixture_path(FIXTURE), DType::F32, &Device::Cpu).unwrap();
    adapter.apply(&mut model).unwrap();
    let (ids, _) = &rows(&r)[0];
    let logits = model
        .forward(ids, &mut model.new_cache(), LogitsFor::All)
        .unwrap();
    let d = divergence(&logits, &row_logits(&r.tensor("logits_adapter"), 0), 1e-4);
    assert!(d.first_beyond.is_some(), "a 1% larger scaling must show");
}

#[test]
fn the_training_model_with_a_peft_adapter_gives_peft_logits_loss_and_gradients() {
    let r = reference();
    let adapter = peft_adapter();
    let model = train_model_with_adapter(&adapter);
    let b = batch(&r);
    let logits = model.logits(&b, &PassKey::eval()).unwrap();
    let expected = r.tensor("logits_adapter");
    for (i, seg) in b.segments.iter().enumerate() {
        let actual = logits.narrow(0, seg.start, seg.len()).unwrap();
        assert_close(&actual, &row_logits(&expected, i), 1e-4, "adapter (training)");
    }
    let (sum, n) = model.loss_sum(&b, &PassKey::eval()).unwrap();
    assert_eq!(n, 35);
    let loss = (sum / n as f64).unwrap();
    let expected_loss = r
        .tensor("loss_adapter")
        .flatten_all()
        .unwrap()
        .to_vec1::<f32>()
        .unwrap()[0];
    let got = loss.to_scalar::<f32>().unwrap();
    assert!(
        (got - expected_loss).abs() < 1e-5,
        "loss {got} vs PEFT {expected_loss}"
    );
    let grads = loss.backward().unwrap();
    let mut worst = 0f32;
    for p in model.params() {
        let g = grads.get(p.var.as_tensor()).unwrap();
        let expected = r.tensor(&format!("grad.{}", p.name));
        worst = worst.max(assert_close(g, &expected, 1e-5, &p.name));
    }
    eprintln!(
        "gradients: max |Δ| vs PEFT {worst:e} over {} tensors",
        model.params().len()
    );
}

#[test]
fn ten_adamw_steps_follow_peft_and_torch() {
    let r = reference();
    let adapter = peft_adapter();
    let model = train_model_with_adapter(&adapter);
    let sequences: Vec<PackedSequence> = rows(&r)
        .into_iter()
        .map(|(ids, trained)| {
            let n = ids.len();
            let mut trained = trained;
            trained[0] = false;
            PackedSequence {
                ids,
                trained,
                positions: (0..n).collect(),
                segments: std::iter::once(0..n).collect(),
                lines: vec![1],
            }
        })
        .collect();
    let config = TrainConfig {
        lr: 1e-3,
        beta1: 0.9,
        beta2: 0.999,
        eps: 1e-8,
        weight_decay: 0.01,
        warmup_steps: 2,
        total_steps: 10,
        batch_size: 2,
        grad_accum: 1,
        max_grad_norm: 1.0,
        seed: 0,
        layer_lr: Vec::new(),
    };
    let mut trainer = Trainer::new(&model, config, sequences, Vec::new(), "test".into()).unwrap();
    let losses = r.tensor("traj_loss").to_vec1::<f32>().unwrap();
    let norms = r.tensor("traj_grad_norm").to_vec1::<f32>().unwrap();
    let lrs = r.tensor("traj_lr").to_vec1::<f32>().unwrap();
    for s in 0..10 {
        let rec = trainer.train_step().unwrap();
        assert!(
            (rec.loss - losses[s] as f64).abs() < 1e-4,
            "step {s}: loss {} vs {}",
            rec.loss,
            losses[s]
        );
        assert!(
            (rec.grad_norm - norms[s] as f64).abs() < 1e-4 * norms[s] as f64,
            "step {s}: grad norm {} vs {}",
            rec.grad_norm,
            norms[s]
        );
        assert!(
            (rec.lr - lrs[s] as f64).abs() < 1e-9,
            "step {s}: lr {} vs {}",
            rec.lr,
            lrs[s]
        );
    }
    let mut worst = 0f32;
    for p in model.params() {
        let expected = r.tensor(&format!("final.{}", p.name));
        worst = worst.max(assert_close(p.var.as_tensor(), &expected, 1e-4, &p.name));
    }
    let b = batch(&r);
    let logits = model.logits(&b, &PassKey::eval()).unwrap();
    for (i, seg) in b.segments.iter().enumerate() {
        let actual = logits.narrow(0, seg.start, seg.len()).unwrap();
        assert_close(
            &actual,
            &row_logits(&r.tensor("logits_final"), i),
            1e-4,
            "final logits",
        );
    }
    eprintln!("after 10 steps: max |Δ| of the adapter vs PEFT {worst:e}");
}

#[test]
fn full_fine_tuning_gradients_equal_transformers() {
    let r = reference();
    let options = TrainOptions {
        mode: Mode::Full,
        seed: 0,
        quant: None,
        dtype: DType::F32,
        dequantize: false,
    };
    let model = TrainModel::load(&fixture_path(FIXTURE), &options).unwrap();
    let b = batch(&r);
    let (sum, n) = model.loss_sum(&b, &PassKey::eval()).unwrap();
    let loss = (sum / n as f64).unwrap();
    let expected = r
        .tensor("loss_base")
        .flatten_all()
        .unwrap()
        .to_vec1::<f32>()
        .unwrap()[0];
    assert!((loss.to_scalar::<f32>().unwrap() - expected).abs() < 1e-5);
    let grads = loss.backward().unwrap();
    let mut checked = 0;
    for p in model.params() {
        if let Some(expected) = r.try_tensor(&format!("grad_full.{}", p.name)) {
            let g = grads.get(p.var.as_tensor()).unwrap();
            assert_close(g, &expected, 1e-5, &p.name);
            checked += 1;
        }
    }
    assert_eq!(checked, 7, "every recorded gradient was compared");
}
