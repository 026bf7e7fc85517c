//! Prefill products of bf16 or f16 weights against exact f32 activations on AVX-512 f32 FMAs,
//! for CPUs without AMX tiles. Exact f32 activations take three bf16 planes on `vdpbf16ps`,
//! three instructions per 32 multiply-adds (five for f16 weights, two planes of their own), where two
//! FMAs do the same 32 with no split at all: on two Zen 5 cores `vdpbf16ps` peaks at ~1 050
//! GFLOP/s (350 of them the product's after three planes), f32 FMAs at ~575.
//!
//! The microkernel keeps [`super::dpbf16`]'s contract — weight rows read where they lie, a
//! block of 32 weight rows × 32 tokens of f32 sums continued from c — so
//! [`super::amx::product_rows_on`] drives it with the same blocking. Only the activations are
//! packed differently ([`super::amx::Split::Wide`]): per block of 32 tokens and K value, the 32
//! tokens' f32 values in a row, two vectors of tokens that each broadcast weight multiplies.
//!
//! ```text
//! acc[row][tokens 16h..16h+16] += (w[row][2p] · x[..][2p] + w[row][2p+1] · x[..][2p+1])
//!                                  ── each weight widened in registers (bf16: the top half
//!                                     of an f32; f16: vcvtph2ps), broadcast to 16 lanes ──
//! ```
//!
//! A pair's two products are summed first (a multiply, then an FMA), then added to the
//! accumulator: chains of K/2 additions, as `vdpbf16ps` makes, where one FMA per K value made
//! chains of K (their rounding moved a tiny model's batched logits 1.05e-5 from the same
//! sequence's alone, past the test's 1e-5), and the adds run on the add units
//! beside the FMAs (~490 against ~505 GFLOP/s). Sums go along K in order, K panel after panel:
//! the f32 product up to summation order, as the reference computes it (bf16 weights widened
//! to f32), with no truncated planes and no flushed subnormals.

use super::amx::{K_BLOCK, TOKENS};
use super::dpbf16::Microkernel;
use super::isa::Isa;

/// f32 values of one packed block of tokens: every K value's 32 tokens.
pub fn block_len(k: usize) -> usize {
    k * TOKENS
}

/// How the weight rows the microkernel reads are stored (2 bytes a value either way).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Weights {
    /// bf16: widened by a shift (the top half of an f32).
    Bf16,
    /// f16: widened by `vcvtph2ps` (F16C). An f16 matrix is two bf16 planes for `vdpbf16ps`,
    /// five passes against exact activations, so it had the gemm crate's f32 panels:
    /// `kernel_speed TOKENS=512 FORMAT=f16` ~153 → ~357 GFLOP/s here (bf16 weights ~490).
    F16,
}

