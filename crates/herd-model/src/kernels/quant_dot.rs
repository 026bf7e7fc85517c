//! Dot products of ggml block-quantized weight rows (Q8_0, Q4_0's successors Q4_1, Q5_0 and
//! Q5_1, Q4_K, Q6_K, IQ4_NL, IQ4_XS) with 8-bit activations
//! ([`Q8Activations`]), in integers, as llama.cpp computes them: the weight's levels are
//! unsigned bytes (Q4_K: 0..15, Q6_K: 0..63 with the −32 offset folded in through the
//! activations' 16-value sums; Q8_0: |w| with the sign moved onto the activation), so one
//! `vpdpbusd` (AVX-512 VNNI) or `vpmaddubsw` + `vpmaddwd` (AVX2) multiplies 32 pairs at once.
//!
//! Three builds of every kernel: [`Isa::Avx512`], [`Isa::Avx2`] and [`Isa::Portable`] (plain
//! Rust); the integer sums are exact in all three, so they differ only in the order of the f32
//! sums of blocks. The twin tests hold each to [`dot_rows_slow`], which dequantizes both sides to
//! f32.
//!
//! Block layouts (ggml's, little-endian):
//! - Q8_0 (34 B / 32 values): f16 d, i8 qs[32]; w = d·q.
//! - Q4_K (144 B / 256): f16 d, f16 dmin, scales[12] (eight 6-bit scale/min pairs), qs[128]
//!   (byte l of 32-byte group j holds value 64j+l in its low nibble, 64j+32+l in its high);
//!   w = d·sc·q − dmin·m per 32 values.
//! - Q6_K (210 B / 256): ql[128], qh[64], i8 scales[16], f16 d; per 128-value half n, value
//!   128n+32i+l (i = 0..4, l = 0..32) is ql's nibble | two bits of qh[32n+l] << 4, minus 32;
//!   w = d·sc·q per 16 values.
//! - Q5_0 (22 B / 32): f16 d, u32 qh, qs[16]; value l (l < 16) is qs[l]'s low nibble, value
//!   16+l its high one, each with bit l (16+l) of qh as its fifth bit; w = d·(q − 16).
//! - Q4_1 (20 B / 32): f16 d, f16 m, qs[16] (nibbles as Q5_0's); w = d·q + m.
//! - Q5_1 (24 B / 32): f16 d, f16 m, u32 qh, qs[16] (as Q5_0's); w = d·q + m.
//!
//! - IQ4_NL, IQ4_XS: see [`crate::weights::iquant`]. Their levels are signed (−127..113), so
//!   they take Q8_0's sign trick after a table lookup (`vpshufb`); IQ4_XS takes Q8_K
//!   activations, IQ4_NL Q8_0 ones, as in llama.cpp.
//!
//! The legacy formats take Q8_0 activations (llama.cpp gives Q4_1 and Q5_1 Q8_1, whose levels
//! and scale are Q8_0's; its extra field, d·Σq rounded to f16, is computed here in f32 from the
//! levels).

use half::f16;

use super::isa::Isa;
use super::q8_activations::Q8Activations;
use crate::weights::{iquant, QuantType};

/// The formats these kernels compute (the others go through candle's k_quants).
pub fn supports(ty: QuantType) -> bool {
    matches!(
        ty,
        QuantType::Q8_0
            | QuantType::Q4_1
            | QuantType::Q5_0
            | QuantType::Q5_1
            | QuantType::Q4K
            | QuantType::Q6K
            | QuantType::Iq4Nl
            | QuantType::Iq4Xs
    )
}

/// Whether `ty` takes Q8_K activations (256-value blocks) rather than Q8_0.
pub fn uses_q8_k(ty: QuantType) -> bool {
    matches!(
        ty,
        QuantType::Q4K | QuantType::Q5K | QuantType::Q6K | QuantType::Iq4Xs
    )
}

/// `out[r·T + i] = w_r · a_i` for every weight row r of `w` (whole rows of `acts.cols` values
/// in format `ty`) and every activation row i of `acts` (T rows).
///
/// # Panics
/// If the lengths disagree or `isa` is not supported by this CPU (callers check both; an
/// unsupported ISA would otherwise execute illegal instructions).
pub fn dot_rows(isa: Isa, ty: QuantType, w: &[u8], acts: &Q8Activations, out: &mut [f32]) {
    let t = acts.rows();
    let row_bytes = acts.cols / ty.block_len() * ty.block_bytes();
    let rows = w.len() / row_bytes.max(1);
    assert!(supports(ty) && isa.is_supported());
    assert_eq!(acts.block, if uses_q8_k(ty) { 256 } else { 32 });
    // The kernels read exactly these extents (the fields are public, so a hand-built buffer
    // must not reach them short).
    assert!(acts.cols > 0 && acts.cols.is_multiple_of(acts.block));
    assert_eq!(acts.qs.len(), t * acts.cols);
    assert_eq!(acts.scales.len(), acts.qs.len() / acts.block);
    if uses_q8_k(ty) {
        assert_eq!(acts.sums16.len(), acts.qs.len() / 16);
    }
    assert_eq!(w.len(), rows * row_bytes);
    assert_eq!(out.len(), rows * t);
    match isa {
        Isa::Portable => portable::dot_rows(ty, w, row_bytes, acts, out),
        #[cfg(target_arch = "x86_64")]
        // SAFETY: the CPU supports the ISA (asserted above) and the lengths agree (asserted).
        Isa::Avx2 => unsafe { avx2::dot_rows(ty, w, row_bytes, acts, out) },
        #[cfg(target_arch = "x86_64")]
        // SAFETY: as above.
        Isa::Avx512 | Isa::Avx512Bf16 | Isa::Amx => unsafe { avx512::dot_rows(ty, w, row_bytes, acts, out) },
        #[cfg(not(target_arch = "x86_64"))]
        _ => portable::dot_rows(ty, w, row_bytes, acts, out),
    }
}

