//! KV caches stored in f16/bf16 (`--kv-dtype`): the decode kernel that reads them in place
//! against its slow twin, and a model decoding through a narrow cache.

use candle_core::{DType, Device};
use half::{bf16, f16};
use herd_model::kernels::decode_attention::{decode_attention, CacheView};
use herd_model::kernels::half_matmul::HalfElement;
use herd_model::{LogitsFor, TextModel};
use herd_testkit::{fixture_path, Reference};

use super::weights::{max_abs, max_diff, values};

/// The slow twin: the cache widened to f32, one softmax(q·Kᵀ·scale)·V per query head.
pub(crate) fn reference<E: HalfElement>(
    q: &[f32],
    k: &CacheView<'_, E>,
    v: &CacheView<'_, E>,
    scale: f32,
) -> Vec<f32> {
    let (hkv, dh, len) = (k.n_kv_heads, k.head_dim, k.len);
    let g = q.len() / (hkv * dh);
    let row = |c: &CacheView<'_, E>, h: usize, l: usize| -> Vec<f32> {
        let at = h * c.head_stride + l * dh;
        c.data[at..at + dh].iter().map(|x| x.to_f32_scalar()).collect()
    };
    let mut out = vec![0f32; q.len()];
    for qh in 0..hkv * g {
        let h = qh / g;
        let q_h = &q[qh * dh..(qh + 1) * dh];
        let s: Vec<f32> = (0..len)
            .map(|l| row(k, h, l).iter().zip(q_h).map(|(a, b)| a * b).sum::<f32>() * scale)
            .collect();
        let max = s.iter().fold(f32::NEG_INFINITY, |m, &x| m.max(x));
        let e: Vec<f32> = s.iter().map(|x| (x - max).exp()).collect();
        let sum: f32 = e.iter().sum();
        for (l, p) in e.iter().enumerate() {
            for (o, x) in out[qh * dh..(qh + 1) * dh].iter_mut().zip(row(v, h, l)) {
                *o += p / sum * x;
            }
        }
    }
    out
}

fn check<E: HalfElement>(narrow: fn(f32) -> E) {
    // Heads a capacity apart and a view starting past slot 0, as the cache hands them out.
    for &(hkv, g, dh, len) in &[
        (1, 1, 64, 1),
        (2, 5, 72, 7),
        (8, 2, 128, 300),
        (3, 4, 16, 1000),
        (2, 5, 128, 33),
        (1, 3, 64, 70),
    ] {
        let (cap, first) = (len + 13, 5);
        let buffer = |seed| -> Vec<E> {
            values(hkv * cap * dh, seed)
                .iter()
                .map(|&x| narrow(x * 3.0))
                .collect()
        };
        let (kb, vb) = (buffer(1 + len as u64), buffer(2 + len as u64));
        fn view_of<E>(
            data: &[E],
            first: usize,
            hkv: usize,
            cap: usize,
            len: usize,
            dh: usize,
        ) -> CacheView<'_, E> {
            CacheView {
                data: &data[first * dh..],
                n_kv_heads: hkv,
                head_stride: cap * dh,
                len: len.min(cap - first),
                head_dim: dh,
            }
        }
        let view = |data| view_of(data, first, hkv, cap, len, dh);
        let q = values(hkv * g * dh, 3);
        let scale = 1.0 / (dh as f32).sqrt();
        let fast = decode_attention(&q, &view(&kb), &view(&vb), scale);
        let slow = reference(&q, &view(&kb), &view(&vb), scale);
        let d = max_diff(&fast, &slow);
        assert!(d <= 1e-5 * max_abs(&slow).max(1.0), "{hkv}×{g}×{dh}×{len}: {d}");
        // The narrow rows are widened as they are read into the multiply-adds an f32 cache of
        // the same values takes, in the same order: the same outputs bit for bit.
        let wide = |b: &[E]| -> Vec<f32> { b.iter().map(|x| x.to_f32_scalar()).collect() };
        let (kw, vw) = (wide(&kb), wide(&vb));
        let widened = decode_attention(
            &q,
            &view_of(&kw[..], first, hkv, cap, len, dh),
            &view_of(&vw[..], first, hkv, cap, len, dh),
            scale,
        );
        assert_eq!(fast, widened, "{hkv}×{g}×{dh}×{len}");
        // Mutation twin: one value of the last visible V row of KV head 0 moves only the
        // outputs of head 0's queries.
        let mut vb2 = vb.clone();
        let at = (first + view(&vb).len - 1) * dh + 1;
        vb2[at] = narrow(vb[at].to_f32_scalar() + 2.0);
        let moved = decode_attention(&q, &view(&kb), &view(&vb2), scale);
        assert!(
            max_diff(&moved[..g * dh], &fast[..g * dh]) > 1e-6,
            "{hkv}×{g}×{dh}×{len}"
        );
        assert_eq!(moved[g * dh..], fast[g * dh..]);
    }
}

