//! How a product `y = x Wᵀ` is split across threads: each task takes a run of consecutive weight
//! rows (so every weight byte is read by exactly one thread, once per call) and writes the
//! matching column block of y.
//!
//! Tasks run on candle's barrier pool: persistent workers that spin for about a millisecond
//! before parking, with the calling thread taking a share, as llama.cpp's thread pool does. A
//! decode step makes ~180 products a few hundred microseconds apart; waking rayon's sleeping
//! workers through the kernel for each one left the cores idle half the time. The pool has
//! `RAYON_NUM_THREADS` (`-t`) threads in all, caller included.

use std::ops::Range;
use std::sync::Mutex;

/// Weight bytes one task reads: large enough that the hardware prefetcher settles on the stream
/// and the per-task cost of the pool is noise, small enough that the cores share the tail.
const TASK_BYTES: usize = 128 << 10;

/// Weight rows per task for a matrix of `n` rows of `row_bytes` each: about [`TASK_BYTES`], and
/// at least four tasks per thread where the matrix allows.
pub fn rows_per_task(n: usize, row_bytes: usize) -> usize {
    let threads = threads();
    let by_bytes = (TASK_BYTES / row_bytes.max(1)).max(1);
    by_bytes.min(n.div_ceil(threads * 4)).max(1)
}

/// Threads a product is split over (candle's count, which reads `/proc/cpuinfo` on every call:
/// asked once).
pub fn threads() -> usize {
    static THREADS: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    *THREADS.get_or_init(|| candle_core::utils::get_num_threads().max(1))
}

/// y [t, n] (row-major) from `f(rows, out)`, which writes `out` [rows.len(), t]: the products of
/// weight rows `rows` with each of the t activation rows.
pub fn split_rows(
    n: usize,
    t: usize,
    row_bytes: usize,
    f: impl Fn(Range<usize>, &mut [f32]) + Sync + Send,
) -> Vec<f32> {
    split_rows_by(n, t, rows_per_task(n, row_bytes), f)
}

/// [`split_rows`] with a fixed number of rows per task (a gemm panel's height: its summation
/// order depends on the panel shape, and a checkpoint must compute the same whatever the
/// thread count).
pub fn split_rows_by(
    n: usize,
    t: usize,
    per_task: usize,
    f: impl Fn(Range<usize>, &mut [f32]) + Sync + Send,
) -> Vec<f32> {
    let mut y_nt = vec![0f32; n * t];
    if n == 0 || t == 0 {
        return y_nt;
    }
    let per_task = per_task.max(1);
    {
        let tasks: Vec<Mutex<&mut [f32]>> = y_nt.chunks_mut(per_task * t).map(Mutex::new).collect();
        candle_core::utils::barrier_pool().execute_chunked(tasks.len(), |range| {
            for i in range {
                // Each task's lock is taken once, by the one thread that runs it.
                let Ok(mut out) = tasks[i].lock() else { continue };
                let first = i * per_task;
                let rows = out.len() / t;
                f(first..first + rows, &mut out);
            }
        });
    }
    if t == 1 {
        y_nt
    } else {
        super::transpose::transpose(&y_nt, n, t)
    }
}
