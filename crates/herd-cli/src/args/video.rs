//! How a video becomes frames (shared by `generate --video` and `chat`'s `/video`).

use clap::Args;
use herd_engine::video::{Selection, VideoOptions};

#[derive(Args, Clone)]
pub struct VideoSelectArgs {
    /// Video frames, evenly spaced (the centres of N equal spans); the default is 8.
    #[arg(long, value_name = "N", conflicts_with_all = ["fps", "scenes"])]
    pub frames: Option<usize>,
    /// Video frames at this rate from 0 s (at most 256 before the token budget).
    #[arg(long, value_name = "F", conflicts_with = "scenes")]
    pub fps: Option<f64>,
    /// Video frames at scene changes: a frame wherever the picture differs from the one half a
    /// second before by more than T (mean absolute colour difference, 0–1; 0.1 is a cut).
    #[arg(long, value_name = "T")]
    pub scenes: Option<f32>,
    /// The most frames --scenes keeps (the largest changes win).
    #[arg(long, value_name = "N", default_value_t = 16)]
    pub max_scenes: usize,
    /// The most prompt tokens a video may take: frames get fewer tiles (down to one, without
    /// the global tile), then fewer frames, to fit.
    #[arg(long, value_name = "N", default_value_t = 8192)]
    pub max_video_tokens: usize,
    /// Frames a second of a folder of frames (its files in name order).
    #[arg(long, value_name = "F", default_value_t = 1.0)]
    pub folder_fps: f64,
}

impl VideoSelectArgs {
    pub fn options(&self) -> VideoOptions {
        let selection = match (self.frames, self.fps, self.scenes) {
            (_, Some(f), _) => Selection::Fps(f),
            (_, _, Some(t)) => Selection::Scenes {
                threshold: t,
                max: self.max_scenes,
            },
            (Some(n), _, _) => Selection::Count(n),
            (None, None, None) => Selection::Count(8),
        };
        VideoOptions {
            selection,
            max_video_tokens: self.max_video_tokens,
            folder_fps: self.folder_fps,
        }
    }
}
