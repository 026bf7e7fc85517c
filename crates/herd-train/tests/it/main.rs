//! herd-train integration tests.
#![allow(clippy::unwrap_used)]
mod model;
