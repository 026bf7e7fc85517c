//! The bf16 block products — AMX tiles and AVX-512 BF16 dot products, which share the packing
//! and blocking — against their slow twins. On a CPU with neither (or where the OS does not
//! grant the tile state) there is nothing to run, and each test says so on stderr.

use half::bf16;
use herd_model::kernels::amx::{self, PackedActivations, Split};
use herd_model::kernels::dequantize;
use herd_model::kernels::half_matmul;
use herd_model::kernels::isa::Isa;
use herd_model::kernels::quant_matmul;
use herd_model::kernels::row_split::ColumnBlock;
use herd_model::weights::{QuantTensor, QuantType};

use super::weights::{max_abs, max_diff, random_blocks, values};

/// The levels with bf16 block products this CPU has (AVX-512 BF16, AMX).
fn block_isas() -> Vec<Isa> {
    let isas: Vec<Isa> = [Isa::Avx512Bf16, Isa::Amx]
        .into_iter()
        .filter(|i| i.is_supported())
        .collect();
    if isas.is_empty() {
        eprintln!("neither AVX-512 BF16 nor AMX on this machine: bf16 block products not exercised");
    }
    isas
}

/// The levels with block products this CPU has: AVX-512 (f32 FMAs against bf16 weights, on
/// wide activations only), AVX-512 BF16 and AMX.
fn product_isas() -> Vec<Isa> {
    [Isa::Avx512, Isa::Avx512Bf16, Isa::Amx]
        .into_iter()
        .filter(|i| i.is_supported())
        .collect()
}

/// The activation packings `isa`'s block products take.
fn splits_on(isa: Isa) -> Vec<Split> {
    if isa >= Isa::Avx512Bf16 {
        vec![Split::Exact, Split::Rounded, Split::Wide]
    } else {
        vec![Split::Wide]
    }
}

/// Activations as f32 (three planes) and rounded to bf16 (one plane, as under `--dtype bf16`):
/// both reach the bf16 blocks against bf16 weights.
fn both_activations(x: &[f32]) -> [Vec<f32>; 2] {
    [
        x.to_vec(),
        x.iter().map(|&v| bf16::from_f32(v).to_f32()).collect(),
    ]
}

#[test]
fn tile_product_agrees_with_its_slow_twin() {
    block_isas();
    for isa in product_isas() {
        block_product_agrees_with_its_slow_twin(isa);
    }
}

fn block_product_agrees_with_its_slow_twin(isa: Isa) {
    // Token counts around the 32-token block and its 16-token halves, row counts around the
    // 32-row group (the short last group is read from a padded copy), one and many K blocks.
    for &(t, rows, k) in &[
        (1, 1, 32),
        (5, 33, 64),
        (16, 32, 96),
        (17, 31, 32),
        (33, 70, 256),
        (64, 64, 1024),
        (100, 130, 160),
    ] {
        let x = values(t * k, 3 + t as u64);
        let w: Vec<bf16> = values(rows * k, 4 + rows as u64)
            .iter()
            .map(|&v| bf16::from_f32(v))
            .collect();
        for split in splits_on(isa) {
            let acts = PackedActivations::pack(&x, t, k, split);
            let mut fast = vec![f32::NAN; rows * t];
            let mut slow = vec![f32::NAN; rows * t];
            amx::product_rows_on(
                isa,
                &[&w],
                rows,
                &acts,
                &mut ColumnBlock::whole(&mut fast, t, rows),
            );
            amx::product_rows_slow(&[&w], rows, &acts, &mut slow);
            let tol = 2e-6 * (k as f32).sqrt() * max_abs(&slow).max(1.0);
            let d = max_diff(&fast, &slow);
            assert!(d <= tol, "{isa} {split:?} {t}x{rows}x{k}: {d}");
            // Mutation twin: one weight of the last row changed moves that row's outputs only.
            let mut bad = w.clone();
            bad[(rows - 1) * k] = bf16::from_f32(w[(rows - 1) * k].to_f32() + 1.0);
            let mut moved = vec![f32::NAN; rows * t];
            amx::product_rows_on(
                isa,
                &[&bad],
                rows,
                &acts,
                &mut ColumnBlock::whole(&mut moved, t, rows),
            );
            only_the_last_row_moved(&fast, &moved, &x, (t, rows, k), &format!("{isa}"));
        }
    }
}

