//! Tool calls as Llama 4 writes them, parsed into a name and JSON arguments:
//!
//! - pythonic: `[get_weather(city="Paris"), f(x=1)]` (Llama 4's own format);
//! - JSON: `{"name": "f", "parameters": {...}}` (the HF template's format; `arguments` and a
//!   `"type": "function"` field are accepted too), several separated by `;` or newlines, or a
//!   JSON list of them;
//!
//! optionally inside `<|python_start|>…<|python_end|>` (the HF template puts the JSON after
//! `<|python_end|>`), optionally after leading prose, ending the message (`<|eot|>`/`<|eom|>`
//! are cut). Anything that does not parse completely stays plain text: never an error, never
//! a panic. [`StreamParser`] does the same on a stream, passing prose through as it arrives.

// Parses untrusted bytes: no unchecked indexing or arithmetic (a bad header must not panic).
#![deny(clippy::indexing_slicing, clippy::arithmetic_side_effects)]

use serde::{Deserialize, Serialize};
use serde_json::{Map, Number, Value};

use crate::special_tokens::{EOM, EOT, PYTHON_END, PYTHON_START};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ToolCall {
    pub name: String,
    /// Always a JSON object.
    pub arguments: Value,
}

/// A finished assistant message: prose plus the calls it makes.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct ParsedMessage {
    pub content: String,
    pub tool_calls: Vec<ToolCall>,
}

/// Parses a whole assistant message.
pub fn parse(text: &str) -> ParsedMessage {
    let text = cut_at_end_of_turn(text);
    if let Some(start) = text.find(PYTHON_START) {
        let prose = text[..start].trim_end();
        let inner = text
            .get(start.saturating_add(PYTHON_START.len())..)
            .unwrap_or_default();
        let (block, after) = inner.split_once(PYTHON_END).unwrap_or((inner, ""));
        let mut calls = Vec::new();
        for segment in [block, after] {
            if segment.trim().is_empty() {
                continue;
            }
            match parse_calls(segment.trim()) {
                Some(c) => calls.extend(c),
                None => return plain(text),
            }
        }
        if calls.is_empty() {
            return plain(text);
        }
        return ParsedMessage {
            content: prose.to_string(),
            tool_calls: calls,
        };
    }
    // The calls are the message's tail: try each `[` / `{` from the left.
    for (at, c) in text.char_indices() {
        if c != '[' && c != '{' {
            continue;
        }
        if let Some(calls) = parse_calls(text[at..].trim()) {
            return ParsedMessage {
                content: text[..at].trim_end().to_string(),
                tool_calls: calls,
            };
        }
    }
    plain(text)
}

fn plain(text: &str) -> ParsedMessage {
    ParsedMessage {
        content: text.to_string(),
        tool_calls: Vec::new(),
    }
}

fn cut_at_end_of_turn(text: &str) -> &str {
    let end = [EOT, EOM]
        .iter()
        .filter_map(|t| text.find(t))
        .min()
        .unwrap_or(text.len());
    &text[..end]
}

/// The whole of `text` as one or more calls, or None.
fn parse_calls(text: &str) -> Option<Vec<ToolCall>> {
    if text.starts_with('[') {
        if let Some(calls) = parse_pythonic(text) {
            return Some(calls);
        }
    }
    parse_json_calls(text)
}

fn parse_json_calls(text: &str) -> Option<Vec<ToolCall>> {
    // One value, or several separated by whitespace; failing that, separated by `;`.
    json_values(text).or_else(|| {
        let mut calls = Vec::new();
        for piece in text.split(';').map(str::trim).filter(|p| !p.is_empty()) {
            calls.extend(json_values(piece)?);
        }
        (!calls.is_empty()).then_some(calls)
    })
}

fn json_values(text: &str) -> Option<Vec<ToolCall>> {
    let mut calls = Vec::new();
    for value in serde_json::Deserializer::from_str(text).into_iter::<Value>() {
        match value.ok()? {
            Value::Array(items) => {
                for v in items {
                    calls.push(json_call(v)?);
                }
            }
            v => calls.push(json_call(v)?),
        }
    }
    (!calls.is_empty()).then_some(calls)
}

