//! RMS normalisation of rows, `y = x · 1/√(mean(x²) + eps) (· w)`, in candle's CPU arithmetic
//! bit for bit, so swapping it in changes no output:
//!
//! ```text
//! s    = Σ x²          as candle's `sum_keepdim` adds the squares: with AVX2, four 8-lane
//!                      accumulators over runs of 32, its reduction tree, then the tail in
//!                      order; in order on other x86-64 CPUs
//! mean = s·(1/n) + 0   candle's affine op (`v·mul + add`), as `mean_keepdim` and `+ eps` are
//! r    = 1/√(mean·1 + eps)
//! y    = (x·r)·w
//! ```
//!
//! One call does what [`crate::nn::rms_normalize`] and the weight's product do in nine tensor
//! ops, each an allocation and a dispatch on the calling thread while the pool's workers wait:
//! a decode step runs ~60 norms, on rows of 128 to 5 120 values. Elsewhere than x86-64 (where
//! candle sums in another order) [`supported`] is false and the callers keep candle's ops.

use super::row_split::for_each_task;

/// Values per pool task (a prompt's norms; a decode step's run on the calling thread).
const TASK_VALUES: usize = 1 << 16;

/// Whether this build can reproduce candle's sums here (x86-64).
pub fn supported() -> bool {
    cfg!(target_arch = "x86_64")
}

/// How candle sums a row on this CPU.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SumOrder {
    /// Four 8-lane accumulators over runs of 32, then a fixed tree (candle's AVX2 build).
    Lanes,
    /// One accumulator, in order.
    InOrder,
}

impl SumOrder {
    /// candle's choice on this CPU (it asks for AVX2 at run time).
    pub fn current() -> SumOrder {
        #[cfg(target_arch = "x86_64")]
        if std::arch::is_x86_feature_detected!("avx2") {
            return SumOrder::Lanes;
        }
        SumOrder::InOrder
    }
}

/// x [rows, n] normalised row by row and multiplied by `weight` (n values) if given.
///
/// # Panics
/// If x is not whole rows of n, or the weight is not n values.
pub fn rms_norm_rows(x: &[f32], n: usize, weight: Option<&[f32]>, eps: f64) -> Vec<f32> {
    rms_norm_rows_in(SumOrder::current(), x, n, weight, eps)
}

/// [`rms_norm_rows`] summing in a chosen order (the tests take both).
///
/// # Panics
/// As [`rms_norm_rows`].
pub fn rms_norm_rows_in(order: SumOrder, x: &[f32], n: usize, weight: Option<&[f32]>, eps: f64) -> Vec<f32> {
    assert!(
        if n == 0 {
            x.is_empty()
        } else {
            x.len().is_multiple_of(n)
        },
        "rms norm: {} values are not rows of {n}",
        x.len()
    );
    if let Some(w) = weight {
        assert_eq!(w.len(), n, "rms norm: the weight is not one row");
    }
    let mut y = vec![0f32; x.len()];
    if x.is_empty() {
        return y;
    }
    let per_task = (TASK_VALUES / n).max(1);
    let tasks: Vec<std::sync::Mutex<&mut [f32]>> =
        y.chunks_mut(per_task * n).map(std::sync::Mutex::new).collect();
    for_each_task(tasks.len(), |i| {
        let Ok(mut out) = tasks[i].lock() else { return };
        let rows = &x[i * per_task * n..][..out.len()];
        for (x_row, y_row) in rows.chunks_exact(n).zip(out.chunks_exact_mut(n)) {
            normalize_row(order, x_row, weight, eps, y_row);
        }
    });
    drop(tasks);
    y
}

fn normalize_row(order: SumOrder, x: &[f32], weight: Option<&[f32]>, eps: f64, y: &mut [f32]) {
    let n = x.len();
    let sum = match order {
        SumOrder::Lanes => sum_of_squares_in_lanes(x),
        SumOrder::InOrder => x.iter().fold(0f32, |s, &v| s + v * v),
    };
    // candle's affine ops: T::from_f64 of each constant, then `v·mul + add`.
    let mean = sum * ((1.0 / n as f64) as f32) + 0f32;
    let r = (mean * 1f32 + eps as f32).sqrt().recip();
    match weight {
        Some(w) => {
            for ((y, &v), &w) in y.iter_mut().zip(x).zip(w) {
                *y = (v * r) * w;
            }
        }
        None => {
            for (y, &v) in y.iter_mut().zip(x) {
                *y = v * r;
            }
        }
    }
}

/// Σ x² as candle's AVX2 `vec_sum` adds the squares: acc[j][lane] over runs of 32 values
/// (j = which 8 of the 32), then acc₀ + acc₁ and acc₂ + acc₃, their sum, the two 4-lane halves
/// added, two horizontal adds, and the last n mod 32 squares one by one.
fn sum_of_squares_in_lanes(x: &[f32]) -> f32 {
    let whole = x.len() / 32 * 32;
    let mut acc = [[0f32; 8]; 4];
    for run in x[..whole].chunks_exact(32) {
        for (j, lanes) in acc.iter_mut().enumerate() {
            for (l, a) in lanes.iter_mut().enumerate() {
                let v = run[8 * j + l];
                *a += v * v;
            }
        }
    }
    let mut x0 = [0f32; 8];
    for l in 0..8 {
        let (a01, a23) = (acc[0][l] + acc[1][l], acc[2][l] + acc[3][l]);
        x0[l] = a01 + a23;
    }
    let t0: [f32; 4] = std::array::from_fn(|l| x0[l] + x0[l + 4]);
    let (t1_0, t1_1) = (t0[0] + t0[1], t0[2] + t0[3]);
    let mut sum = t1_0 + t1_1;
    for &v in &x[whole..] {
        sum += v * v;
    }
    sum
}
