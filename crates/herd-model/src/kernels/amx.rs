//! Prefill products on Intel AMX tiles (Sapphire Rapids and later): `tdpbf16ps` multiplies a
//! 16×32 bf16 tile by a 32×16 one into a 16×16 f32 tile, 8192 multiply-adds an instruction,
//! which is ~5× what the f32 FMA units reach on the same core.
//!
//! ```text
//! y[n, t] = Σ_k W[n, k] · x[t, k]       W: tile rows straight from the stored weights (A)
//!                                        x: packed once per call into tile pairs (B)
//! ```
//!
//! Exactness. The f32 activations are split into bf16 planes `x = hi + mid + lo` (each the
//! truncation of what the planes before it left), and so are f16 and f32 weights (bf16 weights
//! are one plane, read where they lie). Each weight plane i meets the activation planes j with
//! i + j ≤ 2 — the dropped terms are below 2⁻²⁴ of the product — so the result is the f32
//! product up to summation order. The split takes only the planes the data needs (one for
//! activations that are bf16 already, as under `--dtype bf16`), and a weight plane's passes
//! run together, so a matrix computes bit for bit the same whichever dtype holds its values.
//! Block-quantized weights are dequantized and rounded to bf16, against one rounded plane of
//! activations (relative error ≤ 2⁻⁸ each side, finer than the 8-bit activations llama.cpp and
//! herd's decode use).
//!
//! The operating system must grant a process the tile state (Linux `arch_prctl`), so
//! [`usable`] asks once and the kernels run only where it said yes.
//!
//! The packing and the blocking here also drive the AVX-512 BF16 microkernels of
//! [`super::dpbf16`] on CPUs without tiles ([`product_rows_on`] with [`Isa::Avx512Bf16`]).

use std::sync::Mutex;

use half::{bf16, f16};

use super::fma_blocks::Weights;
use super::isa::Isa;
use super::row_split::ColumnBlock;

/// Multiply-adds along K per tile (32 bf16 = one 64-byte tile row).
pub const K_BLOCK: usize = 32;
/// Weight rows per tile pair (A), and tokens per tile pair (B).
const ROWS: usize = 32;
pub(crate) const TOKENS: usize = 32;
/// bf16 values in one packed B tile: 16 rows of 16 pairs (1 KiB).
const TILE: usize = 512;

/// Whether this CPU has AMX-BF16 tiles and the OS lets this process use them (asked once; the
/// grant is process-wide).
pub fn usable() -> bool {
    static USABLE: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *USABLE.get_or_init(detect)
}

#[cfg(all(target_arch = "x86_64", target_os = "linux"))]
fn detect() -> bool {
    // CPUID.(EAX=7,ECX=0):EDX bit 22 AMX-BF16, bit 24 AMX-TILE.
    let edx = std::arch::x86_64::__cpuid_count(7, 0).edx;
    if edx & (1 << 22) == 0 || edx & (1 << 24) == 0 {
        return false;
    }
    const ARCH_REQ_XCOMP_PERM: libc::c_long = 0x1023;
    const XFEATURE_XTILEDATA: libc::c_long = 18;
    // SAFETY: arch_prctl with these arguments only asks for a permission; failure is returned.
    unsafe { libc::syscall(libc::SYS_arch_prctl, ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA) == 0 }
}

#[cfg(not(all(target_arch = "x86_64", target_os = "linux")))]
fn detect() -> bool {
    false
}

/// Activations x [t, k] split into bf16 planes and packed as tile-pair B operands:
/// `planes × token blocks × k blocks × 2 tiles`, tile h of a (token block, k block) holding
/// `tile[r][2j + i] = x[32·block + 16h + j][32·kb + 2r + i]` (pairs along K, as `tdpbf16ps`
/// takes them). Tokens past t are zero. [`Split::Wide`] packs no planes but the f32 values
/// themselves, for the FMA microkernels ([`super::fma_blocks`]).
#[derive(Debug, Default)]
pub struct PackedActivations {
    t: usize,
    k: usize,
    planes: usize,
    data: Vec<bf16>,
    /// [`Split::Wide`]: `token blocks × k × 32` f32, x[32·block + j][kk] at (block·k + kk)·32 + j.
    wide: Vec<f32>,
}

/// How the f32 activations become bf16 planes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Split {
    /// As many truncated planes as the values need (at most 3) to be represented exactly.
    Exact,
    /// One plane, each value rounded to the nearest bf16.
    Rounded,
    /// No planes: the f32 values as they are, for f32 FMAs against bf16 or f16 weight rows
    /// ([`super::fma_blocks`]; exact activations on AVX-512 without tiles).
    Wide,
}

impl PackedActivations {
    /// Packs x [t, k] (k a multiple of [`K_BLOCK`]).
    ///
    /// # Panics
    /// If x is not t·k values or k is not a multiple of [`K_BLOCK`].
    pub fn pack(x: &[f32], t: usize, k: usize, split: Split) -> Self {
        Self::pack_into(Vec::new(), x, t, k, split)
    }

    /// [`PackedActivations::pack`] into a buffer of an earlier call (no allocation once it is
    /// large enough; only the padding tokens are cleared).
    pub fn pack_into(data: Vec<bf16>, x: &[f32], t: usize, k: usize, split: Split) -> Self {
        Self::pack_into_on(Isa::current(), data, x, t, k, split)
    }

    /// [`PackedActivations::pack`] with the packer built for `isa` (the twin tests force each).
    ///
    /// # Panics
    /// As [`PackedActivations::pack`], or if this CPU lacks `isa`.
    pub fn pack_on(isa: Isa, x: &[f32], t: usize, k: usize, split: Split) -> Self {
        Self::pack_into_on(isa, Vec::new(), x, t, k, split)
    }

    /// [`PackedActivations::pack_into`] with the packer built for `isa`.
    ///
    /// # Panics
    /// As [`PackedActivations::pack`], or if this CPU lacks `isa`.
    pub fn pack_into_on(isa: Isa, data: Vec<bf16>, x: &[f32], t: usize, k: usize, split: Split) -> Self {
        Self::pack_buffers_on(isa, data, Vec::new(), x, t, k, split)
    }

