//! Test support: the committed reference fixtures (made by `tools/reference/make_fixtures.py`
//! with transformers) and closeness assertions that say where two tensors first diverge.

use std::collections::HashMap;
use std::path::PathBuf;

use candle_core::{DType, Device, Tensor};

/// The fixture format version these helpers read; `reference.json` must carry the same.
pub const FIXTURE_VERSION: u64 = 1;
const REGENERATE: &str =
    "/work/refenv/bin/python tools/reference/make_fixtures.py (see tools/reference/README.md)";

/// Every text fixture, for parity loops.
pub const TEXT_FIXTURES: [&str; 5] = [
    "scout-tiny",
    "maverick-tiny",
    "guard-tiny",
    "sharded-bf16",
    "chat-tiny",
];

/// `fixtures/` at the repository root.
pub fn fixtures_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../fixtures")
}

/// The checkpoint folder of fixture `name`.
pub fn fixture_path(name: &str) -> PathBuf {
    fixtures_dir().join(name)
}

/// Reference outputs recorded for one fixture.
pub struct Reference {
    pub name: String,
    pub meta: serde_json::Value,
    tensors: HashMap<String, Tensor>,
}

/// One prompt's reference data.
pub struct PromptReference {
    pub ids: Vec<u32>,
    /// [T, V], one full forward pass.
    pub logits: Tensor,
    /// [T, V], ids fed one at a time through the reference KV cache.
    pub decode_logits: Tensor,
    /// 16 greedy tokens after the prompt.
    pub greedy: Vec<u32>,
    /// [16, V], the logits that produced each greedy token.
    pub greedy_logits: Tensor,
}

impl Reference {
    /// Loads `fixtures/{name}/reference.{json,safetensors}`; panics with the regeneration
    /// command when they are missing or of another version.
    pub fn load(name: &str) -> Self {
        let dir = fixture_path(name);
        let meta_text = std::fs::read_to_string(dir.join("reference.json"))
            .unwrap_or_else(|e| panic!("fixture {name}: {e}; regenerate with {REGENERATE}"));
        let meta: serde_json::Value = serde_json::from_str(&meta_text)
            .unwrap_or_else(|e| panic!("fixture {name}: reference.json: {e}"));
        let version = meta["fixture_version"].as_u64();
        assert_eq!(
            version,
            Some(FIXTURE_VERSION),
            "fixture {name} has version {version:?}, tests expect {FIXTURE_VERSION}; regenerate with {REGENERATE}"
        );
        let tensors = candle_core::safetensors::load(dir.join("reference.safetensors"), &Device::Cpu)
            .unwrap_or_else(|e| {
                panic!("fixture {name}: reference.safetensors: {e}; regenerate with {REGENERATE}")
            });
        Reference {
            name: name.to_string(),
            meta,
            tensors,
        }
    }

    pub fn n_prompts(&self) -> usize {
        self.meta["n_prompts"].as_u64().unwrap_or(0) as usize
    }

    pub fn tensor(&self, key: &str) -> Tensor {
        self.tensors
            .get(key)
            .unwrap_or_else(|| panic!("fixture {}: no tensor `{key}`", self.name))
            .clone()
    }

    pub fn try_tensor(&self, key: &str) -> Option<Tensor> {
        self.tensors.get(key).cloned()
    }

    pub fn ids(&self, key: &str) -> Vec<u32> {
        self.tensor(key)
            .to_dtype(DType::I64)
            .and_then(|t| t.to_vec1::<i64>())
            .unwrap_or_else(|e| panic!("fixture {}: `{key}`: {e}", self.name))
            .into_iter()
            .map(|id| u32::try_from(id).unwrap_or_else(|_| panic!("`{key}`: bad id {id}")))
            .collect()
    }

    pub fn prompt(&self, i: usize) -> PromptReference {
        let key = |what: &str| format!("prompt.{i}.{what}");
        PromptReference {
            ids: self.ids(&key("ids")),
            logits: self.tensor(&key("logits")),
            decode_logits: self.tensor(&key("decode_logits")),
            greedy: self.ids(&key("greedy")),
            greedy_logits: self.tensor(&key("greedy_logits")),
        }
    }

    pub fn prompts(&self) -> Vec<PromptReference> {
        (0..self.n_prompts()).map(|i| self.prompt(i)).collect()
    }
}

/// Where two tensors of one shape differ most.
#[derive(Debug, Clone, Copy)]
pub struct Divergence {
    pub max_abs: f32,
    /// Flat index of the largest difference.
    pub at_max: usize,
    /// Flat index of the first element beyond the tolerance, if any.
    pub first_beyond: Option<usize>,
}

/// Compares element-wise in f32; panics on shape mismatch.
pub fn divergence(actual: &Tensor, expected: &Tensor, tol: f32) -> Divergence {
    assert_eq!(actual.dims(), expected.dims(), "shape mismatch");
    let flat = |t: &Tensor| -> Vec<f32> {
        t.to_dtype(DType::F32)
            .and_then(|t| t.flatten_all())
            .and_then(|t| t.to_vec1::<f32>())
            .unwrap_or_else(|e| panic!("tensor to f32: {e}"))
    };
    let (a, e) = (flat(actual), flat(expected));
    let mut d = Divergence {
        max_abs: 0.0,
        at_max: 0,
        first_beyond: None,
    };
    for (i, (x, y)) in a.iter().zip(&e).enumerate() {
        let diff = (x - y).abs();
        let diff = if diff.is_nan() { f32::INFINITY } else { diff };
        if diff > d.max_abs {
            d.max_abs = diff;
            d.at_max = i;
        }
        if diff > tol && d.first_beyond.is_none() {
            d.first_beyond = Some(i);
        }
    }
    d
}

/// Asserts `|actual − expected| ≤ tol` everywhere; on failure names the first divergent
/// (row, column) of a 2-D tensor. Returns the max difference for reporting.
pub fn assert_close(actual: &Tensor, expected: &Tensor, tol: f32, what: &str) -> f32 {
    let d = divergence(actual, expected, tol);
    if let Some(i) = d.first_beyond {
        let cols = expected.dims().last().copied().unwrap_or(1).max(1);
        panic!(
            "{what}: max |Δ| = {:e} > {tol:e}; first divergence at row {}, column {}",
            d.max_abs,
            i / cols,
            i % cols
        );
    }
    d.max_abs
}
