//! Attention of one query position over a KV cache stored in f32, f16, bf16 or Q8_0 blocks
//! ([`KvRows`]), read where it lies:
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
use super::kv_q8;

/// Cache rows widened to f32 per conversion call.
pub(crate) const ROWS_PER_WIDEN: usize = 32;

/// A layer's cache as the kernel reads it: `n_kv_heads` heads of `len` rows of `head_dim`
/// values, handed out a block of rows at a time in whatever form its storage gives them.
pub trait KvRows: Sync {
    fn n_kv_heads(&self) -> usize;
    fn len(&self) -> usize;
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    fn head_dim(&self) -> usize;
    /// Whether every row the kernel reads lies inside the data.
    fn in_bounds(&self) -> bool;
    /// Rows `first .. first + n` of head `h` where they lie as f16 (the AVX-512 kernel widens
    /// them in registers as it reads them); `None` for other storage.
    fn f16_rows(&self, _h: usize, _first: usize, _n: usize) -> Option<&[half::f16]> {
        None
    }
    /// Rows `first .. first + n` of head `h` where they lie as Q8_0 blocks, each row
    /// [`kv_q8::row_bytes`] bytes (the AVX-512 kernel widens them in registers); `None` for
    /// other storage.
    fn q8_rows(&self, _h: usize, _first: usize, _n: usize) -> Option<&[u8]> {
        None
    }
    /// Rows `first .. first + n` (n ≤ [`ROWS_PER_WIDEN`]) of head `h` as f32: where they lie,
    /// or widened into `buf` (on `isa`, where the widening has builds).
    fn f32_rows<'s>(&'s self, isa: Isa, h: usize, first: usize, n: usize, buf: &'s mut Vec<f32>)
        -> &'s [f32];
}

/// The cache of one layer stored as f32, f16 or bf16: `n_kv_heads` heads, each `len` rows of
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

impl<E: HalfElement> KvRows for CacheView<'_, E> {
    fn n_kv_heads(&self) -> usize {
        self.n_kv_heads
    }
    fn len(&self) -> usize {
        self.len
    }
    fn head_dim(&self) -> usize {
        self.head_dim
    }
    fn in_bounds(&self) -> bool {
        CacheView::in_bounds(self)
    }
    #[inline(always)]
    fn f16_rows(&self, h: usize, first: usize, n: usize) -> Option<&[half::f16]> {
        let start = h * self.head_stride + first * self.head_dim;
        E::as_f16(&self.data[start..start + n * self.head_dim])
    }
    #[inline(always)]
    fn f32_rows<'s>(&'s self, _: Isa, h: usize, first: usize, n: usize, buf: &'s mut Vec<f32>) -> &'s [f32] {
        debug_assert_eq!(n, ROWS_PER_WIDEN.min(self.len - first));
        widened_rows(self, h, first, buf)
    }
}

/// The cache of one layer stored as Q8_0 blocks ([`super::kv_q8`]): `n_kv_heads` heads, each
/// `len` rows of `head_dim` values (a multiple of 32) in [`kv_q8::row_bytes`] bytes, starting
/// `head_stride` bytes after the previous head's.
pub struct Q8CacheView<'a> {
    pub data: &'a [u8],
    pub n_kv_heads: usize,
    pub head_stride: usize,
    pub len: usize,
    pub head_dim: usize,
}

