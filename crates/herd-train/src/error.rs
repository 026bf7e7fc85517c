use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
    #[error(transparent)]
    Model(#[from] herd_model::Error),
    #[error(transparent)]
    Engine(#[from] herd_engine::EngineError),
    #[error(transparent)]
    Text(#[from] herd_text::TextError),
    #[error(transparent)]
    Limits(#[from] herd_limits::ReadError),
    #[error(transparent)]
    Output(#[from] herd_limits::OutputError),
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{0}")]
    Data(String),
    /// A training or validation file none of whose lines gives an example; `detail` names
    /// the first bad lines.
    #[error("{path}: no usable example{detail}")]
    NoExamples { path: PathBuf, detail: String },
    #[error("{0}")]
    Adapter(String),
    #[error("{0}")]
    Config(String),
    #[error("{0}")]
    Checkpoint(String),
}

pub type Result<T> = std::result::Result<T, Error>;
