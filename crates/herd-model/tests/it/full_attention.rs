//! The vision encoder's attention kernel (every query over every key of its sequence, heads
//! merged into [B, L, H·Dh]) on every path this CPU has, against the definition in f64.

use herd_model::kernels::full_attention::full_attention_on;
use herd_model::kernels::isa::Isa;

use super::weights::{max_abs, max_diff, values};

/// softmax(q kᵀ · scale) v per (sequence, head), in f64: q, k, v [B, H, L, Dh] → [B, L, H·Dh].
#[allow(clippy::too_many_arguments)]
fn reference(
    q: &[f32],
    k: &[f32],
    v: &[f32],
    b: usize,
    h: usize,
    l: usize,
    dh: usize,
    scale: f32,
) -> Vec<f32> {
    let mut out = vec![0f32; b * h * l * dh];
    for bi in 0..b {
        for hi in 0..h {
            let at = |x: &[f32], j: usize, d: usize| f64::from(x[((bi * h + hi) * l + j) * dh + d]);
            for i in 0..l {
                let s: Vec<f64> = (0..l)
                    .map(|j| (0..dh).map(|d| at(q, i, d) * at(k, j, d)).sum::<f64>() * f64::from(scale))
                    .collect();
                let max = s.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                let e: Vec<f64> = s.iter().map(|x| (x - max).exp()).collect();
                let sum: f64 = e.iter().sum();
                for d in 0..dh {
                    let o: f64 = (0..l).map(|j| e[j] / sum * at(v, j, d)).sum();
                    out[((bi * l + i) * h + hi) * dh + d] = o as f32;
                }
            }
        }
    }
    out
}

#[test]
fn full_attention_matches_definition_on_every_path() {
    // (sequences, heads, length, head dim): Scout's vision head (88: five vectors and a half),
    // whole vectors, sizes under one vector and over four, lengths off every block size.
    for &(b, h, l, dh) in &[
        (1, 1, 1, 1),
        (2, 3, 5, 88),
        (1, 4, 37, 88),
        (1, 2, 70, 16),
        (2, 2, 33, 128),
        (1, 1, 17, 130),
        (1, 2, 65, 64),
        (1, 1, 6, 7),
    ] {
        let n = b * h * l * dh;
        let (q, k, v) = (values(n, 1 + l as u64), values(n, 2 + dh as u64), values(n, 3));
        let q: Vec<f32> = q.iter().map(|x| x * 4.0).collect();
        let scale = 1.0 / (dh as f32).sqrt();
        let slow = reference(&q, &k, &v, b, h, l, dh, scale);
        for isa in Isa::supported() {
            let case = format!("{isa} {b}×{h}×{l}×{dh}");
            let fast = full_attention_on(isa, &q, &k, &v, b, h, l, dh, scale);
            let d = max_diff(&fast, &slow);
            assert!(d <= 1e-5 * max_abs(&slow).max(1.0), "{case}: {d}");
            // Mutation twin: the last key of (sequence 0, head 0), made to match the first
            // query, moves that query's output (no causal mask), and nothing of any other head.
            if l > 1 {
                let mut k2 = k.clone();
                for d in 0..dh {
                    k2[(l - 1) * dh + d] = q[d];
                }
                let moved = full_attention_on(isa, &q, &k2, &v, b, h, l, dh, scale);
                assert!(
                    max_diff(&moved[..dh], &fast[..dh]) > 1e-4,
                    "{case}: the first query missed the last key"
                );
                for i in 0..b * l {
                    for hi in 1..h {
                        let o = (i * h + hi) * dh;
                        assert_eq!(
                            moved[o..o + dh],
                            fast[o..o + dh],
                            "{case}: a key leaked into head {hi}"
                        );
                    }
                }
            }
        }
    }
}

#[test]
fn full_attention_of_nothing_is_nothing() {
    for isa in Isa::supported() {
        assert!(full_attention_on(isa, &[], &[], &[], 0, 16, 577, 88, 1.0).is_empty());
        assert!(full_attention_on(isa, &[], &[], &[], 1, 2, 0, 88, 1.0).is_empty());
    }
}