/// The mutation twins' check: a product whose last row's first weight changed moved that
/// row's outputs (where the activation meeting it is not zero) and no other.
fn only_the_last_row_moved(
    fast: &[f32],
    moved: &[f32],
    x: &[f32],
    (t, rows, k): (usize, usize, usize),
    what: &str,
) {
    for ti in 0..t {
        let row = ti * rows..(ti + 1) * rows;
        assert_eq!(
            moved[row.start..row.end - 1],
            fast[row.start..row.end - 1],
            "{what}"
        );
        if x[ti * k] != 0.0 {
            assert_ne!(moved[row.end - 1], fast[row.end - 1], "{what} {t}x{rows}x{k}");
        }
    }
}

#[test]
fn a_run_too_long_for_l2_computes_what_short_runs_do() {
    // 130 rows × 2048 bf16 (520 KiB) take the K-panel order, a 32-row run the token-block
    // order: the same sums, bit for bit, for one weight plane and for the three of f32 weights,
    // against one and three planes of activations, over two token blocks (the second a half).
    let (t, rows, k) = (40, 130, 2048);
    let x = values(t * k, 21);
    let wide: Vec<f32> = values(rows * k, 22).iter().map(|v| v * 0.3).collect();
    let bf: Vec<bf16> = wide.iter().map(|&v| bf16::from_f32(v)).collect();
    let three = amx::split_exact(&wide);
    assert_eq!(three.len(), 3);
    block_isas();
    for isa in product_isas() {
        for planes in [vec![&bf[..]], three.iter().map(|p| &p[..]).collect::<Vec<_>>()] {
            // Wide activations meet one weight plane.
            for split in splits_on(isa)
                .into_iter()
                .filter(|&s| s != Split::Wide || planes.len() == 1)
            {
                let acts = PackedActivations::pack(&x, t, k, split);
                let mut long = vec![f32::NAN; rows * t];
                amx::product_rows_on(
                    isa,
                    &planes,
                    rows,
                    &acts,
                    &mut ColumnBlock::whole(&mut long, t, rows),
                );
                let mut slow = vec![f32::NAN; rows * t];
                amx::product_rows_slow(&planes, rows, &acts, &mut slow);
                let d = max_diff(&long, &slow);
                assert!(
                    d <= 2e-6 * (k as f32).sqrt() * max_abs(&slow).max(1.0),
                    "{isa} {split:?}: {d}"
                );
                for r0 in (0..rows).step_by(32) {
                    let n = (rows - r0).min(32);
                    let part: Vec<&[bf16]> = planes.iter().map(|p| &p[r0 * k..(r0 + n) * k]).collect();
                    let mut short = vec![f32::NAN; n * t];
                    amx::product_rows_on(isa, &part, n, &acts, &mut ColumnBlock::whole(&mut short, t, n));
                    for ti in 0..t {
                        assert_eq!(
                            short[ti * n..(ti + 1) * n],
                            long[ti * rows + r0..ti * rows + r0 + n],
                            "{isa} {split:?} {} planes: rows {r0}.., token {ti}",
                            planes.len()
                        );
                    }
                }
            }
        }
    }
}

#[test]
fn exact_split_takes_the_planes_the_values_need() {
    let bf16_exact: Vec<f32> = values(64, 5)
        .iter()
        .map(|&v| bf16::from_f32(v).to_f32())
        .collect();
    assert_eq!(
        PackedActivations::pack(&bf16_exact, 2, 32, Split::Exact).planes(),
        1
    );
    // 16 significant bits: two planes.
    let two: Vec<f32> = values(64, 6)
        .iter()
        .map(|&v| f32::from_bits(v.to_bits() & 0xFFFF_FF00))
        .collect();
    assert_eq!(PackedActivations::pack(&two, 2, 32, Split::Exact).planes(), 2);
    assert_eq!(
        PackedActivations::pack(&values(64, 7), 2, 32, Split::Exact).planes(),
        3
    );
    assert_eq!(
        PackedActivations::pack(&values(64, 7), 2, 32, Split::Rounded).planes(),
        1
    );
    // Long inputs are scanned in parallel runs: one value that needs more, anywhere (first,
    // inside a late run, last), raises the count for the whole.
    let n = 300_001;
    let long: Vec<f32> = values(n, 8).iter().map(|&v| bf16::from_f32(v).to_f32()).collect();
    assert_eq!(amx::planes_needed(&long), 1);
    for at in [0, 70_000, 262_143, n - 1] {
        let mut one = long.clone();
        one[at] = f32::from_bits(one[at].to_bits() | 0x100);
        assert_eq!(amx::planes_needed(&one), 2, "at {at}");
        one[at] = f32::from_bits(one[at].to_bits() | 0x1);
        assert_eq!(amx::planes_needed(&one), 3, "at {at}");
    }
}

