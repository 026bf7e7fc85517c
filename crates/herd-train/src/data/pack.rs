//! Packing samples into training sequences of at most `max_len` tokens.
//!
//! Short samples share a sequence so a step wastes no rows on padding; attention stays inside
//! each sample: a sequence lists its samples' row ranges (`segments`, a block-diagonal causal
//! mask) and positions restart at 0 for each, so a packed sample computes what it would alone.
//!
//! Label shift: row `r`'s logits predict token `r + 1`. A segment's first token is never a
//! target ([`PackedSequence::trained`] is false there), so no row predicts across a boundary;
//! [`PackedSequence::targets`] gives the per-row targets with that already applied.
//!
//! Greedy in file order (deterministic): a sample goes into the current sequence if it fits,
//! else starts the next. A sample longer than `max_len` keeps its first `max_len` tokens and
//! is counted; one left with no trained token is dropped and counted (it would add no loss).

use std::ops::Range;

use super::render::Sample;
use crate::error::{Error, Result};

/// Whether samples share sequences.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Packing {
    /// As many consecutive samples as fit in `max_len`.
    Greedy,
    /// One sample per sequence (`--no-packing`).
    OnePerSequence,
}

/// One training sequence: one or more samples back to back.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PackedSequence {
    pub ids: Vec<u32>,
    /// `trained[r]`: token `r` is a loss target, predicted by row `r - 1` of the same sample.
    /// False at every segment's first row.
    pub trained: Vec<bool>,
    /// RoPE positions: `0..len` within each sample.
    pub positions: Vec<usize>,
    /// Each sample's rows; a row attends only to earlier rows of its own segment.
    pub segments: Vec<Range<usize>>,
    /// The file line of each segment's sample.
    pub lines: Vec<usize>,
}

impl PackedSequence {
    pub fn len(&self) -> usize {
        self.ids.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }

    pub fn n_trained(&self) -> usize {
        self.trained.iter().filter(|&&t| t).count()
    }

    /// Per row, the id its logits are scored against: `ids[r + 1]` where that token is trained
    /// (hence in the same segment), else `None`. The last row has none.
    pub fn targets(&self) -> Vec<Option<u32>> {
        (0..self.ids.len())
            .map(|r| match (self.ids.get(r + 1), self.trained.get(r + 1)) {
                (Some(&id), Some(true)) => Some(id),
                _ => None,
            })
            .collect()
    }

    /// Per row, the index of its segment (rows `i`, `j` may attend when these are equal and
    /// `j <= i`).
    pub fn row_segments(&self) -> Vec<usize> {
        let mut out = Vec::with_capacity(self.ids.len());
        for (k, segment) in self.segments.iter().enumerate() {
            out.extend(std::iter::repeat_n(k, segment.len()));
        }
        out
    }

    fn push(&mut self, line: usize, ids: &[u32], trained: &[bool]) {
        let start = self.ids.len();
        self.ids.extend_from_slice(ids);
        self.trained.extend_from_slice(trained);
        if let Some(first) = self.trained.get_mut(start) {
            *first = false;
        }
        self.positions.extend(0..ids.len());
        self.segments.push(start..self.ids.len());
        self.lines.push(line);
    }
}

/// Samples packed into sequences, with what packing had to change.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Packed {
    pub sequences: Vec<PackedSequence>,
    /// Samples cut to `max_len` tokens.
    pub truncated: usize,
    /// Samples with no trained token within `max_len` (not trained on).
    pub dropped: usize,
}

impl Packed {
    pub fn n_tokens(&self) -> usize {
        self.sequences.iter().map(PackedSequence::len).sum()
    }

    pub fn n_trained(&self) -> usize {
        self.sequences.iter().map(PackedSequence::n_trained).sum()
    }
}

/// Packs `samples` in order into sequences of at most `max_len` tokens (at least 2: a loss
/// needs a token and one before it).
pub fn pack(samples: &[Sample], max_len: usize, packing: Packing) -> Result<Packed> {
    if max_len < 2 {
        return Err(Error::Data(format!(
            "a sequence length of {max_len} holds no loss target (need at least 2 tokens)"
        )));
    }
    let mut packed = Packed::default();
    let mut current = PackedSequence::default();
    for sample in samples {
        let n = sample.ids.len().min(sample.trained.len());
        if n > max_len {
            packed.truncated += 1;
        }
        let n = n.min(max_len);
        let (ids, trained) = (&sample.ids[..n], &sample.trained[..n]);
        if !trained.iter().skip(1).any(|&t| t) {
            packed.dropped += 1;
            continue;
        }
        let fits = packing == Packing::Greedy && current.len() + n <= max_len;
        if !fits && !current.is_empty() {
            packed.sequences.push(std::mem::take(&mut current));
        }
        current.push(sample.line, ids, trained);
    }
    if !current.is_empty() {
        packed.sequences.push(current);
    }
    Ok(packed)
}
