//! The one error type of `herd-engine`.

#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// A sampling or generation parameter outside its valid range.
    #[error("invalid parameter `{field}`: {message}")]
    InvalidParameter { field: &'static str, message: String },

    #[error("empty prompt: generation needs at least one token")]
    EmptyPrompt,

    /// The prompt alone fills the context: nothing could be generated.
    #[error("the prompt has {prompt_tokens} tokens; the model's context holds {max_positions}")]
    PromptTooLong {
        prompt_tokens: usize,
        max_positions: usize,
    },

    /// A request whose KV cache could never fit the server's memory budget.
    #[error("the request needs {needed_bytes} bytes of KV cache at its longest; the budget is {budget_bytes} (shorten the prompt or max_tokens)")]
    DoesNotFit {
        needed_bytes: usize,
        budget_bytes: usize,
    },

    /// The model produced NaN or +inf logits: its weights are broken (or overflow the dtype).
    #[error("the logits at position {position} are not finite (NaN or +inf): the model's weights are broken or overflow its dtype; `TextModel::set_check_finite` (herd's --check-finite) names the first layer at fault")]
    NonFiniteLogits { position: usize },

    /// A checkpoint's text or image side that cannot be used, or a request's images.
    #[error("{0}")]
    Frontend(String),

    #[error(transparent)]
    Text(#[from] herd_text::TextError),

    #[error(transparent)]
    Image(#[from] crate::image::ImageError),

    #[error(transparent)]
    Model(#[from] herd_model::Error),
}
