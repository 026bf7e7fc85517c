//! Config resolution for every encoding seen in the wild, and clear errors for the rest.

use herd_model::config::{AttentionKind, FeedForwardKind, ModelConfig};
use herd_model::Error;
use serde_json::{json, Value};

/// A Scout-shaped `text_config` as published (transformers 4.51 dump, base model).
fn scout() -> Value {
    json!({
        "model_type": "llama4_text",
        "vocab_size": 202048, "hidden_size": 5120, "intermediate_size": 8192,
        "intermediate_size_mlp": 16384, "num_hidden_layers": 48, "num_attention_heads": 40,
        "num_key_value_heads": 8, "head_dim": 128, "max_position_embeddings": 262144,
        "rms_norm_eps": 1e-5, "rope_theta": 500000.0,
        "rope_scaling": {"rope_type": "llama3", "factor": 16.0, "low_freq_factor": 1.0,
                         "high_freq_factor": 1.0, "original_max_position_embeddings": 8192},
        "num_local_experts": 16, "num_experts_per_tok": 1, "interleave_moe_layer_step": 1,
        "use_qk_norm": true, "no_rope_layers": [], "attention_chunk_size": 8192,
        "attn_temperature_tuning": 4, "floor_scale": 8192, "attn_scale": 0.1,
        "bos_token_id": 200000, "eos_token_id": [200001, 200007, 200008], "pad_token_id": 200018,
        "for_llm_compressor": false
    })
}

fn maverick() -> Value {
    let mut v = scout();
    let o = v.as_object_mut().unwrap();
    o.insert("num_local_experts".into(), json!(128));
    o.insert("interleave_moe_layer_step".into(), json!(2));
    o.insert("use_qk_norm".into(), json!(false));
    o.insert("rope_scaling".into(), Value::Null);
    o.insert("max_position_embeddings".into(), json!(1048576));
    v
}

fn nested(text: Value) -> Value {
    json!({"model_type": "llama4", "architectures": ["Llama4ForConditionalGeneration"],
           "image_token_index": 200092, "text_config": text, "vision_config": {"hidden_size": 1408}})
}

fn resolve(v: Value) -> ModelConfig {
    ModelConfig::from_json(&v).unwrap_or_else(|e| panic!("{e}"))
}

fn config_error(v: Value) -> (String, String) {
    match ModelConfig::from_json(&v) {
        Err(Error::Config { field, message }) => (field, message),
        other => panic!("expected a config error, got {other:?}"),
    }
}

fn with(mut v: Value, key: &str, value: Value) -> Value {
    v.as_object_mut().unwrap().insert(key.into(), value);
    v
}

#[test]
fn scout_resolves_to_all_moe_with_nope_every_fourth_layer() {
    let c = resolve(nested(scout()));
    assert_eq!(c.n_layers(), 48);
    for (i, l) in c.layers.iter().enumerate() {
        let nope = (i + 1) % 4 == 0;
        assert_eq!(
            l.attention,
            if nope {
                AttentionKind::GlobalNope
            } else {
                AttentionKind::LocalRope { chunk_len: 8192 }
            }
        );
        assert_eq!(l.uses_qk_norm, !nope, "qk-norm only on RoPE layers");
        assert_eq!(l.temperature_tuning.is_some(), nope, "int 4 means on, NoPE only");
        assert_eq!(
            l.feed_forward,
            FeedForwardKind::Moe {
                n_experts: 16,
                top_k: 1,
                width: 8192
            }
        );
    }
    let s = c.rope.scaling.expect("llama3");
    assert_eq!(
        (s.factor, s.low_freq_factor, s.high_freq_factor),
        (16.0, 1.0, 1.0)
    );
    assert_eq!(c.eos_token_ids, vec![200001, 200007, 200008]);
    assert_eq!(c.group_size(), 5);
}

