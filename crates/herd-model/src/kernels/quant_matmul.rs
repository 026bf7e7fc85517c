//! `y = x Wᵀ` for a block-quantized weight W [N, K] (Q8_0, Q4_K, Q6_K) and f32 activations x
//! [T, K]: the activations are quantized once per call to the blocks the format's dot product
//! takes (Q8_0 or Q8_K), then each thread streams its run of weight rows once, dotting every row
//! with all T activation rows while it is in L1.

use std::cell::RefCell;

use super::isa::Isa;
use super::q8_activations::{quantize_q8_0, quantize_q8_k, Q8Activations};
use super::quant_dot::{self, dot_rows, uses_q8_k};
use super::row_split::split_rows;
use crate::weights::QuantType;

thread_local! {
    /// The calling thread's quantized activations, reused from call to call.
    static SCRATCH: RefCell<Q8Activations> = RefCell::new(Q8Activations::default());
}

/// x [t, k] f32, w: n rows of k values in `ty` blocks → [t, n] f32, on the current [`Isa`].
pub fn matmul_t(ty: QuantType, w: &[u8], n: usize, k: usize, x: &[f32], t: usize) -> Vec<f32> {
    matmul_t_on(Isa::current(), ty, w, n, k, x, t)
}

/// [`matmul_t`] on a chosen [`Isa`].
///
/// # Panics
/// If `ty` has no herd kernel ([`quant_dot::supports`]), the lengths disagree with the shape, or
/// the CPU lacks `isa`.
pub fn matmul_t_on(isa: Isa, ty: QuantType, w: &[u8], n: usize, k: usize, x: &[f32], t: usize) -> Vec<f32> {
    assert!(quant_dot::supports(ty) && k.is_multiple_of(ty.block_len()));
    assert_eq!(x.len(), t * k);
    let row_bytes = k / ty.block_len() * ty.block_bytes();
    assert_eq!(w.len(), n * row_bytes);
    let run = |acts: &Q8Activations| {
        split_rows(n, t, row_bytes, |rows, out| {
            dot_rows(
                isa,
                ty,
                &w[rows.start * row_bytes..rows.end * row_bytes],
                acts,
                out,
            )
        })
    };
    let quantize = |acts: &mut Q8Activations| {
        if uses_q8_k(ty) {
            quantize_q8_k(x, k, acts)
        } else {
            quantize_q8_0(x, k, acts)
        }
    };
    SCRATCH.with(|cell| match cell.try_borrow_mut() {
        Ok(mut acts) => {
            quantize(&mut acts);
            run(&acts)
        }
        // Re-entered on this thread (a pool worker running a second product while it waits):
        // a buffer of its own.
        Err(_) => {
            let mut acts = Q8Activations::default();
            quantize(&mut acts);
            run(&acts)
        }
    })
}

/// The slow twin: the same quantized activations, both sides dequantized to f32 and dotted
/// one pair at a time ([`quant_dot::dot_rows_slow`]).
pub fn matmul_t_slow(ty: QuantType, w: &[u8], n: usize, k: usize, x: &[f32], t: usize) -> Vec<f32> {
    let mut acts = Q8Activations::default();
    if uses_q8_k(ty) {
        quantize_q8_k(x, k, &mut acts)
    } else {
        quantize_q8_0(x, k, &mut acts)
    }
    let mut y_nt = vec![0f32; n * t];
    quant_dot::dot_rows_slow(ty, w, &acts, &mut y_nt);
    super::transpose::transpose(&y_nt, n, t)
}
