//! Weight formats: every fast product beside its slow twin, quantization round trips, and
//! stored formats kept as stored.

use candle_core::{DType, Device, Tensor};
use half::{bf16, f16};
use herd_model::kernels::half_matmul;
use herd_model::kernels::isa::Isa;
use herd_model::kernels::q8_activations::{q8_0_block, quantize_q8_0, quantize_q8_k, Q8Activations};
use herd_model::kernels::quant_matmul;
use herd_model::nn::{Linear, WeightFormat};
use herd_model::weights::{QuantTensor, QuantType};
use herd_testkit::{assert_close, fixture_path};
use std::sync::Arc;

/// Deterministic pseudo-random values in [-1, 1) (no RNG crate needed).
pub(crate) fn values(n: usize, seed: u64) -> Vec<f32> {
    let mut state = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    (0..n)
        .map(|_| {
            state = state
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((state >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
        })
        .collect()
}

pub(crate) fn max_abs(v: &[f32]) -> f32 {
    v.iter().fold(0f32, |m, x| m.max(x.abs()))
}

pub(crate) fn max_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter().zip(b).fold(0f32, |m, (x, y)| m.max((x - y).abs()))
}

#[test]
fn half_matmul_matches_slow_twin_on_odd_shapes() {
    // Rows of x on both sides of the streaming/GEMM switch; odd widths; panels that do not
    // divide the output count.
    for (t, n, k) in [
        (1, 1, 1),
        (1, 17, 33),
        (3, 70, 129),
        (4, 5, 8),
        (5, 65, 31),
        (17, 130, 100),
        (33, 64, 256),
    ] {
        let x = values(t * k, 1);
        let w32 = values(n * k, 2);
        let wb: Vec<bf16> = w32.iter().map(|&v| bf16::from_f32(v)).collect();
        let wh: Vec<f16> = w32.iter().map(|&v| f16::from_f32(v)).collect();
        let fast = half_matmul::matmul_t(&x, t, &wb, n, k);
        let slow = half_matmul::matmul_t_slow(&x, t, &wb, n, k);
        let tol = 1e-5 * (k as f32).sqrt() * max_abs(&slow).max(1.0);
        assert!(
            max_diff(&fast, &slow) <= tol,
            "bf16 t={t} n={n} k={k}: {}",
            max_diff(&fast, &slow)
        );
        let fast = half_matmul::matmul_t(&x, t, &wh, n, k);
        let slow = half_matmul::matmul_t_slow(&x, t, &wh, n, k);
        assert!(
            max_diff(&fast, &slow) <= tol,
            "f16 t={t} n={n} k={k}: {}",
            max_diff(&fast, &slow)
        );
    }
}

#[test]
fn half_matmul_mutation_twin_detects_a_wrong_weight() {
    // The agreement test above must be able to fail: one changed weight is seen.
    let (t, n, k) = (5, 9, 40);
    let x = values(t * k, 3);
    let mut w: Vec<bf16> = values(n * k, 4).iter().map(|&v| bf16::from_f32(v)).collect();
    let good = half_matmul::matmul_t_slow(&x, t, &w, n, k);
    w[k * 7 + 3] = bf16::from_f32(5.0);
    let bad = half_matmul::matmul_t(&x, t, &w, n, k);
    assert!(max_diff(&good, &bad) > 1e-2);
}

#[test]
fn dense_linear_keeps_its_stored_dtype_and_matches_the_upcast_product() {
    let dev = Device::Cpu;
    for dtype in [DType::BF16, DType::F16] {
        let w = Tensor::from_vec(values(48 * 80, 5), (48, 80), &dev)
            .unwrap()
            .to_dtype(dtype)
            .unwrap();
        let linear = Linear::from_weight(w.clone());
        assert_eq!(linear.format(), WeightFormat::Dense(dtype));
        assert_eq!(linear.stored_bytes(), 48 * 80 * 2);
        for t in [1, 2, 9] {
            let x = Tensor::from_vec(values(t * 80, 6 + t as u64), (t, 80), &dev).unwrap();
            let fast = linear.forward(&x).unwrap();
            let slow = linear.forward_slow(&x).unwrap();
            assert_eq!(fast.dtype(), DType::F32);
            assert_close(&fast, &slow, 1e-5, &format!("{dtype:?} t={t}"));
        }
    }
}

/// Quantized products equal their slow twin (dequantize, then an f32 matmul) up to the error of
/// quantizing the activations to 8 bits, as llama.cpp does: each activation moves by at most
/// half a step of its block's scale (max |x| / 127 over 32 values for Q8_0 / Q4_0, 256 for the
/// K-quants), so each output moves by at most Σ |w| · step / 2. The test checks that bound,
/// row by row.
/// A `[rows, cols]` matrix in `ty`: herd's quantizers for the formats it writes, candle's ports
/// of ggml's reference quantizers for those it only reads (Q4_1, Q5_0, Q5_1, Q2_K, Q3_K), read
/// back through [`QuantTensor::read_with`] as a GGUF's bytes are.
pub(crate) fn quantized(ty: QuantType, rows: usize, cols: usize, v: &[f32]) -> QuantTensor {
    if ty.writable() {
        return QuantTensor::quantize(ty, rows, cols, v, "w").unwrap();
    }
    let Some(dtype) = ty.ggml() else {
        return random_iquant(ty, rows, cols, v);
    };
    let t = Tensor::from_slice(v, (rows, cols), &Device::Cpu).unwrap();
    let q = candle_core::quantized::QTensor::quantize(&t, dtype).unwrap();
    let bytes = q.data().unwrap();
    QuantTensor::read_with(ty, rows, cols, "w", |dst| {
        dst.copy_from_slice(&bytes);
        Ok(())
    })
    .unwrap()
}

/// The i-quants have no quantizer here (herd reads them only), but every byte pattern is a valid
/// block once its scale is finite: random levels and sub-block scales, with d set from the
/// values' size so products stay in range.
fn random_iquant(ty: QuantType, rows: usize, cols: usize, v: &[f32]) -> QuantTensor {
    let mut state = v.len() as u64 ^ u64::from(v[0].to_bits());
    let mut bytes = vec![0u8; ty.matrix_bytes(rows, cols).unwrap()];
    for b in bytes.iter_mut() {
        state = state
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        *b = (state >> 56) as u8;
    }
    let d = f16::from_f32(max_abs(v) / 127.0 / 8.0).to_le_bytes();
    for blk in bytes.chunks_exact_mut(ty.block_bytes()) {
        blk[..2].copy_from_slice(&d);
    }
    QuantTensor::read_with(ty, rows, cols, "w", |dst| {
        dst.copy_from_slice(&bytes);
        Ok(())
    })
    .unwrap()
}

/// One IQ4_NL and one IQ4_XS block laid out by hand from ggml's `block_iq4_nl` /
/// `block_iq4_xs` and `dequantize_row_iq4_*`, read back value by value.
#[test]
fn iquant_blocks_decode_as_ggml_lays_them_out() {
    const KV: [f32; 16] = [
        -127.0, -104.0, -83.0, -65.0, -49.0, -35.0, -22.0, -10.0, 1.0, 13.0, 25.0, 38.0, 53.0, 69.0, 89.0,
        113.0,
    ];
    // IQ4_NL: d = 0.5; byte 3 of qs = 0x7A: value 3 is level 10, value 19 level 7.
    let mut nl = vec![0u8; 18];
    nl[..2].copy_from_slice(&f16::from_f32(0.5).to_le_bytes());
    nl[2 + 3] = 0x7A;
    let q = QuantTensor::read_with(QuantType::Iq4Nl, 1, 32, "nl", |dst| {
        dst.copy_from_slice(&nl);
        Ok(())
    })
    .unwrap();
    let w = q.dequantize().unwrap();
    assert_eq!(
        (w[3], w[19], w[0], w[16]),
        (0.5 * KV[10], 0.5 * KV[7], 0.5 * KV[0], 0.5 * KV[0])
    );
    // IQ4_XS: d = 0.5; sub-block 3's scale 45 (low nibble 0xD: the high nibble of scales_l[1];
    // high bits 0b10: bits 6, 7 of scales_h), so its values scale by 0.5·(45 − 32) = 6.5; its
    // byte 2 of qs = 0x7A: value 3·32 + 2 is level 10, value 3·32 + 18 level 7. Sub-block 0's
    // scale is 0 (factor 0.5·(0 − 32) = −16), as are the others.
    let mut xs = vec![0u8; 136];
    xs[..2].copy_from_slice(&f16::from_f32(0.5).to_le_bytes());
    xs[2..4].copy_from_slice(&(0b10u16 << 6).to_le_bytes());
    xs[4 + 1] = 0xD0;
    xs[8 + 16 * 3 + 2] = 0x7A;
    let q = QuantTensor::read_with(QuantType::Iq4Xs, 1, 256, "xs", |dst| {
        dst.copy_from_slice(&xs);
        Ok(())
    })
    .unwrap();
    let w = q.dequantize().unwrap();
    assert_eq!((w[98], w[114]), (6.5 * KV[10], 6.5 * KV[7]));
    assert_eq!((w[96], w[0], w[255]), (6.5 * KV[0], -16.0 * KV[0], -16.0 * KV[0]));
    // Rows looked up one at a time (an embedding) read the same values.
    assert_eq!(q.rows_f32(&[0]).unwrap(), w);
    assert!(q.rows_f32(&[1]).is_err());
}

/// candle has no GPU kernel for the i-quants: moving one to a device is a clear error naming the
/// way out, and the other block formats go through (here onto the CPU, the same call).
#[test]
fn iquant_weights_refuse_a_device_upload_with_a_way_out() {
    use herd_model::weights::device_quant::DeviceQuantTensor;
    let v: Vec<f32> = (0..512).map(|i| ((i * 37 % 101) as f32 - 50.0) / 50.0).collect();
    for ty in [QuantType::Iq4Nl, QuantType::Iq4Xs] {
        let q = random_iquant(ty, 2, 256, &v);
        let err = DeviceQuantTensor::upload(&q, &Device::Cpu)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains(&format!("no GPU kernel for {ty}")) && err.contains("--device cpu"),
            "{err}"
        );
    }
    let q4 = QuantTensor::quantize(QuantType::Q4_0, 2, 256, &v, "w").unwrap();
    DeviceQuantTensor::upload(&q4, &Device::Cpu).unwrap();
}

