//! One file per `herd` command.

pub mod generate;
pub mod inspect;
pub mod logits;
