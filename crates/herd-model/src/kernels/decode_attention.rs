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
pub(crate) const ROWS_PER_WIDEN: usize = 32;

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
                attend_head(isa, &q[h * g * dh..(h + 1) * g * dh], k, v, h, scale, &mut o);
            }
        });
    }
    out
}

/// The G query heads of KV head `h` (q_h [G, Dh] → o [G, Dh]) on the best kernel `isa` has,
/// in the calling thread.
///
/// # Panics
/// If `isa` is not supported by this CPU; the views must be in bounds (callers assert it).
pub(crate) fn attend_head<E: HalfElement>(
    isa: Isa,
    q_h: &[f32],
    k: &CacheView<'_, E>,
    v: &CacheView<'_, E>,
    h: usize,
    scale: f32,
    o: &mut [f32],
) {
    assert!(isa.is_supported());
    match isa {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: the CPU has AVX-512 F/BW/VL, AVX2 and FMA (part of this level, asserted).
        Isa::Avx512 | Isa::Avx512Bf16 | Isa::Amx if registers::takes(k.head_dim) => unsafe {
            registers::one_head(q_h, k, v, h, scale, o)
        },
        #[cfg(target_arch = "x86_64")]
        // SAFETY: as above.
        Isa::Avx512 | Isa::Avx512Bf16 | Isa::Amx => unsafe { x86::one_head_avx512(q_h, k, v, h, scale, o) },
        #[cfg(target_arch = "x86_64")]
        // SAFETY: the CPU has AVX2 and FMA (part of this level).
        Isa::Avx2 => unsafe { x86::one_head_avx2(q_h, k, v, h, scale, o) },
        _ => one_head(q_h, k, v, h, scale, o),
    }
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

/// The AVX-512 kernel for the common head sizes (64, 128: four or eight 16-lane vectors, held
/// in registers): each query head's vectors stay in registers while a block of keys (f16 widened
/// in registers as read, bf16 widened once into a buffer) streams past, four keys at a time so
/// four sums are in flight; softmax with a vectorised [`exp`]; then each query head's output
/// accumulates in registers over the block of values. Written with intrinsics because the
/// compiler did not keep array accumulators in registers, and an iterator adapter's closure
/// (called from a function not inlined into the build) loses the calling build's target features.
#[cfg(target_arch = "x86_64")]
pub(crate) mod registers {
    use std::arch::x86_64::*;

    use super::*;

    /// The four sums of four vectors' lanes, [Σ a₀, Σ a₁, Σ a₂, Σ a₃], by transposing adds:
    /// four horizontal reductions took as long as the dot products themselves.
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma,f16c")]
    #[inline]
    pub(crate) unsafe fn sum4(a: &[__m512; 4]) -> __m128 {
        // Lane pairs interleaved, then each 128-bit lane holds partial [a₀, a₁, a₂, a₃].
        let t01 = _mm512_add_ps(_mm512_unpacklo_ps(a[0], a[1]), _mm512_unpackhi_ps(a[0], a[1]));
        let t23 = _mm512_add_ps(_mm512_unpacklo_ps(a[2], a[3]), _mm512_unpackhi_ps(a[2], a[3]));
        let t = _mm512_add_ps(
            _mm512_castpd_ps(_mm512_unpacklo_pd(_mm512_castps_pd(t01), _mm512_castps_pd(t23))),
            _mm512_castpd_ps(_mm512_unpackhi_pd(_mm512_castps_pd(t01), _mm512_castps_pd(t23))),
        );
        // Then the four 128-bit lanes added into the first.
        let t = _mm512_add_ps(t, _mm512_shuffle_f32x4(t, t, 0b01_00_11_10));
        let t = _mm512_add_ps(t, _mm512_shuffle_f32x4(t, t, 0b10_11_00_01));
        _mm512_castps512_ps128(t)
    }

    /// [`exp`] of 16 lanes, the same operations in the same order (so each lane is bit for bit
    /// the scalar's): LLVM leaves the scalar loop scalar (its saturating float-to-int cast), and
    /// at a few thousand keys the softmax's exponentials cost a quarter of a decode head's
    /// time. NaN stays NaN (the clamps keep a NaN lane; its polynomial is NaN).
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma,f16c")]
    #[inline]
    pub(crate) unsafe fn exp16(x: __m512) -> __m512 {
        let underflow = _mm512_cmp_ps_mask::<_CMP_LT_OQ>(x, _mm512_set1_ps(-87.3));
        // max/min return their second operand when either is NaN: x's NaN survives.
        let x = _mm512_max_ps(_mm512_set1_ps(-87.3), x);
        let x = _mm512_min_ps(_mm512_set1_ps(88.3), x);
        let round = _mm512_set1_ps(EXP_ROUND);
        let n = _mm512_sub_ps(
            _mm512_add_ps(_mm512_mul_ps(x, _mm512_set1_ps(std::f32::consts::LOG2_E)), round),
            round,
        );
        let r = _mm512_sub_ps(
            _mm512_sub_ps(x, _mm512_mul_ps(n, _mm512_set1_ps(EXP_C1))),
            _mm512_mul_ps(n, _mm512_set1_ps(EXP_C2)),
        );
        let mut p = _mm512_set1_ps(EXP_P[0]);
        for &c in &EXP_P[1..] {
            p = _mm512_add_ps(_mm512_mul_ps(p, r), _mm512_set1_ps(c));
        }
        let e_r = _mm512_add_ps(
            _mm512_add_ps(_mm512_mul_ps(p, _mm512_mul_ps(r, r)), r),
            _mm512_set1_ps(1.0),
        );
        let n_i = _mm512_add_epi32(_mm512_cvttps_epi32(n), _mm512_set1_epi32(127));
        let two_n = _mm512_castsi512_ps(_mm512_slli_epi32::<23>(n_i));
        _mm512_maskz_mov_ps(!underflow, _mm512_mul_ps(e_r, two_n))
    }

    /// [`softmax_in_place`] with the exponentials 16 lanes at a time by [`exp16`]: the same
    /// lanes, sums and order, so bit for bit the same row.
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma,f16c")]
    pub(crate) unsafe fn softmax_in_place(row: &mut [f32]) {
        const LANES: usize = 16;
        let chunks = row.len() / LANES;
        let tail = chunks * LANES;
        let mut max = f32::NEG_INFINITY;
        for &x in &row[tail..] {
            max = max.max(x);
        }
        let mut lanes = _mm512_set1_ps(f32::NEG_INFINITY);
        for c in 0..chunks {
            let x = _mm512_loadu_ps(row[c * LANES..].as_ptr());
            // x > lanes ? x : lanes, as the scalar comparison (NaN keeps the lane).
            lanes = _mm512_mask_mov_ps(lanes, _mm512_cmp_ps_mask::<_CMP_GT_OQ>(x, lanes), x);
        }
        let mut lane_max = [0f32; LANES];
        _mm512_storeu_ps(lane_max.as_mut_ptr(), lanes);
        for x in lane_max {
            max = max.max(x);
        }
        let max_v = _mm512_set1_ps(max);
        let mut sums = _mm512_setzero_ps();
        for c in 0..chunks {
            let at = row[c * LANES..].as_mut_ptr();
            let e = exp16(_mm512_sub_ps(_mm512_loadu_ps(at), max_v));
            _mm512_storeu_ps(at, e);
            sums = _mm512_add_ps(sums, e);
        }
        let mut sum = 0f32;
        for x in &mut row[tail..] {
            *x = exp(*x - max);
            sum += *x;
        }
        let mut lane_sums = [0f32; LANES];
        _mm512_storeu_ps(lane_sums.as_mut_ptr(), sums);
        for x in lane_sums {
            sum += x;
        }
        let inv = 1.0 / sum;
        let inv_v = _mm512_set1_ps(inv);
        for c in 0..chunks {
            let at = row[c * LANES..].as_mut_ptr();
            _mm512_storeu_ps(at, _mm512_mul_ps(_mm512_loadu_ps(at), inv_v));
        }
        for x in &mut row[tail..] {
            *x *= inv;
        }
    }

    /// Whether the kernel takes this head size.
    pub fn takes(head_dim: usize) -> bool {
        head_dim == 64 || head_dim == 128
    }

    /// # Safety
    /// The CPU must have AVX-512 F/BW/VL, AVX2, FMA and F16C, and `takes(k.head_dim)`.
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma,f16c")]
    pub unsafe fn one_head<E: HalfElement>(
        q_h: &[f32],
        k: &CacheView<'_, E>,
        v: &CacheView<'_, E>,
        h: usize,
        scale: f32,
        o: &mut [f32],
    ) {
        if k.head_dim == 64 {
            one_head_c::<E, 4>(q_h, k, v, h, scale, o)
        } else {
            one_head_c::<E, 8>(q_h, k, v, h, scale, o)
        }
    }

    /// Head size 16·C. Keys and values go by blocks of [`ROWS_PER_WIDEN`] rows, each block used
    /// by all G heads while it is in L1: an f16 cache widened in registers as it is read
    /// (`vcvtph2ps`; a widening pass into a buffer stored and reloaded every value), bf16
    /// through [`widened_rows`], f32 where it lies.
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma,f16c")]
    unsafe fn one_head_c<E: HalfElement, const C: usize>(
        q_h: &[f32],
        k: &CacheView<'_, E>,
        v: &CacheView<'_, E>,
        h: usize,
        scale: f32,
        o: &mut [f32],
    ) {
        let dh = 16 * C;
        let len = k.len;
        let g = q_h.len() / dh;
        let f16 = E::as_f16(k.data).zip(E::as_f16(v.data));
        // Rows first .. first + n of head h of an f16 cache laid out as `view`.
        fn f16_rows<'a, E>(
            data: &'a [half::f16],
            view: &CacheView<'_, E>,
            h: usize,
            first: usize,
            n: usize,
        ) -> &'a [half::f16] {
            let start = h * view.head_stride + first * view.head_dim;
            &data[start..start + n * view.head_dim]
        }
        // Grown only if the cache needs widening (an f32 cache is read where it lies).
        let mut buf = Vec::new();
        // s [G, L]
        let mut s = vec![0f32; g * len];
        for first in (0..len).step_by(ROWS_PER_WIDEN) {
            let n = ROWS_PER_WIDEN.min(len - first);
            if let Some((kd, _)) = f16 {
                let rows = f16_rows(kd, k, h, first, n);
                // SAFETY (both loads): score_rows reads 16 values from at < n·Dh, in the rows.
                score_rows::<C>(q_h, first, n, len, scale, &mut s, |at| unsafe {
                    _mm512_cvtph_ps(_mm256_loadu_si256(rows[at..at + 16].as_ptr().cast()))
                });
            } else {
                let rows = widened_rows(k, h, first, &mut buf);
                score_rows::<C>(q_h, first, n, len, scale, &mut s, |at| unsafe {
                    _mm512_loadu_ps(rows[at..at + 16].as_ptr())
                });
            }
        }
        for row in s.chunks_exact_mut(len) {
            softmax_in_place(row);
        }
        o.fill(0.0);
        for first in (0..len).step_by(ROWS_PER_WIDEN) {
            let n = ROWS_PER_WIDEN.min(len - first);
            if let Some((_, vd)) = f16 {
                let rows = f16_rows(vd, v, h, first, n);
                // SAFETY (both loads): value_rows reads 16 values from at < n·Dh, in the rows.
                value_rows::<C>(&s, first, n, len, o, |at| unsafe {
                    _mm512_cvtph_ps(_mm256_loadu_si256(rows[at..at + 16].as_ptr().cast()))
                });
            } else {
                let rows = widened_rows(v, h, first, &mut buf);
                value_rows::<C>(&s, first, n, len, o, |at| unsafe {
                    _mm512_loadu_ps(rows[at..at + 16].as_ptr())
                });
            }
        }
    }

    /// s[g, first .. first + n] = q_g · K[first + r] · scale for the G heads, K's rows read by
    /// `load` (offset in the block → 16 lanes as f32): each query head's vectors stay in
    /// registers, four keys at a time so four sums are in flight.
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma,f16c")]
    #[inline]
    unsafe fn score_rows<const C: usize>(
        q_h: &[f32],
        first: usize,
        n: usize,
        len: usize,
        scale: f32,
        s: &mut [f32],
        load: impl Fn(usize) -> __m512,
    ) {
        let dh = 16 * C;
        for (gi, q_g) in q_h.chunks_exact(dh).enumerate() {
            let mut q = [_mm512_setzero_ps(); C];
            for (c, q) in q.iter_mut().enumerate() {
                *q = _mm512_loadu_ps(q_g[16 * c..16 * c + 16].as_ptr());
            }
            let s_g = &mut s[gi * len + first..gi * len + first + n];
            let mut r = 0;
            while r < n {
                let keys = (n - r).min(4);
                let mut acc = [_mm512_setzero_ps(); 4];
                for (c, &q_c) in q.iter().enumerate() {
                    for (j, acc) in acc.iter_mut().enumerate().take(keys) {
                        *acc = _mm512_fmadd_ps(q_c, load((r + j) * dh + 16 * c), *acc);
                    }
                }
                let mut sums = [0f32; 4];
                _mm_storeu_ps(sums.as_mut_ptr(), _mm_mul_ps(sum4(&acc), _mm_set1_ps(scale)));
                s_g[r..r + keys].copy_from_slice(&sums[..keys]);
                r += keys;
            }
        }
    }

    /// o_g += Σ_r p[g, first + r] · V[first + r] for the G heads, V's rows read by `load`: each
    /// head's output accumulates in registers over the block.
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma,f16c")]
    #[inline]
    unsafe fn value_rows<const C: usize>(
        p: &[f32],
        first: usize,
        n: usize,
        len: usize,
        o: &mut [f32],
        load: impl Fn(usize) -> __m512,
    ) {
        let dh = 16 * C;
        for (gi, o_g) in o.chunks_exact_mut(dh).enumerate() {
            let mut acc = [_mm512_setzero_ps(); C];
            for (c, acc) in acc.iter_mut().enumerate() {
                *acc = _mm512_loadu_ps(o_g[16 * c..16 * c + 16].as_ptr());
            }
            for (r, &p) in p[gi * len + first..gi * len + first + n].iter().enumerate() {
                let p = _mm512_set1_ps(p);
                for (c, acc) in acc.iter_mut().enumerate() {
                    *acc = _mm512_fmadd_ps(p, load(r * dh + 16 * c), *acc);
                }
            }
            for (c, acc) in acc.iter().enumerate() {
                _mm512_storeu_ps(o_g[16 * c..16 * c + 16].as_mut_ptr(), *acc);
            }
        }
    }
}

