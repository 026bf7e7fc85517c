//! Attention of one query position over a KV cache stored in f16 or bf16, read where it lies:
//!
//! ```text
//! s[g, l] = q_g · K[l] · scale        for the G query heads sharing KV head h
//! p[g, ·] = softmax(s[g, ·])          in f32
//! o_g     = Σ_l p[g, l] · V[l]        f32 accumulation, rows widened in registers
//! ```
//!
//! Each KV head's keys and values are read once for all G query heads that share it (a row is
//! widened once, then used G times from L1), one task per KV head on the row splitter's pool.
//! At long context a decode step is bound by reading the cache, so a 2-byte cache is what makes
//! depth cheap; candle's matmul would need the cache widened to the query's dtype first, a copy
//! of the whole history per step. The slow twin is the f32 attention the model runs otherwise
//! (`Attention::attend` on the widened cache).

use std::sync::Mutex;

use super::half_matmul::HalfElement;
use super::isa::Isa;

/// Cache rows widened to f32 per conversion call.
const ROWS_PER_WIDEN: usize = 32;

/// The cache of one layer as the kernel reads it: `n_kv_heads` heads, each `len` rows of
/// `head_dim` values starting `head_stride` values after the previous head's.
pub struct CacheView<'a, E> {
    pub data: &'a [E],
    pub n_kv_heads: usize,
    pub head_stride: usize,
    pub len: usize,
    pub head_dim: usize,
}

impl<E> CacheView<'_, E> {
    /// Whether every row the kernel reads lies inside `data`.
    pub fn in_bounds(&self) -> bool {
        self.n_kv_heads == 0
            || self.len == 0
            || (self.n_kv_heads - 1) * self.head_stride + self.len * self.head_dim <= self.data.len()
    }
}

/// q [H, Dh] (H = G · n_kv_heads, query heads h·G .. h·G+G on KV head h) → o [H, Dh].
///
/// # Panics
/// If the shapes disagree or a view reaches outside its data.
pub fn decode_attention<E: HalfElement>(
    q: &[f32],
    k: &CacheView<'_, E>,
    v: &CacheView<'_, E>,
    scale: f32,
) -> Vec<f32> {
    let (hkv, dh, len) = (k.n_kv_heads, k.head_dim, k.len);
    assert!(k.in_bounds() && v.in_bounds());
    assert_eq!((v.n_kv_heads, v.head_dim, v.len), (hkv, dh, len));
    assert!(hkv > 0 && q.len().is_multiple_of(hkv * dh.max(1)));
    let g = q.len() / (hkv * dh.max(1));
    let mut out = vec![0f32; q.len()];
    if len == 0 || dh == 0 {
        return out;
    }
    let isa = Isa::current();
    {
        let heads: Vec<Mutex<&mut [f32]>> = out.chunks_mut(g * dh).map(Mutex::new).collect();
        candle_core::utils::barrier_pool().execute_chunked(hkv, |range| {
            for h in range {
                let Ok(mut o) = heads[h].lock() else { continue };
                let q_h = &q[h * g * dh..(h + 1) * g * dh];
                match isa {
                    #[cfg(target_arch = "x86_64")]
                    // SAFETY: the CPU has AVX-512 F/BW/VL, AVX2 and FMA (part of this level).
                    Isa::Avx512 | Isa::Avx512Bf16 | Isa::Amx => unsafe {
                        x86::one_head_avx512(q_h, k, v, h, scale, &mut o)
                    },
                    #[cfg(target_arch = "x86_64")]
                    // SAFETY: the CPU has AVX2 and FMA (part of this level).
                    Isa::Avx2 => unsafe { x86::one_head_avx2(q_h, k, v, h, scale, &mut o) },
                    _ => one_head(q_h, k, v, h, scale, &mut o),
                }
            }
        });
    }
    out
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::*;

    // The same loops compiled for wider registers (the portable build is SSE2, which leaves the
    // accumulation of V rows — L·G·Dh multiply-adds — four lanes wide).

    macro_rules! build {
        ($name:ident, $features:literal) => {
            #[target_feature(enable = $features)]
            pub unsafe fn $name<E: HalfElement>(
                q_h: &[f32],
                k: &CacheView<'_, E>,
                v: &CacheView<'_, E>,
                h: usize,
                scale: f32,
                o: &mut [f32],
            ) {
                one_head(q_h, k, v, h, scale, o)
            }
        };
    }

    build!(one_head_avx512, "avx512f,avx512bw,avx512vl,avx2,fma,f16c");
    build!(one_head_avx2, "avx2,fma,f16c");
}