/// The slow twin: both sides dequantized to f32, then one f32 dot per pair.
pub fn dot_rows_slow(ty: QuantType, w: &[u8], acts: &Q8Activations, out: &mut [f32]) {
    let t = acts.rows();
    let row_bytes = acts.cols / ty.block_len() * ty.block_bytes();
    let a: Vec<f32> = acts
        .qs
        .iter()
        .enumerate()
        .map(|(i, &q)| f32::from(q) * acts.scales[i / acts.block])
        .collect();
    for (r, w_row) in w.chunks_exact(row_bytes).enumerate() {
        let wf = dequantize_row(ty, w_row);
        for i in 0..t {
            let ai = &a[i * acts.cols..(i + 1) * acts.cols];
            out[r * t + i] = wf.iter().zip(ai).map(|(x, y)| x * y).sum();
        }
    }
}

/// One weight row in f32, from the block layouts above (the slow twin's reading of them).
pub fn dequantize_row(ty: QuantType, row: &[u8]) -> Vec<f32> {
    let mut out = Vec::new();
    for blk in row.chunks_exact(ty.block_bytes()) {
        match ty {
            QuantType::Q8_0 => {
                let d = f16_at(blk, 0);
                out.extend(blk[2..34].iter().map(|&q| d * f32::from(q as i8)));
            }
            QuantType::Q4K => {
                let (d, dmin) = (f16_at(blk, 0), f16_at(blk, 2));
                let (sc, m) = scales_mins_k4(&blk[4..16]);
                let qs = &blk[16..144];
                for j in 0..4 {
                    let group = &qs[32 * j..32 * j + 32];
                    let (s_lo, m_lo) = (d * f32::from(sc[2 * j]), dmin * f32::from(m[2 * j]));
                    out.extend(group.iter().map(|&q| s_lo * f32::from(q & 0xF) - m_lo));
                    let (s_hi, m_hi) = (d * f32::from(sc[2 * j + 1]), dmin * f32::from(m[2 * j + 1]));
                    out.extend(group.iter().map(|&q| s_hi * f32::from(q >> 4) - m_hi));
                }
            }
            QuantType::Q6K => {
                let d = f16_at(blk, 208);
                let mut vals = [0f32; 256];
                for (v, slot) in vals.iter_mut().enumerate() {
                    let q = i32::from(q6_level(blk, v)) - 32;
                    *slot = d * f32::from(blk[192 + v / 16] as i8) * q as f32;
                }
                out.extend(vals);
            }
            QuantType::Q5_0 | QuantType::Q4_1 | QuantType::Q5_1 => {
                let (d, m) = legacy_scale_min(ty, blk);
                out.extend(legacy_levels(ty, blk).map(|q| d * q as f32 + m));
            }
            QuantType::Iq4Nl | QuantType::Iq4Xs => {
                let mut vals = vec![0f32; ty.block_len()];
                iquant::dequantize(ty, blk, &mut vals);
                out.extend(vals);
            }
            other => unreachable!("no herd kernel for {other}"),
        }
    }
    out
}

/// The 32 levels of a Q5_0 / Q4_1 / Q5_1 block, Q5_0's offset applied (−16..15; the others
/// 0..15 and 0..31).
fn legacy_levels(ty: QuantType, blk: &[u8]) -> [i32; 32] {
    let (qh, qs) = match ty {
        QuantType::Q5_0 => (Some(&blk[2..6]), &blk[6..22]),
        QuantType::Q4_1 => (None, &blk[4..20]),
        _ => (Some(&blk[4..8]), &blk[8..24]),
    };
    let qh = qh.map_or(0, |b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]));
    let offset = if ty == QuantType::Q5_0 { 16 } else { 0 };
    let fifth = |v: usize| if qh >> v & 1 == 1 { 16 } else { 0 };
    std::array::from_fn(|v| {
        let nibble = if v < 16 { qs[v] & 0xF } else { qs[v - 16] >> 4 };
        i32::from(nibble) + fifth(v) - offset
    })
}

/// (d, m) of a Q5_0 / Q4_1 / Q5_1 block (Q5_0 has no m).
fn legacy_scale_min(ty: QuantType, blk: &[u8]) -> (f32, f32) {
    match ty {
        QuantType::Q5_0 => (f16_at(blk, 0), 0.0),
        _ => (f16_at(blk, 0), f16_at(blk, 2)),
    }
}

/// Q6_K level (0..63, before the −32 offset) of value `v` of a block.
fn q6_level(blk: &[u8], v: usize) -> u8 {
    let (n, rest) = (v / 128, v % 128);
    let (i, l) = (rest / 32, rest % 32);
    let ql = blk[64 * n + 32 * (i % 2) + l];
    let nibble = if i < 2 { ql & 0xF } else { ql >> 4 };
    let high = (blk[128 + 32 * n + l] >> (2 * i)) & 3;
    nibble | (high << 4)
}

fn f16_at(b: &[u8], at: usize) -> f32 {
    f16::from_le_bytes([b[at], b[at + 1]]).to_f32()
}

/// ggml's `get_scale_min_k4` for all eight sub-blocks: (scales, mins), 6 bits each.
pub(crate) fn scales_mins_k4(q: &[u8]) -> ([u8; 8], [u8; 8]) {
    let (mut sc, mut m) = ([0u8; 8], [0u8; 8]);
    for j in 0..8 {
        if j < 4 {
            sc[j] = q[j] & 63;
            m[j] = q[j + 4] & 63;
        } else {
            sc[j] = (q[j + 4] & 0xF) | ((q[j - 4] >> 6) << 4);
            m[j] = (q[j + 4] >> 4) | ((q[j] >> 6) << 4);
        }
    }
    (sc, m)
}

/// Σ over the eight 32-value sub-blocks of min · (sum of the activations there): the part of a
/// Q4_K dot that the minimums contribute (subtracted, times dmin).
fn q4k_min_sum(m: &[u8; 8], sums16: &[i16]) -> i32 {
    (0..8)
        .map(|j| i32::from(m[j]) * (i32::from(sums16[2 * j]) + i32::from(sums16[2 * j + 1])))
        .sum()
}

/// Σ over the sixteen 16-value groups of scale · (sum of the activations there): the Q6_K
/// offset's share (times −32).
fn q6k_offset_sum(scales: &[u8], sums16: &[i16]) -> i32 {
    (0..16)
        .map(|g| i32::from(scales[g] as i8) * i32::from(sums16[g]))
        .sum()
}

mod portable {
    use super::*;

