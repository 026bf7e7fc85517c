//! Early fusion: image feature rows replace, in order, the embeddings of the prompt's
//! `<|patch|>` tokens (images in prompt order, tiles row-major then the global tile, tokens
//! row-major within a tile). Every other image-markup token keeps its own embedding; positions
//! stay plain 1-D (LLAMA4.md §5).

use candle_core::Tensor;

use crate::error::{Error, Result};

/// x: [T, D] embeddings of `ids`; features: [F, D] → [T, D] with the `<|patch|>` rows replaced.
pub fn fuse(ids: &[u32], x_td: &Tensor, features: &Tensor, patch_id: u32) -> Result<Tensor> {
    let rows: Vec<u32> = ids
        .iter()
        .enumerate()
        .filter(|(_, &id)| id == patch_id)
        .map(|(i, _)| i as u32)
        .collect();
    let n_features = features.dims2()?.0;
    if rows.len() != n_features {
        return Err(Error::ImageTokens {
            patch_tokens: rows.len(),
            features: n_features,
        });
    }
    if rows.is_empty() {
        return Ok(x_td.clone());
    }
    let index = Tensor::from_vec(rows.clone(), rows.len(), x_td.device())?;
    // Zero the patch rows, then add the features there.
    let zeros = x_td.index_select(&index, 0)?.neg()?;
    let cleared = x_td.index_add(&index, &zeros, 0)?;
    Ok(cleared.index_add(&index, &features.to_dtype(x_td.dtype())?, 0)?)
}
