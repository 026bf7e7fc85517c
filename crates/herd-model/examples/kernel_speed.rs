//! Weight-streaming speed of each matrix–vector kernel (herd's and candle's) on one matrix of
//! `ROWS` (default 65536) × `K` (default 2048): `cargo run --release -p herd-model --example kernel_speed [ISA]`,
//! `FORMAT=Q4_K` for one format. `TOKENS=512` times the prefill products instead (GFLOP/s for
//! that many activation rows; ROWS defaults to 4096 there): bf16 weights against f32 and
//! bf16-valued activations, and each quantized format through its bf16 panels, its per-token integer dots (`Q4_K/dots`) and (`Q4_K/q8k`,
//! `Q6_K/q8k`) the integer kernel on Q8_K activations (`FORMAT=Q3_K` etc. for the other
//! formats, with candle's kernels as `Q3_K/cndl` and the panels' dequantization alone);
//! `FORMAT=f16` times f16 weights against
//! f32 activations (only when asked: converting the matrix takes a while). `ATTN=4096` times one decode step's
//! attention over an f16 cache of that many positions instead. `MATS=64` streams that many
//! distinct matrices of `ROWS` (at most 4096) × `K` in turn instead, as a decode step's layers.
#![allow(clippy::unwrap_used)]
use std::time::Instant;

use half::bf16;
use herd_model::kernels::{dequantize, half_matmul, isa::Isa, quant_dot, quant_gemm, quant_matmul};
use herd_model::weights::{QuantTensor, QuantType};

fn main() {
    let isa = std::env::args()
        .nth(1)
        .and_then(|a| Isa::parse(&a))
        .unwrap_or(Isa::current());
    let tokens: Option<usize> = std::env::var("TOKENS").ok().and_then(|v| v.parse().ok());
    let n: usize = std::env::var("ROWS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(if tokens.is_some() { 4096 } else { 65536 });
    let k: usize = std::env::var("K")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2048);
    let x: Vec<f32> = (0..k)
        .map(|i| ((i * 7919) % 1000) as f32 / 1000.0 - 0.5)
        .collect();
    let w: Vec<f32> = (0..n * k)
        .map(|i| ((i * 104729) % 2001) as f32 / 1000.0 - 1.0)
        .collect();
    let wb: Vec<bf16> = w.iter().map(|&v| bf16::from_f32(v)).collect();
    let only = std::env::var("FORMAT").ok();
    let time = |name: &str, bytes: usize, f: &dyn Fn() -> Vec<f32>| {
        streaming(only.as_deref(), name, &format!("{isa:9}"), bytes, 20, f)
    };
    if let Some(len) = std::env::var("ATTN").ok().and_then(|v| v.parse().ok()) {
        attention(len);
        return;
    }
    if let Some(t) = tokens {
        prefill(isa, t, n, k, &w, &wb, only.as_deref());
        return;
    }
    if let Some(mats) = std::env::var("MATS").ok().and_then(|v| v.parse().ok()) {
        decode_layers(isa, mats, n.min(4096), k, &x, &wb, only.as_deref());
        return;
    }
    time("bf16", n * k * 2, &|| {
        half_matmul::matmul_t_on(isa, &x, 1, &wb, n, k)
    });
    // Q8_0, Q4_K and Q6_K unless asked for another: quantizing a large matrix takes seconds.
    for ty in QuantType::ALL {
        let asked = match only.as_deref() {
            Some(o) => o.starts_with(ty.name()),
            None => matches!(ty, QuantType::Q8_0 | QuantType::Q4K | QuantType::Q6K),
        };
        if !asked {
            continue;
        }
        let q = any_format(ty, n, k, &w);
        if quant_dot::supports(ty) {
            time(ty.name(), q.stored_bytes(), &|| {
                quant_matmul::matmul_t_on(isa, ty, q.bytes(), n, k, &x, 1)
            });
        }
        if ty.ggml().is_some() {
            time(&format!("{}/cndl", ty.name()), q.stored_bytes(), &|| {
                q.matmul_t_candle(&x, 1).unwrap()
            });
        }
    }
}

