//! `y = x Wᵀ` with f32 activations x [T, K] and weights W [N, K] stored in bf16, f16 or f32,
//! accumulated in f32 — the weights stay in their stored precision in memory and are widened
//! in registers or a panel at a time. Widening bf16/f16 to f32 is exact, so this computes what
//! the reference computes on the upcast weights (up to summation order).
//!
//! Decode (few rows of x) streams each weight row once, dotting it with every x row
//! ([`Isa`]-specific intrinsics); prefill widens panels of [`PANEL_ROWS`] weight rows and hands
//! them to the `gemm` crate's f32 kernel, or runs on block products where they win (AMX tiles,
//! AVX-512 BF16 dot products, f32 FMAs against bf16 weights: `block_split`). Either way each
//! thread takes a run of weight rows ([`split_rows`]) and writes its own column block.

use std::borrow::Cow;

use half::{bf16, f16};

use super::amx;
use super::isa::Isa;
use super::row_split::{split_columns_writing_all, split_rows, split_rows_by};

/// Weight rows widened at once in the prefill path ([PANEL_ROWS, K] f32 per task).
const PANEL_ROWS: usize = 64;
/// Up to this many activation rows take the streaming (matrix–vector) path.
pub const GEMV_MAX_ROWS: usize = 4;

/// A weight element that widens exactly to f32.
pub trait HalfElement: Copy + Send + Sync + 'static {
    /// Whether [`HalfElement::dot`] widens through its scratch buffer.
    const DOT_NEEDS_BUFFER: bool = true;
    /// Widens a slice (SIMD where `half` finds it).
    fn widen(src: &[Self], dst: &mut [f32]);
    /// Widens one value (the slow twin's path).
    fn to_f32_scalar(self) -> f32;
    /// The values themselves where they are f32 already, so a reader can skip widening them
    /// into a copy; `None` for narrower formats.
    fn as_f32(_: &[Self]) -> Option<&[f32]> {
        None
    }
    /// The values themselves where they are f16, so a kernel can widen them in registers
    /// (`vcvtph2ps`) as it reads them; `None` for other formats.
    fn as_f16(_: &[Self]) -> Option<&[f16]> {
        None
    }
    /// `Σ x[i]·w[i]` with w widened on the fly on `isa`; `buf` is scratch of w's length for
    /// formats that widen through a buffer.
    fn dot(isa: Isa, x: &[f32], w: &[Self], buf: &mut [f32]) -> f32 {
        Self::widen(w, buf);
        simd::dot_f32(isa, x, buf)
    }
    /// The weights as bf16 planes that sum to them exactly, for the AMX tiles
    /// ([`amx::split_exact`]).
    fn bf16_planes(w: &[Self]) -> Vec<Cow<'_, [bf16]>> {
        let mut wide = vec![0f32; w.len()];
        Self::widen(w, &mut wide);
        amx::split_exact(&wide).into_iter().map(Cow::Owned).collect()
    }
    /// Whether every value is a bf16 (one plane of [`HalfElement::bf16_planes`]); stops at the
    /// first that is not.
    fn is_bf16(w: &[Self]) -> bool {
        w.iter().all(|v| amx::planes_needed(&[v.to_f32_scalar()]) == 1)
    }
    /// Whether every value is an f16 (NaN counts as one); stops at the first that is not.
    fn is_f16(w: &[Self]) -> bool {
        w.iter().all(|v| {
            let x = v.to_f32_scalar();
            x.is_nan() || f16::from_f32(x).to_f32() == x
        })
    }
    /// The values as f16 ([`HalfElement::is_f16`] must hold, or they are rounded), for the
    /// f16 FMA blocks.
    fn f16_rows(w: &[Self]) -> Cow<'_, [f16]> {
        Cow::Owned(w.iter().map(|v| f16::from_f32(v.to_f32_scalar())).collect())
    }
}

