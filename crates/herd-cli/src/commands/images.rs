//! Images given on the command line → preprocessed tiles → vision tower → feature rows for
//! the prompt's `<|patch|>` tokens, plus each image's tile grid for the prompt layout.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use candle_core::{DType, Device, Tensor};
use herd_engine::image::{preprocess, PreprocessConfig, ProcessedImage};
use herd_engine::ImageFeatures;
use herd_model::vision::VisionModel;

/// What the prompt needs from its images.
pub struct EncodedImages {
    pub features: ImageFeatures,
    /// (rows, cols) per image, in order.
    pub grids: Vec<(u32, u32)>,
    pub tokens_per_tile: usize,
}

/// The preprocessing settings for a checkpoint: `preprocessor_config.json`, whose tile size
/// must match the vision tower's, or the vision tower's tile size with transformers' defaults.
pub fn preprocess_config(dir: &Path, vision_tile: Option<usize>) -> Result<PreprocessConfig> {
    let mut config = PreprocessConfig::load(dir)?;
    if !herd_limits::exists(&dir.join("preprocessor_config.json")) {
        if let Some(tile) = vision_tile {
            config.tile = tile as u32;
        }
    } else if let Some(tile) = vision_tile.filter(|&t| t != config.tile as usize) {
        bail!(
            "preprocessor_config.json has tile size {}, but the vision tower takes {tile}",
            config.tile
        );
    }
    Ok(config)
}

/// Preprocesses one image file for checkpoint `dir` (reads only its config files).
pub fn preprocess_file(dir: &Path, path: &Path, device: &Device) -> Result<ProcessedImage> {
    let top = herd_model::json_file::read_json(&dir.join("config.json"))?;
    let vision = herd_model::vision::VisionConfig::from_json(&top)?;
    let config = preprocess_config(dir, vision.map(|v| v.image_size))?;
    let img = load_image(path)?;
    Ok(preprocess(&img, &config, device)?)
}

/// An image from a file, or from a `data:image/...;base64,...` URL given in its place.
pub fn load_image(path: &Path) -> Result<herd_engine::image::RgbImage> {
    Ok(match path.to_str().filter(|p| p.starts_with("data:")) {
        Some(url) => herd_engine::image::load_data_url(url)?,
        None => herd_engine::image::load_file(path)?,
    })
}

/// Runs every image through the vision tower (batched over its tiles).
pub fn encode(
    dir: &Path,
    text_hidden: usize,
    paths: &[PathBuf],
    dtype: DType,
    device: &Device,
) -> Result<Option<EncodedImages>> {
    if paths.is_empty() {
        return Ok(None);
    }
    if crate::commands::text::is_gguf(dir) {
        bail!(
            "{} is a GGUF file: herd reads the vision tower from Hugging Face folders only, so --image needs the folder",
            dir.display()
        );
    }
    let Some(vision) = VisionModel::load_dir(dir, text_hidden, dtype, device)? else {
        bail!(
            "{} is a text-only checkpoint: it has no vision tower for --image",
            dir.display()
        );
    };
    let config = preprocess_config(dir, Some(vision.config().image_size))?;
    let mut rows = Vec::new();
    let mut grids = Vec::new();
    for path in paths {
        let img = load_image(path)?;
        let processed = preprocess(&img, &config, device)?;
        rows.push(
            vision
                .forward(&processed.pixel_values)
                .with_context(|| format!("encoding {}", path.display()))?,
        );
        grids.push(processed.aspect_ratio);
    }
    Ok(Some(EncodedImages {
        features: ImageFeatures {
            rows: Tensor::cat(&rows, 0)?,
            patch_id: vision.config().image_token_id,
        },
        grids,
        tokens_per_tile: vision.config().tokens_per_tile(),
    }))
}
