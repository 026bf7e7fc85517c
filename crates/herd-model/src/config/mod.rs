//! Parse, then resolve: `config.json` → [`raw::RawTextConfig`] (serde mirror with transformers'
//! defaults) → [`ModelConfig`], validated, with one [`LayerPlan`] per layer. Forward code matches
//! on the plan and never does arithmetic on a layer index.
//!
//! Every encoding seen in the wild resolves here (LLAMA4.md §1, §10): nested `text_config` or
//! flat; `moe_layers` explicit, derived from `interleave_moe_layer_step`, or step 0 (all dense);
//! `no_rope_layers` explicit, empty or absent (derived from `no_rope_layer_interval`);
//! `attention_chunk_size` absent (8192) or `null` (no chunking); `attn_temperature_tuning` as a
//! bool or an int; `eos_token_id` as an int or a list; `rope_scaling` (transformers 4.x) or
//! `rope_parameters` (5.x).

pub mod raw;
mod rope;

use std::path::Path;

use serde_json::Value;

pub use self::rope::{Llama3Scaling, RopeConfig};
use crate::error::{Error, Result};
use raw::RawTextConfig;

/// How a layer attends (LLAMA4.md §3, "iRoPE").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AttentionKind {
    /// RoPE, attending only within absolute-aligned blocks of `chunk_len` positions.
    LocalRope { chunk_len: usize },
    /// RoPE over the whole causal history (`attention_chunk_size: null`).
    GlobalRope,
    /// No positional encoding, whole causal history, temperature-tuned queries.
    GlobalNope,
}

impl AttentionKind {
    pub fn uses_rope(self) -> bool {
        !matches!(self, AttentionKind::GlobalNope)
    }

    pub fn chunk_len(self) -> Option<usize> {
        match self {
            AttentionKind::LocalRope { chunk_len } => Some(chunk_len),
            _ => None,
        }
    }
}

/// The feed-forward block of a layer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FeedForwardKind {
    /// SwiGLU of width `intermediate_size_mlp`.
    Dense { width: usize },
    /// Routed experts (width `intermediate_size`) plus a shared expert of the same width.
    Moe {
        n_experts: usize,
        top_k: usize,
        width: usize,
    },
}

/// Everything the forward pass needs to know about one decoder layer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LayerPlan {
    pub attention: AttentionKind,
    /// Parameter-free RMS norm of q and k after RoPE (only ever on RoPE layers).
    pub uses_qk_norm: bool,
    /// Query temperature tuning (only ever on NoPE layers).
    pub temperature_tuning: Option<TemperatureTuning>,
    pub feed_forward: FeedForwardKind,
}

/// `q ← q · (1 + attn_scale · ln(1 + floor((pos + 1) / floor_scale)))` on NoPE layers.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TemperatureTuning {
    pub floor_scale: f64,
    pub attn_scale: f64,
}

impl Eq for TemperatureTuning {}

impl TemperatureTuning {
    /// The query scale at absolute position `pos`, computed in f32 as transformers does.
    pub fn scale(&self, pos: usize) -> f32 {
        let floored = ((pos as f32 + 1.0) / self.floor_scale as f32).floor();
        floored.ln_1p() * self.attn_scale as f32 + 1.0
    }
}

/// How q/k head vectors are paired for rotation. Llama 4 pairs adjacent elements (its complex
/// multiplication); Llama 2/3 in HF layout rotate the two halves. The second exists so tests can
/// prove the parity suite notices the difference.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RopePairing {
    Interleaved,
    Halves,
}

/// How router logits become expert weights, and where the weight is applied. Llama 4: sigmoid
/// of the top-k logits, scaling the expert's input. Mixtral-style models use a softmax and scale
/// the output; tests use those to prove the parity suite notices the difference.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Routing {
    pub scoring: RouterScoring,
    pub score_at: ScoreAt,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RouterScoring {
    Sigmoid,
    Softmax,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ScoreAt {
    ExpertInput,
    ExpertOutput,
}

/// Ceilings on config values, far above every Llama 4 model (Maverick: 48 layers, 5120 wide,
/// 128 experts, vocab 202048, 1M positions) and far below what would overflow a size or
/// exhaust memory before the checkpoint is even read.
const MAX_LAYERS: usize = 1 << 12;
const MAX_WIDTH: usize = 1 << 20;
const MAX_HEADS: usize = 1 << 12;
const MAX_VOCAB: usize = 1 << 24;
const MAX_EXPERTS: usize = 1 << 14;
const MAX_POSITIONS: usize = 1 << 32;
/// 17.6T parameters: every byte count derived from a config stays far from u64's end.
const MAX_PARAMS: u64 = 1 << 44;

/// The validated text-model configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelConfig {
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub n_heads: usize,
    pub n_kv_heads: usize,
    pub head_dim: usize,
    pub rms_norm_eps: f64,
    pub max_position_embeddings: usize,
    pub rope: RopeConfig,
    pub rope_pairing: RopePairing,
    pub routing: Routing,
    pub tie_word_embeddings: bool,
    pub bos_token_id: Option<u32>,
    /// Every id in `eos_token_id`: generation stops on any of them.
    pub eos_token_ids: Vec<u32>,
    pub pad_token_id: Option<u32>,
    pub layers: Vec<LayerPlan>,
}

