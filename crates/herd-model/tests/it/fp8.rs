//! FP8 checkpoints in the layout of Meta's Llama-4-Maverick-17B-128E-Instruct-FP8
//! (tools/reference/make_fp8_fixture.py): float8_e4m3 routed experts with per-channel scales,
//! kept at one byte per weight, equal to transformers on the dequantized weights.

use std::sync::Arc;

use candle_core::{DType, Device, Tensor};
use herd_model::nn::{Linear, WeightFormat};
use herd_model::weights::fp8::{Fp8Matrix, F8E4M3};
use herd_model::weights::{Stored, WeightSource};
use herd_model::{LoadOptions, TextModel};
use herd_testkit::{assert_close, fixture_path, Reference};

use crate::{full_logits, greedy, piecewise_logits};

#[test]
fn e4m3_decodes_every_byte() {
    assert_eq!(F8E4M3(0x38).to_f32(), 1.0);
    assert_eq!(F8E4M3(0x7E).to_f32(), 448.0, "largest finite");
    assert_eq!(F8E4M3(0xFE).to_f32(), -448.0);
    assert_eq!(F8E4M3(0x01).to_f32(), 2f32.powi(-9), "smallest subnormal");
    assert_eq!(F8E4M3(0x08).to_f32(), 2f32.powi(-6), "smallest normal");
    assert_eq!(F8E4M3(0x3C).to_f32(), 1.5);
    assert!(F8E4M3(0x7F).to_f32().is_nan() && F8E4M3(0xFF).to_f32().is_nan());
    assert_eq!(F8E4M3(0x80).to_f32(), 0.0);
    // Monotone over the positive finite codes, so no code decodes out of order.
    let positive: Vec<f32> = (0u8..0x7F).map(|b| F8E4M3(b).to_f32()).collect();
    assert!(positive.windows(2).all(|w| w[0] < w[1]));
}

#[test]
fn fp8_linear_matches_its_dequantized_twin() {
    let (rows, cols) = (37, 129);
    let bytes: Vec<u8> = (0..rows * cols)
        .map(|i| ((i * 97 + 13) % 255) as u8 & 0xF7)
        .collect();
    let scale: Vec<f32> = (0..rows).map(|r| 0.001 * (r as f32 + 1.0)).collect();
    let m = Fp8Matrix::new(rows, cols, bytes, scale, "w").unwrap();
    let linear = Linear::Fp8(Arc::new(m));
    assert_eq!(linear.format(), WeightFormat::Fp8);
    for t in [1, 3, 9] {
        let x = Tensor::randn(0f32, 1.0, (t, cols), &Device::Cpu).unwrap();
        let fast = linear.forward(&x).unwrap();
        let slow = linear.forward_slow(&x).unwrap();
        assert_close(&fast, &slow, 1e-4, &format!("fp8 t={t}"));
    }
    assert!(
        Fp8Matrix::new(2, 2, vec![0; 4], vec![1.0], "w").is_err(),
        "scale count is checked"
    );
}

fn load_fp8(dequantize: bool) -> TextModel {
    let options = LoadOptions {
        dequantize,
        ..LoadOptions::new(DType::F32, &Device::Cpu)
    };
    TextModel::load_with(&fixture_path("fp8-tiny"), &options).unwrap()
}

#[test]
fn fp8_weights_decode_as_the_reference_dequantizes_them() {
    let r = Reference::load("fp8-tiny");
    let (source, _) = WeightSource::open(&fixture_path("fp8-tiny")).unwrap();
    let name = "language_model.model.layers.1.feed_forward.experts.2.down_proj.weight";
    let Stored::Fp8(m) = source.stored(name, &[128, 128]).unwrap() else {
        panic!("{name} is not held as FP8");
    };
    let ours = Tensor::from_vec(m.dequantize(), (128, 128), &Device::Cpu).unwrap();
    assert_close(&ours, &r.tensor(&format!("dequant.{name}")), 0.0, name);
    // transformers' fused [E, D, 2F] view of layer 3's experts: per expert [gateᵀ | upᵀ].
    let fused = r.tensor("dequant.language_model.model.layers.3.feed_forward.experts.gate_up_proj");
    for e in 0..4 {
        let [g, u, _] = source
            .expert(
                "language_model.model.layers.3.feed_forward.experts.",
                e,
                4,
                128,
                128,
            )
            .unwrap();
        let (Stored::Fp8(g), Stored::Fp8(u)) = (g, u) else {
            panic!("expert {e} not FP8")
        };
        let g = Tensor::from_vec(g.dequantize(), (128, 128), &Device::Cpu).unwrap();
        let u = Tensor::from_vec(u.dequantize(), (128, 128), &Device::Cpu).unwrap();
        let ours = Tensor::cat(&[g.t().unwrap(), u.t().unwrap()], 1).unwrap();
        assert_close(&ours, &fused.get(e).unwrap(), 0.0, &format!("expert {e} gate_up"));
    }
}

