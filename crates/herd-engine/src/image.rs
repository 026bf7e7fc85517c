//! Images in, tiles of pixels out — transformers' `Llama4ImageProcessor` (LLAMA4.md §6):
//! decode (JPEG, PNG, WebP, GIF first frame; EXIF orientation applied), convert to RGB
//! (alpha composited over white, as transformers' `convert_to_rgb`), pick the best-fit canvas
//! of tile multiples, resize without distortion (often not at all; antialiased bilinear
//! otherwise, separable, horizontal pass first, uint8 between passes, as torchvision/PIL),
//! pad bottom/right with black, normalise as the reference does (in bfloat16), cut into
//! tiles row-major, and append a global tile (the whole image squeezed to one tile) when
//! there is more than one tile.

use std::io::Cursor;
use std::path::Path;

use base64::Engine;
use candle_core::{Device, Tensor};
use half::bf16;
pub use image::RgbImage;
use image::{DynamicImage, ImageDecoder, ImageReader, Limits};
use serde::Deserialize;

/// Largest image side herd accepts, and the decoder's memory ceiling (decompression bombs).
pub const MAX_SIDE: u32 = 16_384;
/// (Four bytes a pixel at the largest side: `--limit image-pixels` is the bound that binds.)
const MAX_DECODE_BYTES: u64 = 4 * MAX_SIDE as u64 * MAX_SIDE as u64;
/// Most tiles one image may become (Llama 4 uses 16; each tile is 144 prompt tokens).
pub const MAX_PATCHES: u32 = 1024;

#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    #[error("cannot read image {path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("image {what}: {message}")]
    Decode { what: String, message: String },
    #[error("image {what} is {width}×{height}; herd accepts 1 to {MAX_SIDE} pixels per side")]
    Size { what: String, width: u32, height: u32 },
    #[error("preprocessor_config.json: {0}")]
    Config(String),
    #[error(transparent)]
    Read(#[from] herd_limits::ReadError),
    #[error(transparent)]
    Tensor(#[from] candle_core::Error),
}

/// The settings of `preprocessor_config.json` that change the pixels.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default)]
pub struct PreprocessConfig {
    /// Tile side (`size.height`).
    #[serde(skip)]
    pub tile: u32,
    pub max_patches: u32,
    pub resize_to_max_canvas: bool,
    pub image_mean: [f32; 3],
    pub image_std: [f32; 3],
    pub rescale_factor: f64,
}

impl Default for PreprocessConfig {
    fn default() -> Self {
        PreprocessConfig {
            tile: 336,
            max_patches: 16,
            resize_to_max_canvas: false,
            image_mean: [0.5; 3],
            image_std: [0.5; 3],
            rescale_factor: 1.0 / 255.0,
        }
    }
}

impl PreprocessConfig {
    /// `dir/preprocessor_config.json`, or transformers' defaults when absent.
    pub fn load(dir: &Path) -> Result<Self, ImageError> {
        let path = dir.join("preprocessor_config.json");
        if !herd_limits::exists(&path) {
            return Ok(Self::default());
        }
        let text = herd_limits::read_file_to_string(&path, herd_limits::FileKind::Config)?;
        let value: serde_json::Value =
            serde_json::from_str(&text).map_err(|e| ImageError::Config(e.to_string()))?;
        let mut config: PreprocessConfig =
            serde_json::from_value(value.clone()).map_err(|e| ImageError::Config(e.to_string()))?;
        if let Some(size) = value.get("size") {
            let h = size.get("height").and_then(|v| v.as_u64());
            let w = size.get("width").and_then(|v| v.as_u64());
            match (h, w) {
                (Some(h), Some(w)) if h == w && h > 0 && h <= u64::from(MAX_SIDE) => config.tile = h as u32,
                _ => {
                    return Err(ImageError::Config(format!(
                        "size must be a square {{height, width}}, found {size}"
                    )))
                }
            }
        }
        if config.max_patches > MAX_PATCHES {
            return Err(ImageError::Config(format!(
                "max_patches {} is beyond {MAX_PATCHES} tiles per image",
                config.max_patches
            )));
        }
        if config.max_patches == 0 || config.image_std.contains(&0.0) {
            return Err(ImageError::Config(
                "max_patches and image_std must be non-zero".into(),
            ));
        }
        Ok(config)
    }
}

/// One preprocessed image.
#[derive(Debug, Clone)]
pub struct ProcessedImage {
    /// [tiles, 3, S, S]: rows×cols tiles row-major, then the global tile when rows·cols > 1.
    pub pixel_values: Tensor,
    /// (rows, cols) of the tile grid.
    pub aspect_ratio: (u32, u32),
}

impl ProcessedImage {
    pub fn n_tiles(&self) -> usize {
        let (r, c) = self.aspect_ratio;
        let n = (r * c) as usize;
        if n > 1 {
            n + 1
        } else {
            n
        }
    }
}

/// Decodes an image from a file.
pub fn load_file(path: &Path) -> Result<RgbImage, ImageError> {
    let bytes = herd_limits::read_file(path, herd_limits::FileKind::Image)?;
    decode(&bytes, &path.display().to_string())
}

/// Decodes `data:image/...;base64,...`.
pub fn load_data_url(url: &str) -> Result<RgbImage, ImageError> {
    load_data_url_within(url, &mut PixelBudget::unlimited())
}

/// [`load_data_url`] taking its pixels out of `budget`.
pub fn load_data_url_within(url: &str, budget: &mut PixelBudget) -> Result<RgbImage, ImageError> {
    decode_within(&data_url_bytes(url)?, "data URL", budget)
}

/// Decoded pixels several images may hold together (a server request's, `--limit
/// request-pixels`): each image's size is read from its header and taken out before it is
/// decoded, so a request of many images each within `--limit image-pixels` is refused before
/// it allocates them all.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PixelBudget {
    left: u64,
}

