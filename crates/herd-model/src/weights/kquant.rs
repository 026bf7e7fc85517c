//! ggml's current reference quantizers for the k-quant formats Q4_K, Q5_K and Q6_K, ported from
//! llama.cpp's `ggml-quants.c` (`quantize_row_q{4,5,6}_K_ref`). These are what `llama-quantize`
//! runs without an importance matrix (`ggml_quantize_chunk` → `quantize_q4_K` etc. →
//! `quantize_row_*_ref` when `quant_weights` is null), so herd's blocks are byte-identical to
//! llama.cpp's. candle's `k_quants` ports an older ggml (`make_qkx1_quants`, an iterative
//! `make_qx_quants`, ties away from zero), whose bytes differ.
//!
//! Arithmetic is f32 in ggml's order of operations, f16 conversion rounds to nearest even
//! (`GGML_FP32_TO_FP16`), and rounding is [`nearest_int`]'s half-to-even.
//!
//! Each function writes whole ggml blocks: `values.len()` is a multiple of [`QK_K`] and `out`
//! holds exactly `values.len() / QK_K` blocks of the format's size.

use half::f16;

/// Values per k-quant super-block (ggml's `QK_K`).
pub const QK_K: usize = 256;
/// Bytes of a `block_q4_K`: f16 d, f16 dmin, scales[12], qs[128].
pub const Q4K_BYTES: usize = 144;
/// Bytes of a `block_q5_K`: f16 d, f16 dmin, scales[12], qh[32], qs[128].
pub const Q5K_BYTES: usize = 176;
/// Bytes of a `block_q6_K`: ql[128], qh[64], i8 scales[16], f16 d.
pub const Q6K_BYTES: usize = 210;

/// ggml's `GROUP_MAX_EPS`: a group whose largest magnitude is below it is all zero.
const GROUP_MAX_EPS: f32 = 1e-15;

/// ggml's `nearest_int`: adds 1.5·2²³ so the float unit rounds (half to even) and reads the
/// integer out of the mantissa. Exact for |x| < 2²².
fn nearest_int(x: f32) -> i32 {
    let shifted = x + 12_582_912.0;
    (shifted.to_bits() as i32 & 0x007f_ffff) - 0x0040_0000
}

/// `GGML_FP32_TO_FP16` then `GGML_FP16_TO_FP32`: the value a block's f16 field reads back as.
fn f16_round(x: f32) -> (f16, f32) {
    let h = f16::from_f32(x);
    (h, h.to_f32())
}

/// ggml's `make_qkx2_quants` with `use_mad = false`: an asymmetric (scale, min) fit of `x` to
/// levels `0..=nmax` under `weights`, searching `nstep + 1` scales around `nmax / (max - min)`.
/// Writes the levels to `levels` and returns `(scale, -min)`.
fn make_qkx2_quants(
    nmax: i32,
    x: &[f32],
    weights: &[f32],
    levels: &mut [u8],
    rmin: f32,
    rdelta: f32,
    nstep: i32,
) -> (f32, f32) {
    let mut min = x[0];
    let mut max = x[0];
    let mut sum_w = weights[0];
    let mut sum_x = sum_w * x[0];
    for (&xi, &w) in x.iter().zip(weights).skip(1) {
        if xi < min {
            min = xi;
        }
        if xi > max {
            max = xi;
        }
        sum_w += w;
        sum_x += w * xi;
    }
    if min > 0.0 {
        min = 0.0;
    }
    if max == min {
        levels.fill(0);
        return (0.0, -min);
    }
    let mut iscale = nmax as f32 / (max - min);
    let mut scale = 1.0 / iscale;
    let mut best_error = 0f32;
    for ((l_out, &xi), &w) in levels.iter_mut().zip(x).zip(weights) {
        let l = nearest_int(iscale * (xi - min)).clamp(0, nmax);
        *l_out = l as u8;
        let diff = scale * l as f32 + min - xi;
        best_error += w * (diff * diff);
    }
    if nstep < 1 {
        return (scale, -min);
    }
    let mut aux = [0u8; 32];
    let aux = &mut aux[..x.len()];
    for is in 0..=nstep {
        iscale = (rmin + rdelta * is as f32 + nmax as f32) / (max - min);
        let (mut sum_l, mut sum_l2, mut sum_xl) = (0f32, 0f32, 0f32);
        for ((a, &xi), &w) in aux.iter_mut().zip(x).zip(weights) {
            let l = nearest_int(iscale * (xi - min)).clamp(0, nmax);
            *a = l as u8;
            let lf = l as f32;
            sum_l += w * lf;
            sum_l2 += w * lf * lf;
            sum_xl += w * lf * xi;
        }
        let det = sum_w * sum_l2 - sum_l * sum_l;
        if det > 0.0 {
            let mut this_scale = (sum_w * sum_xl - sum_x * sum_l) / det;
            let mut this_min = (sum_l2 * sum_x - sum_l * sum_xl) / det;
            if this_min > 0.0 {
                this_min = 0.0;
                this_scale = sum_xl / sum_l2;
            }
            let mut cur_error = 0f32;
            for ((&a, &xi), &w) in aux.iter().zip(x).zip(weights) {
                let diff = this_scale * a as f32 + this_min - xi;
                cur_error += w * (diff * diff);
            }
            if cur_error < best_error {
                levels.copy_from_slice(aux);
                best_error = cur_error;
                scale = this_scale;
                min = this_min;
            }
        }
    }
    (scale, -min)
}

