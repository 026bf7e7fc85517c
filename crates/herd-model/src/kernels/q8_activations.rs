//! Activations quantized to 8-bit blocks for the integer dot products of the block formats, as
//! llama.cpp does: Q8_0 weights meet Q8_0 activations (32 values, one scale), k-quant weights
//! meet Q8_K activations (256 values, one scale, and the sum of every 16 values, which the
//! k-quants' minimums and offsets need).
//!
//! Both follow ggml to the bit — the Q8_0 scale rounded to f16 as `block_q8_0` stores it, the
//! levels computed from max|x| unrounded (x86's 127 / max|x|) — so herd's integer sums are
//! llama.cpp's. (An f32 scale is no better overall: on the tiny Llama 4 fixture it moved a
//! router choice and the worst logit row from 4.6% to 12.8% off the reference.)

/// Rows of activations in 8-bit blocks: value `i` of row `r` is `qs[r·K + i] · scales[(r·K + i)
/// / block]`.
#[derive(Debug, Clone, Default)]
pub struct Q8Activations {
    /// Values per block: 32 (Q8_0) or 256 (Q8_K).
    pub block: usize,
    /// Values per row (a multiple of `block`).
    pub cols: usize,
    pub scales: Vec<f32>,
    pub qs: Vec<i8>,
    /// Σ of each run of 16 quantized values (Q8_K only; |Σ| ≤ 16 · 127 fits an i16).
    pub sums16: Vec<i16>,
}

impl Q8Activations {
    /// Empties the buffer for `len` values in rows of `cols`, blocks of `block` (keeping its
    /// allocations): `qs` zeroed to `len`, scales and sums to be pushed.
    fn reset(&mut self, block: usize, cols: usize, len: usize) {
        debug_assert!(cols.is_multiple_of(block) && len.is_multiple_of(cols.max(1)));
        self.block = block;
        self.cols = cols;
        self.scales.clear();
        self.sums16.clear();
        self.qs.clear();
        self.qs.resize(len, 0);
    }

    /// Rows in the buffer.
    pub fn rows(&self) -> usize {
        self.qs.len().checked_div(self.cols).unwrap_or(0)
    }

    /// Row `r`: (scales, qs, sums16).
    pub fn row(&self, r: usize) -> (&[f32], &[i8], &[i16]) {
        let blocks = self.cols / self.block;
        let sums = if self.sums16.is_empty() {
            &self.sums16[..]
        } else {
            &self.sums16[r * self.cols / 16..(r + 1) * self.cols / 16]
        };
        (
            &self.scales[r * blocks..(r + 1) * blocks],
            &self.qs[r * self.cols..(r + 1) * self.cols],
            sums,
        )
    }
}

/// ggml's `quantize_row_q8_0` per 32 values ([`q8_0_block`]), d kept as its f16 rounding. `x` is
/// whole rows of `cols` values; the buffer is reused.
pub fn quantize_q8_0(x: &[f32], cols: usize, out: &mut Q8Activations) {
    const BLOCK: usize = 32;
    out.reset(BLOCK, cols, x.len());
    for (xb, qb) in x.chunks_exact(BLOCK).zip(out.qs.chunks_exact_mut(BLOCK)) {
        out.scales.push(q8_0_block(xb, qb).to_f32());
    }
}

/// One Q8_0 block as llama.cpp's x86 build makes it (`quantize_row_q8_0` under AVX/AVX2, what
/// every x86 CPU runs, the AVX-512 ones included): levels x · (127 / max|x|) rounded to the
/// nearest, ties to even (`_mm256_round_ps`), and the scale max|x| / 127 as its f16 rounding,
/// returned. ggml's portable reference (`quantize_row_q8_0_ref`: x · (1 / d), ties away from
/// zero) can differ by one level where a product lies within an f32 step of a half. Both the
/// activations of a Q8_0 product and a Q8_0 KV cache's rows are made here, as both are in
/// llama.cpp. `levels` takes one value per value of `x`; a NaN value takes level 0.
pub fn q8_0_block(x: &[f32], levels: &mut [i8]) -> half::f16 {
    debug_assert_eq!(x.len(), levels.len());
    let amax = x.iter().fold(0f32, |m, v| m.max(v.abs()));
    let id = if amax != 0.0 { 127.0 / amax } else { 0.0 };
    for (q, v) in levels.iter_mut().zip(x) {
        // |v · id| ≤ 127 up to rounding; nearest_int clamps what an infinite id would give.
        *q = nearest_int(v * id).clamp(-127, 127) as i8;
    }
    half::f16::from_f32(amax / 127.0)
}