fn json_call(v: Value) -> Option<ToolCall> {
    let Value::Object(mut map) = v else {
        return None;
    };
    let name = match map.remove("name")? {
        Value::String(s) if is_identifier(&s) => s,
        _ => return None,
    };
    if let Some(t) = map.remove("type") {
        if t != Value::String("function".into()) {
            return None;
        }
    }
    let arguments = map
        .remove("parameters")
        .or_else(|| map.remove("arguments"))
        .unwrap_or(Value::Object(Map::new()));
    let arguments = match arguments {
        Value::Object(_) => arguments,
        // Some models write the arguments as a JSON string.
        Value::String(s) => match serde_json::from_str::<Value>(&s).ok()? {
            v @ Value::Object(_) => v,
            _ => return None,
        },
        _ => return None,
    };
    map.is_empty().then_some(ToolCall { name, arguments })
}

/// Longest function name taken for a call (OpenAI allows 64 characters); longer is prose.
const MAX_NAME_BYTES: usize = 128;

fn is_identifier(s: &str) -> bool {
    if s.len() > MAX_NAME_BYTES {
        return false;
    }
    let mut chars = s.chars();
    chars.next().is_some_and(|c| c.is_alphabetic() || c == '_')
        && chars.all(|c| c.is_alphanumeric() || c == '_' || c == '.' || c == '-')
}

/// `[f(a=1, b="x"), g()]`, with Python literals as values.
fn parse_pythonic(text: &str) -> Option<Vec<ToolCall>> {
    let mut p = PyParser {
        s: text.as_bytes(),
        text,
        i: 0,
        depth: 0,
        max_depth: herd_limits::Limits::current().nesting_depth,
    };
    p.consume(b'[')?;
    let mut calls = Vec::new();
    loop {
        p.ws();
        if p.eat(b']') {
            break;
        }
        calls.push(p.call()?);
        p.ws();
        if p.eat(b',') {
            continue;
        }
        p.consume(b']')?;
        break;
    }
    p.ws();
    (p.i == p.s.len() && !calls.is_empty()).then_some(calls)
}

struct PyParser<'a> {
    s: &'a [u8],
    text: &'a str,
    i: usize,
    /// Lists and dicts open around the current value; past `max_depth` the text is not a
    /// call (a reply of 20k brackets must not overflow the stack).
    depth: u32,
    max_depth: u32,
}