/// Rows `first ..` (at most [`ROWS_PER_WIDEN`]) of KV head `h` as f32: widened into `buf`, one
/// conversion call per block; an f32 cache is read where it lies.
#[inline(always)]
pub(crate) fn widened_rows<'a, E: HalfElement>(
    c: &'a CacheView<'_, E>,
    h: usize,
    first: usize,
    buf: &'a mut Vec<f32>,
) -> &'a [f32] {
    let dh = c.head_dim;
    let n = ROWS_PER_WIDEN.min(c.len - first);
    let start = h * c.head_stride + first * dh;
    let rows = &c.data[start..start + n * dh];
    if let Some(rows) = E::as_f32(rows) {
        return rows;
    }
    if buf.len() < n * dh {
        buf.resize(ROWS_PER_WIDEN * dh, 0.0);
    }
    let wide = &mut buf[..n * dh];
    E::widen(rows, wide);
    wide
}

/// [`exp`] of every value on `isa`: 16 lanes at a time by the AVX-512 build where `isa` has
/// it (the tail one by one), [`exp`] per value elsewhere. The twin tests' handle on the
/// vector build, which must equal [`exp`] bit for bit.
///
/// # Panics
/// If this CPU lacks `isa`.
pub fn exp_in_place_on(isa: Isa, x: &mut [f32]) {
    assert!(isa.is_supported());
    #[cfg(target_arch = "x86_64")]
    if matches!(isa, Isa::Avx512 | Isa::Avx512Bf16 | Isa::Amx) {
        use std::arch::x86_64::{_mm512_loadu_ps, _mm512_storeu_ps};
        let mut chunks = x.chunks_exact_mut(16);
        for c in chunks.by_ref() {
            // SAFETY: the CPU has this level (asserted), which includes exp16's features; the
            // chunk holds 16 values.
            unsafe { _mm512_storeu_ps(c.as_mut_ptr(), registers::exp16(_mm512_loadu_ps(c.as_ptr()))) };
        }
        chunks.into_remainder().iter_mut().for_each(|v| *v = exp(*v));
        return;
    }
    x.iter_mut().for_each(|v| *v = exp(*v));
}