/// ggml's `quantize_row_q8_K_ref`: per 256 values, the value of largest magnitude maps to −127
/// (so the scale carries its sign), q = nearest(x · −127 / max) clamped to 127; plus the sum of
/// every 16 quantized values. Blocks are quantized on the barrier pool when there are many (a
/// prompt's activations), each compiled for the CPU's widest vectors; the result is the same
/// bytes as [`quantize_q8_k_slow`], ggml's loop.
pub fn quantize_q8_k(x: &[f32], cols: usize, out: &mut Q8Activations) {
    quantize_q8_k_on(super::isa::Isa::current(), x, cols, out)
}

/// Blocks per pool task, and the count from which the pool is worth waking (a decode step's
/// vectors, a few thousand values, stay on the calling thread).
const Q8_K_TASK_BLOCKS: usize = 64;

/// [`quantize_q8_k`] compiled for `isa`.
///
/// # Panics
/// If the CPU lacks `isa`.
pub fn quantize_q8_k_on(isa: super::isa::Isa, x: &[f32], cols: usize, out: &mut Q8Activations) {
    assert!(isa.is_supported());
    debug_assert!(cols.is_multiple_of(Q8_K) && x.len().is_multiple_of(cols.max(1)));
    // Every level, scale and sum is written below, so the buffers are only sized, not cleared
    // (zeroing a prompt's levels first was 1.5 % of a prefill step).
    let blocks = x.len() / Q8_K;
    out.block = Q8_K;
    out.cols = cols;
    out.qs.resize(x.len(), 0);
    out.scales.resize(blocks, 0.0);
    out.sums16.resize(blocks * Q8_K / 16, 0);
    let run = |x: &[f32], qs: &mut [i8], scales: &mut [f32], sums: &mut [i16]| match isa {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: the CPU has AVX-512 F/BW/VL (asserted: part of this level).
        super::isa::Isa::Avx512 | super::isa::Isa::Avx512Bf16 | super::isa::Isa::Amx => unsafe {
            x86::q8_k_avx512(x, qs, scales, sums)
        },
        #[cfg(target_arch = "x86_64")]
        // SAFETY: the CPU has AVX2 and FMA (asserted).
        super::isa::Isa::Avx2 => unsafe { x86::q8_k_avx2(x, qs, scales, sums) },
        _ => q8_k_blocks(x, qs, scales, sums),
    };
    if blocks < 2 * Q8_K_TASK_BLOCKS {
        run(x, &mut out.qs, &mut out.scales, &mut out.sums16);
        return;
    }
    let tasks: Vec<std::sync::Mutex<Q8KTask<'_>>> = x
        .chunks(Q8_K_TASK_BLOCKS * Q8_K)
        .zip(out.qs.chunks_mut(Q8_K_TASK_BLOCKS * Q8_K))
        .zip(out.scales.chunks_mut(Q8_K_TASK_BLOCKS))
        .zip(out.sums16.chunks_mut(Q8_K_TASK_BLOCKS * Q8_K / 16))
        .map(|(((x, q), s), m)| std::sync::Mutex::new((x, q, s, m)))
        .collect();
    candle_core::utils::barrier_pool().execute_chunked(tasks.len(), |range| {
        for i in range {
            // Each task's lock is taken once, by the one thread that runs it.
            if let Ok(mut task) = tasks[i].lock() {
                let (x, q, s, m) = &mut *task;
                run(x, q, s, m);
            }
        }
    });
}

/// Values per Q8_K block.
const Q8_K: usize = 256;

