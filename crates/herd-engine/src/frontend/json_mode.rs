//! JSON mode (`response_format: {"type": "json_object"}`): the reply must be one JSON object.
//! A byte-level pushdown automaton ([`JsonPrefix`]) says whether text is a prefix of valid JSON
//! (RFC 8259); [`JsonConstraint`] allows a token when its bytes keep the reply such a prefix,
//! and calls the reply complete when the top-level object closes.
//!
//! Whitespace between tokens is capped (a model may otherwise pad forever), special tokens are
//! never allowed inside the object, and nesting deeper than 64 levels is refused.

use std::sync::Arc;

use herd_text::Tokenizer;

use crate::constraint::TokenConstraint;

/// Most whitespace bytes in a row outside strings (room for a newline and indentation several
/// levels deep; a model that pads forever is stopped).
const MAX_WHITESPACE_RUN: u8 = 64;
/// Deepest nesting (the container stack is a 64-bit mask).
const MAX_DEPTH: u8 = 64;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// A value must start here (the top level takes only an object).
    Value,
    /// After `{`: a key or `}`.
    KeyOrEnd,
    /// After `,` in an object: a key.
    Key,
    /// After a key: `:`.
    Colon,
    /// After a value inside a container: `,` or its closing bracket.
    CommaOrEnd,
    /// After `[`: a value or `]`.
    ValueOrEnd,
    /// Inside a string. Text must be UTF-8 (RFC 3629): `utf8` continuation bytes are still
    /// due, the next in `lo..=hi` (a lead byte narrows its first continuation).
    String {
        key: bool,
        escape: Escape,
        utf8: u8,
        lo: u8,
        hi: u8,
    },
    Number(Num),
    /// Inside `true`, `false` or `null`: the bytes still to come.
    Literal {
        rest: &'static [u8],
    },
    /// The top-level object closed.
    Done,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Escape {
    None,
    Backslash,
    /// Inside `\uXXXX`: hex digits still to come, the value so far, and whether this escape
    /// must be the low half of a surrogate pair.
    Unicode {
        left: u8,
        value: u16,
        low: bool,
    },
    /// After a high surrogate's escape: its low half must follow (`\` then `u`).
    LowBackslash,
    LowU,
}

/// Where a number is: `-? (0 | [1-9][0-9]*) (. [0-9]+)? ([eE] [+-]? [0-9]+)?`
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Num {
    Minus,
    Zero,
    Int,
    Dot,
    Frac,
    E,
    ESign,
    Exp,
}

impl Num {
    fn can_end(self) -> bool {
        matches!(self, Num::Zero | Num::Int | Num::Frac | Num::Exp)
    }

    fn next(self, b: u8) -> Option<Num> {
        Some(match (self, b) {
            (Num::Minus, b'0') => Num::Zero,
            (Num::Minus, b'1'..=b'9') => Num::Int,
            (Num::Int, b'0'..=b'9') => Num::Int,
            (Num::Zero | Num::Int, b'.') => Num::Dot,
            (Num::Dot | Num::Frac, b'0'..=b'9') => Num::Frac,
            (Num::Zero | Num::Int | Num::Frac, b'e' | b'E') => Num::E,
            (Num::E, b'+' | b'-') => Num::ESign,
            (Num::E | Num::ESign | Num::Exp, b'0'..=b'9') => Num::Exp,
            _ => return None,
        })
    }
}

/// Whether the bytes so far begin a JSON object. `Copy`, so a token can be tried on a copy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct JsonPrefix {
    mode: Mode,
    /// Open containers, innermost in bit `depth - 1`: 1 object, 0 array.
    stack: u64,
    depth: u8,
    whitespace_run: u8,
    /// Digits of the number being read, before and after its exponent mark.
    mantissa_digits: u8,
    exponent_digits: u8,
}

impl Default for JsonPrefix {
    fn default() -> Self {
        Self::new()
    }
}

