//! A reply's text as its tokens arrive: incremental detokenization (no split UTF-8 characters),
//! then stop strings — the text ends before the first stop string, which is not emitted, and
//! text that might be the start of one is held back until it is known not to be.

use herd_text::{IncrementalDecoder, Tokenizer};

use crate::error::EngineError;

/// Text to emit after one token, and whether a stop string ended the reply.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Delta {
    pub text: String,
    pub stopped: bool,
}

#[derive(Debug, Default)]
pub struct OutputText {
    decoder: IncrementalDecoder,
    stop: StopStrings,
    /// Decoded text not yet emitted (it may begin a stop string).
    held: String,
    stopped: bool,
}

/// A request's stop strings with their KMP tables, made once and shared by its choices (each
/// table is four bytes a stop byte; a request may make 1024 choices).
#[derive(Debug, Clone, Default)]
pub struct StopStrings(std::sync::Arc<[Stop]>);

#[derive(Debug)]
struct Stop {
    text: String,
    /// The prefix function (KMP's failure links): `fail[i]` is the length of the longest proper
    /// prefix of `text[..=i]` that is also its suffix.
    fail: Vec<u32>,
}

impl StopStrings {
    /// Empty stop strings are ignored.
    pub fn new(stop: &[String]) -> Self {
        StopStrings(
            stop.iter()
                .filter(|s| !s.is_empty())
                .map(|s| Stop {
                    text: s.clone(),
                    fail: prefix_function(s.as_bytes()),
                })
                .collect(),
        )
    }
}

impl OutputText {
    /// Empty stop strings are ignored.
    pub fn new(stop: &[String]) -> Self {
        Self::with_stops(StopStrings::new(stop))
    }

    /// Over stop strings made once for several replies.
    pub fn with_stops(stop: StopStrings) -> Self {
        OutputText {
            decoder: IncrementalDecoder::new(),
            stop,
            held: String::new(),
            stopped: false,
        }
    }

    pub fn stopped(&self) -> bool {
        self.stopped
    }

    /// Adds one token.
    pub fn push(&mut self, tokenizer: &Tokenizer, id: u32) -> Result<Delta, EngineError> {
        if self.stopped {
            return Ok(Delta {
                text: String::new(),
                stopped: true,
            });
        }
        let piece = self.decoder.push(tokenizer, id)?;
        Ok(self.push_text(&piece))
    }

    /// Adds decoded text (what [`Self::push`] does after detokenizing).
    pub fn push_text(&mut self, piece: &str) -> Delta {
        if self.stopped {
            return Delta {
                text: String::new(),
                stopped: true,
            };
        }
        self.held.push_str(piece);
        if let Some(at) = self.first_stop() {
            self.stopped = true;
            let text = self.held[..at].to_string();
            self.held.clear();
            return Delta { text, stopped: true };
        }
        let keep = self.partial_stop_len();
        let emit = self.held.len() - keep;
        let text: String = self.held.drain(..emit).collect();
        Delta { text, stopped: false }
    }

    /// Ends the reply: whatever is still held (an incomplete character decodes lossily).
    pub fn finish(&mut self) -> String {
        if self.stopped {
            return String::new();
        }
        let rest = self.decoder.finish();
        let delta = self.push_text(&rest);
        if delta.stopped {
            return delta.text;
        }
        let mut out = delta.text;
        out.push_str(&std::mem::take(&mut self.held));
        out
    }

    /// Byte offset in `held` of the earliest stop string.
    fn first_stop(&self) -> Option<usize> {
        self.stop
            .0
            .iter()
            .filter_map(|s| self.held.find(s.text.as_str()))
            .min()
    }

    /// Length of the longest suffix of `held` that is a proper prefix of a stop string. A
    /// KMP pass over the last `len − 1` bytes per stop string: linear in its length, where
    /// trying every suffix was quadratic (a stop string thousands of bytes long cost millions
    /// of comparisons a token). The suffix starts on a character boundary, as the stop
    /// string's first byte does.
    fn partial_stop_len(&self) -> usize {
        self.stop
            .0
            .iter()
            .map(|Stop { text, fail }| {
                let stop = text.as_bytes();
                let held = self.held.as_bytes();
                let tail = &held[held.len().saturating_sub(stop.len() - 1)..];
                let mut matched = 0;
                for &b in tail {
                    while matched > 0 && stop[matched] != b {
                        matched = fail[matched - 1] as usize;
                    }
                    if stop[matched] == b {
                        matched += 1;
                    }
                }
                matched
            })
            .max()
            .unwrap_or(0)
    }