/// The microkernel over 32 tokens, or over the first 16 when `half`, for weight rows stored as
/// `weights`: (A, A stride in bytes, B, unused, K blocks, c), A pointing at the rows (passed
/// as the signature's bf16 pointer whatever they hold), B at f32 values packed by
/// [`pack_block_on`] (passed the same way).
pub fn microkernel(weights: Weights, half: bool) -> Microkernel {
    #[cfg(target_arch = "x86_64")]
    {
        match (weights, half) {
            (Weights::Bf16, true) => x86::block::<false, 1>,
            (Weights::Bf16, false) => x86::block::<false, 2>,
            (Weights::F16, true) => x86::block::<true, 1>,
            (Weights::F16, false) => x86::block::<true, 2>,
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = (weights, half);
        unsupported
    }
}

#[cfg(not(target_arch = "x86_64"))]
unsafe fn unsupported(_: *const half::bf16, _: usize, _: *const bf16, _: usize, _: usize, _: *mut f32) {
    unreachable!("the FMA block products are AVX-512 only; product_rows_on asserts the level")
}

/// Packs one block of up to [`TOKENS`] tokens (`rows`, [tokens, k]) into `out` ([`block_len`]
/// values): x[j][kk] at kk·32 + j, padding tokens zero (a reused buffer holds old values
/// there). AVX-512 transposes 16 × 16 tiles in registers; the scalar loop is its slow twin.
///
/// # Panics
/// If `rows` is not whole rows of k values, holds more than [`TOKENS`] of them, `out` is not
/// the block's length, k is not whole K blocks, or this CPU lacks `isa`.
pub fn pack_block_on(isa: Isa, rows: &[f32], k: usize, out: &mut [f32]) {
    assert!(isa.is_supported());
    assert!(k.is_multiple_of(K_BLOCK) && out.len() == block_len(k));
    assert!(rows.len().is_multiple_of(k.max(1)) && rows.len() <= TOKENS * k);
    #[cfg(target_arch = "x86_64")]
    if isa >= Isa::Avx512 {
        // SAFETY: the CPU has AVX-512 F (every level from Avx512 up includes it, asserted
        // supported); the lengths are asserted above.
        unsafe { x86::pack_block(rows, k, out) };
        return;
    }
    pack_block(rows, k, out);
}

fn pack_block(rows: &[f32], k: usize, out: &mut [f32]) {
    let tokens = rows.len().checked_div(k).unwrap_or(0);
    for j in 0..TOKENS {
        for kk in 0..k {
            out[kk * TOKENS + j] = if j < tokens { rows[j * k + kk] } else { 0.0 };
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    use half::bf16;

    use super::TOKENS;
    use crate::kernels::transpose::x86::transpose16;

    /// c [32 rows × 32 tokens] += A · X over `kblocks` blocks of 32 along K, for the first
    /// `16·HALVES` tokens. A: 32 rows of bf16 (f16 when `F16`) at `a`, `a_stride` bytes apart;
    /// X: f32 at `b`, 32 tokens per K value.
    ///
    /// Registers: 16 accumulators (8 rows × 2 token halves, or 16 rows × 1), the two K values'
    /// token vectors of a pair, and one weight pair as two broadcast f32s: bf16's pair
    /// broadcast once, its even weight shifted up and odd one masked (integer ops, which like
    /// the adds run beside the multiplies and FMAs); f16's each broadcast and converted.
    ///
    /// # Safety
    /// The CPU must have AVX-512 F (and F16C, part of every AVX-512 level here); `a` must be
    /// readable for 32 rows of `a_stride` bytes (each 64·kblocks bytes long), `b` for
    /// 1024·kblocks f32, and `c` readable and writable for 32×32 f32.
    #[target_feature(enable = "avx512f,f16c")]
    pub unsafe fn block<const F16: bool, const HALVES: usize>(
        a: *const bf16,
        a_stride: usize,
        b: *const bf16,
        _: usize,
        kblocks: usize,
        c: *mut f32,
    ) {
        let group_rows = 16 / HALVES;
        let (a, b) = (a.cast::<u8>(), b.cast::<f32>());
        let odd_mask = _mm512_set1_epi32(0xFFFF_0000u32 as i32);
        for g0 in (0..32).step_by(group_rows) {
            // SAFETY (whole group): every pointer stays inside the caller's extents: rows
            // g0 .. g0 + group_rows < 32 of A, K values < 32·kblocks, halves < HALVES ≤ 2 and
            // c's 32×32 values.
            unsafe {
                let mut acc = [[_mm512_setzero_ps(); 2]; 16];
                for (r, row) in acc.iter_mut().enumerate().take(group_rows) {
                    for (h, v) in row.iter_mut().enumerate().take(HALVES) {
                        *v = _mm512_loadu_ps(c.add((g0 + r) * TOKENS + 16 * h));
                    }
                }
                for kb in 0..kblocks {
                    for pair in 0..16 {
                        let kk = kb * 32 + 2 * pair;
                        let mut xs = [[_mm512_setzero_ps(); 2]; 2];
                        for (i, x) in xs.iter_mut().enumerate() {
                            for (h, v) in x.iter_mut().enumerate().take(HALVES) {
                                *v = _mm512_loadu_ps(b.add((kk + i) * TOKENS + 16 * h));
                            }
                        }
                        for (r, row) in acc.iter_mut().enumerate().take(group_rows) {
                            let at = (g0 + r) * a_stride + kb * 64 + pair * 4;
                            let (even, odd) = if F16 {
                                // Each f16 broadcast, then widened (one shuffle and one
                                // conversion each; converting the pair once and broadcasting
                                // each half with two shuffles ran at ~340 GFLOP/s, this ~357).
                                let w0 = a.add(at).cast::<i16>().read_unaligned();
                                let w1 = a.add(at + 2).cast::<i16>().read_unaligned();
                                (
                                    _mm512_cvtph_ps(_mm256_set1_epi16(w0)),
                                    _mm512_cvtph_ps(_mm256_set1_epi16(w1)),
                                )
                            } else {
                                let w = _mm512_set1_epi32(a.add(at).cast::<i32>().read_unaligned());
                                (
                                    _mm512_castsi512_ps(_mm512_slli_epi32::<16>(w)),
                                    _mm512_castsi512_ps(_mm512_and_si512(w, odd_mask)),
                                )
                            };
                            for (h, v) in row.iter_mut().enumerate().take(HALVES) {
                                let pair = _mm512_fmadd_ps(odd, xs[1][h], _mm512_mul_ps(even, xs[0][h]));
                                *v = _mm512_add_ps(*v, pair);
                            }
                        }
                    }
                }
                for (r, row) in acc.iter().enumerate().take(group_rows) {
                    for (h, v) in row.iter().enumerate().take(HALVES) {
                        _mm512_storeu_ps(c.add((g0 + r) * TOKENS + 16 * h), *v);
                    }
                }
            }
        }
    }

    /// [`super::pack_block`], the same values: per half of the tokens and 16 K values, the 16
    /// tokens' runs become 16 vectors, a 16 × 16 transpose turns them into 16 K values' token
    /// vectors, one 64-byte store each. Missing tokens pack as zeros.
    ///
    /// # Safety
    /// The CPU has AVX-512 F; `rows` is whole rows of k values, at most [`TOKENS`] of them; k
    /// is whole K blocks; `out` holds k·[`TOKENS`] values.
    #[target_feature(enable = "avx512f")]
    pub unsafe fn pack_block(rows: &[f32], k: usize, out: &mut [f32]) {
        let tokens = rows.len() / k.max(1);
        debug_assert!(tokens <= TOKENS && out.len() == k * TOKENS && k.is_multiple_of(16));
        for h in 0..TOKENS / 16 {
            for k0 in (0..k).step_by(16) {
                let mut r = [_mm512_setzero_si512(); 16];
                for (j, v) in r.iter_mut().enumerate() {
                    let token = 16 * h + j;
                    if token < tokens {
                        // SAFETY: token < tokens rows of k values, K values k0 .. k0 + 16 ≤ k.
                        *v = unsafe { _mm512_loadu_si512(rows.as_ptr().add(token * k + k0).cast()) };
                    }
                }
                let cols = transpose16(&r);
                for (i, col) in cols.iter().enumerate() {
                    // SAFETY: K value k0 + i < k, tokens 16h .. 16h + 16 ≤ 32 of its run.
                    unsafe {
                        _mm512_storeu_si512(out.as_mut_ptr().add((k0 + i) * TOKENS + 16 * h).cast(), *col)
                    };
                }
            }
        }
    }
}