#[test]
fn decode_kernel_agrees_with_its_slow_twin() {
    check::<bf16>(bf16::from_f32);
    check::<f16>(f16::from_f32);
    // An f32 cache is read in place rather than through the widening buffer.
    check::<f32>(|x| x);
}

#[test]
fn a_narrow_cache_halves_memory_and_decodes_close_to_the_f32_one() {
    let reference = Reference::load("scout-tiny");
    let ids = reference.prompt(0).ids;
    let mut model = TextModel::load(&fixture_path("scout-tiny"), DType::F32, &Device::Cpu).unwrap();
    let run = |model: &TextModel| {
        let mut cache = model.new_cache();
        let mut rows = vec![model.forward(&ids, &mut cache, LogitsFor::Last).unwrap()];
        // Decode steps read the narrow cache in place (one query each).
        for &id in ids.iter().take(6) {
            rows.push(model.forward(&[id], &mut cache, LogitsFor::Last).unwrap());
        }
        let logits: Vec<f32> = rows
            .iter()
            .flat_map(|r| r.flatten_all().unwrap().to_vec1::<f32>().unwrap())
            .collect();
        (logits, cache.bytes())
    };
    let (wide, wide_bytes) = run(&model);
    for dtype in [DType::F16, DType::BF16] {
        model.set_kv_dtype(Some(dtype));
        let (narrow, bytes) = run(&model);
        assert_eq!(bytes * 2, wide_bytes, "{dtype:?}");
        // The rounding of K and V (2⁻¹¹ for f16, 2⁻⁸ for bf16) moves the logits a little, not
        // a lot; an ignored cache or a misread row would move them by their own size.
        let rel = max_diff(&narrow, &wide) / max_abs(&wide);
        let bound = if dtype == DType::F16 { 2e-3 } else { 2e-2 };
        assert!(rel < bound, "{dtype:?}: relative {rel}");
        assert!(rel > 0.0, "{dtype:?}: the cache was not narrowed");
    }
}

#[test]
fn kv_bytes_read_counts_what_each_layer_kind_sees() {
    let mut model = TextModel::load(&fixture_path("scout-tiny"), DType::F32, &Device::Cpu).unwrap();
    let config = model.config().clone();
    let row = 2 * config.n_kv_heads * config.head_dim * 4;
    let chunked: Vec<usize> = config
        .layers
        .iter()
        .filter_map(|l| l.attention.chunk_len())
        .collect();
    let global = config.layers.len() - chunked.len();
    assert!(!chunked.is_empty() && global > 0, "the fixture has both kinds");
    assert_eq!(model.kv_bytes_read(0), config.layers.len() * row);
    // Past the first block: global layers see every position, chunked ones only their block.
    let c = chunked[0];
    let p = c + 3;
    assert_eq!(
        model.kv_bytes_read(p),
        global * (p + 1) * row + chunked.len() * 4 * row
    );
    model.set_kv_dtype(Some(DType::BF16));
    assert_eq!(
        model.kv_bytes_read(p) * 2,
        global * (p + 1) * row + chunked.len() * 4 * row
    );
}