    /// [`Self::partial_stop_len`]'s slow twin: every suffix tried, longest first.
    #[cfg(test)]
    fn partial_stop_len_slow(&self) -> usize {
        let mut keep = 0;
        for stop in self.stop.0.iter().map(|s| &s.text) {
            let longest = stop.len().saturating_sub(1).min(self.held.len());
            for n in (keep + 1..=longest).rev() {
                let start = self.held.len() - n;
                if self.held.is_char_boundary(start) && stop.starts_with(&self.held[start..]) {
                    keep = n;
                    break;
                }
            }
        }
        keep
    }
}

/// KMP's prefix function of `p`: for each i, the length of the longest proper prefix of
/// `p[..=i]` that is also a suffix of it.
fn prefix_function(p: &[u8]) -> Vec<u32> {
    let mut fail = vec![0u32; p.len()];
    let mut k = 0usize;
    for i in 1..p.len() {
        while k > 0 && p[i] != p[k] {
            k = fail[k - 1] as usize;
        }
        if p[i] == p[k] {
            k += 1;
        }
        // k < p.len(); a stop string past 4 GiB is not a thing a request can hold.
        fail[i] = u32::try_from(k).unwrap_or(u32::MAX);
    }
    fail
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(stop: &[&str], pieces: &[&str]) -> (Vec<String>, bool, String) {
        let stop: Vec<String> = stop.iter().map(|s| s.to_string()).collect();
        let mut out = OutputText::new(&stop);
        let mut emitted = Vec::new();
        let mut stopped = false;
        for p in pieces {
            let d = out.push_text(p);
            emitted.push(d.text);
            if d.stopped {
                stopped = true;
                break;
            }
        }
        let rest = out.finish();
        (emitted, stopped, rest)
    }

    /// The KMP pass finds what trying every suffix finds: self-overlapping stop strings
    /// ("aab" after "aaa"), several at once, multi-byte characters, every tail of every text.
    #[test]
    fn partial_stop_len_agrees_with_its_slow_twin() {
        let stops = ["aab", "abab", "ababc", "é!", "xé", "a", "ééé", "aaaa", "<|eot|>"];
        let texts = [
            "", "a", "aa", "aaa", "abab", "ababab", "xé", "é", "éé", "ab<|eo", "<|", "zzaba",
        ];
        for (i, first) in stops.iter().enumerate() {
            for second in &stops[i..] {
                let stop = vec![first.to_string(), second.to_string()];
                for text in texts {
                    let mut out = OutputText::new(&stop);
                    out.held = text.to_string();
                    if out.first_stop().is_some() {
                        continue;
                    }
                    assert_eq!(
                        out.partial_stop_len(),
                        out.partial_stop_len_slow(),
                        "{stop:?} after {text:?}"
                    );
                }
            }
        }
        let mut out = OutputText::new(&["aab".to_string()]);
        out.held = "xaaa".into();
        assert_eq!(out.partial_stop_len(), 2);
    }

    #[test]
    fn a_stop_string_split_across_tokens_ends_the_text_before_it() {
        let (emitted, stopped, rest) = run(&["END"], &["hello E", "N", "D and more"]);
        assert!(stopped);
        assert_eq!(emitted.concat(), "hello ");
        // "E" was held back while it could still start the stop string.
        assert_eq!(emitted[0], "hello ");
        assert_eq!(rest, "");
    }

    #[test]
    fn a_false_start_is_released_and_the_earliest_stop_wins() {
        let (emitted, stopped, _) = run(&["ab", "x"], &["a", "c", "zzab x"]);
        assert!(stopped);
        assert_eq!(emitted.concat(), "aczz");
        let (emitted, stopped, rest) = run(&["STOP"], &["no ST", "AY"]);
        assert!(!stopped);
        assert_eq!(emitted, ["no ", "STAY"]);
        assert_eq!(rest, "");
        // Held text comes out at the end.
        let (emitted, _, rest) = run(&["STOP"], &["tail ST"]);
        assert_eq!((emitted.concat(), rest.as_str()), ("tail ".to_string(), "ST"));
    }

    #[test]
    fn multibyte_text_is_never_split_and_empty_stops_are_ignored() {
        let (emitted, stopped, rest) = run(&["", "日本語"], &["こんにちは日", "本"]);
        assert!(!stopped);
        assert_eq!(emitted.concat() + &rest, "こんにちは日本");
        let (emitted, stopped, _) = run(&["本語"], &["日本", "語です"]);
        assert!(stopped);
        assert_eq!(emitted.concat(), "日");
    }
}
