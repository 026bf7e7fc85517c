//! Bidirectional attention without a mask (the vision encoder's): every query of a sequence
//! sees every key of it.
//!
//! ```text
//! q, k, v [B, H, L, Dh] f32 → o [B, L, H·Dh]      (heads merged as o_proj takes them)
//! s[i, j] = q_i · k_j · scale
//! p[i, ·] = softmax(s[i, ·])                     in f32
//! o_i     = Σ_j p[i, j] · v_j
//! ```
//!
//! One task per (sequence, head) runs on the barrier pool, the workers the products run on (a
//! Scout tile has 16 heads). candle's batched matmul and softmax took four times as long
//! for two tiles as for one (their [B·H, L, L] score tensor no longer fit in cache) and, under
//! `--dtype bf16`, ran scalar bf16 loops: 3.4 s of a 9 s Scout tile. Here a task holds only its
//! own rows of scores.
//!
//! Two builds: AVX-512, with the head's keys transposed once so a block of 4 queries × 64
//! keys of scores accumulates in registers, and the values' rows streamed past 4 queries' output
//! vectors; and the plain loops (the slow twin, compiled for AVX2 where the CPU has it).

use std::sync::Mutex;

use super::decode_attention::{dot, softmax_in_place};
use super::isa::Isa;

/// q, k, v [B, H, L, Dh] → o [B, L, H·Dh], on [`Isa::current`].
///
/// # Panics
/// If q, k and v are not each B·H·L·Dh values.
#[allow(clippy::too_many_arguments)]
pub fn full_attention(
    q: &[f32],
    k: &[f32],
    v: &[f32],
    b: usize,
    h: usize,
    l: usize,
    dh: usize,
    scale: f32,
) -> Vec<f32> {
    full_attention_on(Isa::current(), q, k, v, b, h, l, dh, scale)
}

/// [`full_attention`] on a chosen [`Isa`] (the twin tests force each path).
///
/// # Panics
/// As [`full_attention`], or if this CPU lacks `isa`.
#[allow(clippy::too_many_arguments)]
pub fn full_attention_on(
    isa: Isa,
    q: &[f32],
    k: &[f32],
    v: &[f32],
    b: usize,
    h: usize,
    l: usize,
    dh: usize,
    scale: f32,
) -> Vec<f32> {
    assert!(isa.is_supported());
    let len = b * h * l * dh;
    assert!(
        q.len() == len && k.len() == len && v.len() == len,
        "q, k, v must be [B, H, L, Dh]"
    );
    for_each_head(b, h, l, dh, |bh, scratch, o| {
        let head = bh * l * dh..(bh + 1) * l * dh;
        chunk(
            isa,
            &q[head.clone()],
            &k[head.clone()],
            &v[head],
            dh,
            scale,
            scratch,
            o,
        );
    })
}

/// [`rotary_full_attention_on`] on [`Isa::current`].
#[allow(clippy::too_many_arguments)]
pub fn rotary_full_attention(
    q: &[f32],
    k: &[f32],
    v: &[f32],
    stride: usize,
    cos: &[f32],
    sin: &[f32],
    b: usize,
    h: usize,
    l: usize,
    dh: usize,
    scale: f32,
) -> Vec<f32> {
    rotary_full_attention_on(Isa::current(), q, k, v, stride, cos, sin, b, h, l, dh, scale)
}