impl JsonPrefix {
    pub fn new() -> Self {
        JsonPrefix {
            mode: Mode::Value,
            stack: 0,
            depth: 0,
            whitespace_run: 0,
            mantissa_digits: 0,
            exponent_digits: 0,
        }
    }

    /// The top-level object has closed.
    pub fn is_complete(&self) -> bool {
        self.mode == Mode::Done
    }

    /// Feeds bytes; false (and the state is then meaningless) if they cannot continue JSON.
    pub fn feed(&mut self, bytes: &[u8]) -> bool {
        bytes.iter().all(|&b| self.step(b))
    }

    fn in_object(&self) -> bool {
        self.depth > 0 && (self.stack >> (self.depth - 1)) & 1 == 1
    }

    fn push(&mut self, object: bool) -> bool {
        if self.depth >= MAX_DEPTH {
            return false;
        }
        if object {
            self.stack |= 1 << self.depth;
        } else {
            self.stack &= !(1 << self.depth);
        }
        self.depth += 1;
        self.mode = if object { Mode::KeyOrEnd } else { Mode::ValueOrEnd };
        true
    }

    /// Closes the innermost container with `b` (`}` or `]`).
    fn close(&mut self, b: u8) -> bool {
        if self.depth == 0 || (b == b'}') != self.in_object() {
            return false;
        }
        self.depth -= 1;
        self.value_done();
        true
    }

    fn value_done(&mut self) {
        self.mode = if self.depth == 0 {
            Mode::Done
        } else {
            Mode::CommaOrEnd
        };
    }

    /// A value starts with `b` (`top`: only an object may).
    fn start_value(&mut self, b: u8) -> bool {
        let top = self.depth == 0;
        match b {
            b'{' => self.push(true),
            _ if top => false,
            b'[' => self.push(false),
            b'"' => {
                self.mode = Mode::String {
                    key: false,
                    escape: Escape::None,
                    utf8: 0,
                    lo: 0x80,
                    hi: 0xBF,
                };
                true
            }
            b'-' | b'0'..=b'9' => {
                self.exponent_digits = 0;
                self.mantissa_digits = u8::from(b != b'-');
                self.mode = Mode::Number(match b {
                    b'-' => Num::Minus,
                    b'0' => Num::Zero,
                    _ => Num::Int,
                });
                true
            }
            b't' => self.literal(b"rue"),
            b'f' => self.literal(b"alse"),
            b'n' => self.literal(b"ull"),
            _ => false,
        }
    }

    fn literal(&mut self, rest: &'static [u8]) -> bool {
        self.mode = Mode::Literal { rest };
        true
    }