#[test]
fn maverick_interleaves_dense_and_moe_without_qk_norm() {
    let c = resolve(maverick());
    for (i, l) in c.layers.iter().enumerate() {
        let expected = if i % 2 == 1 {
            FeedForwardKind::Moe {
                n_experts: 128,
                top_k: 1,
                width: 8192,
            }
        } else {
            FeedForwardKind::Dense { width: 16384 }
        };
        assert_eq!(l.feed_forward, expected, "layer {i}");
        assert!(!l.uses_qk_norm);
    }
    assert!(c.rope.scaling.is_none());
}

#[test]
fn llama_guard_is_all_dense_and_unchunked() {
    let mut v = maverick();
    let o = v.as_object_mut().unwrap();
    o.insert("interleave_moe_layer_step".into(), json!(0));
    o.insert("num_local_experts".into(), json!(0));
    o.insert("attention_chunk_size".into(), Value::Null);
    o.remove("moe_layers");
    let c = resolve(v.clone());
    assert!(c
        .layers
        .iter()
        .all(|l| matches!(l.feed_forward, FeedForwardKind::Dense { width: 16384 })));
    assert!(c.layers.iter().all(|l| l.attention.chunk_len().is_none()));
    assert_eq!(c.layers[0].attention, AttentionKind::GlobalRope);
    assert_eq!(c.layers[3].attention, AttentionKind::GlobalNope);
    // The converter's explicit `moe_layers: []` means the same.
    assert_eq!(resolve(with(v, "moe_layers", json!([]))).layers, c.layers);
}

#[test]
fn absent_chunk_size_defaults_to_8192_but_null_disables_chunking() {
    let mut v = scout();
    v.as_object_mut().unwrap().remove("attention_chunk_size");
    assert_eq!(
        resolve(v).layers[0].attention,
        AttentionKind::LocalRope { chunk_len: 8192 }
    );
}

#[test]
fn explicit_lists_win_over_derived_ones() {
    let mut no_rope = vec![1; 48];
    no_rope[0] = 0;
    let v = with(
        with(scout(), "no_rope_layers", json!(no_rope)),
        "moe_layers",
        json!([5, 7]),
    );
    let c = resolve(v);
    assert_eq!(c.layers[0].attention, AttentionKind::GlobalNope);
    assert_eq!(
        c.layers[3].attention,
        AttentionKind::LocalRope { chunk_len: 8192 }
    );
    let moe: Vec<usize> = (0..48)
        .filter(|&i| matches!(c.layers[i].feed_forward, FeedForwardKind::Moe { .. }))
        .collect();
    assert_eq!(moe, vec![5, 7]);
}

#[test]
fn transformers_5_rope_parameters_spelling() {
    let mut v = scout();
    let o = v.as_object_mut().unwrap();
    o.remove("rope_scaling");
    o.remove("rope_theta");
    o.insert(
        "rope_parameters".into(),
        json!({"rope_type": "llama3", "rope_theta": 250000.0, "factor": 8.0,
        "low_freq_factor": 1.0, "high_freq_factor": 4.0, "original_max_position_embeddings": 8192}),
    );
    let c = resolve(v.clone());
    assert_eq!(c.rope.theta, 250000.0);
    assert_eq!(c.rope.scaling.unwrap().factor, 8.0);
    let plain = with(
        v,
        "rope_parameters",
        json!({"rope_type": "default", "rope_theta": 10000.0}),
    );
    let c = resolve(plain);
    assert_eq!((c.rope.theta, c.rope.scaling), (10000.0, None));
}

#[test]
fn scalar_forms_of_flags_and_ids() {
    let c = resolve(with(
        with(scout(), "attn_temperature_tuning", json!(false)),
        "eos_token_id",
        json!(7),
    ));
    assert!(c.layers.iter().all(|l| l.temperature_tuning.is_none()));
    assert_eq!(c.eos_token_ids, vec![7]);
    let c = resolve(with(scout(), "attn_temperature_tuning", json!(0)));
    assert!(c.layers.iter().all(|l| l.temperature_tuning.is_none()));
}

