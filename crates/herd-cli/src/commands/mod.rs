//! One file per `herd` command, plus what they share.

pub mod chat;
pub mod generate;
pub mod images;
pub mod inspect;
pub mod logits;
pub mod preprocess;
pub mod render;
pub mod stream;
pub mod text;
pub mod tokenize;
