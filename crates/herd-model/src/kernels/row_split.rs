//! How a product `y = x Wᵀ` is split across threads: each task takes a run of consecutive weight
//! rows (so every weight byte is read by exactly one thread, once per call) and writes the
//! matching column block of y.
//!
//! Tasks run on candle's barrier pool: persistent workers that spin for about a millisecond
//! before parking, with the calling thread taking a share, as llama.cpp's thread pool does. A
//! decode step makes ~180 products a few hundred microseconds apart; waking rayon's sleeping
//! workers through the kernel for each one left the cores idle half the time. The pool has
//! `RAYON_NUM_THREADS` (`-t`) threads in all, caller included.

use std::cell::Cell;
use std::ops::Range;
use std::sync::atomic::{AtomicUsize, Ordering};

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

thread_local! {
    /// Whether this thread is running a task of [`for_each_task`] (a nested call runs inline:
    /// the pool takes one call at a time).
    static IN_TASK: Cell<bool> = const { Cell::new(false) };
}

/// Runs `f(i)` for every i < n on the barrier pool, the threads taking one index at a time from
/// a shared cursor. candle's `execute_chunked` hands out runs of n / (8 · threads) indices: a
/// decode step's LM head (2 600 tasks of 128 KiB) went out in runs of 20 MiB, and a prompt's
/// attention in runs of its sixteen heaviest query blocks, so a thread could finish a run's
/// worth of time before the other. One index (a few microseconds of work at least) per atomic
/// increment costs nothing against that. A single task, or a call from inside a task, runs on
/// the calling thread.
pub fn for_each_task(n: usize, f: impl Fn(usize) + Sync) {
    if n <= 1 || IN_TASK.with(Cell::get) {
        (0..n).for_each(f);
        return;
    }
    let cursor = AtomicUsize::new(0);
    candle_core::utils::barrier_pool().execute(|_| {
        let _flag = TaskFlag::set();
        loop {
            let i = cursor.fetch_add(1, Ordering::Relaxed);
            if i >= n {
                break;
            }
            f(i);
        }
    });
}

/// Marks the thread as inside a task until dropped (restoring what it was, on panic too).
struct TaskFlag(bool);

impl TaskFlag {
    fn set() -> Self {
        TaskFlag(IN_TASK.with(|c| c.replace(true)))
    }
}

impl Drop for TaskFlag {
    fn drop(&mut self) {
        IN_TASK.with(|c| c.set(self.0));
    }
}

/// y [t, n] (row-major) from `f(rows, out)`, which writes `out` [rows.len(), t]: the products of
/// weight rows `rows` with each of the t activation rows.
pub fn split_rows(
    n: usize,
    t: usize,
    row_bytes: usize,
    f: impl Fn(Range<usize>, &mut [f32]) + Sync + Send,
) -> Vec<f32> {
    let threads = threads();
    let tail_task = rows_per_task(n, row_bytes);
    // Past ~32 tasks a thread, the tasks grow: each costs a trip of the cursor's cache line
    // between the cores (an LM head's 2 600 tasks were 4 % of a decode step), and the tail
    // below keeps the end short anyway.
    let body_task = tail_task.max(n.div_ceil(threads * 32));
    split_rows_in(
        &tapered_ranges(n, body_task, tail_task.div_ceil(4), threads),
        n,
        t,
        f,
    )
}

/// `n` rows in runs of `per_task`, except the last `threads · per_task` rows, in runs of
/// `tail_task`: whichever thread takes the last task, the other waits at most that long for it
/// (a decode step makes ~190 products, each ending in that wait).
pub fn tapered_ranges(n: usize, per_task: usize, tail_task: usize, threads: usize) -> Vec<Range<usize>> {
    let per_task = per_task.max(1);
    let tail_task = tail_task.clamp(1, per_task);
    let body_end = n.saturating_sub(threads * per_task);
    let body = (0..body_end)
        .step_by(per_task)
        .map(|r| r..(r + per_task).min(body_end));
    let tail = (body_end..n)
        .step_by(tail_task)
        .map(|r| r..(r + tail_task).min(n));
    body.chain(tail).collect()
}

