//! Which moments of a clip become frames: `Count(N)` evenly spaced, `Fps(F)`, or scene changes
//! (a frame-difference threshold, capped) — before the token budget ([`super::budget`]) has its
//! say.

use crate::error::EngineError;
use crate::image::RgbImage;

/// The most frames any selection yields (the token budget usually allows far fewer).
pub const MAX_FRAMES: usize = 256;
/// Scene detection samples at most this often and this many times, whatever the length: a
/// 10-hour clip costs as many seeks as a 5-minute one.
pub const SCENE_SAMPLE_FPS: f64 = 2.0;
pub const MAX_SCENE_SAMPLES: usize = 600;

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Selection {
    /// N frames at the centres of N equal spans of the clip.
    Count(usize),
    /// One frame every 1/F seconds from 0.
    Fps(f64),
    /// The first moment, then each sampled moment whose picture differs from the previous
    /// sample by more than `threshold` (mean absolute difference of 16×16 colour thumbnails,
    /// 0–1);
    /// at most `max`, the largest changes kept.
    Scenes { threshold: f32, max: usize },
}

impl Selection {
    pub fn validate(&self) -> Result<(), EngineError> {
        let bad = |message: String| EngineError::InvalidParameter {
            field: "frames",
            message,
        };
        match *self {
            Selection::Count(n) if n == 0 || n > MAX_FRAMES => {
                Err(bad(format!("the frame count must be 1–{MAX_FRAMES}, not {n}")))
            }
            Selection::Fps(f) if !(f.is_finite() && f > 0.0 && f <= 60.0) => {
                Err(bad(format!("fps must be in (0, 60], not {f}")))
            }
            Selection::Scenes { threshold, max }
                if !(0.0..=1.0).contains(&threshold) || max == 0 || max > MAX_FRAMES =>
            {
                Err(bad(format!(
                    "scene threshold must be in [0, 1] and the cap 1–{MAX_FRAMES}"
                )))
            }
            _ => Ok(()),
        }
    }

    /// The moments (seconds) of a clip of `duration` seconds; for scenes, the moments to sample
    /// (see [`pick_scenes`]).
    pub fn times(&self, duration: f64) -> Vec<f64> {
        let duration = duration.max(0.0);
        match *self {
            Selection::Count(n) => (0..n)
                .map(|i| duration * (2 * i + 1) as f64 / (2 * n) as f64)
                .collect(),
            Selection::Fps(f) => {
                let n = ((duration * f).ceil() as usize).clamp(1, MAX_FRAMES);
                (0..n)
                    .map(|k| k as f64 / f)
                    .filter(|&t| t < duration || t == 0.0)
                    .collect()
            }
            Selection::Scenes { .. } => {
                let n = ((duration * SCENE_SAMPLE_FPS).ceil() as usize).clamp(1, MAX_SCENE_SAMPLES);
                (0..n).map(|i| duration * i as f64 / n as f64).collect()
            }
        }
    }
}

/// A 16×16 colour thumbnail, values 0–1 (box-averaged; colour, because red and green can be
/// equally bright).
pub fn thumbnail(img: &RgbImage) -> Vec<f32> {
    const S: u32 = 16;
    let (w, h) = (img.width().max(1), img.height().max(1));
    let mut out = vec![0f32; (3 * S * S) as usize];
    for ty in 0..S {
        for tx in 0..S {
            let (x0, x1) = (tx * w / S, ((tx + 1) * w / S).max(tx * w / S + 1).min(w));
            let (y0, y1) = (ty * h / S, ((ty + 1) * h / S).max(ty * h / S + 1).min(h));
            let mut sum = [0f32; 3];
            let mut n = 0f32;
            for y in y0..y1 {
                for x in x0..x1 {
                    let p = img.get_pixel(x, y);
                    for c in 0..3 {
                        sum[c] += p[c] as f32 / 255.0;
                    }
                    n += 1.0;
                }
            }
            for c in 0..3 {
                out[(3 * (ty * S + tx)) as usize + c] = if n > 0.0 { sum[c] / n } else { 0.0 };
            }
        }
    }
    out
}

/// Mean absolute difference of two thumbnails.
pub fn difference(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).sum::<f32>() / a.len().max(1) as f32
}

/// Indices of the sampled thumbnails that start a scene: 0, then each whose difference from
/// the one before exceeds `threshold`; beyond `max`, the largest changes (0 always kept), in
/// time order.
pub fn pick_scenes(thumbs: &[Vec<f32>], threshold: f32, max: usize) -> Vec<usize> {
    if thumbs.is_empty() {
        return Vec::new();
    }
    let mut changes: Vec<(usize, f32)> = (1..thumbs.len())
        .map(|i| (i, difference(&thumbs[i - 1], &thumbs[i])))
        .filter(|&(_, d)| d > threshold)
        .collect();
    if changes.len() + 1 > max {
        changes.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
        changes.truncate(max.saturating_sub(1));
    }
    let mut picked: Vec<usize> = std::iter::once(0)
        .chain(changes.into_iter().map(|(i, _)| i))
        .collect();
    picked.sort_unstable();
    picked
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn evenly_spaced_and_fps_times() {
        assert_eq!(Selection::Count(4).times(8.0), vec![1.0, 3.0, 5.0, 7.0]);
        assert_eq!(Selection::Count(1).times(10.0), vec![5.0]);
        assert_eq!(Selection::Fps(0.5).times(10.0), vec![0.0, 2.0, 4.0, 6.0, 8.0]);
        assert_eq!(Selection::Fps(1.0).times(2.5), vec![0.0, 1.0, 2.0]);
        assert_eq!(Selection::Fps(30.0).times(36_000.0).len(), MAX_FRAMES);
        assert_eq!(
            Selection::Scenes {
                threshold: 0.1,
                max: 4
            }
            .times(36_000.0)
            .len(),
            MAX_SCENE_SAMPLES
        );
        assert!(Selection::Count(0).validate().is_err());
        assert!(Selection::Fps(f64::NAN).validate().is_err());
        assert!(Selection::Scenes {
            threshold: 2.0,
            max: 3
        }
        .validate()
        .is_err());
    }

    #[test]
    fn scenes_are_the_big_changes() {
        let flat = |v: f32| vec![v; 768];
        let thumbs = vec![flat(0.0), flat(0.01), flat(0.5), flat(0.5), flat(0.9), flat(0.2)];
        assert_eq!(pick_scenes(&thumbs, 0.1, 10), vec![0, 2, 4, 5]);
        // Capped: the two largest changes (0.7 at 5, 0.49 at 2) beside the first.
        assert_eq!(pick_scenes(&thumbs, 0.1, 3), vec![0, 2, 5]);
        assert_eq!(pick_scenes(&thumbs, 0.95, 3), vec![0]);
    }
}
