//! herd's own CUDA kernels: `build.rs` compiles `src/cuda/*.cu` to PTX with nvcc, the PTX is
//! embedded here and loaded into the device's context on first use.

mod gemv;

pub use gemv::{gemv, kernels_enabled};
