//! KV caches stored as Q8_0 (`--kv-dtype q8_0`): the block format against ggml's, the widening
//! builds against the slow twin, the decode kernel reading blocks against the same kernel on
//! the widened values, and a model decoding through a Q8_0 cache.

use candle_core::{DType, Device};
use half::f16;
use herd_model::kernels::decode_attention::{decode_attention_on, CacheView, Q8CacheView};
use herd_model::kernels::isa::Isa;
use herd_model::kernels::kv_q8;
use herd_model::kernels::quant_dot::dequantize_row;
use herd_model::weights::QuantTensor;
use herd_model::{KvCache, KvFormat, LogitsFor, QuantType, TextModel};
use herd_testkit::{fixture_path, Reference};

use super::kv_dtype::reference;
use super::weights::{max_abs, max_diff, values};

/// Rows with what a cache meets: random values of several sizes, a zero block, a block with
/// one outlier, and ties at half a level.
fn rows(n: usize, seed: u64) -> Vec<f32> {
    let mut x: Vec<f32> = values(n, seed)
        .iter()
        .enumerate()
        .map(|(i, v)| v * [0.01, 1.0, 7.5, 300.0][i / 32 % 4])
        .collect();
    if n >= 160 {
        x[32..64].fill(0.0);
        x[64..96].fill(0.25);
        x[70] = -40.0;
        for (i, v) in x[128..160].iter_mut().enumerate() {
            // Levels k + ½ of a block whose largest value is 127: ties, to even.
            *v = if i == 0 { 127.0 } else { (i as f32 - 16.0) + 0.5 };
        }
    }
    x
}

#[test]
fn quantize_writes_ggml_block_q8_0_bytes() {
    for n in [32, 64, 4096] {
        let x = rows(n, n as u64);
        let mut ours = vec![0u8; n / 32 * 34];
        kv_q8::quantize(&x, &mut ours);
        // llama.cpp's x86 quantize_row_q8_0, which writes its Q8_0 cache: each block's scale
        // in f16, then levels x · (127 / max|x|) rounded to the nearest, ties to even.
        let mut theirs = Vec::new();
        for xb in x.chunks_exact(32) {
            let amax = xb.iter().fold(0f32, |m, v| m.max(v.abs()));
            let id = if amax == 0.0 { 0.0 } else { 127.0 / amax };
            theirs.extend(f16::from_f32(amax / 127.0).to_le_bytes());
            theirs.extend(xb.iter().map(|v| (v * id).round_ties_even() as i8 as u8));
        }
        assert_eq!(ours, theirs, "{n} values");
        // candle's port of ggml's quantize_row_q8_0_ref (as herd quantizes weights) makes the
        // same blocks but for its ties, away from zero, and x · (1 / d) for x · (127 / max|x|):
        // one level apart at most.
        let reference = QuantTensor::quantize(QuantType::Q8_0, 1, n, &x, "kv").unwrap();
        for (b, (o, r)) in ours
            .chunks_exact(34)
            .zip(reference.bytes().chunks_exact(34))
            .enumerate()
        {
            assert_eq!(o[..2], r[..2], "block {b}'s scale");
            assert!(
                o[2..]
                    .iter()
                    .zip(&r[2..])
                    .all(|(&o, &r)| (o as i8).abs_diff(r as i8) <= 1),
                "block {b}"
            );
        }
    }
    let mut tie = vec![0f32; 32];
    tie[0] = 127.0;
    tie[1] = 2.5;
    tie[2] = -2.5;
    tie[3] = 3.5;
    let mut out = vec![0u8; 34];
    kv_q8::quantize(&tie, &mut out);
    assert_eq!((out[2 + 1] as i8, out[2 + 2] as i8, out[2 + 3] as i8), (2, -2, 4));
}

