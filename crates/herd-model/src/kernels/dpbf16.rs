//! Prefill products on AVX-512 BF16 dot products (`vdpbf16ps`: Zen 4 and later, Cooper Lake,
//! Sapphire Rapids): each instruction multiplies 16 lanes of bf16 pairs and adds both products
//! to an f32 lane, 32 multiply-adds where an f32 FMA does 16, on CPUs without AMX tiles.
//!
//! The microkernels keep the AMX tiles' contract (see [`super::amx`]): the same packed
//! activations (tile rows are 16 tokens × one K pair, which is the B operand `vdpbf16ps`
//! takes), weight rows read where they lie, and the same 32 weight rows × 32 tokens block of
//! f32 results, accumulated over one to three activation planes. So [`super::amx::product_rows_on`]
//! drives either, and the two compute the same sums (bf16 products are exact in f32) up to
//! summation order.
//!
//! ```text
//! acc[row][tokens 16h..16h+16] += Σ_pairs (w[row][2p], w[row][2p+1]) · (x[tok][2p], x[tok][2p+1])
//!                                  ── broadcast to 16 lanes ──       ── one 64-byte tile row ──
//! ```
//!
//! Like every `vdpbf16ps`, subnormal bf16 inputs count as zero and subnormal results are
//! flushed: terms below 2⁻¹²⁶, far under what an f32 sum of model activations keeps.

use half::bf16;

/// Whether this CPU has `vdpbf16ps` (AVX-512 BF16) beside AVX-512 F.
pub fn usable() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("avx512f") && std::arch::is_x86_feature_detected!("avx512bf16")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// c [32 weight rows × 32 tokens] += A · (B₀ + … + B_{PLANES-1}) over `kblocks` blocks of 32
/// along K, for the first `16·HALVES` tokens of the block (one half: a block of at most 16
/// tokens, whose other half is padding). A: 32 rows of bf16 at `a`, `a_stride` bytes apart; B
/// plane p: `kblocks` pairs of packed 1 KiB tiles at `b + p·plane_bytes`, as
/// [`super::amx::PackedActivations`] lays them out.
///
/// Registers: 16 accumulators (8 rows × 2 token halves, or 16 rows × 1), the plane's B rows
/// loaded once per K pair for all rows of the group, and one broadcast weight pair.
///
/// # Safety
/// The CPU must have AVX-512 F and BF16 ([`usable`]); `a` must be readable for 32 rows of
/// `a_stride` bytes (each 64·kblocks bytes long), each B plane for 2048·kblocks bytes, and `c`
/// readable and writable for 32×32 f32.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bf16")]
unsafe fn block<const PLANES: usize, const HALVES: usize>(
    a: *const bf16,
    a_stride: usize,
    b: *const bf16,
    plane_bytes: usize,
    kblocks: usize,
    c: *mut f32,
) {
    use std::arch::x86_64::*;
    const TOKENS: usize = 32;
    // Rows per pass over K: 16 accumulators whatever the halves.
    let group_rows = 16 / HALVES;
    let (a, b) = (a.cast::<u8>(), b.cast::<u8>());
    for g0 in (0..32).step_by(group_rows) {
        // SAFETY (whole block): every pointer below stays inside the extents the caller
        // guarantees: rows g0..g0+group_rows < 32 of A, K pairs < 16·kblocks, planes < PLANES,
        // halves < HALVES ≤ 2 and c's 32×32 values.
        unsafe {
            let mut acc = [[_mm512_setzero_ps(); 2]; 16];
            for (r, row) in acc.iter_mut().enumerate().take(group_rows) {
                for (h, v) in row.iter_mut().enumerate().take(HALVES) {
                    *v = _mm512_loadu_ps(c.add((g0 + r) * TOKENS + 16 * h));
                }
            }
            for kb in 0..kblocks {
                for pair in 0..16 {
                    let mut xs = [[_mm512_setzero_si512(); 2]; 3];
                    for (p, plane) in xs.iter_mut().enumerate().take(PLANES) {
                        for (h, v) in plane.iter_mut().enumerate().take(HALVES) {
                            let at = p * plane_bytes + kb * 2048 + h * 1024 + pair * 64;
                            *v = _mm512_loadu_si512(b.add(at).cast());
                        }
                    }
                    for (r, row) in acc.iter_mut().enumerate().take(group_rows) {
                        let at = (g0 + r) * a_stride + kb * 64 + pair * 4;
                        let w = _mm512_set1_epi32(a.add(at).cast::<i32>().read_unaligned());
                        let w: __m512bh = std::mem::transmute(w);
                        for plane in xs.iter().take(PLANES) {
                            for (h, v) in row.iter_mut().enumerate().take(HALVES) {
                                let x: __m512bh = std::mem::transmute(plane[h]);
                                *v = _mm512_dpbf16_ps(*v, x, w);
                            }
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

/// A microkernel with [`super::amx`]'s signature: (A, A stride in bytes, B, plane bytes, K
/// blocks, c).
pub type Microkernel = unsafe fn(*const bf16, usize, *const bf16, usize, usize, *mut f32);

/// The microkernel for `planes` activation planes (1–3) over 32 tokens, or over the first 16
/// when `half`.
pub fn microkernel(planes: usize, half: bool) -> Microkernel {
    macro_rules! pick {
        ($p:literal, $h:literal) => {{
            #[cfg(target_arch = "x86_64")]
            {
                block::<$p, $h> as Microkernel
            }
            #[cfg(not(target_arch = "x86_64"))]
            {
                unsupported as Microkernel
            }
        }};
    }
    match (planes, half) {
        (1, false) => pick!(1, 2),
        (2, false) => pick!(2, 2),
        (_, false) => pick!(3, 2),
        (1, true) => pick!(1, 1),
        (2, true) => pick!(2, 1),
        (_, true) => pick!(3, 1),
    }
}

#[cfg(not(target_arch = "x86_64"))]
unsafe fn unsupported(_: *const bf16, _: usize, _: *const bf16, _: usize, _: usize, _: *mut f32) {
    unreachable!("AVX-512 BF16 is x86-64 only; usable() is false elsewhere")
}
