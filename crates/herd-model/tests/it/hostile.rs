//! Inputs made to break herd (a hostile-input probe's findings): each gives a clear error
//! naming the field or file, never a panic, a huge allocation or a silently wrong model.

use std::collections::HashMap;
use std::path::Path;

use candle_core::{DType, Device, Tensor};
use herd_model::config::ModelConfig;
use herd_model::vision::VisionConfig;
use herd_model::{Error, LogitsFor, TextModel};
use herd_testkit::fixture_path;
use serde_json::{json, Value};

use crate::copy_fixture;

fn tiny_config() -> Value {
    serde_json::from_str(&std::fs::read_to_string(fixture_path("scout-tiny").join("config.json")).unwrap())
        .unwrap()
}

/// `tiny_config()` with `path` (dots into nested objects) set to `value`.
fn with(path: &str, value: Value) -> Value {
    let mut config = tiny_config();
    let mut node = &mut config;
    let keys: Vec<&str> = path.split('.').collect();
    for key in &keys[..keys.len() - 1] {
        node = node.get_mut(*key).unwrap_or_else(|| panic!("no {key}"));
    }
    node.as_object_mut()
        .unwrap()
        .insert(keys[keys.len() - 1].into(), value);
    config
}

fn config_error(config: &Value) -> (String, String) {
    match ModelConfig::from_json(config) {
        Err(Error::Config { field, message }) => (field, message),
        other => panic!("expected a config error, got {other:?}"),
    }
}

fn load_err(dir: &Path) -> String {
    match TextModel::load(dir, DType::F32, &Device::Cpu) {
        Ok(_) => panic!("{} loaded", dir.display()),
        Err(e) => e.to_string(),
    }
}

fn text_key(config: &Value, key: &str) -> String {
    if config.get("text_config").is_some() {
        format!("text_config.{key}")
    } else {
        key.to_string()
    }
}

#[test]
fn huge_or_zero_sizes_are_refused_before_anything_is_allocated() {
    let config = tiny_config();
    for (key, value) in [
        ("num_hidden_layers", json!(u64::MAX)),
        ("num_hidden_layers", json!(1_000_000_000u64)),
        ("num_hidden_layers", json!(0)),
        ("hidden_size", json!(1u64 << 40)),
        ("vocab_size", json!(1u64 << 40)),
        ("num_local_experts", json!(1u64 << 30)),
    ] {
        let (field, message) = config_error(&with(&text_key(&config, key), value.clone()));
        assert_eq!(field, key, "{key}={value}: {message}");
    }
    // Each within its ceiling, together past any real model: the parameter count is checked.
    let mut big = with(&text_key(&config, "num_hidden_layers"), json!(4096));
    for key in ["no_rope_layers", "layer_types", "moe_layers"] {
        big.as_object_mut().unwrap().remove(key);
    }
    for (key, v) in [
        ("hidden_size", 1 << 20),
        ("intermediate_size", 1 << 20),
        ("num_local_experts", 1 << 14),
    ] {
        let k = text_key(&big, key);
        big = {
            let mut c = big.clone();
            let mut node = &mut c;
            let keys: Vec<&str> = k.split('.').collect();
            for kk in &keys[..keys.len() - 1] {
                node = node.get_mut(*kk).unwrap();
            }
            node.as_object_mut()
                .unwrap()
                .insert(keys[keys.len() - 1].into(), json!(v));
            c
        };
    }
    let (_, message) = config_error(&big);
    assert!(message.contains("parameters"), "{message}");
}

#[test]
fn vision_config_zero_or_huge_sizes_are_errors() {
    let base = json!({"text_config": {}, "vision_config": {}});
    for (key, value) in [
        ("image_size", 0u64),
        ("image_size", 1 << 40),
        ("patch_size", 0),
        ("hidden_size", 0),
    ] {
        let mut v = base.clone();
        v["vision_config"][key] = json!(value);
        match VisionConfig::from_json(&v) {
            Err(Error::Config { field, .. }) => assert_eq!(field, format!("vision_config.{key}")),
            other => panic!("{key}={value}: {other:?}"),
        }
    }
    let mut v = base.clone();
    v["vision_config"]["image_size"] = json!("336");
    match VisionConfig::from_json(&v) {
        Err(Error::Config { field, .. }) => assert_eq!(field, "vision_config.image_size"),
        other => panic!("{other:?}"),
    }
}

