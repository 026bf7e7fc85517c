//! Prefill attention: a run of T queries at consecutive positions, each over its own causal
//! prefix of one key run:
//!
//! ```text
//! query i (0 ≤ i < T) sees keys 0 .. first_len + i     of the views (first_len ≥ 1)
//! o[i, g] = softmax(q[i, g] · K[..first_len + i] · scale) · V[..first_len + i]
//! ```
//!
//! The work runs as tasks on the barrier pool, so a prompt's attention runs on the same workers
//! as its products (candle's matmul ran on rayon's threads while the pool's worker spun beside
//! them on a two-core machine), computes only the keys each query may see (a masked score
//! matrix computes them all and throws half away), and never holds a score matrix. A chunked
//! layer's run lies inside one chunk, so its mask is causal too once the views start at the
//! chunk's first key.
//!
//! Two builds: on AVX-512 with head size 64 or 128, [`blocked`] takes [`QUERY_BLOCK`] queries
//! of one KV head per task and streams each block of keys and values past all of them with an
//! online softmax, so a long prompt reads its keys once per block of queries instead of once
//! per query (at 8k tokens the per-query history no longer fits in L2). Elsewhere each
//! (query, KV head) pair is a task for the decode kernel on that query's prefix — the twin the
//! tests hold the blocked build to.

use std::sync::Mutex;

use super::decode_attention::{attend_head, CacheView};
#[cfg(target_arch = "x86_64")]
use super::decode_attention::{widened_rows, ROWS_PER_WIDEN};
use super::half_matmul::HalfElement;
use super::isa::Isa;
use super::row_split::for_each_task;

/// Queries per task of the blocked build: each key block, once in L1, serves this many queries
/// times G heads.
pub const QUERY_BLOCK: usize = 16;

/// Whether `isa` has the blocked build for this head size (AVX-512, 64 or 128: Llama 4's 128).
/// Elsewhere the per-query build is no faster than a masked product, and the model keeps that.
pub fn has_blocked_build(isa: Isa, head_dim: usize) -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        matches!(isa, Isa::Avx512 | Isa::Avx512Bf16 | Isa::Amx) && blocked::takes(head_dim)
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = (isa, head_dim);
        false
    }
}

/// q [T, H, Dh] (H = G · n_kv_heads, query heads h·G .. h·G+G on KV head h) → o [T, H, Dh],
/// query i over the first `first_len + i` keys of `k` and `v`.
///
/// # Panics
/// If the shapes disagree, `first_len` is 0, the last query would see past the views, or a
/// view reaches outside its data.
pub fn causal_attention<E: HalfElement>(
    q: &[f32],
    t: usize,
    k: &CacheView<'_, E>,
    v: &CacheView<'_, E>,
    first_len: usize,
    scale: f32,
) -> Vec<f32> {
    causal_attention_on(Isa::current(), q, t, k, v, first_len, scale)
}

/// [`causal_attention`] on a chosen [`Isa`] (the twin tests force each path).
///
/// # Panics
/// As [`causal_attention`], or if this CPU lacks `isa`.
pub fn causal_attention_on<E: HalfElement>(
    isa: Isa,
    q: &[f32],
    t: usize,
    k: &CacheView<'_, E>,
    v: &CacheView<'_, E>,
    first_len: usize,
    scale: f32,
) -> Vec<f32> {
    let (hkv, dh) = (k.n_kv_heads, k.head_dim);
    assert!(isa.is_supported());
    assert!(k.in_bounds() && v.in_bounds());
    assert_eq!((v.n_kv_heads, v.head_dim, v.len), (hkv, dh, k.len));
    assert!(hkv > 0 && dh > 0);
    if t == 0 {
        assert!(q.is_empty());
        return Vec::new();
    }
    assert!(q.len().is_multiple_of(t * hkv * dh));
    let g = q.len() / (t * hkv * dh);
    let mut out = vec![0f32; q.len()];
    if g == 0 {
        return out;
    }
    assert!(
        first_len >= 1 && first_len + t - 1 <= k.len,
        "queries see past the keys"
    );
    #[cfg(target_arch = "x86_64")]
    if has_blocked_build(isa, dh) {
        let h_dh = hkv * g * dh;
        let slots: Vec<Mutex<&mut [f32]>> = out.chunks_mut(g * dh).map(Mutex::new).collect();
        let blocks = t.div_ceil(QUERY_BLOCK);
        // One task at a time from the pool's cursor, the last (longest) query blocks first, so
        // the pool's tail is short tasks.
        for_each_task(blocks * hkv, |task| {
            let (i0, h) = ((blocks - 1 - task / hkv) * QUERY_BLOCK, task % hkv);
            let nq = QUERY_BLOCK.min(t - i0);
            let mut o = vec![0f32; nq * g * dh];
            let block = blocked::QueryBlock {
                i0,
                nq,
                first_len,
                h_dh,
                g,
            };
            // SAFETY: the CPU has AVX-512 F/BW/VL, AVX2, FMA and F16C (part of this level,
            // asserted above); the views are in bounds and the last query sees at most
            // k.len keys (asserted above); `takes(dh)` holds.
            unsafe { blocked::query_block(q, k, v, h, &block, scale, &mut o) };
            for (qi, o_q) in o.chunks_exact(g * dh).enumerate() {
                if let Ok(mut slot) = slots[(i0 + qi) * hkv + h].lock() {
                    slot.copy_from_slice(o_q);
                }
            }
        });
        drop(slots);
        return out;
    }
    {
        // Task i·Hkv + h: query i's G heads on KV head h, a [G, Dh] run of q and o.
        let tasks: Vec<Mutex<&mut [f32]>> = out.chunks_mut(g * dh).map(Mutex::new).collect();
        candle_core::utils::barrier_pool().execute_chunked(t * hkv, |range| {
            for task in range {
                let Ok(mut o) = tasks[task].lock() else { continue };
                let (i, h) = (task / hkv, task % hkv);
                let len = first_len + i;
                let (k_i, v_i) = (prefix(k, len), prefix(v, len));
                let q_h = &q[task * g * dh..(task + 1) * g * dh];
                attend_head(isa, q_h, &k_i, &v_i, h, scale, &mut o);
            }
        });
    }
    out
}

