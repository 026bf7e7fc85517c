//! Video in the prompt. Llama 4 takes video as frames, each an image in its usual layout; herd
//! picks the frames ([`select`]), fits them to a token budget by giving each fewer tiles or,
//! at one tile, by thinning them ([`budget`]), and puts each after its timestamp
//! ([`label::frame_label`]: `Frame at 0:05:`). Sources: a folder of frames, an animated GIF,
//! and with the `video` feature any container FFmpeg reads ([`source`]).

pub mod budget;
#[cfg(feature = "video")]
mod ffmpeg;
pub mod label;
pub mod select;
pub mod source;

use std::path::Path;

use serde_json::{json, Value};

use crate::error::EngineError;
use crate::image::{PreprocessConfig, RgbImage};

pub use budget::Plan;
pub use label::frame_label;
pub use select::Selection;

/// How to turn a clip into frames.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct VideoOptions {
    pub selection: Selection,
    /// The most prompt tokens the frames (labels and image layouts) may take.
    pub max_video_tokens: usize,
    /// Frames a second of a folder of frames.
    pub folder_fps: f64,
}

impl Default for VideoOptions {
    fn default() -> Self {
        VideoOptions {
            selection: Selection::Count(8),
            max_video_tokens: 8192,
            folder_fps: 1.0,
        }
    }
}

/// The frames chosen from a clip, ready to be images in the prompt.
#[derive(Debug, Clone)]
pub struct VideoFrames {
    /// (seconds, picture), in time order.
    pub frames: Vec<(f64, RgbImage)>,
    /// Tiles each frame may take (preprocess with this `max_patches`).
    pub max_tiles: u32,
    pub duration: f64,
    /// Frames the selection gave before the budget thinned them.
    pub selected: usize,
    /// Prompt tokens of the frames.
    pub tokens: usize,
}

impl VideoFrames {
    /// One line on what was chosen: duration, frames and their times, tiles, tokens.
    pub fn summary(&self) -> String {
        let times: Vec<String> = self.frames.iter().map(|(t, _)| label::timestamp(*t)).collect();
        let thinned = if self.selected > self.frames.len() {
            format!(" (of {} selected; thinned to fit the budget)", self.selected)
        } else {
            String::new()
        };
        format!(
            "video: {:.1} s, {} frames at {}{thinned}, ≤ {} tile(s) each, {} prompt tokens",
            self.duration,
            self.frames.len(),
            times.join(", "),
            self.max_tiles,
            self.tokens
        )
    }

    /// The frames as chat message parts: for each, its label as a text part, then an image
    /// part (the chat template writes `<|image|>` there; [`Self::images`] fills them in order).
    pub fn message_parts(&self) -> Vec<Value> {
        self.frames
            .iter()
            .flat_map(|(t, _)| {
                [
                    json!({"type": "text", "text": frame_label(*t)}),
                    json!({"type": "image"}),
                ]
            })
            .collect()
    }

    pub fn images(&self) -> Vec<RgbImage> {
        self.frames.iter().map(|(_, img)| img.clone()).collect()
    }
}

/// Chooses a clip's frames: the selection's moments, decoded; then the token budget, at
/// `tokens_per_tile` patches a tile under `config`, with `label_tokens(text)` the cost of a
/// label.
pub fn load(
    path: &Path,
    options: &VideoOptions,
    config: &PreprocessConfig,
    tokens_per_tile: usize,
    label_tokens: &dyn Fn(&str) -> usize,
) -> Result<VideoFrames, EngineError> {
    let source = source::open(path, options.folder_fps)?;
    load_from(source, options, config, tokens_per_tile, label_tokens)
}

/// [`load`] from a source already open (an in-memory one: [`source::Pictures`]).
pub fn load_from(
    mut source: Box<dyn source::FrameSource>,
    options: &VideoOptions,
    config: &PreprocessConfig,
    tokens_per_tile: usize,
    label_tokens: &dyn Fn(&str) -> usize,
) -> Result<VideoFrames, EngineError> {
    options.selection.validate()?;
    let duration = source.duration();
    let times = options.selection.times(duration);
    let mut frames: Vec<(f64, RgbImage)> = Vec::with_capacity(times.len());
    match options.selection {
        Selection::Scenes { threshold, max } => {
            let mut thumbs = Vec::with_capacity(times.len());
            let mut pictures = Vec::with_capacity(times.len());
            for &t in &times {
                let img = source.frame_at(t)?;
                thumbs.push(select::thumbnail(&img));
                // Only a scene's first picture is kept; the rest are dropped as they go.
                pictures.push(Some(img));
                if pictures.len() > 1 {
                    let i = pictures.len() - 2;
                    if i > 0 && select::difference(&thumbs[i - 1], &thumbs[i]) <= threshold {
                        pictures[i] = None;
                    }
                }
            }
            for i in select::pick_scenes(&thumbs, threshold, max) {
                if let Some(Some(img)) = pictures.get_mut(i).map(Option::take) {
                    frames.push((times[i], img));
                }
            }
        }
        _ => {
            for &t in &times {
                frames.push((t, source.frame_at(t)?));
            }
        }
    }
    let sizes: Vec<(u32, u32)> = frames.iter().map(|(_, f)| (f.height(), f.width())).collect();
    let labels: Vec<usize> = frames
        .iter()
        .map(|(t, _)| label_tokens(&frame_label(*t)))
        .collect();
    let plan = budget::plan(&sizes, &labels, config, tokens_per_tile, options.max_video_tokens)?;
    let selected = frames.len();
    let keep: std::collections::HashSet<usize> = plan.keep.iter().copied().collect();
    let frames: Vec<(f64, RgbImage)> = frames
        .into_iter()
        .enumerate()
        .filter(|(i, _)| keep.contains(i))
        .map(|(_, f)| f)
        .collect();
    Ok(VideoFrames {
        frames,
        max_tiles: plan.max_tiles,
        duration,
        selected,
        tokens: plan.tokens,
    })
}
