//! A micro-batch on one flat token axis: samples one after another, each with positions from
//! 0, attending only inside itself; and what every layer of one pass shares (RoPE tables,
//! temperature scales), computed once.

use std::ops::Range;

use candle_core::{Device, Tensor};
use herd_model::ModelConfig;

use crate::error::{Error, Result};

/// Token rows of several samples and which of them are loss targets.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Batch {
    pub ids: Vec<u32>,
    /// Each sample's rows.
    pub segments: Vec<Range<usize>>,
    /// `trained[i]`: ids[i] is predicted (from row i − 1 of the same sample) and counts in the
    /// loss. Never true on a sample's first row.
    pub trained: Vec<bool>,
}

impl Batch {
    /// One sample's tokens and target flags appended as a new segment.
    pub fn push(&mut self, ids: &[u32], trained: &[bool]) {
        let start = self.ids.len();
        self.ids.extend_from_slice(ids);
        self.trained
            .extend(trained.iter().enumerate().map(|(i, &t)| t && i > 0));
        self.segments.push(start..self.ids.len());
    }

    /// (row whose logits predict, target id) for every trained token.
    pub fn targets(&self) -> Vec<(u32, u32)> {
        self.segments
            .iter()
            .flat_map(|seg| seg.clone().skip(1))
            .filter(|&i| self.trained[i])
            .map(|i| ((i - 1) as u32, self.ids[i]))
            .collect()
    }

    pub fn n_targets(&self) -> usize {
        self.targets().len()
    }

    pub fn len(&self) -> usize {
        self.ids.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }

    /// Each row's position inside its sample.
    pub fn positions(&self) -> Vec<usize> {
        self.segments.iter().flat_map(|seg| 0..seg.len()).collect()
    }

    pub fn check(&self, vocab: usize) -> Result<()> {
        if let Some(id) = self.ids.iter().find(|&&id| id as usize >= vocab) {
            return Err(Error::Data(format!(
                "token id {id} is outside the vocabulary of {vocab}"
            )));
        }
        let covered: usize = self.segments.iter().map(|s| s.len()).sum();
        if covered != self.ids.len() || self.trained.len() != self.ids.len() {
            return Err(Error::Data("batch segments do not cover its rows".into()));
        }
        Ok(())
    }
}

/// What all layers of one pass share.
#[derive(Debug, Clone)]
pub struct Geometry {
    pub segments: Vec<Range<usize>>,
    /// [T, Dh/2] each.
    pub cos: Tensor,
    pub sin: Tensor,
    /// [1, T, 1] query scales for temperature-tuned NoPE layers.
    pub temperature_scales: Option<Tensor>,
}

impl Geometry {
    pub fn new(batch: &Batch, config: &ModelConfig, inv_freq: &[f32]) -> Result<Self> {
        let positions = batch.positions();
        let t = positions.len();
        // Angles `f32(pos) · inv_freq` in f32, as herd-model's RotaryTables (and transformers).
        let (cos, sin): (Vec<f32>, Vec<f32>) = positions
            .iter()
            .flat_map(|&p| inv_freq.iter().map(move |f| p as f32 * f))
            .map(|a| (a.cos(), a.sin()))
            .unzip();
        let tuning = config.layers.iter().find_map(|l| l.temperature_tuning);
        let temperature_scales = match tuning {
            Some(tt) => {
                let s: Vec<f32> = positions.iter().map(|&p| tt.scale(p)).collect();
                Some(Tensor::from_vec(s, (1, t, 1), &Device::Cpu)?)
            }
            None => None,
        };
        Ok(Geometry {
            segments: batch.segments.clone(),
            cos: Tensor::from_vec(cos, (t, inv_freq.len()), &Device::Cpu)?,
            sin: Tensor::from_vec(sin, (t, inv_freq.len()), &Device::Cpu)?,
            temperature_scales,
        })
    }
}