/// The first `len` rows of every head of a view.
fn prefix<'a, E>(c: &CacheView<'a, E>, len: usize) -> CacheView<'a, E> {
    CacheView {
        data: c.data,
        n_kv_heads: c.n_kv_heads,
        head_stride: c.head_stride,
        len,
        head_dim: c.head_dim,
    }
}

/// The AVX-512 build: a block of queries of one KV head against the key and value runs,
/// [`ROWS_PER_WIDEN`] rows at a time, with the softmax kept online (running maximum m and
/// sum l per query head, the output rescaled by e^(m_old − m_new) when the maximum grows).
#[cfg(target_arch = "x86_64")]
mod blocked {
    use std::arch::x86_64::*;

    use super::*;
    use crate::kernels::decode_attention::exp;
    use crate::kernels::decode_attention::registers::{exp16, sum4};

    // A block's scores are two 16-lane vectors of exponentials.
    const _: () = assert!(ROWS_PER_WIDEN == 32);

    /// The mask of the first `n` of 16 lanes.
    #[inline]
    fn lanes(n: usize) -> __mmask16 {
        if n >= 16 {
            0xFFFF
        } else {
            ((1u32 << n) - 1) as __mmask16
        }
    }

    /// Whether the build takes this head size (four or eight 16-lane vectors).
    pub fn takes(head_dim: usize) -> bool {
        head_dim == 64 || head_dim == 128
    }

    /// Queries `i0 .. i0 + nq` of a run of q [T, h_dh], each with G heads per KV head.
    pub struct QueryBlock {
        pub i0: usize,
        pub nq: usize,
        pub first_len: usize,
        pub h_dh: usize,
        pub g: usize,
    }

    /// o [nq, G, Dh] for the block's queries on KV head `h`.
    ///
    /// # Safety
    /// The CPU must have AVX-512 F/BW/VL, AVX2, FMA and F16C; `takes(k.head_dim)`; the views
    /// in bounds with at least `first_len + i0 + nq − 1` rows; q holds the block's rows.
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma,f16c")]
    pub unsafe fn query_block<E: HalfElement>(
        q: &[f32],
        k: &CacheView<'_, E>,
        v: &CacheView<'_, E>,
        h: usize,
        block: &QueryBlock,
        scale: f32,
        o: &mut [f32],
    ) {
        if k.head_dim == 64 {
            query_block_c::<E, 4>(q, k, v, h, block, scale, o)
        } else {
            query_block_c::<E, 8>(q, k, v, h, block, scale, o)
        }
    }

