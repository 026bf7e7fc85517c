//! The Llama 4 text decoder.

pub mod attention;
pub mod feed_forward;
pub mod layer;
pub mod mask;
pub mod model;
pub mod moe;

pub use attention::Attention;
pub use feed_forward::FeedForward;
pub use layer::DecoderLayer;
pub use model::TextModel;
