//! herd-server integration tests.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod adapters;
mod api;
mod guard;
mod support;
mod video;