    fn step(&mut self, b: u8) -> bool {
        let whitespace = matches!(b, b' ' | b'\t' | b'\n' | b'\r');
        let in_string = matches!(self.mode, Mode::String { .. });
        if whitespace && !in_string {
            if let Mode::Number(n) = self.mode {
                if !n.can_end() {
                    return false;
                }
                self.value_done();
            }
            if matches!(self.mode, Mode::Literal { .. }) {
                return false;
            }
            self.whitespace_run += 1;
            return self.whitespace_run <= MAX_WHITESPACE_RUN;
        }
        self.whitespace_run = 0;
        match self.mode {
            Mode::Value => self.start_value(b),
            Mode::ValueOrEnd => {
                if b == b']' {
                    self.close(b)
                } else {
                    self.start_value(b)
                }
            }
            Mode::KeyOrEnd | Mode::Key => match b {
                b'"' => {
                    self.mode = Mode::String {
                        key: true,
                        escape: Escape::None,
                        utf8: 0,
                        lo: 0x80,
                        hi: 0xBF,
                    };
                    true
                }
                b'}' if self.mode == Mode::KeyOrEnd => self.close(b),
                _ => false,
            },
            Mode::Colon => {
                if b == b':' {
                    self.mode = Mode::Value;
                }
                b == b':'
            }
            Mode::CommaOrEnd => match b {
                b',' => {
                    self.mode = if self.in_object() { Mode::Key } else { Mode::Value };
                    true
                }
                b'}' | b']' => self.close(b),
                _ => false,
            },
            Mode::String {
                key,
                escape,
                utf8,
                lo,
                hi,
            } => self.string_byte(key, escape, (utf8, lo, hi), b),
            Mode::Number(n) => match n.next(b) {
                Some(next) => {
                    // Numbers every parser reads as a finite f64: at most 30 significant
                    // digits and a two-digit exponent (1e999 is JSON, but serde_json refuses
                    // it and Python reads inf).
                    if b.is_ascii_digit() {
                        let (count, cap) = match next {
                            Num::Exp => (&mut self.exponent_digits, 2),
                            _ => (&mut self.mantissa_digits, 30),
                        };
                        *count += 1;
                        if *count > cap {
                            return false;
                        }
                    }
                    self.mode = Mode::Number(next);
                    true
                }
                None if n.can_end() => {
                    self.value_done();
                    self.step(b)
                }
                None => false,
            },
            Mode::Literal { rest } => match rest.split_first() {
                Some((&want, tail)) if want == b => {
                    if tail.is_empty() {
                        self.value_done();
                    } else {
                        self.mode = Mode::Literal { rest: tail };
                    }
                    true
                }
                _ => false,
            },
            Mode::Done => false,
        }
    }

    fn string_byte(&mut self, key: bool, escape: Escape, (utf8, lo, hi): (u8, u8, u8), b: u8) -> bool {
        let set = |this: &mut Self, escape, (utf8, lo, hi): (u8, u8, u8)| {
            this.mode = Mode::String {
                key,
                escape,
                utf8,
                lo,
                hi,
            };
            true
        };
        if utf8 > 0 {
            // The rest of a multi-byte character.
            if !(lo..=hi).contains(&b) {
                return false;
            }
            return set(self, escape, (utf8 - 1, 0x80, 0xBF));
        }
        let any = (0, 0x80, 0xBF);
        match escape {
            Escape::None => match b {
                b'"' => {
                    if key {
                        self.mode = Mode::Colon;
                    } else {
                        self.value_done();
                    }
                    true
                }
                b'\\' => set(self, Escape::Backslash, any),
                0..=0x1f => false,
                0x20..=0x7f => set(self, Escape::None, any),
                // A lead byte, the continuation bytes it calls for, and the range of the first
                // (no overlong forms, no UTF-16 surrogates, nothing past U+10FFFF).
                0xC2..=0xDF => set(self, Escape::None, (1, 0x80, 0xBF)),
                0xE0 => set(self, Escape::None, (2, 0xA0, 0xBF)),
                0xED => set(self, Escape::None, (2, 0x80, 0x9F)),
                0xE1..=0xEF => set(self, Escape::None, (2, 0x80, 0xBF)),
                0xF0 => set(self, Escape::None, (3, 0x90, 0xBF)),
                0xF1..=0xF3 => set(self, Escape::None, (3, 0x80, 0xBF)),
                0xF4 => set(self, Escape::None, (3, 0x80, 0x8F)),
                _ => false,
            },
            Escape::Backslash => match b {
                b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't' => set(self, Escape::None, any),
                b'u' => set(
                    self,
                    Escape::Unicode {
                        left: 4,
                        value: 0,
                        low: false,
                    },
                    any,
                ),
                _ => false,
            },
            Escape::LowBackslash if b == b'\\' => set(self, Escape::LowU, any),
            Escape::LowU if b == b'u' => set(
                self,
                Escape::Unicode {
                    left: 4,
                    value: 0,
                    low: true,
                },
                any,
            ),
            Escape::LowBackslash | Escape::LowU => false,
            Escape::Unicode { left, value, low } => {
                let Some(digit) = (b as char).to_digit(16) else {
                    return false;
                };
                let value = value << 4 | digit as u16;
                if left > 1 {
                    return set(
                        self,
                        Escape::Unicode {
                            left: left - 1,
                            value,
                            low,
                        },
                        any,
                    );
                }
                // Surrogates come in pairs: a high half, then a low half in the next escape.
                match (low, value) {
                    (false, 0xD800..=0xDBFF) => set(self, Escape::LowBackslash, any),
                    (false, 0xDC00..=0xDFFF) => false,
                    (true, 0xDC00..=0xDFFF) | (false, _) => set(self, Escape::None, any),
                    (true, _) => false,
                }
            }
        }
    }
}

