//! The k-quant prefill kernel on Q8_K activations (`kernels::quant_gemm`) against its slow twin
//! on every ISA, with mutation twins for levels, scales and tokens.

use std::sync::Arc;

use herd_model::kernels::isa::Isa;
use herd_model::kernels::{quant_gemm, quant_matmul};
use herd_model::nn::Linear;
use herd_model::weights::QuantType;

use crate::weights::{max_abs, max_diff, random_blocks, values};

const FORMATS: [QuantType; 2] = [QuantType::Q4K, QuantType::Q6K];

#[test]
fn quant_gemm_agrees_with_slow_twin_on_every_isa() {
    // (tokens, rows, K): token blocks of 6 and their tails, row pairs of 32 and their tails,
    // one to sixteen super-blocks, and a run of rows long enough to be split across tasks.
    let shapes = [
        (1, 1, 256),
        (6, 32, 256),
        (7, 33, 512),
        (13, 70, 768),
        (17, 5, 2048),
        (40, 130, 1280),
        (5, 300, 4096),
        (2, 64, 256),
    ];
    for ty in FORMATS {
        for &(t, n, k) in &shapes {
            let q = random_blocks(ty, n, k, 61 + n as u64);
            // Outliers put some activation levels at ±127.
            let mut x: Vec<f32> = values(t * k, 62 + t as u64).iter().map(|v| v * 2.0).collect();
            for i in (0..x.len()).step_by(251) {
                x[i] *= -40.0;
            }
            let slow = quant_matmul::matmul_t_slow(ty, q.bytes(), n, k, &x, t);
            let scale = max_abs(&slow).max(1.0);
            for isa in Isa::supported() {
                let fast = quant_gemm::matmul_t_on(isa, ty, q.bytes(), n, k, &x, t);
                let d = max_diff(&fast, &slow);
                assert!(d <= 1e-5 * scale, "{ty} {isa} {t}x{n}x{k}: {d} (scale {scale})");
            }
        }
    }
}

#[test]
fn quant_gemm_mutation_twins_see_a_level_a_scale_and_a_token() {
    let (t, n, k) = (8, 40, 512);
    for ty in FORMATS {
        let q = random_blocks(ty, n, k, 71);
        let x = values(t * k, 72);
        let row_bytes = q.bytes().len() / n;
        let block = ty.block_bytes();
        // Row 33 (the second pair's first row): a level byte in its last block, and a scale
        // byte in its first (Q4_K: the packed 6-bit scales and mins; Q6_K: the i8 scales).
        let level = 34 * row_bytes - block + 20;
        let scale = 33 * row_bytes + if ty == QuantType::Q4K { 5 } else { 195 };
        for isa in Isa::supported() {
            let good = quant_gemm::matmul_t_on(isa, ty, q.bytes(), n, k, &x, t);
            for offset in [level, scale] {
                let mut bytes = q.bytes().to_vec();
                bytes[offset] ^= 0x11;
                let bad = quant_gemm::matmul_t_on(isa, ty, &bytes, n, k, &x, t);
                for i in 0..t {
                    for r in 0..n {
                        let (g, b) = (good[i * n + r], bad[i * n + r]);
                        if r == 33 {
                            assert!(
                                (g - b).abs() > 1e-6,
                                "{ty} {isa}: byte {offset} ignored for token {i}"
                            );
                        } else {
                            assert_eq!(g, b, "{ty} {isa}: byte {offset} of row 33 moved row {r}");
                        }
                    }
                }
            }
            // The last token's activations changed: only its row of y moves.
            let mut x2 = x.clone();
            x2[(t - 1) * k + 3] += 0.5;
            let bad = quant_gemm::matmul_t_on(isa, ty, q.bytes(), n, k, &x2, t);
            assert_eq!(
                bad[..(t - 1) * n],
                good[..(t - 1) * n],
                "{ty} {isa}: other tokens moved"
            );
            assert!(
                max_diff(&bad[(t - 1) * n..], &good[(t - 1) * n..]) > 1e-6,
                "{ty} {isa}"
            );
        }
    }
}

