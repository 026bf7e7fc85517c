//! Ops against their slow twins and hand-computed values.

use candle_core::{DType, Device, Tensor};
use herd_model::config::{Llama3Scaling, RopeConfig, RopePairing, RouterScoring, TemperatureTuning};
use herd_model::nn::rope::{rotate_slow, RotaryTables};
use herd_model::text::mask::{additive_mask, allowed, chunk_runs, chunk_start, query_blocks};
use herd_model::text::moe::route;
use herd_testkit::assert_close;

#[test]
fn interleaved_rope_matches_slow_twin_on_random_shapes() {
    let dev = Device::Cpu;
    for (heads, t, dh, start) in [(1, 1, 2, 0), (3, 5, 8, 7), (4, 9, 16, 8190), (2, 3, 128, 20000)] {
        let rope = RopeConfig {
            theta: 500000.0,
            scaling: Some(Llama3Scaling {
                factor: 16.0,
                low_freq_factor: 1.0,
                high_freq_factor: 4.0,
                original_max_position_embeddings: 64.0,
            }),
        };
        let inv_freq = rope.inv_freq(dh);
        let x = Tensor::randn(0f32, 1.0, (1, heads, t, dh), &dev).unwrap();
        let tables = RotaryTables::new(
            &inv_freq,
            start..start + t,
            RopePairing::Interleaved,
            DType::F32,
            &dev,
        )
        .unwrap();
        let fast = tables.apply(&x).unwrap();
        let rows = x.reshape((heads * t, dh)).unwrap().to_vec2::<f32>().unwrap();
        let slow: Vec<f32> = rows
            .iter()
            .enumerate()
            .flat_map(|(r, row)| rotate_slow(row, start + r % t, &inv_freq))
            .collect();
        let slow = Tensor::from_vec(slow, (1, heads, t, dh), &dev).unwrap();
        assert_close(&fast, &slow, 1e-5, &format!("rope h{heads} t{t} d{dh} @{start}"));
    }
}

#[test]
fn rope_rotates_adjacent_pairs() {
    // Position 1, one pair with inv_freq 1: (1, 0) → (cos 1, sin 1).
    let out = rotate_slow(&[1.0, 0.0], 1, &[1.0]);
    assert!((out[0] - 1f32.cos()).abs() < 1e-7 && (out[1] - 1f32.sin()).abs() < 1e-7);
}

#[test]
fn llama3_scaling_bands() {
    let s = Llama3Scaling {
        factor: 8.0,
        low_freq_factor: 1.0,
        high_freq_factor: 4.0,
        original_max_position_embeddings: 8192.0,
    };
    let short = 2.0 * std::f32::consts::PI / 1000.0; // wavelength 1000 < 2048: kept
    assert_eq!(s.scale(short), short);
    let long = 2.0 * std::f32::consts::PI / 10000.0; // wavelength 10000 > 8192: / factor
    assert_eq!(s.scale(long), long / 8.0);
    let mid = 2.0 * std::f32::consts::PI / 4096.0; // smooth = (2 - 1) / 3
    let smooth = 1.0f32 / 3.0;
    let expected = (1.0 - smooth) * mid / 8.0 + smooth * mid;
    assert!((s.scale(mid) - expected).abs() < 1e-9);
    // Scout: low = high, the band edge must not produce NaN.
    let scout = Llama3Scaling {
        high_freq_factor: 1.0,
        ..s
    };
    let edge = 2.0 * std::f32::consts::PI / 8192.0;
    assert!(scout.scale(edge).is_finite());
}

#[test]
fn inv_freq_is_bit_exact_with_the_reference_recipe() {
    // f32(1) / f32(theta^(2m/d) in f64): transformers' table for theta 500000, d 16.
    let inv = RopeConfig {
        theta: 500000.0,
        scaling: None,
    }
    .inv_freq(16);
    assert_eq!(inv[0], 1.0);
    assert_eq!(inv[1], 1.0f32 / 500000f64.powf(0.125) as f32);
    assert_eq!(inv.len(), 8);
}

#[test]
fn temperature_scale_steps_at_floor_scale() {
    let t = TemperatureTuning {
        floor_scale: 8192.0,
        attn_scale: 0.1,
    };
    assert_eq!(t.scale(0), 1.0);
    assert_eq!(t.scale(8190), 1.0);
    assert!((t.scale(8191) - (1.0 + 0.1 * 2f32.ln())).abs() < 1e-6);
    assert!((t.scale(16382) - (1.0 + 0.1 * 2f32.ln())).abs() < 1e-6);
    assert!((t.scale(16383) - (1.0 + 0.1 * 3f32.ln())).abs() < 1e-6);
}