    pub fn dot_rows(ty: QuantType, w: &[u8], row_bytes: usize, acts: &Q8Activations, out: &mut [f32]) {
        let t = acts.rows();
        for (r, w_row) in w.chunks_exact(row_bytes).enumerate() {
            for i in 0..t {
                let (ad, aq, asum) = acts.row(i);
                out[r * t + i] = match ty {
                    QuantType::Q8_0 => dot_q8_0(w_row, ad, aq),
                    QuantType::Q4K => dot_q4k(w_row, ad, aq, asum),
                    QuantType::Q6K => dot_q6k(w_row, ad, aq, asum),
                    QuantType::Q5_0 | QuantType::Q4_1 | QuantType::Q5_1 => dot_legacy(ty, w_row, ad, aq),
                    QuantType::Iq4Nl => dot_iq4_nl(w_row, ad, aq),
                    QuantType::Iq4Xs => dot_iq4_xs(w_row, ad, aq),
                    other => unreachable!("no herd kernel for {other}"),
                };
            }
        }
    }

    fn dot_iq4_nl(w: &[u8], ad: &[f32], aq: &[i8]) -> f32 {
        let mut acc = 0f32;
        for ((blk, &a_d), y) in w.chunks_exact(18).zip(ad).zip(aq.chunks_exact(32)) {
            let sumi: i32 = iquant::levels_32(&blk[2..18])
                .iter()
                .zip(y)
                .map(|(&q, &y)| i32::from(q) * i32::from(y))
                .sum();
            acc += a_d * iquant::f16_at(blk, 0) * sumi as f32;
        }
        acc
    }

    /// d·d_a·Σ_j (ls_j − 32)·Σ q·y over the eight sub-blocks, the sums in integers.
    fn dot_iq4_xs(w: &[u8], ad: &[f32], aq: &[i8]) -> f32 {
        let mut acc = 0f32;
        for ((blk, &a_d), y) in w.chunks_exact(136).zip(ad).zip(aq.chunks_exact(256)) {
            let scales = iquant::xs_scales(blk);
            let mut sumi = 0i32;
            for (j, (sub, y)) in blk[8..136].chunks_exact(16).zip(y.chunks_exact(32)).enumerate() {
                let s: i32 = iquant::levels_32(sub)
                    .iter()
                    .zip(y)
                    .map(|(&q, &y)| i32::from(q) * i32::from(y))
                    .sum();
                sumi += (i32::from(scales[j]) - 32) * s;
            }
            acc += a_d * iquant::f16_at(blk, 0) * sumi as f32;
        }
        acc
    }

    /// d·d_a·Σ q·y + m·d_a·Σ y per block, the sums in integers.
    fn dot_legacy(ty: QuantType, w: &[u8], ad: &[f32], aq: &[i8]) -> f32 {
        let mut acc = 0f32;
        for ((blk, &a_d), y) in w.chunks_exact(ty.block_bytes()).zip(ad).zip(aq.chunks_exact(32)) {
            let q = legacy_levels(ty, blk);
            let sumi: i32 = q.iter().zip(y).map(|(&q, &y)| q * i32::from(y)).sum();
            let sumy: i32 = y.iter().map(|&y| i32::from(y)).sum();
            let (d, m) = legacy_scale_min(ty, blk);
            acc += a_d * (d * sumi as f32 + m * sumy as f32);
        }
        acc
    }

    fn dot_q8_0(w: &[u8], ad: &[f32], aq: &[i8]) -> f32 {
        let mut acc = 0f32;
        for ((blk, d), y) in w.chunks_exact(34).zip(ad).zip(aq.chunks_exact(32)) {
            let sumi: i32 = blk[2..34]
                .iter()
                .zip(y)
                .map(|(&q, &y)| i32::from(q as i8) * i32::from(y))
                .sum();
            acc += f16_at(blk, 0) * d * sumi as f32;
        }
        acc
    }

    fn dot_q4k(w: &[u8], ad: &[f32], aq: &[i8], asum: &[i16]) -> f32 {
        let mut acc = 0f32;
        for (b, blk) in w.chunks_exact(144).enumerate() {
            let (sc, m) = scales_mins_k4(&blk[4..16]);
            let y = &aq[256 * b..256 * b + 256];
            let qs = &blk[16..144];
            let mut sumi = 0i32;
            for j in 0..4 {
                let (mut lo, mut hi) = (0i32, 0i32);
                for l in 0..32 {
                    let q = qs[32 * j + l];
                    lo += i32::from(q & 0xF) * i32::from(y[64 * j + l]);
                    hi += i32::from(q >> 4) * i32::from(y[64 * j + 32 + l]);
                }
                sumi += i32::from(sc[2 * j]) * lo + i32::from(sc[2 * j + 1]) * hi;
            }
            let summ = q4k_min_sum(&m, &asum[16 * b..16 * b + 16]);
            acc += ad[b] * (f16_at(blk, 0) * sumi as f32 - f16_at(blk, 2) * summ as f32);
        }
        acc
    }

    fn dot_q6k(w: &[u8], ad: &[f32], aq: &[i8], asum: &[i16]) -> f32 {
        let mut acc = 0f32;
        for (b, blk) in w.chunks_exact(210).enumerate() {
            let y = &aq[256 * b..256 * b + 256];
            let scales = &blk[192..208];
            let mut group = [0i32; 16];
            for (v, &yv) in y.iter().enumerate() {
                group[v / 16] += i32::from(q6_level(blk, v)) * i32::from(yv);
            }
            let sumi: i32 = (0..16).map(|g| i32::from(scales[g] as i8) * group[g]).sum();
            let offset = 32 * q6k_offset_sum(scales, &asum[16 * b..16 * b + 16]);
            acc += ad[b] * f16_at(blk, 208) * (sumi - offset) as f32;
        }
        acc
    }
}

/// How far ahead of the block being computed its row's bytes are requested. The hardware
/// prefetcher alone keeps too few lines in flight for one core to stream at the memory's rate.
/// Requested into L2 (not L1, whose few miss buffers the demand loads need) 8 KiB ahead: on Zen 4
/// (`kernel_speed`, 2 threads, 128–268 MB matrices, best of 4 interleaved) bf16 rose from
/// 25.8 GB/s (L1, 2 KiB ahead, the previous setting) to 42, Q6_K from 30.7 to 34.7, and Q8_0
/// and Q4_K (whose kernels are bound by arithmetic at 2 threads) stayed level.
#[cfg(target_arch = "x86_64")]
pub(crate) const PREFETCH_BYTES: usize = 8192;

