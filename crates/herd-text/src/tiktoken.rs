//! Meta's `tokenizer.model`: 200000 lines of `base64(token bytes) rank`, tiktoken semantics,
//! the o200k-style split pattern, and all 2048 Llama 4 special tokens.
//!
//! Reference: `llama_models/llama4/tokenizer.py`. Its `encode` first cuts the text into
//! 400,000-character pieces and then into runs of at most 25,000 consecutive whitespace or
//! non-whitespace characters (keeps the regex fast); herd does the same, so ids match Meta's
//! even for such inputs (they differ from the HF tokenizer's there, LLAMA4.md §9.9).

// Parses untrusted bytes: no unchecked indexing or arithmetic (a bad header must not panic).
#![deny(clippy::indexing_slicing, clippy::arithmetic_side_effects)]

use std::collections::HashSet;
use std::path::Path;

use base64::Engine;
use rustc_hash::FxHashMap;
use tiktoken_rs::CoreBPE;

use crate::error::TextError;
use crate::special_tokens::{llama4_special_tokens, FIRST_SPECIAL_ID};

/// Llama 4's pre-tokenizer pattern (o200k-style).
pub const LLAMA4_PATTERN: &str = r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+(?i:'s|'t|'re|'ve|'m|'ll|'d)?|[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*(?i:'s|'t|'re|'ve|'m|'ll|'d)?|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+";

const MAX_ENCODE_CHARS: usize = 400_000;
const MAX_NO_WHITESPACES_CHARS: usize = 25_000;

pub struct Tiktoken {
    bpe: CoreBPE,
    special_tokens: Vec<String>,
    n_ranks: usize,
}

impl Tiktoken {
    pub fn load(path: &Path) -> Result<Self, TextError> {
        let text = herd_limits::read_file_to_string(path, herd_limits::FileKind::Tokenizer)?;
        let bad = |message: String| TextError::Tokenizer {
            path: path.to_path_buf(),
            message,
        };
        let mut ranks: FxHashMap<Vec<u8>, u32> = FxHashMap::default();
        let mut seen_ranks = HashSet::new();
        for (line_no, line) in (1usize..).zip(text.lines()).filter(|(_, l)| !l.trim().is_empty()) {
            let mut parts = line.split_whitespace();
            let (Some(token), Some(rank), None) = (parts.next(), parts.next(), parts.next()) else {
                return Err(bad(format!("line {line_no}: expected `base64 rank`")));
            };
            let bytes = base64::engine::general_purpose::STANDARD
                .decode(token)
                .map_err(|e| bad(format!("line {line_no}: {e}")))?;
            let rank: u32 = rank
                .parse()
                .map_err(|_| bad(format!("line {line_no}: rank `{rank}`")))?;
            if !seen_ranks.insert(rank) || ranks.insert(bytes, rank).is_some() {
                return Err(bad(format!("line {line_no}: duplicate token or rank {rank}")));
            }
        }
        let n_ranks = ranks.len();
        if n_ranks == 0 || seen_ranks.iter().any(|&r| r as usize >= n_ranks) {
            return Err(bad(format!("ranks must be 0..{n_ranks} without gaps")));
        }
        if n_ranks as u32 != FIRST_SPECIAL_ID {
            return Err(bad(format!(
                "{n_ranks} ranks; Llama 4's tokenizer.model has {FIRST_SPECIAL_ID}"
            )));
        }
        // Byte-level BPE falls back to single bytes: without all 256 of them some text has no
        // encoding at all (tiktoken would panic on it).
        if let Some(b) = (0..=255u8).find(|b| !ranks.contains_key([*b].as_slice())) {
            return Err(bad(format!(
                "no token for the single byte 0x{b:02x}: a byte-level BPE needs all 256"
            )));
        }
        let special_tokens = llama4_special_tokens();
        let specials: FxHashMap<String, u32> = special_tokens
            .iter()
            .zip(FIRST_SPECIAL_ID..)
            .map(|(s, id)| (s.clone(), id))
            .collect();
        let bpe = CoreBPE::new(ranks, specials, LLAMA4_PATTERN).map_err(|e| bad(e.to_string()))?;
        Ok(Tiktoken {
            bpe,
            special_tokens,
            n_ranks,
        })
    }

