//! Everything that can go wrong in a red-team run, each variant naming what it concerns (the
//! URL, the file and line, the setting).

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum RedteamError {
    #[error("{url} is not a usable base URL: {reason}")]
    BadUrl { url: String, reason: &'static str },
    #[error("{url}: {message}")]
    Transport { url: String, message: String },
    #[error("{url} answered HTTP {status}: {body}")]
    Status { url: String, status: u16, body: String },
    #[error("{url} answered with an unexpected body: {reason}")]
    BadResponse { url: String, reason: String },
    #[error("{path} line {line}: {reason}")]
    GoalLine {
        path: PathBuf,
        line: usize,
        reason: String,
    },
    #[error("{path} holds no goal (one JSON object per line, e.g. {{\"goal\": \"...\"}})")]
    NoGoals { path: PathBuf },
    #[error("{path} holds more than {limit} bytes")]
    TooLarge { path: PathBuf, limit: u64 },
    #[error("transcript {path} line {line}: {reason}")]
    Transcript {
        path: PathBuf,
        line: usize,
        reason: String,
    },
    #[error("transcript {path}: {reason}")]
    TranscriptGoal { path: PathBuf, reason: String },
    /// A model or judge herd runs in this process failed (the message names it).
    #[error("{0}")]
    Local(String),
    #[error("invalid run configuration: {0}")]
    Config(String),
    #[error("cannot draw the report chart: {0}")]
    Chart(String),
    #[error(transparent)]
    Read(#[from] herd_limits::ReadError),
    #[error(transparent)]
    Output(#[from] herd_limits::OutputError),
    #[error("cannot write {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}