/// The G query heads of KV head `h`: q_h [G, Dh] → o [G, Dh].
#[inline(always)]
fn one_head<E: HalfElement>(
    q_h: &[f32],
    k: &CacheView<'_, E>,
    v: &CacheView<'_, E>,
    h: usize,
    scale: f32,
    o: &mut [f32],
) {
    let (dh, len) = (k.head_dim, k.len);
    let g = q_h.len() / dh;
    let mut buf = vec![0f32; ROWS_PER_WIDEN * dh];
    // s [G, L]
    let mut s = vec![0f32; g * len];
    for_each_row(k, h, &mut buf, |l, k_row| {
        for (gi, q_g) in q_h.chunks_exact(dh).enumerate() {
            s[gi * len + l] = dot(q_g, k_row) * scale;
        }
    });
    for row in s.chunks_exact_mut(len) {
        let max = row.iter().fold(f32::NEG_INFINITY, |m, &x| m.max(x));
        let mut sum = 0f32;
        for x in row.iter_mut() {
            *x = (*x - max).exp();
            sum += *x;
        }
        let inv = 1.0 / sum;
        row.iter_mut().for_each(|x| *x *= inv);
    }
    o.fill(0.0);
    for_each_row(v, h, &mut buf, |l, v_row| {
        for (gi, o_g) in o.chunks_exact_mut(dh).enumerate() {
            let p = s[gi * len + l];
            o_g.iter_mut().zip(v_row).for_each(|(o, &x)| *o += p * x);
        }
    });
}

/// Calls `f(l, row)` for each row l of KV head `h`, widened to f32. Rows are widened
/// [`ROWS_PER_WIDEN`] at a time into `buf`: one conversion call per block, not per row, the
/// block then used from L1. An f32 cache is read where it lies (copying it into `buf` was 6 %
/// of a Q4_K_M decode step at a few hundred tokens of context).
#[inline(always)]
fn for_each_row<E: HalfElement>(
    c: &CacheView<'_, E>,
    h: usize,
    buf: &mut [f32],
    mut f: impl FnMut(usize, &[f32]),
) {
    let dh = c.head_dim;
    let rows = &c.data[h * c.head_stride..h * c.head_stride + c.len * dh];
    if let Some(rows) = E::as_f32(rows) {
        for (l, row) in rows.chunks_exact(dh).enumerate() {
            f(l, row);
        }
        return;
    }
    for (b, block) in rows.chunks(ROWS_PER_WIDEN * dh).enumerate() {
        let wide = &mut buf[..block.len()];
        E::widen(block, wide);
        for (r, row) in wide.chunks_exact(dh).enumerate() {
            f(b * ROWS_PER_WIDEN + r, row);
        }
    }
}

/// `Σ a[i]·b[i]` over sixteen running sums (a vector's worth, so the compiler keeps them in one
/// register of whatever width the calling build has), then the tail.
#[inline(always)]
fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0f32; 16];
    let (a16, b16) = (a.chunks_exact(16), b.chunks_exact(16));
    let tail: f32 = a16
        .remainder()
        .iter()
        .zip(b16.remainder())
        .map(|(x, y)| x * y)
        .sum();
    for (x, y) in a16.zip(b16) {
        for i in 0..16 {
            acc[i] += x[i] * y[i];
        }
    }
    acc.iter().sum::<f32>() + tail
}