#[test]
fn formats_herd_only_reads_are_refused_as_quantization_targets() {
    for ty in QuantType::ALL.into_iter().filter(|t| !t.writable()) {
        let err = QuantTensor::quantize(ty, 2, 256, &values(512, 3), "w").unwrap_err();
        let text = err.to_string();
        assert!(
            text.contains(&format!("does not write {ty}")) && text.contains("Q4_K"),
            "{ty}: {text}"
        );
    }
    for ty in QuantType::WRITABLE {
        QuantTensor::quantize(ty, 2, 256, &values(512, 3), "w").unwrap();
    }
}

#[test]
fn quantized_linear_matches_dequantized_slow_twin() {
    let dev = Device::Cpu;
    for ty in QuantType::ALL {
        for (rows, cols) in [(3, 256), (37, 512), (64, 768)] {
            let q = quantized(ty, rows, cols, &values(rows * cols, 7));
            assert_eq!(q.stored_bytes(), ty.matrix_bytes(rows, cols).unwrap());
            let w = q.dequantize().unwrap();
            let linear = Linear::Quantized(Arc::new(q));
            for t in [1, 6] {
                let xv = values(t * cols, 8 + t as u64);
                let x = Tensor::from_vec(xv.clone(), (t, cols), &dev).unwrap();
                let fast = linear
                    .forward(&x)
                    .unwrap()
                    .flatten_all()
                    .unwrap()
                    .to_vec1::<f32>()
                    .unwrap();
                let slow = linear
                    .forward_slow(&x)
                    .unwrap()
                    .flatten_all()
                    .unwrap()
                    .to_vec1::<f32>()
                    .unwrap();
                let mut worst = 0f32;
                for ti in 0..t {
                    let x_row = &xv[ti * cols..(ti + 1) * cols];
                    let step: Vec<f32> = x_row
                        .chunks(ty.block_len())
                        .flat_map(|b| {
                            let s = max_abs(b) / 127.0;
                            std::iter::repeat_n(s, b.len())
                        })
                        .collect();
                    for j in 0..rows {
                        let w_row = &w[j * cols..(j + 1) * cols];
                        let bound: f32 = w_row
                            .iter()
                            .zip(&step)
                            .map(|(w, s)| w.abs() * s * 0.5)
                            .sum::<f32>()
                            * 1.01
                            + 1e-4;
                        let d = (fast[ti * rows + j] - slow[ti * rows + j]).abs();
                        assert!(d <= bound, "{ty} {rows}x{cols} t={t} row {j}: {d} > {bound}");
                        worst = worst.max(d / bound);
                    }
                }
                println!("{ty} {rows}x{cols} t={t}: worst diff / bound {worst:.3}");
            }
        }
    }
}