#[test]
fn dequantize_builds_equal_the_slow_twin_bit_for_bit() {
    let x = rows(4096 + 96, 7);
    let mut bytes = vec![0u8; x.len() / 32 * 34];
    kv_q8::quantize(&x, &mut bytes);
    let slow = dequantize_row(QuantType::Q8_0, &bytes);
    for isa in Isa::supported() {
        let mut fast = vec![f32::NAN; x.len()];
        kv_q8::dequantize_on(isa, &bytes, &mut fast);
        let same = fast.iter().zip(&slow).all(|(a, b)| a.to_bits() == b.to_bits());
        assert!(same, "{isa}");
    }
    // Within half a level of the values, d/2 per block (d = max|x| / 127), plus the f16
    // rounding of d over up to 127 levels (127 · 2⁻¹¹ · d).
    for (xb, yb) in x.chunks(32).zip(slow.chunks(32)) {
        let amax = max_abs(xb);
        assert!(max_diff(xb, yb) <= amax / 127.0 * 0.57, "block of max {amax}");
    }
}

/// Keys and values [Hkv, cap, Dh] as Q8_0 bytes and as their widened values.
fn cache(hkv: usize, cap: usize, dh: usize, seed: u64) -> (Vec<u8>, Vec<f32>) {
    let x: Vec<f32> = values(hkv * cap * dh, seed).iter().map(|v| v * 3.0).collect();
    let mut bytes = vec![0u8; x.len() / 32 * 34];
    kv_q8::quantize(&x, &mut bytes);
    let wide = dequantize_row(QuantType::Q8_0, &bytes);
    (bytes, wide)
}

#[test]
fn decode_kernel_reads_q8_0_blocks_as_their_widened_values() {
    // Heads a capacity apart and a view starting past slot 0, as the cache hands them out.
    for &(hkv, g, dh, len) in &[
        (1, 1, 64, 1),
        (2, 5, 96, 7),
        (8, 2, 128, 300),
        (3, 4, 32, 1000),
        (2, 5, 128, 33),
        (1, 3, 64, 70),
    ] {
        let (cap, first) = (len + 13, 5);
        let rb = kv_q8::row_bytes(dh);
        let ((kq, kw), (vq, vw)) = (
            cache(hkv, cap, dh, len as u64),
            cache(hkv, cap, dh, 99 + len as u64),
        );
        fn q8_view(
            data: &[u8],
            first: usize,
            hkv: usize,
            cap: usize,
            len: usize,
            dh: usize,
        ) -> Q8CacheView<'_> {
            let rb = kv_q8::row_bytes(dh);
            Q8CacheView {
                data: &data[first * rb..],
                n_kv_heads: hkv,
                head_stride: cap * rb,
                len,
                head_dim: dh,
            }
        }
        fn wide_view(
            data: &[f32],
            first: usize,
            hkv: usize,
            cap: usize,
            len: usize,
            dh: usize,
        ) -> CacheView<'_, f32> {
            CacheView {
                data: &data[first * dh..],
                n_kv_heads: hkv,
                head_stride: cap * dh,
                len,
                head_dim: dh,
            }
        }
        let q = values(hkv * g * dh, 3);
        let scale = 1.0 / (dh as f32).sqrt();
        let slow = reference(
            &q,
            &wide_view(&kw, first, hkv, cap, len, dh),
            &wide_view(&vw, first, hkv, cap, len, dh),
            scale,
        );
        let shape = format!("{hkv}×{g}×{dh}×{len}");
        for isa in Isa::supported() {
            let fast = decode_attention_on(
                isa,
                &q,
                &q8_view(&kq, first, hkv, cap, len, dh),
                &q8_view(&vq, first, hkv, cap, len, dh),
                scale,
            );
            // The same kernel over the values where they lie: the blocks are only a storage.
            let widened = decode_attention_on(
                isa,
                &q,
                &wide_view(&kw, first, hkv, cap, len, dh),
                &wide_view(&vw, first, hkv, cap, len, dh),
                scale,
            );
            assert_eq!(fast, widened, "{shape} on {isa}");
            let d = max_diff(&fast, &slow);
            assert!(d <= 1e-5 * max_abs(&slow).max(1.0), "{shape} on {isa}: {d}");
            // Mutation twin: the scale of the last visible V block of KV head 0 doubled moves
            // only the outputs of head 0's queries.
            let mut vq2 = vq.clone();
            let at = (first + len - 1) * rb + rb - 34;
            let d_old = half::f16::from_le_bytes([vq2[at], vq2[at + 1]]);
            vq2[at..at + 2].copy_from_slice(&half::f16::from_f32(d_old.to_f32() * 2.0 + 0.01).to_le_bytes());
            let moved = decode_attention_on(
                isa,
                &q,
                &q8_view(&kq, first, hkv, cap, len, dh),
                &q8_view(&vq2, first, hkv, cap, len, dh),
                scale,
            );
            assert!(
                max_diff(&moved[..g * dh], &fast[..g * dh]) > 1e-6,
                "{shape} on {isa}"
            );
            assert_eq!(moved[g * dh..], fast[g * dh..], "{shape} on {isa}");
        }
    }
}

