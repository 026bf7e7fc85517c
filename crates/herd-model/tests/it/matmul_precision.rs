//! `--matmul-precision`: activations rounded before products with narrow-float weights, and
//! nowhere else.

use candle_core::{DType, Device, Tensor};
use half::bf16;
use herd_model::kernels::amx::planes_needed;
use herd_model::nn::matmul_precision::{self, MatmulPrecision};
use herd_model::nn::Linear;
use herd_model::{LogitsFor, TextModel};
use herd_testkit::{fixture_path, Reference};

use crate::full_logits;

/// Values with every kind of edge a rounding can get wrong: ties in both directions, values
/// one bit off a tie, subnormals, signed zeros, infinities, NaN, the largest finite values.
fn edge_values() -> Vec<f32> {
    let mut v = vec![
        0.0,
        -0.0,
        1.0,
        -1.0,
        f32::INFINITY,
        f32::NEG_INFINITY,
        f32::NAN,
        f32::MIN_POSITIVE,
        f32::MIN_POSITIVE / 3.0,
        -f32::MIN_POSITIVE / 7.0,
        1e-40,
        3.4e38,
        -3.3e38,
    ];
    for base in [0x3f80_0000u32, 0x3f81_0000, 0xbf82_0000, 0x0001_0000, 0x4b00_0000] {
        for low in [0x8000u32, 0x7fff, 0x8001, 0xffff, 0x0001, 0x4000] {
            v.push(f32::from_bits(base | low));
        }
    }
    // A spread of ordinary activations.
    let mut state = 0x1234_5678u32;
    for _ in 0..4000 {
        state ^= state << 13;
        state ^= state >> 17;
        state ^= state << 5;
        let e = (state >> 24) as i32 % 40 - 20;
        v.push(((state & 0xffff) as f32 / 65536.0 - 0.5) * 2f32.powi(e));
    }
    v
}

/// The largest magnitude in a tensor.
fn max_abs(t: &Tensor) -> f32 {
    t.abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap()
}

#[test]
fn medium_rounds_to_the_nearest_bf16_as_the_half_crate_does() {
    let mut x = edge_values();
    let expected: Vec<f32> = x.iter().map(|v| bf16::from_f32(*v).to_f32()).collect();
    MatmulPrecision::Medium.round(&mut x);
    for (i, (a, b)) in x.iter().zip(&expected).enumerate() {
        assert!(
            a.to_bits() == b.to_bits() || (a.is_nan() && b.is_nan()),
            "value {i}: {a:e} ({:#x}) vs {b:e} ({:#x})",
            a.to_bits(),
            b.to_bits()
        );
    }
    // The bound the docs state: half a bf16 unit, 2⁻⁸ of the value.
    let original = edge_values();
    for (a, o) in x.iter().zip(&original) {
        if o.is_finite() && o.abs() >= f32::MIN_POSITIVE && o.abs() < 3e38 {
            assert!((a - o).abs() <= o.abs() * 2f32.powi(-8), "{o:e} → {a:e}");
        }
    }
}

#[test]
fn high_keeps_sixteen_bits_in_two_bf16_planes() {
    let original = edge_values();
    let mut x = original.clone();
    MatmulPrecision::High.round(&mut x);
    for (a, o) in x.iter().zip(&original) {
        if !o.is_finite() {
            assert!(a.to_bits() == o.to_bits() || (a.is_nan() && o.is_nan()));
            continue;
        }
        assert!(planes_needed(&[*a]) <= 2, "{o:e} → {a:e} needs three planes");
        if o.abs() < 1e38 && o.abs() >= f32::MIN_POSITIVE {
            assert!((a - o).abs() <= o.abs() * 2f32.powi(-16), "{o:e} → {a:e}");
        }
    }
    // Values two planes hold already are kept as they are.
    let mut again = x.clone();
    MatmulPrecision::High.round(&mut again);
    for (a, b) in again.iter().zip(&x) {
        assert!(a.to_bits() == b.to_bits() || (a.is_nan() && b.is_nan()));
    }
    // And High is finer than Medium on ordinary values.
    let mut medium = original.clone();
    MatmulPrecision::Medium.round(&mut medium);
    let err = |r: &[f32]| -> f64 {
        r.iter()
            .zip(&original)
            .filter(|(_, o)| o.is_finite() && o.abs() < 1e38)
            .map(|(a, o)| f64::from((a - o).abs()))
            .sum()
    };
    assert!(err(&x) * 100.0 < err(&medium));
}