impl HalfElement for bf16 {
    fn widen(src: &[Self], dst: &mut [f32]) {
        // bf16 is the top half of an f32: a shift, which the compiler vectorises (half's own
        // conversion quiets NaNs value by value and does not).
        for (d, s) in dst.iter_mut().zip(src) {
            *d = f32::from_bits(u32::from(s.to_bits()) << 16);
        }
    }
    fn to_f32_scalar(self) -> f32 {
        f32::from_bits(u32::from(self.to_bits()) << 16)
    }
    const DOT_NEEDS_BUFFER: bool = false;
    fn dot(isa: Isa, x: &[f32], w: &[Self], _buf: &mut [f32]) -> f32 {
        simd::dot_bf16(isa, x, w)
    }
    fn bf16_planes(w: &[Self]) -> Vec<Cow<'_, [bf16]>> {
        vec![Cow::Borrowed(w)]
    }
    fn is_bf16(_: &[Self]) -> bool {
        true
    }
}

impl HalfElement for f16 {
    fn as_f16(s: &[Self]) -> Option<&[f16]> {
        Some(s)
    }
    fn is_f16(_: &[Self]) -> bool {
        true
    }
    fn f16_rows(w: &[Self]) -> Cow<'_, [f16]> {
        Cow::Borrowed(w)
    }
    fn widen(src: &[Self], dst: &mut [f32]) {
        widen_f16_on(Isa::current(), src, dst);
    }
    fn to_f32_scalar(self) -> f32 {
        self.to_f32()
    }
}

impl HalfElement for f32 {
    fn widen(src: &[Self], dst: &mut [f32]) {
        dst.copy_from_slice(src);
    }
    fn as_f32(s: &[Self]) -> Option<&[f32]> {
        Some(s)
    }
    fn to_f32_scalar(self) -> f32 {
        self
    }
    const DOT_NEEDS_BUFFER: bool = false;
    fn dot(isa: Isa, x: &[f32], w: &[Self], _buf: &mut [f32]) -> f32 {
        simd::dot_f32(isa, x, w)
    }
}

/// Widens f16 to f32 (exact) on `isa`: one `vcvtph2ps` per 16 (AVX-512) or 8 (F16C, part of
/// the AVX2 level) values. `half`'s slice conversion checks the CPU and calls out per 8 values,
/// which made widening the f16 KV cache a quarter of a decode step at depth 8192.
///
/// # Panics
/// If the lengths differ, or this CPU does not support `isa`.
pub fn widen_f16_on(isa: Isa, src: &[f16], dst: &mut [f32]) {
    assert_eq!(src.len(), dst.len());
    assert!(isa.is_supported());
    match isa {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: the CPU supports AVX-512 F (asserted: part of these levels); lengths agree.
        Isa::Avx512 | Isa::Avx512Bf16 | Isa::Amx => unsafe { f16_x86::widen_avx512(src, dst) },
        #[cfg(target_arch = "x86_64")]
        // SAFETY: the CPU supports AVX2 and F16C (asserted: part of this level); lengths agree.
        Isa::Avx2 => unsafe { f16_x86::widen_f16c(src, dst) },
        _ => src.iter().zip(dst.iter_mut()).for_each(|(s, d)| *d = s.to_f32()),
    }
}

/// Narrows f32 to f16 on `isa`, rounding to nearest even as `f16::from_f32` does (infinities,
/// overflow to infinity, f16 subnormals and NaNs alike): one `vcvtps2ph` per 16 (AVX-512) or
/// 8 (F16C) values. candle's conversion is a scalar loop on one thread, ~3 % of a long
/// prompt's time when its keys and values enter an f16 cache.
///
/// # Panics
/// If the lengths differ, or this CPU does not support `isa`.
pub fn narrow_f16_on(isa: Isa, src: &[f32], dst: &mut [f16]) {
    assert_eq!(src.len(), dst.len());
    assert!(isa.is_supported());
    match isa {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: the CPU supports AVX-512 F (asserted: part of these levels); lengths agree.
        Isa::Avx512 | Isa::Avx512Bf16 | Isa::Amx => unsafe { f16_x86::narrow_avx512(src, dst) },
        #[cfg(target_arch = "x86_64")]
        // SAFETY: the CPU supports AVX2 and F16C (asserted: part of this level); lengths agree.
        Isa::Avx2 => unsafe { f16_x86::narrow_f16c(src, dst) },
        _ => src
            .iter()
            .zip(dst.iter_mut())
            .for_each(|(s, d)| *d = f16::from_f32(*s)),
    }
}

#[cfg(target_arch = "x86_64")]
mod f16_x86 {
    use std::arch::x86_64::*;

    use half::f16;

