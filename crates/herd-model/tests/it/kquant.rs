//! herd's k-quant quantizers against llama.cpp's: gguf-tiny's Q4_K_M and Q6_K files were written
//! by `llama-quantize` (no importance matrix) from model-bf16.gguf, so quantizing the same bf16
//! values with herd must give the same bytes, block for block.

use candle_core::DType;
use herd_model::weights::gguf::GgufFile;
use herd_model::weights::{QuantTensor, QuantType, Stored};
use herd_testkit::fixture_path;

/// Quantizes every k-quant tensor of `quantized` from `model-bf16.gguf`'s values and compares
/// bytes; returns (tensors, blocks) per type that matched, panicking on any differing block.
fn check_file(quantized: &str) -> Vec<(QuantType, usize, usize)> {
    let dir = fixture_path("gguf-tiny");
    let bf16 = GgufFile::open(&dir.join("model-bf16.gguf")).unwrap();
    let file = GgufFile::open(&dir.join(quantized)).unwrap();
    let mut counts: Vec<(QuantType, usize, usize)> = Vec::new();
    let mut mismatches = Vec::new();
    for (name, info) in file.tensors() {
        let Some(ty) = QuantType::from_ggml_type_id(info.ggml_type) else {
            continue;
        };
        if !matches!(ty, QuantType::Q4K | QuantType::Q5K | QuantType::Q6K) {
            continue;
        }
        let Stored::Quantized(theirs) = file.read(name).unwrap() else {
            panic!("{name}: not quantized");
        };
        let Stored::Dense(dense) = bf16.read(name).unwrap() else {
            panic!("{name}: not dense in the bf16 file");
        };
        let values = dense
            .to_dtype(DType::F32)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        let (rows, cols) = (theirs.rows(), theirs.cols());
        let ours = QuantTensor::quantize(ty, rows, cols, &values, name).unwrap();
        let bb = ty.block_bytes();
        let n_blocks = theirs.bytes().len() / bb;
        let same = ours
            .bytes()
            .chunks_exact(bb)
            .zip(theirs.bytes().chunks_exact(bb))
            .filter(|(a, b)| a == b)
            .count();
        if same != n_blocks {
            mismatches.push(format!("{name} ({ty}): {same} of {n_blocks} blocks equal"));
        }
        match counts.iter_mut().find(|c| c.0 == ty) {
            Some(c) => {
                c.1 += 1;
                c.2 += same;
            }
            None => counts.push((ty, 1, same)),
        }
    }
    for (ty, tensors, blocks) in &counts {
        println!("{quantized}: {ty}: {tensors} tensors, {blocks} blocks byte-identical to llama-quantize");
    }
    assert!(mismatches.is_empty(), "{quantized}: {mismatches:#?}");
    assert!(!counts.is_empty(), "{quantized}: no k-quant tensors");
    counts
}

#[test]
fn q4_k_m_bytes_equal_llama_quantize() {
    let counts = check_file("model-q4_k_m.gguf");
    assert!(counts.iter().any(|c| c.0 == QuantType::Q4K));
}

#[test]
fn q6_k_bytes_equal_llama_quantize() {
    let counts = check_file("model-q6_k.gguf");
    assert!(counts.iter().any(|c| c.0 == QuantType::Q6K));
}
