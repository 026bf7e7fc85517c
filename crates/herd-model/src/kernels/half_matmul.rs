//! `y = x Wᵀ` with f32 activations x [T, K] and weights W [N, K] stored in bf16 or f16,
//! accumulated in f32 — the weights stay in their stored precision in memory and are widened
//! only a panel at a time. Widening bf16/f16 to f32 is exact, so this computes what the
//! reference computes on the upcast weights (up to summation order).
//!
//! Decode (few rows of x) streams each weight row once and dots it with every x row; prefill
//! widens panels of [`PANEL_ROWS`] weight rows and hands them to the `gemm` crate's f32 kernel.
//! Panels run in parallel on rayon's pool; each writes its own column block.

use half::{bf16, f16, slice::HalfFloatSliceExt};

use rayon::prelude::*;

/// Weight rows widened at once in the prefill path ([PANEL_ROWS, K] f32 per worker).
const PANEL_ROWS: usize = 64;
/// Up to this many activation rows take the streaming (matrix–vector) path.
const GEMV_MAX_ROWS: usize = 4;

/// A half-precision element that widens exactly to f32.
pub trait HalfElement: Copy + Send + Sync + 'static {
    /// Widens a slice (SIMD where `half` finds it).
    fn widen(src: &[Self], dst: &mut [f32]);
    /// Widens one value (the slow twin's path).
    fn to_f32_scalar(self) -> f32;
    /// `Σ x[i]·w[i]` with w widened on the fly; `buf` is scratch of w's length for formats
    /// that widen through a buffer.
    fn dot(x: &[f32], w: &[Self], buf: &mut [f32]) -> f32 {
        Self::widen(w, buf);
        dot(x, buf)
    }
}

impl HalfElement for bf16 {
    fn widen(src: &[Self], dst: &mut [f32]) {
        // bf16 is the top half of an f32: a shift, which the compiler vectorises (half's own
        // conversion quiets NaNs value by value and does not).
        for (d, s) in dst.iter_mut().zip(src) {
            *d = f32::from_bits(u32::from(s.to_bits()) << 16);
        }
    }
    fn to_f32_scalar(self) -> f32 {
        f32::from_bits(u32::from(self.to_bits()) << 16)
    }
    fn dot(x: &[f32], w: &[Self], _buf: &mut [f32]) -> f32 {
        simd::dot_bf16(x, w)
    }
}

impl HalfElement for f16 {
    fn widen(src: &[Self], dst: &mut [f32]) {
        src.convert_to_f32_slice(dst);
    }
    fn to_f32_scalar(self) -> f32 {
        self.to_f32()
    }
}

/// x: [t, k] f32, w: [n, k] → [t, n] f32.
pub fn matmul_t<W: HalfElement>(x: &[f32], t: usize, w: &[W], n: usize, k: usize) -> Vec<f32> {
    debug_assert_eq!(x.len(), t * k);
    debug_assert_eq!(w.len(), n * k);
    if t == 0 || n == 0 {
        return vec![0.0; t * n];
    }
    let panel_rows = if t <= GEMV_MAX_ROWS { 16 } else { PANEL_ROWS };
    // On candle's own thread pool: a second pool of the same size would oversubscribe the
    // cores against candle's ops and block kernels (measured: 2.3 vs 6.3 tok/s on 2 cores).
    let panels: Vec<(usize, Vec<f32>)> = candle_core::utils::with_threadpool(|| {
        w.par_chunks(panel_rows * k.max(1))
            .enumerate()
            .map(|(p, w_panel)| {
                let rows = w_panel.len() / k.max(1);
                let out = if t <= GEMV_MAX_ROWS {
                    gemv_panel(x, t, w_panel, rows, k)
                } else {
                    gemm_panel(x, t, w_panel, rows, k)
                };
                (p * panel_rows, out)
            })
            .collect()
    });
    // Each panel is [t, rows] for columns first..first+rows.
    let mut y = vec![0f32; t * n];
    for (first, block) in panels {
        let rows = block.len() / t;
        for (ti, src) in block.chunks_exact(rows).enumerate() {
            y[ti * n + first..ti * n + first + rows].copy_from_slice(src);
        }
    }
    y
}

/// Streams `rows` weight rows once each: [t, rows].
fn gemv_panel<W: HalfElement>(x: &[f32], t: usize, w: &[W], rows: usize, k: usize) -> Vec<f32> {
    let mut buf = vec![0f32; k];
    let mut out = vec![0f32; t * rows];
    for (r, w_row) in w.chunks_exact(k).enumerate() {
        for (ti, x_row) in x.chunks_exact(k).enumerate() {
            out[ti * rows + r] = W::dot(x_row, w_row, &mut buf);
        }
    }
    out
}