    #[target_feature(enable = "avx512f")]
    pub unsafe fn widen_avx512(src: &[f16], dst: &mut [f32]) {
        let n = src.len().min(dst.len());
        let (sp, dp) = (src.as_ptr().cast::<u16>(), dst.as_mut_ptr());
        let mut i = 0;
        while i + 16 <= n {
            _mm512_storeu_ps(dp.add(i), _mm512_cvtph_ps(_mm256_loadu_si256(sp.add(i).cast())));
            i += 16;
        }
        for (d, s) in dst[i..n].iter_mut().zip(&src[i..n]) {
            *d = s.to_f32();
        }
    }

    #[target_feature(enable = "avx512f")]
    pub unsafe fn narrow_avx512(src: &[f32], dst: &mut [f16]) {
        let n = src.len().min(dst.len());
        let (sp, dp) = (src.as_ptr(), dst.as_mut_ptr().cast::<u16>());
        let mut i = 0;
        while i + 16 <= n {
            let h = _mm512_cvtps_ph::<_MM_FROUND_TO_NEAREST_INT>(_mm512_loadu_ps(sp.add(i)));
            _mm256_storeu_si256(dp.add(i).cast(), h);
            i += 16;
        }
        for (d, s) in dst[i..n].iter_mut().zip(&src[i..n]) {
            *d = f16::from_f32(*s);
        }
    }

    #[target_feature(enable = "avx2,f16c")]
    pub unsafe fn narrow_f16c(src: &[f32], dst: &mut [f16]) {
        let n = src.len().min(dst.len());
        let (sp, dp) = (src.as_ptr(), dst.as_mut_ptr().cast::<u16>());
        let mut i = 0;
        while i + 8 <= n {
            let h = _mm256_cvtps_ph::<_MM_FROUND_TO_NEAREST_INT>(_mm256_loadu_ps(sp.add(i)));
            _mm_storeu_si128(dp.add(i).cast(), h);
            i += 8;
        }
        for (d, s) in dst[i..n].iter_mut().zip(&src[i..n]) {
            *d = f16::from_f32(*s);
        }
    }

    #[target_feature(enable = "avx2,f16c")]
    pub unsafe fn widen_f16c(src: &[f16], dst: &mut [f32]) {
        let n = src.len().min(dst.len());
        let (sp, dp) = (src.as_ptr().cast::<u16>(), dst.as_mut_ptr());
        let mut i = 0;
        while i + 8 <= n {
            _mm256_storeu_ps(dp.add(i), _mm256_cvtph_ps(_mm_loadu_si128(sp.add(i).cast())));
            i += 8;
        }
        for (d, s) in dst[i..n].iter_mut().zip(&src[i..n]) {
            *d = s.to_f32();
        }
    }
}

/// x: [t, k] f32, w: [n, k] → [t, n] f32, on the kernels' current [`Isa`].
pub fn matmul_t<W: HalfElement>(x: &[f32], t: usize, w: &[W], n: usize, k: usize) -> Vec<f32> {
    matmul_t_on(Isa::current(), x, t, w, n, k)
}

/// [`matmul_t`] on a chosen [`Isa`] (the twin tests force each one).
///
/// # Panics
/// If the lengths disagree with the shape, or this CPU does not support `isa`.
pub fn matmul_t_on<W: HalfElement>(isa: Isa, x: &[f32], t: usize, w: &[W], n: usize, k: usize) -> Vec<f32> {
    assert_eq!(x.len(), t * k);
    assert_eq!(w.len(), n * k);
    assert!(isa.is_supported());
    let row_bytes = k * std::mem::size_of::<W>();
    if t <= GEMV_MAX_ROWS {
        split_rows(n, t, row_bytes, |rows, out| {
            let mut buf = vec![0f32; if W::DOT_NEEDS_BUFFER { k } else { 0 }];
            for (r, w_row) in w[rows.start * k..rows.end * k].chunks_exact(k.max(1)).enumerate() {
                for (ti, x_row) in x.chunks_exact(k.max(1)).enumerate() {
                    out[r * t + ti] = W::dot(isa, x_row, w_row, &mut buf);
                }
            }
        })
    } else if let Some(split) = k
        .is_multiple_of(amx::K_BLOCK)
        .then(|| block_split(isa, x, w))
        .flatten()
    {
        // Both sides split exactly into bf16 planes (bf16 weights read where they lie), or
        // the f32 activations as they are against bf16 weights on FMAs: the f32 product up to
        // summation order.
        amx::PackedActivations::with_packed(x, t, k, split.packing, |acts| {
            block_products(isa, acts, w, n, k, split.f16_rows)
        })
    } else {
        // Fixed-height panels: the gemm kernel's summation order depends on the panel shape,
        // and a checkpoint must compute the same whatever the thread count.
        split_rows_by(n, t, PANEL_ROWS, |rows, out| {
            let mut wide = vec![0f32; rows.len() * k];
            W::widen(&w[rows.start * k..rows.end * k], &mut wide);
            gemm_f32_panel(x, t, &wide, rows.len(), k, out)
        })
    }
}