impl PixelBudget {
    pub fn new(pixels: u64) -> Self {
        PixelBudget { left: pixels }
    }

    /// `--limit request-pixels`.
    pub fn for_request() -> Self {
        PixelBudget::new(herd_limits::Limits::current().request_pixels)
    }

    /// No bound beyond each image's own.
    pub fn unlimited() -> Self {
        PixelBudget::new(u64::MAX)
    }

    /// Pixels still to spend.
    pub fn left(&self) -> u64 {
        self.left
    }

    fn take(&mut self, width: u32, height: u32, what: &str) -> Result<(), ImageError> {
        let pixels = u64::from(width) * u64::from(height);
        self.left = self.left.checked_sub(pixels).ok_or_else(|| ImageError::Decode {
            what: what.into(),
            message: format!(
                "{width}×{height} takes the request's images past {} decoded pixels together (raise with --limit request-pixels=N)",
                herd_limits::Limits::current().request_pixels
            ),
        })?;
        Ok(())
    }
}

/// The bytes of a base64 `data:` URL (an image's or a video's), at most `--limit image-bytes`.
pub fn data_url_bytes(url: &str) -> Result<Vec<u8>, ImageError> {
    let bad = |message: &str| ImageError::Decode {
        what: "data URL".into(),
        message: message.into(),
    };
    let rest = url
        .strip_prefix("data:")
        .ok_or_else(|| bad("must start with `data:`"))?;
    let (meta, payload) = rest.split_once(',').ok_or_else(|| bad("has no `,`"))?;
    let limit = herd_limits::Limits::current().image_bytes;
    // base64 holds 3 bytes in 4 characters.
    if payload.len() as u64 / 4 * 3 > limit {
        return Err(bad(&format!(
            "holds more than {limit} bytes (raise with --limit image-bytes=N)"
        )));
    }
    if !meta.ends_with(";base64") {
        return Err(bad("must be base64-encoded"));
    }
    base64::engine::general_purpose::STANDARD
        .decode(payload.trim())
        .map_err(|e| bad(&e.to_string()))
}