/// Cache read speed of one decode step's attention over an f16 cache of `len` positions, 8 KV
/// heads of 128, `G` (default 2) query heads each (`HERD_ISA` picks the kernel).
fn attention(len: usize) {
    use herd_model::kernels::decode_attention::{decode_attention, CacheView};
    let g: usize = std::env::var("G").ok().and_then(|v| v.parse().ok()).unwrap_or(2);
    let (hkv, dh) = (8, 128);
    // Keys and values apart, as a cache holds them: one buffer for both would read V from L3.
    let values = |seed: usize| -> Vec<half::f16> {
        (0..hkv * len * dh)
            .map(|i| half::f16::from_f32(((i * 7919 + seed) % 2001) as f32 / 1000.0 - 1.0))
            .collect()
    };
    let (cache, cache_v) = (values(0), values(1000));
    let q: Vec<f32> = (0..hkv * g * dh)
        .map(|i| ((i * 104729) % 1000) as f32 / 5000.0)
        .collect();
    let view = |data| CacheView {
        data,
        n_kv_heads: hkv,
        head_stride: len * dh,
        len,
        head_dim: dh,
    };
    let (k, v) = (view(&cache[..]), view(&cache_v[..]));
    let s = seconds_per_call(20, 1.0, &|| decode_attention(&q, &k, &v, 0.088));
    let bytes = 2 * cache.len() * 2;
    println!(
        "attention f16 len={len} G={g}  {:7.2} GB/s  {:8.3} ms",
        bytes as f64 / s / 1e9,
        s * 1e3
    );
    // The same cache as Q8_0 blocks (`--kv-dtype q8_0`).
    use herd_model::kernels::{decode_attention::Q8CacheView, kv_q8};
    let blocks = |cache: &[half::f16]| -> Vec<u8> {
        let wide: Vec<f32> = cache.iter().map(|v| v.to_f32()).collect();
        let mut blocks = vec![0u8; wide.len() / kv_q8::BLOCK * kv_q8::BLOCK_BYTES];
        kv_q8::quantize(&wide, &mut blocks);
        blocks
    };
    let (kb, vb) = (blocks(&cache), blocks(&cache_v));
    let view = |data| Q8CacheView {
        data,
        n_kv_heads: hkv,
        head_stride: len * kv_q8::row_bytes(dh),
        len,
        head_dim: dh,
    };
    let (k, v) = (view(&kb[..]), view(&vb[..]));
    let s = seconds_per_call(20, 1.0, &|| decode_attention(&q, &k, &v, 0.088));
    let bytes = 2 * kb.len();
    println!(
        "attention q8_0 len={len} G={g} {:7.2} GB/s  {:8.3} ms",
        bytes as f64 / s / 1e9,
        s * 1e3
    );
}

/// Weight-streaming speed over `mats` distinct matrices of `n` × `k` taken in turn, as a decode
/// step meets its layers' products: each matrix a few MB, read once per step, so the time to
/// start streaming each one (and each task's run of rows) counts, which one large matrix hides.
fn decode_layers(isa: Isa, mats: usize, n: usize, k: usize, x: &[f32], wb: &[bf16], only: Option<&str>) {
    let label = format!("{isa:9} {mats} × {n} × {k}");
    let time =
        |name: &str, bytes: usize, f: &dyn Fn() -> Vec<f32>| streaming(only, name, &label, bytes, 5, f);
    // Each its own allocation, as a checkpoint's tensors are.
    let dense: Vec<Vec<bf16>> = (0..mats).map(|_| wb[..n * k].to_vec()).collect();
    time("bf16", mats * n * k * 2, &|| {
        dense
            .iter()
            .map(|w| half_matmul::matmul_t_on(isa, x, 1, w, n, k)[0])
            .collect()
    });
    for ty in [QuantType::Q8_0, QuantType::Q4K, QuantType::Q6K] {
        if only.is_some_and(|o| o != ty.name()) {
            continue;
        }
        let wide: Vec<f32> = wb[..n * k].iter().map(|v| v.to_f32()).collect();
        let q = QuantTensor::quantize(ty, n, k, &wide, "w").unwrap();
        let quant: Vec<Vec<u8>> = (0..mats).map(|_| q.bytes().to_vec()).collect();
        time(ty.name(), mats * q.stored_bytes(), &|| {
            quant
                .iter()
                .map(|w| quant_matmul::matmul_t_on(isa, ty, w, n, k, x, 1)[0])
                .collect()
        });
    }
}