/// Widens the panel, then one f32 GEMM: [t, rows].
fn gemm_panel<W: HalfElement>(x: &[f32], t: usize, w: &[W], rows: usize, k: usize) -> Vec<f32> {
    let mut wide = vec![0f32; rows * k];
    W::widen(w, &mut wide);
    let mut out = vec![0f32; t * rows];
    // SAFETY: out is [t, rows] row-major (row stride `rows`, column stride 1); x is [t, k]
    // row-major; the right operand is the panel transposed, element (kk, j) at j·k + kk, so
    // its row stride is 1 and column stride k. All three buffers have exactly those extents.
    unsafe {
        gemm::gemm(
            t,
            rows,
            k,
            out.as_mut_ptr(),
            1,
            rows as isize,
            false,
            x.as_ptr(),
            1,
            k as isize,
            wide.as_ptr(),
            k as isize,
            1,
            0.0,
            1.0,
            false,
            false,
            false,
            gemm::Parallelism::None,
        );
    }
    out
}

/// f32 dot product with eight independent accumulators (so the compiler vectorises it).
fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0f32; 8];
    let (a8, a_tail) = a.split_at(a.len() / 8 * 8);
    let (b8, b_tail) = b.split_at(a8.len());
    for (ca, cb) in a8.chunks_exact(8).zip(b8.chunks_exact(8)) {
        for i in 0..8 {
            acc[i] += ca[i] * cb[i];
        }
    }
    let tail: f32 = a_tail.iter().zip(b_tail).map(|(x, y)| x * y).sum();
    acc.iter().sum::<f32>() + tail
}

/// The bf16 dot product, compiled three times (AVX-512, AVX2+FMA, baseline) and picked at run
/// time: the same loop, which the compiler vectorises to the widest unit it may use.
mod simd {
    use std::sync::OnceLock;

    use half::bf16;

    #[inline(always)]
    fn dot_bf16_portable(x: &[f32], w: &[bf16]) -> f32 {
        // Four AVX-512 registers of partial sums, so consecutive FMAs do not wait on each other.
        const LANES: usize = 64;
        let mut acc = [0f32; LANES];
        let n = x.len().min(w.len()) / LANES * LANES;
        for (cx, cw) in x[..n].chunks_exact(LANES).zip(w[..n].chunks_exact(LANES)) {
            for i in 0..LANES {
                acc[i] += cx[i] * f32::from_bits(u32::from(cw[i].to_bits()) << 16);
            }
        }
        let tail: f32 = x[n..]
            .iter()
            .zip(&w[n..])
            .map(|(a, b)| a * f32::from_bits(u32::from(b.to_bits()) << 16))
            .sum();
        acc.iter().sum::<f32>() + tail
    }

    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx512f")]
    unsafe fn dot_bf16_avx512(x: &[f32], w: &[bf16]) -> f32 {
        dot_bf16_portable(x, w)
    }

    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn dot_bf16_avx2(x: &[f32], w: &[bf16]) -> f32 {
        dot_bf16_portable(x, w)
    }

    type DotFn = fn(&[f32], &[bf16]) -> f32;

    fn pick() -> DotFn {
        #[cfg(target_arch = "x86_64")]
        {
            if std::is_x86_feature_detected!("avx512f") {
                // SAFETY: the CPU has AVX-512F, checked just above.
                return |x, w| unsafe { dot_bf16_avx512(x, w) };
            }
            if std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma") {
                // SAFETY: the CPU has AVX2 and FMA, checked just above.
                return |x, w| unsafe { dot_bf16_avx2(x, w) };
            }
        }
        dot_bf16_portable
    }

    pub fn dot_bf16(x: &[f32], w: &[bf16]) -> f32 {
        static DOT: OnceLock<DotFn> = OnceLock::new();
        (DOT.get_or_init(pick))(x, w)
    }

    /// The portable path, for tests that check every variant agrees.
    pub fn dot_bf16_baseline(x: &[f32], w: &[bf16]) -> f32 {
        dot_bf16_portable(x, w)
    }
}

pub use simd::{dot_bf16, dot_bf16_baseline};

/// The slow twin: widen every element, one f32 multiply-add at a time.
pub fn matmul_t_slow<W: HalfElement>(x: &[f32], t: usize, w: &[W], n: usize, k: usize) -> Vec<f32> {
    let mut y = vec![0f32; t * n];
    for ti in 0..t {
        for j in 0..n {
            let mut acc = 0f32;
            for kk in 0..k {
                acc += x[ti * k + kk] * w[j * k + kk].to_f32_scalar();
            }
            y[ti * n + j] = acc;
        }
    }
    y
}