#[test]
fn malformed_rope_settings_are_errors_not_silently_unscaled() {
    let config = tiny_config();
    assert!(config.get("text_config").is_none(), "scout-tiny is flat");
    let rope_key = "rope_parameters";
    let cases = [
        (json!("llama3"), "rope_parameters"),
        (
            json!({"rope_theta": 500000.0, "factor": 16.0}),
            "rope_parameters.rope_type",
        ),
        (
            json!({"rope_type": 3, "rope_theta": 500000.0}),
            "rope_parameters.rope_type",
        ),
        (
            json!({"rope_type": "default", "rope_theta": "10000"}),
            "rope_parameters.rope_theta",
        ),
    ];
    for (value, field) in cases {
        let (got, message) = config_error(&with(rope_key, value.clone()));
        assert_eq!(got, field, "{value}: {message}");
    }
    // transformers 4.x spelling, as a bare string (scout-tiny is a flat config).
    let mut c = with("rope_scaling", json!("llama3"));
    c.as_object_mut().unwrap().remove("rope_parameters");
    assert_eq!(config_error(&c).0, "rope_scaling");
}

#[test]
fn a_type_error_names_the_field_in_flat_and_nested_configs() {
    let config = tiny_config();
    let text = config.get("text_config").cloned().unwrap_or(config.clone());
    let mut flat = text.clone();
    flat["num_hidden_layers"] = json!("4");
    assert_eq!(config_error(&flat).0, "num_hidden_layers");
    let nested = json!({"model_type": "llama4", "text_config": flat});
    assert_eq!(config_error(&nested).0, "text_config.num_hidden_layers");
}

#[test]
fn weights_the_config_does_not_describe_are_refused() {
    // Fewer layers in the config than in the file.
    let dir = copy_fixture("scout-tiny", "extra-layers");
    let config = tiny_config();
    let n: u64 = config
        .pointer("/text_config/num_hidden_layers")
        .or(config.get("num_hidden_layers"))
        .unwrap()
        .as_u64()
        .unwrap();
    let mut fewer = with(&text_key(&config, "num_hidden_layers"), json!(n - 1));
    for key in ["no_rope_layers", "layer_types", "moe_layers"] {
        let k = text_key(&fewer, key);
        let parent = if k.contains('.') {
            fewer.get_mut("text_config").unwrap()
        } else {
            &mut fewer
        };
        parent.as_object_mut().unwrap().remove(key);
    }
    std::fs::write(dir.join("config.json"), fewer.to_string()).unwrap();
    let e = load_err(&dir);
    assert!(
        e.contains("num_hidden_layers") && e.contains(&format!("layers.{}.", n - 1)),
        "{e}"
    );

    // Tied embeddings while the file holds an lm_head.
    let dir = copy_fixture("scout-tiny", "tied");
    std::fs::write(
        dir.join("config.json"),
        with(&text_key(&config, "tie_word_embeddings"), json!(true)).to_string(),
    )
    .unwrap();
    let e = load_err(&dir);
    assert!(e.contains("tie_word_embeddings") && e.contains("lm_head"), "{e}");
}

#[test]
fn a_weight_map_listing_a_tensor_twice_is_an_error() {
    let dir = copy_fixture("sharded-bf16", "duplicate");
    let path = dir.join("model.safetensors.index.json");
    let text = std::fs::read_to_string(&path).unwrap();
    let index: Value = serde_json::from_str(&text).unwrap();
    let (name, shard) = index["weight_map"].as_object().unwrap().iter().next().unwrap();
    // JSON with a repeated key (serde's map would keep one silently).
    let entry = format!("\"{name}\": \"{}\"", shard.as_str().unwrap());
    let doubled = text.replacen(&entry, &format!("{entry}, {entry}"), 1);
    assert_ne!(doubled, text);
    std::fs::write(&path, doubled).unwrap();
    let e = load_err(&dir);
    assert!(e.contains(name.as_str()) && e.contains("twice"), "{e}");
}