/// Decodes image bytes (format guessed from the content), applies EXIF orientation and
/// converts to RGB.
pub fn decode(bytes: &[u8], what: &str) -> Result<RgbImage, ImageError> {
    decode_within(bytes, what, &mut PixelBudget::unlimited())
}

/// [`decode`] taking the image's pixels out of `budget` (before decoding them).
pub fn decode_within(bytes: &[u8], what: &str, budget: &mut PixelBudget) -> Result<RgbImage, ImageError> {
    let fail = |e: image::ImageError| ImageError::Decode {
        what: what.to_string(),
        message: match e {
            image::ImageError::Limits(_) => format!("{e}: herd takes 1 to {MAX_SIDE} pixels a side"),
            e => e.to_string(),
        },
    };
    let mut reader = ImageReader::new(Cursor::new(bytes))
        .with_guessed_format()
        .map_err(|e| ImageError::Decode {
            what: what.into(),
            message: e.to_string(),
        })?;
    let mut limits = Limits::default();
    limits.max_image_width = Some(MAX_SIDE);
    limits.max_image_height = Some(MAX_SIDE);
    limits.max_alloc = Some(MAX_DECODE_BYTES);
    reader.limits(limits);
    let mut decoder = reader.into_decoder().map_err(fail)?;
    let (width, height) = decoder.dimensions();
    // `into_decoder` skips image-rs' own allocation check (only `decode` makes it), and the
    // libjpeg path holds four bytes a pixel for CMYK: bound both before decoding.
    let decoded_bytes = decoder
        .total_bytes()
        .max(u64::from(width) * u64::from(height) * 4);
    if decoded_bytes > MAX_DECODE_BYTES {
        return Err(ImageError::Decode {
            what: what.into(),
            message: format!(
                "{width}×{height} needs {decoded_bytes} bytes decoded, more than {MAX_DECODE_BYTES}"
            ),
        });
    }
    let max_pixels = herd_limits::Limits::current().image_pixels;
    if u64::from(width) * u64::from(height) > max_pixels {
        return Err(ImageError::Decode {
            what: what.into(),
            message: format!(
                "{width}×{height} is more than {max_pixels} pixels (raise with --limit image-pixels=N)"
            ),
        });
    }
    budget.take(width, height, what)?;
    let orientation = decoder.orientation().map_err(fail)?;
    let is_jpeg = reader_format_is_jpeg(bytes);
    // JPEGs are decoded by libjpeg-turbo (the reference's pixels, see below); image-rs decodes
    // everything else (for JPEGs it has read only the header).
    let mut img = match is_jpeg.then(|| decode_jpeg_like_pil(bytes)) {
        Some(Ok(rgb)) => DynamicImage::ImageRgb8(rgb),
        // A JPEG libjpeg refuses may still be one image-rs reads; if neither can, both say why.
        Some(Err(libjpeg)) => DynamicImage::from_decoder(decoder).map_err(|e| ImageError::Decode {
            what: what.into(),
            message: format!("{e} (libjpeg: {libjpeg})"),
        })?,
        None => DynamicImage::from_decoder(decoder).map_err(fail)?,
    };
    img.apply_orientation(orientation);
    let (width, height) = (img.width(), img.height());
    if width == 0 || height == 0 || width > MAX_SIDE || height > MAX_SIDE {
        return Err(ImageError::Size {
            what: what.into(),
            width,
            height,
        });
    }
    Ok(to_rgb(img))
}

fn reader_format_is_jpeg(bytes: &[u8]) -> bool {
    image::guess_format(bytes).is_ok_and(|f| f == image::ImageFormat::Jpeg)
}