    /// [`PackedActivations::pack_into_on`] with a buffer for each layout.
    fn pack_buffers_on(
        isa: Isa,
        mut data: Vec<bf16>,
        wide: Vec<f32>,
        x: &[f32],
        t: usize,
        k: usize,
        split: Split,
    ) -> Self {
        assert!(isa.is_supported());
        assert_eq!(x.len(), t * k);
        assert!(k.is_multiple_of(K_BLOCK));
        let planes = match split {
            Split::Rounded => 1,
            Split::Exact => planes_needed(x),
            Split::Wide => {
                data.clear();
                let wide = pack_wide(isa, wide, x, t, k);
                return PackedActivations {
                    t,
                    k,
                    planes: 0,
                    data,
                    wide,
                };
            }
        };
        let blocks = t.div_ceil(TOKENS);
        let block_len = k * TOKENS;
        let plane_len = blocks * block_len;
        data.resize(planes * plane_len, bf16::ZERO);
        // A block of TOKENS tokens fills one run of block_len in every plane, so the blocks are
        // packed in parallel (serial packing was 7 % of a pp512 step, with the other threads
        // waiting on it).
        {
            let mut runs: Vec<Vec<&mut [bf16]>> = (0..blocks).map(|_| Vec::with_capacity(planes)).collect();
            for plane in data.chunks_exact_mut(plane_len.max(1)) {
                for (run, block_runs) in plane.chunks_exact_mut(block_len.max(1)).zip(runs.iter_mut()) {
                    block_runs.push(run);
                }
            }
            let tasks: Vec<Mutex<Vec<&mut [bf16]>>> = runs.into_iter().map(Mutex::new).collect();
            candle_core::utils::barrier_pool().execute_chunked(blocks, |range| {
                for b in range {
                    // Each task's lock is taken once, by the one thread that runs it.
                    let Ok(mut out) = tasks[b].lock() else { continue };
                    let rows = &x[b * TOKENS * k..((b + 1) * TOKENS).min(t) * k];
                    pack_block_on(isa, rows, k, split, &mut out);
                }
            });
        }
        PackedActivations {
            t,
            k,
            planes,
            data,
            wide: Vec::new(),
        }
    }

    /// The buffer, for the next [`PackedActivations::pack_into`].
    pub fn into_buffer(self) -> Vec<bf16> {
        self.data
    }

    /// Runs `f` on x packed into this thread's buffers, kept from call to call.
    pub fn with_packed<R>(x: &[f32], t: usize, k: usize, split: Split, f: impl FnOnce(&Self) -> R) -> R {
        thread_local! {
            static BUFFER: std::cell::Cell<Vec<bf16>> = const { std::cell::Cell::new(Vec::new()) };
            static WIDE: std::cell::Cell<Vec<f32>> = const { std::cell::Cell::new(Vec::new()) };
        }
        // A nested call on this thread finds the cells empty and packs into fresh buffers.
        let acts = Self::pack_buffers_on(Isa::current(), BUFFER.take(), WIDE.take(), x, t, k, split);
        let result = f(&acts);
        BUFFER.set(acts.data);
        WIDE.set(acts.wide);
        result
    }

    /// bf16 planes packed: 0 for [`Split::Wide`].
    pub fn planes(&self) -> usize {
        self.planes
    }

    /// Whether the values are packed as f32 ([`Split::Wide`]).
    pub fn is_wide(&self) -> bool {
        self.planes == 0
    }

    /// The f32 values of [`Split::Wide`] (empty otherwise), as [`PackedActivations`] describes.
    pub fn wide(&self) -> &[f32] {
        &self.wide
    }

    /// Tokens packed (t).
    pub fn tokens(&self) -> usize {
        self.t
    }

    fn plane_len(&self) -> usize {
        self.t.div_ceil(TOKENS) * self.k * TOKENS
    }
}

/// x [t, k] into `wide` as [`Split::Wide`] lays it out ([`super::fma_blocks::pack_block_on`]
/// per block of 32 tokens, the blocks in parallel as the planes are).
fn pack_wide(isa: Isa, mut wide: Vec<f32>, x: &[f32], t: usize, k: usize) -> Vec<f32> {
    let block_len = super::fma_blocks::block_len(k);
    wide.resize(t.div_ceil(TOKENS) * block_len, 0.0);
    if block_len == 0 {
        return wide;
    }
    let tasks: Vec<Mutex<&mut [f32]>> = wide.chunks_exact_mut(block_len).map(Mutex::new).collect();
    candle_core::utils::barrier_pool().execute_chunked(tasks.len(), |range| {
        for b in range {
            // Each task's lock is taken once, by the one thread that runs it.
            let Ok(mut out) = tasks[b].lock() else { continue };
            let rows = &x[b * TOKENS * k..((b + 1) * TOKENS).min(t) * k];
            super::fma_blocks::pack_block_on(isa, rows, k, &mut out);
        }
    });
    drop(tasks);
    wide
}

