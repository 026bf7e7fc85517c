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

#[test]
fn quantizing_across_threads_writes_the_bytes_of_row_at_a_time_quantization() {
    // 700 rows of 256 values are several tasks of whole rows (the last one short): the bytes
    // must be those of quantizing each row alone, for every format.
    let (rows, cols) = (700, 256);
    let values: Vec<f32> = (0..rows * cols)
        .map(|i| ((i * 2_654_435_761usize) % 10_007) as f32 / 5003.0 - 1.0)
        .collect();
    for ty in [
        QuantType::Q8_0,
        QuantType::Q4_0,
        QuantType::Q4K,
        QuantType::Q5K,
        QuantType::Q6K,
    ] {
        let whole = QuantTensor::quantize(ty, rows, cols, &values, "w").unwrap();
        let by_row: Vec<u8> = values
            .chunks_exact(cols)
            .flat_map(|row| {
                QuantTensor::quantize(ty, 1, cols, row, "w")
                    .unwrap()
                    .bytes()
                    .to_vec()
            })
            .collect();
        assert_eq!(whole.bytes(), &by_row[..], "{ty}");
        // Mutation twin: one value changed changes only its own row's bytes.
        let mut moved = values.clone();
        moved[(rows - 1) * cols + 5] += 0.5;
        let changed = QuantTensor::quantize(ty, rows, cols, &moved, "w").unwrap();
        let row_bytes = by_row.len() / rows;
        let split = (rows - 1) * row_bytes;
        assert_eq!(changed.bytes()[..split], whole.bytes()[..split], "{ty}");
        assert_ne!(changed.bytes()[split..], whole.bytes()[split..], "{ty}");
    }
}