/// softmax over `row` on `isa`: the AVX-512 build (exponentials 16 lanes at a time) or the
/// plain one, which it must equal bit for bit.
///
/// # Panics
/// If this CPU lacks `isa`.
pub fn softmax_on(isa: Isa, row: &mut [f32]) {
    assert!(isa.is_supported());
    #[cfg(target_arch = "x86_64")]
    if matches!(isa, Isa::Avx512 | Isa::Avx512Bf16 | Isa::Amx) {
        // SAFETY: the CPU has this level (asserted), which includes the build's features.
        unsafe { registers::softmax_in_place(row) };
        return;
    }
    softmax_in_place(row);
}

/// softmax over one row of scores, in lanes the compiler vectorises: the maximum, then
/// e^(s − max) by [`exp`] with the sum, then the scaling. Plain loops throughout (a closure's
/// body is compiled without the calling build's target features).
#[inline(always)]
pub(crate) fn softmax_in_place(row: &mut [f32]) {
    const LANES: usize = 16;
    let mut lanes = [f32::NEG_INFINITY; LANES];
    let chunks = row.chunks_exact(LANES);
    let mut max = f32::NEG_INFINITY;
    for &x in chunks.remainder() {
        max = max.max(x);
    }
    for c in chunks {
        for i in 0..LANES {
            // A comparison, not f32::max (whose NaN rule keeps it from vectorising); a NaN
            // score makes its row NaN either way, through its own exp.
            lanes[i] = if c[i] > lanes[i] { c[i] } else { lanes[i] };
        }
    }
    for x in lanes {
        max = max.max(x);
    }
    let mut sums = [0f32; LANES];
    let mut chunks = row.chunks_exact_mut(LANES);
    for c in chunks.by_ref() {
        for i in 0..LANES {
            c[i] = exp(c[i] - max);
            sums[i] += c[i];
        }
    }
    let mut sum = 0f32;
    for x in chunks.into_remainder() {
        *x = exp(*x - max);
        sum += *x;
    }
    for s in sums {
        sum += s;
    }
    let inv = 1.0 / sum;
    for x in row.iter_mut() {
        *x *= inv;
    }
}

