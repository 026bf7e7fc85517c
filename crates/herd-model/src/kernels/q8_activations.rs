//! Activations quantized to 8-bit blocks for the integer dot products of the block formats, as
//! llama.cpp does: Q8_0 weights meet Q8_0 activations (32 values, one scale), k-quant weights
//! meet Q8_K activations (256 values, one scale, and the sum of every 16 values, which the
//! k-quants' minimums and offsets need).
//!
//! Both follow ggml to the bit — the Q8_0 scale rounded to f16 as `block_q8_0` stores it, the
//! levels computed from the unrounded one — so herd's integer sums are llama.cpp's. (An f32
//! scale is no better overall: on the tiny Llama 4 fixture it moved a router choice and the
//! worst logit row from 4.6% to 12.8% off the reference.)

/// Rows of activations in 8-bit blocks: value `i` of row `r` is `qs[r·K + i] · scales[(r·K + i)
/// / block]`.
#[derive(Debug, Clone, Default)]
pub struct Q8Activations {
    /// Values per block: 32 (Q8_0) or 256 (Q8_K).
    pub block: usize,
    /// Values per row (a multiple of `block`).
    pub cols: usize,
    pub scales: Vec<f32>,
    pub qs: Vec<i8>,
    /// Σ of each run of 16 quantized values (Q8_K only; |Σ| ≤ 16 · 127 fits an i16).
    pub sums16: Vec<i16>,
}

impl Q8Activations {
    /// Empties the buffer for `len` values in rows of `cols`, blocks of `block` (keeping its
    /// allocations): `qs` zeroed to `len`, scales and sums to be pushed.
    fn reset(&mut self, block: usize, cols: usize, len: usize) {
        debug_assert!(cols.is_multiple_of(block) && len.is_multiple_of(cols.max(1)));
        self.block = block;
        self.cols = cols;
        self.scales.clear();
        self.sums16.clear();
        self.qs.clear();
        self.qs.resize(len, 0);
    }

    /// Rows in the buffer.
    pub fn rows(&self) -> usize {
        self.qs.len().checked_div(self.cols).unwrap_or(0)
    }

    /// Row `r`: (scales, qs, sums16).
    pub fn row(&self, r: usize) -> (&[f32], &[i8], &[i16]) {
        let blocks = self.cols / self.block;
        let sums = if self.sums16.is_empty() {
            &self.sums16[..]
        } else {
            &self.sums16[r * self.cols / 16..(r + 1) * self.cols / 16]
        };
        (
            &self.scales[r * blocks..(r + 1) * blocks],
            &self.qs[r * self.cols..(r + 1) * self.cols],
            sums,
        )
    }
}

/// ggml's `quantize_row_q8_0`: per 32 values, d = max|x| / 127, q = round(x / d) (half away
/// from zero), d kept as its f16 rounding. `x` is whole rows of `cols` values; the buffer is reused.
pub fn quantize_q8_0(x: &[f32], cols: usize, out: &mut Q8Activations) {
    const BLOCK: usize = 32;
    out.reset(BLOCK, cols, x.len());
    for (xb, qb) in x.chunks_exact(BLOCK).zip(out.qs.chunks_exact_mut(BLOCK)) {
        let amax = xb.iter().fold(0f32, |m, v| m.max(v.abs()));
        let d = amax / 127.0;
        let id = if d != 0.0 { 1.0 / d } else { 0.0 };
        for (q, v) in qb.iter_mut().zip(xb) {
            *q = (v * id).round() as i8;
        }
        out.scales.push(half::f16::from_f32(d).to_f32());
    }
}

/// ggml's `quantize_row_q8_K_ref`: per 256 values, the value of largest magnitude maps to −127
/// (so the scale carries its sign), q = nearest(x · −127 / max) clamped to 127; plus the sum of
/// every 16 quantized values.
pub fn quantize_q8_k(x: &[f32], cols: usize, out: &mut Q8Activations) {
    const BLOCK: usize = 256;
    out.reset(BLOCK, cols, x.len());
    for (xb, qb) in x.chunks_exact(BLOCK).zip(out.qs.chunks_exact_mut(BLOCK)) {
        let (mut amax, mut max) = (0f32, 0f32);
        for &v in xb {
            if v.abs() > amax {
                amax = v.abs();
                max = v;
            }
        }
        if amax == 0.0 {
            out.scales.push(0.0);
            out.sums16.extend([0; BLOCK / 16]);
            continue;
        }
        let iscale = -127.0 / max;
        for (q, v) in qb.iter_mut().zip(xb) {
            *q = nearest_int(iscale * v).min(127) as i8;
        }
        out.scales.push(1.0 / iscale);
        out.sums16.extend(
            qb.chunks_exact(16)
                .map(|s| s.iter().map(|&q| i16::from(q)).sum::<i16>()),
        );
    }
}

/// Round half to even, as ggml's `nearest_int`: adding 1.5·2²³ leaves the rounded integer in
/// the low mantissa bits (exact for |x| < 2²²). Integer operations the compiler vectorises,
/// where `round_ties_even` is a libm call per value on the baseline x86-64 build (1.6 % of a
/// Q4_K_M decode step). The callers' values lie in [−127, 127]; the clamp only bounds what a
/// block whose largest value is subnormal (an infinite inverse scale) would hand it, and NaN
/// gives 0 as a cast would.
#[inline(always)]
fn nearest_int(x: f32) -> i32 {
    let shifted = x.clamp(-128.0, 127.0) + 12_582_912.0;
    let rounded = (shifted.to_bits() & 0x007F_FFFF) as i32 - 0x0040_0000;
    if x.is_nan() {
        0
    } else {
        rounded
    }
}