impl KvRows for Q8CacheView<'_> {
    fn n_kv_heads(&self) -> usize {
        self.n_kv_heads
    }
    fn len(&self) -> usize {
        self.len
    }
    fn head_dim(&self) -> usize {
        self.head_dim
    }
    fn in_bounds(&self) -> bool {
        self.head_dim.is_multiple_of(kv_q8::BLOCK)
            && (self.n_kv_heads == 0
                || self.len == 0
                || (self.n_kv_heads - 1) * self.head_stride + self.len * kv_q8::row_bytes(self.head_dim)
                    <= self.data.len())
    }
    #[inline(always)]
    fn q8_rows(&self, h: usize, first: usize, n: usize) -> Option<&[u8]> {
        let rb = kv_q8::row_bytes(self.head_dim);
        let start = h * self.head_stride + first * rb;
        Some(&self.data[start..start + n * rb])
    }
    fn f32_rows<'s>(
        &'s self,
        isa: Isa,
        h: usize,
        first: usize,
        n: usize,
        buf: &'s mut Vec<f32>,
    ) -> &'s [f32] {
        let rb = kv_q8::row_bytes(self.head_dim);
        let start = h * self.head_stride + first * rb;
        if buf.len() < n * self.head_dim {
            buf.resize(ROWS_PER_WIDEN.max(n) * self.head_dim, 0.0);
        }
        let wide = &mut buf[..n * self.head_dim];
        kv_q8::dequantize_on(isa, &self.data[start..start + n * rb], wide);
        wide
    }
}

/// q [H, Dh] (H = G · n_kv_heads, query heads h·G .. h·G+G on KV head h) → o [H, Dh].
///
/// # Panics
/// If the shapes disagree or a view reaches outside its data.
pub fn decode_attention<R: KvRows>(q: &[f32], k: &R, v: &R, scale: f32) -> Vec<f32> {
    decode_attention_on(Isa::current(), q, k, v, scale)
}