#[test]
fn bf16_weights_on_tiles_reproduce_the_f32_product() {
    block_isas();
    for isa in product_isas() {
        bf16_weights_in_blocks_reproduce_the_f32_product(isa);
    }
}

fn bf16_weights_in_blocks_reproduce_the_f32_product(isa: Isa) {
    // The exact split makes the block path an f32 product (up to summation order): held to the
    // same tolerance as the f32 kernels, on prefill shapes that reach it.
    let shapes = [(5, 70, 96), (40, 97, 512), (512, 64, 256)];
    for (t, n, k, x) in shapes
        .into_iter()
        .flat_map(|(t, n, k)| both_activations(&values(t * k, 11)).map(|x| (t, n, k, x)))
    {
        let w: Vec<bf16> = values(n * k, 12).iter().map(|&v| bf16::from_f32(v)).collect();
        let slow = half_matmul::matmul_t_slow(&x, t, &w, n, k);
        let fast = half_matmul::matmul_t_on(isa, &x, t, &w, n, k);
        // Where bf16 dot products run (tiles; vdpbf16ps against bf16-valued activations), the
        // blocks, not the f32 panels (which AVX2 takes): their summation order differs. (The
        // FMA blocks sum each output in one chain along K, as the panels' kernel can: they may
        // agree bit for bit.)
        let bf16_valued = x.iter().all(|&v| bf16::from_f32(v).to_f32() == v);
        if isa == Isa::Amx || (isa == Isa::Avx512Bf16 && bf16_valued) {
            assert_ne!(
                fast,
                half_matmul::matmul_t_on(Isa::Avx2, &x, t, &w, n, k),
                "{isa} {t}x{n}x{k}"
            );
        }
        let tol = 2e-6 * (k as f32).sqrt() * 4.0;
        assert!(
            max_diff(&fast, &slow) <= tol,
            "{t}x{n}x{k}: {}",
            max_diff(&fast, &slow)
        );
        // Mutation twin: one weight changed moves exactly its row's outputs.
        let mut bad = w.clone();
        bad[(n - 1) * k + 3] = bf16::from_f32(w[(n - 1) * k + 3].to_f32() + 0.5);
        let moved = half_matmul::matmul_t_on(isa, &x, t, &bad, n, k);
        for ti in 0..t {
            assert_eq!(moved[ti * n..ti * n + n - 1], fast[ti * n..ti * n + n - 1]);
            assert!((moved[ti * n + n - 1] - fast[ti * n + n - 1]).abs() > 1e-4 * x[ti * k + 3].abs());
        }
    }
}

/// The f32 product of dequantized weights and activations, both rounded to bf16 first when
/// `rounded` (what the tiles compute for a quantized matrix).
fn dequantized_product(q: &QuantTensor, x: &[f32], t: usize, rounded: bool) -> Vec<f32> {
    let (n, k) = (q.rows(), q.cols());
    let mut w = vec![0f32; n * k];
    q.dequantize_rows_into(0, &mut w);
    let round = |v: f32| if rounded { bf16::from_f32(v).to_f32() } else { v };
    let mut y = vec![0f32; t * n];
    for ti in 0..t {
        for r in 0..n {
            y[ti * n + r] = (0..k)
                .map(|kk| round(w[r * k + kk]) * round(x[ti * k + kk]))
                .sum();
        }
    }
    y
}

#[test]
fn quantized_panels_agree_with_the_dequantized_product_on_every_isa() {
    // The prefill path for block-quantized weights: f32 panels (exact but for summation order)
    // everywhere, bf16 tiles on AMX (exact against bf16-rounded operands, and within bf16's
    // rounding of the unrounded product). Every format herd reads.
    for ty in QuantType::ALL {
        let (t, n, k) = (37, 70, 512);
        let q = random_blocks(ty, n, k, 81);
        let x = values(t * k, 82);
        let exact = dequantized_product(&q, &x, t, false);
        let scale = max_abs(&exact).max(1.0);
        for isa in Isa::supported() {
            let fast = quant_matmul::matmul_t_panels_on(isa, &q, &x, t);
            if isa >= Isa::Avx512Bf16 {
                let emulated = dequantized_product(&q, &x, t, true);
                let d = max_diff(&fast, &emulated);
                assert!(d <= 1e-5 * scale, "{ty} {isa} vs bf16-rounded operands: {d}");
                let rel = max_diff(&fast, &exact) / scale;
                assert!(rel < 1e-2, "{ty} {isa} vs f32: relative {rel}");
            } else {
                let d = max_diff(&fast, &exact);
                assert!(d <= 1e-5 * scale, "{ty} {isa}: {d}");
            }
            // Mutation twin: a level changed in the last row moves that row only.
            let mut bytes = q.bytes().to_vec();
            let at = bytes.len() - 40;
            bytes[at] ^= 0x11;
            let bad = QuantTensor::read_with(ty, n, k, "w", |dst| {
                dst.copy_from_slice(&bytes);
                Ok(())
            })
            .unwrap();
            let moved = quant_matmul::matmul_t_panels_on(isa, &bad, &x, t);
            assert_eq!(moved[..n - 1], fast[..n - 1], "{ty} {isa}");
            assert!(
                (0..t).any(|ti| (moved[ti * n + n - 1] - fast[ti * n + n - 1]).abs() > 1e-6),
                "{ty} {isa}: changed level ignored"
            );
        }
    }
}

