//! Prefill products `y = x Wᵀ` of k-quant weights (Q4_K, Q6_K) with Q8_K activations on AVX-512
//! VNNI: the integer sums llama.cpp's k-quant dot products form, for many tokens at once.
//!
//! Each task unpacks its run of weight rows once into a panel the kernel reads with plain vector
//! loads, then streams the panel past the tokens a few at a time, so every unpacked byte feeds
//! many products (the decode kernels, [`super::quant_dot`], unpack each block once per token).
//! The panel holds, per group of 16 rows:
//! - the levels as unsigned bytes, 16 rows × 4 consecutive values per 64-byte vector: the
//!   operand `vpdpbusd` multiplies against 4 activation bytes broadcast to every lane, 64
//!   multiply-adds per instruction where `vdpbf16ps` ([`super::dpbf16`]) does 32;
//! - per sub-block (Q4_K: 32 values, Q6_K: 16), each row's f32 scale s = d·sc and, for Q4_K, its
//!   offset b = −dmin·m.
//!
//! On AVX-512 the levels are unpacked 16 rows at a time through a 16 × 16 transpose of the
//! blocks' 32-bit words (64 shuffles; gathering each word across the rows cost twice as much at
//! 32 tokens), the scales through gathers of the rows' few scale words.
//!
//! ```text
//! y[t][r] = Σ_superblocks sa[t] · Σ_j ( s[r][j] · Σ_{k∈j} u[r][k]·q[t][k]  +  b[r][j] · Σ_{k∈j} q[t][k] )
//!                                           └─ vpdpbusd: 16 rows in lanes ─┘       └─ activation sums ─┘
//! ```
//!
//! Q6_K's −32 offset enters the integer sum itself (it starts at −32·Σq rather than 0), so it
//! has no b. The integer sums are exact, so the result differs from the slow twin
//! ([`super::quant_matmul::matmul_t_slow`], the same Q8_K activations and both sides
//! dequantized to f32) only in the order of f32 sums.
//!
//! Q8_0 weights keep the bf16 panels ([`super::quant_matmul::matmul_t_panels`]): their
//! activations are not rounded to 8 bits there, where this path would round them per 256 values,
//! coarser than llama.cpp's Q8_0 activations.

use std::cell::RefCell;

use half::f16;

use super::isa::Isa;
use super::q8_activations::{quantize_q8_k, Q8Activations};
use super::quant_dot::scales_mins_k4;
use super::row_split::{split_columns_writing_all, ColumnBlock};
use crate::weights::QuantType;

/// Rows whose levels share one 64-byte vector (one lane of i32 sums each).
const GROUP: usize = 16;
/// Row groups per microkernel call: each broadcast activation word feeds this many `vpdpbusd`.
/// With [`TOKENS`], the fastest of 1 × 8, 2 × 4, 3 × 4, 4 × 3 and 2 × 6 (groups × tokens) in
/// `kernel_speed` (t = 512, 4096 × 2048): ~555 GFLOP/s against 500–535 for the others.
const GROUPS: usize = 2;
/// Rows per microkernel call.
const BAND: usize = GROUPS * GROUP;
/// Tokens per microkernel call: 4 tokens × 2 groups of integer sums and as many f32 sums are 16
/// of the 32 vector registers. Six (24 registers) measured ~12 % slower: the f32 sums spill at
/// every sub-block.
const TOKENS: usize = 4;
/// From how many activation rows a product of `ty` takes this kernel rather than the per-token
/// integer dots, which unpack every block once per token: where the one unpacking of the panel
/// costs less than the dots' repeated ones (`kernel_speed`, `TOKENS=2..4 ROWS=1024`: Q4_K from 3
/// rows, Q6_K, whose unpacking costs more, from 4).
pub fn min_rows(ty: QuantType) -> usize {
    if ty == QuantType::Q6K {
        4
    } else {
        3
    }
}

/// Values per Q8_K activation block (one scale).
const SUPER: usize = 256;

/// The formats this kernel computes.
pub fn supports(ty: QuantType) -> bool {
    matches!(ty, QuantType::Q4K | QuantType::Q6K)
}

/// Whether a prefill product of `ty` on `isa` takes this kernel: AVX-512 with VNNI, below AMX
/// (whose bf16 tiles multiply faster still).
pub fn applies(isa: Isa, ty: QuantType) -> bool {
    supports(ty) && matches!(isa, Isa::Avx512 | Isa::Avx512Bf16)
}

/// Values per sub-block (one weight scale) of `ty`.
fn sub_len(ty: QuantType) -> usize {
    if ty == QuantType::Q6K {
        16
    } else {
        32
    }
}