impl ModelConfig {
    /// Reads and resolves `dir/config.json`.
    pub fn load(dir: &Path) -> Result<Self> {
        Self::from_json(&crate::json_file::read_json(&dir.join("config.json"))?)
    }

    /// Resolves a parsed `config.json` (nested or flat).
    pub fn from_json(value: &Value) -> Result<Self> {
        let top_type = value.get("model_type").and_then(Value::as_str);
        let (text, prefix) = match value.get("text_config") {
            Some(text) if !text.is_null() => {
                if let Some(t) = top_type.filter(|t| *t != "llama4") {
                    return Err(Error::config(
                        "model_type",
                        format!("`{t}` is not a Llama 4 model (expected `llama4`)"),
                    ));
                }
                (text, "text_config.")
            }
            _ => (value, ""),
        };
        let raw: RawTextConfig = serde_path_to_error::deserialize(text.clone()).map_err(|e| {
            let field = e.path().to_string();
            let field = if field == "." {
                prefix.trim_end_matches('.').to_string()
            } else {
                format!("{prefix}{field}")
            };
            Error::config(
                if field.is_empty() {
                    "config".to_string()
                } else {
                    field
                },
                e.into_inner().to_string(),
            )
        })?;
        resolve(&raw)
    }

    pub fn n_layers(&self) -> usize {
        self.layers.len()
    }

    /// Query heads per KV head.
    pub fn group_size(&self) -> usize {
        self.n_heads / self.n_kv_heads
    }
}

