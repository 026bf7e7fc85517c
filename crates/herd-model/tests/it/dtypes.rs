//! Checkpoints stored as f16 and bf16 stay in that format in memory and compute, with f32
//! activations, the logits of their f32 twin holding the same (rounded) values: widening is
//! exact, only the summation order differs.

use std::collections::HashMap;

use candle_core::{DType, Device, Tensor};
use herd_model::TextModel;
use herd_testkit::{assert_close, fixture_path, Reference};

use crate::full_logits;

/// Writes scout-tiny's weights rounded to `stored` (saved as `stored`, and as f32 of the
/// same values) into two temporary checkpoint folders.
fn rounded_copies(stored: DType) -> (std::path::PathBuf, std::path::PathBuf) {
    let src = fixture_path("scout-tiny");
    let tensors = candle_core::safetensors::load(src.join("model.safetensors"), &Device::Cpu).unwrap();
    let mut folders = Vec::new();
    for (tag, dtype) in [("stored", stored), ("f32", DType::F32)] {
        let dir = std::env::temp_dir().join(format!("herd-test-{stored:?}-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir); // a leftover of a run with this pid
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::copy(src.join("config.json"), dir.join("config.json")).unwrap();
        let converted: HashMap<String, Tensor> = tensors
            .iter()
            .map(|(k, t)| (k.clone(), t.to_dtype(stored).unwrap().to_dtype(dtype).unwrap()))
            .collect();
        candle_core::safetensors::save(&converted, dir.join("model.safetensors")).unwrap();
        folders.push(dir);
    }
    (folders.remove(0), folders.remove(0))
}

#[test]
fn f16_and_bf16_checkpoints_compute_what_their_upcast_twins_compute() {
    let reference = Reference::load("scout-tiny");
    let ids = reference.prompt(0).ids;
    for stored in [DType::F16, DType::BF16] {
        let (narrow, wide) = rounded_copies(stored);
        let a = TextModel::load(&narrow, DType::F32, &Device::Cpu).unwrap();
        let b = TextModel::load(&wide, DType::F32, &Device::Cpu).unwrap();
        let d = assert_close(
            &full_logits(&a, &ids),
            &full_logits(&b, &ids),
            1e-6,
            &format!("{stored:?}"),
        );
        println!("{stored:?} stored vs f32 twin: max abs diff {d:.2e}");
        assert!(
            a.weight_bytes() * 10 < b.weight_bytes() * 6,
            "{stored:?} weights are kept at 2 bytes"
        );
    }
}