impl PyParser<'_> {
    fn peek(&self) -> Option<u8> {
        self.s.get(self.i).copied()
    }

    fn advance(&mut self, n: usize) {
        self.i = self.i.saturating_add(n);
    }

    fn ws(&mut self) {
        while self.peek().is_some_and(|c| c.is_ascii_whitespace()) {
            self.advance(1);
        }
    }

    fn eat(&mut self, c: u8) -> bool {
        if self.peek() == Some(c) {
            self.advance(1);
            true
        } else {
            false
        }
    }

    fn consume(&mut self, c: u8) -> Option<()> {
        self.ws();
        self.eat(c).then_some(())
    }

    fn identifier(&mut self) -> Option<&str> {
        self.ws();
        let start = self.i;
        while let Some(c) = self.peek() {
            let ok = c.is_ascii_alphanumeric() || c == b'_' || c == b'.' || (c >= 0x80);
            if !ok {
                break;
            }
            self.advance(1);
        }
        let ident = self.text.get(start..self.i)?;
        is_identifier(ident).then_some(ident)
    }

    fn call(&mut self) -> Option<ToolCall> {
        let name = self.identifier()?.to_string();
        self.consume(b'(')?;
        let mut arguments = Map::new();
        loop {
            self.ws();
            if self.eat(b')') {
                break;
            }
            let key = self.identifier()?.to_string();
            self.consume(b'=')?;
            let value = self.value()?;
            arguments.insert(key, value);
            self.ws();
            if self.eat(b',') {
                continue;
            }
            self.consume(b')')?;
            break;
        }
        Some(ToolCall {
            name,
            arguments: Value::Object(arguments),
        })
    }

    fn value(&mut self) -> Option<Value> {
        if self.depth >= self.max_depth {
            return None;
        }
        self.depth = self.depth.saturating_add(1);
        let value = self.value_inner();
        self.depth = self.depth.saturating_sub(1);
        value
    }

    fn value_inner(&mut self) -> Option<Value> {
        self.ws();
        match self.peek()? {
            b'"' | b'\'' => self.string().map(Value::String),
            open @ (b'[' | b'(') => {
                let close = if open == b'[' { b']' } else { b')' };
                self.advance(1);
                let mut items = Vec::new();
                loop {
                    self.ws();
                    if self.eat(close) {
                        break;
                    }
                    items.push(self.value()?);
                    self.ws();
                    if self.eat(b',') {
                        continue;
                    }
                    self.consume(close)?;
                    break;
                }
                Some(Value::Array(items))
            }
            b'{' => {
                self.advance(1);
                let mut map = Map::new();
                loop {
                    self.ws();
                    if self.eat(b'}') {
                        break;
                    }
                    let key = match self.value()? {
                        Value::String(s) => s,
                        other => other.to_string(),
                    };
                    self.consume(b':')?;
                    map.insert(key, self.value()?);
                    self.ws();
                    if self.eat(b',') {
                        continue;
                    }
                    self.consume(b'}')?;
                    break;
                }
                Some(Value::Object(map))
            }
            _ => self.scalar(),
        }
    }

    fn scalar(&mut self) -> Option<Value> {
        let start = self.i;
        while self
            .peek()
            .is_some_and(|c| !matches!(c, b',' | b')' | b']' | b'}' | b':'))
        {
            self.advance(1);
        }
        let word = self.text.get(start..self.i)?.trim();
        match word {
            "True" | "true" => Some(Value::Bool(true)),
            "False" | "false" => Some(Value::Bool(false)),
            "None" | "null" => Some(Value::Null),
            w => {
                if let Ok(i) = w.parse::<i64>() {
                    Some(Value::Number(i.into()))
                } else {
                    w.parse::<f64>()
                        .ok()
                        .filter(|f| f.is_finite())
                        .and_then(Number::from_f64)
                        .map(Value::Number)
                }
            }
        }
    }

    fn string(&mut self) -> Option<String> {
        let quote = self.peek()?;
        self.advance(1);
        let mut out = String::new();
        let rest = self.text.get(self.i..)?;
        let mut chars = rest.char_indices();
        while let Some((at, c)) = chars.next() {
            match c {
                '\\' => {
                    let (_, e) = chars.next()?;
                    out.push(match e {
                        'n' => '\n',
                        't' => '\t',
                        'r' => '\r',
                        '0' => '\0',
                        'u' => {
                            let hex: String = (0..4)
                                .map(|_| chars.next().map(|(_, h)| h))
                                .collect::<Option<_>>()?;
                            char::from_u32(u32::from_str_radix(&hex, 16).ok()?)?
                        }
                        other => other,
                    });
                }
                c if c as u32 == quote as u32 => {
                    self.advance(at.saturating_add(1));
                    return Some(out);
                }
                c => out.push(c),
            }
        }
        None
    }
}

/// What a streaming parser hands back.
#[derive(Debug, Clone, PartialEq)]
pub enum StreamEvent {
    /// Prose, as soon as it is known not to be part of a tool call.
    Text(String),
    /// The calls that end the message.
    ToolCalls(Vec<ToolCall>),
}

/// Incremental tool-call detection: prose streams through; from the first character that could
/// begin a call (`[`, `{` or `<|python_start|>`), text is held until it is either ruled out
/// (flushed as prose) or the message ends (parsed).
#[derive(Debug, Default)]
pub struct StreamParser {
    held: String,
}

impl StreamParser {
    pub fn new() -> Self {
        Self::default()
    }

