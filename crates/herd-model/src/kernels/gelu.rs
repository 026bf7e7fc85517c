//! GELU in its exact form, `0.5·x·(1 + erf(x/√2))` (the vision tower's activation), in plain
//! arithmetic that vectorises: candle calls an erf value by value, 0.3 s of a Scout tile in f32
//! and 0.6 s under `--dtype bf16`. The slow twin is candle's `gelu_erf`.

use super::isa::Isa;

/// Values per task on the barrier pool.
const TASK_VALUES: usize = 1 << 16;

/// GELU of every value, in place, on [`Isa::current`].
pub fn gelu_erf_in_place(values: &mut [f32]) {
    gelu_erf_in_place_on(Isa::current(), values)
}

/// [`gelu_erf_in_place`] on a chosen [`Isa`] (the twin tests force each path).
///
/// # Panics
/// If this CPU lacks `isa`.
pub fn gelu_erf_in_place_on(isa: Isa, values: &mut [f32]) {
    assert!(isa.is_supported());
    let tasks: Vec<std::sync::Mutex<&mut [f32]>> = values
        .chunks_mut(TASK_VALUES)
        .map(std::sync::Mutex::new)
        .collect();
    // herd's task loop, not candle's execute_chunked: called from inside a pool task it runs
    // inline instead of waiting on the pool it is part of.
    crate::kernels::row_split::for_each_task(tasks.len(), |i| {
        if let Ok(mut chunk) = tasks[i].lock() {
            run(isa, &mut chunk);
        }
    });
}

/// A biased product's epilogue: y [rows, n] += bias (each row), then GELU if `gelu`, in one
/// pass on the barrier pool, on [`Isa::current`]. The bias was a serial loop on the calling
/// thread while the pool waited, and the GELU a second pass over values that had left the cache.
///
/// # Panics
/// If y is not whole rows of bias.len() values.
pub fn add_bias_then_gelu(y: &mut [f32], bias: &[f32], gelu: bool) {
    add_bias_then_gelu_on(Isa::current(), y, bias, gelu)
}

/// [`add_bias_then_gelu`] on a chosen [`Isa`]: the same values as adding the bias row by row and
/// then [`gelu_erf_in_place_on`] (the slow twin, in the tests).
///
/// # Panics
/// As [`add_bias_then_gelu`], or if this CPU lacks `isa`.
pub fn add_bias_then_gelu_on(isa: Isa, y: &mut [f32], bias: &[f32], gelu: bool) {
    assert!(isa.is_supported());
    let n = bias.len();
    assert!(
        if n == 0 {
            y.is_empty()
        } else {
            y.len().is_multiple_of(n)
        },
        "{} values are not rows of {n}",
        y.len()
    );
    if y.is_empty() {
        return;
    }
    let rows_per_task = (TASK_VALUES / n).max(1);
    let tasks: Vec<std::sync::Mutex<&mut [f32]>> = y
        .chunks_mut(rows_per_task * n)
        .map(std::sync::Mutex::new)
        .collect();
    crate::kernels::row_split::for_each_task(tasks.len(), |i| {
        let Ok(mut chunk) = tasks[i].lock() else { return };
        for row in chunk.chunks_exact_mut(n) {
            for (v, b) in row.iter_mut().zip(bias) {
                *v += b;
            }
        }
        if gelu {
            run(isa, &mut chunk);
        }
    });
}

fn run(isa: Isa, values: &mut [f32]) {
    match isa {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: the CPU has AVX-512 F (part of these levels, asserted by the caller).
        Isa::Avx512 | Isa::Avx512Bf16 | Isa::Amx => unsafe { x86::run_avx512(values) },
        #[cfg(target_arch = "x86_64")]
        // SAFETY: the CPU has AVX2 and FMA (part of this level).
        Isa::Avx2 => unsafe { x86::run_avx2(values) },
        _ => run_portable(values),
    }
}

#[inline(always)]
fn run_portable(values: &mut [f32]) {
    for x in values.iter_mut() {
        *x = gelu_erf(*x);
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    // The plain loop compiled for wider registers.

    #[target_feature(enable = "avx512f,avx2,fma")]
    pub unsafe fn run_avx512(values: &mut [f32]) {
        super::run_portable(values)
    }

    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn run_avx2(values: &mut [f32]) {
        super::run_portable(values)
    }
}

/// `0.5·x·(1 + erf(x/√2))`.
#[inline(always)]
pub fn gelu_erf(x: f32) -> f32 {
    0.5 * x * (1.0 + erf(x * std::f32::consts::FRAC_1_SQRT_2))
}

/// erf by Abramowitz & Stegun 7.1.26 (absolute error under 1.5e-7, about an f32 ulp of 1):
/// `1 − (a₁t + … + a₅t⁵)·e^(−x²)` with `t = 1/(1 + p|x|)`, odd in x. Selects, no branches, so a
/// run of them vectorises; the exponential is the softmax's ([`super::decode_attention::exp`]),
/// whose argument here is never positive. NaN stays NaN.
#[inline(always)]
pub fn erf(x: f32) -> f32 {
    const P: f32 = 0.327_591_1;
    const A1: f32 = 0.254_829_6;
    const A2: f32 = -0.284_496_74;
    const A3: f32 = 1.421_413_8;
    const A4: f32 = -1.453_152_1;
    const A5: f32 = 1.061_405_4;
    let a = x.abs();
    let t = 1.0 / (1.0 + P * a);
    let poly = ((((A5 * t + A4) * t + A3) * t + A2) * t + A1) * t;
    let y = 1.0 - poly * super::decode_attention::exp(-(a * a));
    if x < 0.0 {
        -y
    } else {
        y
    }
}
