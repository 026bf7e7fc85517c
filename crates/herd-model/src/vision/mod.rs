//! Llama 4's vision side (LLAMA4.md §4–§5): each 336-px tile (tiles are independent batch
//! items) → patch embedding → class token appended LAST → positional embedding → pre-norm
//! encoder with 2-D RoPE → post-norm, class token dropped → pixel shuffle (4 patches → 1
//! token) → adapter MLP (GELU after both layers) → `multi_modal_projector` into the text
//! model's width. [`fusion`] puts the rows in place of the prompt's `<|patch|>` embeddings.
//!
//! Shapes: N tiles, S tile side, G = S / patch patches per side, P = G² patches, C vision
//! width, Dv = C / ratio² shuffled width, D text width.

pub mod config;
pub mod encoder;
pub mod fusion;
pub mod model;
pub mod pixel_shuffle;
pub mod rope2d;

pub use config::VisionConfig;
pub use model::VisionModel;