/// The vision encoder's attention from its projections as they come out: q, k, v [B, L, H·Dh]
/// (token-major, the heads side by side; consecutive tokens `stride` ≥ H·Dh values apart, so q,
/// k and v can be views into one stacked product), q and k rotated on interleaved pairs by cos, sin
/// [L, Dh/2] (`candle_nn::rotary_emb::rope_i`'s arithmetic) → o [B, L, H·Dh]. The same values as
/// rotating, moving the heads to [B, H, L, Dh] and calling [`full_attention_on`] (the slow twin),
/// but each task gathers and rotates its own head, so the transposes and copies no longer run
/// on one thread while the pool waits.
///
/// # Panics
/// If q, k or v is too short for B·L tokens `stride` apart, stride < H·Dh, Dh is odd, cos and
/// sin are not L·Dh/2 values, or this CPU lacks `isa`.
#[allow(clippy::too_many_arguments)]
pub fn rotary_full_attention_on(
    isa: Isa,
    q: &[f32],
    k: &[f32],
    v: &[f32],
    stride: usize,
    cos: &[f32],
    sin: &[f32],
    b: usize,
    h: usize,
    l: usize,
    dh: usize,
    scale: f32,
) -> Vec<f32> {
    assert!(isa.is_supported());
    let tokens = b * l;
    let need = if tokens == 0 {
        0
    } else {
        (tokens - 1) * stride + h * dh
    };
    assert!(
        stride >= h * dh,
        "token stride {stride} under a token's {} values",
        h * dh
    );
    assert!(
        q.len() >= need && k.len() >= need && v.len() >= need,
        "q, k, v must hold B·L tokens of H·Dh, {stride} apart"
    );
    assert!(dh.is_multiple_of(2), "rotary pairs need an even head dim");
    assert!(
        cos.len() == l * dh / 2 && sin.len() == l * dh / 2,
        "cos and sin must be [L, Dh/2]"
    );
    for_each_head(b, h, l, dh, |bh, scratch, o| {
        let (bi, hi) = (bh / h, bh % h);
        let mut heads = std::mem::take(&mut scratch.heads);
        heads.resize(3 * l * dh, 0.0);
        let (qh, rest) = heads.split_at_mut(l * dh);
        let (kh, vh) = rest.split_at_mut(l * dh);
        for i in 0..l {
            let at = (bi * l + i) * stride + hi * dh;
            let (c, s) = (
                &cos[i * dh / 2..(i + 1) * dh / 2],
                &sin[i * dh / 2..(i + 1) * dh / 2],
            );
            rotate_pairs(&q[at..at + dh], c, s, &mut qh[i * dh..(i + 1) * dh]);
            rotate_pairs(&k[at..at + dh], c, s, &mut kh[i * dh..(i + 1) * dh]);
            vh[i * dh..(i + 1) * dh].copy_from_slice(&v[at..at + dh]);
        }
        chunk(isa, qh, kh, vh, dh, scale, scratch, o);
        scratch.heads = heads;
    })
}

/// `rope_i` on one vector: pair (x₀, x₁) → (x₀·c − x₁·s, x₀·s + x₁·c), candle's expression
/// term for term (no fused multiply-add), so the bits match.
#[inline]
fn rotate_pairs(x: &[f32], cos: &[f32], sin: &[f32], out: &mut [f32]) {
    for (((pair, o), &c), &s) in x.chunks_exact(2).zip(out.chunks_exact_mut(2)).zip(cos).zip(sin) {
        o[0] = pair[0] * c - pair[1] * s;
        o[1] = pair[0] * s + pair[1] * c;
    }
}

/// o [B, L, H·Dh] from `attend(b·H + h, scratch, o_head)`, which writes head h of sequence b's
/// outputs o_head [L, Dh]: one task per (sequence, head) on the barrier pool.
fn for_each_head(
    b: usize,
    h: usize,
    l: usize,
    dh: usize,
    attend: impl Fn(usize, &mut Scratch, &mut [f32]) + Sync,
) -> Vec<f32> {
    let len = b * h * l * dh;
    let mut out = vec![0f32; len];
    if len == 0 {
        return out;
    }
    // One slot per (sequence, query, head): o [B, L, H, Dh].
    let slots: Vec<Mutex<&mut [f32]>> = out.chunks_mut(dh).map(Mutex::new).collect();
    candle_core::utils::barrier_pool().execute_chunked(b * h, |range| {
        let mut scratch = Scratch::default();
        for bh in range {
            let (bi, hi) = (bh / h, bh % h);
            scratch.o.clear();
            scratch.o.resize(l * dh, 0.0);
            let mut o = std::mem::take(&mut scratch.o);
            attend(bh, &mut scratch, &mut o);
            for (i, o_i) in o.chunks_exact(dh).enumerate() {
                if let Ok(mut slot) = slots[(bi * l + i) * h + hi].lock() {
                    slot.copy_from_slice(o_i);
                }
            }
            scratch.o = o;
        }
    });
    drop(slots);
    out
}

/// A task's buffers, kept across the tasks a worker runs.
#[derive(Default)]
struct Scratch {
    /// Keys transposed, [Dh, L rounded up to 16] (the AVX-512 build).
    kt: Vec<f32>,
    /// Scores of the queries in flight.
    s: Vec<f32>,
    /// The task's outputs, [queries, Dh].
    o: Vec<f32>,
    /// A gathered head's q, k and v, [3, L, Dh] (the rotary entry point).
    heads: Vec<f32>,
}

