//! The seam between the engine and a model: feed tokens, get the last position's logits.
//! [`herd_model::TextModel`] implements it; tests use a fake.

use candle_core::Tensor;
use herd_model::{BatchItem, KvCache, LogitsFor, TextModel};

use crate::error::EngineError;

/// Image features that replace a prompt's `<|patch|>` embeddings, in order.
#[derive(Debug, Clone)]
pub struct ImageFeatures {
    /// [F, D]: one row per `<|patch|>` token of the prompt.
    pub rows: Tensor,
    pub patch_id: u32,
}

/// One sequence's share of a batched step ([`LanguageModel::feed_batch`]).
pub struct Feed<'a, C> {
    /// Tokens to feed after what `cache` holds.
    pub ids: &'a [u32],
    pub cache: &'a mut C,
    /// Logits at every fed position (prompt logprobs) instead of the last one only.
    pub all_logits: bool,
    /// Features for the `<|patch|>` tokens among `ids` (exactly as many rows as there are).
    pub images: Option<ImageFeatures>,
}

/// Logits of a step's positions, [rows, V] row-major.
#[derive(Debug, Clone, PartialEq)]
pub struct Logits {
    pub values: Vec<f32>,
    pub rows: usize,
}

impl Logits {
    pub fn row(&self, i: usize) -> &[f32] {
        let v = self.values.len() / self.rows.max(1);
        &self.values[i * v..(i + 1) * v]
    }

    pub fn last(&self) -> &[f32] {
        self.row(self.rows.saturating_sub(1))
    }
}

pub trait LanguageModel {
    /// Per-sequence state (the KV cache).
    type Cache;

    fn new_cache(&self) -> Self::Cache;

    /// A cache for a sequence known to reach at most `positions` positions (a real model sizes
    /// its buffers once for it).
    fn new_cache_for(&self, positions: usize) -> Self::Cache {
        let _ = positions;
        self.new_cache()
    }

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

    /// Whether `ids` (with `images`' rows for their `<|patch|>` tokens) can be fed after what
    /// `cache` holds: every check a feed makes before it changes the cache. The engine checks
    /// each item of a step first, so a bad request fails alone.
    fn check_feed(
        &self,
        ids: &[u32],
        cache: &Self::Cache,
        images: Option<&ImageFeatures>,
    ) -> Result<(), EngineError> {
        let _ = (ids, cache, images);
        Ok(())
    }

    /// One step over several sequences, each after its own cache; logits per item, in order.
    /// The default feeds them one by one (last position only); a real model runs them as one
    /// batch, so its weights stream once per step.
    fn feed_batch(&self, items: &mut [Feed<'_, Self::Cache>]) -> Result<Vec<Logits>, EngineError> {
        items
            .iter_mut()
            .map(|item| {
                if item.all_logits {
                    return Err(EngineError::InvalidParameter {
                        field: "logprobs",
                        message: "this model gives logits of the last position only".into(),
                    });
                }
                let values = match &item.images {
                    Some(images) => self.feed_with_images(item.ids, images, item.cache)?,
                    None => self.feed(item.ids, item.cache)?,
                };
                Ok(Logits { values, rows: 1 })
            })
            .collect()
    }

    /// Bytes of KV cache one sequence of `positions` positions may hold at most when fed in
    /// steps of up to `max_step` tokens (the scheduler's memory budget counts in these). 0 for
    /// a model without a cache of its own.
    fn kv_bytes_for(&self, positions: usize, max_step: usize) -> usize {
        let _ = (positions, max_step);
        0
    }
}

impl LanguageModel for TextModel {
    type Cache = KvCache;

    fn new_cache(&self) -> KvCache {
        TextModel::new_cache(self)
    }

    fn new_cache_for(&self, positions: usize) -> KvCache {
        let mut cache = TextModel::new_cache(self);
        cache.reserve(positions);
        cache
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

    fn check_feed(
        &self,
        ids: &[u32],
        cache: &KvCache,
        images: Option<&ImageFeatures>,
    ) -> Result<(), EngineError> {
        Ok(TextModel::check_feed(
            self,
            ids,
            cache,
            images.map(|i| (&i.rows, i.patch_id)),
        )?)
    }

    fn feed_batch(&self, items: &mut [Feed<'_, KvCache>]) -> Result<Vec<Logits>, EngineError> {
        let mut batch: Vec<BatchItem<'_>> = items
            .iter_mut()
            .map(|item| BatchItem {
                ids: item.ids,
                cache: &mut *item.cache,
                logits_for: if item.all_logits {
                    LogitsFor::All
                } else {
                    LogitsFor::Last
                },
                images: item.images.as_ref().map(|i| (&i.rows, i.patch_id)),
            })
            .collect();
        self.forward_batch(&mut batch)?.iter().map(logits_of).collect()
    }

    fn kv_bytes_for(&self, positions: usize, max_step: usize) -> usize {
        let config = self.config();
        let row = 2 * config.n_kv_heads * self.kv_format_stored().row_bytes(config.head_dim);
        config
            .layers
            .iter()
            .map(|plan| match plan.attention.chunk_len() {
                // A chunked layer keeps one block, but a step that crosses into the next block
                // holds the old block's tail and the whole step at once.
                // (A chunk longer than any context — a config may say 2⁶⁴ − 1 — saturates.)
                Some(c) if c > 0 => positions.min(c.saturating_add(max_step.saturating_sub(1))),
                _ => positions,
            })
            .sum::<usize>()
            * row
    }
}

fn logits_of(t: &Tensor) -> Result<Logits, EngineError> {
    let rows = t.dims().first().copied().unwrap_or(1);
    let values = t
        .flatten_all()
        .and_then(|l| l.to_vec1::<f32>())
        .map_err(herd_model::Error::from)?;
    Ok(Logits { values, rows })
}

fn last_row(logits: Tensor) -> Result<Vec<f32>, EngineError> {
    Ok(logits
        .squeeze(0)
        .and_then(|l| l.to_vec1::<f32>())
        .map_err(herd_model::Error::from)?)
}