#[test]
fn quantized_linear_prefill_takes_the_integer_kernel_where_it_applies() {
    // A prefill through `Linear` computes what the kernel computes, bit for bit, on a CPU where
    // the kernel applies, and one row fewer what the per-token integer dots compute; elsewhere
    // it still agrees with the slow twin within the rounding of the activations (the bf16
    // panels do not round them to 8 bits).
    let forward = |ty: QuantType, n: usize, k: usize, x: &[f32], t: usize| {
        Linear::Quantized(Arc::new(random_blocks(ty, n, k, 81)))
            .forward(&candle_core::Tensor::from_vec(x.to_vec(), (t, k), &candle_core::Device::Cpu).unwrap())
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap()
    };
    for ty in FORMATS {
        let (t, n, k) = (quant_gemm::min_rows(ty), 48, 512);
        let q = random_blocks(ty, n, k, 81);
        let x = values(t * k, 82);
        let via_linear = forward(ty, n, k, &x, t);
        if quant_gemm::applies(Isa::current(), ty) {
            assert_eq!(
                via_linear,
                quant_gemm::matmul_t(ty, q.bytes(), n, k, &x, t),
                "{ty}"
            );
            let fewer = &x[..(t - 1) * k];
            assert_eq!(
                forward(ty, n, k, fewer, t - 1),
                quant_matmul::matmul_t(ty, q.bytes(), n, k, fewer, t - 1),
                "{ty}"
            );
        } else {
            let slow = quant_matmul::matmul_t_slow(ty, q.bytes(), n, k, &x, t);
            assert!(max_diff(&via_linear, &slow) < 2e-2 * max_abs(&slow), "{ty}");
        }
    }
}

#[test]
#[should_panic(expected = "supports")]
fn quant_gemm_refuses_q8_0() {
    let q = random_blocks(QuantType::Q8_0, 2, 256, 91);
    quant_gemm::matmul_t_on(
        Isa::Portable,
        QuantType::Q8_0,
        q.bytes(),
        2,
        256,
        &values(256, 92),
        1,
    );
}

#[test]
fn q8_k_quantization_is_ggmls_loop_bit_for_bit_on_every_isa() {
    use herd_model::kernels::q8_activations::{quantize_q8_k_on, quantize_q8_k_slow, Q8Activations};
    // 300 blocks (enough for the pool), the first ones special: zeros, −0, +m before −m, −m
    // before +m, NaN among numbers, +∞, a subnormal largest value, all NaN, and levels that fall
    // exactly halfway between two integers.
    let mut x: Vec<f32> = values(300 * 256, 101).iter().map(|v| v * 7.0).collect();
    let block = |b: usize| b * 256..(b + 1) * 256;
    x[block(0)].fill(0.0);
    x[block(1)].fill(-0.0);
    x[2 * 256 + 10] = 9.0;
    x[2 * 256 + 20] = -9.0;
    x[3 * 256 + 10] = -9.0;
    x[3 * 256 + 20] = 9.0;
    x[4 * 256 + 5] = f32::NAN;
    x[5 * 256 + 7] = f32::INFINITY;
    for v in &mut x[block(6)] {
        *v *= 1e-40;
    }
    x[block(7)].fill(f32::NAN);
    for (i, v) in x[block(8)].iter_mut().enumerate() {
        // Largest magnitude 127, so the levels are x itself: halves round to even.
        *v = if i == 0 { -127.0 } else { (i % 50) as f32 - 24.5 };
    }
    for isa in Isa::supported() {
        for blocks in [1, 9, 300] {
            let (mut fast, mut slow) = (Q8Activations::default(), Q8Activations::default());
            quantize_q8_k_on(isa, &x[..blocks * 256], 256, &mut fast);
            quantize_q8_k_slow(&x[..blocks * 256], 256, &mut slow);
            assert_eq!(fast.qs, slow.qs, "{isa} {blocks}");
            assert_eq!(fast.sums16, slow.sums16, "{isa} {blocks}");
            let bits = |s: &[f32]| s.iter().map(|v| v.to_bits()).collect::<Vec<_>>();
            assert_eq!(bits(&fast.scales), bits(&slow.scales), "{isa} {blocks}");
        }
    }
    // The ties took their sign from the first value of the largest magnitude.
    let mut a = Q8Activations::default();
    quantize_q8_k_slow(&x[..4 * 256], 256, &mut a);
    assert!(a.scales[2] < 0.0 && a.scales[3] > 0.0);
}