fn resolve(raw: &RawTextConfig) -> Result<ModelConfig> {
    if let Some(t) = raw.model_type.as_deref() {
        if t != "llama4_text" && t != "llama4" {
            return Err(Error::config(
                "model_type",
                format!("`{t}` is not a Llama 4 text model (expected `llama4_text`)"),
            ));
        }
    }
    let positive = [
        ("vocab_size", raw.vocab_size),
        ("hidden_size", raw.hidden_size),
        ("num_hidden_layers", raw.num_hidden_layers),
        ("num_attention_heads", raw.num_attention_heads),
        ("num_key_value_heads", raw.num_key_value_heads),
        ("max_position_embeddings", raw.max_position_embeddings),
    ];
    for (field, v) in positive {
        if v == 0 {
            return Err(Error::config(field, "must be positive"));
        }
    }
    for (field, v, max) in [
        ("vocab_size", raw.vocab_size, MAX_VOCAB),
        ("hidden_size", raw.hidden_size, MAX_WIDTH),
        ("intermediate_size", raw.intermediate_size, MAX_WIDTH),
        ("intermediate_size_mlp", raw.intermediate_size_mlp, MAX_WIDTH),
        ("num_hidden_layers", raw.num_hidden_layers, MAX_LAYERS),
        ("num_attention_heads", raw.num_attention_heads, MAX_HEADS),
        ("num_key_value_heads", raw.num_key_value_heads, MAX_HEADS),
        ("head_dim", raw.head_dim.unwrap_or(0), MAX_WIDTH),
        ("num_local_experts", raw.num_local_experts, MAX_EXPERTS),
        ("num_experts_per_tok", raw.num_experts_per_tok, MAX_EXPERTS),
        (
            "max_position_embeddings",
            raw.max_position_embeddings,
            MAX_POSITIONS,
        ),
    ] {
        if v > max {
            return Err(Error::config(
                field,
                format!("{v} is beyond any model herd can run (at most {max})"),
            ));
        }
    }
    if !raw.num_attention_heads.is_multiple_of(raw.num_key_value_heads) {
        return Err(Error::config(
            "num_key_value_heads",
            format!(
                "{} query heads cannot be grouped over {} KV heads",
                raw.num_attention_heads, raw.num_key_value_heads
            ),
        ));
    }
    let head_dim = raw.head_dim.unwrap_or(raw.hidden_size / raw.num_attention_heads);
    if head_dim == 0 || !head_dim.is_multiple_of(2) {
        return Err(Error::config(
            "head_dim",
            format!("{head_dim} must be even and positive (RoPE rotates pairs)"),
        ));
    }
    if raw.hidden_act != "silu" {
        return Err(Error::config(
            "hidden_act",
            format!("`{}` is not supported (Llama 4 uses `silu`)", raw.hidden_act),
        ));
    }
    if raw.attention_bias {
        return Err(Error::config(
            "attention_bias",
            "true is not supported (no Llama 4 checkpoint has attention biases)",
        ));
    }
    if !(raw.rms_norm_eps.is_finite() && raw.rms_norm_eps > 0.0) {
        return Err(Error::config("rms_norm_eps", "must be a positive number"));
    }

    let n_layers = raw.num_hidden_layers;
    let rope = RopeConfig::resolve(raw)?;
    let uses_rope = resolve_rope_layers(raw, n_layers)?;
    let moe = resolve_moe_layers(raw, n_layers)?;
    let chunk_len = match raw.attention_chunk_size {
        Some(Some(0)) => return Err(Error::config("attention_chunk_size", "must be positive")),
        Some(c) => c,
        None => None,
    };
    let temperature_tuning = resolve_temperature_tuning(raw)?;

    let layers: Vec<LayerPlan> = (0..n_layers)
        .map(|i| {
            let attention = match (uses_rope[i], chunk_len) {
                (true, Some(chunk_len)) => AttentionKind::LocalRope { chunk_len },
                (true, None) => AttentionKind::GlobalRope,
                (false, _) => AttentionKind::GlobalNope,
            };
            let feed_forward = if moe[i] {
                FeedForwardKind::Moe {
                    n_experts: raw.num_local_experts,
                    top_k: raw.num_experts_per_tok,
                    width: raw.intermediate_size,
                }
            } else {
                FeedForwardKind::Dense {
                    width: raw.intermediate_size_mlp,
                }
            };
            LayerPlan {
                attention,
                uses_qk_norm: raw.use_qk_norm && attention.uses_rope(),
                temperature_tuning: temperature_tuning.filter(|_| !attention.uses_rope()),
                feed_forward,
            }
        })
        .collect();
    check_layer_types(raw, &layers)?;

    let token = |field: &str, id: i64| -> Result<u32> {
        u32::try_from(id).map_err(|_| Error::config(field, format!("{id} is not a token id")))
    };
    let eos_token_ids = match &raw.eos_token_id {
        Some(ids) => ids
            .to_vec()
            .into_iter()
            .map(|id| token("eos_token_id", id))
            .collect::<Result<_>>()?,
        None => Vec::new(),
    };
    let config = ModelConfig {
        vocab_size: raw.vocab_size,
        hidden_size: raw.hidden_size,
        n_heads: raw.num_attention_heads,
        n_kv_heads: raw.num_key_value_heads,
        head_dim,
        rms_norm_eps: raw.rms_norm_eps,
        max_position_embeddings: raw.max_position_embeddings,
        rope,
        rope_pairing: RopePairing::Interleaved,
        routing: Routing {
            scoring: RouterScoring::Sigmoid,
            score_at: ScoreAt::ExpertInput,
        },
        tie_word_embeddings: raw.tie_word_embeddings,
        bos_token_id: raw.bos_token_id.map(|id| token("bos_token_id", id)).transpose()?,
        eos_token_ids,
        pad_token_id: raw.pad_token_id.map(|id| token("pad_token_id", id)).transpose()?,
        layers,
    };
    let params = crate::inspect::param_counts(&config).total;
    if params > MAX_PARAMS {
        return Err(Error::config(
            "config",
            format!(
                "its sizes (layers × widths × experts × vocabulary) describe {params} parameters, \
                 beyond any model herd can run (at most {MAX_PARAMS})"
            ),
        ));
    }
    Ok(config)
}

/// `no_rope_layers[i] == 1` means layer i USES RoPE (the name is misleading). An empty or
/// absent list is derived from the interval, as transformers' `if self.no_rope_layers` does.
fn resolve_rope_layers(raw: &RawTextConfig, n_layers: usize) -> Result<Vec<bool>> {
    match raw.no_rope_layers.as_deref() {
        Some(list) if !list.is_empty() => {
            if list.len() != n_layers {
                return Err(Error::config(
                    "no_rope_layers",
                    format!("has {} entries for {n_layers} layers", list.len()),
                ));
            }
            list.iter()
                .map(|&v| match v {
                    0 => Ok(false),
                    1 => Ok(true),
                    other => Err(Error::config(
                        "no_rope_layers",
                        format!("entries must be 0 or 1, found {other}"),
                    )),
                })
                .collect()
        }
        _ => {
            let interval = raw.no_rope_layer_interval;
            if interval == 0 {
                return Err(Error::config("no_rope_layer_interval", "must be positive"));
            }
            Ok((0..n_layers).map(|i| (i + 1) % interval != 0).collect())
        }
    }
}