/// RGB pixels as PIL gives them: libjpeg-turbo's decoder with its defaults (islow IDCT, fancy
/// upsampling; image-rs' decoder differs by a few grey levels near colour edges). CMYK and
/// YCCK files are decoded to CMYK, un-inverted as Pillow always does (its `CMYK;I` raw mode,
/// "assume adobe conventions", with or without an Adobe marker), and converted as PIL's
/// `convert("RGB")` does.
fn decode_jpeg_like_pil(bytes: &[u8]) -> Result<RgbImage, String> {
    // libjpeg reports corrupt data by unwinding (mozjpeg's `unwinding` feature): contain it.
    let decoded = herd_limits::catch_panic(|| -> std::io::Result<Option<RgbImage>> {
        let decompress = mozjpeg::Decompress::new_mem(bytes)?;
        let (width, height) = (decompress.width() as u32, decompress.height() as u32);
        match decompress.color_space() {
            mozjpeg::ColorSpace::JCS_CMYK | mozjpeg::ColorSpace::JCS_YCCK => {
                let mut started = decompress.to_colorspace(mozjpeg::ColorSpace::JCS_CMYK)?;
                let cmyk: Vec<[u8; 4]> = started.read_scanlines()?;
                started.finish()?;
                let rgb = cmyk
                    .iter()
                    .flat_map(|&p| cmyk_to_rgb(p.map(|v| 255 - v)))
                    .collect();
                Ok(RgbImage::from_raw(width, height, rgb))
            }
            _ => {
                let mut started = decompress.rgb()?;
                let pixels: Vec<u8> = started.read_scanlines()?;
                started.finish()?;
                Ok(RgbImage::from_raw(width, height, pixels))
            }
        }
    });
    match decoded {
        Ok(Ok(Some(rgb))) => Ok(rgb),
        Ok(Ok(None)) => Err("the decoder returned fewer pixels than the image has".into()),
        Ok(Err(e)) => Err(e.to_string()),
        Err(panic) => Err(format!("libjpeg could not decode it: {panic}")),
    }
}

/// Pillow's `cmyk2rgb`: `channel = (255 - k) - (c · (255 - k)) / 255`, its rounding included.
fn cmyk_to_rgb(p: [u8; 4]) -> [u8; 3] {
    let nk = 255 - u32::from(p[3]);
    let muldiv255 = |a: u32, b: u32| {
        let t = a * b + 128;
        ((t >> 8) + t) >> 8
    };
    [0, 1, 2].map(|c| (nk - muldiv255(u32::from(p[c]), nk)) as u8)
}

/// RGB as transformers' `convert_to_rgb`: images with alpha are composited over white.
fn to_rgb(img: DynamicImage) -> RgbImage {
    if !img.color().has_alpha() {
        return img.to_rgb8();
    }
    let rgba = img.to_rgba8();
    let mut out = RgbImage::new(rgba.width(), rgba.height());
    for (o, p) in out.pixels_mut().zip(rgba.pixels()) {
        let a = p[3] as u32;
        for c in 0..3 {
            // PIL's alpha_composite over an opaque white background, in integers.
            let v = (p[c] as u32 * a + 255 * (255 - a) + 127) / 255;
            o[c] = v.min(255) as u8;
        }
    }
    out
}

/// Every (rows, cols) canvas with rows·cols ≤ max_tiles, in pixels (height, width).
pub fn canvases(max_tiles: u32, tile: u32) -> Vec<(u32, u32)> {
    let mut out = Vec::new();
    for rows in 1..=max_tiles {
        for cols in 1..=max_tiles / rows {
            out.push((rows * tile, cols * tile));
        }
    }
    out
}

