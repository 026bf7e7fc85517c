//! Images → preprocessed tiles → vision tower → feature rows for the prompt's `<|patch|>`
//! tokens, plus each image's tile grid for the prompt layout. The tower is loaded once
//! ([`ImageEncoder`]) and each image encoded once per request.

use std::path::Path;

use candle_core::{DType, Device, Tensor};
use herd_model::nn::MatmulPrecision;
use herd_model::vision::VisionModel;
use herd_model::TextModel;

use crate::error::EngineError;
use crate::image::{preprocess, PreprocessConfig, ProcessedImage, RgbImage};
use crate::model::ImageFeatures;

type Result<T> = std::result::Result<T, EngineError>;

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
        return Err(EngineError::Frontend(format!(
            "preprocessor_config.json has tile size {}, but the vision tower takes {tile}",
            config.tile
        )));
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
pub fn load_image(path: &Path) -> Result<RgbImage> {
    Ok(match path.to_str().filter(|p| p.starts_with("data:")) {
        Some(url) => crate::image::load_data_url(url)?,
        None => crate::image::load_file(path)?,
    })
}

/// A checkpoint's vision tower and preprocessing, loaded once.
pub struct ImageEncoder {
    vision: VisionModel,
    config: PreprocessConfig,
    device: Device,
}

impl ImageEncoder {
    /// The tower of the folder `dir` (`None` for a text-only checkpoint); a GGUF file is
    /// refused (herd reads vision towers from Hugging Face folders only).
    pub fn load(dir: &Path, text_hidden: usize, dtype: DType, device: &Device) -> Result<Option<Self>> {
        if super::is_gguf(dir) {
            return Err(EngineError::Frontend(format!(
                "{} is a GGUF file: herd reads the vision tower from Hugging Face folders only, so images need the folder",
                dir.display()
            )));
        }
        let Some(vision) = VisionModel::load_dir(dir, text_hidden, dtype, device)? else {
            return Ok(None);
        };
        let config = preprocess_config(dir, Some(vision.config().image_size))?;
        Ok(Some(ImageEncoder {
            vision,
            config,
            device: device.clone(),
        }))
    }

    /// The tower of `dir` for `model`: its text width, compute dtype, device and matmul
    /// precision.
    pub fn for_model(dir: &Path, model: &TextModel) -> Result<Option<Self>> {
        let mut encoder = Self::load(dir, model.config().hidden_size, model.dtype(), model.device())?;
        if let Some(encoder) = &mut encoder {
            encoder.set_matmul_precision(model.matmul_precision());
        }
        Ok(encoder)
    }

    /// Checks that the tower's feature rows go where `tokenizer` puts them: the checkpoint's
    /// `image_token_index` must be the tokenizer's `<|patch|>` id, or a prompt's patch tokens
    /// would take none of the rows.
    pub fn check_tokenizer(&self, tokenizer: &herd_text::Tokenizer) -> Result<()> {
        let patch = herd_text::image_layout::ImageTokenIds::from_tokenizer(tokenizer)?.patch;
        let configured = self.vision.config().image_token_id;
        if patch != configured {
            return Err(EngineError::Frontend(format!(
                "config.json's image_token_index is {configured}, but the tokenizer's <|patch|> is {patch}: the images would go nowhere"
            )));
        }
        Ok(())
    }

    /// Rounds activations before the tower's products with narrow-float weights (see
    /// [`MatmulPrecision`]).
    pub fn set_matmul_precision(&mut self, precision: MatmulPrecision) {
        self.vision.set_matmul_precision(precision);
    }

    /// Patches per tile in the prompt.
    pub fn tokens_per_tile(&self) -> usize {
        self.vision.config().tokens_per_tile()
    }

    /// The preprocessing settings (tile size, most tiles an image).
    pub fn preprocess_config(&self) -> &PreprocessConfig {
        &self.config
    }

