//! herd-train integration tests.
#![allow(clippy::unwrap_used)]
mod data;
mod model;
mod peft;
mod trainer;
