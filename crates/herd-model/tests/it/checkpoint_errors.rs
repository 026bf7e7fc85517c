//! Broken checkpoints give errors that name the file or tensor, never a panic.

use std::path::Path;

use candle_core::{DType, Device};
use herd_model::{Error, TextModel};

use crate::copy_fixture;

fn load_err(dir: &Path) -> Error {
    match TextModel::load(dir, DType::F32, &Device::Cpu) {
        Ok(_) => panic!("{} loaded", dir.display()),
        Err(e) => e,
    }
}

#[test]
fn truncated_file_is_a_checkpoint_error() {
    let dir = copy_fixture("scout-tiny", "truncated");
    let file = dir.join("model.safetensors");
    let len = std::fs::metadata(&file).unwrap().len();
    let f = std::fs::OpenOptions::new().write(true).open(&file).unwrap();
    f.set_len(len / 2).unwrap();
    let e = load_err(&dir);
    assert!(matches!(e, Error::Checkpoint { .. }), "{e}");
}

#[test]
fn garbage_header_is_a_checkpoint_error() {
    let dir = copy_fixture("scout-tiny", "garbage");
    std::fs::write(
        dir.join("model.safetensors"),
        b"\xff\xff\xff\xff\xff\xff\xff\x7fnot safetensors",
    )
    .unwrap();
    assert!(matches!(load_err(&dir), Error::Checkpoint { .. }));
}

#[test]
fn missing_shard_is_named() {
    let dir = copy_fixture("sharded-bf16", "missing-shard");
    std::fs::remove_file(dir.join("model-00002-of-00004.safetensors")).unwrap();
    let e = load_err(&dir);
    assert!(e.to_string().contains("model-00002-of-00004.safetensors"), "{e}");
}

#[test]
fn missing_tensor_is_named() {
    let dir = copy_fixture("sharded-bf16", "missing-tensor");
    // Point the index at shards that lack one layer's tensors by dropping the shard holding
    // the final norm from the index and the folder.
    let index: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("model.safetensors.index.json")).unwrap())
            .unwrap();
    let shard = index["weight_map"]["language_model.model.norm.weight"]
        .as_str()
        .unwrap()
        .to_string();
    let mut map = index["weight_map"].as_object().unwrap().clone();
    map.retain(|_, v| v.as_str() != Some(shard.as_str()));
    std::fs::write(
        dir.join("model.safetensors.index.json"),
        serde_json::to_string(&serde_json::json!({"weight_map": map})).unwrap(),
    )
    .unwrap();
    std::fs::remove_file(dir.join(&shard)).unwrap();
    match load_err(&dir) {
        Error::MissingTensor { name, .. } => assert!(name.starts_with("language_model."), "{name}"),
        e => panic!("expected a missing tensor, got {e}"),
    }
}

#[test]
fn wrong_shape_names_tensor_and_both_shapes() {
    let dir = copy_fixture("scout-tiny", "shape");
    let config = dir.join("config.json");
    let text = std::fs::read_to_string(&config)
        .unwrap()
        .replace("\"intermediate_size\": 32", "\"intermediate_size\": 48");
    std::fs::write(&config, text).unwrap();
    match load_err(&dir) {
        Error::TensorShape {
            name,
            expected,
            actual,
        } => {
            assert_eq!(name, "model.layers.0.feed_forward.experts.gate_up_proj");
            assert_eq!((expected, actual), (vec![4, 64, 96], vec![4, 64, 64]));
        }
        e => panic!("expected a shape error, got {e}"),
    }
}

#[test]
fn empty_folder_and_bad_config_are_errors() {
    let dir = std::env::temp_dir().join(format!("herd-test-empty-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir); // a leftover of a run with this pid
    std::fs::create_dir_all(&dir).unwrap();
    assert!(matches!(load_err(&dir), Error::Read(_)));
    std::fs::write(dir.join("config.json"), "{ not json").unwrap();
    assert!(matches!(load_err(&dir), Error::Json { .. }));
    std::fs::write(dir.join("config.json"), "{}").unwrap();
    assert!(matches!(load_err(&dir), Error::Checkpoint { .. }));
}

#[test]
fn bad_token_ids_and_context_overflow_are_errors() {
    let model = crate::load_fixture("scout-tiny", DType::F32);
    let mut cache = model.new_cache();
    let e = model
        .forward(&[5, 256], &mut cache, herd_model::LogitsFor::All)
        .unwrap_err();
    assert!(
        matches!(
            e,
            Error::TokenOutOfRange {
                id: 256,
                index: 1,
                vocab_size: 256
            }
        ),
        "{e}"
    );
    assert!(matches!(
        model.forward(&[], &mut cache, herd_model::LogitsFor::All),
        Err(Error::EmptyInput)
    ));
    let long = vec![5u32; 4097];
    let e = model
        .forward(&long, &mut cache, herd_model::LogitsFor::Last)
        .unwrap_err();
    assert!(
        matches!(
            e,
            Error::ContextOverflow {
                requested: 4097,
                max_positions: 4096
            }
        ),
        "{e}"
    );
    // A rejected step leaves the cache usable.
    assert_eq!(cache.n_positions(), 0);
    model
        .forward(&[5, 6], &mut cache, herd_model::LogitsFor::Last)
        .unwrap();
}

#[test]
fn shard_index_cannot_reach_outside_the_folder_or_misplace_tensors() {
    for (tag, bad) in [
        ("abs", "/etc/passwd"),
        ("dotdot", "../model-00001-of-00004.safetensors"),
    ] {
        let dir = copy_fixture("sharded-bf16", tag);
        let path = dir.join("model.safetensors.index.json");
        let mut index: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        let first = index["weight_map"]
            .as_object()
            .unwrap()
            .keys()
            .next()
            .unwrap()
            .clone();
        index["weight_map"][&first] = serde_json::Value::String(bad.into());
        std::fs::write(&path, index.to_string()).unwrap();
        let e = load_err(&dir).to_string();
        assert!(e.contains(bad) && e.contains("inside the folder"), "{e}");
    }
    // An entry naming the wrong (existing) shard.
    let dir = copy_fixture("sharded-bf16", "wrongshard");
    let path = dir.join("model.safetensors.index.json");
    let mut index: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    let map = index["weight_map"].as_object().unwrap().clone();
    let (name, shard) = map.iter().next().unwrap();
    let other = map.values().find(|s| *s != shard).unwrap().clone();
    index["weight_map"][name] = other.clone();
    std::fs::write(&path, index.to_string()).unwrap();
    let e = load_err(&dir).to_string();
    assert!(
        e.contains(name.as_str()) && e.contains(other.as_str().unwrap()),
        "{e}"
    );
}
