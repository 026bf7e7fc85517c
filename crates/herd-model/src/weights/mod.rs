//! Where weights come from and how they are held: a [`WeightSource`] (a Hugging Face
//! safetensors folder or a GGUF file) hands out tensors by their Hugging Face names in their
//! stored format ([`Stored`]); the [`Weights`] view turns them into model parts (`Linear`,
//! `Embedding`, experts), quantizing at load when a [`QuantPlan`] says so.

pub mod device_quant;
pub mod fp8;
pub mod gguf;
pub mod gguf_llama4;
pub mod gguf_vocab;
pub mod gguf_writer;
pub mod iquant;
pub mod kquant;
pub mod plan;
pub mod quant;
pub mod safetensors;
pub mod source;
pub mod tensors;
pub mod view;

pub use plan::QuantPlan;
pub use quant::{QuantTensor, QuantType};
pub use source::{Stored, StoredFormat, WeightSource};
pub use view::Weights;