/// Queries q_c [n, Dh] over one head's keys and values [L, Dh] → o [n, Dh].
#[allow(clippy::too_many_arguments)]
fn chunk(
    isa: Isa,
    q_c: &[f32],
    k: &[f32],
    v: &[f32],
    dh: usize,
    scale: f32,
    scratch: &mut Scratch,
    o: &mut [f32],
) {
    match isa {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: the CPU has AVX-512 F/BW/VL, AVX2 and FMA (part of this level, asserted by
        // the caller).
        Isa::Avx512 | Isa::Avx512Bf16 | Isa::Amx => unsafe {
            x86::chunk_avx512(q_c, k, v, dh, scale, scratch, o)
        },
        #[cfg(target_arch = "x86_64")]
        // SAFETY: the CPU has AVX2 and FMA (part of this level).
        Isa::Avx2 => unsafe { x86::chunk_avx2(q_c, k, v, dh, scale, &mut scratch.s, o) },
        _ => chunk_portable(q_c, k, v, dh, scale, &mut scratch.s, o),
    }
}

/// The plain loops: one query at a time, its scores, softmax, then its weighted sum of values.
#[inline(always)]
fn chunk_portable(q_c: &[f32], k: &[f32], v: &[f32], dh: usize, scale: f32, s: &mut Vec<f32>, o: &mut [f32]) {
    let l = k.len() / dh;
    s.clear();
    s.resize(l, 0.0);
    for (q_i, o_i) in q_c.chunks_exact(dh).zip(o.chunks_exact_mut(dh)) {
        for (s_j, k_j) in s.iter_mut().zip(k.chunks_exact(dh)) {
            *s_j = dot(q_i, k_j) * scale;
        }
        softmax_in_place(s);
        o_i.fill(0.0);
        for (&p, v_j) in s.iter().zip(v.chunks_exact(dh)) {
            for d in 0..dh {
                o_i[d] += p * v_j[d];
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    use super::*;
    use crate::kernels::decode_attention::registers;

    /// The plain loops compiled for 256-bit registers.
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn chunk_avx2(
        q_c: &[f32],
        k: &[f32],
        v: &[f32],
        dh: usize,
        scale: f32,
        s: &mut Vec<f32>,
        o: &mut [f32],
    ) {
        chunk_portable(q_c, k, v, dh, scale, s, o)
    }

    /// Queries per register block.
    const QB: usize = 4;

    /// # Safety
    /// The CPU must have AVX-512 F/BW/VL, AVX2 and FMA.
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma")]
    pub unsafe fn chunk_avx512(
        q_c: &[f32],
        k: &[f32],
        v: &[f32],
        dh: usize,
        scale: f32,
        scratch: &mut Scratch,
        o: &mut [f32],
    ) {
        let l = k.len() / dh;
        let lp = l.div_ceil(16) * 16;
        // kt [Dh, Lp]: key j's component d at d·Lp + j, zero past L (those scores are computed
        // and never read).
        let kt = &mut scratch.kt;
        kt.clear();
        kt.resize(dh * lp, 0.0);
        for (j, k_j) in k.chunks_exact(dh).enumerate() {
            for (d, &x) in k_j.iter().enumerate() {
                kt[d * lp + j] = x;
            }
        }
        let s = &mut scratch.s;
        s.clear();
        s.resize(QB * lp, 0.0);
        let nq = q_c.len() / dh;
        let mut i0 = 0;
        while i0 < nq {
            if nq - i0 >= QB {
                block::<QB>(
                    &q_c[i0 * dh..(i0 + QB) * dh],
                    kt,
                    v,
                    l,
                    lp,
                    dh,
                    scale,
                    s,
                    &mut o[i0 * dh..(i0 + QB) * dh],
                );
                i0 += QB;
            } else {
                block::<1>(
                    &q_c[i0 * dh..(i0 + 1) * dh],
                    kt,
                    v,
                    l,
                    lp,
                    dh,
                    scale,
                    s,
                    &mut o[i0 * dh..(i0 + 1) * dh],
                );
                i0 += 1;
            }
        }
    }

    /// NB queries q [NB, Dh] → o [NB, Dh]: their scores [NB, Lp] into `s`, softmax over the first
    /// L of each row, then the values.
    #[allow(clippy::too_many_arguments)]
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma")]
    unsafe fn block<const NB: usize>(
        q: &[f32],
        kt: &[f32],
        v: &[f32],
        l: usize,
        lp: usize,
        dh: usize,
        scale: f32,
        s: &mut [f32],
        o: &mut [f32],
    ) {
        assert!(q.len() == NB * dh && o.len() == NB * dh && kt.len() == dh * lp && s.len() >= NB * lp);
        assert!(v.len() == l * dh && l <= lp && lp.is_multiple_of(16));
        let mut j0 = 0;
        while j0 < lp {
            match (lp - j0) / 16 {
                1 => scores::<NB, 1>(q, kt, lp, dh, j0, scale, s),
                2 => scores::<NB, 2>(q, kt, lp, dh, j0, scale, s),
                3 => scores::<NB, 3>(q, kt, lp, dh, j0, scale, s),
                _ => scores::<NB, 4>(q, kt, lp, dh, j0, scale, s),
            }
            j0 += 64;
        }
        for r in 0..NB {
            // Exponentials 16 lanes at a time (bit for bit the plain softmax's). F16C, which it
            // also enables, comes with every CPU at the AVX-512 level (`Isa` requires it).
            registers::softmax_in_place(&mut s[r * lp..r * lp + l]);
        }
        let mut d0 = 0;
        while d0 < dh {
            match (dh - d0).div_ceil(16) {
                1 => values::<NB, 1>(s, v, l, lp, dh, d0, o),
                2 => values::<NB, 2>(s, v, l, lp, dh, d0, o),
                3 => values::<NB, 3>(s, v, l, lp, dh, d0, o),
                _ => values::<NB, 4>(s, v, l, lp, dh, d0, o),
            }
            d0 += 64;
        }
    }

    /// s[r, j0 .. j0 + 16·NV] for the NB queries: NB × NV accumulators over the Dh components,
    /// each a broadcast query component times 16 keys' components.
    #[allow(clippy::too_many_arguments)]
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma")]
    unsafe fn scores<const NB: usize, const NV: usize>(
        q: &[f32],
        kt: &[f32],
        lp: usize,
        dh: usize,
        j0: usize,
        scale: f32,
        s: &mut [f32],
    ) {
        assert!(q.len() == NB * dh && kt.len() == dh * lp && j0 + 16 * NV <= lp);
        let mut acc = [[_mm512_setzero_ps(); NV]; NB];
        for d in 0..dh {
            // SAFETY: d < Dh and j0 + 16·NV ≤ Lp (asserted), so the row's 16·NV keys lie inside
            // kt [Dh, Lp], and r·Dh + d < NB·Dh = q.len().
            unsafe {
                let row = kt.as_ptr().add(d * lp + j0);
                let mut keys = [_mm512_setzero_ps(); NV];
                for (c, key) in keys.iter_mut().enumerate() {
                    *key = _mm512_loadu_ps(row.add(16 * c));
                }
                for (r, acc) in acc.iter_mut().enumerate() {
                    let q_rd = _mm512_set1_ps(*q.as_ptr().add(r * dh + d));
                    for (a, &key) in acc.iter_mut().zip(&keys) {
                        *a = _mm512_fmadd_ps(q_rd, key, *a);
                    }
                }
            }
        }
        let scale = _mm512_set1_ps(scale);
        for (r, acc) in acc.iter().enumerate() {
            let out = &mut s[r * lp + j0..r * lp + j0 + 16 * NV];
            for (c, &a) in acc.iter().enumerate() {
                // SAFETY: out holds 16·NV values.
                unsafe { _mm512_storeu_ps(out.as_mut_ptr().add(16 * c), _mm512_mul_ps(a, scale)) };
            }
        }
    }

    /// o[r, d0 .. d0 + 16·NV] (the last vector masked at Dh) = Σ_j p[r, j] · v[j, ·] for the NB
    /// queries: NB × NV accumulators, each value row loaded once for all NB.
    #[allow(clippy::too_many_arguments)]
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma")]
    unsafe fn values<const NB: usize, const NV: usize>(
        p: &[f32],
        v: &[f32],
        l: usize,
        lp: usize,
        dh: usize,
        d0: usize,
        o: &mut [f32],
    ) {
        let mut masks = [0xFFFFu16; NV];
        for (c, m) in masks.iter_mut().enumerate() {
            let lanes = (dh - d0).saturating_sub(16 * c).min(16);
            *m = if lanes == 16 { 0xFFFF } else { (1u16 << lanes) - 1 };
        }
        assert!(v.len() == l * dh && p.len() >= (NB - 1) * lp + l && l <= lp && d0 < dh);
        let mut acc = [[_mm512_setzero_ps(); NV]; NB];
        for j in 0..l {
            // SAFETY: j < L, so row j of v [L, Dh] is in bounds, and the masks cover only its
            // lanes (d0 + 16c + lane < Dh); r·Lp + j < (NB − 1)·Lp + L ≤ p.len() (asserted).
            unsafe {
                let row = v.as_ptr().add(j * dh + d0);
                let mut vals = [_mm512_setzero_ps(); NV];
                for (c, val) in vals.iter_mut().enumerate() {
                    *val = _mm512_maskz_loadu_ps(masks[c], row.add(16 * c));
                }
                for (r, acc) in acc.iter_mut().enumerate() {
                    let p_rj = _mm512_set1_ps(*p.as_ptr().add(r * lp + j));
                    for (a, &val) in acc.iter_mut().zip(&vals) {
                        *a = _mm512_fmadd_ps(p_rj, val, *a);
                    }
                }
            }
        }
        for (r, acc) in acc.iter().enumerate() {
            let out = &mut o[r * dh + d0..(r + 1) * dh];
            for (c, &a) in acc.iter().enumerate() {
                // SAFETY: as for the loads.
                unsafe { _mm512_mask_storeu_ps(out.as_mut_ptr().add(16 * c), masks[c], a) };
            }
        }
    }
}