// ln 2 split in two so that n·C1 is exact.
const EXP_C1: f32 = 0.693_359_4;
const EXP_C2: f32 = -2.121_944_4e-4;
// Rounds to the nearest integer (ties to even) for |v| < 2²².
const EXP_ROUND: f32 = 12_582_912.0;
/// e^r − 1 − r ≈ r² · p(r), p's coefficients from the highest power down.
const EXP_P: [f32; 6] = [
    1.987_569_1e-4,
    1.398_2e-3,
    8.333_452e-3,
    4.166_579_6e-2,
    1.666_666_5e-1,
    0.5,
];

/// e^x for the shifted scores of a softmax (x ≤ 0), after Cephes' `expf`: x = n·ln 2 + r with
/// |r| ≤ ln 2 / 2, e^r by a polynomial (relative error under 3e-7), 2ⁿ built in the exponent
/// bits. Plain arithmetic, so a row of them vectorises where libm's `expf` is a call per value.
/// Below −87.3 (where e^x is under 1e-38, nothing beside the row's maximum, which is e⁰) it
/// returns 0, as e^−∞ is; above 88.3 it saturates; NaN stays NaN.
#[inline(always)]
pub fn exp(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    const C1: f32 = EXP_C1;
    const C2: f32 = EXP_C2;
    const ROUND: f32 = EXP_ROUND;
    let underflow = x < -87.3;
    let x = if underflow {
        -87.3
    } else if x > 88.3 {
        88.3
    } else {
        x
    };
    let n = (x * LOG2E + ROUND) - ROUND;
    let r = x - n * C1 - n * C2;
    let p = EXP_P[0];
    let p = p * r + EXP_P[1];
    let p = p * r + EXP_P[2];
    let p = p * r + EXP_P[3];
    let p = p * r + EXP_P[4];
    let p = p * r + EXP_P[5];
    let e_r = p * (r * r) + r + 1.0;
    // 2ⁿ: n in [−126, 128) here, so a normal f32's exponent field.
    let two_n = f32::from_bits(((n as i32 + 127) as u32) << 23);
    if underflow {
        0.0
    } else {
        e_r * two_n
    }
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
    let mut buf = Vec::new();
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
    buf: &mut Vec<f32>,
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
    buf.resize(ROWS_PER_WIDEN * dh, 0.0);
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
pub(crate) fn dot(a: &[f32], b: &[f32]) -> f32 {
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
