//! The `tokenizer.*` metadata of a GGUF, built from a Hugging Face folder's `tokenizer.json`
//! and `tokenizer_config.json` as llama.cpp's converter builds it for Llama 4: a byte-level BPE
//! (`tokenizer.ggml.model` = `gpt2`, `pre` = `llama4`), tokens by id, token types (1 normal,
//! 3 control for special added tokens, 4 user-defined for other added tokens), merges as
//! `"a b"` strings, bos / eos / padding ids and the chat template.

use std::path::Path;

use serde_json::Value as Json;

use super::gguf::Value;
use crate::error::{Error, Result};

const TOKEN_NORMAL: i32 = 1;
const TOKEN_CONTROL: i32 = 3;
const TOKEN_USER_DEFINED: i32 = 4;

fn bad(path: &Path, message: impl Into<String>) -> Error {
    Error::Checkpoint {
        path: path.to_path_buf(),
        message: message.into(),
    }
}

/// `tokenizer.*` entries for the folder `dir`, with a vocabulary padded to `vocab_size`
/// (`[PAD{id}]` for ids the tokenizer does not use, as the converter writes them).
pub fn metadata(dir: &Path, vocab_size: usize, bos: Option<u32>) -> Result<Vec<(String, Value)>> {
    let path = dir.join("tokenizer.json");
    if !herd_limits::exists(&path) {
        return Err(bad(
            dir,
            "no tokenizer.json: a GGUF carries its vocabulary, and herd builds it from tokenizer.json",
        ));
    }
    let tok: Json = crate::json_file::read_json_of_kind(&path, herd_limits::FileKind::Tokenizer)?;
    let model = &tok["model"];
    if model["type"].as_str() != Some("BPE") {
        return Err(bad(
            &path,
            "model.type is not BPE (Llama 4's tokenizer is a byte-level BPE)",
        ));
    }
    let mut tokens: Vec<Option<String>> = vec![None; vocab_size];
    let mut types = vec![TOKEN_NORMAL; vocab_size];
    let mut place = |id: u64, text: &str, ty: i32| -> Result<()> {
        let slot = tokens.get_mut(id as usize).ok_or_else(|| {
            bad(
                &path,
                format!("token `{text}` has id {id}, beyond vocab_size {vocab_size}"),
            )
        })?;
        *slot = Some(text.to_string());
        types[id as usize] = ty;
        Ok(())
    };
    let vocab = model["vocab"]
        .as_object()
        .ok_or_else(|| bad(&path, "model.vocab is not an object"))?;
    for (text, id) in vocab {
        let id = id
            .as_u64()
            .ok_or_else(|| bad(&path, format!("token `{text}` has a non-integer id")))?;
        place(id, text, TOKEN_NORMAL)?;
    }
    for added in tok["added_tokens"].as_array().into_iter().flatten() {
        let (Some(id), Some(text)) = (added["id"].as_u64(), added["content"].as_str()) else {
            return Err(bad(&path, "an added_tokens entry lacks id or content"));
        };
        let ty = if added["special"].as_bool() == Some(true) {
            TOKEN_CONTROL
        } else {
            TOKEN_USER_DEFINED
        };
        place(id, text, ty)?;
    }
    let merges = model["merges"]
        .as_array()
        .ok_or_else(|| bad(&path, "model.merges is not a list"))?
        .iter()
        .map(|m| match m {
            Json::String(s) => Ok(Value::String(s.clone())),
            Json::Array(pair) => match (
                pair.first().and_then(Json::as_str),
                pair.get(1).and_then(Json::as_str),
            ) {
                (Some(a), Some(b)) => Ok(Value::String(format!("{a} {b}"))),
                _ => Err(bad(&path, "a merge is not a pair of strings")),
            },
            _ => Err(bad(&path, "a merge is neither a string nor a pair")),
        })
        .collect::<Result<Vec<_>>>()?;
    let id_of = |text: &str| -> Option<u32> {
        tokens
            .iter()
            .position(|t| t.as_deref() == Some(text))
            .and_then(|i| u32::try_from(i).ok())
    };
    let config_path = dir.join("tokenizer_config.json");
    let config = crate::json_file::read_optional_json(&config_path)?.unwrap_or(Json::Null);
    let special = |key: &str| -> Option<u32> {
        match &config[key] {
            Json::String(s) => id_of(s),
            Json::Object(o) => o.get("content").and_then(Json::as_str).and_then(id_of),
            _ => None,
        }
    };
    let template = match config["chat_template"].as_str() {
        Some(t) => Some(t.to_string()),
        None => {
            let jinja = dir.join("chat_template.jinja");
            if herd_limits::exists(&jinja) {
                Some(herd_limits::read_file_to_string(
                    &jinja,
                    herd_limits::FileKind::Template,
                )?)
            } else {
                None
            }
        }
    };
    let (bos_id, eos_id, pad_id) = (
        bos.or_else(|| special("bos_token")),
        special("eos_token"),
        special("pad_token"),
    );
    let mut out = vec![
        ("tokenizer.ggml.model".to_string(), Value::String("gpt2".into())),
        ("tokenizer.ggml.pre".to_string(), Value::String("llama4".into())),
        (
            "tokenizer.ggml.tokens".to_string(),
            Value::Array(
                tokens
                    .into_iter()
                    .enumerate()
                    .map(|(i, t)| Value::String(t.unwrap_or_else(|| format!("[PAD{i}]"))))
                    .collect(),
            ),
        ),
        (
            "tokenizer.ggml.token_type".to_string(),
            Value::Array(types.into_iter().map(Value::I32).collect()),
        ),
        ("tokenizer.ggml.merges".to_string(), Value::Array(merges)),
    ];
    for (key, id) in [
        ("tokenizer.ggml.bos_token_id", bos_id),
        ("tokenizer.ggml.eos_token_id", eos_id),
        ("tokenizer.ggml.padding_token_id", pad_id),
    ] {
        if let Some(id) = id {
            out.push((key.to_string(), Value::U32(id)));
        }
    }
    out.push(("tokenizer.ggml.add_bos_token".to_string(), Value::Bool(true)));
    out.push(("tokenizer.ggml.add_eos_token".to_string(), Value::Bool(false)));
    out.push(("tokenizer.ggml.add_sep_token".to_string(), Value::Bool(false)));
    if let Some(t) = template {
        out.push(("tokenizer.chat_template".to_string(), Value::String(t)));
    }
    Ok(out)
}