#[test]
fn fp8_checkpoint_matches_transformers_on_every_position() {
    let r = Reference::load("fp8-tiny");
    let model = load_fp8(false);
    let widened = load_fp8(true);
    assert!(
        model.weight_bytes() * 10 < widened.weight_bytes() * 7,
        "FP8 experts stay at one byte per weight ({} vs {} widened)",
        model.weight_bytes(),
        widened.weight_bytes()
    );
    for (i, p) in r.prompts().iter().enumerate() {
        let d = assert_close(
            &full_logits(&model, &p.ids),
            &p.logits,
            1e-4,
            &format!("fp8 prompt {i}"),
        );
        assert_close(
            &piecewise_logits(&model, &p.ids, &[1]),
            &p.decode_logits,
            1e-4,
            &format!("fp8 decode {i}"),
        );
        let n = p.greedy.len();
        let (tokens, rows) = greedy(&model, &p.ids, n);
        assert_eq!(tokens, p.greedy, "prompt {i} greedy");
        assert_close(&rows, &p.greedy_logits, 1e-4, &format!("fp8 greedy {i}"));
        println!(
            "fp8-tiny prompt {i} ({} tokens): max abs diff {d:.2e}",
            p.ids.len()
        );
    }
}

#[test]
fn fp8_resident_bytes_are_predicted() {
    let (source, config) = WeightSource::open(&fixture_path("fp8-tiny")).unwrap();
    let options = LoadOptions::new(DType::F32, &Device::Cpu);
    let expected = herd_model::inspect::resident_weight_bytes(&source, &config, &options).unwrap();
    let model = TextModel::from_source(&source, config, &options).unwrap();
    assert_eq!(model.weight_bytes() as u64, expected);
}

#[test]
fn broken_fp8_checkpoints_are_named_errors() {
    let copy = |tag: &str| {
        let dir = std::env::temp_dir().join(format!("herd-fp8-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        for entry in std::fs::read_dir(fixture_path("fp8-tiny")).unwrap() {
            let path = entry.unwrap().path();
            std::fs::copy(&path, dir.join(path.file_name().unwrap())).unwrap();
        }
        dir
    };
    // An unsupported quantization method.
    let dir = copy("gptq");
    let config = std::fs::read_to_string(dir.join("config.json")).unwrap();
    std::fs::write(
        dir.join("config.json"),
        config.replace("\"compressed-tensors\"", "\"gptq\""),
    )
    .unwrap();
    let e = TextModel::load(&dir, DType::F32, &Device::Cpu)
        .unwrap_err()
        .to_string();
    assert!(e.contains("gptq") && e.contains("quantization_config"), "{e}");
    // A weight_scale missing: rewrite the shard without it.
    let dir = copy("noscale");
    let index: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("model.safetensors.index.json")).unwrap())
            .unwrap();
    let victim = "language_model.model.layers.1.feed_forward.experts.0.up_proj.weight_scale";
    let shard = dir.join(index["weight_map"][victim].as_str().unwrap());
    let mut tensors = candle_core::safetensors::load(&shard, &Device::Cpu).unwrap();
    tensors.remove(victim);
    candle_core::safetensors::save(&tensors, &shard).unwrap();
    let mut index = index;
    index["weight_map"].as_object_mut().unwrap().remove(victim);
    std::fs::write(dir.join("model.safetensors.index.json"), index.to_string()).unwrap();
    let e = TextModel::load(&dir, DType::F32, &Device::Cpu)
        .unwrap_err()
        .to_string();
    assert!(e.contains(victim), "{e}");
}