/// [`pack_block`] built for `isa`: sixteen tokens at a time through registers on AVX-512, the
/// scalar packer elsewhere (its slow twin, built for the baseline x86-64, stored a pair at a
/// time: 5 % of a Q8_0 prompt's CPU time).
fn pack_block_on(isa: Isa, rows: &[f32], k: usize, split: Split, out: &mut [&mut [bf16]]) {
    #[cfg(target_arch = "x86_64")]
    if isa >= Isa::Avx512 && out.len() <= x86::MAX_PLANES && out.iter().all(|p| p.len() >= k * TOKENS) {
        // SAFETY: the CPU has AVX-512 F (the caller asserted `isa` is supported; every level
        // from Avx512 up includes it); each plane holds the block's k·TOKENS values (checked
        // above) and `rows` is whole rows of k values (the kernel reads no further).
        unsafe { x86::pack_block(rows, k, split, out) };
        return;
    }
    let _ = isa;
    pack_block(rows, k, split, out)
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    use half::bf16;

    use super::{Split, K_BLOCK, ROWS, TILE, TOKENS};
    use crate::kernels::row_split::ColumnBlock;
    use crate::kernels::transpose::x86::transpose16;

    /// The most planes a split makes (an f32's 24 significant bits in truncated bf16s).
    pub const MAX_PLANES: usize = 3;

    /// [`super::pack_block`], the same bits: per K block and half of the tokens, each token's 16
    /// pairs become one vector (the rounding and plane splitting are the scalar packer's integer
    /// steps, lane-wise), and a 16 × 16 transpose of 32-bit words turns the 16 tokens' vectors
    /// into the tile's 16 rows, one 64-byte store each. Missing tokens pack as zeros.
    ///
    /// # Safety
    /// The CPU has AVX-512 F; `out` has at most [`MAX_PLANES`] planes of at least k·TOKENS
    /// values; k is whole K blocks.
    #[target_feature(enable = "avx512f")]
    pub unsafe fn pack_block(rows: &[f32], k: usize, split: Split, out: &mut [&mut [bf16]]) {
        // SAFETY: the caller's contract, passed on.
        unsafe {
            match out.len() {
                1 => pack_planes::<1>(rows, k, split, out),
                2 => pack_planes::<2>(rows, k, split, out),
                _ => pack_planes::<MAX_PLANES>(rows, k, split, out),
            }
        }
    }

    /// [`pack_block`] into `PLANES` planes: the vectors in flight are only those planes' (a
    /// fixed three, zeroed for every 16 tokens, were a 3 KiB memset per 2 KiB packed).
    ///
    /// # Safety
    /// As [`pack_block`], with out.len() == PLANES.
    #[inline]
    #[target_feature(enable = "avx512f")]
    unsafe fn pack_planes<const PLANES: usize>(
        rows: &[f32],
        k: usize,
        split: Split,
        out: &mut [&mut [bf16]],
    ) {
        let tokens = (rows.len() / k.max(1)).min(TOKENS);
        let planes = out.len().min(PLANES);
        for kb in 0..k / K_BLOCK {
            for half in 0..TOKENS / 16 {
                let mut pairs = [[_mm512_setzero_si512(); 16]; PLANES];
                for j in 0..16.min(tokens.saturating_sub(16 * half)) {
                    let src = rows[(16 * half + j) * k + kb * K_BLOCK..].as_ptr();
                    let lo = _mm512_castps_si512(_mm512_loadu_ps(src));
                    let hi = _mm512_castps_si512(_mm512_loadu_ps(src.add(16)));
                    match split {
                        Split::Rounded => pairs[0][j] = join(round(lo), round(hi)),
                        // (Wide values are packed by fma_blocks, never here.)
                        Split::Exact | Split::Wide => {
                            let (mut rest_lo, mut rest_hi) = (lo, hi);
                            for plane in pairs.iter_mut().take(planes) {
                                let part_lo = next_plane(&mut rest_lo);
                                let part_hi = next_plane(&mut rest_hi);
                                plane[j] = join(part_lo, part_hi);
                            }
                        }
                    }
                }
                let base = kb * 2 * TILE + half * TILE;
                for (plane, pairs) in out.iter_mut().zip(&pairs) {
                    let tile = &mut plane[base..base + TILE];
                    for (r, row) in transpose16(pairs).iter().enumerate() {
                        _mm512_storeu_si512(tile[32 * r..32 * r + 32].as_mut_ptr().cast(), *row);
                    }
                }
            }
        }
    }

    /// [`super::round_to_bf16`] lane-wise: the bf16 bits in each 32-bit lane's low half.
    #[inline(always)]
    unsafe fn round(x: __m512i) -> __m512i {
        let top = _mm512_srli_epi32::<16>(x);
        let bias = _mm512_add_epi32(
            _mm512_set1_epi32(0x7FFF),
            _mm512_and_si512(top, _mm512_set1_epi32(1)),
        );
        let rounded = _mm512_srli_epi32::<16>(_mm512_add_epi32(x, bias));
        let nan = _mm512_or_si512(top, _mm512_set1_epi32(0x0040));
        let magnitude = _mm512_and_si512(x, _mm512_set1_epi32(0x7FFF_FFFF));
        let is_nan = _mm512_cmpgt_epu32_mask(magnitude, _mm512_set1_epi32(0x7F80_0000));
        _mm512_mask_mov_epi32(rounded, is_nan, nan)
    }

    /// [`super::next_plane`] lane-wise on f32 bits: the plane's bf16 bits (low halves), and
    /// `rest` left with what it misses.
    #[inline(always)]
    unsafe fn next_plane(rest: &mut __m512i) -> __m512i {
        let exponent = _mm512_set1_epi32(0x7F80_0000);
        let finite = _mm512_cmpneq_epi32_mask(_mm512_and_si512(*rest, exponent), exponent);
        let truncated = _mm512_srli_epi32::<16>(*rest);
        let part = _mm512_mask_mov_epi32(round(*rest), finite, truncated);
        let missing = _mm512_maskz_sub_ps(
            finite,
            _mm512_castsi512_ps(*rest),
            _mm512_castsi512_ps(_mm512_slli_epi32::<16>(truncated)),
        );
        *rest = _mm512_castps_si512(missing);
        part
    }

    /// A block's results c [32 rows × 32 tokens] into y's token rows `t0 .. t0 + tokens`,
    /// columns `r0 .. r0 + group` of `out`: per 16 rows × 16 tokens, one 16 × 16 transpose
    /// and a (masked) store per token (the scalar loop's strided reads were 3 % of a vision
    /// tile).
    ///
    /// # Safety
    /// The CPU has AVX-512 F; c holds 32 × 32 values; out has token rows up to t0 + tokens,
    /// each with at least r0 + group ≤ r0 + 32 columns; tokens ≤ 32.
    #[target_feature(enable = "avx512f")]
    pub unsafe fn scatter(
        c: &[f32],
        t0: usize,
        tokens: usize,
        r0: usize,
        group: usize,
        out: &mut ColumnBlock<'_>,
    ) {
        debug_assert!(c.len() == ROWS * TOKENS && tokens <= TOKENS && group <= ROWS);
        for rb in (0..group).step_by(16) {
            let lanes = (group - rb).min(16);
            let mask: __mmask16 = if lanes == 16 { 0xFFFF } else { (1u16 << lanes) - 1 };
            for h in (0..tokens).step_by(16) {
                let mut r = [_mm512_setzero_si512(); 16];
                for (i, v) in r.iter_mut().enumerate() {
                    // SAFETY: row rb + i < 32 and tokens h .. h + 16 ≤ 32 of c [32 × 32].
                    *v = unsafe { _mm512_loadu_si512(c.as_ptr().add((rb + i) * TOKENS + h).cast()) };
                }
                let cols = transpose16(&r);
                for (j, col) in cols.iter().enumerate().take(tokens - h) {
                    let (dst, width) = out.token_row_ptr(t0 + h + j);
                    assert!(width >= r0 + rb + lanes);
                    // SAFETY: the mask covers lanes < `lanes`, inside the row's block (asserted);
                    // a raw store, as the values may not be initialised yet.
                    unsafe { _mm512_mask_storeu_epi32(dst.add(r0 + rb).cast(), mask, *col) };
                }
            }
        }
    }

    /// Two vectors of 16 bf16 (low halves of their lanes) as one of 32 in order: 16 pairs.
    #[inline(always)]
    unsafe fn join(lo: __m512i, hi: __m512i) -> __m512i {
        _mm512_inserti64x4::<1>(
            _mm512_castsi256_si512(_mm512_cvtepi32_epi16(lo)),
            _mm512_cvtepi32_epi16(hi),
        )
    }
}

