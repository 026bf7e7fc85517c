//! The seam between the engine and a model: feed tokens, get the last position's logits.
//! [`herd_model::TextModel`] implements it; tests use a fake.

use candle_core::Tensor;
use herd_model::{KvCache, LogitsFor, TextModel};

use crate::error::EngineError;

/// Image features that replace a prompt's `<|patch|>` embeddings, in order.
#[derive(Debug, Clone)]
pub struct ImageFeatures {
    /// [F, D]: one row per `<|patch|>` token of the prompt.
    pub rows: Tensor,
    pub patch_id: u32,
}

pub trait LanguageModel {
    /// Per-sequence state (the KV cache).
    type Cache;

    fn new_cache(&self) -> Self::Cache;

    /// Positions the model can hold in one sequence.
    fn max_positions(&self) -> usize;

    /// Feeds `ids` after what `cache` holds; returns the logits of the last position [V].
    fn feed(&self, ids: &[u32], cache: &mut Self::Cache) -> Result<Vec<f32>, EngineError>;

    /// Feeds a whole prompt whose `<|patch|>` tokens take `images`' rows (early fusion).
    fn feed_with_images(
        &self,
        ids: &[u32],
        images: &ImageFeatures,
        cache: &mut Self::Cache,
    ) -> Result<Vec<f32>, EngineError> {
        let _ = (ids, images, cache);
        Err(EngineError::InvalidParameter {
            field: "images",
            message: "this model takes no images".into(),
        })
    }
}

impl LanguageModel for TextModel {
    type Cache = KvCache;

    fn new_cache(&self) -> KvCache {
        TextModel::new_cache(self)
    }

    fn max_positions(&self) -> usize {
        self.config().max_position_embeddings
    }

    fn feed(&self, ids: &[u32], cache: &mut KvCache) -> Result<Vec<f32>, EngineError> {
        last_row(self.forward(ids, cache, LogitsFor::Last)?)
    }

    fn feed_with_images(
        &self,
        ids: &[u32],
        images: &ImageFeatures,
        cache: &mut KvCache,
    ) -> Result<Vec<f32>, EngineError> {
        last_row(self.forward_with_images(ids, &images.rows, images.patch_id, cache, LogitsFor::Last)?)
    }
}

fn last_row(logits: Tensor) -> Result<Vec<f32>, EngineError> {
    Ok(logits
        .squeeze(0)
        .and_then(|l| l.to_vec1::<f32>())
        .map_err(herd_model::Error::from)?)
}