#[test]
fn split_exact_sums_back_to_every_value() {
    let x: Vec<f32> = values(1000, 91)
        .iter()
        .map(|v| v * 1e3)
        .chain([
            0.0,
            -0.0,
            1.0,
            f32::MIN_POSITIVE,
            3.0e38,
            -1.5e-30,
            f32::NEG_INFINITY,
            f32::NAN,
        ])
        .collect();
    let planes = amx::split_exact(&x);
    assert_eq!(planes.len(), 3);
    for (i, &v) in x.iter().enumerate() {
        let back: f32 = planes.iter().map(|p| p[i].to_f32()).sum();
        assert!(
            back == v || (back.is_nan() && v.is_nan()),
            "value {i}: {v} split to {back}"
        );
    }
    let f16_values: Vec<f32> = x.iter().map(|&v| half::f16::from_f32(v / 1e4).to_f32()).collect();
    assert_eq!(amx::split_exact(&f16_values).len(), 2);
}

#[test]
fn a_matrix_computes_the_same_whatever_dtype_holds_its_values() {
    block_isas();
    for isa in product_isas() {
        same_whatever_dtype_holds_the_values(isa);
    }
}

fn same_whatever_dtype_holds_the_values(isa: Isa) {
    // bf16 values stored as bf16, f16 or f32 (and f16 values as f16 or f32) take the same
    // passes in blocks, in the same order: bit-identical products. A checkpoint converted
    // between dtypes (a GGUF keeps the router in F32) must not move a routing decision.
    let (t, n, k) = (33, 40, 128);
    for x in both_activations(&values(t * k, 93)) {
        same_for(isa, t, n, k, &x);
    }
}

fn same_for(isa: Isa, t: usize, n: usize, k: usize, x: &[f32]) {
    let w = values(n * k, 94);
    let wb: Vec<bf16> = w.iter().map(|&v| bf16::from_f32(v)).collect();
    let wb32: Vec<f32> = wb.iter().map(|v| v.to_f32()).collect();
    let wh: Vec<half::f16> = w.iter().map(|&v| half::f16::from_f32(v)).collect();
    let wh32: Vec<f32> = wh.iter().map(|v| v.to_f32()).collect();
    let from_bf16 = half_matmul::matmul_t_on(isa, x, t, &wb, n, k);
    assert_eq!(
        from_bf16,
        half_matmul::matmul_t_on(isa, x, t, &wb32, n, k),
        "{isa}"
    );
    let from_f16 = half_matmul::matmul_t_on(isa, x, t, &wh, n, k);
    assert_eq!(
        from_f16,
        half_matmul::matmul_t_on(isa, x, t, &wh32, n, k),
        "{isa}"
    );
    // And f32 weights with all their bits are still the f32 product.
    let slow = half_matmul::matmul_t_slow(x, t, &w, n, k);
    let fast = half_matmul::matmul_t_on(isa, x, t, &w, n, k);
    assert!(max_diff(&fast, &slow) <= 2e-6 * (k as f32).sqrt() * 4.0, "{isa}");
}

