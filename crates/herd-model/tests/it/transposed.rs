//! `g W` (the backward product of `x Wᵀ`) against its slow twin, on odd shapes and every
//! stored dtype, with a mutation twin.

use half::{bf16, f16};
use herd_model::kernels::half_matmul::HalfElement;
use herd_model::kernels::transposed_matmul::{matmul_n, matmul_n_slow, COLS_PER_TASK, ROW_CHUNK};

fn random(n: usize, seed: u64) -> Vec<f32> {
    super::weights::values(n, seed)
}

fn check<W: HalfElement>(convert: impl Fn(f32) -> W, name: &str) {
    // Shapes around the chunk sizes: one partial column block, several row chunks, t = 1.
    let shapes = [
        (1, 1, 1),
        (3, 7, 5),
        (17, ROW_CHUNK + 3, COLS_PER_TASK + 9),
        (1, 2 * ROW_CHUNK + 1, 2 * COLS_PER_TASK),
        (40, 96, 64),
        (5, 0, 8),
    ];
    for (i, &(t, n, k)) in shapes.iter().enumerate() {
        let g = random(t * n, 10 + i as u64);
        let w: Vec<W> = random(n * k, 20 + i as u64).into_iter().map(&convert).collect();
        let fast = matmul_n(&g, t, &w, n, k);
        let slow = matmul_n_slow(&g, t, &w, n, k);
        assert_eq!(fast.len(), t * k);
        let bound = 1e-5 * (n as f32).max(1.0);
        for (j, (a, b)) in fast.iter().zip(&slow).enumerate() {
            assert!((a - b).abs() <= bound, "{name} {t}x{n}x{k} at {j}: {a} vs {b}");
        }
    }
}

#[test]
fn transposed_product_matches_its_slow_twin_for_every_stored_dtype() {
    check(bf16::from_f32, "bf16");
    check(f16::from_f32, "f16");
    check(|x| x, "f32");
}

#[test]
fn transposed_product_is_not_the_plain_product() {
    // Mutation twin: g Wᵀ (a square W read the other way) differs.
    let (t, n) = (3, 9);
    let g = random(t * n, 1);
    let w = random(n * n, 2);
    let fast = matmul_n(&g, t, &w, n, n);
    let wrong = herd_model::kernels::half_matmul::matmul_t_slow(&g, t, &w, n, n);
    assert!(fast.iter().zip(&wrong).any(|(a, b)| (a - b).abs() > 1e-3));
}

#[test]
fn transposed_product_does_not_depend_on_the_thread_split() {
    // The same call twice gives the same bits (fixed chunking, per-task panels).
    let (t, n, k) = (6, 700, 300);
    let g = random(t * n, 3);
    let w: Vec<bf16> = random(n * k, 4).into_iter().map(bf16::from_f32).collect();
    assert_eq!(matmul_n(&g, t, &w, n, k), matmul_n(&g, t, &w, n, k));
}
