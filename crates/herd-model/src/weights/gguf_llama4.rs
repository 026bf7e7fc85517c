//! What a `llama4` GGUF means, in Hugging Face terms: tensor names mapped both ways, and a
//! `config.json` rebuilt from the `llama4.*` metadata so a GGUF resolves through the same
//! `ModelConfig` as a safetensors folder.
//!
//! GGUF cannot express everything a config.json can. Where it is silent herd applies
//! llama.cpp's conventions for `llama4` (`src/llama-model.cpp`, `LLM_ARCH_LLAMA4`):
//! chunked attention of 8192 on RoPE layers (none when `llama4.attention.sliding_window` is 0,
//! as Llama Guard 4 is converted), a NoPE global layer every 4th layer, attention temperature
//! tuning with floor 8192 and scale 0.1, QK-norm unless the model has 128 experts (Maverick),
//! sigmoid top-k routing with the score on the expert input.

// Parses untrusted bytes: no unchecked indexing or arithmetic (a bad header must not panic).
#![deny(clippy::indexing_slicing, clippy::arithmetic_side_effects)]

use serde_json::{json, Map, Value as Json};

use super::gguf::{GgufFile, Value};
use crate::error::{Error, Result};

pub const ARCH: &str = "llama4";
/// The prefix herd uses for GGUF tensors' Hugging Face names.
pub const TEXT_PREFIX: &str = "model.";
pub const LM_HEAD: &str = "lm_head.weight";

/// llama.cpp's fixed values for `llama4` (see the module docs).
pub const CHUNK_LEN: usize = 8192;
pub const NOPE_INTERVAL: usize = 4;
pub const TEMPERATURE_FLOOR: f64 = 8192.0;
pub const TEMPERATURE_SCALE: f64 = 0.1;

/// `(Hugging Face suffix after "layers.N.", GGUF suffix after "blk.N.")`.
const LAYER_NAMES: [(&str, &str); 15] = [
    ("input_layernorm.weight", "attn_norm.weight"),
    ("post_attention_layernorm.weight", "ffn_norm.weight"),
    ("self_attn.q_proj.weight", "attn_q.weight"),
    ("self_attn.k_proj.weight", "attn_k.weight"),
    ("self_attn.v_proj.weight", "attn_v.weight"),
    ("self_attn.o_proj.weight", "attn_output.weight"),
    ("feed_forward.gate_proj.weight", "ffn_gate.weight"),
    ("feed_forward.up_proj.weight", "ffn_up.weight"),
    ("feed_forward.down_proj.weight", "ffn_down.weight"),
    ("feed_forward.router.weight", "ffn_gate_inp.weight"),
    (
        "feed_forward.shared_expert.gate_proj.weight",
        "ffn_gate_shexp.weight",
    ),
    ("feed_forward.shared_expert.up_proj.weight", "ffn_up_shexp.weight"),
    (
        "feed_forward.shared_expert.down_proj.weight",
        "ffn_down_shexp.weight",
    ),
    // The routed experts, stacked [E, out, in] (one GGUF tensor per projection).
    ("feed_forward.experts.gate_proj", "ffn_gate_exps.weight"),
    ("feed_forward.experts.up_proj", "ffn_up_exps.weight"),
];
const DOWN_EXPS: (&str, &str) = ("feed_forward.experts.down_proj", "ffn_down_exps.weight");

const GLOBAL_NAMES: [(&str, &str); 3] = [
    ("embed_tokens.weight", "token_embd.weight"),
    ("norm.weight", "output_norm.weight"),
    ("lm_head.weight", "output.weight"),
];

/// The GGUF name of a Hugging Face text tensor name (with or without `model.`).
pub fn gguf_name(hf: &str) -> Option<String> {
    // Both Hugging Face layouts: `model.*` / `lm_head.weight` and the multimodal
    // `language_model.model.*` / `language_model.lm_head.weight`.
    let name = hf.strip_prefix("language_model.").unwrap_or(hf);
    let name = name.strip_prefix(TEXT_PREFIX).unwrap_or(name);
    if let Some(&(_, g)) = GLOBAL_NAMES.iter().find(|(h, _)| *h == name) {
        return Some(g.to_string());
    }
    let rest = name.strip_prefix("layers.")?;
    let (layer, suffix) = rest.split_once('.')?;
    let layer: usize = layer.parse().ok()?;
    LAYER_NAMES
        .iter()
        .chain(std::iter::once(&DOWN_EXPS))
        .find(|(h, _)| *h == suffix)
        .map(|(_, g)| format!("blk.{layer}.{g}"))
}

/// The Hugging Face name (with `model.` / `lm_head`) of a GGUF tensor name.
pub fn hf_name(gguf: &str) -> Option<String> {
    if let Some(&(h, _)) = GLOBAL_NAMES.iter().find(|(_, g)| *g == gguf) {
        return Some(if h == LM_HEAD {
            h.to_string()
        } else {
            format!("{TEXT_PREFIX}{h}")
        });
    }
    let rest = gguf.strip_prefix("blk.")?;
    let (layer, suffix) = rest.split_once('.')?;
    let layer: usize = layer.parse().ok()?;
    LAYER_NAMES
        .iter()
        .chain(std::iter::once(&DOWN_EXPS))
        .find(|(_, g)| *g == suffix)
        .map(|(h, _)| format!("{TEXT_PREFIX}layers.{layer}.{h}"))
}

fn key<'a>(gguf: &'a GgufFile, name: &str) -> Option<&'a Value> {
    gguf.get(&format!("{ARCH}.{name}"))
}