#[test]
fn quantization_round_trip_error_is_what_each_format_promises() {
    // Relative RMS error of quantize → dequantize on uniform values; the bounds are loose
    // multiples of what llama.cpp's formats achieve (8, 6, 5 and 4 bits).
    let (rows, cols) = (16, 512);
    let v = values(rows * cols, 9);
    let rms = |a: &[f32]| (a.iter().map(|x| x * x).sum::<f32>() / a.len() as f32).sqrt();
    for (ty, bound) in [
        (QuantType::Q8_0, 0.01),
        (QuantType::Q6K, 0.03),
        (QuantType::Q5K, 0.05),
        (QuantType::Q4K, 0.1),
        (QuantType::Q4_0, 0.12),
        (QuantType::Q5_1, 0.05),
        (QuantType::Q5_0, 0.06),
        (QuantType::Q4_1, 0.1),
        (QuantType::Q3K, 0.2),
        (QuantType::Q2K, 0.4),
    ] {
        let q = quantized(ty, rows, cols, &v);
        let back = q.dequantize().unwrap();
        let err: Vec<f32> = v.iter().zip(&back).map(|(a, b)| a - b).collect();
        let rel = rms(&err) / rms(&v);
        println!("{ty}: relative RMS error {rel:.4}");
        assert!(rel < bound, "{ty}: {rel}");
        // Bytes round trip: reading the stored bytes back gives the same tensor.
        let again = QuantTensor::read_with(ty, rows, cols, "w", |dst| {
            dst.copy_from_slice(q.bytes());
            Ok(())
        })
        .unwrap();
        assert_eq!(again.dequantize().unwrap(), back);
        // Row lookup (embeddings) dequantizes exactly the rows asked for.
        let picked = q.rows_f32(&[5, 0, 5]).unwrap();
        assert_eq!(&picked[..cols], &back[5 * cols..6 * cols]);
        assert_eq!(&picked[cols..2 * cols], &back[..cols]);
    }
}