/// ggml's `make_qx_quants` with `rmse_type = 1` and no importance weights: a symmetric scale for
/// levels `-nmax..nmax-1` weighted by x², the best of 19 candidate scales around `-nmax / max`.
/// Writes `level + nmax` to `levels` and returns the scale.
fn make_qx_quants(nmax: i32, x: &[f32], levels: &mut [i8]) -> f32 {
    let mut max = 0f32;
    let mut amax = 0f32;
    for &xi in x {
        let ax = xi.abs();
        if ax > amax {
            amax = ax;
            max = xi;
        }
    }
    if amax < GROUP_MAX_EPS {
        levels.fill(0);
        return 0.0;
    }
    let nmaxf = nmax as f32;
    let level = |iscale: f32, xi: f32| nearest_int(iscale * xi).clamp(-nmax, nmax - 1);
    // The weighted sums Σ w·x·l and Σ w·l² for one inverse scale (w = x²).
    let sums = |iscale: f32| {
        let (mut sumlx, mut suml2) = (0f32, 0f32);
        for &xi in x {
            let l = level(iscale, xi) as f32;
            let w = xi * xi;
            sumlx += w * xi * l;
            suml2 += w * l * l;
        }
        (sumlx, suml2)
    };
    let write = |levels: &mut [i8], iscale: f32| {
        for (l_out, &xi) in levels.iter_mut().zip(x) {
            *l_out = (level(iscale, xi) + nmax) as i8;
        }
    };

    let iscale = -nmaxf / max;
    write(levels, iscale);
    let (sumlx, suml2) = sums(iscale);
    let mut scale = if suml2 != 0.0 { sumlx / suml2 } else { 0.0 };
    let mut best = scale * sumlx;
    for is in (-9..=9).filter(|&is| is != 0) {
        let iscale = -(nmaxf + 0.1 * is as f32) / max;
        let (sumlx, suml2) = sums(iscale);
        if suml2 > 0.0 && sumlx * sumlx > best * suml2 {
            write(levels, iscale);
            scale = sumlx / suml2;
            best = scale * sumlx;
        }
    }
    scale
}

/// The inverse of ggml's `get_scale_min_k4`: packs eight 6-bit (scale, min) pairs into 12 bytes.
fn pack_scale_min_k4(scales: &[u8; 8], mins: &[u8; 8]) -> [u8; 12] {
    let mut q = [0u8; 12];
    for j in 0..8 {
        let (ls, lm) = (scales[j], mins[j]);
        if j < 4 {
            q[j] = ls;
            q[j + 4] = lm;
        } else {
            q[j + 4] = (ls & 0xF) | ((lm & 0xF) << 4);
            q[j - 4] |= (ls >> 4) << 6;
            q[j] |= (lm >> 4) << 6;
        }
    }
    q
}

/// ggml's `get_scale_min_k4`: the `j`th 6-bit (scale, min) pair of a packed 12-byte field.
fn get_scale_min_k4(j: usize, q: &[u8; 12]) -> (u8, u8) {
    if j < 4 {
        (q[j] & 63, q[j + 4] & 63)
    } else {
        (
            (q[j + 4] & 0xF) | ((q[j - 4] >> 6) << 4),
            (q[j + 4] >> 4) | ((q[j] >> 6) << 4),
        )
    }
}

