//! Where frames come from: a folder of images (one frame every 1/fps seconds, in file-name
//! order), an animated GIF (its own frame delays), or — with the `video` feature — any
//! container FFmpeg reads (MP4/H.264, WebM/VP9, …), seeking to each moment rather than
//! decoding the whole clip.

use std::path::{Path, PathBuf};

use image::AnimationDecoder;

use crate::error::EngineError;
use crate::image::{decode, load_file, RgbImage};

/// Most files a frame folder may hold, and frames a GIF may have.
pub const MAX_SOURCE_FRAMES: usize = 10_000;

fn err(path: &Path, message: impl std::fmt::Display) -> EngineError {
    EngineError::Frontend(format!("video {}: {message}", path.display()))
}

/// Frames by time.
pub trait FrameSource {
    /// Seconds, > 0.
    fn duration(&self) -> f64;
    /// The frame shown at `seconds` (clamped to the clip).
    fn frame_at(&mut self, seconds: f64) -> Result<RgbImage, EngineError>;
    /// Frames decoded so far (what the work cost: seeking keeps it near the frames asked for).
    fn frames_decoded(&self) -> usize;
}

/// Opens `path`: a folder of frames (`folder_fps` frames a second), a GIF, or a container
/// (with the `video` feature).
pub fn open(path: &Path, folder_fps: f64) -> Result<Box<dyn FrameSource>, EngineError> {
    let meta = std::fs::symlink_metadata(path).map_err(|e| err(path, e))?;
    if meta.is_dir() {
        return Ok(Box::new(Folder::open(path, folder_fps)?));
    }
    let head = {
        use std::io::Read;
        let mut file = herd_limits::open_regular(path).map_err(|e| err(path, e))?;
        let mut head = [0u8; 16];
        let n = file.read(&mut head).map_err(|e| err(path, e))?;
        head[..n].to_vec()
    };
    if head.starts_with(b"GIF8") {
        return Ok(Box::new(Gif::open(path)?));
    }
    container(path)
}

#[cfg(feature = "video")]
fn container(path: &Path) -> Result<Box<dyn FrameSource>, EngineError> {
    Ok(Box::new(super::ffmpeg::Container::open(path)?))
}

#[cfg(not(feature = "video"))]
fn container(path: &Path) -> Result<Box<dyn FrameSource>, EngineError> {
    Err(err(
        path,
        "not a GIF or a folder of frames, and this herd was built without the `video` feature \
         (MP4, WebM and other containers need it: cargo build --features video)",
    ))
}

/// A folder of image files (`.png`, `.jpg`, `.jpeg`, `.webp`, `.gif`), sorted by name.
pub struct Folder {
    files: Vec<PathBuf>,
    fps: f64,
    loaded: usize,
}

impl Folder {
    pub fn open(dir: &Path, fps: f64) -> Result<Self, EngineError> {
        if !(fps.is_finite() && fps > 0.0) {
            return Err(err(dir, format!("frame rate {fps} must be positive")));
        }
        let mut files = Vec::new();
        for entry in std::fs::read_dir(dir).map_err(|e| err(dir, e))? {
            let entry = entry.map_err(|e| err(dir, e))?;
            let path = entry.path();
            let is_image = path.extension().and_then(|e| e.to_str()).is_some_and(|e| {
                ["png", "jpg", "jpeg", "webp", "gif"].contains(&e.to_ascii_lowercase().as_str())
            });
            if is_image && entry.file_type().is_ok_and(|t| t.is_file()) {
                files.push(path);
                if files.len() > MAX_SOURCE_FRAMES {
                    return Err(err(dir, format!("more than {MAX_SOURCE_FRAMES} frames")));
                }
            }
        }
        if files.is_empty() {
            return Err(err(
                dir,
                "the folder holds no frames (.png, .jpg, .jpeg, .webp, .gif)",
            ));
        }
        files.sort();
        Ok(Folder {
            files,
            fps,
            loaded: 0,
        })
    }
}

impl FrameSource for Folder {
    fn duration(&self) -> f64 {
        self.files.len() as f64 / self.fps
    }