#[test]
fn quantizing_rows_that_are_not_whole_blocks_is_an_error() {
    let err =
        QuantTensor::quantize(QuantType::Q4K, 2, 100, &values(200, 1), "blk.0.attn_q.weight").unwrap_err();
    let msg = err.to_string();
    assert!(
        msg.contains("blk.0.attn_q.weight") && msg.contains("Q4_K"),
        "{msg}"
    );
}

#[test]
fn bf16_checkpoint_stays_bf16_in_memory() {
    // sharded-bf16 stores its text weights in bf16: loading with f32 compute keeps them there.
    let dir = fixture_path("sharded-bf16");
    let model = herd_model::TextModel::load(&dir, DType::F32, &Device::Cpu).unwrap();
    let checkpoint = herd_model::Checkpoint::open(&dir).unwrap();
    let stored = checkpoint.stored_bytes(checkpoint.text_prefix())
        + checkpoint.stored_bytes(checkpoint.lm_head_name());
    // Norm weights (a few hundred values) are held in the compute dtype; everything else as stored.
    let resident = model.weight_bytes();
    println!("sharded-bf16: stored {stored} B, resident {resident} B");
    assert!(
        resident >= stored && resident <= stored + stored / 100,
        "{resident} vs {stored}"
    );
}

#[test]
fn tiled_transpose_matches_candles() {
    use herd_model::kernels::transpose::{transpose_slow, transpose_tensor};
    for (r, c) in [(1, 1), (3, 70), (33, 65), (64, 32)] {
        for dtype in [DType::BF16, DType::F16, DType::F32] {
            let t = Tensor::from_vec(values(r * c, 11), (r, c), &Device::Cpu)
                .unwrap()
                .to_dtype(dtype)
                .unwrap();
            let fast = transpose_tensor(&t).unwrap().to_dtype(DType::F32).unwrap();
            let slow = transpose_slow(&t).unwrap().to_dtype(DType::F32).unwrap();
            assert_close(&fast, &slow, 0.0, &format!("{r}x{c} {dtype:?}"));
        }
    }
}