#[test]
fn products_stay_on_f32_panels_where_blocks_would_lose() {
    if !Isa::Avx512Bf16.is_supported() {
        eprintln!("no AVX-512 BF16 on this machine: nothing to route");
        return;
    }
    // f32 weights against f32 activations would take six bf16 passes, slower than the f32
    // kernel on a CPU without tiles: AVX-512 BF16 computes exactly what AVX-512 does, bit for
    // bit. (f16 weights, five passes, take the FMA blocks on both, the same bits too.)
    let (t, n, k) = (40, 70, 256);
    let x = values(t * k, 95);
    let w = values(n * k, 96);
    let wh: Vec<half::f16> = w.iter().map(|&v| half::f16::from_f32(v)).collect();
    assert_eq!(
        half_matmul::matmul_t_on(Isa::Avx512Bf16, &x, t, &w, n, k),
        half_matmul::matmul_t_on(Isa::Avx512, &x, t, &w, n, k)
    );
    assert_eq!(
        half_matmul::matmul_t_on(Isa::Avx512Bf16, &x, t, &wh, n, k),
        half_matmul::matmul_t_on(Isa::Avx512, &x, t, &wh, n, k)
    );
    // One bf16 operand is enough for the blocks (a different summation order).
    let xb: Vec<f32> = x.iter().map(|&v| bf16::from_f32(v).to_f32()).collect();
    assert_ne!(
        half_matmul::matmul_t_on(Isa::Avx512Bf16, &xb, t, &w, n, k),
        half_matmul::matmul_t_on(Isa::Avx512, &xb, t, &w, n, k)
    );
}

/// Where a block of `ty` keeps its f16 scale d.
fn d_offset(ty: QuantType) -> usize {
    match ty {
        QuantType::Q2K => 80,
        QuantType::Q3K => 108,
        QuantType::Q6K => 208,
        _ => 0,
    }
}

#[test]
fn panel_dequantization_computes_what_the_slow_twin_does_in_f32_and_bf16() {
    // Bit for bit, every format herd reads: the same f32 operations as the weight's own
    // dequantization (candle's to_float, herd's i-quant reading), then (bf16) the same rounding.
    for ty in QuantType::ALL {
        let (n, k) = (5, 512);
        let q = random_blocks(ty, n, k, 101);
        // The first block's scale made infinite, the second's NaN: half's rounding there.
        let mut bytes = q.bytes().to_vec();
        let d_at = d_offset(ty);
        bytes[d_at..d_at + 2].copy_from_slice(&half::f16::INFINITY.to_le_bytes());
        let second = ty.block_bytes() + d_at;
        bytes[second..second + 2].copy_from_slice(&half::f16::NAN.to_le_bytes());
        for source in [q.bytes(), &bytes[..]] {
            let twin = QuantTensor::read_with(ty, n, k, "w", |dst| {
                dst.copy_from_slice(source);
                Ok(())
            })
            .unwrap();
            let mut wide = vec![0f32; n * k];
            twin.dequantize_rows_into(0, &mut wide);
            let slow: Vec<u16> = wide.iter().map(|&v| bf16::from_f32(v).to_bits()).collect();
            let slow_f32: Vec<u32> = wide.iter().map(|v| v.to_bits()).collect();
            for isa in Isa::supported() {
                let mut fast = vec![bf16::ZERO; n * k];
                dequantize::dequantize_rows_on(isa, ty, source, &mut fast);
                let fast: Vec<u16> = fast.iter().map(|v| v.to_bits()).collect();
                assert_eq!(fast, slow, "{ty} {isa}");
                // The f32 panels' values are the weight's own, NaN payloads included.
                let mut fast = vec![0f32; n * k];
                dequantize::dequantize_rows_on(isa, ty, source, &mut fast);
                let fast: Vec<u32> = fast.iter().map(|v| v.to_bits()).collect();
                assert_eq!(fast, slow_f32, "{ty} {isa} f32");
            }
        }
        let mut fast = vec![bf16::ZERO; n * k];
        dequantize::dequantize_rows_bf16(ty, q.bytes(), &mut fast);
        // Mutation twin: one changed level byte changes the values.
        let mut bytes = q.bytes().to_vec();
        let at = bytes.len() - 40;
        bytes[at] ^= 0x11;
        let mut bad = vec![bf16::ZERO; n * k];
        dequantize::dequantize_rows_bf16(ty, &bytes, &mut bad);
        assert_ne!(bad, fast, "{ty}");
    }
}

#[test]
fn packing_into_a_used_buffer_packs_what_a_fresh_one_does() {
    // The padding tokens of the last block must be cleared, not left from the previous call.
    let (t, k) = (37, 96);
    let x = values(t * k, 111);
    for split in [Split::Exact, Split::Rounded] {
        let used = vec![bf16::from_f32(7.0); 50_000];
        let reused = PackedActivations::pack_into(used, &x, t, k, split).into_buffer();
        let fresh = PackedActivations::pack(&x, t, k, split).into_buffer();
        assert_eq!(reused, fresh, "{split:?}");
    }
}

