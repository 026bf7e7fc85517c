//! What every layer of one forward step shares: the absolute positions of the step's tokens,
//! their RoPE tables, their NoPE temperature scales and the attention masks — computed once per
//! step, not per layer.

use std::collections::HashMap;
use std::ops::Range;
use std::sync::{Arc, Mutex};

use candle_core::{DType, Device, Tensor};

use crate::config::ModelConfig;
use crate::error::Result;
use crate::nn::RotaryTables;

#[derive(Debug, Clone)]
pub struct StepInputs {
    /// Absolute positions of the step's tokens.
    pub positions: Range<usize>,
    /// cos/sin for `positions` (unused by NoPE layers).
    pub rotary: RotaryTables,
    /// Query scale per position, [1, 1, T, 1], for temperature-tuned NoPE layers.
    pub temperature_scales: Option<Tensor>,
    /// Masks built so far this step, by (queries, keys, chunk length): every layer of a kind
    /// asks for the same ones, so the first layer builds them and the rest share them.
    masks: Arc<Mutex<HashMap<MaskKey, Tensor>>>,
}

type MaskKey = (Range<usize>, Range<usize>, Option<usize>);

impl StepInputs {
    pub fn new(
        config: &ModelConfig,
        inv_freq: &[f32],
        positions: Range<usize>,
        dtype: DType,
        device: &Device,
    ) -> Result<Self> {
        let rotary = RotaryTables::new(inv_freq, positions.clone(), config.rope_pairing, dtype, device)?;
        let tuning = config.layers.iter().find_map(|l| l.temperature_tuning);
        let temperature_scales = match tuning {
            Some(t) => {
                let scales: Vec<f32> = positions.clone().map(|p| t.scale(p)).collect();
                Some(Tensor::from_vec(scales, (1, 1, positions.len(), 1), device)?.to_dtype(dtype)?)
            }
            None => None,
        };
        Ok(StepInputs {
            positions,
            rotary,
            temperature_scales,
            masks: Arc::default(),
        })
    }

    pub fn len(&self) -> usize {
        self.positions.len()
    }

    /// The additive mask [queries, keys] for a layer with `chunk_len` (see
    /// [`crate::text::mask::additive_mask`]), in `dtype` on `device`: built by the first layer
    /// that asks this step, shared by the others.
    pub fn mask(
        &self,
        queries: Range<usize>,
        keys: Range<usize>,
        chunk_len: Option<usize>,
        dtype: DType,
        device: &Device,
    ) -> Result<Tensor> {
        let key = (queries.clone(), keys.clone(), chunk_len);
        // A poisoned lock only means another layer panicked mid-insert; the map is still sound.
        let mut masks = self.masks.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(mask) = masks.get(&key) {
            return Ok(mask.clone());
        }
        let (rows, cols) = (queries.len(), keys.len());
        let values = crate::text::mask::additive_mask(queries, keys, chunk_len);
        let mask = Tensor::from_vec(values, (rows, cols), device)?.to_dtype(dtype)?;
        masks.insert(key, mask.clone());
        Ok(mask)
    }

    pub fn is_empty(&self) -> bool {
        self.positions.is_empty()
    }
}

/// A step in which several sequences each feed one token (batched decode): every row's RoPE
/// table and temperature scale concatenated once, so each layer rotates and scales the whole
/// batch in one call instead of once per sequence.
#[derive(Debug, Clone)]
pub struct DecodeInputs {
    pub rotary: RotaryTables,
    /// [1, 1, T, 1]
    pub temperature_scales: Option<Tensor>,
}

impl DecodeInputs {
    /// `None` unless there are at least two steps and each feeds exactly one token.
    pub fn new(steps: &[StepInputs]) -> Result<Option<Self>> {
        if steps.len() < 2 || steps.iter().any(|s| s.len() != 1) {
            return Ok(None);
        }
        let tables: Vec<&RotaryTables> = steps.iter().map(|s| &s.rotary).collect();
        let scales: Option<Vec<&Tensor>> = steps.iter().map(|s| s.temperature_scales.as_ref()).collect();
        Ok(Some(DecodeInputs {
            rotary: RotaryTables::cat(&tables)?,
            temperature_scales: match scales {
                Some(s) => Some(Tensor::cat(&s, 2)?),
                None => None,
            },
        }))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn a_mask_is_built_once_per_step_and_shared() {
        let fixture = concat!(env!("CARGO_MANIFEST_DIR"), "/../../fixtures/scout-tiny");
        let config = ModelConfig::load(std::path::Path::new(fixture)).unwrap();
        let step = StepInputs::new(&config, &[1.0; 4], 0..6, DType::F32, &Device::Cpu).unwrap();
        let a = step.mask(0..6, 0..6, Some(4), DType::F32, &Device::Cpu).unwrap();
        let b = step.mask(0..6, 0..6, Some(4), DType::F32, &Device::Cpu).unwrap();
        assert_eq!(a.id(), b.id(), "the second layer reuses the first layer's mask");
        let global = step.mask(0..6, 0..6, None, DType::F32, &Device::Cpu).unwrap();
        assert_ne!(a.id(), global.id());
        // Chunk of 4: query 5 sees keys 4 and 5 only; globally it sees 0..=5.
        let row = |m: &Tensor| m.get(5).unwrap().to_vec1::<f32>().unwrap();
        let inf = f32::NEG_INFINITY;
        assert_eq!(row(&a), [inf, inf, inf, inf, 0.0, 0.0]);
        assert_eq!(row(&global), [0.0; 6]);
        assert_eq!(a.dims(), &[6, 6]);
    }
}
