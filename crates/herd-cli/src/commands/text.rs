//! What the text commands share: the checkpoint's BOS and stop ids.

use std::path::Path;

use anyhow::Result;
use herd_model::generation_config::{stop_token_ids, GenerationConfig};
use herd_model::ModelConfig;
use herd_text::Tokenizer;

/// The id that starts a sequence: `bos_token_id` from config.json, else the tokenizer's
/// `<|begin_of_text|>`.
pub fn bos_id(dir: &Path, tokenizer: &Tokenizer) -> Result<Option<u32>> {
    let from_config = ModelConfig::load(dir).ok().and_then(|c| c.bos_token_id);
    Ok(from_config.or_else(|| tokenizer.special_id(herd_text::special_tokens::BEGIN_OF_TEXT)))
}

/// Every id that ends a reply: `eos_token_id` of config.json and generation_config.json, and
/// — when a tokenizer is loaded — Llama 4's end-of-turn and end-of-message tokens.
pub fn checkpoint_stop_ids(
    dir: &Path,
    config: &ModelConfig,
    tokenizer: Option<&Tokenizer>,
) -> Result<Vec<u32>> {
    let mut ids = stop_token_ids(&config.eos_token_ids, &GenerationConfig::load(dir)?);
    if let Some(t) = tokenizer {
        for token in [herd_text::special_tokens::EOT, herd_text::special_tokens::EOM] {
            if let Some(id) = t.special_id(token).filter(|id| !ids.contains(id)) {
                ids.push(id);
            }
        }
    }
    Ok(ids)
}
