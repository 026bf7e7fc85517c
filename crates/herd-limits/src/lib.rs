//! herd-limits: how much untrusted input herd accepts, as one typed policy, and the file reads
//! that enforce it.
//!
//! herd reads files and requests made by strangers: checkpoints, GGUFs, tokenizers and chat
//! templates from the Hub, images and prompts from users. Every such read goes through
//! [`read_file`] (regular files only, at most the kind's byte limit) and every unbounded
//! computation on their contents (template rendering, decompression, nested parsing) checks
//! the matching field of [`Limits`]. What herd writes goes through [`write_output`], which
//! never replaces a device, a link or one of the command's own inputs. The defaults fit every
//! published Llama 4 checkpoint with room to spare; `herd --limit NAME=VALUE` raises (or
//! lowers) any of them.

// Parses untrusted bytes: no unchecked indexing or arithmetic (a bad header must not panic).
#![deny(clippy::indexing_slicing, clippy::arithmetic_side_effects)]

mod contain;
mod file;
mod output;
mod policy;

pub use contain::catch_panic;
pub use file::{exists, open_regular, read_capped, read_file, read_file_to_string, FileKind, ReadError};
pub use output::{check_output, create_output_file, write_output, OutputError};
pub use policy::{LimitParseError, Limits, LIMIT_NAMES};