/// Packs one block of up to TOKENS tokens (`rows`, [tokens, k]) into its run of each plane
/// (`out[p]`, k·TOKENS values). Token j sits at column j % 16 of tile half j / 16 of each K
/// block: one pair (x[2r], x[2r + 1]) per tile row r. Padding tokens multiply as zeros (a reused
/// buffer holds old values there).
fn pack_block(rows: &[f32], k: usize, split: Split, out: &mut [&mut [bf16]]) {
    for kb in 0..k / K_BLOCK {
        for j in 0..TOKENS {
            // Token j's 16 pairs of this K block, one per tile row (32 values apart).
            let at = kb * 2 * TILE + (j / 16) * TILE + 2 * (j % 16);
            let Some(run) = rows.get(j * k + kb * K_BLOCK..j * k + (kb + 1) * K_BLOCK) else {
                for plane in out.iter_mut() {
                    for pair in plane[at..at + 15 * 32 + 2].chunks_mut(32) {
                        pair[..2].fill(bf16::ZERO);
                    }
                }
                continue;
            };
            if split == Split::Rounded {
                // Rounded in one pass the compiler vectorises, then stored a pair at a time.
                let mut rounded = [bf16::ZERO; K_BLOCK];
                for (r, &v) in rounded.iter_mut().zip(run) {
                    *r = round_to_bf16(v);
                }
                for (dst, pair) in out[0][at..at + 15 * 32 + 2]
                    .chunks_mut(32)
                    .zip(rounded.chunks_exact(2))
                {
                    dst[..2].copy_from_slice(pair);
                }
            } else {
                let mut rest = [0f32; K_BLOCK];
                rest.copy_from_slice(run);
                for plane in out.iter_mut() {
                    let mut part = [bf16::ZERO; K_BLOCK];
                    for (p, r) in part.iter_mut().zip(rest.iter_mut()) {
                        *p = next_plane(r);
                    }
                    for (dst, pair) in plane[at..at + 15 * 32 + 2]
                        .chunks_mut(32)
                        .zip(part.chunks_exact(2))
                    {
                        dst[..2].copy_from_slice(pair);
                    }
                }
            }
        }
    }
}

/// `bf16::from_f32` (round to nearest, ties to even; NaN kept NaN with its sign and top payload
/// bits, quieted) in integer operations without a branch per value, so a run of them
/// vectorises.
#[inline(always)]
pub(crate) fn round_to_bf16(v: f32) -> bf16 {
    let x = v.to_bits();
    let rounded = (x.wrapping_add(0x7FFF + ((x >> 16) & 1)) >> 16) as u16;
    let nan = ((x >> 16) as u16) | 0x0040;
    bf16::from_bits(if x & 0x7FFF_FFFF > 0x7F80_0000 {
        nan
    } else {
        rounded
    })
}

/// The next plane of `rest`: its bf16 truncation (the low 16 bits of the f32 dropped), leaving
/// in `rest` what that plane misses, which is exact in f32 and has at most 16 significant bits.
/// Infinities and NaN go whole into the plane (and leave nothing).
///
/// Selects rather than branches, so a run of them vectorises (the packer's inner loop).
#[inline(always)]
fn next_plane(rest: &mut f32) -> bf16 {
    let finite = rest.is_finite();
    let truncated = bf16::from_bits((rest.to_bits() >> 16) as u16);
    let part = if finite { truncated } else { round_to_bf16(*rest) };
    *rest = if finite { *rest - truncated.to_f32() } else { 0.0 };
    part
}

/// Planes of truncated bf16 that represent every value exactly: 1, 2 or 3 (24 significant bits,
/// all an f32 has). Long inputs are scanned in parallel: bf16-valued activations (`--dtype
/// bf16`) never stop the scan early, and a serial pass over them was 5 % of a prompt step with
/// the other threads waiting.
pub fn planes_needed(x: &[f32]) -> usize {
    const TASK: usize = 1 << 15;
    if x.len() <= TASK {
        return planes_needed_serial(x);
    }
    let most = std::sync::atomic::AtomicUsize::new(1);
    candle_core::utils::barrier_pool().execute_chunked(x.len().div_ceil(TASK), |range| {
        for c in range {
            if most.load(std::sync::atomic::Ordering::Relaxed) == 3 {
                return;
            }
            let planes = planes_needed_serial(&x[c * TASK..((c + 1) * TASK).min(x.len())]);
            most.fetch_max(planes, std::sync::atomic::Ordering::Relaxed);
        }
    });
    most.into_inner()
}

