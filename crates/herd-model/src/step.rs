//! What every layer of one forward step shares: the absolute positions of the step's tokens,
//! their RoPE tables and their NoPE temperature scales — computed once per step, not per layer.

use std::ops::Range;

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
}

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
        })
    }

    pub fn len(&self) -> usize {
        self.positions.len()
    }

    pub fn is_empty(&self) -> bool {
        self.positions.is_empty()
    }
}
