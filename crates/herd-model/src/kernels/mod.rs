//! CPU kernels herd owns: products of f32 activations with weights in their stored format
//! (bf16/f16/f32 widened in registers, ggml blocks against 8-bit activations), each built per
//! instruction set ([`isa::Isa`]) beside a slow twin, tested to agree on random and odd shapes
//! on every path this CPU has.

pub mod amx;
pub mod causal_attention;
pub mod decode_attention;
pub mod dequantize;
pub mod dpbf16;
pub mod fma_blocks;
pub mod full_attention;
pub mod gelu;
pub mod half_matmul;
pub mod isa;
pub mod kv_q8;
pub mod layer_norm;
pub mod q8_activations;
pub mod quant_dot;
pub mod quant_gemm;
pub mod quant_matmul;
pub mod rms_norm;
pub mod row_split;
pub mod transpose;
pub mod transposed_matmul;