#[test]
fn transformers_defaults_fill_an_empty_config() {
    let c = resolve(json!({}));
    assert_eq!(
        (c.hidden_size, c.n_layers(), c.vocab_size, c.head_dim),
        (5120, 48, 202048, 128)
    );
    assert_eq!(c.layers[3].attention, AttentionKind::GlobalNope);
}

#[test]
fn unsupported_or_inconsistent_fields_are_named() {
    let cases = [
        (with(scout(), "hidden_act", json!("gelu")), "hidden_act"),
        (
            with(
                scout(),
                "rope_scaling",
                json!({"rope_type": "yarn", "factor": 4.0}),
            ),
            "rope_scaling.rope_type",
        ),
        (
            with(
                scout(),
                "rope_scaling",
                json!({"rope_type": "llama3", "factor": 8.0}),
            ),
            "rope_scaling.low_freq_factor",
        ),
        (
            with(scout(), "num_key_value_heads", json!(7)),
            "num_key_value_heads",
        ),
        (with(scout(), "no_rope_layers", json!([1, 0])), "no_rope_layers"),
        (
            with(scout(), "no_rope_layers", json!(vec![2; 48])),
            "no_rope_layers",
        ),
        (with(scout(), "moe_layers", json!([48])), "moe_layers"),
        (
            with(scout(), "num_experts_per_tok", json!(17)),
            "num_experts_per_tok",
        ),
        (
            with(scout(), "attention_chunk_size", json!(0)),
            "attention_chunk_size",
        ),
        (
            with(scout(), "attn_temperature_tuning", json!("yes")),
            "attn_temperature_tuning",
        ),
        (with(scout(), "head_dim", json!(127)), "head_dim"),
        (with(scout(), "attention_bias", json!(true)), "attention_bias"),
        (with(scout(), "model_type", json!("llama")), "model_type"),
        (
            with(scout(), "layer_types", json!(vec!["full_attention"; 48])),
            "layer_types",
        ),
        (with(scout(), "eos_token_id", json!(-1)), "eos_token_id"),
        (with(scout(), "hidden_size", json!("big")), "hidden_size"),
        (json!({"model_type": "mllama", "text_config": {}}), "model_type"),
    ];
    for (v, field) in cases {
        let (got, message) = config_error(v);
        assert_eq!(got, field, "{message}");
        assert!(!message.is_empty());
    }
}

#[test]
fn fixture_configs_written_by_transformers_resolve() {
    for name in herd_testkit::TEXT_FIXTURES {
        ModelConfig::load(&herd_testkit::fixture_path(name)).unwrap_or_else(|e| panic!("{name}: {e}"));
    }
    let guard = ModelConfig::load(&herd_testkit::fixture_path("guard-tiny")).unwrap();
    assert!(guard
        .layers
        .iter()
        .all(|l| matches!(l.feed_forward, FeedForwardKind::Dense { .. })));
}

/// `herd synth --preset scout` is Scout's text model as published: every layer's plan, the
/// widths, RoPE and routing (the context length it declares and the special ids of its
/// synthetic vocabulary differ); about 108B parameters (Scout's 109B less its vision tower).
#[test]
fn synth_scout_preset_resolves_to_the_published_scout() {
    let spec = herd_model::synth::SynthSpec::preset("scout").unwrap();
    let synth = ModelConfig::from_json(&spec.config_json()).unwrap();
    let published = ModelConfig::from_json(&scout()).unwrap();
    assert_eq!(
        ModelConfig {
            max_position_embeddings: published.max_position_embeddings,
            bos_token_id: published.bos_token_id,
            eos_token_ids: published.eos_token_ids.clone(),
            pad_token_id: published.pad_token_id,
            ..synth
        },
        published
    );
    let parameters = spec.weight_bytes() / 2;
    assert!(
        (105_000_000_000..110_000_000_000).contains(&parameters),
        "{parameters}"
    );
}
