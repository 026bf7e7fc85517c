//! How products are split into pool tasks: every row once, in order, the tail in short runs;
//! every task index run exactly once, nested calls included.

use std::sync::atomic::{AtomicUsize, Ordering};

use herd_model::kernels::row_split::{for_each_task, split_rows, tapered_ranges};

#[test]
fn tapered_ranges_cover_every_row_once_with_a_short_tail() {
    for (n, per_task, threads) in [
        (0, 8, 2),
        (1, 8, 2),
        (10, 8, 2),
        (16, 8, 2),
        (1000, 113, 2),
        (202_048, 78, 4),
    ] {
        let ranges = tapered_ranges(n, per_task, (per_task / 4).max(1), threads);
        let mut next = 0;
        for r in &ranges {
            assert_eq!(r.start, next, "{n} {per_task} {threads}");
            assert!(!r.is_empty() && r.len() <= per_task);
            next = r.end;
        }
        assert_eq!(next, n);
        // The last `threads` runs' worth of rows go in quarter runs.
        let tail_rows = (threads * per_task).min(n);
        let tail: usize = ranges
            .iter()
            .rev()
            .take_while(|r| r.len() <= (per_task / 4).max(1))
            .map(|r| r.len())
            .sum();
        assert!(
            tail >= tail_rows,
            "{n} {per_task} {threads}: {tail} < {tail_rows}"
        );
    }
}

#[test]
fn every_task_runs_once_and_nested_calls_run_inline() {
    let counts: Vec<AtomicUsize> = (0..300).map(|_| AtomicUsize::new(0)).collect();
    let inner = AtomicUsize::new(0);
    for_each_task(counts.len(), |i| {
        counts[i].fetch_add(1, Ordering::Relaxed);
        if i % 50 == 0 {
            // A product inside a task (a pool worker or the caller) must not wait on the pool.
            for_each_task(3, |_| {
                inner.fetch_add(1, Ordering::Relaxed);
            });
        }
    });
    assert!(counts.iter().all(|c| c.load(Ordering::Relaxed) == 1));
    assert_eq!(inner.load(Ordering::Relaxed), 6 * 3);
}

#[test]
fn split_rows_writes_each_rows_products_where_they_belong() {
    // y[ti][r] = 1000·r + ti, whatever the runs.
    let (n, t) = (1037, 3);
    let y = split_rows(n, t, 4096, |rows, out| {
        for (j, r) in rows.enumerate() {
            for ti in 0..t {
                out[j * t + ti] = (1000 * r + ti) as f32;
            }
        }
    });
    for ti in 0..t {
        for r in 0..n {
            assert_eq!(y[ti * n + r], (1000 * r + ti) as f32);
        }
    }
}