#[test]
#[should_panic(expected = "q, k, v must be [B, H, L, Dh]")]
fn full_attention_rejects_a_short_key_buffer() {
    let q = values(2 * 5 * 8, 1);
    full_attention_on(Isa::Portable, &q, &q[1..], &q, 1, 2, 5, 8, 1.0);
}

#[test]
fn rotary_attention_on_token_major_heads_is_rope_then_the_head_major_kernel() {
    use candle_core::{Device, Tensor};
    use herd_model::kernels::full_attention::rotary_full_attention_on;
    // (sequences, heads, length, head dim): Scout's vision head, and small odd shapes.
    for &(b, h, l, dh) in &[(1, 2, 37, 88), (2, 3, 5, 8), (1, 1, 1, 2), (1, 4, 20, 16)] {
        let n = b * h * l * dh;
        let (q, k, v) = (values(n, 7 + l as u64), values(n, 8), values(n, 9 + dh as u64));
        let angles: Vec<f32> = (0..l * dh / 2).map(|i| (i as f32 * 0.37).sin() * 3.0).collect();
        let cos: Vec<f32> = angles.iter().map(|a| a.cos()).collect();
        let sin: Vec<f32> = angles.iter().map(|a| a.sin()).collect();
        let scale = 1.0 / (dh as f32).sqrt();
        // The slow twin: candle's rope_i on [B, H, L, Dh] heads, then the head-major kernel.
        let dev = Device::Cpu;
        let (ct, st) = (
            Tensor::from_vec(cos.clone(), (l, dh / 2), &dev).unwrap(),
            Tensor::from_vec(sin.clone(), (l, dh / 2), &dev).unwrap(),
        );
        let heads = |x: &[f32]| {
            Tensor::from_vec(x.to_vec(), (b, l, h, dh), &dev)
                .unwrap()
                .transpose(1, 2)
                .unwrap()
                .contiguous()
                .unwrap()
        };
        let flat = |t: Tensor| t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let qh = flat(candle_nn::rotary_emb::rope_i(&heads(&q), &ct, &st).unwrap());
        let kh = flat(candle_nn::rotary_emb::rope_i(&heads(&k), &ct, &st).unwrap());
        let vh = flat(heads(&v));
        for isa in Isa::supported() {
            let slow = full_attention_on(isa, &qh, &kh, &vh, b, h, l, dh, scale);
            let fast = rotary_full_attention_on(isa, &q, &k, &v, h * dh, &cos, &sin, b, h, l, dh, scale);
            let bits = |x: &[f32]| x.iter().map(|v| v.to_bits()).collect::<Vec<_>>();
            assert_eq!(bits(&fast), bits(&slow), "{isa} {b}×{h}×{l}×{dh}");
            // The same from one stacked product: each token's q, k and v side by side.
            let c = h * dh;
            let stacked: Vec<f32> = (0..b * l)
                .flat_map(|i| [&q, &k, &v].map(|x| x[i * c..(i + 1) * c].to_vec()).concat())
                .collect();
            let from_stack = rotary_full_attention_on(
                isa,
                &stacked,
                &stacked[c..],
                &stacked[2 * c..],
                3 * c,
                &cos,
                &sin,
                b,
                h,
                l,
                dh,
                scale,
            );
            assert_eq!(bits(&from_stack), bits(&slow), "{isa} stacked {b}×{h}×{l}×{dh}");
            // Mutation twin: without the rotation the outputs move (where there are two keys).
            if l > 1 {
                let (ones, zeros) = (vec![1.0; cos.len()], vec![0.0; sin.len()]);
                let plain =
                    rotary_full_attention_on(isa, &q, &k, &v, h * dh, &ones, &zeros, b, h, l, dh, scale);
                assert!(
                    max_diff(&plain, &fast) > 1e-4,
                    "{isa}: the rotation changed nothing"
                );
            }
        }
    }
}