#[test]
fn highest_leaves_activations_alone() {
    let original = edge_values();
    let mut x = original.clone();
    MatmulPrecision::Highest.round(&mut x);
    assert!(x.iter().zip(&original).all(|(a, b)| a.to_bits() == b.to_bits()));
}

#[test]
fn the_scope_is_restored_after_the_call_and_after_a_panic() {
    assert_eq!(matmul_precision::current(), MatmulPrecision::Highest);
    let inner = matmul_precision::scoped(MatmulPrecision::Medium, || {
        matmul_precision::scoped(MatmulPrecision::High, matmul_precision::current)
    });
    assert_eq!(inner, MatmulPrecision::High);
    assert_eq!(matmul_precision::current(), MatmulPrecision::Highest);
    let caught = std::panic::catch_unwind(|| {
        matmul_precision::scoped(MatmulPrecision::Medium, || panic!("inside"));
    });
    assert!(caught.is_err());
    assert_eq!(matmul_precision::current(), MatmulPrecision::Highest);
    // Another thread never sees this thread's level.
    matmul_precision::scoped(MatmulPrecision::Medium, || {
        let other = std::thread::spawn(matmul_precision::current).join().unwrap();
        assert_eq!(other, MatmulPrecision::Highest);
    });
}

fn activations(t: usize, k: usize, seed: u32) -> Vec<f32> {
    let mut state = seed.wrapping_mul(2_654_435_761).max(1);
    (0..t * k)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 17;
            state ^= state << 5;
            (state % 20_001) as f32 / 10_000.0 - 1.0
        })
        .collect()
}

/// A product under a level equals the same product at `highest` on activations rounded first,
/// bit for bit, for bf16, f16 and fp8-free dense weights, decode and prefill shapes, K that the
/// block kernels take and K they do not; f32 weights ignore the level.
#[test]
fn a_level_rounds_the_inputs_of_narrow_weights_only() {
    let device = Device::Cpu;
    for (t, k, n) in [(1, 64, 40), (3, 96, 33), (37, 128, 70), (64, 100, 17)] {
        let x = activations(t, k, (t * k + n) as u32);
        let w32 = Tensor::from_vec(activations(n, k, 7 + n as u32), (n, k), &device).unwrap();
        let x_t = Tensor::from_vec(x.clone(), (t, k), &device).unwrap();
        for dtype in [DType::BF16, DType::F16, DType::F32] {
            let linear = Linear::from_weight(w32.to_dtype(dtype).unwrap());
            let highest = linear.forward(&x_t).unwrap();
            for level in [MatmulPrecision::High, MatmulPrecision::Medium] {
                let got = matmul_precision::scoped(level, || linear.forward(&x_t).unwrap());
                let mut rounded = x.clone();
                if dtype != DType::F32 {
                    level.round(&mut rounded);
                }
                let rounded_t = Tensor::from_vec(rounded, (t, k), &device).unwrap();
                let expected = linear.forward(&rounded_t).unwrap();
                let (g, e) = (
                    got.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
                    expected.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
                );
                assert!(
                    g.iter().zip(&e).all(|(a, b)| a.to_bits() == b.to_bits()),
                    "{dtype:?} {level} t={t} k={k} n={n}"
                );
                // The rounding is visible where the weights are narrow (the twin that fails
                // if the level were ignored), and absent for f32 weights.
                let moved = max_abs(&highest.sub(&got).unwrap());
                if dtype == DType::F32 {
                    assert_eq!(moved, 0.0, "f32 weights at {level}");
                } else {
                    assert!(moved > 0.0, "{dtype:?} at {level} t={t}: nothing was rounded");
                    // Bounded by the rounding: Σ|w|·|x|·2⁻⁸ at most.
                    assert!(moved < 0.05 * k as f32 / 64.0, "{dtype:?} {level}: {moved}");
                }
            }
        }
    }
}

