//! Deterministic randomness over examples: the validation split and each epoch's order.
//!
//! Both come from ChaCha8 seeded with the run's seed, on separate streams (stream 0 the split,
//! stream `epoch + 1` an epoch's order), through a Fisher–Yates shuffle written here on raw
//! `next_u64` output: ChaCha8's stream is fixed by its specification, while `rand`'s shuffle
//! and range helpers may change between versions — and a resumed run, perhaps on a newer
//! herd, must see the same split and the same order.

use rand_chacha::rand_core::{RngCore, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::error::{Error, Result};

/// Splits `items` into (train, validation) with `val_fraction` (in `[0, 1)`) of them, rounded,
/// in validation — at least one when the fraction is above 0 and there are 2 or more items,
/// and never all of them. Both parts keep the items' order.
pub fn split_validation<T>(items: Vec<T>, val_fraction: f64, seed: u64) -> Result<(Vec<T>, Vec<T>)> {
    if !(0.0..1.0).contains(&val_fraction) {
        return Err(Error::Data(format!(
            "the validation fraction must be at least 0 and below 1, not {val_fraction}"
        )));
    }
    let n = items.len();
    let n_val = if val_fraction > 0.0 && n >= 2 {
        ((val_fraction * n as f64).round() as usize).clamp(1, n - 1)
    } else {
        0
    };
    let mut in_validation = vec![false; n];
    for &i in &permutation(n, &mut rng(seed, 0))[..n_val] {
        in_validation[i] = true;
    }
    let mut train = Vec::with_capacity(n - n_val);
    let mut validation = Vec::with_capacity(n_val);
    for (item, is_val) in items.into_iter().zip(in_validation) {
        if is_val {
            validation.push(item);
        } else {
            train.push(item);
        }
    }
    Ok((train, validation))
}

/// The order in which epoch `epoch` (from 0) visits `n` items: a permutation of `0..n` fixed by
/// `seed` and `epoch`.
pub fn epoch_order(n: usize, seed: u64, epoch: u64) -> Vec<usize> {
    permutation(n, &mut rng(seed, epoch.wrapping_add(1)))
}

fn rng(seed: u64, stream: u64) -> ChaCha8Rng {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    rng.set_stream(stream);
    rng
}

/// Fisher–Yates over `0..n`.
fn permutation(n: usize, rng: &mut ChaCha8Rng) -> Vec<usize> {
    let mut order: Vec<usize> = (0..n).collect();
    for i in (1..n).rev() {
        let j = below(rng, i as u64 + 1) as usize;
        order.swap(i, j);
    }
    order
}

/// A uniform draw from `0..bound` (`bound > 0`): values below `2^64 mod bound` are rejected so
/// every residue is equally likely.
fn below(rng: &mut ChaCha8Rng, bound: u64) -> u64 {
    let threshold = bound.wrapping_neg() % bound;
    loop {
        let x = rng.next_u64();
        if x >= threshold {
            return x % bound;
        }
    }
}
