//! herd-engine's one integration-test binary.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests may panic: that is how they fail

mod core;
mod generate;
mod guard;
mod image;
mod sampling;
mod video;
