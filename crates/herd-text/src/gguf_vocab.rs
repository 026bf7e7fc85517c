//! A tokenizer from a GGUF's `tokenizer.ggml.*` metadata, for GGUF files with no tokenizer file
//! beside them. Llama 4 GGUFs carry a byte-level BPE (`model` = `gpt2`, `pre` = `llama4`): the
//! tokens by id, their types and the merges. herd rebuilds the Hugging Face tokenizer those
//! came from — Llama 4's split regex, byte-level mapping, `ignore_merges` — and loads it through
//! the same backend as `tokenizer.json`, so both paths encode alike.

use std::path::Path;

use serde_json::{json, Map, Value};

use crate::error::TextError;
use crate::tokenizer::Tokenizer;

/// Llama 4's pre-tokenizer split (its tokenizer.json; llama.cpp's `LLAMA_VOCAB_PRE_TYPE_LLAMA4`).
const LLAMA4_SPLIT: &str = r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+(?i:'s|'t|'re|'ve|'m|'ll|'d)?|[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*(?i:'s|'t|'re|'ve|'m|'ll|'d)?|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// llama.cpp's token types.
const TYPE_CONTROL: i32 = 3;
const TYPE_USER_DEFINED: i32 = 4;

/// The vocabulary fields of a GGUF.
#[derive(Debug, Clone, Default)]
pub struct GgufVocab {
    /// `tokenizer.ggml.model`
    pub model: String,
    /// `tokenizer.ggml.pre`
    pub pre: String,
    pub tokens: Vec<String>,
    pub token_types: Vec<i32>,
    pub merges: Vec<String>,
}

impl Tokenizer {
    /// Builds the tokenizer a Llama 4 GGUF describes; `path` names the file in errors.
    pub fn from_gguf_vocab(vocab: &GgufVocab, path: &Path) -> Result<Self, TextError> {
        let bad = |message: String| TextError::Tokenizer {
            path: path.to_path_buf(),
            message,
        };
        if vocab.model != "gpt2" || vocab.pre != "llama4" {
            return Err(bad(format!(
                "tokenizer.ggml.model `{}` / pre `{}`: herd builds Llama 4's byte-level BPE (gpt2 / llama4)",
                vocab.model, vocab.pre
            )));
        }
        if vocab.token_types.len() != vocab.tokens.len() {
            return Err(bad(format!(
                "{} tokens but {} token types",
                vocab.tokens.len(),
                vocab.token_types.len()
            )));
        }
        let mut map = Map::new();
        let mut added = Vec::new();
        for (id, (text, &ty)) in vocab.tokens.iter().zip(&vocab.token_types).enumerate() {
            if ty == TYPE_CONTROL || ty == TYPE_USER_DEFINED {
                added.push(json!({
                    "id": id, "content": text, "single_word": false, "lstrip": false,
                    "rstrip": false, "normalized": false, "special": ty == TYPE_CONTROL,
                }));
            }
            map.insert(text.clone(), json!(id));
        }
        let merges: Vec<Value> = vocab
            .merges
            .iter()
            .map(|m| match m.split_once(' ') {
                Some((a, b)) if !a.is_empty() && !b.is_empty() => Ok(json!([a, b])),
                _ => Err(bad(format!("merge `{m}` is not two tokens separated by a space"))),
            })
            .collect::<Result<_, _>>()?;
        let tokenizer = json!({
            "version": "1.0",
            "truncation": null,
            "padding": null,
            "added_tokens": added,
            "normalizer": null,
            "pre_tokenizer": {
                "type": "Sequence",
                "pretokenizers": [
                    {"type": "Split", "pattern": {"Regex": LLAMA4_SPLIT}, "behavior": "Isolated", "invert": false},
                    {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": false}
                ]
            },
            "post_processor": null,
            "decoder": {"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true, "use_regex": true},
            "model": {
                "type": "BPE", "dropout": null, "unk_token": null, "continuing_subword_prefix": null,
                "end_of_word_suffix": null, "fuse_unk": false, "byte_fallback": false,
                "ignore_merges": true, "vocab": Value::Object(map), "merges": merges
            }
        });
        let bytes = serde_json::to_vec(&tokenizer).map_err(|e| bad(e.to_string()))?;
        Tokenizer::from_json_bytes(&bytes, path)
    }
}