    pub fn vocab_size(&self) -> usize {
        self.n_ranks.saturating_add(self.special_tokens.len())
    }

    pub fn special_tokens(&self) -> &[String] {
        &self.special_tokens
    }

    /// Meta's `encode(s, bos=False, eos=False, allowed_special=…)`.
    pub fn encode(&self, text: &str, parse_special: bool) -> Result<Vec<u32>, TextError> {
        let allowed: HashSet<&str> = self.special_tokens.iter().map(String::as_str).collect();
        let mut ids = Vec::new();
        for piece in char_chunks(text, MAX_ENCODE_CHARS) {
            for run in split_long_runs(piece, MAX_NO_WHITESPACES_CHARS) {
                if parse_special {
                    let (run_ids, _) = self
                        .bpe
                        .encode(run, &allowed)
                        .map_err(|e| TextError::Encode(e.to_string()))?;
                    ids.extend(run_ids);
                } else {
                    // No special-token search at all (it costs a 2048-way regex per piece).
                    ids.extend(self.bpe.encode_ordinary(run));
                }
            }
        }
        Ok(ids)
    }

    /// The bytes of one token (a special token's bytes are its text).
    pub fn token_bytes(&self, id: u32) -> Option<Vec<u8>> {
        self.bpe.decode_bytes(&[id]).ok()
    }

    pub fn special_id(&self, token: &str) -> Option<u32> {
        self.special_tokens
            .iter()
            .zip(FIRST_SPECIAL_ID..)
            .find_map(|(s, id)| (s == token).then_some(id))
    }
}

/// Python's `str.isspace`: Unicode White_Space plus the four ASCII information separators.
fn python_isspace(c: char) -> bool {
    c.is_whitespace() || ('\u{1c}'..='\u{1f}').contains(&c)
}

/// Consecutive pieces of at most `max_chars` characters (Python slicing counts code points).
fn char_chunks(text: &str, max_chars: usize) -> Vec<&str> {
    let mut pieces = Vec::new();
    let mut start = 0;
    let mut count: usize = 0;
    for (i, _) in text.char_indices() {
        if count == max_chars {
            pieces.push(&text[start..i]);
            start = i;
            count = 0;
        }
        count = count.saturating_add(1);
    }
    pieces.push(&text[start..]);
    pieces
}

/// Meta's `_split_whitespaces_or_nonwhitespaces`: cuts so that no piece holds more than
/// `max_len` consecutive whitespace or consecutive non-whitespace characters.
fn split_long_runs(text: &str, max_len: usize) -> Vec<&str> {
    let mut pieces = Vec::new();
    let mut run_len: usize = 0;
    let mut run_is_space = text.chars().next().is_some_and(python_isspace);
    let mut start = 0;
    for (i, c) in text.char_indices() {
        let is_space = python_isspace(c);
        if run_is_space != is_space {
            run_len = 1;
            run_is_space = is_space;
        } else {
            run_len = run_len.saturating_add(1);
            if run_len > max_len {
                pieces.push(&text[start..i]);
                start = i;
                run_len = 1;
            }
        }
    }
    pieces.push(&text[start..]);
    pieces
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_runs_are_cut_like_meta() {
        let text = format!("{}{}", "a".repeat(7), " ".repeat(3));
        assert_eq!(split_long_runs(&text, 3), vec!["aaa", "aaa", "a   "]);
        assert_eq!(split_long_runs("", 3), vec![""]);
        assert_eq!(char_chunks("héllo", 2), vec!["hé", "ll", "o"]);
        assert!(python_isspace('\u{1f}') && !'\u{1f}'.is_whitespace());
    }
}
