//! The engine's frontend: text and images in, token ids out; token ids in, text out. What the
//! CLI and the server share — the checkpoint's tokenizer, chat template, BOS and stop ids (from
//! a Hugging Face folder, or from a GGUF file's metadata unless a tokenizer file sits beside
//! it), prompt assembly with image layouts, the vision tower ([`images`]), and the reply's
//! text with stop strings ([`output`]).

pub mod images;
pub mod json_mode;
pub mod output;

use std::path::{Path, PathBuf};

use herd_model::generation_config::{stop_token_ids, GenerationConfig};
use herd_model::weights::gguf::{GgufFile, Value};
use herd_model::ModelConfig;
use herd_text::image_layout::{expand_images, image_layout, ImageTokenIds};
use herd_text::{ChatTemplate, GgufVocab, Message, SpecialTokens, Tokenizer};

use crate::error::EngineError;

type Result<T> = std::result::Result<T, EngineError>;

/// A checkpoint's text side, loaded once: tokenizer, chat template, BOS and stop ids.
pub struct Frontend {
    pub tokenizer: Tokenizer,
    pub template: ChatTemplate,
    pub bos_id: Option<u32>,
    /// Every id that ends a reply (see [`checkpoint_stop_ids`]).
    pub stop_ids: Vec<u32>,
    model: PathBuf,
}

impl Frontend {
    /// Reads the tokenizer, template and stop ids of the folder or GGUF file `model`.
    pub fn load(model: &Path, config: &ModelConfig) -> Result<Self> {
        let tokenizer = tokenizer(model)?;
        let template = chat_template(model, &tokenizer)?;
        let bos_id = bos_id(model, &tokenizer)?;
        let stop_ids = checkpoint_stop_ids(model, config, Some(&tokenizer))?;
        Ok(Frontend {
            tokenizer,
            template,
            bos_id,
            stop_ids,
            model: model.to_path_buf(),
        })
    }

    pub fn model_path(&self) -> &Path {
        &self.model
    }

    /// A chat prompt: the conversation through the chat template (special-token text inside
    /// messages stays text), each `<|image|>` expanded to its image's tile layout (`grids`
    /// in order, `tokens_per_tile` patches a tile).
    pub fn chat_prompt(
        &self,
        messages: &[Message],
        tools: Option<&[serde_json::Value]>,
        grids: &[(u32, u32)],
        tokens_per_tile: usize,
    ) -> Result<Vec<u32>> {
        let ids = self
            .template
            .encode(&self.tokenizer, messages, tools, true, SpecialTokens::AsText)?;
        if grids.is_empty() {
            return Ok(ids);
        }
        let markup = ImageTokenIds::from_tokenizer(&self.tokenizer)?;
        Ok(expand_images(&ids, &markup, grids, tokens_per_tile)?)
    }

    /// A raw completion prompt: BOS (as transformers' tokenizer and Meta's `encode(bos=True)`
    /// add it), the images' layouts, then the text; special-token text is text unless
    /// `special` parses it.
    pub fn completion_prompt(
        &self,
        text: &str,
        special: SpecialTokens,
        grids: &[(u32, u32)],
        tokens_per_tile: usize,
    ) -> Result<Vec<u32>> {
        let mut ids: Vec<u32> = self.bos_id.into_iter().collect();
        if !grids.is_empty() {
            let markup = ImageTokenIds::from_tokenizer(&self.tokenizer)?;
            for &grid in grids {
                ids.extend(image_layout(&markup, grid, tokens_per_tile));
            }
        }
        ids.extend(self.tokenizer.encode(text, special)?);
        Ok(ids)
    }
}

/// True when `model` names a GGUF file rather than a checkpoint folder.
pub fn is_gguf(model: &Path) -> bool {
    model.is_file()
}

/// The folder a GGUF file sits in (tokenizer files beside it take precedence over its
/// metadata).
fn gguf_dir(model: &Path) -> &Path {
    model
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."))
}