    /// Runs every image through the tower (batched over its tiles).
    pub fn encode(&self, images: &[RgbImage]) -> Result<Option<EncodedImages>> {
        let limits = vec![None; images.len()];
        self.encode_limited(images, &limits)
    }

    /// [`Self::encode`] with a tile limit per image (`None`: the preprocessor's own) — video
    /// frames fitted to a token budget take fewer tiles than pictures.
    pub fn encode_limited(
        &self,
        images: &[RgbImage],
        max_tiles: &[Option<u32>],
    ) -> Result<Option<EncodedImages>> {
        if images.is_empty() {
            return Ok(None);
        }
        let mut rows = Vec::new();
        let mut grids = Vec::new();
        for (i, img) in images.iter().enumerate() {
            let limited;
            let config = match max_tiles.get(i).copied().flatten() {
                Some(m) => {
                    limited = PreprocessConfig {
                        max_patches: m.clamp(1, self.config.max_patches),
                        ..self.config.clone()
                    };
                    &limited
                }
                None => &self.config,
            };
            let processed = preprocess(img, config, &self.device)?;
            let features = self
                .vision
                .forward(&processed.pixel_values)
                .map_err(|e| EngineError::Frontend(format!("encoding image {}: {e}", i + 1)))?;
            rows.push(features);
            grids.push(processed.aspect_ratio);
        }
        let rows = Tensor::cat(&rows, 0).map_err(herd_model::Error::from)?;
        if !self.device.is_cpu() {
            // On a GPU this thread's work is queued on its own stream, and the features are
            // read on another (the server encodes on a request thread, the engine thread fuses
            // them). cudarc orders a buffer by the events its writers record, and candle's
            // copy into a concatenation records none: wait here, once per request, rather than
            // hand over rows that may still be in flight.
            self.device.synchronize().map_err(herd_model::Error::from)?;
        }
        Ok(Some(EncodedImages {
            features: ImageFeatures {
                rows,
                patch_id: self.vision.config().image_token_id,
            },
            grids,
            tokens_per_tile: self.tokens_per_tile(),
        }))
    }

    /// A clip's frames, chosen under `options` (see [`crate::video`]); a label costs what the
    /// tokenizer makes of it.
    pub fn video_frames(
        &self,
        tokenizer: &herd_text::Tokenizer,
        path: &Path,
        options: &crate::video::VideoOptions,
    ) -> Result<crate::video::VideoFrames> {
        let source = crate::video::source::open(path, options.folder_fps)?;
        self.video_frames_from(tokenizer, source, options)
    }

    /// [`Self::video_frames`] from a source already open.
    pub fn video_frames_from(
        &self,
        tokenizer: &herd_text::Tokenizer,
        source: Box<dyn crate::video::source::FrameSource>,
        options: &crate::video::VideoOptions,
    ) -> Result<crate::video::VideoFrames> {
        let label_tokens = |label: &str| {
            tokenizer
                .encode(label, herd_text::SpecialTokens::AsText)
                .map_or(label.len(), |ids| ids.len())
        };
        crate::video::load_from(
            source,
            options,
            &self.config,
            self.tokens_per_tile(),
            &label_tokens,
        )
    }
}

/// Loads the tower of `dir` for `model` and encodes the image files (or data URLs) at `paths`
/// (the CLI's `--image`).
pub fn encode_files(
    dir: &Path,
    model: &TextModel,
    paths: &[std::path::PathBuf],
) -> Result<Option<EncodedImages>> {
    if paths.is_empty() {
        return Ok(None);
    }
    let Some(encoder) = ImageEncoder::for_model(dir, model)? else {
        return Err(EngineError::Frontend(format!(
            "{} is a text-only checkpoint: it has no vision tower for images",
            dir.display()
        )));
    };
    let images = paths.iter().map(|p| load_image(p)).collect::<Result<Vec<_>>>()?;
    encoder.encode(&images)
}