#[test]
fn dense_dots_agree_across_instruction_sets() {
    // Every ISA this CPU has (the portable build included) against the slow twin's
    // element-by-element sum, on lengths around each unrolling width.
    for n in [1, 15, 16, 17, 31, 33, 63, 64, 65, 100, 2048, 2051] {
        let x = values(n, 12);
        let w32 = values(n, 13);
        let w: Vec<bf16> = w32.iter().map(|&v| bf16::from_f32(v)).collect();
        let slow = half_matmul::matmul_t_slow(&x, 1, &w, 1, n)[0];
        let slow32 = half_matmul::matmul_t_slow(&x, 1, &w32, 1, n)[0];
        let tol = 1e-5 * (n as f32).sqrt();
        for isa in Isa::supported() {
            let fast = half_matmul::dot_bf16(isa, &x, &w);
            assert!((fast - slow).abs() <= tol, "bf16 {isa} n={n}: {fast} vs {slow}");
            let fast32 = half_matmul::dot_f32(isa, &x, &w32);
            assert!(
                (fast32 - slow32).abs() <= tol,
                "f32 {isa} n={n}: {fast32} vs {slow32}"
            );
        }
    }
}

#[test]
fn f16_narrowing_is_halfs_rounding_on_every_instruction_set() {
    // Every finite f16 value, the midpoints to its upper neighbour (ties go to even) and the
    // f32 values either side of them, overflow past 65504, f32 subnormals, ±0, ±∞, NaNs with
    // payloads and a million pseudo-random bit patterns; an odd count, so every vector tail
    // runs. Bit for bit `f16::from_f32` (NaNs: NaN either way).
    let mut x: Vec<f32> = Vec::new();
    for bits in 0..=u16::MAX {
        let h = f16::from_bits(bits);
        let next = f16::from_bits(bits.wrapping_add(1));
        if !h.is_finite() {
            continue;
        }
        let v = h.to_f32();
        x.push(v);
        if next.is_finite() || next.is_infinite() {
            let upper = if next.is_infinite() {
                65520.0 * v.signum()
            } else {
                next.to_f32()
            };
            let mid = ((f64::from(v) + f64::from(upper)) / 2.0) as f32;
            x.extend([
                mid,
                f32::from_bits(mid.to_bits() + 1),
                f32::from_bits(mid.to_bits() - 1),
            ]);
        }
    }
    x.extend([
        0.0,
        -0.0,
        f32::INFINITY,
        f32::NEG_INFINITY,
        1e-40,
        -1e-45,
        7e4,
        -1e9,
        f32::MAX,
    ]);
    x.extend([
        f32::NAN,
        -f32::NAN,
        f32::from_bits(0x7f80_0001),
        f32::from_bits(0xffc0_1234),
    ]);
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    x.extend((0..1_000_001).map(|_| {
        state = state
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        f32::from_bits((state >> 32) as u32)
    }));
    for isa in Isa::supported() {
        for len in [x.len(), 1, 7, 9, 17, 33] {
            let mut narrow = vec![f16::ZERO; len];
            half_matmul::narrow_f16_on(isa, &x[..len], &mut narrow);
            for (v, h) in x.iter().zip(&narrow) {
                let want = f16::from_f32(*v);
                assert!(
                    want.to_bits() == h.to_bits() || (want.is_nan() && h.is_nan()),
                    "{isa}: {v:e} ({:#x}) narrowed to {:#x}, want {:#x}",
                    v.to_bits(),
                    h.to_bits(),
                    want.to_bits()
                );
            }
        }
    }
}

#[test]
fn f16_widening_is_exact_on_every_instruction_set() {
    // Every f16 bit pattern, in runs whose lengths leave every vector tail, against half's
    // scalar conversion: bit for bit (NaNs stay NaNs; hardware may quiet a signalling one).
    let all: Vec<f16> = (0..=u16::MAX).map(f16::from_bits).collect();
    for isa in Isa::supported() {
        for len in [1, 7, 8, 9, 15, 16, 17, 33] {
            for run in all
                .chunks(len)
                .take(4096 / len + 1)
                .chain(all.chunks(len).rev().take(2))
            {
                let mut wide = vec![0f32; run.len()];
                half_matmul::widen_f16_on(isa, run, &mut wide);
                for (h, w) in run.iter().zip(&wide) {
                    let want = h.to_f32();
                    assert!(
                        want.to_bits() == w.to_bits() || (want.is_nan() && w.is_nan()),
                        "{isa} len {len}: {h:?} widened to {w}, want {want}"
                    );
                }
            }
        }
        let mut wide = vec![0f32; all.len()];
        half_matmul::widen_f16_on(isa, &all, &mut wide);
        for (h, w) in all.iter().zip(&wide) {
            let want = h.to_f32();
            assert!(
                want.to_bits() == w.to_bits() || (want.is_nan() && w.is_nan()),
                "{isa}: {h:?} widened to {w}, want {want}"
            );
        }
    }
}