/// One pool task's run of blocks: (values, levels, scales, 16-value sums).
type Q8KTask<'a> = (&'a [f32], &'a mut [i8], &'a mut [f32], &'a mut [i16]);

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    /// [`super::q8_k_blocks`] in explicit AVX-512: the compiler's vectorisation of the portable
    /// scan reversed the lanes with two shuffles per 16 values, ~4 cycles a value in all, 9 % of
    /// a Q4_K_M prompt's CPU time. Each operation is the portable code's, in the same order, so
    /// the bytes are the same: `vmaxps(v, m)` is `v > m ? v : m` (NaN keeps m) as the scan's
    /// comparison, and the level's clamp, magic-number rounding and NaN → 0 are the same steps.
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma")]
    pub unsafe fn q8_k_avx512(x: &[f32], qs: &mut [i8], scales: &mut [f32], sums: &mut [i16]) {
        const N: usize = super::Q8_K;
        let blocks = (x.len() / N)
            .min(qs.len() / N)
            .min(scales.len())
            .min(sums.len() / (N / 16));
        for b in 0..blocks {
            let xb = &x[b * N..(b + 1) * N];
            let (mut hi, mut lo) = (_mm512_set1_ps(f32::NEG_INFINITY), _mm512_set1_ps(f32::INFINITY));
            for run in xb.chunks_exact(16) {
                let v = _mm512_loadu_ps(run.as_ptr());
                hi = _mm512_max_ps(v, hi);
                lo = _mm512_min_ps(v, lo);
            }
            let (mut hi_lanes, mut lo_lanes) = ([0f32; 16], [0f32; 16]);
            _mm512_storeu_ps(hi_lanes.as_mut_ptr(), hi);
            _mm512_storeu_ps(lo_lanes.as_mut_ptr(), lo);
            let qb = &mut qs[b * N..(b + 1) * N];
            let sb = &mut sums[b * (N / 16)..(b + 1) * (N / 16)];
            let Some(max) = super::block_max(xb, &hi_lanes, &lo_lanes) else {
                scales[b] = 0.0;
                qb.fill(0);
                sb.fill(0);
                continue;
            };
            let iscale = -127.0 / max;
            let (scale_v, low, high) = (
                _mm512_set1_ps(iscale),
                _mm512_set1_ps(-128.0),
                _mm512_set1_ps(127.0),
            );
            let (magic, mantissa) = (_mm512_set1_ps(12_582_912.0), _mm512_set1_epi32(0x007F_FFFF));
            let (half, top) = (_mm512_set1_epi32(0x0040_0000), _mm512_set1_epi32(127));
            for ((run, q), s) in xb
                .chunks_exact(16)
                .zip(qb.chunks_exact_mut(16))
                .zip(sb.iter_mut())
            {
                let v = _mm512_mul_ps(scale_v, _mm512_loadu_ps(run.as_ptr()));
                let clamped = _mm512_min_ps(_mm512_max_ps(v, low), high);
                let bits = _mm512_castps_si512(_mm512_add_ps(clamped, magic));
                let rounded = _mm512_sub_epi32(_mm512_and_si512(bits, mantissa), half);
                let ordered = _mm512_cmp_ps_mask::<_CMP_ORD_Q>(v, v);
                let level = _mm512_min_epi32(_mm512_maskz_mov_epi32(ordered, rounded), top);
                _mm_storeu_si128(q.as_mut_ptr().cast(), _mm512_cvtepi32_epi8(level));
                *s = _mm512_reduce_add_epi32(level) as i16;
            }
            scales[b] = 1.0 / iscale;
        }
    }

    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn q8_k_avx2(x: &[f32], qs: &mut [i8], scales: &mut [f32], sums: &mut [i16]) {
        super::q8_k_blocks(x, qs, scales, sums)
    }
}