/// [`planes_needed`] in one thread: runs of 64 values without a branch per value (so they
/// vectorise), stopping at the first run that needs three planes.
fn planes_needed_serial(x: &[f32]) -> usize {
    let mut planes = 1;
    for run in x.chunks(64) {
        let (mut two, mut three) = (false, false);
        for &v in run {
            let mut rest = v;
            next_plane(&mut rest);
            two |= rest != 0.0;
            next_plane(&mut rest);
            three |= rest != 0.0;
        }
        if three {
            return 3;
        }
        if two {
            planes = 2;
        }
    }
    planes
}

/// Splits values into the fewest planes of truncated bf16 that sum back to them exactly
/// (weights stored in f16 or f32: an f16 takes two, an f32 up to three; values that are bf16
/// already take one). Each plane has the values' length.
pub fn split_exact(values: &[f32]) -> Vec<Vec<bf16>> {
    let planes = planes_needed(values);
    let mut out = vec![Vec::with_capacity(values.len()); planes];
    for &v in values {
        let mut rest = v;
        for plane in out.iter_mut() {
            plane.push(next_plane(&mut rest));
        }
    }
    out
}

/// The packed activations times Wᵀ, written into `out`'s columns (one per weight row): y [t,
/// rows], on AMX tiles. W is given as bf16 planes that sum to it (one plane for bf16 weights,
/// read where they lie; see [`split_exact`]), each [rows, k] row-major.
///
/// # Panics
/// If the shapes disagree, there is no plane, or [`usable`] is false.
pub fn product_rows(w: &[&[bf16]], rows: usize, acts: &PackedActivations, out: &mut ColumnBlock<'_>) {
    product_rows_on(Isa::Amx, w, rows, acts, out)
}

/// [`product_rows`] on the tiles ([`Isa::Amx`]) or on AVX-512 BF16 dot products
/// ([`Isa::Avx512Bf16`], [`super::dpbf16`]): the same operands, blocks and planes, so the same
/// sums up to their order. Activations packed [`Split::Wide`] go to f32 FMAs instead
/// ([`super::fma_blocks`], any AVX-512 level), against one weight plane. Every value of `out`'s
/// block is written through raw stores and none is read, so the output may come from
/// [`super::row_split::split_columns_writing_all`].
///
/// # Panics
/// If the shapes disagree, there is no plane, `isa` is neither of the two or not usable here,
/// or (wide activations) `isa` has no AVX-512 or there is more than one weight plane.
pub fn product_rows_on(
    isa: Isa,
    w: &[&[bf16]],
    rows: usize,
    acts: &PackedActivations,
    out: &mut ColumnBlock<'_>,
) {
    product_rows_of(isa, w, bf16::ZERO, Weights::Bf16, rows, acts, out)
}

/// [`product_rows_on`] for f16 weight rows [rows, k] against wide activations
/// ([`Split::Wide`]), on f32 FMAs ([`super::fma_blocks`]): the same blocks and order, each
/// weight widened exactly, so f16 weights holding bf16 values compute what bf16 ones do.
///
/// # Panics
/// If the shapes disagree, the activations are not wide, or `isa` has no AVX-512 or is not
/// supported here.
pub fn product_rows_f16_on(
    isa: Isa,
    w: &[f16],
    rows: usize,
    acts: &PackedActivations,
    out: &mut ColumnBlock<'_>,
) {
    assert!(acts.is_wide(), "f16 weights take wide activations");
    product_rows_of(isa, &[w], f16::ZERO, Weights::F16, rows, acts, out)
}