#[test]
fn dense_matmul_agrees_with_slow_twin_on_every_isa() {
    // Decode (t ≤ 4, streamed rows) and prefill (t > 4, gemm panels) shapes, odd sizes.
    for &(t, n, k) in &[
        (1, 1, 1),
        (1, 67, 33),
        (3, 130, 257),
        (4, 5, 2048),
        (5, 70, 96),
        (9, 131, 65),
    ] {
        let x = values(t * k, 21);
        let w32 = values(n * k, 22);
        let wb: Vec<bf16> = w32.iter().map(|&v| bf16::from_f32(v)).collect();
        let wh: Vec<f16> = w32.iter().map(|&v| f16::from_f32(v)).collect();
        let tol = 2e-6 * (k as f32).sqrt() * 4.0;
        for isa in Isa::supported() {
            let fast = half_matmul::matmul_t_on(isa, &x, t, &wb, n, k);
            let slow = half_matmul::matmul_t_slow(&x, t, &wb, n, k);
            assert!(
                max_diff(&fast, &slow) <= tol,
                "bf16 {isa} {t}x{n}x{k}: {}",
                max_diff(&fast, &slow)
            );
            let fast = half_matmul::matmul_t_on(isa, &x, t, &wh, n, k);
            let slow = half_matmul::matmul_t_slow(&x, t, &wh, n, k);
            assert!(max_diff(&fast, &slow) <= tol, "f16 {isa} {t}x{n}x{k}");
            let fast = half_matmul::matmul_t_on(isa, &x, t, &w32, n, k);
            let slow = half_matmul::matmul_t_slow(&x, t, &w32, n, k);
            assert!(max_diff(&fast, &slow) <= tol, "f32 {isa} {t}x{n}x{k}");
        }
    }
}

/// Random blocks of `ty` with `rows` rows of `cols` values (quantized from random floats, so
/// every field is a plausible one), with a few levels pushed to their extremes.
pub(crate) fn random_blocks(ty: QuantType, rows: usize, cols: usize, seed: u64) -> QuantTensor {
    let mut w = values(rows * cols, seed);
    // Large outliers make scales and levels reach their ends (Q8_0 ±127, 6-bit scales at 63).
    for i in (0..w.len()).step_by(97) {
        w[i] *= 9.0;
    }
    quantized(ty, rows, cols, &w)
}

/// The formats with herd kernels of their own ([`herd_model::kernels::quant_dot::supports`]).
const KERNEL_FORMATS: [QuantType; 8] = [
    QuantType::Q8_0,
    QuantType::Q4K,
    QuantType::Q6K,
    QuantType::Q5_0,
    QuantType::Q4_1,
    QuantType::Q5_1,
    QuantType::Iq4Nl,
    QuantType::Iq4Xs,
];

#[test]
fn quant_kernels_agree_with_slow_twin_on_every_isa() {
    // The integer dot products on every path against the slow twin (both sides dequantized to
    // f32): exact integer sums, so only the f32 summation order differs.
    for ty in QuantType::ALL {
        assert_eq!(
            herd_model::kernels::quant_dot::supports(ty),
            KERNEL_FORMATS.contains(&ty),
            "{ty}"
        );
    }
    for ty in KERNEL_FORMATS {
        let mut shapes = vec![
            (1, 1, 256),
            (1, 33, 512),
            (2, 7, 2048),
            (5, 17, 256),
            (1, 130, 768),
            (3, 9, 1280),
        ];
        if ty.block_len() == 32 {
            // Rows of 1, 3, 5 and 7 blocks: the four-block AVX-512 loop's tail.
            shapes.extend([(1, 3, 32), (2, 5, 96), (1, 4, 160), (3, 2, 224)]);
        }
        for &(t, n, k) in &shapes {
            let q = random_blocks(ty, n, k, 31 + n as u64);
            let x: Vec<f32> = values(t * k, 32).iter().map(|v| v * 3.0).collect();
            let slow = quant_matmul::matmul_t_slow(ty, q.bytes(), n, k, &x, t);
            let scale = max_abs(&slow).max(1.0);
            for isa in Isa::supported() {
                let fast = quant_matmul::matmul_t_on(isa, ty, q.bytes(), n, k, &x, t);
                let d = max_diff(&fast, &slow);
                assert!(d <= 1e-5 * scale, "{ty} {isa} {t}x{n}x{k}: {d} (scale {scale})");
            }
        }
    }
}