/// GFLOP/s of the prefill products: t activation rows against the n × k matrix.
fn prefill(isa: Isa, t: usize, n: usize, k: usize, w: &[f32], wb: &[bf16], only: Option<&str>) {
    let x: Vec<f32> = (0..t * k)
        .map(|i| ((i * 7919) % 1000) as f32 / 1000.0 - 0.5 + 1e-4)
        .collect();
    let xb: Vec<f32> = x.iter().map(|&v| bf16::from_f32(v).to_f32()).collect();
    let flops = 2.0 * (t * n * k) as f64;
    let time = |name: &str, f: &dyn Fn() -> Vec<f32>| {
        if only.is_some_and(|o| o != name) {
            return;
        }
        let s = seconds_per_call(3, 2.0, f);
        println!(
            "{name:10} {isa:10} t={t} {:7.1} GFLOP/s  {:8.2} ms",
            flops / s / 1e9,
            s * 1e3
        );
    };
    time("bf16", &|| half_matmul::matmul_t_on(isa, &x, t, wb, n, k));
    time("bf16/bf16x", &|| half_matmul::matmul_t_on(isa, &xb, t, wb, n, k));
    if only == Some("f16") {
        let wh: Vec<half::f16> = w.iter().map(|&v| half::f16::from_f32(v)).collect();
        time("f16", &|| half_matmul::matmul_t_on(isa, &x, t, &wh, n, k));
    }
    // Q8_0, Q4_K and Q6_K unless asked for another: quantizing a large matrix takes seconds.
    for ty in QuantType::ALL {
        let asked = match only {
            Some(o) => o.starts_with(ty.name()),
            None => matches!(ty, QuantType::Q8_0 | QuantType::Q4K | QuantType::Q6K),
        };
        if !asked {
            continue;
        }
        let q = any_format(ty, n, k, w);
        time(ty.name(), &|| quant_matmul::matmul_t_panels_on(isa, &q, &x, t));
        if quant_dot::supports(ty) {
            time(&format!("{}/dots", ty.name()), &|| {
                quant_matmul::matmul_t_on(isa, ty, q.bytes(), n, k, &x, t)
            });
        } else {
            time(&format!("{}/cndl", ty.name()), &|| {
                q.matmul_t_candle(&x, t).unwrap()
            });
        }
        if quant_gemm::supports(ty) {
            time(&format!("{}/q8k", ty.name()), &|| {
                quant_gemm::matmul_t_on(isa, ty, q.bytes(), n, k, &x, t)
            });
        }
        // The panels' dequantization alone (GB/s of blocks read): herd's loops to bf16, and
        // the weight's own f32 dequantization (candle's to_float) rounded after.
        let bytes = q.stored_bytes() as f64;
        let panel = std::cell::RefCell::new(vec![bf16::ZERO; n * k]);
        let s = seconds_per_call(3, 1.0, &|| {
            dequantize::dequantize_rows_on(isa, ty, q.bytes(), &mut panel.borrow_mut()[..]);
            Vec::new()
        });
        let wide = std::cell::RefCell::new(vec![0f32; n * k]);
        let s_f32 = seconds_per_call(3, 1.0, &|| {
            dequantize::dequantize_rows_on(isa, ty, q.bytes(), &mut wide.borrow_mut()[..]);
            Vec::new()
        });
        let s_twin = seconds_per_call(3, 1.0, &|| {
            q.dequantize_rows_into(0, &mut wide.borrow_mut());
            Vec::new()
        });
        println!(
            "{:10} {isa:10} dequantize GB/s: to bf16 {:6.2}, to f32 {:6.2}, the slow twin (candle's to_float) {:6.2}",
            ty.name(),
            bytes / s / 1e9,
            bytes / s_f32 / 1e9,
            bytes / s_twin / 1e9
        );
    }
}

/// `w` in `ty`: herd's quantizer where it writes the format, candle's for the other ggml
/// formats, random levels with a fitting scale for the i-quants (which have no quantizer here).
fn any_format(ty: QuantType, n: usize, k: usize, w: &[f32]) -> QuantTensor {
    if ty.writable() {
        return QuantTensor::quantize(ty, n, k, w, "w").unwrap();
    }
    let bytes = match ty.ggml() {
        Some(dtype) => {
            let t = candle_core::Tensor::from_slice(w, (n, k), &candle_core::Device::Cpu).unwrap();
            candle_core::quantized::QTensor::quantize(&t, dtype)
                .unwrap()
                .data()
                .unwrap()
                .to_vec()
        }
        None => {
            let mut state = 0x9E37_79B9_7F4A_7C15u64;
            let mut bytes = vec![0u8; ty.matrix_bytes(n, k).unwrap()];
            for b in bytes.iter_mut() {
                state = state.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
                *b = (state >> 56) as u8;
            }
            let d = half::f16::from_f32(1.0 / 127.0 / 8.0).to_le_bytes();
            for blk in bytes.chunks_exact_mut(ty.block_bytes()) {
                blk[..2].copy_from_slice(&d);
            }
            bytes
        }
    };
    QuantTensor::read_with(ty, n, k, "w", |dst| {
        dst.copy_from_slice(&bytes);
        Ok(())
    })
    .unwrap()
}

/// Mean seconds a call of `f` takes after one warm-up call: at least `min_reps` calls and
/// `min_secs` seconds.
/// Times `f` (at least `min_reps` calls and a second) and prints `bytes` a call as GB/s,
/// unless `only` names another format.
fn streaming(
    only: Option<&str>,
    name: &str,
    label: &str,
    bytes: usize,
    min_reps: u32,
    f: &dyn Fn() -> Vec<f32>,
) {
    if only.is_some_and(|o| o != name) {
        return;
    }
    let s = seconds_per_call(min_reps, 1.0, f);
    println!(
        "{name:8} {label}  {:7.2} GB/s  {:8.3} ms",
        bytes as f64 / s / 1e9,
        s * 1e3
    );
}

fn seconds_per_call(min_reps: u32, min_secs: f64, f: &dyn Fn() -> Vec<f32>) -> f64 {
    f();
    let t0 = Instant::now();
    let mut reps = 0;
    while reps < min_reps || t0.elapsed().as_secs_f64() < min_secs {
        std::hint::black_box(f());
        reps += 1;
    }
    t0.elapsed().as_secs_f64() / f64::from(reps)
}
