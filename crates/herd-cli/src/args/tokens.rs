//! `--tokens 1,2,3`.

use anyhow::{bail, Result};

/// Parses comma-separated token ids (spaces allowed; an empty field such as `1,,2` is an
/// error, since it usually means a lost id).
pub fn parse_ids(text: &str) -> Result<Vec<u32>> {
    if text.trim().is_empty() {
        bail!("--tokens: no token ids given");
    }
    let ids = text
        .split(',')
        .map(str::trim)
        .enumerate()
        .map(|(i, s)| {
            if s.is_empty() {
                bail!("--tokens: field {} is empty (expected e.g. 1,2,3)", i + 1);
            }
            s.parse::<u32>()
                .map_err(|_| anyhow::anyhow!("--tokens: `{s}` is not a token id (expected e.g. 1,2,3)"))
        })
        .collect::<Result<Vec<_>>>()?;
    if ids.is_empty() {
        bail!("--tokens: no token ids given");
    }
    Ok(ids)
}