    /// Feeds new text; returns what can be emitted now.
    pub fn push(&mut self, delta: &str) -> Vec<StreamEvent> {
        self.held.push_str(delta);
        let mut out = String::new();
        loop {
            match find_candidate(&self.held) {
                None => {
                    // Keep a possible partial `<|python_start|>` at the end.
                    let keep = partial_marker_len(&self.held);
                    let emit = self.held.len().saturating_sub(keep);
                    out.push_str(&self.held[..emit]);
                    self.held.drain(..emit);
                    break;
                }
                Some(at) => {
                    out.push_str(&self.held[..at]);
                    self.held.drain(..at);
                    match still_possible(&self.held) {
                        Possible::Yes => break,
                        Possible::No => {
                            // Not a call: the opening char is prose; look further.
                            let first = self.held.chars().next().map_or(1, char::len_utf8);
                            out.push_str(&self.held[..first]);
                            self.held.drain(..first);
                        }
                    }
                }
            }
        }
        if out.is_empty() {
            Vec::new()
        } else {
            vec![StreamEvent::Text(out)]
        }
    }

    /// Ends the message (at `<|eot|>`/`<|eom|>` or end of stream).
    pub fn finish(&mut self) -> Vec<StreamEvent> {
        let held = std::mem::take(&mut self.held);
        if held.is_empty() {
            return Vec::new();
        }
        let parsed = parse(&held);
        let mut events = Vec::new();
        if parsed.tool_calls.is_empty() {
            events.push(StreamEvent::Text(held));
        } else {
            if !parsed.content.is_empty() {
                events.push(StreamEvent::Text(parsed.content));
            }
            events.push(StreamEvent::ToolCalls(parsed.tool_calls));
        }
        events
    }
}

fn find_candidate(text: &str) -> Option<usize> {
    let marker = text.find(PYTHON_START);
    let bracket = text.find(['[', '{']);
    match (marker, bracket) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

enum Possible {
    Yes,
    No,
}

/// How much of the held text [`still_possible`] looks at.
const HEAD_BYTES: usize = 256;

/// Could `text` (starting at a candidate) still become a tool call?
fn still_possible(text: &str) -> Possible {
    if text.starts_with(PYTHON_START) {
        return Possible::Yes;
    }
    // The decision needs only the first few characters; looking at all the held text on every
    // push would make streaming a long reply quadratic.
    let mut head_end = text.len().min(HEAD_BYTES);
    while !text.is_char_boundary(head_end) {
        head_end = head_end.saturating_sub(1);
    }
    let head = &text[..head_end];
    let rest = head
        .get(head.chars().next().map_or(0, char::len_utf8)..)
        .unwrap_or("");
    let rest = rest.trim_start();
    if rest.is_empty() {
        return Possible::Yes;
    }
    if text.starts_with('{') {
        // JSON call objects open with a quoted key.
        return if rest.starts_with('"') {
            Possible::Yes
        } else {
            Possible::No
        };
    }
    // `[` then an identifier then `(`, or a JSON list of objects.
    if rest.starts_with('{') {
        return Possible::Yes;
    }
    let ident_len = rest
        .char_indices()
        .find(|(_, c)| !(c.is_alphanumeric() || *c == '_' || *c == '.'))
        .map_or(rest.len(), |(i, _)| i);
    if ident_len == 0 || rest.starts_with(|c: char| c.is_ascii_digit()) {
        return Possible::No;
    }
    match rest[ident_len..].trim_start().chars().next() {
        // A "name" filling the whole window is prose (no function is named so), not a call:
        // holding it would stall the stream until the message ends.
        None if head_end < text.len() => Possible::No,
        // The text so far ends in the name (or the space after it): wait for more.
        None | Some('(') => Possible::Yes,
        Some(_) => Possible::No,
    }
}

/// Length of a suffix of `text` that is a proper prefix of `<|python_start|>`.
fn partial_marker_len(text: &str) -> usize {
    (1..PYTHON_START.len())
        .rev()
        .find(|&n| {
            text.len()
                .checked_sub(n)
                .and_then(|at| text.get(at..))
                .is_some_and(|tail| PYTHON_START.starts_with(tail))
        })
        .unwrap_or(0)
}
