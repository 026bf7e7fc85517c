//! Which keys a query may attend to, as pure functions of absolute positions.
//!
//! Global layers: causal, `k ≤ q`. Chunked (local RoPE) layers: causal *and* in the same
//! absolute-aligned block of `chunk_len` positions, `⌊k/C⌋ = ⌊q/C⌋` — not a sliding window.
//! Deviation from Meta's `generation.py`: the rule holds in decode too (as in transformers), so
//! decoding one token at a time gives the same logits as one full pass.

use std::ops::Range;

/// May the query at absolute position `query` see the key at `key`?
pub fn allowed(query: usize, key: usize, chunk_len: Option<usize>) -> bool {
    key <= query && chunk_len.is_none_or(|c| key / c == query / c)
}

/// Additive mask, row-major [queries, keys]: 0 where allowed, −∞ elsewhere.
pub fn additive_mask(queries: Range<usize>, keys: Range<usize>, chunk_len: Option<usize>) -> Vec<f32> {
    queries
        .flat_map(|q| {
            keys.clone().map(move |k| {
                if allowed(q, k, chunk_len) {
                    0.0
                } else {
                    f32::NEG_INFINITY
                }
            })
        })
        .collect()
}

/// First position of the block that holds `pos`.
pub fn chunk_start(pos: usize, chunk_len: Option<usize>) -> usize {
    chunk_len.map_or(0, |c| pos / c * c)
}

/// Splits a run of query positions into maximal runs inside one block each, so a chunked
/// layer attends block by block and its work grows with T·C, not T².
pub fn chunk_runs(queries: Range<usize>, chunk_len: Option<usize>) -> Vec<Range<usize>> {
    let Some(c) = chunk_len else {
        return vec![queries];
    };
    let mut runs = Vec::new();
    let mut start = queries.start;
    while start < queries.end {
        let end = ((start / c + 1) * c).min(queries.end);
        runs.push(start..end);
        start = end;
    }
    runs
}

/// The query blocks one attention call handles: [`chunk_runs`], each cut into pieces of at
/// most `max_queries`, so a long prefill's score matrix stays [H, max_queries, L] instead of
/// [H, T, L].
pub fn query_blocks(
    queries: Range<usize>,
    chunk_len: Option<usize>,
    max_queries: usize,
) -> Vec<Range<usize>> {
    let max_queries = max_queries.max(1);
    chunk_runs(queries, chunk_len)
        .into_iter()
        .flat_map(|run| {
            (run.start..run.end)
                .step_by(max_queries)
                .map(move |start| start..(start + max_queries).min(run.end))
        })
        .collect()
}
