//! herd-text: everything between text and token ids for Llama 4, with no tensors.
//!
//! - [`Tokenizer`]: Hugging Face `tokenizer.json` or Meta's tiktoken `tokenizer.model`.
//! - [`IncrementalDecoder`]: streaming detokenization that never splits a character.
//! - [`ChatTemplate`]: the model's own Jinja chat template (or the built-in Llama 4 one).
//! - [`tool_calls`]: Llama 4's tool-call formats, parsed whole or while streaming.

pub mod chat;
pub mod detokenizer;
pub mod error;
pub mod gguf_vocab;
pub mod image_layout;
mod pyjson;
pub mod special_tokens;
pub mod tiktoken;
pub mod tokenizer;
pub mod tool_calls;

pub use chat::{ChatTemplate, Message};
pub use detokenizer::IncrementalDecoder;
pub use error::TextError;
pub use gguf_vocab::GgufVocab;
pub use tokenizer::{SpecialTokens, Tokenizer};