/// scout-tiny stored in bf16: at `medium` the model's logits move off the `highest` ones by
/// bf16 rounding (not zero: the level reaches the products inside a forward pass), stay close
/// to them, and a prompt fed whole or token by token computes the same up to rounding edges
/// (both round the same activations).
#[test]
fn a_bf16_model_at_medium_rounds_inside_its_forward_pass_only() {
    let reference = Reference::load("scout-tiny");
    let ids = reference.prompt(0).ids;
    let src = fixture_path("scout-tiny");
    let tensors = candle_core::safetensors::load(src.join("model.safetensors"), &Device::Cpu).unwrap();
    let dir = std::env::temp_dir().join(format!("herd-test-matmul-precision-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir); // a leftover of a run with this pid
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::copy(src.join("config.json"), dir.join("config.json")).unwrap();
    let bf16: std::collections::HashMap<String, Tensor> = tensors
        .iter()
        .map(|(k, t)| (k.clone(), t.to_dtype(DType::BF16).unwrap()))
        .collect();
    candle_core::safetensors::save(&bf16, dir.join("model.safetensors")).unwrap();

    let mut model = TextModel::load(&dir, DType::F32, &Device::Cpu).unwrap();
    let highest = full_logits(&model, &ids);
    model.set_matmul_precision(MatmulPrecision::Medium);
    assert_eq!(model.matmul_precision(), MatmulPrecision::Medium);
    let medium = full_logits(&model, &ids);
    let moved = max_abs(&highest.sub(&medium).unwrap());
    let scale = max_abs(&highest);
    println!("medium vs highest: max |Δlogit| {moved:.3e} of {scale:.3e}");
    assert!(moved > 0.0, "the level did not reach the forward pass");
    assert!(moved < 0.05 * scale, "medium moved logits by {moved} of {scale}");
    // The thread is back at `highest` once the pass returns.
    assert_eq!(matmul_precision::current(), MatmulPrecision::Highest);

    let mut cache = model.new_cache();
    let mut stepped = Vec::new();
    for id in &ids {
        stepped.push(model.forward(&[*id], &mut cache, LogitsFor::Last).unwrap());
    }
    let stepped = Tensor::cat(&stepped, 0).unwrap();
    // Decode and prefill reach each product by other kernels, so an activation may differ in
    // its last f32 bit; where that bit straddles a bf16 rounding edge, one value rounds a bf16
    // step (2⁻⁸ relative) apart. Such a flip in the last layer's keys moves the rest of its
    // attention chunk: on AVX-512 and AVX2, positions 12–15 by up to 6.7e-3, every other within
    // 5e-7. So most positions agree to f32 summation order, and every position is far closer
    // to the prefill at `medium` than to `highest` (a decode step that ignored the level would
    // sit as far from the one as from the other).
    let mut agreeing = 0;
    for row in 0..ids.len() {
        let at = |t: &Tensor| t.get(row).unwrap();
        let apart = max_abs(&at(&stepped).sub(&at(&medium)).unwrap());
        let level = max_abs(&at(&highest).sub(&at(&medium)).unwrap());
        println!("position {row}: decode vs prefill {apart:.2e}, medium vs highest {level:.2e}");
        assert!(
            apart < 0.5 * level,
            "position {row}: decode {apart} off prefill at medium, which is {level} off highest"
        );
        agreeing += usize::from(apart <= 1e-5);
    }
    assert!(
        agreeing * 4 >= ids.len() * 3,
        "medium: decode and prefill agree to 1e-5 at only {agreeing} of {} positions",
        ids.len()
    );
    std::fs::remove_dir_all(&dir).ok();
}

/// The vision tower takes its own level: vision-tiny stored in bf16 at `medium` encodes a tile
/// off the `highest` features by bf16 rounding (not zero), and close to them.
#[test]
fn a_bf16_vision_tower_at_medium_rounds_inside_its_forward_pass() {
    let src = fixture_path("vision-tiny");
    let dir = std::env::temp_dir().join(format!(
        "herd-test-matmul-precision-vision-{}",
        std::process::id()
    ));
    let _ = std::fs::remove_dir_all(&dir); // a leftover of a run with this pid
    std::fs::create_dir_all(&dir).unwrap();
    for entry in std::fs::read_dir(&src).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap();
        if path.extension().is_some_and(|e| e == "safetensors") {
            let tensors = candle_core::safetensors::load(&path, &Device::Cpu).unwrap();
            let bf16: std::collections::HashMap<String, Tensor> = tensors
                .iter()
                .map(|(k, t)| {
                    let t = if t.dtype() == DType::F32 {
                        t.to_dtype(DType::BF16).unwrap()
                    } else {
                        t.clone()
                    };
                    (k.clone(), t)
                })
                .collect();
            candle_core::safetensors::save(&bf16, dir.join(name)).unwrap();
        } else if path.is_file() {
            std::fs::copy(&path, dir.join(name)).unwrap();
        }
    }
    let text = TextModel::load(&dir, DType::F32, &Device::Cpu).unwrap();
    let hidden = text.config().hidden_size;
    let mut vision = herd_model::vision::VisionModel::load_dir(&dir, hidden, DType::F32, &Device::Cpu)
        .unwrap()
        .unwrap();
    let pixels = Reference::load("vision-tiny").tensor("img.0.pixel_values");
    let highest = vision.forward(&pixels).unwrap();
    vision.set_matmul_precision(MatmulPrecision::Medium);
    let medium = vision.forward(&pixels).unwrap();
    let moved = max_abs(&highest.sub(&medium).unwrap());
    let scale = max_abs(&highest);
    println!("vision medium vs highest: max |Δ| {moved:.3e} of {scale:.3e}");
    assert!(moved > 0.0, "the level did not reach the tower's products");
    assert!(
        moved < 0.05 * scale,
        "medium moved features by {moved} of {scale}"
    );
    assert_eq!(matmul_precision::current(), MatmulPrecision::Highest);
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn rounded_products_are_the_products_of_the_rounded_activations_on_every_isa() {
    use herd_model::kernels::half_matmul::{matmul_t_on, matmul_t_rounded_on};
    use herd_model::kernels::isa::Isa;
    // The edge values (NaN aside, which poisons whole outputs) scaled into a product's range,
    // as activations: ties, subnormals, infinities and signed zeros among ordinary values.
    let edges: Vec<f32> = edge_values().into_iter().filter(|v| !v.is_nan()).collect();
    let finite: Vec<f32> = edges
        .iter()
        .map(|v| if v.is_finite() { v.clamp(-1e6, 1e6) } else { 1.0 })
        .collect();
    // Token counts on both sides of the gemv rows, K whole blocks or not (the packer's path and
    // the copy's), weight rows around the 32-row groups.
    for &(t, n, k) in &[(3, 5, 64), (9, 33, 64), (40, 70, 96), (37, 31, 40), (5, 17, 1024)] {
        let x: Vec<f32> = (0..t * k).map(|i| finite[(i * 7 + t) % finite.len()]).collect();
        let rounded: Vec<f32> = x.iter().map(|v| bf16::from_f32(*v).to_f32()).collect();
        let w32: Vec<f32> = (0..n * k)
            .map(|i| finite[(i * 13 + 5) % finite.len()] * 1e-3)
            .collect();
        let wb: Vec<bf16> = w32.iter().map(|&v| bf16::from_f32(v)).collect();
        for isa in Isa::supported() {
            let fast = matmul_t_rounded_on(isa, &x, t, &wb, n, k);
            let slow = matmul_t_on(isa, &rounded, t, &wb, n, k);
            let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
            assert_eq!(bits(&fast), bits(&slow), "{isa} bf16 weights {t}x{n}x{k}");
            let fast = matmul_t_rounded_on(isa, &x, t, &w32, n, k);
            let slow = matmul_t_on(isa, &rounded, t, &w32, n, k);
            assert_eq!(bits(&fast), bits(&slow), "{isa} f32 weights {t}x{n}x{k}");
            // Mutation twin: the unrounded activations give another product.
            let unrounded = matmul_t_on(isa, &x, t, &wb, n, k);
            assert_ne!(
                bits(&unrounded),
                bits(&matmul_t_rounded_on(isa, &x, t, &wb, n, k)),
                "{isa}"
            );
        }
    }
}