/// Each token's bytes, `None` for tokens JSON mode never allows (special tokens, empty ones):
/// built once per tokenizer and shared by every JSON-mode request.
#[derive(Debug)]
pub struct TokenBytes {
    bytes: Vec<Option<Vec<u8>>>,
}

impl TokenBytes {
    pub fn new(tokenizer: &Tokenizer) -> Self {
        let specials: std::collections::HashSet<u32> = tokenizer
            .special_tokens()
            .iter()
            .filter_map(|t| tokenizer.special_id(t))
            .collect();
        let bytes = (0..tokenizer.vocab_size() as u32)
            .map(|id| {
                if specials.contains(&id) {
                    return None;
                }
                tokenizer.token_bytes(id).ok().filter(|b| !b.is_empty())
            })
            .collect();
        TokenBytes { bytes }
    }

    /// A table from raw byte strings (tests).
    pub fn from_bytes(bytes: Vec<Option<Vec<u8>>>) -> Self {
        TokenBytes { bytes }
    }

    fn get(&self, token: u32) -> Option<&[u8]> {
        self.bytes.get(token as usize)?.as_deref()
    }
}

/// The JSON-object rule over tokens.
#[derive(Debug)]
pub struct JsonConstraint {
    state: JsonPrefix,
    tokens: Arc<TokenBytes>,
}

impl JsonConstraint {
    pub fn new(tokens: Arc<TokenBytes>) -> Self {
        JsonConstraint {
            state: JsonPrefix::new(),
            tokens,
        }
    }
}

impl TokenConstraint for JsonConstraint {
    fn allows(&self, token: u32) -> bool {
        let Some(bytes) = self.tokens.get(token) else {
            return false;
        };
        let mut next = self.state;
        next.feed(bytes)
    }

    fn advance(&mut self, token: u32) {
        if let Some(bytes) = self.tokens.get(token) {
            self.state.feed(bytes);
        }
    }