#[test]
fn rounded_packing_rounds_as_bf16_from_f32_does() {
    // The packer's own rounding (integer operations that vectorise) must be half's, bit for
    // bit: ties to even both ways, subnormals, the largest finite values (one rounds to
    // infinity), infinities, and NaNs of either sign with payloads.
    let bits: [u32; 32] = [
        0x3F80_8000,
        0x3F81_8000,
        0x3F80_8001,
        0x3F80_7FFF,
        0x0000_0001,
        0x0000_8000,
        0x0001_8000,
        0x807F_FFFF,
        0x7F7F_FFFF,
        0x7F7F_7FFF,
        0xFF7F_8000,
        0x7F80_0000,
        0xFF80_0000,
        0x7F80_0001,
        0xFFC1_2345,
        0x7FFF_FFFF,
        0x0000_0000,
        0x8000_0000,
        0x4049_0FDB,
        0xC049_0FDB,
        0x3DCC_CCCD,
        0x3380_0000,
        0x4B80_0000,
        0x7F00_8000,
        0x0080_0000,
        0x007F_FFFF,
        0x3F7F_FFFF,
        0xBF7F_8000,
        0x3EAA_AAAB,
        0x447A_0000,
        0x7FC0_0000,
        0xFFFF_0000,
    ];
    let x: Vec<f32> = bits.iter().map(|&b| f32::from_bits(b)).collect();
    // Token 0 of a 32-wide K block: value 2r + i at r·32 + i.
    let packed = PackedActivations::pack(&x, 1, 32, Split::Rounded).into_buffer();
    for (v, &value) in x.iter().enumerate() {
        let got = packed[(v / 2) * 32 + v % 2];
        assert_eq!(
            got.to_bits(),
            bf16::from_f32(value).to_bits(),
            "{:#010x}",
            bits[v]
        );
    }
    // Mutation twin: truncation instead of rounding differs on these values.
    let truncated: Vec<u16> = bits.iter().map(|&b| (b >> 16) as u16).collect();
    let rounded: Vec<u16> = x.iter().map(|&v| bf16::from_f32(v).to_bits()).collect();
    assert_ne!(truncated, rounded);
}

#[test]
fn packer_on_every_isa_packs_the_scalar_packers_bits() {
    // Odd token counts (a partial half, a partial block, several blocks), two and three K
    // blocks, and values that stress both splits: f32 with all three planes, bf16 values (one
    // plane), ties, subnormals, infinities and NaNs with payloads.
    let specials = [
        0x3F80_8000u32,
        0x3F81_8000,
        0x0000_0001,
        0x807F_FFFF,
        0x7F7F_FFFF,
        0x7F80_0000,
        0xFF80_0000,
        0x7F80_0001,
        0xFFC1_2345,
        0x8000_0000,
    ];
    for (t, k) in [(1, 32), (5, 64), (16, 96), (17, 32), (45, 64), (70, 96)] {
        let mut x = values(t * k, 4242 + t as u64);
        for (i, &bits) in specials.iter().enumerate() {
            x[(i * 7919) % (t * k)] = f32::from_bits(bits);
        }
        let bf16_valued: Vec<f32> = x.iter().map(|&v| bf16::from_f32(v).to_f32()).collect();
        for input in [&x, &bf16_valued] {
            for split in [Split::Exact, Split::Rounded] {
                let bits = |b: &[bf16]| b.iter().map(|v| v.to_bits()).collect::<Vec<_>>();
                let slow = PackedActivations::pack_on(Isa::Portable, input, t, k, split);
                let (slow_planes, slow) = (slow.planes(), bits(&slow.into_buffer()));
                for isa in Isa::supported() {
                    let fast = PackedActivations::pack_on(isa, input, t, k, split);
                    assert_eq!(fast.planes(), slow_planes, "{isa} {t}×{k} {split:?}");
                    assert_eq!(bits(&fast.into_buffer()), slow, "{isa} {t}×{k} {split:?}");
                }
            }
        }
    }
    // Mutation twin: one value's last bit moves the packed bits under the exact split.
    let x = values(17 * 32, 5);
    let mut y = x.clone();
    y[3] = f32::from_bits(y[3].to_bits() ^ 1);
    let pack = |v: &[f32]| PackedActivations::pack(v, 17, 32, Split::Exact).into_buffer();
    assert_ne!(pack(&x), pack(&y));
}

