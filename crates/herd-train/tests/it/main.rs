//! herd-train integration tests.