/// A run of weight rows unpacked for the kernel, padded to whole bands of [`BAND`] rows.
#[derive(Default)]
struct Panel {
    /// [groups][K/4][16 rows][4 values] levels (Q4_K 0..15, Q6_K 0..63). This and the others
    /// may be longer than the current rows need (kept from a larger product).
    levels: Vec<u8>,
    /// [groups][K/L][16 rows] d·sc.
    scales: Vec<f32>,
    /// [groups][K/L][16 rows] −dmin·m (Q4_K only).
    biases: Vec<f32>,
}

impl Panel {
    /// Unpacks `rows` rows of `k` values in `ty` blocks (`w`), reusing the buffers. They are
    /// grown, never cleared: a padding row's lane holds whatever it held, which is harmless,
    /// since lanes never mix and a padding row's results are never written out.
    fn unpack(&mut self, isa: Isa, ty: QuantType, w: &[u8], rows: usize, k: usize) {
        let groups = rows.div_ceil(BAND) * GROUPS;
        let subs = k / sub_len(ty);
        grow(&mut self.levels, groups * GROUP * k, 0);
        grow(&mut self.scales, groups * GROUP * subs, 0.0);
        if ty == QuantType::Q4K {
            grow(&mut self.biases, groups * GROUP * subs, 0.0);
        }
        let bytes = ty.block_bytes();
        let row_bytes = k / SUPER * bytes;
        assert!(w.len() >= rows * row_bytes);
        // Only x86-64 has a vector unpacking to choose.
        #[cfg(not(target_arch = "x86_64"))]
        let _ = isa;
        // Group by group and block by block, the 16 rows inside: one block's levels of the
        // group (4 KiB) are written while they are in L1.
        for g in 0..rows.div_ceil(GROUP) {
            let lanes = GROUP.min(rows - g * GROUP);
            let levels = &mut self.levels[g * GROUP * k..(g + 1) * GROUP * k];
            let scales = &mut self.scales[g * GROUP * subs..(g + 1) * GROUP * subs];
            for b in 0..k / SUPER {
                let first = g * GROUP * row_bytes + b * bytes;
                let dst = &mut levels[b * SUPER * GROUP..(b + 1) * SUPER * GROUP];
                #[cfg(target_arch = "x86_64")]
                if isa >= Isa::Avx512 {
                    // SAFETY: the CPU has AVX-512 F/BW (part of every level from Avx512 up, and
                    // the caller asserted `isa` is supported); the `lanes` rows' blocks lie
                    // inside w (asserted above: lanes ≤ rows − 16g), and dst is one block's
                    // 4 KiB of levels.
                    unsafe {
                        let src = w[first..].as_ptr();
                        if ty == QuantType::Q4K {
                            avx512::levels_q4k(src, row_bytes, lanes, dst.as_mut_ptr());
                            let biases = &mut self.biases[g * GROUP * subs..(g + 1) * GROUP * subs];
                            let at = b * 8 * GROUP;
                            avx512::scales_q4k(
                                src,
                                row_bytes,
                                lanes,
                                scales[at..at + 8 * GROUP].as_mut_ptr(),
                                biases[at..at + 8 * GROUP].as_mut_ptr(),
                            );
                        } else {
                            avx512::levels_q6k(src, row_bytes, lanes, dst.as_mut_ptr());
                            let at = b * 16 * GROUP;
                            avx512::scales_q6k(
                                src,
                                row_bytes,
                                lanes,
                                scales[at..at + 16 * GROUP].as_mut_ptr(),
                            );
                        }
                    }
                    continue;
                }
                for lane in 0..lanes {
                    let blk = &w[first + lane * row_bytes..first + lane * row_bytes + bytes];
                    if ty == QuantType::Q4K {
                        let (d, dmin) = (f16_at(blk, 0), f16_at(blk, 2));
                        let (sc, m) = scales_mins_k4(&blk[4..16]);
                        let biases = &mut self.biases[g * GROUP * subs..(g + 1) * GROUP * subs];
                        for j in 0..8 {
                            scales[(b * 8 + j) * GROUP + lane] = d * f32::from(sc[j]);
                            biases[(b * 8 + j) * GROUP + lane] = -(dmin * f32::from(m[j]));
                        }
                    } else {
                        let d = f16_at(blk, 208);
                        for j in 0..16 {
                            scales[(b * 16 + j) * GROUP + lane] = d * f32::from(blk[192 + j] as i8);
                        }
                    }
                    levels_portable(ty, blk, lane, dst);
                }
            }
        }
    }
}

