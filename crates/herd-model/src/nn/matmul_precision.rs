//! How precisely f32 activations meet weights stored as narrow floats (bf16, f16, fp8) — the
//! choice PyTorch names `torch.set_float32_matmul_precision`, with the same three levels:
//!
//! ```text
//! highest   x exactly (up to three bf16 planes in the block kernels)   the f32 product
//! high      x rounded to hi + lo, two bf16 planes (16 significant bits) relative error ≤ 2⁻¹⁶
//! medium    x rounded to bf16 (8 significant bits)                      relative error ≤ 2⁻⁸
//! ```
//!
//! `medium` is what llama.cpp computes against bf16 weights (its `vec_dot_type` for BF16 is
//! BF16: activations are rounded before the dot products, accumulation stays f32), and it lets
//! a prefill product run one `vdpbf16ps` pass instead of three. Only the products' inputs are
//! rounded: norms, attention, the residual stream and everything else stay in f32, and f32 or
//! block-quantized weights are unaffected (quantized formats take their own activation format).
//!
//! The level is a scope, as `torch.autocast` is: [`scoped`] sets it for the calling thread while
//! a model's forward pass runs, so two models in one process (or two tests) never see each
//! other's setting, and code outside a forward pass computes at `highest`.

use std::cell::Cell;

/// How far activations are rounded before a product with a narrow-float weight.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum MatmulPrecision {
    /// The f32 product: the activations as they are.
    #[default]
    Highest,
    /// Activations rounded to the sum of two bf16 values (truncated high part, rounded low part).
    High,
    /// Activations rounded to the nearest bf16, as llama.cpp rounds them for bf16 weights.
    Medium,
}

impl MatmulPrecision {
    /// `highest`, `high` or `medium` (PyTorch's names).
    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "highest" => Some(Self::Highest),
            "high" => Some(Self::High),
            "medium" => Some(Self::Medium),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Highest => "highest",
            Self::High => "high",
            Self::Medium => "medium",
        }
    }

    /// Rounds activations in place to what this level keeps of them.
    pub fn round(self, x: &mut [f32]) {
        match self {
            Self::Highest => {}
            Self::High => x.iter_mut().for_each(|v| *v = two_planes(*v)),
            Self::Medium => x.iter_mut().for_each(|v| *v = nearest_bf16(*v)),
        }
    }
}

impl std::fmt::Display for MatmulPrecision {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// `hi + round(x − hi)` with `hi` the bf16 truncation of x: the planes a block kernel splits
/// the result into are exactly these two (the low part is below one unit of `hi`'s last place,
/// or equal to it, which makes the sum a single bf16).
fn two_planes(x: f32) -> f32 {
    if !x.is_finite() {
        return x;
    }
    let hi = f32::from_bits(x.to_bits() & 0xffff_0000);
    hi + nearest_bf16(x - hi)
}

/// `bf16::from_f32(x).to_f32()` (round to nearest, ties to even; NaN stays NaN) as bit
/// arithmetic and one select, which the compiler vectorises over a slice: a prefill rounds
/// millions of activations per layer.
#[inline]
fn nearest_bf16(x: f32) -> f32 {
    let bits = x.to_bits();
    let rounded = bits.wrapping_add(0x7fff + ((bits >> 16) & 1)) & 0xffff_0000;
    if x.is_nan() {
        x
    } else {
        f32::from_bits(rounded)
    }
}

thread_local! {
    static CURRENT: Cell<MatmulPrecision> = const { Cell::new(MatmulPrecision::Highest) };
}

/// The level products on this thread run at now.
pub fn current() -> MatmulPrecision {
    CURRENT.with(Cell::get)
}

/// Runs `f` with products on this thread at `precision`, restoring the previous level after
/// (also when `f` panics).
pub fn scoped<R>(precision: MatmulPrecision, f: impl FnOnce() -> R) -> R {
    struct Restore(MatmulPrecision);
    impl Drop for Restore {
        fn drop(&mut self) {
            CURRENT.with(|c| c.set(self.0));
        }
    }
    let _restore = Restore(CURRENT.with(|c| c.replace(precision)));
    f()
}