/// x rounded to the nearest bf16 (ties to even: `--matmul-precision medium`) times wᵀ: what
/// [`matmul_t`] gives for the rounded x. Where the product takes bf16 blocks the packer rounds
/// as it packs, the same bits as packing the rounded copy (which then needs one plane), so x is
/// read where it lies and neither copied nor scanned for planes (3 % of a vision tile); the
/// other paths round a copy.
pub fn matmul_t_rounded<W: HalfElement>(x: &[f32], t: usize, w: &[W], n: usize, k: usize) -> Vec<f32> {
    matmul_t_rounded_on(Isa::current(), x, t, w, n, k)
}

/// [`matmul_t_rounded`] on a chosen [`Isa`].
///
/// # Panics
/// As [`matmul_t_on`].
pub fn matmul_t_rounded_on<W: HalfElement>(
    isa: Isa,
    x: &[f32],
    t: usize,
    w: &[W],
    n: usize,
    k: usize,
) -> Vec<f32> {
    assert_eq!(x.len(), t * k);
    assert_eq!(w.len(), n * k);
    assert!(isa.is_supported());
    // matmul_t_on's choice for a rounded x: past the gemv rows, whole K blocks and a level with
    // block products (where one activation plane always wins).
    if t > GEMV_MAX_ROWS && k.is_multiple_of(amx::K_BLOCK) && matches!(isa, Isa::Amx | Isa::Avx512Bf16) {
        return amx::PackedActivations::with_packed(x, t, k, amx::Split::Rounded, |acts| {
            block_products(isa, acts, w, n, k, false)
        });
    }
    let rounded: Vec<f32> = x.iter().map(|&v| amx::round_to_bf16(v).to_f32()).collect();
    matmul_t_on(isa, &rounded, t, w, n, k)
}

/// The packed activations times wᵀ [n, k] on block products, weight rows split across the
/// pool: as bf16 planes, or as f16 rows when `f16_rows` (wide activations against weights
/// that are f16 but not bf16 values, as [`block_split`] found).
fn block_products<W: HalfElement>(
    isa: Isa,
    acts: &amx::PackedActivations,
    w: &[W],
    n: usize,
    k: usize,
    f16_rows: bool,
) -> Vec<f32> {
    // SAFETY: both products write every value of their block through raw stores and read
    // none (their contract).
    unsafe {
        split_columns_writing_all(n, acts.tokens(), amx::rows_per_task(n), |rows, out| {
            let w = &w[rows.start * k..rows.end * k];
            if f16_rows {
                return amx::product_rows_f16_on(isa, &W::f16_rows(w), rows.len(), acts, out);
            }
            let planes = W::bf16_planes(w);
            let planes: Vec<&[bf16]> = planes.iter().map(|p| &p[..]).collect();
            amx::product_rows_on(isa, &planes, rows.len(), acts, out)
        })
    }
}