/// Requests the cache lines `[p, p + len)` ahead of use. A hint: addresses past the end of the
/// data are never dereferenced and cannot fault.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
pub(crate) fn prefetch(p: *const u8, len: usize) {
    use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T1};
    let mut off = 0;
    while off < len {
        // SAFETY: prefetch is a hint; it never dereferences its address in a way that faults,
        // and `wrapping_add` keeps the pointer arithmetic defined.
        unsafe { _mm_prefetch::<_MM_HINT_T1>(p.wrapping_add(off).cast()) };
        off += 64;
    }
}

/// ggml's 12-byte Q4_K scale field unpacked with word operations (its AVX2 kernels' trick):
/// bytes 0..8 are the eight 6-bit scales, bytes 8..16 the eight mins.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
fn unpack_q4k_scales(q: &[u8]) -> [u32; 4] {
    const KMASK1: u32 = 0x3f3f_3f3f;
    const KMASK2: u32 = 0x0f0f_0f0f;
    const KMASK3: u32 = 0x0303_0303;
    let word = |i: usize| u32::from_le_bytes([q[4 * i], q[4 * i + 1], q[4 * i + 2], q[4 * i + 3]]);
    let (u0, u1, u2) = (word(0), word(1), word(2));
    [
        u0 & KMASK1,
        (u2 & KMASK2) | (((u0 >> 6) & KMASK3) << 4),
        u1 & KMASK1,
        ((u2 >> 4) & KMASK2) | (((u1 >> 6) & KMASK3) << 4),
    ]
}

/// Each x86 module's `dot_rows`: every weight row against every activation row, through that
/// module's `dot_q8_0` / `dot_q4k` / `dot_q6k`, compiled with `$features` so they inline.
#[cfg(target_arch = "x86_64")]
macro_rules! dot_rows_on {
    ($features:literal) => {
        #[target_feature(enable = $features)]
        pub unsafe fn dot_rows(
            ty: QuantType,
            w: &[u8],
            row_bytes: usize,
            acts: &Q8Activations,
            out: &mut [f32],
        ) {
            let t = acts.rows();
            for (r, w_row) in w.chunks_exact(row_bytes).enumerate() {
                for i in 0..t {
                    let (ad, aq, asum) = acts.row(i);
                    out[r * t + i] = match ty {
                        QuantType::Q8_0 => dot_q8_0(w_row, ad, aq),
                        QuantType::Q4K => dot_q4k(w_row, ad, aq, asum),
                        QuantType::Q6K => dot_q6k(w_row, ad, aq, asum),
                        QuantType::Q5_0 => dot_q5_0(w_row, ad, aq),
                        QuantType::Q4_1 => dot_q4_1(w_row, ad, aq),
                        QuantType::Q5_1 => dot_q5_1(w_row, ad, aq),
                        QuantType::Iq4Nl => dot_iq4_nl(w_row, ad, aq),
                        QuantType::Iq4Xs => dot_iq4_xs(w_row, ad, aq),
                        other => unreachable!("no herd kernel for {other}"),
                    };
                }
            }
        }
    };
}

/// AVX2: 256-bit, `vpmaddubsw` (u8 × i8 pairs to i16) then `vpmaddwd` against the sub-block
/// scales (pairs to i32, scaled in the same instruction).
#[cfg(target_arch = "x86_64")]
mod avx2 {
    use std::arch::x86_64::*;

    use super::*;

    dot_rows_on!("avx2,fma,f16c");

    #[target_feature(enable = "avx2,fma,f16c")]
    #[inline]
    pub(super) unsafe fn hsum(v: __m256) -> f32 {
        let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
        let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
        let s = _mm_add_ss(s, _mm_shuffle_ps(s, s, 1));
        _mm_cvtss_f32(s)
    }