/// Explicit `moe_layers` wins; otherwise `range(step - 1, L, step)`; step 0 means no MoE layer
/// (Llama Guard 4 as converted by transformers).
fn resolve_moe_layers(raw: &RawTextConfig, n_layers: usize) -> Result<Vec<bool>> {
    let mut moe = vec![false; n_layers];
    match &raw.moe_layers {
        Some(list) => {
            for &i in list {
                let slot = moe.get_mut(i).ok_or_else(|| {
                    Error::config(
                        "moe_layers",
                        format!("layer {i} does not exist (the model has {n_layers} layers)"),
                    )
                })?;
                *slot = true;
            }
        }
        None => {
            let step = raw.interleave_moe_layer_step;
            if step > 0 {
                for slot in moe.iter_mut().skip(step - 1).step_by(step) {
                    *slot = true;
                }
            }
        }
    }
    if moe.iter().any(|&m| m) {
        if raw.num_local_experts == 0 {
            return Err(Error::config(
                "num_local_experts",
                "is 0 but the config has MoE layers (moe_layers / interleave_moe_layer_step)",
            ));
        }
        if raw.num_experts_per_tok == 0 || raw.num_experts_per_tok > raw.num_local_experts {
            return Err(Error::config(
                "num_experts_per_tok",
                format!(
                    "{} must be between 1 and num_local_experts ({})",
                    raw.num_experts_per_tok, raw.num_local_experts
                ),
            ));
        }
        if raw.intermediate_size == 0 {
            return Err(Error::config("intermediate_size", "must be positive"));
        }
    }
    if moe.iter().any(|&m| !m) && raw.intermediate_size_mlp == 0 {
        return Err(Error::config("intermediate_size_mlp", "must be positive"));
    }
    Ok(moe)
}

/// A bool, or an int where any non-zero value means on (published Scout base config: `4`).
fn resolve_temperature_tuning(raw: &RawTextConfig) -> Result<Option<TemperatureTuning>> {
    let on = match &raw.attn_temperature_tuning {
        Value::Bool(b) => *b,
        Value::Number(n) => n.as_f64().is_some_and(|v| v != 0.0),
        Value::Null => false,
        other => {
            return Err(Error::config(
                "attn_temperature_tuning",
                format!("expected a bool or a number, found {other}"),
            ))
        }
    };
    if !on {
        return Ok(None);
    }
    if !(raw.floor_scale.is_finite() && raw.floor_scale > 0.0) {
        return Err(Error::config("floor_scale", "must be a positive number"));
    }
    if !raw.attn_scale.is_finite() {
        return Err(Error::config("attn_scale", "must be a finite number"));
    }
    Ok(Some(TemperatureTuning {
        floor_scale: raw.floor_scale,
        attn_scale: raw.attn_scale,
    }))
}

/// transformers writes `layer_types` derived from the other fields; a hand-edited file could
/// contradict them, and silently picking one would compute a different model.
fn check_layer_types(raw: &RawTextConfig, layers: &[LayerPlan]) -> Result<()> {
    let Some(types) = &raw.layer_types else {
        return Ok(());
    };
    if types.len() != layers.len() {
        return Err(Error::config(
            "layer_types",
            format!("has {} entries for {} layers", types.len(), layers.len()),
        ));
    }
    // transformers 4.57 labels every RoPE layer `chunked_attention` even when the chunk size is
    // null, so only a contradiction in kind (RoPE vs NoPE, chunked vs not) is an error.
    for (i, (t, plan)) in types.iter().zip(layers).enumerate() {
        let consistent = match (t.as_str(), plan.attention) {
            ("chunked_attention", AttentionKind::GlobalNope) => false,
            ("chunked_attention", _) => true,
            ("full_attention", AttentionKind::LocalRope { .. }) => false,
            ("full_attention", _) => true,
            (other, _) => {
                return Err(Error::config(
                    "layer_types",
                    format!("layer {i}: unknown layer type `{other}`"),
                ))
            }
        };
        if !consistent {
            return Err(Error::config(
                "layer_types",
                format!(
                    "layer {i} is `{t}` but no_rope_layers / attention_chunk_size make it {:?}",
                    plan.attention
                ),
            ));
        }
    }
    Ok(())
}