#[test]
fn chunked_mask_is_block_aligned_not_sliding() {
    let c = Some(8);
    assert!(allowed(7, 0, c));
    assert!(!allowed(8, 7, c), "position 8 starts a new block");
    assert!(allowed(9, 8, c));
    assert!(!allowed(3, 4, c), "never the future");
    assert!(allowed(20000, 0, None));
    assert!(!allowed(3, 4, None));
    assert_eq!(chunk_start(8191, Some(8192)), 0);
    assert_eq!(chunk_start(20000, Some(8192)), 16384);
    // At p = 20000 with C = 8192 exactly 3617 keys are visible (LLAMA4.md §10).
    assert_eq!(
        (0..=20000).filter(|&k| allowed(20000, k, Some(8192))).count(),
        3617
    );
    let m = additive_mask(6..10, 4..10, c);
    let row = |q: usize| &m[(q - 6) * 6..(q - 5) * 6];
    assert_eq!(row(7).iter().filter(|v| **v == 0.0).count(), 4); // keys 4..=7
    assert_eq!(row(9).iter().filter(|v| **v == 0.0).count(), 2); // keys 8, 9
}

#[test]
fn chunk_runs_split_at_block_edges() {
    assert_eq!(chunk_runs(5..20, Some(8)), vec![5..8, 8..16, 16..20]);
    assert_eq!(chunk_runs(8..9, Some(8)), vec![8..9]);
    assert_eq!(chunk_runs(0..30, None), vec![0..30]);
    assert_eq!(query_blocks(5..20, Some(8), 5), vec![5..8, 8..13, 13..16, 16..20]);
    assert_eq!(query_blocks(0..7, None, 3), vec![0..3, 3..6, 6..7]);
}

#[test]
fn router_picks_top_k_on_raw_logits_with_sigmoid_scores() {
    let logits = vec![vec![0.5, 2.0, -1.0, 1.0], vec![-3.0, -2.0, -1.0, -4.0]];
    let d = route(&logits, 2, RouterScoring::Sigmoid);
    let sig = |x: f32| 1.0 / (1.0 + (-x).exp());
    assert_eq!(d.per_expert[1], vec![(0, sig(2.0)), (1, sig(-2.0))]);
    assert_eq!(d.per_expert[3], vec![(0, sig(1.0))]);
    assert_eq!(d.per_expert[2], vec![(1, sig(-1.0))]);
    assert!(d.per_expert[0].is_empty());
    // Sigmoid scores are not renormalised: they need not sum to 1.
    assert!((sig(2.0) + sig(1.0) - 1.0).abs() > 0.1);
}

#[test]
fn gelu_matches_candles_erf_gelu_on_every_path() {
    use herd_model::kernels::gelu::gelu_erf_in_place_on;
    use herd_model::kernels::isa::Isa;
    // Both tails, the middle, zeros of both signs, values past the exponential's range, and
    // enough of them for several pool tasks.
    let mut x: Vec<f32> = (0..200_003).map(|i| (i as f32 - 100_000.0) * 1.3e-4).collect();
    x.extend([0.0, -0.0, 1e-30, -1e-30, 9.0, -9.0, 50.0, -50.0, f32::MAX, -1e5]);
    // The slow twin in f64: candle's gelu_erf with its own erf.
    let slow: Vec<f32> = Tensor::new(x.iter().map(|&v| f64::from(v)).collect::<Vec<_>>(), &Device::Cpu)
        .unwrap()
        .gelu_erf()
        .unwrap()
        .to_vec1::<f64>()
        .unwrap()
        .iter()
        .map(|&v| v as f32)
        .collect();
    for isa in Isa::supported() {
        let mut fast = x.clone();
        gelu_erf_in_place_on(isa, &mut fast);
        for ((&xi, &f), &s) in x.iter().zip(&fast).zip(&slow) {
            // Absolute error of erf (2e-7 with the exponential's) times |x|/2, and f32 rounding.
            let tol = 1.5e-7 * xi.abs().max(1.0) + 1e-7 * s.abs();
            assert!((f - s).abs() <= tol, "{isa}: gelu({xi}) = {f}, want {s}");
        }
        // Mutation twin: the tanh approximation (what `gelu` means elsewhere) is told apart.
        let tanh = |v: f32| {
            0.5 * v * (1.0 + ((2.0 / std::f32::consts::PI).sqrt() * (v + 0.044715 * v * v * v)).tanh())
        };
        assert!(
            x.iter().zip(&fast).any(|(&xi, &f)| (tanh(xi) - f).abs() > 1e-5),
            "{isa}"
        );
    }
    let mut nan = [f32::NAN];
    gelu_erf_in_place_on(Isa::current(), &mut nan);
    assert!(nan[0].is_nan());
}

