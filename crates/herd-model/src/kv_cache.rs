//! Keys and values of past positions, per layer.
//!
//! Global layers keep the whole history. Chunked layers keep only the block the next position
//! falls in, since no later query can see an earlier block: their memory is bounded by the chunk
//! length whatever the context length (transformers keeps the last C − 1, the same bound).

use candle_core::Tensor;

use crate::config::{LayerPlan, ModelConfig};
use crate::error::Result;
use crate::text::mask::chunk_start;

/// One layer's cache: keys/values [Hkv, L, Dh] for absolute positions `start .. start + L`.
#[derive(Debug, Clone)]
pub struct LayerCache {
    chunk_len: Option<usize>,
    kv: Option<(Tensor, Tensor)>,
    start: usize,
}

impl LayerCache {
    pub fn new(plan: &LayerPlan) -> Self {
        LayerCache {
            chunk_len: plan.attention.chunk_len(),
            kv: None,
            start: 0,
        }
    }

    /// Absolute position of the first cached key.
    pub fn start(&self) -> usize {
        self.start
    }

    /// Number of cached positions.
    pub fn len(&self) -> usize {
        self.kv.as_ref().map_or(0, |(k, _)| k.dims()[1])
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Appends the step's keys/values [Hkv, T, Dh]; returns every key/value a query of this
    /// step may need, [Hkv, L, Dh], starting at absolute position [`Self::start`].
    pub fn extend(&mut self, k_new: &Tensor, v_new: &Tensor) -> Result<(Tensor, Tensor)> {
        let (k, v) = match &self.kv {
            Some((k, v)) => (Tensor::cat(&[k, k_new], 1)?, Tensor::cat(&[v, v_new], 1)?),
            None => (k_new.clone(), v_new.clone()),
        };
        self.kv = Some((k.clone(), v.clone()));
        Ok((k, v))
    }

    /// Drops what no query at `next_pos` or later can attend to.
    pub fn evict_before(&mut self, next_pos: usize) -> Result<()> {
        let keep_from = chunk_start(next_pos, self.chunk_len);
        if keep_from <= self.start {
            return Ok(());
        }
        if let Some((k, v)) = &self.kv {
            let len = k.dims()[1];
            let drop = (keep_from - self.start).min(len);
            self.kv = if drop == len {
                None
            } else {
                Some((
                    k.narrow(1, drop, len - drop)?.contiguous()?,
                    v.narrow(1, drop, len - drop)?.contiguous()?,
                ))
            };
        }
        self.start = keep_from;
        Ok(())
    }

    /// Bytes held by this layer's keys and values.
    pub fn bytes(&self) -> usize {
        self.kv.as_ref().map_or(0, |(k, v)| {
            (k.elem_count() + v.elem_count()) * k.dtype().size_in_bytes()
        })
    }
}

/// The whole model's cache for one sequence.
#[derive(Debug, Clone)]
pub struct KvCache {
    layers: Vec<LayerCache>,
    /// Number of positions fed so far (= the next token's position).
    n_positions: usize,
}

impl KvCache {
    pub fn new(config: &ModelConfig) -> Self {
        KvCache {
            layers: config.layers.iter().map(LayerCache::new).collect(),
            n_positions: 0,
        }
    }

    pub fn n_positions(&self) -> usize {
        self.n_positions
    }

    pub fn layers_mut(&mut self) -> &mut [LayerCache] {
        &mut self.layers
    }

    pub fn layers(&self) -> &[LayerCache] {
        &self.layers
    }

    /// Records that a step of `n` tokens was fed and evicts what is no longer visible.
    pub(crate) fn advance(&mut self, n: usize) -> Result<()> {
        self.n_positions += n;
        for layer in &mut self.layers {
            layer.evict_before(self.n_positions)?;
        }
        Ok(())
    }

    /// Bytes held across all layers.
    pub fn bytes(&self) -> usize {
        self.layers.iter().map(LayerCache::bytes).sum()
    }
}
