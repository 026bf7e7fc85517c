//! Containers through FFmpeg (`ffmpeg-next` over Debian's libav* libraries; the `video`
//! feature). Each requested moment is a seek to the keyframe before it and a decode forward to
//! it, so the work depends on how many frames are asked for, not on the clip's length.

use std::path::Path;

use ffmpeg::format::Pixel;
use ffmpeg::software::scaling::{context::Context as Scaler, flag::Flags};
use ffmpeg::util::frame::video::Video as VideoFrame;
use ffmpeg_next as ffmpeg;

use crate::error::EngineError;
use crate::image::{RgbImage, MAX_SIDE};

use super::source::FrameSource;

/// Frames decoded after one seek before herd gives up (a keyframe every 40 s at 60 fps).
const MAX_FRAMES_PER_SEEK: usize = 2400;

fn err(path: &Path, message: impl std::fmt::Display) -> EngineError {
    EngineError::Frontend(format!("video {}: {message}", path.display()))
}

pub struct Container {
    path: std::path::PathBuf,
    input: ffmpeg::format::context::Input,
    decoder: ffmpeg::decoder::Video,
    stream: usize,
    time_base: f64,
    start: f64,
    duration: f64,
    scaler: Option<Scaler>,
    decoded: usize,
}

impl Container {
    pub fn open(path: &Path) -> Result<Self, EngineError> {
        ffmpeg::init().map_err(|e| err(path, e))?;
        ffmpeg::log::set_level(ffmpeg::log::Level::Fatal);
        let input = ffmpeg::format::input(&path)
            .map_err(|e| err(path, format!("not a video FFmpeg can read ({e})")))?;
        let (stream, time_base, start, stream_duration, parameters) = {
            let s = input
                .streams()
                .best(ffmpeg::media::Type::Video)
                .ok_or_else(|| err(path, "no video stream"))?;
            let tb = f64::from(s.time_base());
            let start = if s.start_time() == ffmpeg::ffi::AV_NOPTS_VALUE {
                0.0
            } else {
                s.start_time() as f64 * tb
            };
            (s.index(), tb, start, s.duration() as f64 * tb, s.parameters())
        };
        let context =
            ffmpeg::codec::context::Context::from_parameters(parameters).map_err(|e| err(path, e))?;
        let decoder = context
            .decoder()
            .video()
            .map_err(|e| err(path, format!("cannot decode its video: {e}")))?;
        let (w, h) = (decoder.width(), decoder.height());
        let max_pixels = herd_limits::Limits::current().image_pixels;
        if w == 0 || h == 0 || w > MAX_SIDE || h > MAX_SIDE || u64::from(w) * u64::from(h) > max_pixels {
            return Err(err(path, format!("{w}×{h} frames: herd takes 1 to {MAX_SIDE} pixels a side and {max_pixels} pixels a frame")));
        }
        let container_duration = input.duration() as f64 / f64::from(ffmpeg::ffi::AV_TIME_BASE);
        let duration = if stream_duration > 0.0 {
            stream_duration
        } else {
            container_duration
        };
        if !(duration.is_finite() && duration > 0.0) {
            return Err(err(path, "the clip's duration is unknown or zero"));
        }
        Ok(Container {
            path: path.to_path_buf(),
            input,
            decoder,
            stream,
            time_base,
            start,
            duration,
            scaler: None,
            decoded: 0,
        })
    }

    fn convert(&mut self, frame: &VideoFrame) -> Result<RgbImage, EngineError> {
        let (w, h) = (frame.width(), frame.height());
        if self.scaler.is_none() {
            self.scaler = Some(
                Scaler::get(frame.format(), w, h, Pixel::RGB24, w, h, Flags::BILINEAR)
                    .map_err(|e| err(&self.path, e))?,
            );
        }
        let mut rgb = VideoFrame::empty();
        if let Some(scaler) = &mut self.scaler {
            scaler.run(frame, &mut rgb).map_err(|e| err(&self.path, e))?;
        }
        let stride = rgb.stride(0);
        let data = rgb.data(0);
        let row = 3 * w as usize;
        let mut pixels = Vec::with_capacity(row * h as usize);
        for y in 0..h as usize {
            let line = data
                .get(y * stride..y * stride + row)
                .ok_or_else(|| err(&self.path, "a decoded frame is shorter than its size"))?;
            pixels.extend_from_slice(line);
        }
        RgbImage::from_raw(w, h, pixels)
            .ok_or_else(|| err(&self.path, "a decoded frame does not match its size"))
    }
}

impl FrameSource for Container {
    fn duration(&self) -> f64 {
        self.duration
    }

    fn frames_decoded(&self) -> usize {
        self.decoded
    }

    fn frame_at(&mut self, seconds: f64) -> Result<RgbImage, EngineError> {
        let target = self.start + seconds.clamp(0.0, self.duration);
        let ts = (target * f64::from(ffmpeg::ffi::AV_TIME_BASE)) as i64;
        self.input
            .seek(ts, ..ts)
            .map_err(|e| err(&self.path, format!("cannot seek to {seconds:.2} s: {e}")))?;
        self.decoder.flush();
        let mut last: Option<VideoFrame> = None;
        let mut decoded = 0usize;
        let mut frame = VideoFrame::empty();
        let mut found: Option<VideoFrame> = None;
        'packets: for (stream, packet) in self.input.packets() {
            if stream.index() != self.stream {
                continue;
            }
            // A damaged packet is skipped as players skip it; a clip with none decodable fails
            // below.
            if self.decoder.send_packet(&packet).is_err() {
                continue;
            }
            while self.decoder.receive_frame(&mut frame).is_ok() {
                decoded += 1;
                self.decoded += 1;
                let pts = frame
                    .timestamp()
                    .or(frame.pts())
                    .map_or(f64::NEG_INFINITY, |p| p as f64 * self.time_base);
                if pts + 1e-3 >= target {
                    // The frame on screen at `target`: this one if it starts there, else the one
                    // before it.
                    let before = if pts - 1e-3 <= target { None } else { last.take() };
                    found = Some(before.unwrap_or_else(|| frame.clone()));
                    break 'packets;
                }
                last = Some(frame.clone());
                if decoded > MAX_FRAMES_PER_SEEK {
                    return Err(err(
                        &self.path,
                        format!(
                            "more than {MAX_FRAMES_PER_SEEK} frames between a keyframe and {seconds:.2} s"
                        ),
                    ));
                }
            }
        }
        if found.is_none() {
            // The end of the stream: drain the decoder.
            let _ = self.decoder.send_eof();
            while self.decoder.receive_frame(&mut frame).is_ok() {
                last = Some(frame.clone());
            }
        }
        match found.or(last) {
            Some(f) => self.convert(&f),
            None => Err(err(
                &self.path,
                format!("no frame could be decoded at {seconds:.2} s (a truncated or damaged file?)"),
            )),
        }
    }
}