/// Logits of a prompt prefill then `steps` decode steps, and the cache's bytes after.
fn run(model: &TextModel, ids: &[u32], steps: usize) -> (Vec<f32>, usize) {
    let mut cache = model.new_cache();
    let mut rows = vec![model.forward(ids, &mut cache, LogitsFor::Last).unwrap()];
    for &id in ids.iter().take(steps) {
        rows.push(model.forward(&[id], &mut cache, LogitsFor::Last).unwrap());
    }
    let logits = rows
        .iter()
        .flat_map(|r| r.flatten_all().unwrap().to_vec1::<f32>().unwrap())
        .collect();
    (logits, cache.bytes())
}

/// fp8-tiny (head size 32, chunked layers of 16 positions): long enough to cross a block.
fn fp8_tiny_and_ids() -> (TextModel, Vec<u32>) {
    let reference = Reference::load("fp8-tiny");
    let ids: Vec<u32> = reference
        .prompts()
        .iter()
        .flat_map(|p| p.ids.clone())
        .cycle()
        .take(29)
        .collect();
    let model = TextModel::load(&fixture_path("fp8-tiny"), DType::F32, &Device::Cpu).unwrap();
    (model, ids)
}

#[test]
fn a_q8_0_cache_takes_34_bytes_per_32_values_and_decodes_close_to_the_f32_one() {
    let (mut model, ids) = fp8_tiny_and_ids();
    let (wide, wide_bytes) = run(&model, &ids, 8);
    model.set_kv_format(Some(KvFormat::Q8_0)).unwrap();
    assert_eq!(model.kv_format(), Some(KvFormat::Q8_0));
    let (q8, bytes) = run(&model, &ids, 8);
    // The same slots: 34 bytes where f32 takes 128.
    assert_eq!(bytes * 128, wide_bytes * 34);
    // Half a level of rounding of K and V (≤ 0.4 % of each block's largest value, a few times
    // bf16's 2⁻⁹ of each value) moves the logits a little: measured 4.0e-2 of their largest
    // here, bf16's cache 1.7e-2. An ignored cache or a misread block would move them by their
    // own size.
    let rel = max_diff(&q8, &wide) / max_abs(&wide);
    assert!(rel < 6e-2, "relative {rel}");
    assert!(rel > 0.0, "the cache was not quantized");
    model.set_kv_dtype(Some(DType::BF16));
    let (bf16, _) = run(&model, &ids, 8);
    let rel_bf16 = max_diff(&bf16, &wide) / max_abs(&wide);
    assert!(rel < 4.0 * rel_bf16, "q8_0 {rel} against bf16 {rel_bf16}");
    model.set_kv_format(Some(KvFormat::Q8_0)).unwrap();
    assert_eq!(
        model.kv_bytes_read(40) * 128,
        {
            model.set_kv_dtype(None);
            model.kv_bytes_read(40) * 34
        },
        "bytes a decode step reads"
    );
}

