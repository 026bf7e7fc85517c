//! CPU kernels herd owns (candle has no product of f32 activations with half-precision
//! weights). Each has a `*_slow` twin, tested to agree on random and odd shapes.

pub mod half_matmul;
pub mod transpose;