#[test]
fn bias_then_gelu_is_the_bias_added_row_by_row_then_gelu_on_every_path() {
    use herd_model::kernels::gelu::{add_bias_then_gelu_on, gelu_erf_in_place_on};
    use herd_model::kernels::isa::Isa;
    // Rows wider and narrower than a pool task, a single row, and a last partial task.
    for &(rows, n) in &[(1, 7), (3, 5632), (577, 1408), (40, 70_001)] {
        let y: Vec<f32> = (0..rows * n)
            .map(|i| ((i * 37 % 1001) as f32 - 500.0) * 7e-3)
            .collect();
        let bias: Vec<f32> = (0..n).map(|j| ((j * 13 % 97) as f32 - 48.0) * 1e-2).collect();
        for isa in Isa::supported() {
            for gelu in [false, true] {
                let mut slow = y.clone();
                for row in slow.chunks_exact_mut(n) {
                    for (v, b) in row.iter_mut().zip(&bias) {
                        *v += b;
                    }
                }
                if gelu {
                    gelu_erf_in_place_on(isa, &mut slow);
                }
                let mut fast = y.clone();
                add_bias_then_gelu_on(isa, &mut fast, &bias, gelu);
                let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
                assert_eq!(bits(&fast), bits(&slow), "{isa} {rows}x{n} gelu {gelu}");
                // Mutation twin: the bias of the last column reaches every row's last value.
                let mut moved_bias = bias.clone();
                moved_bias[n - 1] += 1.0;
                let mut moved = y.clone();
                add_bias_then_gelu_on(isa, &mut moved, &moved_bias, gelu);
                for r in 0..rows {
                    assert_ne!(moved[r * n + n - 1], fast[r * n + n - 1], "{isa} row {r}");
                    assert_eq!(moved[r * n..r * n + n - 1], fast[r * n..r * n + n - 1]);
                }
            }
        }
    }
}

#[test]
fn layer_norm_kernel_computes_candles_bits() {
    use herd_model::kernels::layer_norm::layer_norm;
    // Rows fewer than, equal to and past the eight run side by side, tasks' partial last runs,
    // a row offset far from zero (the one-pass variance's cancellation must be candle's too).
    for &(rows, n) in &[(1, 1408), (7, 5), (8, 64), (9, 33), (577, 1408), (100, 1000)] {
        let x: Vec<f32> = (0..rows * n)
            .map(|i| ((i * 7919 % 1013) as f32 - 506.0) * 3e-3 + if i / n == 2 { 40.0 } else { 0.0 })
            .collect();
        let alpha: Vec<f32> = (0..n).map(|j| 1.0 + (j % 11) as f32 * 0.05).collect();
        let beta: Vec<f32> = (0..n).map(|j| (j % 7) as f32 * 0.01 - 0.03).collect();
        let dev = Device::Cpu;
        let slow = candle_nn::ops::layer_norm(
            &Tensor::from_vec(x.clone(), (rows, n), &dev).unwrap(),
            &Tensor::new(alpha.as_slice(), &dev).unwrap(),
            &Tensor::new(beta.as_slice(), &dev).unwrap(),
            1e-5,
        )
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1::<f32>()
        .unwrap();
        let fast = layer_norm(&x, &alpha, &beta, 1e-5);
        let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
        assert_eq!(bits(&fast), bits(&slow), "{rows}x{n}");
        // Mutation twin: one value of the last row moves that row, and only that row.
        let mut moved_x = x.clone();
        moved_x[rows * n - 1] += 1.0;
        let moved = layer_norm(&moved_x, &alpha, &beta, 1e-5);
        assert_eq!(moved[..(rows - 1) * n], fast[..(rows - 1) * n]);
        assert_ne!(moved[(rows - 1) * n..], fast[(rows - 1) * n..]);
    }
    assert!(layer_norm(&[], &[1.0; 4], &[0.0; 4], 1e-5).is_empty());
}