    fn is_complete(&self) -> bool {
        self.state.is_complete()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn prefix_ok(text: &str) -> bool {
        JsonPrefix::new().feed(text.as_bytes())
    }

    fn complete(text: &str) -> bool {
        let mut p = JsonPrefix::new();
        p.feed(text.as_bytes()) && p.is_complete()
    }

    #[test]
    fn whole_objects_are_complete() {
        for text in [
            "{}",
            r#"{"a": 1}"#,
            r#" {"a": [1, -2.5e+3, 0, true, false, null, "x\"y\\u00e9"], "b": {"c": {}}}"#,
            "{\"k\":\"日本語\"}",
            r#"{"n": -0.0E1}"#,
        ] {
            assert!(complete(text), "{text}");
            assert!(text.parse::<serde_json::Value>().is_ok(), "{text}");
        }
    }

    #[test]
    fn prefixes_are_accepted_and_invalid_text_refused() {
        for text in [
            "{",
            r#"{"a"#,
            r#"{"a": "#,
            r#"{"a": [1, 2"#,
            r#"{"a": tr"#,
            r#"{"a": -"#,
            r#"{"a": 1.5e"#,
            r#"{"a": "\u00"#,
        ] {
            assert!(prefix_ok(text), "{text}");
            assert!(!complete(text), "{text}");
        }
        for text in [
            "[1]",
            "1",
            "\"x\"",
            "{a: 1}",
            r#"{"a" 1}"#,
            r#"{"a": 01}"#,
            r#"{"a": 1.}"#,
            r#"{"a": .5}"#,
            r#"{"a": tru}"#,
            r#"{"a": [1,]"#,
            r#"{"a": 1,}"#,
            r#"{"a": [}"#,
            r#"{"a": "\x"}"#,
            "{\"a\": \"\n\"}",
            "{} {}",
            "{}x",
        ] {
            assert!(!complete(text) || !prefix_ok(text), "{text} passed");
            assert!(!prefix_ok(text), "{text} is not a JSON-object prefix");
        }
        // Numbers stay finite in every parser.
        assert!(complete(r#"{"a": 1e99, "b": 123456789012345678901234567890}"#));
        assert!(!prefix_ok(r#"{"a": 1e999"#));
        assert!(!prefix_ok(r#"{"a": 1234567890123456789012345678901"#));
        // A number ends at whatever may follow it.
        assert!(complete(r#"{"a":1}"#));
        assert!(complete(r#"{"a":[1]}"#));
    }

    #[test]
    fn whitespace_runs_and_depth_are_bounded() {
        assert!(prefix_ok(&format!("{{{}", " ".repeat(64))));
        assert!(!prefix_ok(&format!("{{{}", " ".repeat(65))));
        // Pretty-printed, four levels deep with four-space indentation.
        assert!(complete("{\n    \"a\": {\n        \"b\": {\n            \"c\": {\n                \"d\": 1\n            }\n        }\n    }\n}"));
        assert!(
            prefix_ok(&format!("{{\"a\": \"{}\"", " ".repeat(100))),
            "inside strings anything goes"
        );
        let deep = format!("{{\"a\":{}", "[".repeat(63));
        assert!(prefix_ok(&deep));
        assert!(!prefix_ok(&format!("{deep}[")));
    }

    #[test]
    fn strings_must_be_utf8() {
        let bytes = |b: &[u8]| {
            let mut p = JsonPrefix::new();
            p.feed(b) && p.is_complete()
        };
        assert!(bytes("{\"k\": \"é日😀\"}".as_bytes()));
        for bad in [
            &b"{\"k\": \"\x80\"}"[..], // a stray continuation byte
            b"{\"k\": \"\xff\"}",      // never in UTF-8
            b"{\"k\": \"\xc3\"}",      // a lead byte cut short by the quote
            b"{\"k\": \"\xe6\x97a\"}", // … or by ASCII
            b"{\"k\": \"\xc0\xaf\"}",  // an overlong lead
        ] {
            assert!(!bytes(bad), "{bad:?}");
        }
        assert!(bytes(b"{\"k\": \"\\ud83d\\ude00 \\u00e9\"}"), "a surrogate pair");
        // A character split across tokens is fine.
        let mut p = JsonPrefix::new();
        assert!(p.feed(b"{\"k\": \"\xe6\x97"));
        assert!(p.feed(b"\xa5\"}") && p.is_complete());
    }

    #[test]
    fn the_constraint_allows_tokens_that_keep_a_prefix() {
        let table = TokenBytes::from_bytes(vec![
            Some(b"{".to_vec()),
            Some(b"\"a\"".to_vec()),
            Some(b": 1".to_vec()),
            Some(b"}".to_vec()),
            None, // a special token
            Some(b"x".to_vec()),
        ]);
        let mut c = JsonConstraint::new(Arc::new(table));
        assert_eq!((0..6).filter(|&t| c.allows(t)).collect::<Vec<_>>(), [0]);
        for t in [0, 1, 2] {
            c.advance(t);
        }
        assert!(c.allows(3) && !c.allows(5) && !c.allows(4) && !c.allows(0));
        c.advance(3);
        assert!(c.is_complete());
    }
}
