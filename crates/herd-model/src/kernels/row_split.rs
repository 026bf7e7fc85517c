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

/// y [t, n] from `f(rows, block)`, which writes the columns `rows` of every one of the t rows of
/// y through `block` ([`ColumnBlock::token_row`]): for kernels that produce their results
/// token-major, so y needs no transpose.
pub fn split_columns_by(
    n: usize,
    t: usize,
    per_task: usize,
    f: impl Fn(Range<usize>, &mut ColumnBlock<'_>) + Sync + Send,
) -> Vec<f32> {
    let mut y_tn = vec![0f32; n * t];
    if n == 0 || t == 0 {
        return y_tn;
    }
    let per_task = per_task.max(1);
    let tasks = n.div_ceil(per_task);
    let base = SharedOut(y_tn.as_mut_ptr());
    candle_core::utils::barrier_pool().execute_chunked(tasks, |range| {
        for i in range {
            let cols = i * per_task..((i + 1) * per_task).min(n);
            // Each task index runs once, so no two blocks share a column.
            let mut block = ColumnBlock {
                base: base.ptr(),
                n,
                t,
                cols: cols.clone(),
                _out: std::marker::PhantomData,
            };
            f(cols, &mut block);
        }
    });
    y_tn
}

/// The output pointer, shared by tasks that write disjoint columns.
#[derive(Clone, Copy)]
struct SharedOut(*mut f32);

impl SharedOut {
    fn ptr(self) -> *mut f32 {
        self.0
    }
}
// SAFETY: tasks write through it only via ColumnBlocks of disjoint column ranges, while the
// vector it points into is alive and not otherwise borrowed (split_columns_by holds it).
unsafe impl Send for SharedOut {}
// SAFETY: as above.
unsafe impl Sync for SharedOut {}

/// One task's columns of a [t, n] output: the only access to them while the task runs.
pub struct ColumnBlock<'a> {
    base: *mut f32,
    n: usize,
    t: usize,
    cols: Range<usize>,
    _out: std::marker::PhantomData<&'a mut [f32]>,
}

impl<'a> ColumnBlock<'a> {
    /// All the columns of y [t, n] (a single task's view of a whole output).
    ///
    /// # Panics
    /// If y is not t·n values.
    pub fn whole(y: &'a mut [f32], t: usize, n: usize) -> Self {
        assert_eq!(y.len(), t * n);
        ColumnBlock {
            base: y.as_mut_ptr(),
            n,
            t,
            cols: 0..n,
            _out: std::marker::PhantomData,
        }
    }

    /// This block's columns of output row `token` (its length is the block's width).
    ///
    /// # Panics
    /// If `token` ≥ t.
    pub fn token_row(&mut self, token: usize) -> &mut [f32] {
        assert!(token < self.t);
        // SAFETY: token < t and cols ⊆ 0..n, so the range lies inside the t·n output; no other
        // block covers these columns, and &mut self keeps this block's slices one at a time.
        unsafe {
            std::slice::from_raw_parts_mut(self.base.add(token * self.n + self.cols.start), self.cols.len())
        }
    }
}
