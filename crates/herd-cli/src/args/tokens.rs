//! `--tokens 1,2,3`.

use anyhow::{bail, Result};

/// Parses comma-separated token ids (spaces allowed).
pub fn parse_ids(text: &str) -> Result<Vec<u32>> {
    let ids = text
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| {
            s.parse::<u32>()
                .map_err(|_| anyhow::anyhow!("--tokens: `{s}` is not a token id (expected e.g. 1,2,3)"))
        })
        .collect::<Result<Vec<_>>>()?;
    if ids.is_empty() {
        bail!("--tokens: no token ids given");
    }
    Ok(ids)
}