fn field_error(gguf: &GgufFile, name: &str, message: &str) -> Error {
    Error::Gguf {
        path: gguf.path().to_path_buf(),
        message: format!("metadata `{ARCH}.{name}`: {message}"),
    }
}

fn required_u64(gguf: &GgufFile, name: &str) -> Result<u64> {
    match key(gguf, name) {
        None => Err(field_error(gguf, name, "missing")),
        Some(v) => v
            .as_u64()
            .ok_or_else(|| field_error(gguf, name, &format!("expected an integer, found {v:?}"))),
    }
}

fn optional_u64(gguf: &GgufFile, name: &str) -> Result<Option<u64>> {
    key(gguf, name)
        .map(|v| {
            v.as_u64()
                .ok_or_else(|| field_error(gguf, name, &format!("expected an integer, found {v:?}")))
        })
        .transpose()
}

fn optional_f64(gguf: &GgufFile, name: &str) -> Result<Option<f64>> {
    key(gguf, name)
        .map(|v| {
            v.as_f64()
                .ok_or_else(|| field_error(gguf, name, &format!("expected a number, found {v:?}")))
        })
        .transpose()
}

/// A flat `Llama4ForCausalLM` config.json equivalent to the GGUF's metadata.
pub fn config_json(gguf: &GgufFile) -> Result<Json> {
    let arch = gguf.get("general.architecture").and_then(Value::as_str);
    if arch != Some(ARCH) {
        return Err(Error::Gguf {
            path: gguf.path().to_path_buf(),
            message: format!(
                "general.architecture is {}; herd runs `{ARCH}` GGUFs",
                arch.map_or("missing".to_string(), |a| format!("`{a}`"))
            ),
        });
    }
    let hidden = required_u64(gguf, "embedding_length")?;
    let n_layers = required_u64(gguf, "block_count")?;
    let n_heads = required_u64(gguf, "attention.head_count")?;
    let n_kv_heads = optional_u64(gguf, "attention.head_count_kv")?.unwrap_or(n_heads);
    let head_dim = match optional_u64(gguf, "attention.key_length")? {
        Some(d) => d,
        None => hidden.checked_div(n_heads).unwrap_or(0),
    };
    let n_experts = optional_u64(gguf, "expert_count")?.unwrap_or(0);
    let vocab = match optional_u64(gguf, "vocab_size")? {
        Some(v) => v,
        None => gguf
            .tensor_info("token_embd.weight")
            .and_then(|t| t.dims.get(1).copied())
            .ok_or_else(|| {
                field_error(
                    gguf,
                    "vocab_size",
                    "missing, and no token_embd.weight to infer it",
                )
            })? as u64,
    };
    let chunked = optional_u64(gguf, "attention.sliding_window")? != Some(0);
    let dense_width = optional_u64(gguf, "feed_forward_length")?.unwrap_or(0);
    let mut config = Map::new();
    let mut set = |k: &str, v: Json| {
        config.insert(k.to_string(), v);
    };
    set("architectures", json!(["Llama4ForCausalLM"]));
    set("model_type", json!("llama4_text"));
    set("vocab_size", json!(vocab));
    set("hidden_size", json!(hidden));
    set("num_hidden_layers", json!(n_layers));
    set("num_attention_heads", json!(n_heads));
    set("num_key_value_heads", json!(n_kv_heads));
    set("head_dim", json!(head_dim));
    set(
        "max_position_embeddings",
        json!(required_u64(gguf, "context_length")?),
    );
    set(
        "rms_norm_eps",
        json!(optional_f64(gguf, "attention.layer_norm_rms_epsilon")?.unwrap_or(1e-5)),
    );
    set(
        "rope_theta",
        json!(optional_f64(gguf, "rope.freq_base")?.unwrap_or(500000.0)),
    );
    set("intermediate_size_mlp", json!(dense_width));
    if n_experts > 0 {
        set("num_local_experts", json!(n_experts));
        set(
            "num_experts_per_tok",
            json!(optional_u64(gguf, "expert_used_count")?.unwrap_or(1)),
        );
        set(
            "intermediate_size",
            json!(required_u64(gguf, "expert_feed_forward_length")?),
        );
        set(
            "interleave_moe_layer_step",
            json!(optional_u64(gguf, "interleave_moe_layer_step")?.unwrap_or(1)),
        );
    } else {
        set("num_local_experts", json!(0));
        set("interleave_moe_layer_step", json!(0));
        set("moe_layers", json!([]));
        set("intermediate_size", json!(dense_width));
    }
    set(
        "attention_chunk_size",
        if chunked { json!(CHUNK_LEN) } else { Json::Null },
    );
    set("no_rope_layer_interval", json!(NOPE_INTERVAL));
    set("attn_temperature_tuning", json!(true));
    set("floor_scale", json!(TEMPERATURE_FLOOR));
    set("attn_scale", json!(TEMPERATURE_SCALE));
    set("use_qk_norm", json!(n_experts != 128));
    set(
        "tie_word_embeddings",
        json!(gguf.tensor_info("output.weight").is_none()),
    );
    for (gguf_key, field) in [
        ("tokenizer.ggml.bos_token_id", "bos_token_id"),
        ("tokenizer.ggml.eos_token_id", "eos_token_id"),
        ("tokenizer.ggml.padding_token_id", "pad_token_id"),
    ] {
        if let Some(id) = gguf.get(gguf_key).and_then(Value::as_u64) {
            set(field, json!(id));
        }
    }
    Ok(Json::Object(config))
}
