//! `y = g W` with f32 g [T, N] and a weight W [N, K] stored as nn.Linear stores it (bf16, f16
//! or f32): the product through W rather than its transpose — what the backward pass of
//! `x Wᵀ` needs (`∂L/∂x = ∂L/∂y · W`). The weight stays in its stored precision: each task
//! widens a [`ROW_CHUNK`] × [`COLS_PER_TASK`] block at a time into a small f32 panel and hands
//! it to the `gemm` crate, accumulating over the row chunks, so no f32 copy of W is ever made
//! (for the LM head of a 202k vocabulary that copy is 1.6 GB, and allocating it every step
//! costs more in page faults than the product).
//!
//! Each task owns a block of output columns; chunk sizes are fixed, so the summation order —
//! and the result — do not depend on the thread count.

use super::half_matmul::HalfElement;
use super::row_split::split_rows_by;

/// Output columns per task (the widened panel's width).
pub const COLS_PER_TASK: usize = 128;
/// Weight rows widened per panel (the depth of one accumulating gemm call).
pub const ROW_CHUNK: usize = 256;

/// g: [t, n] f32, w: [n, k] → [t, k] f32.
///
/// # Panics
/// If the lengths disagree with the shape.
pub fn matmul_n<W: HalfElement>(g: &[f32], t: usize, w: &[W], n: usize, k: usize) -> Vec<f32> {
    assert_eq!(g.len(), t * n);
    assert_eq!(w.len(), n * k);
    // "Rows" of the split are output columns: task i writes columns i·C .. as [cols, t].
    split_rows_by(k, t, COLS_PER_TASK, |cols, out| {
        let width = cols.len();
        let mut panel = vec![0f32; ROW_CHUNK.min(n.max(1)) * width];
        let mut first = true;
        let mut o0 = 0;
        while o0 < n {
            let rows = ROW_CHUNK.min(n - o0);
            for r in 0..rows {
                let src = &w[(o0 + r) * k + cols.start..(o0 + r) * k + cols.end];
                W::widen(src, &mut panel[r * width..(r + 1) * width]);
            }
            // SAFETY: out is [width, t] (element (ti, j) at j·t + ti: row stride 1, column
            // stride t); the left operand is g's columns o0 .. o0+rows, element (ti, r) at
            // ti·n + o0 + r (row stride n, column stride 1), inside g; the right operand is the
            // panel [rows, width] row-major. Extents checked by the asserts and the loop bounds.
            unsafe {
                gemm::gemm(
                    t,
                    width,
                    rows,
                    out.as_mut_ptr(),
                    t as isize,
                    1,
                    !first,
                    g.as_ptr().add(o0),
                    1,
                    n as isize,
                    panel.as_ptr(),
                    1,
                    width as isize,
                    1.0,
                    1.0,
                    false,
                    false,
                    false,
                    gemm::Parallelism::None,
                );
            }
            first = false;
            o0 += rows;
        }
        if n == 0 {
            out.iter_mut().for_each(|v| *v = 0.0);
        }
    })
}

/// The slow twin: widen every element, one f32 multiply-add at a time.
pub fn matmul_n_slow<W: HalfElement>(g: &[f32], t: usize, w: &[W], n: usize, k: usize) -> Vec<f32> {
    let mut y = vec![0f32; t * k];
    for ti in 0..t {
        for o in 0..n {
            let gv = g[ti * n + o];
            for i in 0..k {
                y[ti * k + i] += gv * w[o * k + i].to_f32_scalar();
            }
        }
    }
    y
}