/// y [t, n] from `f(rows, out)` run once per range of `ranges` (consecutive, covering 0..n).
fn split_rows_in(
    ranges: &[Range<usize>],
    n: usize,
    t: usize,
    f: impl Fn(Range<usize>, &mut [f32]) + Sync + Send,
) -> Vec<f32> {
    if n == 0 || t == 0 {
        return vec![0f32; n * t];
    }
    // Consecutive ranges from 0 to n (checked here, as the writes below rely on it).
    let consecutive = ranges
        .iter()
        .try_fold(0, |at, r| (r.start == at && r.end >= at).then_some(r.end));
    assert_eq!(consecutive, Some(n), "row ranges must cover 0..n in order");
    // Each task zeroes its own part: `vec![0; n·t]` was a serial memset while the other
    // threads waited (an LM head's output every decode step).
    let mut y_nt: Vec<f32> = Vec::with_capacity(n * t);
    let base = SharedOut(y_nt.as_mut_ptr());
    for_each_task(ranges.len(), |i| {
        let rows = ranges[i].clone();
        // SAFETY: the ranges are disjoint and inside 0..n (asserted above), so each task's
        // rows·t values lie inside y_nt's allocation, which outlives the call, and no two tasks
        // (each index runs once) share any of them; they are zeroed before the slice is made.
        // No lock: a Mutex per task put two tasks' locks on one cache line, and the cores
        // traded it at every task.
        let out = unsafe {
            let start = base.ptr().add(rows.start * t);
            start.write_bytes(0, rows.len() * t);
            std::slice::from_raw_parts_mut(start, rows.len() * t)
        };
        f(rows, out);
    });
    // SAFETY: the ranges cover 0..n (asserted), every task ran (a panic would have unwound
    // past this line) and zeroed its rows·t values first, so all n·t are initialised.
    unsafe { y_nt.set_len(n * t) };
    if t == 1 {
        y_nt
    } else {
        super::transpose::transpose(&y_nt, n, t)
    }
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
    // Every run the same height, the tail's included.
    split_rows_in(&tapered_ranges(n, per_task, per_task, threads()), n, t, f)
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
    // SAFETY: with `zero`, every value is initialised before f sees its block.
    unsafe { split_columns_in(n, t, per_task, true, f) }
}

/// [`split_columns_by`] for kernels that write every value of their blocks themselves: the
/// output is not zeroed first (a pass over megabytes per prompt product, 2 % of a vision tile).
///
/// # Safety
/// `f` must write every value of its block (all t token rows × its columns) through
/// [`ColumnBlock::token_row_ptr`] before returning, must read none of them before writing them,
/// and must not call [`ColumnBlock::token_row`] (a slice over values not yet written).
pub unsafe fn split_columns_writing_all(
    n: usize,
    t: usize,
    per_task: usize,
    f: impl Fn(Range<usize>, &mut ColumnBlock<'_>) + Sync + Send,
) -> Vec<f32> {
    // SAFETY: the caller's contract.
    unsafe { split_columns_in(n, t, per_task, false, f) }
}

/// The two above: with `zero`, each task zeroes its own columns first (as split_rows_in does
/// its rows: `vec![0; n·t]` zeroed megabytes on one thread, 3 % of a vision tile).
///
/// # Safety
/// Without `zero`, as [`split_columns_writing_all`].
unsafe fn split_columns_in(
    n: usize,
    t: usize,
    per_task: usize,
    zero: bool,
    f: impl Fn(Range<usize>, &mut ColumnBlock<'_>) + Sync + Send,
) -> Vec<f32> {
    if n == 0 || t == 0 {
        return vec![0f32; n * t];
    }
    let per_task = per_task.max(1);
    let tasks = n.div_ceil(per_task);
    let mut y_tn: Vec<f32> = Vec::with_capacity(n * t);
    let base = SharedOut(y_tn.as_mut_ptr());
    for_each_task(tasks, |i| {
        let cols = i * per_task..((i + 1) * per_task).min(n);
        if zero {
            for token in 0..t {
                // SAFETY: cols ⊆ 0..n, so row `token`'s columns lie inside the t·n allocation,
                // which outlives the call; each task index runs once, so no other task writes them.
                unsafe { base.ptr().add(token * n + cols.start).write_bytes(0, cols.len()) };
            }
        }
        // Each task index runs once, so no two blocks share a column.
        let mut block = ColumnBlock {
            base: base.ptr(),
            n,
            t,
            cols: cols.clone(),
            _out: std::marker::PhantomData,
        };
        f(cols, &mut block);
    });
    // SAFETY: the tasks' columns cover 0..n and every task ran (a panic would have unwound past
    // this line); each zeroed its columns of all t rows first, or (the caller's contract) f
    // wrote them all, so all t·n values are initialised.
    unsafe { y_tn.set_len(n * t) };
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
    /// Where this block's columns of output row `token` start, and how many there are: for
    /// kernels that write values not yet initialised ([`split_columns_writing_all`]), through
    /// raw stores only.
    ///
    /// # Panics
    /// If `token` ≥ t.
    pub fn token_row_ptr(&mut self, token: usize) -> (*mut f32, usize) {
        assert!(token < self.t);
        // The address stays inside the t·n output (token < t, cols ⊆ 0..n); no access here.
        (
            self.base.wrapping_add(token * self.n + self.cols.start),
            self.cols.len(),
        )
    }

    /// This block's width (its columns).
    pub fn width(&self) -> usize {
        self.cols.len()
    }

    pub fn token_row(&mut self, token: usize) -> &mut [f32] {
        assert!(token < self.t);
        // SAFETY: token < t and cols ⊆ 0..n, so the range lies inside the t·n output; no other
        // block covers these columns, and &mut self keeps this block's slices one at a time.
        unsafe {
            std::slice::from_raw_parts_mut(self.base.add(token * self.n + self.cols.start), self.cols.len())
        }
    }
}
