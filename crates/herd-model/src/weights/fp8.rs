//! FP8 weights as Meta's official FP8 Llama 4 checkpoint stores them (compressed-tensors
//! `float-quantized`, or fbgemm's `fbgemm_fp8`): `weight` float8_e4m3fn `[out, in]` and
//! `weight_scale` `[out, 1]`, the value being `fp8(w) · scale[row]` — one scale per output
//! channel. Kept as one byte per weight in memory; products widen a panel of rows at a time
//! through a 256-entry table and scale each output column once, accumulating in f32.
//!
//! Deviation: the checkpoint's config also asks for dynamic per-token FP8 *activations* (an
//! H100 kernel detail). herd multiplies FP8 weights by f32 activations, which is what the
//! reference computes on the dequantized weights.

use half::slice::HalfFloatSliceExt;

use crate::error::{Error, Result};
use crate::kernels::half_matmul::{self, HalfElement};

/// One float8_e4m3fn value (1 sign, 4 exponent bits with bias 7, 3 mantissa bits; no
/// infinities, 0x7F / 0xFF are NaN).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(transparent)]
pub struct F8E4M3(pub u8);

impl F8E4M3 {
    /// The exact value (every e4m3 value is an f32).
    pub const fn to_f32(self) -> f32 {
        let b = self.0;
        let sign = if b & 0x80 != 0 { -1.0 } else { 1.0 };
        let exp = ((b >> 3) & 0x0F) as i32;
        let man = (b & 0x07) as f32;
        if exp == 0x0F && (b & 0x07) == 0x07 {
            return f32::NAN;
        }
        let magnitude = if exp == 0 {
            man / 8.0 * (1.0 / 64.0)
        } else {
            (1.0 + man / 8.0) * pow2(exp - 7)
        };
        sign * magnitude
    }
}

const fn pow2(e: i32) -> f32 {
    if e >= 0 {
        (1u32 << e) as f32
    } else {
        1.0 / (1u32 << -e) as f32
    }
}

const fn table() -> [f32; 256] {
    let mut t = [0f32; 256];
    let mut i = 0;
    while i < 256 {
        t[i] = F8E4M3(i as u8).to_f32();
        i += 1;
    }
    t
}

static TABLE: [f32; 256] = table();

impl HalfElement for F8E4M3 {
    fn widen(src: &[Self], dst: &mut [f32]) {
        for (d, s) in dst.iter_mut().zip(src) {
            *d = TABLE[s.0 as usize];
        }
    }
    fn to_f32_scalar(self) -> f32 {
        self.to_f32()
    }
}

/// An FP8 matrix `[rows, cols]` with one f32 scale per row.
#[derive(Debug, Clone)]
pub struct Fp8Matrix {
    rows: usize,
    cols: usize,
    values: Vec<F8E4M3>,
    scale: Vec<f32>,
}

impl Fp8Matrix {
    /// From the raw e4m3 bytes (row-major) and the per-row scales.
    pub fn new(rows: usize, cols: usize, bytes: Vec<u8>, scale: Vec<f32>, name: &str) -> Result<Self> {
        if bytes.len() != rows * cols || scale.len() != rows {
            return Err(Error::Quantization {
                name: name.to_string(),
                message: format!(
                    "{} FP8 values and {} scales for a {rows}×{cols} matrix",
                    bytes.len(),
                    scale.len()
                ),
            });
        }
        if let Some(bad) = scale.iter().find(|s| !s.is_finite()) {
            return Err(Error::Quantization {
                name: name.to_string(),
                message: format!("weight_scale holds {bad}"),
            });
        }
        // SAFETY: F8E4M3 is a transparent wrapper of u8, so a Vec<u8>'s allocation is a valid
        // Vec<F8E4M3> of the same length and capacity.
        let values = unsafe {
            let mut bytes = std::mem::ManuallyDrop::new(bytes);
            Vec::from_raw_parts(bytes.as_mut_ptr().cast::<F8E4M3>(), bytes.len(), bytes.capacity())
        };
        Ok(Fp8Matrix {
            rows,
            cols,
            values,
            scale,
        })
    }

    pub fn rows(&self) -> usize {
        self.rows
    }

    pub fn cols(&self) -> usize {
        self.cols
    }

    pub fn stored_bytes(&self) -> usize {
        self.values.len() + self.scale.len() * 4
    }

    /// `x Wᵀ`: x [t, cols] f32 → [t, rows] f32.
    pub fn matmul_t(&self, x: &[f32], t: usize) -> Vec<f32> {
        let mut y = half_matmul::matmul_t(x, t, &self.values, self.rows, self.cols);
        for row in y.chunks_exact_mut(self.rows.max(1)) {
            row.iter_mut().zip(&self.scale).for_each(|(v, s)| *v *= s);
        }
        y
    }

    /// The whole matrix in f32, `fp8 · scale` (the slow twin's weight).
    pub fn dequantize(&self) -> Vec<f32> {
        self.values
            .chunks_exact(self.cols.max(1))
            .zip(&self.scale)
            .flat_map(|(row, s)| row.iter().map(move |v| v.to_f32() * s))
            .collect()
    }
}

/// Widens bf16 scales (as the checkpoint stores them) to f32.
pub fn widen_bf16(scales: &[half::bf16]) -> Vec<f32> {
    let mut out = vec![0f32; scales.len()];
    scales.convert_to_f32_slice(&mut out);
    out
}