/// One row's levels of one block into lane `lane` of the block's [64 words][16 lanes][4] levels.
fn levels_portable(ty: QuantType, blk: &[u8], lane: usize, dst: &mut [u8]) {
    // Writes values v..v+4 of the block (one little-endian word of levels).
    let mut put = |v: usize, word: u32| {
        let at = v / 4 * 64 + lane * 4;
        dst[at..at + 4].copy_from_slice(&word.to_le_bytes());
    };
    let word = |s: &[u8], at: usize| u32::from_le_bytes([s[at], s[at + 1], s[at + 2], s[at + 3]]);
    if ty == QuantType::Q4K {
        // Byte l of 32-byte run j: value 64j + l (low nibble), 64j + 32 + l (high).
        let qs = &blk[16..144];
        for j in 0..4 {
            for l in (0..32).step_by(4) {
                let q = word(qs, 32 * j + l);
                put(64 * j + l, q & 0x0F0F_0F0F);
                put(64 * j + 32 + l, (q >> 4) & 0x0F0F_0F0F);
            }
        }
    } else {
        // Value 128n + 32i + l: a nibble of ql (i = 0, 1 low; 2, 3 high) with bits 2i, 2i+1 of
        // qh[32n + l] above it.
        let (ql, qh) = (&blk[..128], &blk[128..192]);
        for n in 0..2 {
            for l in (0..32).step_by(4) {
                let (a, c, h) = (
                    word(ql, 64 * n + l),
                    word(ql, 64 * n + 32 + l),
                    word(qh, 32 * n + l),
                );
                let high = |shift: u32| ((h >> shift) & 0x0303_0303) << 4;
                let at = 128 * n + l;
                put(at, (a & 0x0F0F_0F0F) | high(0));
                put(at + 32, (c & 0x0F0F_0F0F) | high(2));
                put(at + 64, ((a >> 4) & 0x0F0F_0F0F) | high(4));
                put(at + 96, ((c >> 4) & 0x0F0F_0F0F) | high(6));
            }
        }
    }
}

/// Grows `v` to at least `len` values (new ones `fill`), keeping what it holds.
fn grow<T: Clone>(v: &mut Vec<T>, len: usize, fill: T) {
    if v.len() < len {
        v.resize(len, fill);
    }
}

/// The activations' per-sub-block terms, shared by every task of a call: [T][K/L] each.
#[derive(Default)]
struct Terms {
    /// Where each integer sum starts (Q6_K: −32·Σq over the 16 values; empty for Q4_K, whose
    /// sums start at 0).
    init: Vec<i32>,
    /// Σq over the sub-block, in f32, for the offset b (Q4_K; empty for Q6_K).
    sums: Vec<f32>,
}

impl Terms {
    fn new(ty: QuantType, acts: &Q8Activations) -> Self {
        if ty == QuantType::Q6K {
            Terms {
                init: acts.sums16.iter().map(|&s| -32 * i32::from(s)).collect(),
                sums: Vec::new(),
            }
        } else {
            Terms {
                init: Vec::new(),
                sums: acts
                    .sums16
                    .chunks_exact(2)
                    .map(|p| f32::from(p[0]) + f32::from(p[1]))
                    .collect(),
            }
        }
    }
}

thread_local! {
    /// The calling thread's Q8_K activations, reused from call to call.
    static ACTS: RefCell<Q8Activations> = RefCell::new(Q8Activations::default());
    /// The thread's panel, reused likewise.
    static PANEL: RefCell<Panel> = RefCell::new(Panel::default());
}

/// Weight rows per task: whole bands, a panel of at most ~384 KiB (it stays in L2 while every
/// token block streams past it), and at least two tasks per thread where the matrix allows.
pub fn rows_per_task(n: usize, k: usize) -> usize {
    let by_bytes = (384 << 10) / k.max(1) / BAND * BAND;
    let by_threads = n.div_ceil(super::row_split::threads() * 2).div_ceil(BAND) * BAND;
    by_bytes.min(by_threads).clamp(BAND, 8 * BAND)
}

/// x [t, k] f32 times w (n rows of k values in `ty` blocks) → [t, n], on the current [`Isa`].
pub fn matmul_t(ty: QuantType, w: &[u8], n: usize, k: usize, x: &[f32], t: usize) -> Vec<f32> {
    matmul_t_on(Isa::current(), ty, w, n, k, x, t)
}