#[test]
fn a_fifo_or_a_device_as_config_is_refused_without_blocking() {
    let dir = copy_fixture("scout-tiny", "fifo");
    std::fs::remove_file(dir.join("config.json")).unwrap();
    let status = std::process::Command::new("mkfifo")
        .arg(dir.join("config.json"))
        .status()
        .unwrap();
    assert!(status.success());
    let e = load_err(&dir);
    assert!(e.contains("not a regular file") && e.contains("FIFO"), "{e}");

    let dir = copy_fixture("scout-tiny", "zero");
    std::fs::remove_file(dir.join("config.json")).unwrap();
    std::os::unix::fs::symlink("/dev/zero", dir.join("config.json")).unwrap();
    let e = load_err(&dir);
    assert!(e.contains("not a regular file"), "{e}");

    let dir = copy_fixture("scout-tiny", "genconfig-fifo");
    let gen = dir.join("generation_config.json");
    std::fs::remove_file(&gen).unwrap();
    assert!(std::process::Command::new("mkfifo")
        .arg(&gen)
        .status()
        .unwrap()
        .success());
    let e = herd_model::generation_config::GenerationConfig::load(&dir)
        .unwrap_err()
        .to_string();
    assert!(e.contains("FIFO"), "{e}");
}

#[test]
fn nan_weights_are_caught_and_the_first_bad_layer_named() {
    let dir = copy_fixture("scout-tiny", "nan");
    let file = dir.join("model.safetensors");
    let mut tensors: HashMap<String, Tensor> = candle_core::safetensors::load(&file, &Device::Cpu).unwrap();
    let name = tensors
        .keys()
        .find(|k| k.contains("layers.1.self_attn.o_proj.weight"))
        .unwrap()
        .clone();
    let t = &tensors[&name];
    let poisoned = (t.to_dtype(DType::F32).unwrap() * f64::NAN)
        .unwrap()
        .to_dtype(t.dtype())
        .unwrap();
    tensors.insert(name, poisoned);
    candle_core::safetensors::save(&tensors, &file).unwrap();

    let mut model = TextModel::load(&dir, DType::F32, &Device::Cpu).unwrap();
    let mut cache = model.new_cache();
    let logits = model.forward(&[1, 2, 3], &mut cache, LogitsFor::Last).unwrap();
    let values = logits.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    assert!(
        values.iter().any(|v| v.is_nan()),
        "the poison must reach the logits"
    );

    model.set_check_finite(true);
    let mut cache = model.new_cache();
    match model.forward(&[1, 2, 3], &mut cache, LogitsFor::Last) {
        Err(Error::NonFinite { what, position, .. }) => {
            assert_eq!((what.as_str(), position), ("the output of layer 1", 0));
        }
        other => panic!("{other:?}"),
    }
}

/// An attention chunk longer than any context (2⁶⁴ − 1, which a config may say) is no chunk at
/// all: the model computes what it does unchunked, and the reports saturate instead of
/// overflowing (a debug build panicked, a release build wrapped the KV estimate).
#[test]
fn a_chunk_longer_than_any_context_is_no_chunk() {
    let huge = with("attention_chunk_size", json!(u64::MAX));
    let unchunked = with("attention_chunk_size", Value::Null);
    let config = ModelConfig::from_json(&huge).unwrap();
    let report = herd_model::inspect::report(&config, 2, None);
    assert!(report.contains("kv cache"), "{report}");
    let kv = herd_model::inspect::kv_footprint(&config, 2);
    assert_eq!(kv.chunked_max_tokens, config.max_position_embeddings);
    let logits = |config: &Value, tag: &str| {
        let dir = copy_fixture("scout-tiny", tag);
        std::fs::write(dir.join("config.json"), config.to_string()).unwrap();
        let model = TextModel::load(&dir, DType::F32, &Device::Cpu).unwrap();
        let ids: Vec<u32> = (1..40).collect();
        let mut cache = model.new_cache();
        let out = model.forward(&ids, &mut cache, LogitsFor::All).unwrap();
        std::fs::remove_dir_all(&dir).ok();
        out
    };
    let (a, b) = (logits(&huge, "huge-chunk"), logits(&unchunked, "no-chunk"));
    assert_eq!(a.to_vec2::<f32>().unwrap(), b.to_vec2::<f32>().unwrap());
}