    #[target_feature(enable = "avx2,fma,f16c")]
    #[inline]
    pub(super) unsafe fn f16_load(p: *const u8) -> f32 {
        _mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtsi32_si128(i32::from(
            p.cast::<u16>().read_unaligned(),
        ))))
    }

    /// One Q8_0 block: Σ q·y as i32 lanes (|q| with q's sign moved onto y, so u8 × i8).
    #[target_feature(enable = "avx2,fma,f16c")]
    #[inline]
    pub(super) unsafe fn q8_0_block(q: __m256i, y: __m256i) -> __m256i {
        let pairs = _mm256_maddubs_epi16(_mm256_sign_epi8(q, q), _mm256_sign_epi8(y, q));
        _mm256_madd_epi16(pairs, _mm256_set1_epi16(1))
    }

    #[target_feature(enable = "avx2,fma,f16c")]
    #[inline]
    pub(super) unsafe fn dot_q8_0(w: &[u8], ad: &[f32], aq: &[i8]) -> f32 {
        let mut acc = _mm256_setzero_ps();
        let (wp, yp) = (w.as_ptr(), aq.as_ptr());
        for (b, &a_d) in ad.iter().enumerate() {
            let blk = wp.add(34 * b);
            prefetch(blk.wrapping_add(PREFETCH_BYTES), 34);
            let q = _mm256_loadu_si256(blk.add(2).cast());
            let y = _mm256_loadu_si256(yp.add(32 * b).cast());
            let p = q8_0_block(q, y);
            acc = _mm256_fmadd_ps(_mm256_cvtepi32_ps(p), _mm256_set1_ps(f16_load(blk) * a_d), acc);
        }
        hsum(acc)
    }

    /// A legacy block's 16 nibble bytes as 32 levels in value order: low nibbles, then high.
    #[target_feature(enable = "avx2,fma,f16c")]
    #[inline]
    unsafe fn nibbles_32(qs: *const u8) -> __m256i {
        let q = _mm_loadu_si128(qs.cast());
        let low = _mm_set1_epi8(0x0F);
        _mm256_set_m128i(_mm_and_si128(_mm_srli_epi16(q, 4), low), _mm_and_si128(q, low))
    }

    /// The 32 bits of `qh` as 32 bytes, 0xFF where the bit is set (ggml's `bytes_from_bits_32`).
    #[target_feature(enable = "avx2,fma,f16c")]
    #[inline]
    unsafe fn bits_32(qh: *const u8) -> __m256i {
        let x = qh.cast::<i32>().read_unaligned();
        let shuffle = _mm256_set_epi64x(
            0x0303_0303_0303_0303,
            0x0202_0202_0202_0202,
            0x0101_0101_0101_0101,
            0,
        );
        let bytes = _mm256_shuffle_epi8(_mm256_set1_epi32(x), shuffle);
        let others = _mm256_set1_epi64x(0x7fbf_dfef_f7fb_fdfe);
        _mm256_cmpeq_epi8(_mm256_or_si256(bytes, others), _mm256_set1_epi64x(-1))
    }

    /// Q5_0: the fifth bit clear means −16 on the nibble, so OR-ing 0xF0 into those bytes gives
    /// the signed level q − 16, and the block is a Q8_0 one.
    #[target_feature(enable = "avx2,fma,f16c")]
    #[inline]
    pub(super) unsafe fn dot_q5_0(w: &[u8], ad: &[f32], aq: &[i8]) -> f32 {
        let mut acc = _mm256_setzero_ps();
        let (wp, yp) = (w.as_ptr(), aq.as_ptr());
        for (b, &a_d) in ad.iter().enumerate() {
            let blk = wp.add(22 * b);
            prefetch(blk.wrapping_add(PREFETCH_BYTES), 22);
            let high = _mm256_andnot_si256(bits_32(blk.add(2)), _mm256_set1_epi8(0xF0u8 as i8));
            let q = _mm256_or_si256(nibbles_32(blk.add(6)), high);
            let p = q8_0_block(q, _mm256_loadu_si256(yp.add(32 * b).cast()));
            acc = _mm256_fmadd_ps(_mm256_cvtepi32_ps(p), _mm256_set1_ps(f16_load(blk) * a_d), acc);
        }
        hsum(acc)
    }

    /// Q4_1 / Q5_1 (unsigned levels, `qh` at `fifth`, nibbles at `qs`, `bytes` a block):
    /// d·d_a·Σ q·y + m·d_a·Σ y.
    #[target_feature(enable = "avx2,fma,f16c")]
    #[inline]
    unsafe fn dot_offset_blocks(
        w: &[u8],
        ad: &[f32],
        aq: &[i8],
        bytes: usize,
        fifth: Option<usize>,
        qs: usize,
    ) -> f32 {
        let mut acc = _mm256_setzero_ps();
        let mut acc_m = _mm256_setzero_ps();
        let ones16 = _mm256_set1_epi16(1);
        let ones8 = _mm256_set1_epi8(1);
        let (wp, yp) = (w.as_ptr(), aq.as_ptr());
        for (b, &a_d) in ad.iter().enumerate() {
            let blk = wp.add(bytes * b);
            prefetch(blk.wrapping_add(PREFETCH_BYTES), bytes);
            let mut q = nibbles_32(blk.add(qs));
            if let Some(at) = fifth {
                q = _mm256_or_si256(q, _mm256_and_si256(bits_32(blk.add(at)), _mm256_set1_epi8(0x10)));
            }
            let y = _mm256_loadu_si256(yp.add(32 * b).cast());
            let sumi = _mm256_madd_epi16(_mm256_maddubs_epi16(q, y), ones16);
            let sumy = _mm256_madd_epi16(_mm256_maddubs_epi16(ones8, y), ones16);
            acc = _mm256_fmadd_ps(_mm256_cvtepi32_ps(sumi), _mm256_set1_ps(f16_load(blk) * a_d), acc);
            acc_m = _mm256_fmadd_ps(
                _mm256_cvtepi32_ps(sumy),
                _mm256_set1_ps(f16_load(blk.add(2)) * a_d),
                acc_m,
            );
        }
        hsum(acc) + hsum(acc_m)
    }

    /// 32 nibbles at `qs` looked up in [`iquant::KVALUES`]: the i-quants' signed levels.
    #[target_feature(enable = "avx2,fma,f16c")]
    #[inline]
    unsafe fn iq4_levels(qs: *const u8) -> __m256i {
        let table = _mm_loadu_si128(iquant::KVALUES.as_ptr().cast());
        _mm256_shuffle_epi8(_mm256_set_m128i(table, table), nibbles_32(qs))
    }

    #[target_feature(enable = "avx2,fma,f16c")]
    #[inline]
    pub(super) unsafe fn dot_iq4_nl(w: &[u8], ad: &[f32], aq: &[i8]) -> f32 {
        let mut acc = _mm256_setzero_ps();
        let (wp, yp) = (w.as_ptr(), aq.as_ptr());
        for (b, &a_d) in ad.iter().enumerate() {
            let blk = wp.add(18 * b);
            prefetch(blk.wrapping_add(PREFETCH_BYTES), 18);
            let p = q8_0_block(iq4_levels(blk.add(2)), _mm256_loadu_si256(yp.add(32 * b).cast()));
            acc = _mm256_fmadd_ps(_mm256_cvtepi32_ps(p), _mm256_set1_ps(f16_load(blk) * a_d), acc);
        }
        hsum(acc)
    }

    #[target_feature(enable = "avx2,fma,f16c")]
    #[inline]
    pub(super) unsafe fn dot_iq4_xs(w: &[u8], ad: &[f32], aq: &[i8]) -> f32 {
        let mut acc = _mm256_setzero_ps();
        let (wp, yp) = (w.as_ptr(), aq.as_ptr());
        for (b, &a_d) in ad.iter().enumerate() {
            let blk = wp.add(136 * b);
            prefetch(blk.wrapping_add(PREFETCH_BYTES), 136);
            let scales = iquant::xs_scales(std::slice::from_raw_parts(blk, 8));
            let y = yp.add(256 * b);
            let mut sumi = _mm256_setzero_si256();
            for (j, &ls) in scales.iter().enumerate() {
                let p = q8_0_block(
                    iq4_levels(blk.add(8 + 16 * j)),
                    _mm256_loadu_si256(y.add(32 * j).cast()),
                );
                sumi = _mm256_add_epi32(sumi, _mm256_mullo_epi32(p, _mm256_set1_epi32(i32::from(ls) - 32)));
            }
            acc = _mm256_fmadd_ps(_mm256_cvtepi32_ps(sumi), _mm256_set1_ps(f16_load(blk) * a_d), acc);
        }
        hsum(acc)
    }

    #[target_feature(enable = "avx2,fma,f16c")]
    #[inline]
    pub(super) unsafe fn dot_q4_1(w: &[u8], ad: &[f32], aq: &[i8]) -> f32 {
        dot_offset_blocks(w, ad, aq, 20, None, 4)
    }

    #[target_feature(enable = "avx2,fma,f16c")]
    #[inline]
    pub(super) unsafe fn dot_q5_1(w: &[u8], ad: &[f32], aq: &[i8]) -> f32 {
        dot_offset_blocks(w, ad, aq, 24, Some(4), 8)
    }

    #[target_feature(enable = "avx2,fma,f16c")]
    #[inline]
    unsafe fn dot_q4k(w: &[u8], ad: &[f32], aq: &[i8], asum: &[i16]) -> f32 {
        let mut acc = _mm256_setzero_ps();
        let mut acc_m = _mm256_setzero_ps();
        let low = _mm256_set1_epi8(0x0F);
        // Each min twice, for the two 16-value sums of its sub-block.
        let dup_mins = _mm_setr_epi8(8, 8, 9, 9, 10, 10, 11, 11, 12, 12, 13, 13, 14, 14, 15, 15);
        let (wp, yp, sp) = (w.as_ptr(), aq.as_ptr(), asum.as_ptr());
        for (b, &a_d) in ad.iter().enumerate() {
            let blk = wp.add(144 * b);
            prefetch(blk.wrapping_add(PREFETCH_BYTES), 144);
            let packed = unpack_q4k_scales(std::slice::from_raw_parts(blk.add(4), 12));
            let sm = _mm_loadu_si128(packed.as_ptr().cast());
            let mins = _mm256_cvtepu8_epi16(_mm_shuffle_epi8(sm, dup_mins));
            let pm = _mm256_madd_epi16(_mm256_loadu_si256(sp.add(16 * b).cast()), mins);
            acc_m = _mm256_fmadd_ps(
                _mm256_cvtepi32_ps(pm),
                _mm256_set1_ps(a_d * f16_load(blk.add(2))),
                acc_m,
            );
            let sc = packed.as_ptr().cast::<u8>();
            let (qs, y) = (blk.add(16), yp.add(256 * b));
            let mut sumi = _mm256_setzero_si256();
            for j in 0..4 {
                let q = _mm256_loadu_si256(qs.add(32 * j).cast());
                let q_lo = _mm256_and_si256(q, low);
                let q_hi = _mm256_and_si256(_mm256_srli_epi16(q, 4), low);
                let p_lo = _mm256_maddubs_epi16(q_lo, _mm256_loadu_si256(y.add(64 * j).cast()));
                let p_hi = _mm256_maddubs_epi16(q_hi, _mm256_loadu_si256(y.add(64 * j + 32).cast()));
                let s_lo = _mm256_set1_epi16(i16::from(*sc.add(2 * j)));
                let s_hi = _mm256_set1_epi16(i16::from(*sc.add(2 * j + 1)));
                sumi = _mm256_add_epi32(sumi, _mm256_madd_epi16(p_lo, s_lo));
                sumi = _mm256_add_epi32(sumi, _mm256_madd_epi16(p_hi, s_hi));
            }
            acc = _mm256_fmadd_ps(_mm256_cvtepi32_ps(sumi), _mm256_set1_ps(a_d * f16_load(blk)), acc);
        }
        hsum(acc) - hsum(acc_m)
    }

    #[target_feature(enable = "avx2,fma,f16c")]
    #[inline]
    unsafe fn dot_q6k(w: &[u8], ad: &[f32], aq: &[i8], asum: &[i16]) -> f32 {
        let mut acc = _mm256_setzero_ps();
        let mut acc_off = _mm256_setzero_ps();
        let low = _mm256_set1_epi8(0x0F);
        let two = _mm256_set1_epi8(0x30);
        let (wp, yp, sp) = (w.as_ptr(), aq.as_ptr(), asum.as_ptr());
        for (b, &a_d) in ad.iter().enumerate() {
            let blk = wp.add(210 * b);
            prefetch(blk.wrapping_add(PREFETCH_BYTES), 210);
            let scales = blk.add(192).cast::<i8>();
            let d = a_d * f16_load(blk.add(208));
            let sc16 = _mm256_cvtepi8_epi16(_mm_loadu_si128(scales.cast()));
            let off = _mm256_madd_epi16(_mm256_loadu_si256(sp.add(16 * b).cast()), sc16);
            acc_off = _mm256_fmadd_ps(_mm256_cvtepi32_ps(off), _mm256_set1_ps(32.0 * d), acc_off);
            let y = yp.add(256 * b);
            let mut sumi = _mm256_setzero_si256();
            for n in 0..2 {
                let ql0 = _mm256_loadu_si256(blk.add(64 * n).cast());
                let ql1 = _mm256_loadu_si256(blk.add(64 * n + 32).cast());
                let qh = _mm256_loadu_si256(blk.add(128 + 32 * n).cast());
                // Levels 0..63 of values 128n + 32i + l, i = 0..4.
                let q = [
                    _mm256_or_si256(
                        _mm256_and_si256(ql0, low),
                        _mm256_and_si256(_mm256_slli_epi16(qh, 4), two),
                    ),
                    _mm256_or_si256(
                        _mm256_and_si256(ql1, low),
                        _mm256_and_si256(_mm256_slli_epi16(qh, 2), two),
                    ),
                    _mm256_or_si256(
                        _mm256_and_si256(_mm256_srli_epi16(ql0, 4), low),
                        _mm256_and_si256(qh, two),
                    ),
                    _mm256_or_si256(
                        _mm256_and_si256(_mm256_srli_epi16(ql1, 4), low),
                        _mm256_and_si256(_mm256_srli_epi16(qh, 2), two),
                    ),
                ];
                for (i, qi) in q.into_iter().enumerate() {
                    let g = 8 * n + 2 * i;
                    let p = _mm256_maddubs_epi16(qi, _mm256_loadu_si256(y.add(128 * n + 32 * i).cast()));
                    // i16 lanes 0..8 hold group g's pairs, lanes 8..16 group g + 1's.
                    let s = _mm256_set_m128i(
                        _mm_set1_epi16(i16::from(*scales.add(g + 1))),
                        _mm_set1_epi16(i16::from(*scales.add(g))),
                    );
                    sumi = _mm256_add_epi32(sumi, _mm256_madd_epi16(p, s));
                }
            }
            acc = _mm256_fmadd_ps(_mm256_cvtepi32_ps(sumi), _mm256_set1_ps(d), acc);
        }
        hsum(acc) - hsum(acc_off)
    }
}