#[test]
fn wide_packer_on_every_isa_lays_out_every_value() {
    // Each token's value kk at (block·k + kk)·32 + j, bit for bit (NaN payloads too), padding
    // tokens zero even in a reused buffer, on the scalar packer and every level's.
    for (t, k) in [(1, 32), (5, 64), (16, 96), (17, 32), (45, 64), (70, 96)] {
        let mut x = values(t * k, 777 + t as u64);
        x[(3 * k + 1) % (t * k)] = f32::from_bits(0xFFC1_2345);
        x[t * k - 1] = f32::from_bits(0x0000_0001);
        for isa in Isa::supported() {
            let acts = PackedActivations::pack_on(isa, &x, t, k, Split::Wide);
            assert!(acts.is_wide() && acts.planes() == 0);
            let wide = acts.wide();
            assert_eq!(wide.len(), t.div_ceil(32) * k * 32, "{isa} {t}×{k}");
            for (at, v) in wide.iter().enumerate() {
                let (block, kk, j) = (at / (32 * k), (at / 32) % k, at % 32);
                let token = 32 * block + j;
                let want = if token < t { x[token * k + kk] } else { 0.0 };
                assert_eq!(v.to_bits(), want.to_bits(), "{isa} {t}×{k} at {at}");
            }
        }
    }
    // Mutation twin: a token moved by one position lands elsewhere.
    let (t, k) = (17, 32);
    let x = values(t * k, 5);
    let mut y = x.clone();
    y.swap(0, k);
    let pack = |v: &[f32]| PackedActivations::pack(v, t, k, Split::Wide).wide().to_vec();
    assert_ne!(pack(&x), pack(&y));
}

#[test]
fn exact_activations_against_bf16_weights_take_the_fma_blocks_without_tiles() {
    if !Isa::Avx512.is_supported() {
        eprintln!("no AVX-512 on this machine: the FMA blocks not exercised");
        return;
    }
    // f32 activations need three bf16 planes: on AVX-512 BF16 they go wide onto FMAs, the
    // same products as AVX-512 computes, bit for bit (three vdpbf16ps passes sum in another
    // order). Activations needing one plane stay on vdpbf16ps.
    let (t, n, k) = (40, 70, 256);
    let x = values(t * k, 97);
    let w: Vec<bf16> = values(n * k, 98).iter().map(|&v| bf16::from_f32(v)).collect();
    let on_fma = half_matmul::matmul_t_on(Isa::Avx512, &x, t, &w, n, k);
    let mut direct = vec![f32::NAN; n * t];
    let acts = PackedActivations::pack_on(Isa::Avx512, &x, t, k, Split::Wide);
    amx::product_rows_on(
        Isa::Avx512,
        &[&w],
        n,
        &acts,
        &mut ColumnBlock::whole(&mut direct, t, n),
    );
    assert_eq!(on_fma, direct);
    if Isa::Avx512Bf16.is_supported() {
        assert_eq!(half_matmul::matmul_t_on(Isa::Avx512Bf16, &x, t, &w, n, k), on_fma);
        let three_planes = PackedActivations::pack(&x, t, k, Split::Exact);
        assert_eq!(three_planes.planes(), 3);
        let mut on_dots = vec![f32::NAN; n * t];
        amx::product_rows_on(
            Isa::Avx512Bf16,
            &[&w],
            n,
            &three_planes,
            &mut ColumnBlock::whole(&mut on_dots, t, n),
        );
        assert_ne!(on_dots, on_fma);
        let xb: Vec<f32> = x.iter().map(|&v| bf16::from_f32(v).to_f32()).collect();
        assert_ne!(
            half_matmul::matmul_t_on(Isa::Avx512Bf16, &xb, t, &w, n, k),
            half_matmul::matmul_t_on(Isa::Avx512, &xb, t, &w, n, k)
        );
    }
}