/// The model's tokenizer: the folder's tokenizer.json / tokenizer.model; for a GGUF, one of
/// those beside it, else the vocabulary the GGUF carries.
pub fn tokenizer(model: &Path) -> Result<Tokenizer> {
    if !is_gguf(model) {
        return Ok(Tokenizer::from_dir(model)?);
    }
    if let Ok(t) = Tokenizer::from_dir(gguf_dir(model)) {
        return Ok(t);
    }
    let gguf = GgufFile::open(model)?;
    let text = |key: &str| {
        gguf.get(key)
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string()
    };
    let strings = |key: &str| -> Vec<String> {
        gguf.get(key)
            .and_then(Value::as_array)
            .map(|a| a.iter().filter_map(|v| v.as_str().map(str::to_string)).collect())
            .unwrap_or_default()
    };
    let Some(types) = gguf.get("tokenizer.ggml.token_type").and_then(Value::as_array) else {
        return Err(EngineError::Frontend(format!(
            "{} has no tokenizer.ggml.token_type (and no tokenizer file beside it)",
            model.display()
        )));
    };
    let vocab = GgufVocab {
        model: text("tokenizer.ggml.model"),
        pre: text("tokenizer.ggml.pre"),
        tokens: strings("tokenizer.ggml.tokens"),
        token_types: types
            .iter()
            .map(|v| match v {
                Value::I32(t) => *t,
                other => other.as_u64().map_or(-1, |t| t as i32),
            })
            .collect(),
        merges: strings("tokenizer.ggml.merges"),
    };
    Ok(Tokenizer::from_gguf_vocab(&vocab, model)?)
}

/// The chat template: the folder's; for a GGUF, `tokenizer.chat_template` (Llama 4's built-in
/// format if absent).
pub fn chat_template(model: &Path, tokenizer: &Tokenizer) -> Result<ChatTemplate> {
    if !is_gguf(model) {
        return Ok(ChatTemplate::from_dir(model)?);
    }
    let gguf = GgufFile::open(model)?;
    let token = |key: &str, default: &str| {
        gguf.get(key)
            .and_then(Value::as_u64)
            .and_then(|id| tokenizer.decode(&[id as u32]).ok())
            .unwrap_or_else(|| default.to_string())
    };
    Ok(
        match gguf.get("tokenizer.chat_template").and_then(Value::as_str) {
            Some(source) => ChatTemplate::new(
                source,
                &token("tokenizer.ggml.bos_token_id", "<|begin_of_text|>"),
                &token("tokenizer.ggml.eos_token_id", "<|eot|>"),
            ),
            None => ChatTemplate::llama4(),
        },
    )
}

/// The resolved config of a folder or GGUF (reads only headers).
fn config(model: &Path) -> Result<ModelConfig> {
    if is_gguf(model) {
        Ok(herd_model::WeightSource::open(model)?.1)
    } else {
        Ok(ModelConfig::load(model)?)
    }
}

/// The id that starts a sequence: `bos_token_id` of the config (a GGUF's
/// `tokenizer.ggml.bos_token_id`), else the tokenizer's `<|begin_of_text|>`.
pub fn bos_id(model: &Path, tokenizer: &Tokenizer) -> Result<Option<u32>> {
    let from_config = config(model).ok().and_then(|c| c.bos_token_id);
    Ok(from_config.or_else(|| tokenizer.special_id(herd_text::special_tokens::BEGIN_OF_TEXT)))
}

/// Every id that ends a reply: `eos_token_id` of config.json and generation_config.json (a
/// GGUF's `tokenizer.ggml.eos_token_id`), and — when a tokenizer is loaded — Llama 4's
/// end-of-turn and end-of-message tokens.
pub fn checkpoint_stop_ids(
    model: &Path,
    config: &ModelConfig,
    tokenizer: Option<&Tokenizer>,
) -> Result<Vec<u32>> {
    let generation = if is_gguf(model) {
        GenerationConfig::default()
    } else {
        GenerationConfig::load(model)?
    };
    let mut ids = stop_token_ids(&config.eos_token_ids, &generation);
    if let Some(t) = tokenizer {
        for token in [herd_text::special_tokens::EOT, herd_text::special_tokens::EOM] {
            if let Some(id) = t.special_id(token).filter(|id| !ids.contains(id)) {
                ids.push(id);
            }
        }
    }
    Ok(ids)
}