#[test]
fn quant_kernels_are_close_to_the_unquantized_activation_product() {
    // What the 8-bit activations cost: against dequantized weights times the f32 activations.
    for ty in KERNEL_FORMATS {
        let (t, n, k) = (2, 64, 2048);
        let q = random_blocks(ty, n, k, 41);
        let x = values(t * k, 42);
        let exact = Linear::Quantized(Arc::new(random_blocks(ty, n, k, 41)))
            .forward_slow(&Tensor::from_vec(x.clone(), (t, k), &Device::Cpu).unwrap())
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        let fast = quant_matmul::matmul_t(ty, q.bytes(), n, k, &x, t);
        let rel = max_diff(&fast, &exact) / max_abs(&exact);
        assert!(rel < 1e-2, "{ty}: relative error {rel}");
    }
}

#[test]
fn quant_kernels_mutation_twin_detects_a_changed_level() {
    // One byte of one block changed: every path must see it (a kernel that skipped part of a
    // block, or read the wrong half of a nibble, would agree with the original).
    for ty in KERNEL_FORMATS {
        let (n, k) = (3, 512);
        let q = random_blocks(ty, n, k, 51);
        let x = values(k, 52);
        let good = quant_matmul::matmul_t_slow(ty, q.bytes(), n, k, &x, 1);
        // A level byte near the end of the last block of row 1 (past Q6_K's scales and d, it is
        // ql; for the others, quants).
        let row_bytes = q.bytes().len() / n;
        for offset in [row_bytes + ty.block_bytes() + 20, 2 * row_bytes - 40] {
            let mut bytes = q.bytes().to_vec();
            bytes[offset] ^= 0x11;
            for isa in Isa::supported() {
                let bad = quant_matmul::matmul_t_on(isa, ty, &bytes, n, k, &x, 1);
                assert!(
                    (bad[1] - good[1]).abs() > 1e-6,
                    "{ty} {isa}: byte {offset} ignored"
                );
                assert_eq!(
                    bad[0],
                    quant_matmul::matmul_t_on(isa, ty, q.bytes(), n, k, &x, 1)[0]
                );
            }
        }
    }
}

#[test]
fn q8_0_kernel_takes_minus_128_levels() {
    // ggml's quantizer never writes −128, but a GGUF can hold it: |−128| is 128 as a u8, so the
    // sign trick must still multiply correctly.
    let (n, k) = (2, 256);
    let q = random_blocks(QuantType::Q8_0, n, k, 61);
    let mut bytes = q.bytes().to_vec();
    for blk in bytes.chunks_exact_mut(34) {
        blk[2] = 0x80;
        blk[33] = 0x80;
    }
    let x = values(k, 62);
    let slow = quant_matmul::matmul_t_slow(QuantType::Q8_0, &bytes, n, k, &x, 1);
    for isa in Isa::supported() {
        let fast = quant_matmul::matmul_t_on(isa, QuantType::Q8_0, &bytes, n, k, &x, 1);
        assert!(
            max_diff(&fast, &slow) <= 1e-5 * max_abs(&slow),
            "{isa}: {fast:?} vs {slow:?}"
        );
    }
}