#[test]
fn f16_weights_on_the_fma_blocks_agree_with_their_slow_twin() {
    // f16 values that are not bf16 ones (two planes), widened in registers: against the f32
    // product of the same values, on odd token and row counts, short and long runs.
    let isas: Vec<Isa> = product_isas();
    if isas.is_empty() {
        eprintln!("no AVX-512 on this machine: the FMA blocks not exercised");
    }
    for isa in isas {
        for &(t, rows, k) in &[
            (1, 1, 32),
            (5, 33, 64),
            (16, 32, 96),
            (17, 31, 32),
            (100, 130, 160),
            (40, 130, 2048),
        ] {
            let x = values(t * k, 31 + t as u64);
            let wh: Vec<half::f16> = values(rows * k, 32 + rows as u64)
                .iter()
                .map(|&v| half::f16::from_f32(v * 0.7))
                .collect();
            let planes = amx::split_exact(&wh.iter().map(|v| v.to_f32()).collect::<Vec<_>>());
            let planes: Vec<&[bf16]> = planes.iter().map(|p| &p[..]).collect();
            let acts = PackedActivations::pack(&x, t, k, Split::Wide);
            let mut fast = vec![f32::NAN; rows * t];
            amx::product_rows_f16_on(isa, &wh, rows, &acts, &mut ColumnBlock::whole(&mut fast, t, rows));
            let mut slow = vec![f32::NAN; rows * t];
            amx::product_rows_slow(&planes, rows, &acts, &mut slow);
            let d = max_diff(&fast, &slow);
            assert!(
                d <= 2e-6 * (k as f32).sqrt() * max_abs(&slow).max(1.0),
                "{isa} {t}x{rows}x{k}: {d}"
            );
            // A long run computes what its 32-row runs do.
            for r0 in (0..rows).step_by(32) {
                let n = (rows - r0).min(32);
                let mut short = vec![f32::NAN; n * t];
                amx::product_rows_f16_on(
                    isa,
                    &wh[r0 * k..(r0 + n) * k],
                    n,
                    &acts,
                    &mut ColumnBlock::whole(&mut short, t, n),
                );
                for ti in 0..t {
                    assert_eq!(
                        short[ti * n..(ti + 1) * n],
                        fast[ti * rows + r0..ti * rows + r0 + n],
                        "{isa}"
                    );
                }
            }
            // Mutation twin: one weight of the last row changed moves that row's outputs only.
            let mut bad = wh.clone();
            bad[(rows - 1) * k] = half::f16::from_f32(wh[(rows - 1) * k].to_f32() + 1.0);
            let mut moved = vec![f32::NAN; rows * t];
            amx::product_rows_f16_on(
                isa,
                &bad,
                rows,
                &acts,
                &mut ColumnBlock::whole(&mut moved, t, rows),
            );
            only_the_last_row_moved(&fast, &moved, &x, (t, rows, k), &format!("{isa}"));
        }
    }
}

#[test]
fn f16_weights_holding_bf16_values_compute_what_bf16_weights_do() {
    // Each weight is widened exactly either way, then the same operations in the same order.
    let (t, rows, k) = (37, 45, 96);
    let x = values(t * k, 41);
    let wb: Vec<bf16> = values(rows * k, 42).iter().map(|&v| bf16::from_f32(v)).collect();
    let wh: Vec<half::f16> = wb.iter().map(|v| half::f16::from_f32(v.to_f32())).collect();
    assert!(wb.iter().zip(&wh).all(|(b, h)| b.to_f32() == h.to_f32()));
    let acts = PackedActivations::pack(&x, t, k, Split::Wide);
    for isa in product_isas() {
        let mut from_bf16 = vec![f32::NAN; rows * t];
        amx::product_rows_on(
            isa,
            &[&wb],
            rows,
            &acts,
            &mut ColumnBlock::whole(&mut from_bf16, t, rows),
        );
        let mut from_f16 = vec![f32::NAN; rows * t];
        amx::product_rows_f16_on(
            isa,
            &wh,
            rows,
            &acts,
            &mut ColumnBlock::whole(&mut from_f16, t, rows),
        );
        assert_eq!(from_bf16, from_f16, "{isa}");
    }
}

#[test]
fn f16_weights_take_the_fma_blocks_on_every_avx512_level() {
    if !Isa::Avx512.is_supported() {
        eprintln!("no AVX-512 on this machine: the FMA blocks not exercised");
        return;
    }
    // What matmul_t computes for f16 weights against f32 activations is the wide f16 product,
    // on AVX-512 and AVX-512 BF16 alike; f32 weights holding the same values take it too.
    let (t, n, k) = (40, 70, 256);
    let x = values(t * k, 43);
    let wh: Vec<half::f16> = values(n * k, 44)
        .iter()
        .map(|&v| half::f16::from_f32(v))
        .collect();
    let wh32: Vec<f32> = wh.iter().map(|v| v.to_f32()).collect();
    let acts = PackedActivations::pack_on(Isa::Avx512, &x, t, k, Split::Wide);
    let mut direct = vec![f32::NAN; n * t];
    amx::product_rows_f16_on(
        Isa::Avx512,
        &wh,
        n,
        &acts,
        &mut ColumnBlock::whole(&mut direct, t, n),
    );
    for isa in [Isa::Avx512, Isa::Avx512Bf16]
        .into_iter()
        .filter(|i| i.is_supported())
    {
        assert_eq!(half_matmul::matmul_t_on(isa, &x, t, &wh, n, k), direct, "{isa}");
        assert_eq!(half_matmul::matmul_t_on(isa, &x, t, &wh32, n, k), direct, "{isa}");
    }
    let slow = half_matmul::matmul_t_slow(&x, t, &wh, n, k);
    assert!(max_diff(&direct, &slow) <= 2e-6 * (k as f32).sqrt() * 4.0);
}
