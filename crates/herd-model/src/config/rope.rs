//! RoPE frequencies, including llama3 scaling (Scout), from either spelling of the config:
//! transformers 4.x (`rope_theta` + `rope_scaling`) or 5.x (`rope_parameters`).
//!
//! Reference: transformers `modeling_rope_utils._compute_llama3_parameters`; precision per
//! LLAMA4.md §10 (inv_freq = f32(1) / f32(theta^(2m/d) in f64), scaled in f32).

use serde_json::Value;

use super::raw::RawTextConfig;
use crate::error::{Error, Result};

/// Base frequency and optional llama3 scaling of the text model's RoPE.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RopeConfig {
    pub theta: f64,
    pub scaling: Option<Llama3Scaling>,
}

/// llama3 frequency scaling: long wavelengths divided by `factor`, short ones kept, a smooth
/// blend between.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Llama3Scaling {
    pub factor: f64,
    pub low_freq_factor: f64,
    pub high_freq_factor: f64,
    pub original_max_position_embeddings: f64,
}

const DEFAULT_THETA: f64 = 500_000.0;

impl RopeConfig {
    pub(super) fn resolve(raw: &RawTextConfig) -> Result<Self> {
        let (field, block) = match (&raw.rope_parameters, &raw.rope_scaling) {
            (Some(p), _) if !p.is_null() => ("rope_parameters", Some(p)),
            (_, Some(s)) if !s.is_null() => ("rope_scaling", Some(s)),
            _ => ("rope_scaling", None),
        };
        if let Some(b) = block.filter(|b| !b.is_object()) {
            return Err(Error::config(
                field,
                format!(
                    "must be an object like {{\"rope_type\": \"llama3\", \"factor\": 16.0, ...}}, found {b}"
                ),
            ));
        }
        let (theta_field, theta) = match block.and_then(|b| b.get("rope_theta")) {
            Some(v) => (
                format!("{field}.rope_theta"),
                v.as_f64().ok_or_else(|| {
                    Error::config(
                        format!("{field}.rope_theta"),
                        format!("must be a number, found {v}"),
                    )
                })?,
            ),
            None => ("rope_theta".to_string(), raw.rope_theta.unwrap_or(DEFAULT_THETA)),
        };
        if !(theta.is_finite() && theta > 1.0) {
            return Err(Error::config(theta_field, format!("{theta} must exceed 1")));
        }
        let Some(block) = block else {
            return Ok(RopeConfig { theta, scaling: None });
        };
        // transformers 4.x wrote `type`, later `rope_type`; a block without either would
        // silently mean "no scaling" although it holds scaling parameters.
        let kind = match block.get("rope_type").or_else(|| block.get("type")) {
            Some(serde_json::Value::String(kind)) => kind.as_str(),
            Some(other) => {
                return Err(Error::config(
                    format!("{field}.rope_type"),
                    format!("must be a string (`default` or `llama3`), found {other}"),
                ))
            }
            None => {
                return Err(Error::config(
                    format!("{field}.rope_type"),
                    "is missing (expected `default` or `llama3`)",
                ))
            }
        };
        let scaling = match kind {
            "default" => None,
            "llama3" => Some(Llama3Scaling::from_block(field, block)?),
            other => {
                return Err(Error::config(
                    format!("{field}.rope_type"),
                    format!("`{other}` is not supported (Llama 4 uses `default` or `llama3`)"),
                ))
            }
        };
        Ok(RopeConfig { theta, scaling })
    }

    /// Inverse frequencies for `head_dim` (one per rotated pair), bit-exact with transformers.
    pub fn inv_freq(&self, head_dim: usize) -> Vec<f32> {
        (0..head_dim / 2)
            .map(|m| {
                let exponent = (2 * m) as f64 / head_dim as f64;
                let inv = 1.0f32 / self.theta.powf(exponent) as f32;
                match &self.scaling {
                    Some(s) => s.scale(inv),
                    None => inv,
                }
            })
            .collect()
    }
}

impl Llama3Scaling {
    fn from_block(field: &str, block: &Value) -> Result<Self> {
        let num = |key: &str| -> Result<f64> {
            block
                .get(key)
                .and_then(Value::as_f64)
                .filter(|v| v.is_finite() && *v > 0.0)
                .ok_or_else(|| {
                    Error::config(
                        format!("{field}.{key}"),
                        "llama3 rope scaling needs this as a positive number",
                    )
                })
        };
        Ok(Llama3Scaling {
            factor: num("factor")?,
            low_freq_factor: num("low_freq_factor")?,
            high_freq_factor: num("high_freq_factor")?,
            original_max_position_embeddings: num("original_max_position_embeddings")?,
        })
    }

    /// Scales one inverse frequency, in f32 as transformers does.
    pub fn scale(&self, inv_freq: f32) -> f32 {
        let factor = self.factor as f32;
        let low = self.low_freq_factor as f32;
        let high = self.high_freq_factor as f32;
        let old_len = self.original_max_position_embeddings as f32;
        let low_freq_wavelen = old_len / low;
        let high_freq_wavelen = old_len / high;
        let wavelen = 2.0 * std::f32::consts::PI / inv_freq;
        if wavelen < high_freq_wavelen {
            inv_freq
        } else if wavelen > low_freq_wavelen {
            inv_freq / factor
        } else if high == low {
            // Scout has low = high: the blend band is the single wavelength `old_len`, where
            // the smoothing formula is 0/0 (transformers would yield NaN). Keep it unscaled.
            inv_freq
        } else {
            let smooth = (old_len / wavelen - low) / (high - low);
            (1.0 - smooth) * inv_freq / factor + smooth * inv_freq
        }
    }
}