/// The scale/min stage shared by `quantize_row_q4_K_ref` and `quantize_row_q5_K_ref`: fits each
/// 32-value sub-block with [`make_qkx2_quants`] (weights `rms + |x|`), quantizes the eight
/// scales and mins to 6 bits against the block's f16 `d` / `dmin`, then requantizes every value
/// to `0..=nmax` with the stored scales. Returns (d, dmin, packed scales, levels).
fn quantize_scale_min_block(x: &[f32], nmax: i32, rmin: f32, nstep: i32) -> (f16, f16, [u8; 12], [u8; QK_K]) {
    let mut levels = [0u8; QK_K];
    let mut scales = [0f32; 8];
    let mut mins = [0f32; 8];
    let mut max_scale = 0f32;
    let mut max_min = 0f32;
    let mut weights = [0f32; 32];
    for (j, sub) in x.chunks_exact(32).enumerate() {
        let mut sum_x2 = 0f32;
        for &v in sub {
            sum_x2 += v * v;
        }
        let av_x = (sum_x2 / 32.0).sqrt();
        for (w, &v) in weights.iter_mut().zip(sub) {
            *w = av_x + v.abs();
        }
        let (scale, min) = make_qkx2_quants(
            nmax,
            sub,
            &weights,
            &mut levels[32 * j..32 * j + 32],
            rmin,
            0.1,
            nstep,
        );
        scales[j] = scale;
        mins[j] = min;
        if scale > max_scale {
            max_scale = scale;
        }
        if min > max_min {
            max_min = min;
        }
    }

    let inv_scale = if max_scale > 0.0 { 63.0 / max_scale } else { 0.0 };
    let inv_min = if max_min > 0.0 { 63.0 / max_min } else { 0.0 };
    let mut ls = [0u8; 8];
    let mut lm = [0u8; 8];
    for j in 0..8 {
        // `uint8_t ls = nearest_int(...)` truncates to 8 bits before the MIN.
        ls[j] = (nearest_int(inv_scale * scales[j]) as u8).min(63);
        lm[j] = (nearest_int(inv_min * mins[j]) as u8).min(63);
    }
    let packed = pack_scale_min_k4(&ls, &lm);
    let (d, d_f32) = f16_round(max_scale / 63.0);
    let (dmin, dmin_f32) = f16_round(max_min / 63.0);

    for (j, sub) in x.chunks_exact(32).enumerate() {
        let (sc, m) = get_scale_min_k4(j, &packed);
        let d = d_f32 * sc as f32;
        if d == 0.0 {
            continue;
        }
        let dm = dmin_f32 * m as f32;
        for (l_out, &v) in levels[32 * j..32 * j + 32].iter_mut().zip(sub) {
            *l_out = nearest_int((v + dm) / d).clamp(0, nmax) as u8;
        }
    }
    (d, dmin, packed, levels)
}

/// ggml's `quantize_row_q4_K_ref`: `values` → `block_q4_K` bytes.
pub fn quantize_q4_k(values: &[f32], out: &mut [u8]) {
    for (x, block) in values.chunks_exact(QK_K).zip(out.chunks_exact_mut(Q4K_BYTES)) {
        let (d, dmin, scales, levels) = quantize_scale_min_block(x, 15, -1.0, 20);
        block[0..2].copy_from_slice(&d.to_le_bytes());
        block[2..4].copy_from_slice(&dmin.to_le_bytes());
        block[4..16].copy_from_slice(&scales);
        // Each 64 values → 32 bytes: low nibble value l, high nibble value l + 32.
        for (qs, chunk) in block[16..].chunks_exact_mut(32).zip(levels.chunks_exact(64)) {
            for (l, q) in qs.iter_mut().enumerate() {
                *q = chunk[l] | (chunk[l + 32] << 4);
            }
        }
    }
}