#[test]
fn decoding_through_a_q8_0_cache_equals_prefilling_through_it() {
    // Each position's keys are quantized alone, so a prompt fed whole and fed token by token
    // store the same blocks, up to the ~1e-6 by which the two paths' projections differ (a
    // product over the prompt's rows against one row's): where a value lies on a level's edge
    // the 1e-6 flips that level by one, and where a block's largest value lies on an f16
    // rounding edge its scale by one step. A flip moves a logit by up to ~1e-4 of the largest
    // (an f16 cache shows the same, ~4e-4), and every later position sees it; prefill (the
    // causal kernel over widened blocks) and decode (the kernel reading blocks) then agree to
    // that. How many positions a flip reaches depends on which level lies on an edge, that is
    // on each path's rounding (another ISA, another kernel): the blocks are compared instead.
    let (mut model, ids) = fp8_tiny_and_ids();
    model.set_kv_format(Some(KvFormat::Q8_0)).unwrap();
    let mut whole = model.new_cache();
    let full = model.forward(&ids, &mut whole, LogitsFor::All).unwrap();
    let mut cache = model.new_cache();
    let mut rel = Vec::new();
    for (i, &id) in ids.iter().enumerate() {
        let row = model.forward(&[id], &mut cache, LogitsFor::Last).unwrap();
        let want = full
            .get(i)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        let got = row.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        rel.push(max_diff(&got, &want) / max_abs(&want));
    }
    assert!(rel.iter().all(|&r| r <= 1e-3), "{rel:?}");
    let (levels, flips) = level_flips(&whole, &cache);
    assert!(
        levels > 0 && flips * 200 <= levels,
        "{flips} of {levels} levels differ"
    );
}

/// (levels compared, levels that differ) between two Q8_0 caches of the same positions.
///
/// # Panics
/// Unless every block's scale is the same or one f16 step apart, and every level the same or
/// one apart.
fn level_flips(a: &KvCache, b: &KvCache) -> (usize, usize) {
    let (mut levels, mut flips) = (0, 0);
    for (la, lb) in a.layers().iter().zip(b.layers()) {
        assert_eq!((la.start(), la.len()), (lb.start(), lb.len()));
        let (Some((ka, va)), Some((kb, vb))) = (la.stored().unwrap(), lb.stored().unwrap()) else {
            panic!("an empty cache");
        };
        for (x, y) in [(ka, kb), (va, vb)] {
            let x = x.flatten_all().unwrap().to_vec1::<u8>().unwrap();
            let y = y.flatten_all().unwrap().to_vec1::<u8>().unwrap();
            assert_eq!(x.len(), y.len());
            for (bx, by) in x.chunks_exact(34).zip(y.chunks_exact(34)) {
                let (dx, dy) = (
                    u16::from_le_bytes([bx[0], bx[1]]),
                    u16::from_le_bytes([by[0], by[1]]),
                );
                assert!(dx.abs_diff(dy) <= 1, "scales {dx:#06x} and {dy:#06x}");
                for (&qx, &qy) in bx[2..].iter().zip(&by[2..]) {
                    let step = (qx as i8).abs_diff(qy as i8);
                    assert!(step <= 1, "levels {} and {}", qx as i8, qy as i8);
                    levels += 1;
                    flips += usize::from(step == 1);
                }
            }
        }
    }
    (levels, flips)
}

#[test]
fn a_q8_0_cache_is_refused_where_heads_are_not_whole_blocks() {
    // scout-tiny's heads are 16 values: half a block.
    let mut model = TextModel::load(&fixture_path("scout-tiny"), DType::F32, &Device::Cpu).unwrap();
    let err = model.set_kv_format(Some(KvFormat::Q8_0)).unwrap_err().to_string();
    assert!(err.contains("blocks of 32") && err.contains("16"), "{err}");
    assert_eq!(model.kv_format(), None, "a refused format is not kept");
    assert_eq!(KvFormat::Q8_0.name(), "q8_0");
    assert_eq!(KvFormat::Dtype(DType::BF16).name(), "bf16");
}