/// Whole Q8_K blocks of `x` into their levels, scales and 16-value sums, in loops the compiler
/// vectorises: the largest magnitude from lane-wise maxima and minima (ggml's scan keeps the
/// first value of that magnitude, whose sign matters only where +m and −m both occur: then the
/// block is searched for the first).
#[inline(always)]
fn q8_k_blocks(x: &[f32], qs: &mut [i8], scales: &mut [f32], sums: &mut [i16]) {
    for (((xb, qb), scale), sb) in x
        .chunks_exact(Q8_K)
        .zip(qs.chunks_exact_mut(Q8_K))
        .zip(scales.iter_mut())
        .zip(sums.chunks_exact_mut(Q8_K / 16))
    {
        let (mut hi, mut lo) = ([f32::NEG_INFINITY; 16], [f32::INFINITY; 16]);
        for run in xb.chunks_exact(16) {
            for i in 0..16 {
                // Comparisons, not f32::max: NaN is skipped as ggml's `>` skips it.
                hi[i] = if run[i] > hi[i] { run[i] } else { hi[i] };
                lo[i] = if run[i] < lo[i] { run[i] } else { lo[i] };
            }
        }
        let Some(max) = block_max(xb, &hi, &lo) else {
            *scale = 0.0;
            qb.fill(0);
            sb.fill(0);
            continue;
        };
        let iscale = -127.0 / max;
        for (q, v) in qb.iter_mut().zip(xb) {
            *q = nearest_int(iscale * v).min(127) as i8;
        }
        *scale = 1.0 / iscale;
        for (s, run) in sb.iter_mut().zip(qb.chunks_exact(16)) {
            *s = run.iter().map(|&q| i16::from(q)).sum::<i16>();
        }
    }
}

/// A block's value of largest magnitude from its lane-wise maxima `hi` and minima `lo`, or
/// `None` where the block quantizes to zeros (all zero, or no number at all).
#[inline(always)]
fn block_max(xb: &[f32], hi: &[f32; 16], lo: &[f32; 16]) -> Option<f32> {
    let hi = hi
        .iter()
        .fold(f32::NEG_INFINITY, |m, &v| if v > m { v } else { m });
    let lo = lo.iter().fold(f32::INFINITY, |m, &v| if v < m { v } else { m });
    let max = if hi > -lo {
        hi
    } else if -lo > hi {
        lo
    } else {
        // Equal magnitudes (or no number at all): ggml's first value of that magnitude.
        let amax = hi.max(-lo);
        xb.iter().copied().find(|v| v.abs() == amax).unwrap_or(0.0)
    };
    (max != 0.0 && !max.is_nan()).then_some(max)
}

/// The slow twin of [`quantize_q8_k`]: ggml's loop as written, one block at a time.
pub fn quantize_q8_k_slow(x: &[f32], cols: usize, out: &mut Q8Activations) {
    const BLOCK: usize = 256;
    out.reset(BLOCK, cols, x.len());
    for (xb, qb) in x.chunks_exact(BLOCK).zip(out.qs.chunks_exact_mut(BLOCK)) {
        let (mut amax, mut max) = (0f32, 0f32);
        for &v in xb {
            if v.abs() > amax {
                amax = v.abs();
                max = v;
            }
        }
        if amax == 0.0 {
            out.scales.push(0.0);
            out.sums16.extend([0; BLOCK / 16]);
            continue;
        }
        let iscale = -127.0 / max;
        for (q, v) in qb.iter_mut().zip(xb) {
            *q = nearest_int(iscale * v).min(127) as i8;
        }
        out.scales.push(1.0 / iscale);
        out.sums16.extend(
            qb.chunks_exact(16)
                .map(|s| s.iter().map(|&q| i16::from(q)).sum::<i16>()),
        );
    }
}

/// Round half to even, as ggml's `nearest_int`: adding 1.5·2²³ leaves the rounded integer in
/// the low mantissa bits (exact for |x| < 2²²). Integer operations the compiler vectorises,
/// where `round_ties_even` is a libm call per value on the baseline x86-64 build (1.6 % of a
/// Q4_K_M decode step). The callers' values lie in [−127, 127]; the clamp only bounds what a
/// block whose largest value is subnormal (an infinite inverse scale) would hand it, and NaN
/// gives 0 as a cast would.
#[inline(always)]
fn nearest_int(x: f32) -> i32 {
    let shifted = x.clamp(-128.0, 127.0) + 12_582_912.0;
    let rounded = (shifted.to_bits() & 0x007F_FFFF) as i32 - 0x0040_0000;
    if x.is_nan() {
        0
    } else {
        rounded
    }
}