/// The body of [`product_rows_on`] over weight rows stored as `weights` (`zero` pads a short
/// last group).
fn product_rows_of<E: Copy>(
    isa: Isa,
    w: &[&[E]],
    zero: E,
    weights: Weights,
    rows: usize,
    acts: &PackedActivations,
    out: &mut ColumnBlock<'_>,
) {
    const { assert!(std::mem::size_of::<E>() == 2) };
    let (t, k) = (acts.t, acts.k);
    let wide = acts.is_wide();
    match isa {
        // Wide activations meet their one weight plane on f32 FMAs, which every AVX-512 has.
        _ if wide => assert!(isa >= Isa::Avx512 && isa.is_supported() && w.len() == 1),
        // Planes are bf16 (product_rows_f16_on asserts wide activations).
        _ if weights != Weights::Bf16 => panic!("{weights:?} weights take wide activations"),
        Isa::Amx => assert!(usable()),
        Isa::Avx512Bf16 => assert!(super::dpbf16::usable()),
        _ => panic!("no bf16 block products on {isa}"),
    }
    assert!(!w.is_empty());
    for plane in w {
        assert_eq!(plane.len(), rows * k);
    }
    // Every value of `out` is written, through raw stores, and none read (the contract of
    // split_columns_writing_all, which the callers rely on).
    assert_eq!(out.width(), rows);
    if k == 0 {
        for token in 0..t {
            let (row, width) = out.token_row_ptr(token);
            // SAFETY: the row's block holds `width` values.
            unsafe { row.write_bytes(0, width) };
        }
        return;
    }
    let kblocks = k / K_BLOCK;
    // Whole groups of 32 rows are read where they lie; a short last group from a zero-padded
    // copy (a tile pair always loads 32 rows).
    let whole = rows / ROWS * ROWS;
    let tails: Vec<Vec<E>> = w
        .iter()
        .map(|plane| {
            if whole == rows {
                return Vec::new();
            }
            let mut tail = plane[whole * k..].to_vec();
            tail.resize(ROWS * k, zero);
            tail
        })
        .collect();
    let plane_bytes = acts.plane_len() * 2;
    let (groups, blocks) = (rows.div_ceil(ROWS), t.div_ceil(TOKENS));
    // c [32 rows × 32 tokens] += row group g · token block `block` over the K panel from block
    // kb0, weight plane after plane. Both loop orders below run the panels in order, so they
    // make the same additions in the same order (a microkernel continues the sums it finds in
    // c) and the result does not depend on which one the run's length picks.
    let product = |block: usize, g: usize, kb0: usize, c: &mut [f32]| {
        let r0 = g * ROWS;
        let half = t - block * TOKENS <= TOKENS / 2;
        let nkb = K_PANEL_BLOCKS.min(kblocks - kb0);
        for (i, a_plane) in w.iter().enumerate() {
            let a = if r0 < whole {
                &a_plane[r0 * k..(r0 + ROWS) * k]
            } else {
                &tails[i][..]
            };
            let a = &a[kb0 * K_BLOCK..];
            if wide {
                let b = &acts.wide[(block * kblocks + kb0) * K_BLOCK * TOKENS..];
                assert!(b.len() >= nkb * K_BLOCK * TOKENS);
                assert_eq!(c.len(), ROWS * TOKENS);
                // SAFETY: the CPU has AVX-512 F (asserted above); a holds 32 rows k bf16 apart,
                // each with the panel's 32·nkb values from its start, b the panel's nkb K
                // blocks of 32 tokens' f32 (asserted; the kernel casts the pointer back), c is
                // 32×32 f32 (asserted), nkb ≥ 1.
                unsafe {
                    super::fma_blocks::microkernel(weights, half)(
                        a.as_ptr().cast(),
                        k * 2,
                        b.as_ptr().cast(),
                        0,
                        nkb,
                        c.as_mut_ptr(),
                    )
                };
                continue;
            }
            // Activation planes j with i + j ≤ 2 (the rest are below 2⁻²⁴ of the product).
            let b_planes = acts.planes.min(3 - i.min(2));
            let b = &acts.data[(block * kblocks + kb0) * 2 * TILE..];
            assert!(b.len() >= (b_planes - 1) * acts.plane_len() + nkb * 2 * TILE);
            assert_eq!(c.len(), ROWS * TOKENS);
            let kernel: super::dpbf16::Microkernel = match (isa, b_planes, half) {
                (Isa::Avx512Bf16, planes, half) => super::dpbf16::microkernel(planes, half),
                (_, 1, false) => tile_32x32_1,
                (_, 2, false) => tile_32x32_2,
                (_, _, false) => tile_32x32_3,
                (_, 1, true) => tile_32x16_1,
                (_, 2, true) => tile_32x16_2,
                (_, _, true) => tile_32x16_3,
            };
            // SAFETY: the tile session is live on tiles (the CPU has AVX-512 BF16
            // otherwise, asserted above); a holds 32 rows k bf16 apart, each with the
            // panel's 32·nkb values from its start (kb0 + nkb ≤ kblocks), each B plane nkb
            // pairs of tiles (asserted above), c is 32×32 f32 (asserted), nkb ≥ 1.
            unsafe {
                kernel(
                    a.as_ptr().cast(),
                    k * 2,
                    b.as_ptr(),
                    plane_bytes,
                    nkb,
                    c.as_mut_ptr(),
                )
            };
        }
    };
    // c is [rows × tokens]; y wants token-major rows.
    let scatter = |block: usize, g: usize, c: &[f32], out: &mut ColumnBlock<'_>| {
        let (r0, group) = (g * ROWS, (rows - g * ROWS).min(ROWS));
        let tokens = (t - block * TOKENS).min(TOKENS);
        assert_eq!(c.len(), ROWS * TOKENS);
        // SAFETY: both block products run only where the CPU has AVX-512 F (asserted above);
        // c is one 32 × 32 block (asserted) and out has t ≥ block·32 + tokens token rows of
        // `rows` ≥ r0 + group columns.
        #[cfg(target_arch = "x86_64")]
        unsafe {
            x86::scatter(c, block * TOKENS, tokens, r0, group, out)
        };
        #[cfg(not(target_arch = "x86_64"))]
        for j in 0..tokens {
            let (dst, width) = out.token_row_ptr(block * TOKENS + j);
            assert!(width >= r0 + group);
            for i in 0..group {
                // SAFETY: r0 + i < width, inside the row's block.
                unsafe { dst.add(r0 + i).write(c[i * TOKENS + j]) };
            }
        }
    };
    // SAFETY: usable() is asserted above for the tiles.
    let _session = (isa == Isa::Amx && !wide).then(|| unsafe { TileSession::start() });
    if rows * k * 2 * w.len() <= L2_WEIGHT_BYTES {
        // Token blocks outside, weight groups inside: the run of rows stays in L2 while each
        // block of packed activations is streamed through once.
        let mut c = [0f32; ROWS * TOKENS];
        for block in 0..blocks {
            for g in 0..groups {
                c.fill(0.0);
                for kb0 in (0..kblocks).step_by(K_PANEL_BLOCKS) {
                    product(block, g, kb0, &mut c);
                }
                scatter(block, g, &c, out);
            }
        }
        return;
    }
    // A run too long for L2: K panels outside, then token blocks, then weight groups, so the
    // run's rows of one panel stay in L2 while every block of activations streams past them
    // and the activations are still read once per run (a short run per task instead re-read
    // all of them every few rows: two Scout tiles' fc2 took 2.8 times one tile's).
    with_accumulators(groups * blocks * ROWS * TOKENS, |c| {
        let at = |block: usize, g: usize| {
            (g * blocks + block) * ROWS * TOKENS..(g * blocks + block + 1) * ROWS * TOKENS
        };
        for kb0 in (0..kblocks).step_by(K_PANEL_BLOCKS) {
            let last = kb0 + K_PANEL_BLOCKS >= kblocks;
            for block in 0..blocks {
                for g in 0..groups {
                    let c = &mut c[at(block, g)];
                    if kb0 == 0 {
                        // Zeroed here, in L1, rather than the whole run up front (a pass
                        // over ~1 MiB that left L2 before the products came back to it).
                        c.fill(0.0);
                    }
                    product(block, g, kb0, c);
                    if last {
                        // Scattered while the block is in L1 (a pass of its own re-read the
                        // whole run's accumulators: 5 % of a BF16 pp512).
                        scatter(block, g, c, out);
                    }
                }
            }
        }
    });
}