/// How a prefill product's activations are packed for block products
/// ([`amx::product_rows_on`]), or `None` for f32 panels. Always exact planes on tiles, whose
/// pass costs a fifth of an f32 FMA's. Against bf16 or f16 values every AVX-512 level has the
/// FMA blocks ([`super::fma_blocks`], two instructions per 32 multiply-adds), and on AVX-512
/// BF16 `vdpbf16ps` does as well or better where the planes are one or two (one or two
/// instructions): bf16 weights against one- or two-plane activations, any weights against
/// one-plane activations (`--dtype bf16`). `kernel_speed`, TOKENS=512, two Zen 5 cores:
/// bf16 weights against f32 activations 327 GFLOP/s in three passes, ~490 on FMAs; f16 weights
/// ~150 on the gemm crate's f32 panels (94 on Zen 4). f32 weights with all their bits stay on
/// f32 panels. The choice looks at values, not the stored dtype, so a matrix computes the same
/// whichever dtype holds it.
fn block_split<W: HalfElement>(isa: Isa, x: &[f32], w: &[W]) -> Option<BlockSplit> {
    let planes = |packing| BlockSplit {
        packing,
        f16_rows: false,
    };
    // The weights are scanned once here (an fp8 or f32 matrix value by value), not again by
    // the product.
    let wide_if_f16 = || {
        W::is_f16(w).then_some(BlockSplit {
            packing: amx::Split::Wide,
            f16_rows: true,
        })
    };
    match isa {
        Isa::Amx => Some(planes(amx::Split::Exact)),
        // One-plane activations are bf16 values already, which rounding packs as they are
        // (the exact split's one plane) without scanning them again.
        Isa::Avx512Bf16 => match (W::is_bf16(w), amx::planes_needed(x)) {
            (_, 1) => Some(planes(amx::Split::Rounded)),
            (true, 2) => Some(planes(amx::Split::Exact)),
            (true, _) => Some(planes(amx::Split::Wide)),
            (false, _) => wide_if_f16(),
        },
        Isa::Avx512 if W::is_bf16(w) => Some(planes(amx::Split::Wide)),
        Isa::Avx512 => wide_if_f16(),
        _ => None,
    }
}

/// [`block_split`]'s choice: how the activations are packed, and whether the weights go to the
/// product as f16 rows rather than bf16 planes.
struct BlockSplit {
    packing: amx::Split,
    f16_rows: bool,
}

/// x [t, k] times a panel of f32 weight rows [rows, k], transposed, written into `out` as
/// [rows, t] (the layout [`split_rows_by`] hands out): one single-threaded gemm call; the caller
/// splits the rows across threads.
pub(crate) fn gemm_f32_panel(x: &[f32], t: usize, wide: &[f32], rows: usize, k: usize, out: &mut [f32]) {
    assert_eq!(x.len(), t * k);
    assert_eq!(wide.len(), rows * k);
    assert_eq!(out.len(), rows * t);
    // SAFETY: the product [t, rows] lands in out stored [rows, t]: element (ti, j) at j·t + ti,
    // so row stride 1 and column stride t; x is [t, k] row-major; the right operand is the
    // panel transposed, element (kk, j) at j·k + kk, so its row stride is 1 and column stride k.
    // All three buffers have exactly those extents (asserted).
    unsafe {
        gemm::gemm(
            t,
            rows,
            k,
            out.as_mut_ptr(),
            t as isize,
            1,
            false,
            x.as_ptr(),
            1,
            k as isize,
            wide.as_ptr(),
            k as isize,
            1,
            0.0,
            1.0,
            false,
            false,
            false,
            gemm::Parallelism::None,
        );
    }
}

/// Dense dot products `Σ x[i]·w[i]` with f32 x and w in f32 or bf16 (widened exactly in
/// registers: bf16 is the top half of an f32), per [`Isa`]: AVX-512 and AVX2+FMA with explicit
/// intrinsics, four independent accumulators so consecutive FMAs do not wait on each other; the
/// portable loop is what the compiler makes of plain Rust.
mod simd {
    use half::bf16;

    use crate::kernels::isa::Isa;

    #[inline(always)]
    fn widen(w: bf16) -> f32 {
        f32::from_bits(u32::from(w.to_bits()) << 16)
    }

    pub fn dot_bf16_portable(x: &[f32], w: &[bf16]) -> f32 {
        const LANES: usize = 16;
        let mut acc = [0f32; LANES];
        let n = x.len().min(w.len()) / LANES * LANES;
        for (cx, cw) in x[..n].chunks_exact(LANES).zip(w[..n].chunks_exact(LANES)) {
            for i in 0..LANES {
                acc[i] += cx[i] * widen(cw[i]);
            }
        }
        let tail: f32 = x[n..].iter().zip(&w[n..]).map(|(a, b)| a * widen(*b)).sum();
        acc.iter().sum::<f32>() + tail
    }

