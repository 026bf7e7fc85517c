//! Prefill attention: a run of T queries at consecutive positions, each over its own causal
//! prefix of one key run, by the decode kernel ([`super::decode_attention`]) once per query:
//!
//! ```text
//! query i (0 ≤ i < T) sees keys 0 .. first_len + i     of the views (first_len ≥ 1)
//! o[i, g] = softmax(q[i, g] · K[..first_len + i] · scale) · V[..first_len + i]
//! ```
//!
//! Every (query, KV head) pair is one task on the barrier pool, so a prompt's attention runs
//! on the same workers as its products (candle's matmul ran on rayon's threads while the
//! pool's worker spun beside them on a two-core machine), computes only the keys each query
//! may see (a masked score matrix computes them all and throws half away), and never holds
//! more scores than one query's. A chunked layer's run lies inside one chunk, so its mask is
//! causal too once the views start at the chunk's first key.

use std::sync::Mutex;

use super::decode_attention::{attend_head, CacheView};
use super::half_matmul::HalfElement;
use super::isa::Isa;

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
    assert!(first_len >= 1 && first_len + t - 1 <= k.len, "queries see past the keys");
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