/// [`decode_attention`] on a chosen [`Isa`] (the twin tests force each path).
///
/// # Panics
/// As [`decode_attention`], or if this CPU lacks `isa`.
pub fn decode_attention_on<R: KvRows>(isa: Isa, q: &[f32], k: &R, v: &R, scale: f32) -> Vec<f32> {
    let (hkv, dh, len) = (k.n_kv_heads(), k.head_dim(), k.len());
    assert!(isa.is_supported());
    assert!(k.in_bounds() && v.in_bounds());
    assert_eq!((v.n_kv_heads(), v.head_dim(), v.len()), (hkv, dh, len));
    assert!(hkv > 0 && q.len().is_multiple_of(hkv * dh.max(1)));
    let g = q.len() / (hkv * dh.max(1));
    let mut out = vec![0f32; q.len()];
    if len == 0 || dh == 0 {
        return out;
    }
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
pub(crate) fn attend_head<R: KvRows>(
    isa: Isa,
    q_h: &[f32],
    k: &R,
    v: &R,
    h: usize,
    scale: f32,
    o: &mut [f32],
) {
    assert!(isa.is_supported());
    match isa {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: the CPU has AVX-512 F/BW/VL, AVX2 and FMA (part of this level, asserted).
        Isa::Avx512 | Isa::Avx512Bf16 | Isa::Amx if registers::takes(k.head_dim()) => unsafe {
            registers::one_head(q_h, k, v, h, scale, o)
        },
        #[cfg(target_arch = "x86_64")]
        // SAFETY: as above.
        Isa::Avx512 | Isa::Avx512Bf16 | Isa::Amx => unsafe {
            x86::one_head_avx512(isa, q_h, k, v, h, scale, o)
        },
        #[cfg(target_arch = "x86_64")]
        // SAFETY: the CPU has AVX2 and FMA (part of this level).
        Isa::Avx2 => unsafe { x86::one_head_avx2(isa, q_h, k, v, h, scale, o) },
        _ => one_head(isa, q_h, k, v, h, scale, o),
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
            pub unsafe fn $name<R: KvRows>(
                isa: Isa,
                q_h: &[f32],
                k: &R,
                v: &R,
                h: usize,
                scale: f32,
                o: &mut [f32],
            ) {
                one_head(isa, q_h, k, v, h, scale, o)
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
    pub unsafe fn one_head<R: KvRows>(q_h: &[f32], k: &R, v: &R, h: usize, scale: f32, o: &mut [f32]) {
        if k.head_dim() == 64 {
            one_head_c::<R, 4>(q_h, k, v, h, scale, o)
        } else {
            one_head_c::<R, 8>(q_h, k, v, h, scale, o)
        }
    }

    /// Head size 16·C. Keys and values go by blocks of [`ROWS_PER_WIDEN`] rows, each row
    /// widened into registers once for all G query heads ([`score_rows`], [`value_rows`]): an
    /// f16 cache by `vcvtph2ps` as it is read, Q8_0 by [`q8_row`], bf16 through
    /// [`KvRows::f32_rows`] (widened into a buffer), f32 where it lies.
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma,f16c")]
    unsafe fn one_head_c<R: KvRows, const C: usize>(
        q_h: &[f32],
        k: &R,
        v: &R,
        h: usize,
        scale: f32,
        o: &mut [f32],
    ) {
        let dh = 16 * C;
        let len = k.len();
        let g = q_h.len() / dh;
        let rb = kv_q8::row_bytes(dh);
        // Grown only if the cache needs widening (an f32 cache is read where it lies).
        let mut buf = Vec::new();
        // Per-key partial sums, four keys of each query head.
        let mut parts = Vec::new();
        // s [G, L]
        let mut s = vec![0f32; g * len];
        for first in (0..len).step_by(ROWS_PER_WIDEN) {
            let n = ROWS_PER_WIDEN.min(len - first);
            if let Some(rows) = k.f16_rows(h, first, n) {
                assert!(rows.len() >= n * dh);
                // SAFETY (each row closure): row r < n lies in `rows` (asserted).
                score_rows::<C>(q_h, first, n, len, scale, &mut s, &mut parts, |r| unsafe {
                    f16_row::<C>(rows.as_ptr().add(r * dh))
                });
            } else if let Some(rows) = k.q8_rows(h, first, n) {
                assert!(rows.len() >= n * rb);
                score_rows::<C>(q_h, first, n, len, scale, &mut s, &mut parts, |r| unsafe {
                    q8_row::<C>(rows.as_ptr().add(r * rb))
                });
            } else {
                let rows = k.f32_rows(Isa::Avx512, h, first, n, &mut buf);
                assert!(rows.len() >= n * dh);
                score_rows::<C>(q_h, first, n, len, scale, &mut s, &mut parts, |r| unsafe {
                    f32_row::<C>(rows.as_ptr().add(r * dh))
                });
            }
        }
        for row in s.chunks_exact_mut(len) {
            softmax_in_place(row);
        }
        o.fill(0.0);
        for first in (0..len).step_by(ROWS_PER_WIDEN) {
            let n = ROWS_PER_WIDEN.min(len - first);
            if let Some(rows) = v.f16_rows(h, first, n) {
                assert!(rows.len() >= n * dh);
                // SAFETY (each row closure): row r < n lies in `rows` (asserted).
                value_rows::<C>(&s, first, n, len, o, |r| unsafe {
                    f16_row::<C>(rows.as_ptr().add(r * dh))
                });
            } else if let Some(rows) = v.q8_rows(h, first, n) {
                assert!(rows.len() >= n * rb);
                value_rows::<C>(&s, first, n, len, o, |r| unsafe {
                    q8_row::<C>(rows.as_ptr().add(r * rb))
                });
            } else {
                let rows = v.f32_rows(Isa::Avx512, h, first, n, &mut buf);
                assert!(rows.len() >= n * dh);
                value_rows::<C>(&s, first, n, len, o, |r| unsafe {
                    f32_row::<C>(rows.as_ptr().add(r * dh))
                });
            }
        }
    }

    /// One f16 row of 16·C values as C vectors of f32.
    ///
    /// # Safety
    /// `row` must point at 16·C readable f16 values.
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma,f16c")]
    #[inline]
    unsafe fn f16_row<const C: usize>(row: *const half::f16) -> [__m512; C] {
        let mut k = [_mm512_setzero_ps(); C];
        for (c, k) in k.iter_mut().enumerate() {
            // SAFETY: 16 values at 16·c < 16·C, in the row (the caller's contract).
            *k = unsafe { _mm512_cvtph_ps(_mm256_loadu_si256(row.add(16 * c).cast())) };
        }
        k
    }

    /// One f32 row of 16·C values as C vectors.
    ///
    /// # Safety
    /// `row` must point at 16·C readable f32 values.
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma,f16c")]
    #[inline]
    unsafe fn f32_row<const C: usize>(row: *const f32) -> [__m512; C] {
        let mut k = [_mm512_setzero_ps(); C];
        for (c, k) in k.iter_mut().enumerate() {
            // SAFETY: 16 values at 16·c < 16·C, in the row (the caller's contract).
            *k = unsafe { _mm512_loadu_ps(row.add(16 * c)) };
        }
        k
    }

    /// One Q8_0 row [`kv_q8::row_bytes`]`(16·C)` as C vectors of its values d·q, each the f32
    /// the widened cache holds (one multiply of the exact level by the block's scale).
    ///
    /// # Safety
    /// `row` must point at a whole row of C / 2 blocks.
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma,f16c")]
    #[inline]
    unsafe fn q8_row<const C: usize>(row: *const u8) -> [__m512; C] {
        let mut k = [_mm512_setzero_ps(); C];
        for b in 0..C / 2 {
            // SAFETY: block b's 34 bytes lie in the row (the caller's contract).
            unsafe {
                let blk = row.add(b * kv_q8::BLOCK_BYTES);
                let bits = i32::from(u16::from_le_bytes([*blk, *blk.add(1)]));
                let d = _mm512_set1_ps(_mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtsi32_si128(bits))));
                for half in 0..2 {
                    let q = _mm_loadu_si128(blk.add(2 + 16 * half).cast());
                    k[2 * b + half] = _mm512_mul_ps(d, _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(q)));
                }
            }
        }
        k
    }

    /// s[g, first .. first + n] = q_g · K[first + r] · scale for the G heads, key r of the block
    /// widened by `row` once for all of them (a widening per head cost as much as the dot
    /// products: `vcvtph2ps` runs at one vector a cycle). Each head's sums are kept in `parts`
    /// four keys at a time and reduced by [`sum4`], so four sums are in flight; whatever the
    /// storage, a score is the same sequence of multiply-adds over the same f32 values, so an
    /// f16 or Q8_0 cache scores bit for bit what its widened f32 copy does.
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma,f16c")]
    #[inline]
    #[allow(clippy::too_many_arguments)]
    unsafe fn score_rows<const C: usize>(
        q_h: &[f32],
        first: usize,
        n: usize,
        len: usize,
        scale: f32,
        s: &mut [f32],
        parts: &mut Vec<[__m512; 4]>,
        row: impl Fn(usize) -> [__m512; C],
    ) {
        let dh = 16 * C;
        let g = q_h.len() / dh;
        parts.resize(g, [_mm512_setzero_ps(); 4]);
        let mut r = 0;
        while r < n {
            let keys = (n - r).min(4);
            for j in 0..keys {
                let k = row(r + j);
                for (q_g, part) in q_h.chunks_exact(dh).zip(parts.iter_mut()) {
                    let mut acc = _mm512_setzero_ps();
                    for (c, k_c) in k.iter().enumerate() {
                        acc = _mm512_fmadd_ps(_mm512_loadu_ps(q_g[16 * c..16 * c + 16].as_ptr()), *k_c, acc);
                    }
                    part[j] = acc;
                }
            }
            for (gi, part) in parts.iter_mut().enumerate() {
                for p in part.iter_mut().skip(keys) {
                    *p = _mm512_setzero_ps();
                }
                let mut sums = [0f32; 4];
                _mm_storeu_ps(sums.as_mut_ptr(), _mm_mul_ps(sum4(part), _mm_set1_ps(scale)));
                s[gi * len + first + r..gi * len + first + r + keys].copy_from_slice(&sums[..keys]);
            }
            r += keys;
        }
    }

    /// o_g += Σ_r p[g, first + r] · V[first + r] for the G heads: query heads two at a time,
    /// their outputs in registers, value row r of the block widened by `row` once for both.
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma,f16c")]
    #[inline]
    unsafe fn value_rows<const C: usize>(
        p: &[f32],
        first: usize,
        n: usize,
        len: usize,
        o: &mut [f32],
        row: impl Fn(usize) -> [__m512; C],
    ) {
        let dh = 16 * C;
        for (pair, o_pair) in o.chunks_mut(2 * dh).enumerate() {
            let heads = o_pair.len() / dh;
            let mut acc = [[_mm512_setzero_ps(); C]; 2];
            for (hi, acc) in acc.iter_mut().enumerate().take(heads) {
                for (c, acc) in acc.iter_mut().enumerate() {
                    *acc = _mm512_loadu_ps(o_pair[hi * dh + 16 * c..hi * dh + 16 * c + 16].as_ptr());
                }
            }
            let p_of = |hi: usize| &p[(2 * pair + hi) * len + first..(2 * pair + hi) * len + first + n];
            let (p0, p1) = (p_of(0), if heads == 2 { p_of(1) } else { p_of(0) });
            for r in 0..n {
                let v = row(r);
                let w0 = _mm512_set1_ps(p0[r]);
                for (acc, v_c) in acc[0].iter_mut().zip(&v) {
                    *acc = _mm512_fmadd_ps(w0, *v_c, *acc);
                }
                if heads == 2 {
                    let w1 = _mm512_set1_ps(p1[r]);
                    for (acc, v_c) in acc[1].iter_mut().zip(&v) {
                        *acc = _mm512_fmadd_ps(w1, *v_c, *acc);
                    }
                }
            }
            for (hi, acc) in acc.iter().enumerate().take(heads) {
                for (c, acc) in acc.iter().enumerate() {
                    _mm512_storeu_ps(o_pair[hi * dh + 16 * c..hi * dh + 16 * c + 16].as_mut_ptr(), *acc);
                }
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
fn one_head<R: KvRows>(isa: Isa, q_h: &[f32], k: &R, v: &R, h: usize, scale: f32, o: &mut [f32]) {
    let (dh, len) = (k.head_dim(), k.len());
    let g = q_h.len() / dh;
    let mut buf = Vec::new();
    // s [G, L]
    let mut s = vec![0f32; g * len];
    for_each_row(isa, k, h, &mut buf, |l, k_row| {
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
    for_each_row(isa, v, h, &mut buf, |l, v_row| {
        for (gi, o_g) in o.chunks_exact_mut(dh).enumerate() {
            let p = s[gi * len + l];
            o_g.iter_mut().zip(v_row).for_each(|(o, &x)| *o += p * x);
        }
    });
}

/// Calls `f(l, row)` for each row l of KV head `h`, as f32. Rows come [`ROWS_PER_WIDEN`] at a
/// time ([`KvRows::f32_rows`]): one conversion call per block, not per row, the block then used
/// from L1. An f32 cache is read where it lies (copying it into `buf` was 6 % of a Q4_K_M
/// decode step at a few hundred tokens of context).
#[inline(always)]
fn for_each_row<R: KvRows>(isa: Isa, c: &R, h: usize, buf: &mut Vec<f32>, mut f: impl FnMut(usize, &[f32])) {
    let (dh, len) = (c.head_dim(), c.len());
    for first in (0..len).step_by(ROWS_PER_WIDEN) {
        let n = ROWS_PER_WIDEN.min(len - first);
        for (r, row) in c.f32_rows(isa, h, first, n, buf).chunks_exact(dh).enumerate() {
            f(first + r, row);
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