/// ggml's `quantize_row_q5_K_ref`: `values` → `block_q5_K` bytes.
pub fn quantize_q5_k(values: &[f32], out: &mut [u8]) {
    for (x, block) in values.chunks_exact(QK_K).zip(out.chunks_exact_mut(Q5K_BYTES)) {
        let (d, dmin, scales, levels) = quantize_scale_min_block(x, 31, -0.5, 15);
        block[0..2].copy_from_slice(&d.to_le_bytes());
        block[2..4].copy_from_slice(&dmin.to_le_bytes());
        block[4..16].copy_from_slice(&scales);
        let (qh, qs) = block[16..].split_at_mut(32);
        qh.fill(0);
        // Each 64 values → 32 low-nibble bytes plus two high bits per qh byte (bit pair n/32).
        for (n, (ql, chunk)) in qs.chunks_exact_mut(32).zip(levels.chunks_exact(64)).enumerate() {
            let (m1, m2) = (1u8 << (2 * n), 2u8 << (2 * n));
            for j in 0..32 {
                let (mut l1, mut l2) = (chunk[j], chunk[j + 32]);
                if l1 > 15 {
                    l1 -= 16;
                    qh[j] |= m1;
                }
                if l2 > 15 {
                    l2 -= 16;
                    qh[j] |= m2;
                }
                ql[j] = l1 | (l2 << 4);
            }
        }
    }
}

/// ggml's `quantize_row_q6_K_ref`: `values` → `block_q6_K` bytes.
pub fn quantize_q6_k(values: &[f32], out: &mut [u8]) {
    for (x, block) in values.chunks_exact(QK_K).zip(out.chunks_exact_mut(Q6K_BYTES)) {
        let mut levels = [0i8; QK_K];
        let mut scales = [0f32; QK_K / 16];
        let mut max_scale = 0f32;
        let mut max_abs_scale = 0f32;
        for (ib, sub) in x.chunks_exact(16).enumerate() {
            let scale = make_qx_quants(32, sub, &mut levels[16 * ib..16 * ib + 16]);
            scales[ib] = scale;
            if scale.abs() > max_abs_scale {
                max_abs_scale = scale.abs();
                max_scale = scale;
            }
        }
        if max_abs_scale < GROUP_MAX_EPS {
            block.fill(0);
            continue;
        }

        let iscale = -128.0 / max_scale;
        let (d, d_f32) = f16_round(1.0 / iscale);
        let mut block_scales = [0i8; QK_K / 16];
        for (s, &scale) in block_scales.iter_mut().zip(&scales) {
            // `int8_t = MIN(127, nearest_int(...))` truncates to 8 bits after the MIN.
            *s = nearest_int(iscale * scale).min(127) as i8;
        }
        for (j, sub) in x.chunks_exact(16).enumerate() {
            let d = d_f32 * block_scales[j] as f32;
            if d == 0.0 {
                continue;
            }
            for (l_out, &v) in levels[16 * j..16 * j + 16].iter_mut().zip(sub) {
                *l_out = (nearest_int(v / d).clamp(-32, 31) + 32) as i8;
            }
        }

        let (ql, rest) = block.split_at_mut(128);
        let (qh, rest) = rest.split_at_mut(64);
        let (sc, d_bytes) = rest.split_at_mut(16);
        // Each 128 values → 64 ql bytes (values l, l+32 | l+64, l+96 as nibbles) and 32 qh bytes
        // (the four values' top two bits).
        for ((ql, qh), chunk) in ql
            .chunks_exact_mut(64)
            .zip(qh.chunks_exact_mut(32))
            .zip(levels.chunks_exact(128))
        {
            for l in 0..32 {
                let q = |k: usize| chunk[l + 32 * k] as u8;
                ql[l] = (q(0) & 0xF) | ((q(2) & 0xF) << 4);
                ql[l + 32] = (q(1) & 0xF) | ((q(3) & 0xF) << 4);
                qh[l] = (q(0) >> 4) | ((q(1) >> 4) << 2) | ((q(2) >> 4) << 4) | ((q(3) >> 4) << 6);
            }
        }
        for (b, &s) in sc.iter_mut().zip(&block_scales) {
            *b = s as u8;
        }
        d_bytes.copy_from_slice(&d.to_le_bytes());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_int_rounds_half_to_even() {
        assert_eq!(nearest_int(0.5), 0);
        assert_eq!(nearest_int(1.5), 2);
        assert_eq!(nearest_int(2.5), 2);
        assert_eq!(nearest_int(-0.5), 0);
        assert_eq!(nearest_int(-1.5), -2);
        assert_eq!(nearest_int(-2.4), -2);
        assert_eq!(nearest_int(63.49), 63);
    }

    #[test]
    fn scale_min_packing_round_trips() {
        let scales = [0, 1, 17, 63, 32, 5, 62, 48];
        let mins = [63, 2, 0, 31, 16, 47, 1, 60];
        let q = pack_scale_min_k4(&scales, &mins);
        for j in 0..8 {
            assert_eq!(get_scale_min_k4(j, &q), (scales[j], mins[j]));
        }
    }
}