/// Bytes of a run's weight rows (all planes) that stay in L2 across the token blocks: about half
/// a core's share, leaving room for the activations streamed past.
const L2_WEIGHT_BYTES: usize = 512 << 10;

/// K blocks per panel: 1024 values, a task's run of up to 384 bf16 rows being 768 KiB of L2
/// (512 values streamed each row in 1 KiB pieces, which cost ~10 % at pp512). Fixed (not
/// from the run's length, which follows the thread count) so the summation order, panel by
/// panel, is the same whatever the threads.
const K_PANEL_BLOCKS: usize = 32;

/// Runs `f` on `len` f32 accumulators holding whatever an earlier call left (the caller zeroes
/// each block before its first panel), this thread's buffer kept from call to call.
fn with_accumulators<R>(len: usize, f: impl FnOnce(&mut [f32]) -> R) -> R {
    thread_local! {
        static BUFFER: std::cell::Cell<Vec<f32>> = const { std::cell::Cell::new(Vec::new()) };
    }
    let mut c = BUFFER.take();
    if c.len() < len {
        c.resize(len, 0.0);
    }
    let result = f(&mut c[..len]);
    BUFFER.set(c);
    result
}

/// Weight rows per task for a product on tiles or `vdpbf16ps` whose weights are read where
/// they lie: each task reads all the packed activations once, so runs are long (up to 384 rows,
/// whole tile groups; K panels keep their slice in L2), in a count of tasks that is a multiple
/// of the threads.
pub fn rows_per_task(n: usize) -> usize {
    const MAX: usize = 12 * ROWS;
    let threads = super::row_split::threads().max(1);
    let rounds = n.div_ceil(threads * MAX).max(1);
    n.div_ceil(threads * rounds).div_ceil(ROWS).max(1) * ROWS
}

/// Weight rows per task where each task first dequantizes its rows into a bf16 panel: about
/// 512 KiB of them (a core's share of L2, so the panel is still there when the products read
/// it), whole tile groups, at least two tasks per thread.
pub fn panel_rows_per_task(n: usize, k: usize) -> usize {
    let by_bytes = (512 << 10) / (2 * k.max(1)) / ROWS * ROWS;
    let by_threads = n.div_ceil(super::row_split::threads() * 2).div_ceil(ROWS) * ROWS;
    by_bytes.min(by_threads).clamp(ROWS, 4 * ROWS)
}

/// The tile configuration every product uses: palette 1, eight tiles of 16 rows × 64 bytes.
#[repr(C, align(64))]
struct TileConfig([u8; 64]);

const CONFIG: TileConfig = {
    let mut bytes = [0u8; 64];
    bytes[0] = 1;
    let mut tile = 0;
    while tile < 8 {
        bytes[16 + 2 * tile] = 64; // bytes per row (u16, little-endian)
        bytes[48 + tile] = 16; // rows
        tile += 1;
    }
    TileConfig(bytes)
};

/// The tiles configured on this thread for as long as it lives: `ldtilecfg` and `tilerelease`
/// cost hundreds of cycles each, so a task configures once and runs all its microkernels
/// inside. Released on drop, so no tile state outlives the task.
struct TileSession;

impl TileSession {
    /// # Safety
    /// The CPU must have AMX with the tile state granted ([`usable`]).
    #[cfg(target_arch = "x86_64")]
    unsafe fn start() -> Self {
        // SAFETY: the caller's contract; the configuration is 64 aligned bytes.
        unsafe { std::arch::asm!("ldtilecfg [{cfg}]", cfg = in(reg) CONFIG.0.as_ptr(), options(nostack)) };
        TileSession
    }

    #[cfg(not(target_arch = "x86_64"))]
    unsafe fn start() -> Self {
        unreachable!("AMX is x86-64 only; usable() is false elsewhere")
    }
}

impl Drop for TileSession {
    fn drop(&mut self) {
        // SAFETY: a session exists only where the tiles were configured.
        #[cfg(target_arch = "x86_64")]
        unsafe {
            std::arch::asm!("tilerelease", options(nostack, nomem))
        };
    }
}