/// A Q8_0 block as llama.cpp's x86 build makes it: levels x · (127 / max|x|) to the nearest,
/// ties to even (the reference C's `roundf` would send 2.5 to 3), the scale max|x| / 127 in
/// f16. Its slow twin here is that description written out; the KV cache's rows are the same
/// bytes.
#[test]
fn q8_0_blocks_round_as_llama_cpp_on_x86() {
    // max|x| = 127: the multiplier is exactly 1, so every half is a tie.
    let mut ties = [0f32; 32];
    ties[0] = 127.0;
    let halves = [2.5, 3.5, -2.5, -3.5, 0.5, -0.5, 1.5, 126.5, -126.5];
    ties[1..=halves.len()].copy_from_slice(&halves);
    let mut levels = [0i8; 32];
    let d = q8_0_block(&ties, &mut levels);
    assert_eq!(d, f16::from_f32(1.0));
    assert_eq!(&levels[..=halves.len()], &[127, 2, 4, -2, -4, 0, 0, 2, 126, -126]);

    let slow = |x: &[f32]| -> (f16, Vec<i8>) {
        let amax = x.iter().fold(0f32, |m, v| m.max(v.abs()));
        let id = if amax == 0.0 { 0.0 } else { 127.0 / amax };
        let q = x.iter().map(|v| (v * id).round_ties_even() as i8).collect();
        (f16::from_f32(amax / 127.0), q)
    };
    let x: Vec<f32> = values(32 * 64, 91).iter().map(|v| v * 3.0).collect();
    let mut acts = Q8Activations::default();
    quantize_q8_0(&x, 32 * 64, &mut acts);
    let mut cache_rows = vec![0u8; 64 * herd_model::kernels::kv_q8::BLOCK_BYTES];
    herd_model::kernels::kv_q8::quantize(&x, &mut cache_rows);
    for (b, xb) in x.chunks_exact(32).enumerate() {
        let (d, q) = slow(xb);
        assert_eq!(acts.scales[b], d.to_f32(), "block {b}");
        assert_eq!(&acts.qs[32 * b..32 * b + 32], &q[..], "block {b}");
        let row = &cache_rows[34 * b..34 * b + 34];
        assert_eq!(row[..2], d.to_le_bytes(), "cache block {b}");
        assert!(
            row[2..].iter().zip(&q).all(|(&r, &q)| r as i8 == q),
            "cache block {b}"
        );
    }
    // Zeros, and NaN beside numbers: level 0, as a cast of NaN gives.
    let mut odd = [0f32; 32];
    assert_eq!(q8_0_block(&odd, &mut levels), f16::ZERO);
    assert!(levels.iter().all(|&q| q == 0));
    odd[0] = f32::NAN;
    odd[1] = -4.0;
    q8_0_block(&odd, &mut levels);
    assert_eq!((levels[0], levels[1]), (0, -127));
}

#[test]
fn q8_activations_round_trip_within_half_a_step_of_their_scale() {
    let x: Vec<f32> = values(512, 71).iter().map(|v| v * 5.0).collect();
    for (acts, block) in [
        (
            {
                let mut a = Q8Activations::default();
                quantize_q8_0(&x, 512, &mut a);
                a
            },
            32,
        ),
        (
            {
                let mut a = Q8Activations::default();
                quantize_q8_k(&x, 512, &mut a);
                a
            },
            256,
        ),
    ] {
        for (i, (&q, &v)) in acts.qs.iter().zip(&x).enumerate() {
            let d = acts.scales[i / block];
            // Half a step, plus (Q8_0) the f16 rounding of the stored scale: ≤ 2⁻¹¹ of it.
            let stored = if block == 32 {
                f32::from(q).abs() * d.abs() / 2048.0
            } else {
                0.0
            };
            assert!(
                (f32::from(q) * d - v).abs() <= d.abs() * 0.5 + stored + 1e-6,
                "value {i}"
            );
        }
        if block == 256 {
            for (g, s) in acts.sums16.iter().enumerate() {
                let want: i32 = acts.qs[16 * g..16 * g + 16].iter().map(|&q| i32::from(q)).sum();
                assert_eq!(i32::from(*s), want);
            }
        }
    }
}

#[test]
fn q8_k_levels_round_ties_to_even_as_ggml_does() {
    // A block whose largest magnitude is −127 has inverse scale −127 / −127 = 1, so each level is
    // its value rounded: ties go to the even neighbour (ggml's nearest_int), not away from zero.
    let mut x = vec![0f32; 256];
    let ties = [
        0.5f32, 1.5, 2.5, -0.5, -1.5, -2.5, 126.5, -126.5, 3.49, -3.51, 7.0, 0.0,
    ];
    x[..ties.len()].copy_from_slice(&ties);
    x[255] = -127.0;
    let mut a = Q8Activations::default();
    quantize_q8_k(&x, 256, &mut a);
    assert_eq!(a.scales, vec![1.0]);
    let want: Vec<i8> = x.iter().map(|v| v.round_ties_even() as i8).collect();
    assert_eq!(a.qs, want);
    // Mutation twin: rounding half away from zero differs on every tie.
    let away: Vec<i8> = x.iter().map(|v| v.round() as i8).collect();
    assert_ne!(away, want);
}
