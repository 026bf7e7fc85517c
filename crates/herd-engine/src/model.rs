//! The seam between the engine and a model: feed tokens, get the last position's logits.
//! [`herd_model::TextModel`] implements it; tests use a fake.

use herd_model::{KvCache, LogitsFor, TextModel};

use crate::error::EngineError;

pub trait LanguageModel {
    /// Per-sequence state (the KV cache).
    type Cache;

    fn new_cache(&self) -> Self::Cache;

    /// Positions the model can hold in one sequence.
    fn max_positions(&self) -> usize;

    /// Feeds `ids` after what `cache` holds; returns the logits of the last position [V].
    fn feed(&self, ids: &[u32], cache: &mut Self::Cache) -> Result<Vec<f32>, EngineError>;
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
        let logits = self.forward(ids, cache, LogitsFor::Last)?;
        Ok(logits
            .squeeze(0)
            .and_then(|l| l.to_vec1::<f32>())
            .map_err(herd_model::Error::from)?)
    }
}