/// AVX-512: 512-bit registers over whole 64-byte runs of a block, scales spread to the lanes
/// by `vpermw`, Q8_0 four blocks at a time through `vpdpbusd`.
#[cfg(target_arch = "x86_64")]
mod avx512 {
    use std::arch::x86_64::*;

    use super::*;

    dot_rows_on!("avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni");

    // The legacy formats' 256-bit kernels: a decode that reads them is bound by memory, not by
    // these few instructions per 32 values.
    use super::avx2::{dot_iq4_nl, dot_iq4_xs, dot_q4_1, dot_q5_0, dot_q5_1};

    /// The f16 at `p` as f32, through a masked load that zeroes the other lanes: a plain
    /// zero-extended move becomes `vpinsrw` into whatever register LLVM has at hand, and that
    /// false dependency tied each Q6_K block to the previous block's sums.
    #[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
    #[inline]
    unsafe fn f16_masked_load(p: *const u8) -> f32 {
        _mm_cvtss_f32(_mm_cvtph_ps(_mm_maskz_loadu_epi16(1, p.cast())))
    }

    /// i16 lane indices: lane m takes element `first + m / 8`.
    #[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
    #[inline]
    unsafe fn eighths(first: i16) -> __m512i {
        let lo = _mm256_set_m128i(_mm_set1_epi16(first + 1), _mm_set1_epi16(first));
        let hi = _mm256_set_m128i(_mm_set1_epi16(first + 3), _mm_set1_epi16(first + 2));
        _mm512_inserti64x4(_mm512_castsi256_si512(lo), hi, 1)
    }

