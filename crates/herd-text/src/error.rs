//! The one error type of `herd-text`.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum TextError {
    #[error("cannot read {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    #[error(transparent)]
    Read(#[from] herd_limits::ReadError),

    /// A tokenizer file that cannot be used.
    #[error("tokenizer {path}: {message}")]
    Tokenizer { path: PathBuf, message: String },

    #[error("no tokenizer in {dir}: expected tokenizer.json or tokenizer.model")]
    NoTokenizer { dir: PathBuf },

    #[error("token id {id} is not in the vocabulary ({vocab_size} ids)")]
    UnknownId { id: u32, vocab_size: usize },

    #[error("tokenization failed: {0}")]
    Encode(String),

    #[error("chat template: {0}")]
    Template(String),

    #[error("chat messages: {0}")]
    Messages(String),
}
