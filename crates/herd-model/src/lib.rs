//! herd-model: Llama 4 as the reference computes it.
//!
//! [`ModelConfig`] resolves `config.json` into one [`config::LayerPlan`] per layer;
//! [`WeightSource`] reads safetensors folders (and GGUF files) keeping each weight's stored
//! format; [`TextModel`] runs the decoder over a flat
//! axis of tokens with a [`KvCache`]. See `../shared/design/LLAMA4.md` for the maths.

pub mod checkpoint;
pub mod config;
#[cfg(feature = "cuda")]
pub mod cuda;
pub mod device;
pub mod error;
pub mod generation_config;
pub mod heap;
pub mod inspect;
pub mod json_file;
pub mod kernels;
pub mod kv_cache;
pub mod nn;
pub mod quantize;
pub mod step;
pub mod synth;
pub mod text;
pub mod vision;
pub mod weights;

pub use checkpoint::Checkpoint;
pub use config::ModelConfig;
pub use error::{Error, Result};
pub use generation_config::GenerationConfig;
pub use kv_cache::{KvCache, KvFormat};
pub use text::model::{BatchItem, LoadOptions, LogitsFor, TextModel};
pub use weights::{QuantType, WeightSource};