    #[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
    #[inline]
    unsafe fn dot_q8_0(w: &[u8], ad: &[f32], aq: &[i8]) -> f32 {
        let mut acc = _mm512_setzero_ps();
        let (wp, yp) = (w.as_ptr(), aq.as_ptr());
        let nb = ad.len();
        let zero = _mm512_setzero_si512();
        let spread = [
            _mm512_setr_epi32(0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1),
            _mm512_setr_epi32(2, 2, 2, 2, 2, 2, 2, 2, 3, 3, 3, 3, 3, 3, 3, 3),
        ];
        let mut b = 0;
        while b + 4 <= nb {
            let blk = wp.add(34 * b);
            prefetch(blk.wrapping_add(PREFETCH_BYTES), 136);
            let d16 = _mm_setr_epi16(
                blk.cast::<i16>().read_unaligned(),
                blk.add(34).cast::<i16>().read_unaligned(),
                blk.add(68).cast::<i16>().read_unaligned(),
                blk.add(102).cast::<i16>().read_unaligned(),
                0,
                0,
                0,
                0,
            );
            let d4 = _mm_mul_ps(_mm_cvtph_ps(d16), _mm_loadu_ps(ad.as_ptr().add(b)));
            let d4 = _mm512_castps128_ps512(d4);
            for (h, &spread_h) in spread.iter().enumerate() {
                let q = _mm512_inserti64x4(
                    _mm512_castsi256_si512(_mm256_loadu_si256(blk.add(68 * h + 2).cast())),
                    _mm256_loadu_si256(blk.add(68 * h + 36).cast()),
                    1,
                );
                let y = _mm512_loadu_si512(yp.add(32 * b + 64 * h).cast());
                let negative = _mm512_movepi8_mask(q);
                let y_signed = _mm512_mask_sub_epi8(y, negative, zero, y);
                let p = _mm512_dpbusd_epi32(zero, _mm512_abs_epi8(q), y_signed);
                acc = _mm512_fmadd_ps(_mm512_cvtepi32_ps(p), _mm512_permutexvar_ps(spread_h, d4), acc);
            }
            b += 4;
        }
        let mut s = _mm512_reduce_add_ps(acc);
        if b < nb {
            s += super::avx2::dot_q8_0(&w[34 * b..], &ad[b..], &aq[32 * b..]);
        }
        s
    }

    /// `vpshufb` control that spreads the sub-block scales (bytes 0..8, in every 128-bit lane)
    /// over the i16 lanes of `packs(s[2p], s[2p + 1])` for pair p of 32-byte chunks: lanes 0, 1
    /// hold sub-blocks 4p and 4p + 2, four sums each; lanes 2, 3 sub-blocks 4p + 1 and 4p + 3.
    /// Odd bytes are 0x80, so each scale lands zero-extended to i16.
    #[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
    #[inline]
    unsafe fn q4k_scale_spread(p: u8) -> __m512i {
        let lane = |a: u8, b: u8| -> [u8; 16] {
            let mut c = [0x80u8; 16];
            for e in 0..8 {
                c[2 * e] = if e < 4 { a } else { b };
            }
            c
        };
        let (near, far) = (lane(4 * p, 4 * p + 2), lane(4 * p + 1, 4 * p + 3));
        let mut bytes = [0u8; 64];
        bytes[..16].copy_from_slice(&near);
        bytes[16..32].copy_from_slice(&near);
        bytes[32..48].copy_from_slice(&far);
        bytes[48..].copy_from_slice(&far);
        _mm512_loadu_si512(bytes.as_ptr().cast())
    }

