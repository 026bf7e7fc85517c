//! Antialiased bilinear resize of 8-bit images, bit-exact with the reference: transformers'
//! Llama 4 processor calls torchvision's `resize(antialias=True)` on uint8 tensors, which on an
//! x86 CPU with AVX2 runs ATen's uint8 kernel (`UpSampleKernelAVXAntialias.h`, itself PIL's
//! `ImagingResample`): separable, horizontal pass first, uint8 between the passes, each pass a
//! fixed-point convolution.
//!
//! Per axis (input size I, output size O, scale s = I / O):
//! - support = s when s ≥ 1 (downscaling widens the triangle filter), else 1;
//! - output pixel i: centre c = s·(i + ½); taps from xmin = max(trunc(c − support + ½), 0) to
//!   min(trunc(c + support + ½), I), at most ⌈support⌉·2 + 1 of them; weight of tap j:
//!   triangle((j + xmin − c + ½) / max(s, 1)), normalised to sum 1 (in f64);
//! - weights become i16 with the precision p that keeps 2·max weight below 2¹⁵ (p ≤ 22),
//!   rounded half away from zero;
//! - pixel = clamp((Σ v·w + 2^(p−1)) >> p, 0, 255).
//!
//! Reference: pytorch `aten/src/ATen/native/cpu/UpSampleKernel.cpp`
//! (`_compute_indices_min_size_weights_aa`, `_compute_index_ranges_int16_weights`) and
//! `UpSampleKernelAVXAntialias.h` (`ImagingResampleHorizontal` / `…Vertical`).

use image::RgbImage;

/// One axis's taps: per output pixel its first input index and tap count; i16 weights
/// `max_taps` apart; their fixed-point precision.
#[derive(Debug, Clone, PartialEq)]
pub struct Taps {
    pub first: Vec<usize>,
    pub count: Vec<usize>,
    pub weights: Vec<i16>,
    pub max_taps: usize,
    pub precision: u32,
}

fn triangle(x: f64) -> f64 {
    let x = x.abs();
    if x < 1.0 {
        1.0 - x
    } else {
        0.0
    }
}

impl Taps {
    pub fn new(in_size: usize, out_size: usize) -> Self {
        let scale = in_size as f64 / out_size as f64;
        let support = if scale >= 1.0 { scale } else { 1.0 };
        let invscale = if scale >= 1.0 { 1.0 / scale } else { 1.0 };
        let max_taps = support.ceil() as usize * 2 + 1;
        let mut first = Vec::with_capacity(out_size);
        let mut count = Vec::with_capacity(out_size);
        let mut wf = vec![0f64; out_size * max_taps];
        let mut w_max = 0f64;
        for i in 0..out_size {
            let center = scale * (i as f64 + 0.5);
            // `as i64` truncates toward zero, as the reference's static_cast.
            let xmin = ((center - support + 0.5) as i64).max(0);
            let xsize = ((center + support + 0.5) as i64)
                .min(in_size as i64)
                .saturating_sub(xmin)
                .clamp(0, max_taps as i64) as usize;
            let row = &mut wf[i * max_taps..(i + 1) * max_taps];
            let mut total = 0f64;
            for (j, w) in row.iter_mut().take(xsize).enumerate() {
                *w = triangle((j as f64 + xmin as f64 - center + 0.5) * invscale);
                total += *w;
            }
            if total != 0.0 {
                for w in row.iter_mut().take(xsize) {
                    *w /= total;
                    w_max = w_max.max(*w);
                }
            }
            first.push(xmin as usize);
            count.push(xsize);
        }
        let mut precision = 0u32;
        while precision < 22 {
            let next = (0.5 + w_max * f64::from(1u32 << (precision + 1))) as i32;
            if next >= 1 << 15 {
                break;
            }
            precision += 1;
        }
        let weights = wf
            .iter()
            .map(|&w| {
                let v = w * f64::from(1u32 << precision);
                (if v < 0.0 { v - 0.5 } else { v + 0.5 }) as i16
            })
            .collect();
        Taps {
            first,
            count,
            weights,
            max_taps,
            precision,
        }
    }

    /// Output pixel `i` from input values `at(k)` along the axis (one channel).
    fn apply(&self, i: usize, at: impl Fn(usize) -> u8) -> u8 {
        let w = &self.weights[i * self.max_taps..][..self.count[i]];
        let mut sum: i32 = if self.precision > 0 {
            1 << (self.precision - 1)
        } else {
            0
        };
        for (k, &wk) in w.iter().enumerate() {
            sum += i32::from(at(self.first[i] + k)) * i32::from(wk);
        }
        (sum >> self.precision).clamp(0, 255) as u8
    }
}

/// Resizes to `width` × `height` as the reference does (see the module notes).
pub fn resize(img: &RgbImage, width: u32, height: u32) -> RgbImage {
    let (w0, h0) = (img.width() as usize, img.height() as usize);
    let (w1, h1) = (width as usize, height as usize);
    let horizontal = if w1 != w0 {
        let taps = Taps::new(w0, w1);
        let mut out = RgbImage::new(width, img.height());
        for y in 0..h0 {
            for x in 0..w1 {
                let px = out.get_pixel_mut(x as u32, y as u32);
                for c in 0..3 {
                    px[c] = taps.apply(x, |k| img.get_pixel(k as u32, y as u32)[c]);
                }
            }
        }
        out
    } else {
        img.clone()
    };
    if h1 == h0 {
        return horizontal;
    }
    let taps = Taps::new(h0, h1);
    let mut out = RgbImage::new(width, height);
    for y in 0..h1 {
        for x in 0..w1 {
            let px = out.get_pixel_mut(x as u32, y as u32);
            for c in 0..3 {
                px[c] = taps.apply(y, |k| horizontal.get_pixel(x as u32, k as u32)[c]);
            }
        }
    }
    out
}