    fn frame_at(&mut self, seconds: f64) -> Result<RgbImage, EngineError> {
        let i = ((seconds.max(0.0) * self.fps).floor() as usize).min(self.files.len() - 1);
        self.loaded += 1;
        Ok(load_file(&self.files[i])?)
    }

    fn frames_decoded(&self) -> usize {
        self.loaded
    }
}

/// An animated GIF, decoded whole (bounded by `--limit image-bytes` for the file and by
/// [`MAX_SOURCE_FRAMES`] and `--limit image-pixels` for all frames together).
pub struct Gif {
    /// (start time, frame)
    frames: Vec<(f64, RgbImage)>,
    duration: f64,
}

impl Gif {
    pub fn open(path: &Path) -> Result<Self, EngineError> {
        let bytes = herd_limits::read_file(path, herd_limits::FileKind::Image).map_err(|e| err(path, e))?;
        let what = path.display().to_string();
        // The first frame through herd's checked decoder: size limits and a clear error.
        decode(&bytes, &what)?;
        let decoder =
            image::codecs::gif::GifDecoder::new(std::io::Cursor::new(&bytes)).map_err(|e| err(path, e))?;
        let max_pixels = herd_limits::Limits::current().image_pixels;
        let mut frames = Vec::new();
        // Milliseconds, summed as integers: a float sum of 0.1 s drifts off the frame edges.
        let mut ms_total = 0u64;
        let mut pixels = 0u64;
        for frame in decoder.into_frames() {
            let frame = frame.map_err(|e| err(path, format!("frame {}: {e}", frames.len() + 1)))?;
            let (num, den) = frame.delay().numer_denom_ms();
            // Browsers show 0-delay frames for 100 ms; so does herd.
            let ms = if num == 0 {
                100
            } else {
                (u64::from(num) / u64::from(den.max(1))).max(1)
            };
            let rgba = frame.into_buffer();
            pixels += u64::from(rgba.width()) * u64::from(rgba.height());
            if frames.len() >= MAX_SOURCE_FRAMES || pixels > max_pixels {
                return Err(err(
                    path,
                    format!("more than {MAX_SOURCE_FRAMES} frames or {max_pixels} pixels in all (raise with --limit image-pixels=N)"),
                ));
            }
            frames.push((
                ms_total as f64 / 1000.0,
                image::DynamicImage::ImageRgba8(rgba).to_rgb8(),
            ));
            ms_total += ms;
        }
        if frames.is_empty() {
            return Err(err(path, "the GIF has no frames"));
        }
        Ok(Gif {
            frames,
            duration: ms_total as f64 / 1000.0,
        })
    }
}

impl FrameSource for Gif {
    fn duration(&self) -> f64 {
        self.duration
    }

    fn frame_at(&mut self, seconds: f64) -> Result<RgbImage, EngineError> {
        let i = self.frames.partition_point(|(start, _)| *start <= seconds).max(1) - 1;
        Ok(self.frames[i].1.clone())
    }

    /// A GIF is decoded whole when opened.
    fn frames_decoded(&self) -> usize {
        self.frames.len()
    }
}

/// Pictures already decoded (a request's list of frames), `fps` a second.
pub struct Pictures {
    pictures: Vec<RgbImage>,
    fps: f64,
}

impl Pictures {
    pub fn new(pictures: Vec<RgbImage>, fps: f64) -> Result<Self, EngineError> {
        if pictures.is_empty() {
            return Err(EngineError::Frontend("the video has no frames".into()));
        }
        if !(fps.is_finite() && fps > 0.0 && fps <= 240.0) {
            return Err(EngineError::InvalidParameter {
                field: "fps",
                message: format!("a frame rate must be in (0, 240], not {fps}"),
            });
        }
        Ok(Pictures { pictures, fps })
    }
}

impl FrameSource for Pictures {
    fn duration(&self) -> f64 {
        self.pictures.len() as f64 / self.fps
    }

    fn frame_at(&mut self, seconds: f64) -> Result<RgbImage, EngineError> {
        let i = ((seconds.max(0.0) * self.fps).floor() as usize).min(self.pictures.len() - 1);
        Ok(self.pictures[i].clone())
    }

    fn frames_decoded(&self) -> usize {
        0
    }
}