    /// Head size 16·C.
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma,f16c")]
    unsafe fn query_block_c<E: HalfElement, const C: usize>(
        q: &[f32],
        k: &CacheView<'_, E>,
        v: &CacheView<'_, E>,
        h: usize,
        block: &QueryBlock,
        scale: f32,
        o: &mut [f32],
    ) {
        let QueryBlock {
            i0,
            nq,
            first_len,
            h_dh,
            g,
        } = *block;
        let dh = 16 * C;
        let heads = nq * g;
        assert_eq!(o.len(), heads * dh);
        assert!(q.len() >= (i0 + nq) * h_dh && (h + 1) * g * dh <= h_dh);
        // Keys the block's last query sees: every key block below it is read once here.
        let end = first_len + i0 + nq - 1;
        let (k, v) = (prefix(k, end), prefix(v, end));
        let mut max = vec![f32::NEG_INFINITY; heads];
        let mut sum = vec![0f32; heads];
        o.fill(0.0);
        let (mut k_buf, mut v_buf) = (Vec::new(), Vec::new());
        // Scores of up to two heads, with room for a whole last quad past the block's rows.
        let mut s = [[0f32; ROWS_PER_WIDEN + 4]; 2];
        for first in (0..end).step_by(ROWS_PER_WIDEN) {
            let k_rows = widened_rows(&k, h, first, &mut k_buf);
            let v_rows = widened_rows(&v, h, first, &mut v_buf);
            let n = k_rows.len() / dh;
            // The block's query heads two at a time: each key row loaded feeds both.
            let step = BlockStep {
                q,
                h,
                block,
                scale,
                first,
                n,
                k_rows,
                v_rows,
            };
            let mut hd = 0;
            while hd < heads {
                if hd + 1 < heads {
                    heads_step::<C, 2>(&step, [hd, hd + 1], &mut max, &mut sum, o, &mut s);
                    hd += 2;
                } else {
                    heads_step::<C, 1>(&step, [hd], &mut max, &mut sum, o, &mut s);
                    hd += 1;
                }
            }
        }
        for (o_h, &total) in o.chunks_exact_mut(dh).zip(&sum) {
            let inv = 1.0 / total;
            o_h.iter_mut().for_each(|x| *x *= inv);
        }
    }