    pub fn dot_f32_portable(x: &[f32], w: &[f32]) -> f32 {
        const LANES: usize = 16;
        let mut acc = [0f32; LANES];
        let n = x.len().min(w.len()) / LANES * LANES;
        for (cx, cw) in x[..n].chunks_exact(LANES).zip(w[..n].chunks_exact(LANES)) {
            for i in 0..LANES {
                acc[i] += cx[i] * cw[i];
            }
        }
        let tail: f32 = x[n..].iter().zip(&w[n..]).map(|(a, b)| a * b).sum();
        acc.iter().sum::<f32>() + tail
    }

    #[cfg(target_arch = "x86_64")]
    mod x86 {
        use std::arch::x86_64::*;

        use half::bf16;

        use crate::kernels::quant_dot::{prefetch, PREFETCH_BYTES};

        #[target_feature(enable = "avx512f,avx512bw,fma")]
        pub unsafe fn dot_bf16_avx512(x: &[f32], w: &[bf16]) -> f32 {
            let n = x.len().min(w.len());
            let (xp, wp) = (x.as_ptr(), w.as_ptr().cast::<u16>());
            let mut acc = [_mm512_setzero_ps(); 4];
            let mut i = 0;
            while i + 64 <= n {
                prefetch(wp.add(i).cast::<u8>().wrapping_add(PREFETCH_BYTES), 128);
                for (u, a) in acc.iter_mut().enumerate() {
                    let wide = _mm512_cvtepu16_epi32(_mm256_loadu_si256(wp.add(i + 16 * u).cast()));
                    let wv = _mm512_castsi512_ps(_mm512_slli_epi32(wide, 16));
                    *a = _mm512_fmadd_ps(_mm512_loadu_ps(xp.add(i + 16 * u)), wv, *a);
                }
                i += 64;
            }
            while i + 16 <= n {
                let wide = _mm512_cvtepu16_epi32(_mm256_loadu_si256(wp.add(i).cast()));
                let wv = _mm512_castsi512_ps(_mm512_slli_epi32(wide, 16));
                acc[0] = _mm512_fmadd_ps(_mm512_loadu_ps(xp.add(i)), wv, acc[0]);
                i += 16;
            }
            let sum = _mm512_add_ps(_mm512_add_ps(acc[0], acc[1]), _mm512_add_ps(acc[2], acc[3]));
            let mut s = _mm512_reduce_add_ps(sum);
            while i < n {
                s += *xp.add(i) * f32::from_bits(u32::from(*wp.add(i)) << 16);
                i += 1;
            }
            s
        }

        #[target_feature(enable = "avx2,fma")]
        pub unsafe fn dot_bf16_avx2(x: &[f32], w: &[bf16]) -> f32 {
            let n = x.len().min(w.len());
            let (xp, wp) = (x.as_ptr(), w.as_ptr().cast::<u16>());
            let mut acc = [_mm256_setzero_ps(); 4];
            let mut i = 0;
            while i + 32 <= n {
                prefetch(wp.add(i).cast::<u8>().wrapping_add(PREFETCH_BYTES), 64);
                for (u, a) in acc.iter_mut().enumerate() {
                    let wide = _mm256_cvtepu16_epi32(_mm_loadu_si128(wp.add(i + 8 * u).cast()));
                    let wv = _mm256_castsi256_ps(_mm256_slli_epi32(wide, 16));
                    *a = _mm256_fmadd_ps(_mm256_loadu_ps(xp.add(i + 8 * u)), wv, *a);
                }
                i += 32;
            }
            let mut s = hsum256(_mm256_add_ps(
                _mm256_add_ps(acc[0], acc[1]),
                _mm256_add_ps(acc[2], acc[3]),
            ));
            while i < n {
                s += *xp.add(i) * f32::from_bits(u32::from(*wp.add(i)) << 16);
                i += 1;
            }
            s
        }

