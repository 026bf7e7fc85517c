//! Early fusion: image feature rows replace, in order, the embeddings of the prompt's
//! `<|patch|>` tokens (images in prompt order, tiles row-major then the global tile, tokens
//! row-major within a tile). Every other image-markup token keeps its own embedding; positions
//! stay plain 1-D (LLAMA4.md §5).

use candle_core::Tensor;

use crate::error::{Error, Result};

/// x: [T, D] embeddings of `ids`; features: [F, D] → [T, D] with the `<|patch|>` rows replaced.
pub fn fuse(ids: &[u32], x_td: &Tensor, features: &Tensor, patch_id: u32) -> Result<Tensor> {
    let t = ids.len() as u32;
    // Row i of the result: the i-th embedding, or the next feature row for a `<|patch|>`.
    let mut next_feature = 0u32;
    let source: Vec<u32> = (0..t)
        .zip(ids)
        .map(|(i, &id)| {
            if id == patch_id {
                next_feature += 1;
                t + next_feature - 1
            } else {
                i
            }
        })
        .collect();
    let n_features = features.dims2()?.0;
    if next_feature as usize != n_features {
        return Err(Error::ImageTokens {
            patch_tokens: next_feature as usize,
            features: n_features,
        });
    }
    if n_features == 0 {
        return Ok(x_td.clone());
    }
    let rows = Tensor::cat(&[x_td, &features.to_dtype(x_td.dtype())?], 0)?; // [T + F, D]
    let index = Tensor::from_vec(source, ids.len(), x_td.device())?;
    Ok(rows.index_select(&index, 0)?)
}