/// transformers' `get_best_fit`: the smallest upscale if any canvas allows one, else the
/// mildest downscale; ties go to the smallest area. Scales are f32, as torch computes them.
pub fn best_fit(height: u32, width: u32, canvases: &[(u32, u32)], resize_to_max_canvas: bool) -> (u32, u32) {
    let scale = |&(h, w): &(u32, u32)| -> f32 {
        let sh = h as f32 / height as f32;
        let sw = w as f32 / width as f32;
        if sh > sw {
            sw
        } else {
            sh
        }
    };
    let scales: Vec<f32> = canvases.iter().map(scale).collect();
    let up = scales.iter().copied().filter(|s| *s >= 1.0);
    let chosen = if up.clone().count() > 0 {
        if resize_to_max_canvas {
            up.fold(f32::MIN, f32::max)
        } else {
            up.fold(f32::MAX, f32::min)
        }
    } else {
        scales.iter().copied().fold(f32::MIN, f32::max)
    };
    canvases
        .iter()
        .zip(&scales)
        .filter(|(_, s)| **s == chosen)
        .map(|(c, _)| *c)
        .min_by_key(|(h, w)| h * w)
        .unwrap_or((height, width))
}

/// transformers' `get_max_res_without_distortion`.
pub fn fit_without_distortion(height: u32, width: u32, target: (u32, u32)) -> (u32, u32) {
    let (th, tw) = target;
    let scale_w = tw as f64 / width as f64;
    let scale_h = th as f64 / height as f64;
    let (h, w) = if scale_w < scale_h {
        ((height as f64 * scale_w).floor().min(th as f64) as u32, tw)
    } else {
        (th, (width as f64 * scale_h).floor().min(tw as f64) as u32)
    };
    (h.max(1), w.max(1))
}

/// Preprocesses one RGB image into tiles.
pub fn preprocess(
    img: &RgbImage,
    config: &PreprocessConfig,
    device: &Device,
) -> Result<ProcessedImage, ImageError> {
    let (height, width) = (img.height(), img.width());
    let tile = config.tile;
    let canvas = best_fit(
        height,
        width,
        &canvases(config.max_patches, tile),
        config.resize_to_max_canvas,
    );
    // Upscaling is limited to the tile size (skipped with resize_to_max_canvas).
    let limit = if config.resize_to_max_canvas {
        canvas
    } else {
        (height.max(tile).min(canvas.0), width.max(tile).min(canvas.1))
    };
    let (new_h, new_w) = fit_without_distortion(height, width, limit);
    let resized = resize(img, new_w, new_h);
    let (rows, cols) = (canvas.0 / tile, canvas.1 / tile);
    let mut tiles: Vec<f32> = Vec::new();
    for r in 0..rows {
        for c in 0..cols {
            push_tile(&mut tiles, &resized, r * tile, c * tile, tile, config);
        }
    }
    if rows * cols > 1 {
        let global = resize(img, tile, tile);
        push_tile(&mut tiles, &global, 0, 0, tile, config);
    }
    let n = tiles.len() / (3 * (tile * tile) as usize);
    let s = tile as usize;
    Ok(ProcessedImage {
        pixel_values: Tensor::from_vec(tiles, (n, 3, s, s), device)?,
        aspect_ratio: (rows, cols),
    })
}

/// Appends one tile [3, S, S] cut at (y0, x0) from the canvas (black where the image ends).
fn push_tile(out: &mut Vec<f32>, img: &RgbImage, y0: u32, x0: u32, tile: u32, config: &PreprocessConfig) {
    for c in 0..3 {
        for y in y0..y0 + tile {
            for x in x0..x0 + tile {
                let v = if x < img.width() && y < img.height() {
                    img.get_pixel(x, y)[c]
                } else {
                    0
                };
                out.push(normalize(v, c, config));
            }
        }
    }
}

/// `(v · rescale − mean) / std`, each step rounded to bfloat16 as the reference does.
fn normalize(v: u8, channel: usize, config: &PreprocessConfig) -> f32 {
    let bf = |x: f32| bf16::from_f32(x).to_f32();
    let scaled = bf((v as f64 * config.rescale_factor) as f32);
    let centred = bf(scaled - bf(config.image_mean[channel]));
    bf(centred / bf(config.image_std[channel]))
}

/// Antialiased bilinear resize, bit-exact with the reference (see [`crate::resize`]).
pub fn resize(img: &RgbImage, width: u32, height: u32) -> RgbImage {
    crate::resize::resize(img, width, height)
}
