//! `y = x Wᵀ` for a block-quantized weight W [N, K] (Q8_0, Q4_K, Q6_K) and f32 activations x
//! [T, K]: the activations are quantized once per call to the blocks the format's dot product
//! takes (Q8_0 or Q8_K), then each thread streams its run of weight rows once, dotting every row
//! with all T activation rows while it is in L1.

use std::cell::RefCell;

use half::bf16;

use super::amx;
use super::dequantize;
use super::isa::Isa;
use super::q8_activations::{quantize_q8_0, quantize_q8_k, Q8Activations};
use super::quant_dot::{self, dot_rows, uses_q8_k};
use super::row_split::split_rows;
use crate::weights::QuantType;

thread_local! {
    /// The calling thread's quantized activations, reused from call to call.
    static SCRATCH: RefCell<Q8Activations> = RefCell::new(Q8Activations::default());
    /// The thread's bf16 panel of dequantized weight rows (tile path), reused likewise.
    static PANEL: RefCell<Vec<bf16>> = const { RefCell::new(Vec::new()) };
}

/// Runs `f` on `len` values of this thread's panel buffer (a fresh one if the thread is already
/// inside a product: a pool worker waiting on a nested call).
fn with_panel<R>(len: usize, f: impl FnOnce(&mut [bf16]) -> R) -> R {
    PANEL.with(|cell| match cell.try_borrow_mut() {
        Ok(mut panel) => {
            if panel.len() < len {
                panel.resize(len, bf16::ZERO);
            }
            f(&mut panel[..len])
        }
        Err(_) => f(&mut vec![bf16::ZERO; len]),
    })
}

/// From this many activation rows (prefill) a product dequantizes panels of weight rows to f32
/// and runs the f32 gemm kernel on them: the dequantization is paid once per weight row and
/// shared by all T rows, where the integer dots would unpack every block T times. The f32
/// activations are not rounded to 8 bits on this path, so prefill is closer to the reference
/// than llama.cpp's. (Q4_K and Q6_K on AVX-512 VNNI without AMX take [`super::quant_gemm`]
/// instead, on 8-bit activations as llama.cpp's: it is ~1.5× faster there.)
pub const PANEL_MIN_ROWS: usize = 16;

/// On AMX tiles the panel path wins from fewer rows: the tile product itself is almost free,
/// leaving the one dequantization of the panel against T integer dots per block.
pub const AMX_PANEL_MIN_ROWS: usize = 8;

/// From how many activation rows a product on `isa` takes the panel path.
pub fn panel_min_rows(isa: Isa) -> usize {
    if isa == Isa::Amx {
        AMX_PANEL_MIN_ROWS
    } else {
        PANEL_MIN_ROWS
    }
}

/// Weight rows dequantized per task on the panel path.
const PANEL_ROWS: usize = 64;

/// x [t, k] f32 times a block-quantized matrix, through f32 panels (any format).
pub fn matmul_t_panels(w: &crate::weights::QuantTensor, x: &[f32], t: usize) -> Vec<f32> {
    matmul_t_panels_on(Isa::current(), w, x, t)
}

/// [`matmul_t_panels`] on a chosen [`Isa`]: on [`Isa::Amx`] the panels are rounded to bf16 and
/// multiplied on tiles with the activations rounded to bf16 too (see [`super::amx`] for what
/// that costs in precision), and on [`Isa::Avx512Bf16`] the same operands go to `vdpbf16ps`
/// ([`super::dpbf16`]); elsewhere f32 panels go to the gemm kernel.
///
/// # Panics
/// If x is not t rows of the matrix's columns, or the CPU lacks `isa`.
pub fn matmul_t_panels_on(isa: Isa, w: &crate::weights::QuantTensor, x: &[f32], t: usize) -> Vec<f32> {
    let (n, k) = (w.rows(), w.cols());
    assert!(isa.is_supported());
    if isa >= Isa::Avx512Bf16 && k.is_multiple_of(amx::K_BLOCK) {
        let row_bytes = w.bytes().len() / n.max(1);
        // SAFETY (split_columns_writing_all): the task's only write to `out` is
        // product_rows_on, which writes every value of its block and reads none.
        return amx::PackedActivations::with_packed(x, t, k, amx::Split::Rounded, |acts| unsafe {
            super::row_split::split_columns_writing_all(n, t, amx::panel_rows_per_task(n, k), |rows, out| {
                with_panel(rows.len() * k, |panel| {
                    let bytes = &w.bytes()[rows.start * row_bytes..rows.end * row_bytes];
                    dequantize::dequantize_rows_on(isa, w.quant_type(), bytes, panel);
                    amx::product_rows_on(isa, &[panel], rows.len(), acts, out)
                })
            })
        });
    }
    let row_bytes = w.bytes().len() / n.max(1);
    super::row_split::split_rows_by(n, t, PANEL_ROWS, |rows, out| {
        let mut wide = vec![0f32; rows.len() * k];
        let bytes = &w.bytes()[rows.start * row_bytes..rows.end * row_bytes];
        dequantize::dequantize_rows_on(isa, w.quant_type(), bytes, &mut wide);
        super::half_matmul::gemm_f32_panel(x, t, &wide, rows.len(), k, out)
    })
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
