//! `vision_config` of a `Llama4ForConditionalGeneration` `config.json`, resolved and checked.

use serde::Deserialize;
use serde_json::Value;

use crate::error::{Error, Result};

#[derive(Debug, Clone, PartialEq)]
pub struct VisionConfig {
    pub hidden_size: usize,
    pub n_layers: usize,
    pub n_heads: usize,
    pub intermediate_size: usize,
    /// Tile side in pixels.
    pub image_size: usize,
    pub patch_size: usize,
    pub n_channels: usize,
    pub pixel_shuffle_ratio: f64,
    pub projector_input_dim: usize,
    pub projector_output_dim: usize,
    pub vision_output_dim: usize,
    pub rope_theta: f64,
    /// The `<|patch|>` id whose embeddings image features replace.
    pub image_token_id: u32,
}

#[derive(Deserialize)]
struct Raw {
    #[serde(default = "d::hidden_size")]
    hidden_size: usize,
    #[serde(default = "d::num_hidden_layers")]
    num_hidden_layers: usize,
    #[serde(default = "d::num_attention_heads")]
    num_attention_heads: usize,
    #[serde(default = "d::intermediate_size")]
    intermediate_size: usize,
    #[serde(default = "d::image_size")]
    image_size: usize,
    #[serde(default = "d::patch_size")]
    patch_size: usize,
    #[serde(default = "d::num_channels")]
    num_channels: usize,
    #[serde(default = "d::pixel_shuffle_ratio")]
    pixel_shuffle_ratio: f64,
    #[serde(default = "d::projector_dim")]
    projector_input_dim: usize,
    #[serde(default = "d::projector_dim")]
    projector_output_dim: usize,
    #[serde(default = "d::vision_output_dim")]
    vision_output_dim: usize,
    rope_theta: Option<f64>,
    rope_parameters: Option<Value>,
    #[serde(default = "d::hidden_act")]
    hidden_act: String,
}

/// transformers' `Llama4VisionConfig` defaults.
mod d {
    pub fn hidden_size() -> usize {
        768
    }
    pub fn num_hidden_layers() -> usize {
        34
    }
    pub fn num_attention_heads() -> usize {
        16
    }
    pub fn intermediate_size() -> usize {
        5632
    }
    pub fn image_size() -> usize {
        448
    }
    pub fn patch_size() -> usize {
        14
    }
    pub fn num_channels() -> usize {
        3
    }
    pub fn pixel_shuffle_ratio() -> f64 {
        0.5
    }
    pub fn projector_dim() -> usize {
        4096
    }
    pub fn vision_output_dim() -> usize {
        7680
    }
    pub fn hidden_act() -> String {
        "gelu".into()
    }
}