    /// One block of key rows as the query heads of a [`QueryBlock`] see it.
    struct BlockStep<'a> {
        q: &'a [f32],
        h: usize,
        block: &'a QueryBlock,
        scale: f32,
        /// The block's first key and its row count.
        first: usize,
        n: usize,
        k_rows: &'a [f32],
        v_rows: &'a [f32],
    }

    /// N query heads (indices into the block's [nq, G] heads) over one block of keys: scores,
    /// the online softmax update of each head's (max, sum, o), and the values, with every K
    /// and V row loaded once for all N heads. A head sees `first_len + i0 + qi − first` of
    /// the block's keys (none: it is left as it is).
    // Index loops: each statement reads two or three register arrays at the same (head, key,
    // vector) position, which zips would hide.
    #[allow(clippy::needless_range_loop)]
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma,f16c")]
    #[inline]
    unsafe fn heads_step<const C: usize, const N: usize>(
        step: &BlockStep<'_>,
        heads: [usize; N],
        max: &mut [f32],
        sum: &mut [f32],
        o: &mut [f32],
        s: &mut [[f32; ROWS_PER_WIDEN + 4]; 2],
    ) {
        let BlockStep {
            q,
            h,
            block,
            scale,
            first,
            n,
            k_rows,
            v_rows,
        } = *step;
        let QueryBlock {
            i0,
            first_len,
            h_dh,
            g,
            ..
        } = *block;
        let dh = 16 * C;
        let mut nk = [0usize; N];
        for (nk, &hd) in nk.iter_mut().zip(&heads) {
            *nk = (first_len + i0 + hd / g).saturating_sub(first).min(n);
        }
        let (mut most, mut least) = (0, usize::MAX);
        for &x in &nk {
            most = most.max(x);
            least = least.min(x);
        }
        if most == 0 {
            return;
        }
        let mut q_vec = [[_mm512_setzero_ps(); C]; N];
        for (q_h, &hd) in q_vec.iter_mut().zip(&heads) {
            let at = (i0 + hd / g) * h_dh + (h * g + hd % g) * dh;
            for (c, q_c) in q_h.iter_mut().enumerate() {
                *q_c = _mm512_loadu_ps(q[at + 16 * c..].as_ptr());
            }
        }
        // s[i][j] = q_i · K[first + j] · scale, four keys' sums in flight per head (keys past
        // a head's count are computed and not kept).
        // Rows through raw pointers, a key at a time: indexing the slice per vector kept every
        // bound and offset in a stack slot, and LLVM hoisted all 4·C loads of a quad ahead of
        // the FMAs, spilling them (a third of the kernel's time went to that traffic). Each
        // accumulator still sums its C products in the same order.
        let (k_ptr, v_ptr) = (k_rows.as_ptr(), v_rows.as_ptr());
        assert!(k_rows.len() >= n * dh && v_rows.len() >= n * dh && n > 0);
        let scale4 = _mm_set1_ps(scale);
        let mut r = 0;
        while r < most {
            let mut acc = [[_mm512_setzero_ps(); 4]; N];
            for j in 0..4 {
                // SAFETY: the row index is below n, and k_rows holds n rows of dh (asserted).
                let row = k_ptr.add((r + j).min(n - 1) * dh);
                for c in 0..C {
                    let k_vec = _mm512_loadu_ps(row.add(16 * c));
                    for i in 0..N {
                        acc[i][j] = _mm512_fmadd_ps(q_vec[i][c], k_vec, acc[i][j]);
                    }
                }
            }
            for i in 0..N {
                _mm_storeu_ps(s[i][r..].as_mut_ptr(), _mm_mul_ps(sum4(&acc[i]), scale4));
            }
            r += 4;
        }
        // Online softmax per head: the block's maximum joins the running one; what was summed
        // so far is rescaled to it. Lanes past the head's keys are masked out.
        let neg_inf = _mm512_set1_ps(f32::NEG_INFINITY);
        let mut rescale = [0f32; N];
        for i in 0..N {
            let (hd, nk) = (heads[i], nk[i]);
            if nk == 0 {
                continue;
            }
            let masks = [lanes(nk), lanes(nk.saturating_sub(16))];
            let row = &mut s[i];
            let block_max = _mm512_reduce_max_ps(_mm512_max_ps(
                _mm512_mask_loadu_ps(neg_inf, masks[0], row.as_ptr()),
                _mm512_mask_loadu_ps(neg_inf, masks[1], row[16..].as_ptr()),
            ));
            let old = max[hd];
            let new = if block_max > old { block_max } else { old };
            rescale[i] = if old == f32::NEG_INFINITY {
                0.0
            } else {
                exp(old - new)
            };
            // The block's 32 scores (row has room for them), 16 lanes at a time: lanes past
            // nk are computed and never read.
            let new_v = _mm512_set1_ps(new);
            for half in 0..2 {
                if nk > 16 * half {
                    let at = row[16 * half..16 * half + 16].as_mut_ptr();
                    _mm512_storeu_ps(at, exp16(_mm512_sub_ps(_mm512_loadu_ps(at), new_v)));
                }
            }
            let block_sum = _mm512_reduce_add_ps(_mm512_add_ps(
                _mm512_maskz_loadu_ps(masks[0], row.as_ptr()),
                _mm512_maskz_loadu_ps(masks[1], row[16..].as_ptr()),
            ));
            max[hd] = new;
            sum[hd] = sum[hd] * rescale[i] + block_sum;
        }
        // o_i = o_i · rescale_i + Σ_j p_ij · V[first + j]: the keys all N heads see with each
        // V row loaded once, then each head's own remainder.
        let mut acc = [[_mm512_setzero_ps(); C]; N];
        for i in 0..N {
            if nk[i] > 0 {
                let (o_h, rescale) = (&o[heads[i] * dh..], _mm512_set1_ps(rescale[i]));
                for (c, acc) in acc[i].iter_mut().enumerate() {
                    *acc = _mm512_mul_ps(_mm512_loadu_ps(o_h[16 * c..].as_ptr()), rescale);
                }
            }
        }
        for j in 0..least {
            let mut p = [_mm512_setzero_ps(); N];
            for i in 0..N {
                p[i] = _mm512_set1_ps(s[i][j]);
            }
            // SAFETY: j < least ≤ n, and v_rows holds n rows of dh (asserted).
            let row = v_ptr.add(j * dh);
            for c in 0..C {
                let v_vec = _mm512_loadu_ps(row.add(16 * c));
                for i in 0..N {
                    acc[i][c] = _mm512_fmadd_ps(p[i], v_vec, acc[i][c]);
                }
            }
        }
        for i in 0..N {
            for j in least..nk[i] {
                let p = _mm512_set1_ps(s[i][j]);
                // SAFETY: j < nk[i] ≤ n, and v_rows holds n rows of dh (asserted).
                let row = v_ptr.add(j * dh);
                for (c, acc) in acc[i].iter_mut().enumerate() {
                    *acc = _mm512_fmadd_ps(p, _mm512_loadu_ps(row.add(16 * c)), *acc);
                }
            }
            if nk[i] > 0 {
                let o_h = &mut o[heads[i] * dh..(heads[i] + 1) * dh];
                for (c, acc) in acc[i].iter().enumerate() {
                    _mm512_storeu_ps(o_h[16 * c..].as_mut_ptr(), *acc);
                }
            }
        }
    }
}