/// [`matmul_t`] on a chosen [`Isa`]: the AVX-512 microkernel on [`Isa::Avx512`] and above, its
/// plain-Rust build of the same panel arithmetic below (the twin tests' way to check the
/// panel on any CPU; products on those ISAs take [`super::quant_matmul`]'s paths).
///
/// # Panics
/// If `ty` is not Q4_K or Q6_K, k is not whole super-blocks, the lengths disagree with the
/// shape, or the CPU lacks `isa`.
pub fn matmul_t_on(isa: Isa, ty: QuantType, w: &[u8], n: usize, k: usize, x: &[f32], t: usize) -> Vec<f32> {
    assert!(supports(ty) && isa.is_supported());
    assert!(k > 0 && k.is_multiple_of(SUPER));
    assert_eq!(x.len(), t * k);
    let row_bytes = k / SUPER * ty.block_bytes();
    assert_eq!(w.len(), n * row_bytes);
    let run = |acts: &Q8Activations| {
        let terms = Terms::new(ty, acts);
        // SAFETY: `product` writes every value of its block (every token block, every band of
        // rows) through raw copies and reads none.
        unsafe {
            split_columns_writing_all(n, t, rows_per_task(n, k), |rows, out| {
                let w = &w[rows.start * row_bytes..rows.end * row_bytes];
                with_panel(|panel| {
                    panel.unpack(isa, ty, w, rows.len(), k);
                    product(isa, ty, panel, rows.len(), acts, &terms, out)
                })
            })
        }
    };
    ACTS.with(|cell| match cell.try_borrow_mut() {
        Ok(mut acts) => {
            quantize_q8_k(x, k, &mut acts);
            run(&acts)
        }
        // Re-entered on this thread (a pool worker running a second product while it waits).
        Err(_) => {
            let mut acts = Q8Activations::default();
            quantize_q8_k(x, k, &mut acts);
            run(&acts)
        }
    })
}

/// Runs `f` on this thread's panel (a fresh one if the thread is already inside a product).
fn with_panel<R>(f: impl FnOnce(&mut Panel) -> R) -> R {
    PANEL.with(|cell| match cell.try_borrow_mut() {
        Ok(mut panel) => f(&mut panel),
        Err(_) => f(&mut Panel::default()),
    })
}

/// The panel's `rows` rows times every token, into `out`'s columns (each value written once,
/// by a raw copy, none read: see [`split_columns_writing_all`]): token blocks outside (their
/// activations stay in L1), the panel's bands inside (it stays in L2).
fn product(
    isa: Isa,
    ty: QuantType,
    panel: &Panel,
    rows: usize,
    acts: &Q8Activations,
    terms: &Terms,
    out: &mut ColumnBlock<'_>,
) {
    let (t, k) = (acts.rows(), acts.cols);
    let subs = k / sub_len(ty);
    let mut c = [0f32; TOKENS * BAND];
    for t0 in (0..t).step_by(TOKENS) {
        let tt = TOKENS.min(t - t0);
        for band in 0..rows.div_ceil(BAND) {
            let g = GROUPS * band;
            let view = BandView {
                k,
                levels: &panel.levels[g * GROUP * k..(g + GROUPS) * GROUP * k],
                scales: &panel.scales[g * GROUP * subs..(g + GROUPS) * GROUP * subs],
                biases: if ty == QuantType::Q6K {
                    &[]
                } else {
                    &panel.biases[g * GROUP * subs..(g + GROUPS) * GROUP * subs]
                },
                q: &acts.qs[t0 * k..(t0 + tt) * k],
                init: if ty == QuantType::Q6K {
                    &terms.init[t0 * subs..(t0 + tt) * subs]
                } else {
                    &[]
                },
                sums: if ty == QuantType::Q6K {
                    &[]
                } else {
                    &terms.sums[t0 * subs..(t0 + tt) * subs]
                },
                ascale: &acts.scales[t0 * (k / SUPER)..(t0 + tt) * (k / SUPER)],
            };
            c.fill(0.0);
            block(isa, ty, tt, &view, &mut c);
            let (r0, r1) = (band * BAND, ((band + 1) * BAND).min(rows));
            for (i, ci) in c.chunks_exact(BAND).take(tt).enumerate() {
                let (dst, width) = out.token_row_ptr(t0 + i);
                assert!(r1 <= width);
                // SAFETY: columns r0..r1 of the row lie inside its block (asserted); a raw copy,
                // as the output is not initialised before this write.
                unsafe { std::ptr::copy_nonoverlapping(ci.as_ptr(), dst.add(r0), r1 - r0) };
            }
        }
    }
}

