//! herd-text's one integration-test binary.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests may panic: that is how they fail

mod chat;
mod detokenizer;
mod hostile;
mod tokenizer;
mod tool_calls;

use std::path::PathBuf;
use std::sync::OnceLock;

use herd_text::Tokenizer;

pub fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../fixtures")
}

/// Meta's `tokenizer.model` (loaded once per test binary: it takes a moment).
pub fn meta() -> &'static Tokenizer {
    static T: OnceLock<Tokenizer> = OnceLock::new();
    T.get_or_init(|| Tokenizer::from_file(&fixtures().join("tokenizer/tokenizer.model")).unwrap())
}

/// The Hugging Face `tokenizer.json` converted from it.
pub fn hf() -> &'static Tokenizer {
    static T: OnceLock<Tokenizer> = OnceLock::new();
    T.get_or_init(|| Tokenizer::from_file(&fixtures().join("tokenizer/tokenizer.json.gz")).unwrap())
}