#[test]
fn fused_rms_norm_computes_candles_bits() {
    use herd_model::kernels::rms_norm::{rms_norm_rows, rms_norm_rows_in, SumOrder};
    use herd_model::nn::rms_normalize;
    // Row lengths around the 32-value runs (a tail only, runs only, both), Scout's head and
    // model widths, values spread over magnitudes so the summation order shows in the bits.
    let dev = Device::Cpu;
    let mut orders_differ = false;
    for &(rows, n) in &[
        (1, 1),
        (3, 31),
        (2, 32),
        (5, 33),
        (24, 128),
        (1, 2048),
        (40, 5120),
        (7, 100),
    ] {
        let x: Vec<f32> = (0..rows * n)
            .map(|i| ((i * 7919 % 2003) as f32 - 1001.0) * 10f32.powi((i % 7) as i32 - 3))
            .collect();
        let w: Vec<f32> = (0..n).map(|j| 0.5 + (j % 13) as f32 * 0.1).collect();
        let xt = Tensor::from_vec(x.clone(), (rows, n), &dev).unwrap();
        let wt = Tensor::new(w.as_slice(), &dev).unwrap();
        let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
        for eps in [1e-5, 1e-6] {
            let slow = rms_normalize(&xt, eps).unwrap();
            let slow_w = slow.broadcast_mul(&wt).unwrap();
            let flat = |t: &Tensor| t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
            assert_eq!(
                bits(&rms_norm_rows(&x, n, None, eps)),
                bits(&flat(&slow)),
                "{rows}x{n}"
            );
            assert_eq!(
                bits(&rms_norm_rows(&x, n, Some(&w), eps)),
                bits(&flat(&slow_w)),
                "{rows}x{n} weighted"
            );
        }
        let lanes = rms_norm_rows_in(SumOrder::Lanes, &x, n, None, 1e-5);
        let in_order = rms_norm_rows_in(SumOrder::InOrder, &x, n, None, 1e-5);
        orders_differ |= bits(&lanes) != bits(&in_order);
        // Mutation twin: one value of the last row moves that row only.
        let mut moved_x = x.clone();
        moved_x[rows * n - 1] += 1.0;
        let fast = rms_norm_rows(&x, n, Some(&w), 1e-5);
        let moved = rms_norm_rows(&moved_x, n, Some(&w), 1e-5);
        assert_eq!(moved[..(rows - 1) * n], fast[..(rows - 1) * n]);
        assert_ne!(moved[(rows - 1) * n..], fast[(rows - 1) * n..]);
    }
    // The two orders are told apart on these values, so a wrong order would fail above.
    assert!(orders_differ);
}

#[test]
fn stacked_biased_layers_compute_each_layers_bits() {
    use herd_model::nn::matmul_precision::{self, MatmulPrecision};
    use herd_model::nn::{BiasedLinear, Linear};
    let dev = Device::Cpu;
    let (c, k) = (48, 64);
    let layer = |seed: f32, dtype: DType| {
        let w: Vec<f32> = (0..c * k)
            .map(|i| ((i as f32 * 0.37 + seed).sin()) * 0.2)
            .collect();
        let b: Vec<f32> = (0..c).map(|i| (i as f32 * 0.11 + seed).cos()).collect();
        BiasedLinear::new(
            Linear::from_weight(
                Tensor::from_vec(w, (c, k), &dev)
                    .unwrap()
                    .to_dtype(dtype)
                    .unwrap(),
            ),
            Tensor::from_vec(b, c, &dev).unwrap().to_dtype(dtype).unwrap(),
        )
    };
    let bits = |t: &Tensor| {
        t.flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap()
            .iter()
            .map(|v| v.to_bits())
            .collect::<Vec<_>>()
    };
    // bf16 weights (the vision tower's: bf16 blocks past the gemv rows) and f32 ones, a few
    // tokens and many, at the exact and the medium precision.
    for dtype in [DType::BF16, DType::F32] {
        let parts = [layer(0.0, dtype), layer(1.0, dtype), layer(2.0, dtype)];
        let stacked = BiasedLinear::stack(&[&parts[0], &parts[1], &parts[2]])
            .unwrap()
            .unwrap();
        for t in [3, 37] {
            let x: Vec<f32> = (0..t * k).map(|i| (i as f32 * 0.013).cos()).collect();
            let x = Tensor::from_vec(x, (1, t, k), &dev).unwrap();
            for precision in [MatmulPrecision::Highest, MatmulPrecision::Medium] {
                matmul_precision::scoped(precision, || {
                    let whole = stacked.forward_gelu(&x).unwrap();
                    for (i, part) in parts.iter().enumerate() {
                        let alone = part.forward_gelu(&x).unwrap();
                        let slice = whole.narrow(2, i * c, c).unwrap().contiguous().unwrap();
                        assert_eq!(bits(&slice), bits(&alone), "{dtype:?} t={t} {precision} part {i}");
                    }
                    // Mutation twin: the parts are not interchangeable.
                    assert_ne!(
                        bits(&parts[0].forward(&x).unwrap()),
                        bits(&parts[1].forward(&x).unwrap())
                    );
                });
            }
        }
    }
    // Weights in two dtypes do not stack.
    let mixed = [layer(0.0, DType::BF16), layer(1.0, DType::F32)];
    assert!(BiasedLinear::stack(&[&mixed[0], &mixed[1]]).unwrap().is_none());
}