/// One band of row groups of the panel and `tt` tokens' activations: what a microkernel reads.
struct BandView<'a> {
    k: usize,
    /// [GROUPS groups][K/4][16][4].
    levels: &'a [u8],
    /// [GROUPS groups][K/L][16].
    scales: &'a [f32],
    /// As `scales`, or empty.
    biases: &'a [f32],
    /// [tt][K] Q8_K levels.
    q: &'a [i8],
    /// [tt][K/L] (Q6_K), or empty.
    init: &'a [i32],
    /// [tt][K/L] (Q4_K), or empty.
    sums: &'a [f32],
    /// [tt][K/256].
    ascale: &'a [f32],
}

/// An AVX-512 microkernel: (the band and its tokens, c).
#[cfg(target_arch = "x86_64")]
type Microkernel = unsafe fn(&BandView<'_>, *mut f32);

/// c [tt tokens][BAND rows] += the band's products, on `isa`.
fn block(isa: Isa, ty: QuantType, tt: usize, v: &BandView<'_>, c: &mut [f32; TOKENS * BAND]) {
    debug_assert!((1..=TOKENS).contains(&tt));
    #[cfg(target_arch = "x86_64")]
    if isa >= Isa::Avx512 {
        macro_rules! pick {
            ($l:literal, $bias:literal) => {
                match tt {
                    1 => avx512::block::<1, $l, $bias> as Microkernel,
                    2 => avx512::block::<2, $l, $bias> as Microkernel,
                    3 => avx512::block::<3, $l, $bias> as Microkernel,
                    4 => avx512::block::<4, $l, $bias> as Microkernel,
                    _ => unreachable!("token blocks are at most TOKENS long"),
                }
            };
        }
        // The arms above cover tt = 1..=TOKENS.
        const { assert!(TOKENS == 4) };
        let kernel = if ty == QuantType::Q6K {
            pick!(16, false)
        } else {
            pick!(32, true)
        };
        // SAFETY: the CPU has AVX-512 F/BW and VNNI (the caller asserted `isa` is supported,
        // and every level from Avx512 up includes them); the view's slices hold the extents
        // the kernel reads, checked by `check_extents`.
        unsafe {
            check_extents(v, tt, sub_len(ty), ty == QuantType::Q4K);
            kernel(v, c.as_mut_ptr());
        }
        return;
    }
    let _ = isa;
    portable(ty, tt, v, c)
}

/// The slices a microkernel reads through raw pointers are as long as it reads.
fn check_extents(v: &BandView<'_>, tt: usize, l: usize, bias: bool) {
    let subs = v.k / l;
    assert!(v.k.is_multiple_of(SUPER));
    assert_eq!(v.levels.len(), BAND * v.k);
    assert_eq!(v.scales.len(), BAND * subs);
    assert_eq!(v.biases.len(), if bias { BAND * subs } else { 0 });
    assert_eq!(v.q.len(), tt * v.k);
    assert_eq!(v.init.len(), if bias { 0 } else { tt * subs });
    assert_eq!(v.sums.len(), if bias { tt * subs } else { 0 });
    assert_eq!(v.ascale.len(), tt * v.k / SUPER);
}

/// The panel arithmetic in plain Rust, in the microkernel's order of operations (a multiply
/// and an add where the microkernel fuses them).
fn portable(ty: QuantType, tt: usize, v: &BandView<'_>, c: &mut [f32; TOKENS * BAND]) {
    let (k, l) = (v.k, sub_len(ty));
    let subs = k / l;
    check_extents(v, tt, l, ty == QuantType::Q4K);
    for i in 0..tt {
        for r in 0..BAND {
            let (g, lane) = (r / GROUP, r % GROUP);
            for sb in 0..k / SUPER {
                let mut acc = 0f32;
                for j in sb * SUPER / l..(sb + 1) * SUPER / l {
                    let mut isum = v.init.get(i * subs + j).copied().unwrap_or(0);
                    for kk in j * l..(j + 1) * l {
                        let u = v.levels[g * GROUP * k + kk / 4 * 64 + lane * 4 + kk % 4];
                        isum += i32::from(u) * i32::from(v.q[i * k + kk]);
                    }
                    acc += isum as f32 * v.scales[g * GROUP * subs + j * GROUP + lane];
                    if !v.biases.is_empty() {
                        acc += v.biases[g * GROUP * subs + j * GROUP + lane] * v.sums[i * subs + j];
                    }
                }
                c[i * BAND + r] += acc * v.ascale[i * (k / SUPER) + sb];
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod avx512 {
    use super::{BandView, BAND, GROUP, GROUPS, SUPER};
    use std::arch::x86_64::*;

    /// The same 4-byte word of each of `lanes` rows' blocks, `row_bytes` apart, as one vector
    /// (a lane per row; lanes past `lanes` are 0): a column of the 16 × words transpose.
    #[inline(always)]
    unsafe fn column(src: *const u8, at: usize, offsets: __m512i, mask: __mmask16) -> __m512i {
        // SAFETY: the caller's extents (see levels_q4k).
        unsafe { _mm512_mask_i32gather_epi32::<1>(_mm512_setzero_si512(), mask, offsets, src.add(at).cast()) }
    }

    /// Lane offsets and mask for `lanes` rows `row_bytes` apart.
    #[inline(always)]
    unsafe fn lanes_of(row_bytes: usize, lanes: usize) -> (__m512i, __mmask16) {
        let stride = _mm512_set1_epi32(row_bytes as i32);
        let index = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
        let mask = if lanes >= GROUP {
            u16::MAX
        } else {
            (1u16 << lanes) - 1
        };
        (_mm512_mullo_epi32(index, stride), mask)
    }

    /// Words at..at + 16 (64 bytes from byte `at`) of each of `lanes` rows' blocks, transposed:
    /// out[c] holds word c of every row, lanes past `lanes` 0.
    ///
    /// # Safety
    /// 64 bytes readable at `src + at + r·row_bytes` for r < lanes.
    #[inline(always)]
    unsafe fn columns(src: *const u8, at: usize, row_bytes: usize, lanes: usize) -> [__m512i; 16] {
        let mut rows = [_mm512_setzero_si512(); 16];
        for (r, row) in rows.iter_mut().enumerate().take(lanes) {
            // SAFETY: the caller's extents.
            *row = unsafe { _mm512_loadu_si512(src.add(r * row_bytes + at).cast()) };
        }
        // SAFETY: register shuffles only (the caller's CPU has AVX-512 F).
        unsafe { crate::kernels::transpose::x86::transpose16(&rows) }
    }

    /// Q4_K levels of one block of `lanes` rows (the first at `src`, the others `row_bytes`
    /// apart) into `dst`, the block's [64 words][16 lanes][4 values]: the rows' 32 words of
    /// nibbles are transposed (a word of every row per vector) and each split into its low
    /// (value 64j + l) and high (64j + 32 + l) levels.
    ///
    /// # Safety
    /// AVX-512 F/BW; `lanes` ≤ 16 blocks of 144 bytes readable at `src + r·row_bytes`
    /// (row_bytes < 2³¹), 4096 bytes writable at `dst`.
    #[target_feature(enable = "avx512f,avx512bw")]
    pub unsafe fn levels_q4k(src: *const u8, row_bytes: usize, lanes: usize, dst: *mut u8) {
        // SAFETY (whole body): loads read the rows' qs (bytes 16..144), stores stay in dst's 4 KiB.
        unsafe {
            let nibble = _mm512_set1_epi32(0x0F0F_0F0F);
            for half in 0..2 {
                let words = columns(src, 16 + 64 * half, row_bytes, lanes);
                for (w, q) in words.iter().enumerate() {
                    // Word p = 16·half + w of qs: byte run j = p / 8, bytes 4i .. 4i + 4, i = p % 8.
                    let p = 16 * half + w;
                    let (j, i) = (p / 8, p % 8);
                    _mm512_storeu_si512(dst.add((16 * j + i) * 64).cast(), _mm512_and_si512(*q, nibble));
                    let high = _mm512_and_si512(_mm512_srli_epi32::<4>(*q), nibble);
                    _mm512_storeu_si512(dst.add((16 * j + 8 + i) * 64).cast(), high);
                }
            }
        }
    }

    /// Q4_K scales d·sc and offsets −dmin·m of one block of `lanes` rows (as [`levels_q4k`])
    /// into `scales` and `biases`, each [8 sub-blocks][16 lanes].
    ///
    /// # Safety
    /// As [`levels_q4k`], with 128 f32 writable at each of `scales` and `biases`.
    #[target_feature(enable = "avx512f,avx512bw")]
    pub unsafe fn scales_q4k(
        src: *const u8,
        row_bytes: usize,
        lanes: usize,
        scales: *mut f32,
        biases: *mut f32,
    ) {
        // SAFETY (whole body): gathers read the blocks' first 16 bytes; stores stay in the
        // 128 values of each output.
        unsafe {
            let (offsets, mask) = lanes_of(row_bytes, lanes);
            let dd = column(src, 0, offsets, mask);
            let d = _mm512_cvtph_ps(_mm512_cvtepi32_epi16(dd));
            let dmin = _mm512_cvtph_ps(_mm512_cvtepi32_epi16(_mm512_srli_epi32::<16>(dd)));
            // ggml's get_scale_min_k4 on the 12 bytes q[0..12], as three words per lane.
            let q = [
                column(src, 4, offsets, mask),
                column(src, 8, offsets, mask),
                column(src, 12, offsets, mask),
            ];
            let byte = |word: __m512i, i: u32| {
                _mm512_and_si512(
                    _mm512_srlv_epi32(word, _mm512_set1_epi32(8 * i as i32)),
                    _mm512_set1_epi32(0xFF),
                )
            };
            let six = _mm512_set1_epi32(63);
            let four = _mm512_set1_epi32(0xF);
            for j in 0..8u32 {
                let (sc, m) = if j < 4 {
                    (
                        _mm512_and_si512(byte(q[0], j), six),
                        _mm512_and_si512(byte(q[1], j), six),
                    )
                } else {
                    let (lo, top_s, top_m) = (byte(q[2], j - 4), byte(q[0], j - 4), byte(q[1], j - 4));
                    (
                        _mm512_or_si512(
                            _mm512_and_si512(lo, four),
                            _mm512_slli_epi32::<4>(_mm512_srli_epi32::<6>(top_s)),
                        ),
                        _mm512_or_si512(
                            _mm512_srli_epi32::<4>(lo),
                            _mm512_slli_epi32::<4>(_mm512_srli_epi32::<6>(top_m)),
                        ),
                    )
                };
                let at = j as usize * GROUP;
                _mm512_storeu_ps(scales.add(at), _mm512_mul_ps(d, _mm512_cvtepi32_ps(sc)));
                let offset = _mm512_mul_ps(dmin, _mm512_cvtepi32_ps(m));
                // −(dmin·m) by its sign bit, as the scalar unpack negates (−0 where m is 0).
                let negated = _mm512_xor_si512(_mm512_castps_si512(offset), _mm512_set1_epi32(i32::MIN));
                _mm512_storeu_ps(biases.add(at), _mm512_castsi512_ps(negated));
            }
        }
    }

    /// Q6_K scales d·sc of one block of `lanes` rows into `scales`, [16 sub-blocks][16 lanes].
    ///
    /// # Safety
    /// As [`levels_q6k`], with 256 f32 writable at `scales`.
    #[target_feature(enable = "avx512f,avx512bw")]
    pub unsafe fn scales_q6k(src: *const u8, row_bytes: usize, lanes: usize, scales: *mut f32) {
        // SAFETY (whole body): gathers read bytes 192..210 of each block (d is the top half of
        // the word at 206, so nothing past the block is read); stores stay in the 256 values.
        unsafe {
            let (offsets, mask) = lanes_of(row_bytes, lanes);
            let d = _mm512_cvtph_ps(_mm512_cvtepi32_epi16(_mm512_srli_epi32::<16>(column(
                src, 206, offsets, mask,
            ))));
            for w in 0..4 {
                let word = column(src, 192 + 4 * w, offsets, mask);
                for i in 0..4 {
                    // Byte i of the word, sign-extended (the scales are i8).
                    let sc = _mm512_srai_epi32::<24>(_mm512_sllv_epi32(word, _mm512_set1_epi32(24 - 8 * i)));
                    let at = (4 * w + i as usize) * GROUP;
                    _mm512_storeu_ps(scales.add(at), _mm512_mul_ps(d, _mm512_cvtepi32_ps(sc)));
                }
            }
        }
    }

    /// [`levels_q4k`] for Q6_K (210-byte blocks): value 128n + 32i + l is a nibble of ql with
    /// two bits of qh above it.
    ///
    /// # Safety
    /// As [`levels_q4k`], with 210-byte blocks.
    #[target_feature(enable = "avx512f,avx512bw")]
    pub unsafe fn levels_q6k(src: *const u8, row_bytes: usize, lanes: usize, dst: *mut u8) {
        // SAFETY (whole body): loads read the rows' ql and qh (bytes 0..192), stores stay in
        // dst's 4 KiB.
        unsafe {
            let nibble = _mm512_set1_epi32(0x0F0F_0F0F);
            let two = _mm512_set1_epi32(0x0303_0303);
            let ql = [
                columns(src, 0, row_bytes, lanes),
                columns(src, 64, row_bytes, lanes),
            ];
            let qh = columns(src, 128, row_bytes, lanes);
            for n in 0..2 {
                for l4 in 0..8 {
                    // ql bytes 64n + 4·l4 and 64n + 32 + 4·l4, qh bytes 32n + 4·l4.
                    let (a, c, h) = (ql[n][l4], ql[n][8 + l4], qh[8 * n + l4]);
                    let high = |shift: u32| {
                        let bits = match shift {
                            0 => h,
                            2 => _mm512_srli_epi32::<2>(h),
                            4 => _mm512_srli_epi32::<4>(h),
                            _ => _mm512_srli_epi32::<6>(h),
                        };
                        _mm512_slli_epi32::<4>(_mm512_and_si512(bits, two))
                    };
                    let words = [
                        _mm512_or_si512(_mm512_and_si512(a, nibble), high(0)),
                        _mm512_or_si512(_mm512_and_si512(c, nibble), high(2)),
                        _mm512_or_si512(_mm512_and_si512(_mm512_srli_epi32::<4>(a), nibble), high(4)),
                        _mm512_or_si512(_mm512_and_si512(_mm512_srli_epi32::<4>(c), nibble), high(6)),
                    ];
                    for (i, v) in words.iter().enumerate() {
                        _mm512_storeu_si512(dst.add((32 * n + 8 * i + l4) * 64).cast(), *v);
                    }
                }
            }
        }
    }

    /// c [TT][BAND] += the products of TT tokens with a band of row groups, over all of K.
    ///
    /// Registers: TT × GROUPS integer sums for the current sub-block, TT × GROUPS f32 sums for
    /// the current super-block (scaled by the token's activation scale into c at its end), the
    /// band's level vectors.
    ///
    /// # Safety
    /// The CPU must have AVX-512 F/BW and VNNI, and the view's slices must have the extents
    /// [`super::check_extents`] asserts for (TT, L, BIAS); c must hold TT × BAND values.
    #[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
    pub unsafe fn block<const TT: usize, const L: usize, const BIAS: bool>(v: &BandView<'_>, c: *mut f32) {
        let k = v.k;
        let subs = k / L;
        let (levels, scales, biases) = (v.levels.as_ptr(), v.scales.as_ptr(), v.biases.as_ptr());
        let (q, init, sums, ascale) = (v.q.as_ptr(), v.init.as_ptr(), v.sums.as_ptr(), v.ascale.as_ptr());
        // SAFETY (whole body): every offset below stays inside the extents the caller
        // guarantees: sub-block j < K/L, value index < K, token < TT, group < 2.
        unsafe {
            for sb in 0..k / SUPER {
                let mut acc = [[_mm512_setzero_ps(); GROUPS]; TT];
                for j in sb * SUPER / L..(sb + 1) * SUPER / L {
                    let mut isum = [[_mm512_setzero_si512(); GROUPS]; TT];
                    for (i, s) in isum.iter_mut().enumerate() {
                        // Q4_K's sums start at 0; Q6_K's at its offset's share.
                        let start = if BIAS { 0 } else { *init.add(i * subs + j) };
                        *s = [_mm512_set1_epi32(start); GROUPS];
                    }
                    for step in j * L / 4..(j + 1) * L / 4 {
                        let mut w = [_mm512_setzero_si512(); GROUPS];
                        for (g, w) in w.iter_mut().enumerate() {
                            *w = _mm512_loadu_si512(levels.add(g * GROUP * k + step * 64).cast());
                        }
                        for (i, s) in isum.iter_mut().enumerate() {
                            let a = _mm512_set1_epi32(q.add(i * k + step * 4).cast::<i32>().read_unaligned());
                            for (s, &w) in s.iter_mut().zip(&w) {
                                *s = _mm512_dpbusd_epi32(*s, w, a);
                            }
                        }
                    }
                    for g in 0..GROUPS {
                        let scale = _mm512_loadu_ps(scales.add(g * GROUP * subs + j * GROUP));
                        for (a, s) in acc.iter_mut().zip(&isum) {
                            a[g] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(s[g]), scale, a[g]);
                        }
                    }
                    if BIAS {
                        for g in 0..GROUPS {
                            let bias = _mm512_loadu_ps(biases.add(g * GROUP * subs + j * GROUP));
                            for (i, a) in acc.iter_mut().enumerate() {
                                a[g] = _mm512_fmadd_ps(bias, _mm512_set1_ps(*sums.add(i * subs + j)), a[g]);
                            }
                        }
                    }
                }
                for (i, a) in acc.iter().enumerate() {
                    let sa = _mm512_set1_ps(*ascale.add(i * (k / SUPER) + sb));
                    for (g, v) in a.iter().enumerate() {
                        let at = c.add(i * BAND + g * GROUP);
                        _mm512_storeu_ps(at, _mm512_fmadd_ps(*v, sa, _mm512_loadu_ps(at)));
                    }
                }
            }
        }
    }
}

fn f16_at(b: &[u8], at: usize) -> f32 {
    f16::from_le_bytes([b[at], b[at + 1]]).to_f32()
}
