//! One file per `herd` command, plus what they share.

pub mod bandwidth;
pub mod bench;
pub mod chat;
pub mod finetune;
pub mod generate;
pub mod inspect;
pub mod logits;
pub mod merge;
pub mod moderate;
pub mod preprocess;
pub mod quantize;
pub mod redteam;
pub mod redteam_local;
pub mod render;
pub mod serve;
pub mod stream;
pub mod synth;
pub mod tokenize;
