//! Fine-tuning Llama 4 checkpoints on the CPU: LoRA (PEFT's layout, fused experts included) and
//! full fine-tuning, over a differentiable twin of herd-model's forward pass.

pub mod data;
pub mod error;

pub use error::{Error, Result};
pub mod adapter;
pub mod export;
pub mod frozen;
pub mod lora;
pub mod model;
pub mod optim;
pub mod plot;
pub mod trainer;
