//! The one error type of `herd-engine`.

#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// A sampling or generation parameter outside its valid range.
    #[error("invalid parameter `{field}`: {message}")]
    InvalidParameter { field: &'static str, message: String },

    #[error("empty prompt: generation needs at least one token")]
    EmptyPrompt,

    #[error(transparent)]
    Model(#[from] herd_model::Error),
}