        #[target_feature(enable = "avx512f,fma")]
        pub unsafe fn dot_f32_avx512(x: &[f32], w: &[f32]) -> f32 {
            let n = x.len().min(w.len());
            let (xp, wp) = (x.as_ptr(), w.as_ptr());
            let mut acc = [_mm512_setzero_ps(); 4];
            let mut i = 0;
            while i + 64 <= n {
                prefetch(wp.add(i).cast::<u8>().wrapping_add(PREFETCH_BYTES), 256);
                for (u, a) in acc.iter_mut().enumerate() {
                    *a = _mm512_fmadd_ps(
                        _mm512_loadu_ps(xp.add(i + 16 * u)),
                        _mm512_loadu_ps(wp.add(i + 16 * u)),
                        *a,
                    );
                }
                i += 64;
            }
            let sum = _mm512_add_ps(_mm512_add_ps(acc[0], acc[1]), _mm512_add_ps(acc[2], acc[3]));
            let mut s = _mm512_reduce_add_ps(sum);
            while i < n {
                s += *xp.add(i) * *wp.add(i);
                i += 1;
            }
            s
        }

        #[target_feature(enable = "avx2,fma")]
        pub unsafe fn dot_f32_avx2(x: &[f32], w: &[f32]) -> f32 {
            let n = x.len().min(w.len());
            let (xp, wp) = (x.as_ptr(), w.as_ptr());
            let mut acc = [_mm256_setzero_ps(); 4];
            let mut i = 0;
            while i + 32 <= n {
                prefetch(wp.add(i).cast::<u8>().wrapping_add(PREFETCH_BYTES), 128);
                for (u, a) in acc.iter_mut().enumerate() {
                    *a = _mm256_fmadd_ps(
                        _mm256_loadu_ps(xp.add(i + 8 * u)),
                        _mm256_loadu_ps(wp.add(i + 8 * u)),
                        *a,
                    );
                }
                i += 32;
            }
            let mut s = hsum256(_mm256_add_ps(
                _mm256_add_ps(acc[0], acc[1]),
                _mm256_add_ps(acc[2], acc[3]),
            ));
            while i < n {
                s += *xp.add(i) * *wp.add(i);
                i += 1;
            }
            s
        }

        #[target_feature(enable = "avx2,fma")]
        #[inline]
        unsafe fn hsum256(v: __m256) -> f32 {
            let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
            let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
            let s = _mm_add_ss(s, _mm_shuffle_ps(s, s, 1));
            _mm_cvtss_f32(s)
        }
    }

    /// `Σ x[i]·w[i]` on `isa`.
    ///
    /// # Panics
    /// If this CPU does not support `isa`.
    pub fn dot_bf16(isa: Isa, x: &[f32], w: &[bf16]) -> f32 {
        assert!(isa.is_supported());
        match isa {
            #[cfg(target_arch = "x86_64")]
            // SAFETY: the CPU supports AVX-512 F/BW and FMA (asserted: part of Isa::Avx512).
            Isa::Avx512 | Isa::Avx512Bf16 | Isa::Amx => unsafe { x86::dot_bf16_avx512(x, w) },
            #[cfg(target_arch = "x86_64")]
            // SAFETY: the CPU supports AVX2 and FMA (asserted).
            Isa::Avx2 => unsafe { x86::dot_bf16_avx2(x, w) },
            _ => dot_bf16_portable(x, w),
        }
    }

    /// `Σ x[i]·w[i]` on `isa`.
    ///
    /// # Panics
    /// If this CPU does not support `isa`.
    pub fn dot_f32(isa: Isa, x: &[f32], w: &[f32]) -> f32 {
        assert!(isa.is_supported());
        match isa {
            #[cfg(target_arch = "x86_64")]
            // SAFETY: the CPU supports AVX-512 F and FMA (asserted).
            Isa::Avx512 | Isa::Avx512Bf16 | Isa::Amx => unsafe { x86::dot_f32_avx512(x, w) },
            #[cfg(target_arch = "x86_64")]
            // SAFETY: the CPU supports AVX2 and FMA (asserted).
            Isa::Avx2 => unsafe { x86::dot_f32_avx2(x, w) },
            _ => dot_f32_portable(x, w),
        }
    }
}

pub use simd::{dot_bf16, dot_f32};

/// The slow twin: widen every element, one f32 multiply-add at a time.
pub fn matmul_t_slow<W: HalfElement>(x: &[f32], t: usize, w: &[W], n: usize, k: usize) -> Vec<f32> {
    let mut y = vec![0f32; t * n];
    for ti in 0..t {
        for j in 0..n {
            let mut acc = 0f32;
            for kk in 0..k {
                acc += x[ti * k + kk] * w[j * k + kk].to_f32_scalar();
            }
            y[ti * n + j] = acc;
        }
    }
    y
}