/// The largest relative error of `f` against libm's e^x over every shifted score a softmax
/// meets: [-87.3, 0], densely.
fn worst_exp_error(f: impl Fn(f32) -> f32) -> f32 {
    (0..=2_000_000)
        .map(|i| -87.3 * i as f32 / 2_000_000.0)
        .map(|x| (f(x) - x.exp()).abs() / x.exp())
        .fold(0f32, f32::max)
}

#[test]
fn softmax_exp_is_within_a_few_ulps_of_libm() {
    use herd_model::kernels::decode_attention::exp;
    let worst = worst_exp_error(exp);
    assert!(worst <= 3e-7, "relative error {worst}");
    assert_eq!(exp(0.0), 1.0);
    assert_eq!(exp(f32::NEG_INFINITY), 0.0);
    assert_eq!(exp(-200.0), 0.0);
    assert!(exp(f32::NAN).is_nan());
    assert!((exp(1.0) - std::f32::consts::E).abs() <= 3e-7 * std::f32::consts::E);
    // Mutation twin: an exp off by one part in a million (a coefficient's worth) is caught.
    assert!(worst_exp_error(|x| exp(x) * (1.0 + 1e-6)) > 3e-7);
}

/// Scores a softmax meets: the shifted range, the clamps' edges, specials.
fn exp_inputs() -> Vec<f32> {
    let mut x: Vec<f32> = (0..=200_000).map(|i| -90.0 * i as f32 / 200_000.0).collect();
    x.extend((0..2000).map(|i| i as f32 * 0.05));
    x.extend([
        -87.3,
        -87.299_99,
        -87.300_01,
        88.3,
        88.300_01,
        100.0,
        -0.0,
        f32::NEG_INFINITY,
        f32::INFINITY,
        f32::NAN,
        -f32::NAN,
        f32::MIN_POSITIVE,
        -1e-30,
    ]);
    // A length that leaves a tail past the 16-lane chunks.
    x.extend([-1.5, -2.5, -3.5]);
    x
}

#[test]
fn the_vector_exp_is_the_scalar_exp_bit_for_bit_on_every_isa() {
    use herd_model::kernels::decode_attention::{exp, exp_in_place_on};
    use herd_model::kernels::isa::Isa;
    let x = exp_inputs();
    let expected: Vec<f32> = x.iter().map(|&v| exp(v)).collect();
    for isa in Isa::supported() {
        let mut got = x.clone();
        exp_in_place_on(isa, &mut got);
        for (i, (g, e)) in got.iter().zip(&expected).enumerate() {
            assert!(
                g.to_bits() == e.to_bits() || (g.is_nan() && e.is_nan()),
                "{isa}: exp({:e}) = {g:e}, scalar {e:e}",
                x[i]
            );
        }
    }
}

#[test]
fn the_vector_softmax_is_the_plain_softmax_bit_for_bit_on_every_isa() {
    use herd_model::kernels::decode_attention::softmax_on;
    use herd_model::kernels::isa::Isa;
    let mut state = 0x9e37_79b9u32;
    for len in [1usize, 5, 16, 17, 31, 32, 33, 100, 1000, 8195] {
        let row: Vec<f32> = (0..len)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 17;
                state ^= state << 5;
                (state % 100_000) as f32 / 1000.0 - 60.0
            })
            .collect();
        let mut with_specials = row.clone();
        if len > 3 {
            with_specials[len / 2] = f32::NEG_INFINITY; // a masked score
            with_specials[len - 1] = 1e4; // one score far above the rest
        }
        for row in [row, with_specials] {
            let mut expected = row.clone();
            softmax_on(Isa::Portable, &mut expected);
            let total: f32 = expected.iter().sum();
            assert!((total - 1.0).abs() < 1e-4, "len {len}: sums to {total}");
            for isa in Isa::supported() {
                let mut got = row.clone();
                softmax_on(isa, &mut got);
                assert!(
                    got.iter().zip(&expected).all(|(a, b)| a.to_bits() == b.to_bits()),
                    "{isa}, len {len}"
                );
            }
        }
    }
}
