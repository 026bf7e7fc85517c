//! herd-redteam's tests: the loop against fake models, parsing, goals, the report from a known
//! transcript, and the HTTP clients against a one-shot local server.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod attacker_parsing;
mod fakes;
mod goals;
mod http_clients;
mod judges;
mod local_server;
mod report;
mod run_loop;

use std::path::PathBuf;

/// A fresh, empty folder for one test.
pub fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("herd-redteam-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}
