//! A faithful serde mirror of the `config.json` fields herd reads, with transformers'
//! `Llama4TextConfig` defaults. Nothing here is validated; `resolve` does that.
//!
//! Reference: transformers `models/llama4/configuration_llama4.py`. Unknown fields are ignored
//! (real files carry many that do not affect the maths: `torch_dtype`, `architectures`, ...).

use serde::{Deserialize, Deserializer};
use serde_json::Value;

/// `text_config` (or the flat config of a text-only checkpoint).
#[derive(Debug, Clone, Deserialize)]
pub struct RawTextConfig {
    pub model_type: Option<String>,
    #[serde(default = "d::vocab_size")]
    pub vocab_size: usize,
    #[serde(default = "d::hidden_size")]
    pub hidden_size: usize,
    #[serde(default = "d::intermediate_size")]
    pub intermediate_size: usize,
    #[serde(default = "d::intermediate_size_mlp")]
    pub intermediate_size_mlp: usize,
    #[serde(default = "d::num_hidden_layers")]
    pub num_hidden_layers: usize,
    #[serde(default = "d::num_attention_heads")]
    pub num_attention_heads: usize,
    #[serde(default = "d::num_key_value_heads")]
    pub num_key_value_heads: usize,
    /// transformers: `head_dim if head_dim is not None else hidden_size // num_attention_heads`,
    /// with a constructor default of 128.
    #[serde(default = "d::head_dim")]
    pub head_dim: Option<usize>,
    #[serde(default = "d::hidden_act")]
    pub hidden_act: String,
    #[serde(default = "d::max_position_embeddings")]
    pub max_position_embeddings: usize,
    #[serde(default = "d::rms_norm_eps")]
    pub rms_norm_eps: f64,
    pub pad_token_id: Option<i64>,
    #[serde(default = "d::bos_token_id")]
    pub bos_token_id: Option<i64>,
    /// An int or a list of ints.
    #[serde(default = "d::eos_token_id")]
    pub eos_token_id: Option<TokenIds>,
    #[serde(default)]
    pub tie_word_embeddings: bool,
    /// transformers 4.x spelling; 5.x moves it inside `rope_parameters`.
    pub rope_theta: Option<f64>,
    /// transformers 4.x spelling of the rope scaling block.
    pub rope_scaling: Option<Value>,
    /// transformers 5.x spelling: `{rope_type, rope_theta, factor, ...}`.
    pub rope_parameters: Option<Value>,
    #[serde(default)]
    pub attention_bias: bool,
    #[serde(default = "d::num_experts_per_tok")]
    pub num_experts_per_tok: usize,
    #[serde(default = "d::num_local_experts")]
    pub num_local_experts: usize,
    pub moe_layers: Option<Vec<usize>>,
    #[serde(default = "d::interleave_moe_layer_step")]
    pub interleave_moe_layer_step: usize,
    #[serde(default = "d::use_qk_norm")]
    pub use_qk_norm: bool,
    /// One entry per layer, 1 = the layer uses RoPE. Empty or absent: derived from the interval.
    pub no_rope_layers: Option<Vec<i64>>,
    #[serde(default = "d::no_rope_layer_interval")]
    pub no_rope_layer_interval: usize,
    /// Absent: 8192. Explicit `null`: no chunking anywhere.
    #[serde(default = "d::attention_chunk_size", deserialize_with = "explicit_null")]
    pub attention_chunk_size: Option<Option<usize>>,
    /// Published Scout base config holds an int (4) here; any non-zero number means on.
    #[serde(default = "d::attn_temperature_tuning")]
    pub attn_temperature_tuning: Value,
    #[serde(default = "d::floor_scale")]
    pub floor_scale: f64,
    #[serde(default = "d::attn_scale")]
    pub attn_scale: f64,
    /// Derived by transformers from the fields above; cross-checked when present.
    pub layer_types: Option<Vec<String>>,
}

/// `eos_token_id` appears both as an int and as a list of ints.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum TokenIds {
    One(i64),
    Many(Vec<i64>),
}

impl TokenIds {
    pub fn to_vec(&self) -> Vec<i64> {
        match self {
            TokenIds::One(id) => vec![*id],
            TokenIds::Many(ids) => ids.clone(),
        }
    }
}

/// Tells an absent field (outer `None`, filled by the default) from an explicit `null`
/// (`Some(None)`).
fn explicit_null<'de, D: Deserializer<'de>>(de: D) -> Result<Option<Option<usize>>, D::Error> {
    Option::<usize>::deserialize(de).map(Some)
}

/// transformers' `Llama4TextConfig.__init__` defaults (= Scout).
mod d {
    use serde_json::Value;

    pub fn vocab_size() -> usize {
        202048
    }
    pub fn hidden_size() -> usize {
        5120
    }
    pub fn intermediate_size() -> usize {
        8192
    }
    pub fn intermediate_size_mlp() -> usize {
        16384
    }
    pub fn num_hidden_layers() -> usize {
        48
    }
    pub fn num_attention_heads() -> usize {
        40
    }
    pub fn num_key_value_heads() -> usize {
        8
    }
    pub fn head_dim() -> Option<usize> {
        Some(128)
    }
    pub fn hidden_act() -> String {
        "silu".into()
    }
    pub fn max_position_embeddings() -> usize {
        4096 * 32
    }
    pub fn rms_norm_eps() -> f64 {
        1e-5
    }
    pub fn bos_token_id() -> Option<i64> {
        Some(1)
    }
    pub fn eos_token_id() -> Option<super::TokenIds> {
        Some(super::TokenIds::One(2))
    }
    pub fn num_experts_per_tok() -> usize {
        1
    }
    pub fn num_local_experts() -> usize {
        16
    }
    pub fn interleave_moe_layer_step() -> usize {
        1
    }
    pub fn use_qk_norm() -> bool {
        true
    }
    pub fn no_rope_layer_interval() -> usize {
        4
    }
    pub fn attention_chunk_size() -> Option<Option<usize>> {
        Some(Some(8192))
    }
    pub fn attn_temperature_tuning() -> Value {
        Value::Bool(true)
    }
    pub fn floor_scale() -> f64 {
        8192.0
    }
    pub fn attn_scale() -> f64 {
        0.1
    }
}
