//! Layer normalisation over the last dimension (the vision tower's, with weight α and bias β):
//!
//! ```text
//! mean = Σx / n,   var = Σx² / n − mean²          (one pass, f32 sums in order)
//! y    = (x − mean) · 1/√(var + eps) · α + β
//! ```
//!
//! candle's CPU op in the same arithmetic, term for term, so the bits are its bits (the slow
//! twin in the tests). candle runs its rows on rayon's threads, beside the barrier pool's
//! worker spinning for the next product; here the rows are tasks on that pool, and a task runs
//! eight rows side by side so the sums' dependency chains (each row's still in order) overlap.

use std::sync::atomic::{AtomicPtr, Ordering};

use super::row_split::for_each_task;

/// Rows normalised side by side.
const ROWS: usize = 8;
/// Values per pool task.
const TASK_VALUES: usize = 1 << 16;

/// x [rows, n] → y [rows, n].
///
/// # Panics
/// If α or β is not n values, or x is not whole rows of n.
pub fn layer_norm(x: &[f32], alpha: &[f32], beta: &[f32], eps: f32) -> Vec<f32> {
    let n = alpha.len();
    assert_eq!(beta.len(), n, "layer norm: α and β differ in length");
    assert!(
        if n == 0 {
            x.is_empty()
        } else {
            x.len().is_multiple_of(n)
        },
        "layer norm: {} values are not rows of {n}",
        x.len()
    );
    if x.is_empty() {
        return Vec::new();
    }
    let rows = x.len() / n;
    let per_task = (TASK_VALUES / n).max(1);
    let tasks = rows.div_ceil(per_task);
    let mut y: Vec<f32> = Vec::with_capacity(x.len());
    let base = AtomicPtr::new(y.as_mut_ptr());
    for_each_task(tasks, |i| {
        let r = i * per_task..((i + 1) * per_task).min(rows);
        // SAFETY: task i's rows lie inside the rows·n allocation, which outlives the call, and
        // each task index runs once, so no other task touches them; zeroed before the slice.
        let out = unsafe {
            let start = base.load(Ordering::Relaxed).add(r.start * n);
            start.write_bytes(0, r.len() * n);
            std::slice::from_raw_parts_mut(start, r.len() * n)
        };
        normalize_rows(&x[r.start * n..r.end * n], alpha, beta, eps, out);
    });
    // SAFETY: the tasks cover every row, each ran (a panic would have unwound past this line)
    // and initialised its rows first.
    unsafe { y.set_len(x.len()) };
    y
}

/// Whole rows of x into out: eight at a time, then one at a time.
fn normalize_rows(x: &[f32], alpha: &[f32], beta: &[f32], eps: f32, out: &mut [f32]) {
    let n = alpha.len();
    let mut xs = x.chunks_exact(ROWS * n);
    let mut outs = out.chunks_exact_mut(ROWS * n);
    for (x8, out8) in (&mut xs).zip(&mut outs) {
        normalize::<ROWS>(x8, alpha, beta, eps, out8);
    }
    for (x1, out1) in xs
        .remainder()
        .chunks_exact(n)
        .zip(outs.into_remainder().chunks_exact_mut(n))
    {
        normalize::<1>(x1, alpha, beta, eps, out1);
    }
}

/// R rows of x [R, n] into out: each row's sums in order (candle's), the R rows interleaved.
#[inline(always)]
fn normalize<const R: usize>(x: &[f32], alpha: &[f32], beta: &[f32], eps: f32, out: &mut [f32]) {
    let n = alpha.len();
    let (mut sum, mut sum2) = ([0f32; R], [0f32; R]);
    for i in 0..n {
        for r in 0..R {
            let v = x[r * n + i];
            sum[r] += v;
            sum2[r] += v * v;
        }
    }
    for r in 0..R {
        let mean = sum[r] / n as f32;
        let var = sum2[r] / n as f32 - mean * mean;
        let inv_std = (var + eps).sqrt().recip();
        let row = &x[r * n..(r + 1) * n];
        for (((d, &s), &a), &b) in out[r * n..(r + 1) * n].iter_mut().zip(row).zip(alpha).zip(beta) {
            *d = (s - mean) * inv_std * a + b;
        }
    }
}