impl VisionConfig {
    /// Resolves the vision part of a top-level `config.json`; `None` for text-only models.
    pub fn from_json(top: &Value) -> Result<Option<Self>> {
        let Some(vision) = top.get("vision_config").filter(|v| !v.is_null()) else {
            return Ok(None);
        };
        let raw: Raw = serde_path_to_error::deserialize(vision.clone())
            .map_err(|e| Error::config(format!("vision_config.{}", e.path()), e.into_inner().to_string()))?;
        let field = |name: &str, message: String| Error::config(format!("vision_config.{name}"), message);
        if raw.hidden_act != "gelu" {
            return Err(field(
                "hidden_act",
                format!("`{}` is not supported (Llama 4 uses gelu)", raw.hidden_act),
            ));
        }
        if raw.num_attention_heads == 0 || !raw.hidden_size.is_multiple_of(raw.num_attention_heads) {
            return Err(field(
                "num_attention_heads",
                format!("must divide hidden_size {}", raw.hidden_size),
            ));
        }
        let head_dim = raw.hidden_size / raw.num_attention_heads;
        if !head_dim.is_multiple_of(4) {
            return Err(field(
                "hidden_size",
                format!("head dim {head_dim} must be a multiple of 4 (2-D RoPE)"),
            ));
        }
        for (name, v, max) in [
            ("hidden_size", raw.hidden_size, 1 << 16),
            ("num_hidden_layers", raw.num_hidden_layers, 1 << 10),
            ("image_size", raw.image_size, 1 << 13),
            ("patch_size", raw.patch_size, 1 << 13),
            ("num_channels", raw.num_channels, 4),
            ("projector_input_dim", raw.projector_input_dim, 1 << 18),
            ("projector_output_dim", raw.projector_output_dim, 1 << 18),
            ("vision_output_dim", raw.vision_output_dim, 1 << 18),
        ] {
            if v == 0 || v > max {
                return Err(field(name, format!("{v} must be between 1 and {max}")));
            }
        }
        if raw.patch_size == 0 || !raw.image_size.is_multiple_of(raw.patch_size) {
            return Err(field(
                "image_size",
                format!(
                    "{} is not a multiple of patch_size {}",
                    raw.image_size, raw.patch_size
                ),
            ));
        }
        let grid = raw.image_size / raw.patch_size;
        if grid > 256 {
            return Err(field(
                "patch_size",
                format!("{grid}×{grid} patches per tile; herd supports at most 256×256"),
            ));
        }
        if raw.pixel_shuffle_ratio != 0.5 || !grid.is_multiple_of(2) {
            return Err(field(
                "pixel_shuffle_ratio",
                format!(
                    "herd supports 0.5 on an even patch grid (got {} on {grid}×{grid})",
                    raw.pixel_shuffle_ratio
                ),
            ));
        }
        if raw.intermediate_size != 4 * raw.hidden_size {
            // transformers sizes the adapter's input by intermediate_size, Meta by
            // hidden / ratio²: they must agree (LLAMA4.md §9.6).
            return Err(field(
                "intermediate_size",
                format!(
                    "{} must equal hidden_size / pixel_shuffle_ratio² = {}",
                    raw.intermediate_size,
                    4 * raw.hidden_size
                ),
            ));
        }
        if raw.projector_output_dim != raw.vision_output_dim {
            return Err(field(
                "vision_output_dim",
                format!(
                    "{} must equal projector_output_dim {}",
                    raw.vision_output_dim, raw.projector_output_dim
                ),
            ));
        }
        let rope_theta = match raw.rope_parameters.as_ref().filter(|p| !p.is_null()) {
            Some(p) => match p.get("rope_theta") {
                Some(v) => v.as_f64().ok_or_else(|| {
                    field(
                        "rope_parameters.rope_theta",
                        format!("must be a number, found {v}"),
                    )
                })?,
                None if p.is_object() => raw.rope_theta.unwrap_or(10_000.0),
                None => return Err(field("rope_parameters", format!("must be an object, found {p}"))),
            },
            None => raw.rope_theta.unwrap_or(10_000.0),
        };
        if !(rope_theta.is_finite() && rope_theta > 1.0) {
            return Err(field("rope_theta", format!("{rope_theta} must exceed 1")));
        }
        let image_token_id = match top.get("image_token_index").filter(|v| !v.is_null()) {
            None => 200_092,
            Some(v) => v.as_u64().and_then(|v| u32::try_from(v).ok()).ok_or_else(|| {
                Error::config("image_token_index", format!("must be a token id, found {v}"))
            })?,
        };
        Ok(Some(VisionConfig {
            hidden_size: raw.hidden_size,
            n_layers: raw.num_hidden_layers,
            n_heads: raw.num_attention_heads,
            intermediate_size: raw.intermediate_size,
            image_size: raw.image_size,
            patch_size: raw.patch_size,
            n_channels: raw.num_channels,
            pixel_shuffle_ratio: raw.pixel_shuffle_ratio,
            projector_input_dim: raw.projector_input_dim,
            projector_output_dim: raw.projector_output_dim,
            vision_output_dim: raw.vision_output_dim,
            rope_theta,
            image_token_id,
        }))
    }

    pub fn head_dim(&self) -> usize {
        self.hidden_size / self.n_heads
    }

    /// Patches per tile side.
    pub fn grid(&self) -> usize {
        self.image_size / self.patch_size
    }

    /// `<|patch|>` tokens one tile becomes (after the pixel shuffle).
    pub fn tokens_per_tile(&self) -> usize {
        self.grid() * self.grid() / 4
    }
}
