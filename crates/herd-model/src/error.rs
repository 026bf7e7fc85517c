//! The one error type of `herd-model`: every failure names the file, field or tensor involved
//! and the values seen, so a user can act on it without reading the code.

use std::path::PathBuf;

/// Errors from reading a checkpoint or running the model.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot read {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    #[error(transparent)]
    Read(#[from] herd_limits::ReadError),

    #[error("{path}: not valid JSON: {source}")]
    Json {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },

    /// A config field has a value herd does not support or that contradicts another field.
    #[error("config field `{field}`: {message}")]
    Config { field: String, message: String },

    /// A safetensors file (or the shard index) is missing, truncated or corrupt.
    #[error("checkpoint {path}: {message}")]
    Checkpoint { path: PathBuf, message: String },

    #[error("tensor `{name}` is missing from the checkpoint in {dir}")]
    MissingTensor { name: String, dir: PathBuf },

    #[error("tensor `{name}` has shape {actual:?}, expected {expected:?}")]
    TensorShape {
        name: String,
        expected: Vec<usize>,
        actual: Vec<usize>,
    },

    #[error("tensor `{name}` is stored as {dtype}; herd reads {supported}")]
    TensorDtype {
        name: String,
        dtype: String,
        supported: &'static str,
    },

    /// A GGUF file that is malformed, truncated or of a kind herd does not run.
    #[error("GGUF {path}: {message}")]
    Gguf { path: PathBuf, message: String },

    /// A quantized tensor whose shape does not fit its block format, or a failed (de)quantization.
    #[error("quantized tensor `{name}`: {message}")]
    Quantization { name: String, message: String },

    /// A kernel was handed operands it cannot multiply.
    #[error("kernel: {0}")]
    Kernel(String),

    /// A token id that the embedding table does not have.
    #[error("token id {id} at prompt index {index} is out of range for a vocabulary of {vocab_size}")]
    TokenOutOfRange {
        id: u32,
        index: usize,
        vocab_size: usize,
    },

    /// The sequence would grow past the model's context window.
    #[error("sequence of {requested} tokens exceeds the model's context of {max_positions} positions (max_position_embeddings)")]
    ContextOverflow { requested: usize, max_positions: usize },

    /// The prompt's `<|patch|>` tokens and the images' feature rows do not pair up.
    #[error("the prompt has {patch_tokens} <|patch|> tokens but the images give {features} feature rows")]
    ImageTokens { patch_tokens: usize, features: usize },

    /// A layer produced NaN or ±inf (broken weights, or an overflow in a narrow dtype).
    #[error("{what} is not finite at position {position} (NaN or ±inf): the weights are broken or overflow {dtype}")]
    NonFinite {
        what: String,
        position: usize,
        dtype: String,
    },

    /// A KV cache format this model or device cannot store (`--kv-dtype`).
    #[error("KV cache: {0}")]
    KvCache(String),

    #[error("empty input: a forward step needs at least one token")]
    EmptyInput,

    #[error(transparent)]
    Tensor(#[from] candle_core::Error),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub(crate) fn config(field: impl Into<String>, message: impl Into<String>) -> Self {
        Error::Config {
            field: field.into(),
            message: message.into(),
        }
    }
}