/// One microkernel per count of activation planes (1–3) sharing a weight plane: c [32 weight
/// rows × 32 tokens] += A · (B₀ + B₁ + …) over `kblocks` blocks of 32 along K. A: 32 rows of
/// bf16 at `a`, `a_stride` bytes apart; B plane p: `kblocks` pairs of packed 1 KiB tiles at
/// `b + p·plane_bytes`.
///
/// Tiles: tmm0..3 accumulate c's four 16×16 quarters, tmm4/5 hold A's two row halves (loaded
/// once per K block for all planes), tmm6/7 B's two token halves.
///
/// # Safety
/// A [`TileSession`] must be live on this thread; `a` must be readable for 32 rows of
/// `a_stride` bytes (each 64·kblocks bytes long), each B plane for 2048·kblocks bytes, `c` for
/// 32×32 f32, and `kblocks` ≥ 1.
macro_rules! microkernel {
    ($name:ident, $($plane:literal)+) => {
        #[cfg(target_arch = "x86_64")]
        unsafe fn $name(a: *const bf16, a_stride: usize, b: *const bf16, plane_bytes: usize, kblocks: usize, c: *mut f32) {
            // SAFETY: the caller's contract; the asm reads and writes only the memory named
            // there and the tile registers of the live session.
            unsafe {
                std::arch::asm!(
                    "tileloadd tmm0, [{c} + {cs}*1]",
                    "tileloadd tmm1, [{c} + {cs}*1 + 64]",
                    "tileloadd tmm2, [{c} + {cs}*1 + 2048]",
                    "tileloadd tmm3, [{c} + {cs}*1 + 2112]",
                    "2:",
                    "tileloadd tmm4, [{a0} + {as}*1]",
                    "tileloadd tmm5, [{a1} + {as}*1]",
                    "mov {bp}, {b}",
                    $(
                        concat!("// activation plane ", $plane),
                        "tileloadd tmm6, [{bp} + {bs}*1]",
                        "tileloadd tmm7, [{bp} + {bs}*1 + 1024]",
                        "tdpbf16ps tmm0, tmm4, tmm6",
                        "tdpbf16ps tmm1, tmm4, tmm7",
                        "tdpbf16ps tmm2, tmm5, tmm6",
                        "tdpbf16ps tmm3, tmm5, tmm7",
                        "add {bp}, {ps}",
                    )+
                    "add {a0}, 64",
                    "add {a1}, 64",
                    "add {b}, 2048",
                    "dec {n}",
                    "jnz 2b",
                    "tilestored [{c} + {cs}*1], tmm0",
                    "tilestored [{c} + {cs}*1 + 64], tmm1",
                    "tilestored [{c} + {cs}*1 + 2048], tmm2",
                    "tilestored [{c} + {cs}*1 + 2112], tmm3",
                    c = in(reg) c,
                    cs = in(reg) TOKENS * 4,
                    a0 = inout(reg) a => _,
                    a1 = inout(reg) a.byte_add(16 * a_stride) => _,
                    as = in(reg) a_stride,
                    b = inout(reg) b => _,
                    bp = out(reg) _,
                    bs = in(reg) 64usize,
                    ps = in(reg) plane_bytes,
                    n = inout(reg) kblocks => _,
                    options(nostack),
                );
            }
        }

        #[cfg(not(target_arch = "x86_64"))]
        unsafe fn $name(_: *const bf16, _: usize, _: *const bf16, _: usize, _: usize, _: *mut f32) {
            unreachable!("AMX is x86-64 only; usable() is false elsewhere")
        }
    };
}

microkernel!(tile_32x32_1, 0);
microkernel!(tile_32x32_2, 0 1);
microkernel!(tile_32x32_3, 0 1 2);

/// [`microkernel!`] for a block of at most 16 tokens (a batch of decoding sequences): only B's
/// first token half is multiplied, into c's two left quarters — half the tile products of the
/// full kernel, whose right half would multiply the block's zero padding.
///
/// # Safety
/// As [`microkernel!`]'s functions; only c's first 16 token columns are read and written.
macro_rules! microkernel_half {
    ($name:ident, $($plane:literal)+) => {
        #[cfg(target_arch = "x86_64")]
        unsafe fn $name(a: *const bf16, a_stride: usize, b: *const bf16, plane_bytes: usize, kblocks: usize, c: *mut f32) {
            // SAFETY: the caller's contract; the asm reads and writes only the memory named
            // there and the tile registers of the live session.
            unsafe {
                std::arch::asm!(
                    "tileloadd tmm0, [{c} + {cs}*1]",
                    "tileloadd tmm2, [{c} + {cs}*1 + 2048]",
                    "2:",
                    "tileloadd tmm4, [{a0} + {as}*1]",
                    "tileloadd tmm5, [{a1} + {as}*1]",
                    "mov {bp}, {b}",
                    $(
                        concat!("// activation plane ", $plane),
                        "tileloadd tmm6, [{bp} + {bs}*1]",
                        "tdpbf16ps tmm0, tmm4, tmm6",
                        "tdpbf16ps tmm2, tmm5, tmm6",
                        "add {bp}, {ps}",
                    )+
                    "add {a0}, 64",
                    "add {a1}, 64",
                    "add {b}, 2048",
                    "dec {n}",
                    "jnz 2b",
                    "tilestored [{c} + {cs}*1], tmm0",
                    "tilestored [{c} + {cs}*1 + 2048], tmm2",
                    c = in(reg) c,
                    cs = in(reg) TOKENS * 4,
                    a0 = inout(reg) a => _,
                    a1 = inout(reg) a.byte_add(16 * a_stride) => _,
                    as = in(reg) a_stride,
                    b = inout(reg) b => _,
                    bp = out(reg) _,
                    bs = in(reg) 64usize,
                    ps = in(reg) plane_bytes,
                    n = inout(reg) kblocks => _,
                    options(nostack),
                );
            }
        }

        #[cfg(not(target_arch = "x86_64"))]
        unsafe fn $name(_: *const bf16, _: usize, _: *const bf16, _: usize, _: usize, _: *mut f32) {
            unreachable!("AMX is x86-64 only; usable() is false elsewhere")
        }
    };
}

microkernel_half!(tile_32x16_1, 0);
microkernel_half!(tile_32x16_2, 0 1);
microkernel_half!(tile_32x16_3, 0 1 2);

/// The slow twin of [`product_rows`]: the same bf16 operands (each side's planes summed back to
/// f32, or the wide f32 values) multiplied in f32, one dot at a time, into y [t, rows].
pub fn product_rows_slow(w: &[&[bf16]], rows: usize, acts: &PackedActivations, out: &mut [f32]) {
    let (t, k) = (acts.t, acts.k);
    let kblocks = k / K_BLOCK;
    for ti in 0..t {
        let (block, j) = (ti / TOKENS, ti % TOKENS);
        let (h, j) = (j / 16, j % 16);
        let x: Vec<f32> = (0..k)
            .map(|kk| {
                if acts.is_wide() {
                    return acts.wide[(block * k + kk) * TOKENS + 16 * h + j];
                }
                let (kb, r, i) = (kk / K_BLOCK, (kk % K_BLOCK) / 2, kk % 2);
                let at = (block * kblocks + kb) * 2 * TILE + h * TILE + r * 32 + 2 * j + i;
                (0..acts.planes)
                    .map(|p| acts.data[p * acts.plane_len() + at].to_f32())
                    .sum()
            })
            .collect();
        for n in 0..rows {
            out[ti * rows + n] = (0..k)
                .map(|kk| w.iter().map(|plane| plane[n * k + kk].to_f32()).sum::<f32>() * x[kk])
                .sum();
        }
    }
}