    /// Each 32-byte chunk j of nibbles, broadcast to both halves of a register and the upper
    /// half shifted down by 4, is values 64j..64j + 64 in order: one `vpdpbusd` against the
    /// activations as they lie, eight lanes per sub-block. The i32 sums (|Σ| ≤ 4·15·128) pack
    /// to i16 two chunks at a time, and one `vpdpwssd` weighs them by their sub-block scales.
    #[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
    #[inline]
    unsafe fn dot_q4k(w: &[u8], ad: &[f32], aq: &[i8], asum: &[i16]) -> f32 {
        let mut acc = _mm512_setzero_ps();
        let mut acc_m = _mm256_setzero_ps();
        let low = _mm512_set1_epi8(0x0F);
        let zero = _mm512_setzero_si512();
        let spread = [q4k_scale_spread(0), q4k_scale_spread(1)];
        // Each min (elements 8..16) twice, for the two 16-value sums of its sub-block.
        let dup_mins = _mm256_setr_epi16(8, 8, 9, 9, 10, 10, 11, 11, 12, 12, 13, 13, 14, 14, 15, 15);
        let (wp, yp, sp) = (w.as_ptr(), aq.as_ptr(), asum.as_ptr());
        for (b, &a_d) in ad.iter().enumerate() {
            let blk = wp.add(144 * b);
            prefetch(blk.wrapping_add(PREFETCH_BYTES), 144);
            // [d, dmin] of the block times the activations' scale, twice.
            let d_dmin = _mm_mul_ps(
                _mm_cvtph_ps(_mm_set1_epi32(blk.cast::<i32>().read_unaligned())),
                _mm_set1_ps(a_d),
            );
            let packed = unpack_q4k_scales(std::slice::from_raw_parts(blk.add(4), 12));
            let scales_mins = _mm_loadu_si128(packed.as_ptr().cast());
            let pm = _mm256_madd_epi16(
                _mm256_loadu_si256(sp.add(16 * b).cast()),
                _mm256_permutexvar_epi16(dup_mins, _mm256_cvtepu8_epi16(scales_mins)),
            );
            acc_m = _mm256_fmadd_ps(
                _mm256_cvtepi32_ps(pm),
                _mm256_broadcastss_ps(_mm_movehdup_ps(d_dmin)),
                acc_m,
            );
            let scales = _mm512_broadcast_i32x4(scales_mins);
            let (qs, y) = (blk.add(16), yp.add(256 * b));
            let chunk = |j: usize| {
                let q = _mm512_broadcast_i64x4(_mm256_loadu_si256(qs.add(32 * j).cast()));
                let q = _mm512_and_si512(_mm512_mask_srli_epi16(q, 0xFFFF_0000, q, 4), low);
                _mm512_dpbusd_epi32(zero, q, _mm512_loadu_si512(y.add(64 * j).cast()))
            };
            let mut sumi = zero;
            for (p, &spread_p) in spread.iter().enumerate() {
                let sums = _mm512_packs_epi32(chunk(2 * p), chunk(2 * p + 1));
                sumi = _mm512_dpwssd_epi32(sumi, sums, _mm512_shuffle_epi8(scales, spread_p));
            }
            acc = _mm512_fmadd_ps(_mm512_cvtepi32_ps(sumi), _mm512_broadcastss_ps(d_dmin), acc);
        }
        _mm512_reduce_add_ps(acc) - avx2::hsum(acc_m)
    }

    #[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
    #[inline]
    unsafe fn dot_q6k(w: &[u8], ad: &[f32], aq: &[i8], asum: &[i16]) -> f32 {
        let mut acc = _mm512_setzero_ps();
        let mut acc_off = _mm256_setzero_ps();
        let low = _mm512_set1_epi8(0x0F);
        let two = _mm512_set1_epi8(0x30);
        // The two high bits of value 128n + 32i + l sit at bits 2i, 2i+1 of qh[32n + l]; moved
        // to bits 4, 5: i = 0 | 1 shift left by 4 | 2, i = 2 | 3 shift right by 0 | 2.
        let shift_a = _mm512_inserti64x4(_mm512_set1_epi16(4), _mm256_set1_epi16(2), 1);
        let shift_b = _mm512_inserti64x4(_mm512_set1_epi16(0), _mm256_set1_epi16(2), 1);
        let idx = [eighths(0), eighths(4), eighths(8), eighths(12)];
        let (wp, yp, sp) = (w.as_ptr(), aq.as_ptr(), asum.as_ptr());
        for (b, &a_d) in ad.iter().enumerate() {
            let blk = wp.add(210 * b);
            prefetch(blk.wrapping_add(PREFETCH_BYTES), 210);
            let d = a_d * f16_masked_load(blk.add(208));
            let sc16 = _mm256_cvtepi8_epi16(_mm_loadu_si128(blk.add(192).cast()));
            let off = _mm256_madd_epi16(_mm256_loadu_si256(sp.add(16 * b).cast()), sc16);
            acc_off = _mm256_fmadd_ps(_mm256_cvtepi32_ps(off), _mm256_set1_ps(32.0 * d), acc_off);
            let sc = _mm512_castsi256_si512(sc16);
            let y = yp.add(256 * b);
            let mut sumi = _mm512_setzero_si512();
            for n in 0..2 {
                let ql = _mm512_loadu_si512(blk.add(64 * n).cast());
                let qh = _mm512_broadcast_i64x4(_mm256_loadu_si256(blk.add(128 + 32 * n).cast()));
                // Values 128n + 0..64, then 128n + 64..128.
                let a = _mm512_or_si512(
                    _mm512_and_si512(ql, low),
                    _mm512_and_si512(_mm512_sllv_epi16(qh, shift_a), two),
                );
                let b2 = _mm512_or_si512(
                    _mm512_and_si512(_mm512_srli_epi16(ql, 4), low),
                    _mm512_and_si512(_mm512_srlv_epi16(qh, shift_b), two),
                );
                let p_a = _mm512_maddubs_epi16(a, _mm512_loadu_si512(y.add(128 * n).cast()));
                let p_b = _mm512_maddubs_epi16(b2, _mm512_loadu_si512(y.add(128 * n + 64).cast()));
                sumi = _mm512_add_epi32(
                    sumi,
                    _mm512_madd_epi16(p_a, _mm512_permutexvar_epi16(idx[2 * n], sc)),
                );
                sumi = _mm512_add_epi32(
                    sumi,
                    _mm512_madd_epi16(p_b, _mm512_permutexvar_epi16(idx[2 * n + 1], sc)),
                );
            }
            acc = _mm512_fmadd_ps(_mm512_cvtepi32_ps(sumi), _mm512_set1_ps(d), acc);
        }
        _mm512_reduce_add_ps(acc) - avx2::hsum(acc_off)
    }
}
