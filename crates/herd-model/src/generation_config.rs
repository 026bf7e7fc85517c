//! `generation_config.json`: the checkpoint's own generation defaults. herd reads the stop ids
//! (`eos_token_id`, an int or a list); an absent file is not an error.

use std::path::Path;

use serde::Deserialize;

use crate::config::raw::TokenIds;
use crate::error::{Error, Result};

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GenerationConfig {
    pub eos_token_ids: Vec<u32>,
}

#[derive(Deserialize)]
struct Raw {
    eos_token_id: Option<TokenIds>,
}

impl GenerationConfig {
    /// Reads `dir/generation_config.json`, or the empty default when the folder has none.
    pub fn load(dir: &Path) -> Result<Self> {
        let path = dir.join("generation_config.json");
        if !herd_limits::exists(&path) {
            return Ok(Self::default());
        }
        let raw: Raw = crate::json_file::read_json_as(&path)?;
        let eos_token_ids = raw
            .eos_token_id
            .map(|ids| ids.to_vec())
            .unwrap_or_default()
            .into_iter()
            .map(|id| {
                u32::try_from(id).map_err(|_| {
                    Error::config(
                        "generation_config.eos_token_id",
                        format!("{id} is not a token id"),
                    )
                })
            })
            .collect::<Result<_>>()?;
        Ok(GenerationConfig { eos_token_ids })
    }
}

/// Every stop id a checkpoint declares: `config.json`'s `eos_token_id` and
/// `generation_config.json`'s, without repeats, in first-seen order.
pub fn stop_token_ids(model_eos: &[u32], generation: &GenerationConfig) -> Vec<u32> {
    // A set, not `Vec::contains`: a file may list millions of ids.
    let mut seen = std::collections::HashSet::new();
    model_eos
        .iter()
        .chain(&generation.eos_token_ids)
        .copied()
        .filter(|id| seen.insert(*id))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stop_ids_keep_their_first_order_without_repeats_however_many() {
        let generation = GenerationConfig {
            eos_token_ids: vec![7, 2, 9, 7],
        };
        assert_eq!(stop_token_ids(&[2, 5, 2], &generation), [2, 5, 7, 9]);
        // Two million distinct ids (a hostile file's worth): linear, not quadratic.
        let many = GenerationConfig {
            eos_token_ids: (0..2_000_000).rev().collect(),
        };
        let ids = stop_token_ids(&[5], &many);
        assert_eq!(ids.len(), 2_000_000);
        assert_eq!(ids[..3], [5, 1_999_999, 1_999_998]);
    }
}
