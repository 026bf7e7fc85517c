//! herd-model's one integration-test binary (linking is the slow part on two cores).

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests may panic: that is how they fail

mod amx;
mod batch;
mod causal_attention;
mod checkpoint_errors;
mod config;
mod device_routing;
mod dtypes;
mod fp8;
mod full_attention;
mod gguf;
mod gguf_parity;
mod heap;
mod hostile;
mod kquant;
mod kv_dtype;
mod kv_q8;
mod long_context;
mod matmul_precision;
mod mutations;
mod ops;
mod parity;
mod quant_gemm;
mod row_split;
mod transposed;
mod vision;
mod weights;

use candle_core::{DType, Device, Tensor};
use herd_model::{KvCache, LogitsFor, TextModel};

/// Copies a fixture's files into a fresh temporary folder (`tag` keeps tests apart).
pub fn copy_fixture(name: &str, tag: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("herd-test-{name}-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    for entry in std::fs::read_dir(herd_testkit::fixture_path(name)).unwrap() {
        let path = entry.unwrap().path();
        std::fs::copy(&path, dir.join(path.file_name().unwrap())).unwrap();
    }
    dir
}

/// Where the parity suite runs: the CPU, or the GPU with `HERD_TEST_DEVICE=cuda` (or `cuda:N`)
/// in a build with the `cuda` feature (tools/cuda/check.sh runs it so on the GPU machine).
pub fn test_device() -> Device {
    match std::env::var("HERD_TEST_DEVICE").as_deref() {
        Err(_) | Ok("" | "cpu") => Device::Cpu,
        Ok(d) => {
            let ordinal = match d.strip_prefix("cuda:") {
                Some(n) => n.parse().expect("HERD_TEST_DEVICE=cuda:N"),
                None if d == "cuda" => 0,
                None => panic!("HERD_TEST_DEVICE={d}: expected cpu, cuda or cuda:N"),
            };
            herd_model::device::cuda_device(ordinal)
                .expect("HERD_TEST_DEVICE asks for a GPU this build or machine lacks")
        }
    }
}

pub fn load_fixture(name: &str, dtype: DType) -> TextModel {
    TextModel::load(&herd_testkit::fixture_path(name), dtype, &test_device())
        .unwrap_or_else(|e| panic!("loading fixture {name}: {e}"))
}

/// Logits at every position of one full pass, [T, V].
pub fn full_logits(model: &TextModel, ids: &[u32]) -> Tensor {
    let mut cache = model.new_cache();
    model.forward(ids, &mut cache, LogitsFor::All).expect("forward")
}

/// Feeds `ids` in pieces of the given sizes (cycled) and stacks the logits, [T, V].
pub fn piecewise_logits(model: &TextModel, ids: &[u32], piece_sizes: &[usize]) -> Tensor {
    let mut cache: KvCache = model.new_cache();
    let mut rows = Vec::new();
    let mut start = 0;
    for &size in piece_sizes.iter().cycle() {
        if start >= ids.len() {
            break;
        }
        let end = (start + size).min(ids.len());
        rows.push(
            model
                .forward(&ids[start..end], &mut cache, LogitsFor::All)
                .expect("forward"),
        );
        start = end;
    }
    Tensor::cat(&rows, 0).expect("cat")
}

/// Greedy continuation of `ids` with the logits that chose each token.
pub fn greedy(model: &TextModel, ids: &[u32], n: usize) -> (Vec<u32>, Tensor) {
    let mut cache = model.new_cache();
    let mut logits = model.forward(ids, &mut cache, LogitsFor::Last).expect("prefill");
    let mut tokens = Vec::new();
    let mut rows = Vec::new();
    for _ in 0..n {
        let next = logits.argmax(1).expect("argmax").to_vec1::<u32>().expect("ids")[0];
        tokens.push(next);
        rows.push(logits.clone());
        logits = model
            .forward(&[next], &mut cache, LogitsFor::Last)
            .expect("decode");
    }
    (tokens, Tensor::cat(&rows, 0).expect("cat"))
}
