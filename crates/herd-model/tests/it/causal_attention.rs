//! The prefill attention kernel (each query of a run over its own causal prefix of the keys)
//! against the decode kernel's slow twin run once per query on that prefix.

use half::{bf16, f16};
use herd_model::kernels::causal_attention::causal_attention_on;
use herd_model::kernels::decode_attention::CacheView;
use herd_model::kernels::half_matmul::HalfElement;
use herd_model::kernels::isa::Isa;

use super::kv_dtype::reference;
use super::weights::{max_abs, max_diff, values};

fn view<E>(data: &[E], first: usize, hkv: usize, cap: usize, len: usize, dh: usize) -> CacheView<'_, E> {
    CacheView {
        data: &data[first * dh..],
        n_kv_heads: hkv,
        head_stride: cap * dh,
        len,
        head_dim: dh,
    }
}

fn check<E: HalfElement>(narrow: fn(f32) -> E) {
    // (KV heads, G, head dim, queries, keys the first query sees): head sizes the register
    // kernel takes and one it does not, G = 5 as Scout's, runs that start at the first key and
    // ones that start deep in a cache.
    for &(hkv, g, dh, t, first_len) in &[
        (1, 1, 64, 2, 1),
        (2, 5, 128, 9, 1),
        (8, 2, 128, 40, 25),
        (2, 3, 72, 11, 4),
        (1, 4, 16, 70, 3),
        (2, 5, 64, 13, 70),
    ] {
        let len = first_len + t - 1;
        // Heads a capacity apart and views starting past slot 0, as a cache hands them out.
        let (cap, first) = (len + 7, 3);
        let buffer = |seed| -> Vec<E> {
            values(hkv * cap * dh, seed)
                .iter()
                .map(|&x| narrow(x * 3.0))
                .collect()
        };
        let (kb, vb) = (buffer(11 + t as u64), buffer(12 + t as u64));
        let h_dh = hkv * g * dh;
        let q = values(t * h_dh, 13);
        let scale = 1.0 / (dh as f32).sqrt();
        let slow: Vec<f32> = (0..t)
            .flat_map(|i| {
                let seen = first_len + i;
                reference(
                    &q[i * h_dh..(i + 1) * h_dh],
                    &view(&kb, first, hkv, cap, seen, dh),
                    &view(&vb, first, hkv, cap, seen, dh),
                    scale,
                )
            })
            .collect();
        let (k, v) = (
            view(&kb, first, hkv, cap, len, dh),
            view(&vb, first, hkv, cap, len, dh),
        );
        for isa in Isa::supported() {
            let fast = causal_attention_on(isa, &q, t, &k, &v, first_len, scale);
            let d = max_diff(&fast, &slow);
            let case = format!("{isa} {hkv}×{g}×{dh}, {t} queries from {first_len} keys");
            assert!(d <= 1e-5 * max_abs(&slow).max(1.0), "{case}: {d}");
            // Mutation twin: the key just past the first query's prefix changes every later
            // query of KV head 0 and nothing of the first query (a mask off by one would
            // show either way).
            let mut kb2 = kb.clone();
            let at = (first + first_len) * dh;
            kb2[at] = narrow(kb[at].to_f32_scalar() + 4.0);
            let k2 = view(&kb2, first, hkv, cap, len, dh);
            let moved = causal_attention_on(isa, &q, t, &k2, &v, first_len, scale);
            assert_eq!(
                moved[..h_dh],
                fast[..h_dh],
                "{case}: the first query saw a later key"
            );
            assert!(
                max_diff(&moved[h_dh..h_dh + g * dh], &fast[h_dh..h_dh + g * dh]) > 1e-6,
                "{case}: the second query missed its last key"
            );
        }
    }
}

#[test]
fn causal_kernel_agrees_with_the_decode_twin_per_query() {
    check::<f32>(|x| x);
    check::<bf16>(bf16::from_f32);
    check::<f16>(f16::from_f32);
}

#[test]
#[should_panic(expected = "queries see past the keys")]
fn causal_kernel_refuses_queries_past_its_keys() {
    let (kb, vb) = (vec![0f32; 4 * 64], vec![0f32; 4 * 64]);
    let (k, v) = (view(&kb, 0, 1, 4, 4, 64), view(&vb, 0, 1, 4, 4, 64));
    // Three queries from three keys: the last would see five of the four.
    causal_attention_on(Isa::Portable, &vec![0f32; 3 * 64], 3, &k, &v, 3, 1.0);
}
