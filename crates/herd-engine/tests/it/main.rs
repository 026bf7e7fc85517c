//! herd-engine's one integration-test binary.

mod generate;
mod sampling;
