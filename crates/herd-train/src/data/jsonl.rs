//! Reading a training file: JSON Lines, one example an object per line, blank lines skipped.
//!
//! A line is a chat in OpenAI's fine-tuning format — `{"messages": [...], "tools"?: [...]}`,
//! roles `system`, `user`, `assistant`, `tool` (`ipython`), content a string or a list of
//! `{"type": "text", "text": ...}` parts, assistant `tool_calls`, and OpenAI's per-message
//! `"weight": 0` to keep an assistant turn out of the loss — or plain text for continued
//! pre-training, `{"text": "..."}`. Other fields are ignored (datasets carry ids and sources).
//! A line that is neither is a [`BadLine`] naming its 1-based number, so a user can fix the
//! file; the rest of the file still loads.

use std::fmt;
use std::path::{Path, PathBuf};

use herd_limits::FileKind;
use herd_text::chat::{parse_messages, Content};
use herd_text::Message;
use serde_json::{Map, Value};

use crate::error::{Error, Result};

/// One usable line of a training file.
#[derive(Debug, Clone, PartialEq)]
pub struct Record {
    /// 1-based line number in its file.
    pub line: usize,
    pub kind: RecordKind,
}

#[derive(Debug, Clone, PartialEq)]
pub enum RecordKind {
    /// A conversation; the loss covers its assistant turns.
    Chat {
        messages: Vec<Message>,
        tools: Option<Vec<Value>>,
    },
    /// A document for continued pre-training; the loss covers all of it.
    Text(String),
}

/// A line that gives no example, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BadLine {
    pub path: PathBuf,
    /// 1-based line number.
    pub line: usize,
    pub reason: String,
}

impl fmt::Display for BadLine {
    /// `file:line: reason`, the form editors and `grep -n` use.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}: {}", self.path.display(), self.line, self.reason)
    }
}

/// Roles the chat templates know; anything else is more likely a typo than a turn to render.
const ROLES: [&str; 5] = ["system", "user", "assistant", "tool", "ipython"];

/// How many bad lines an error about a file with no usable line quotes.
const QUOTED_BAD_LINES: usize = 3;

/// Reads `path` (a regular file within the `prompt-bytes` limit) into its usable records and
/// its bad lines, both in line order. A file with no usable line is an error that quotes the
/// first bad ones.
pub fn read_jsonl(path: &Path) -> Result<(Vec<Record>, Vec<BadLine>)> {
    let bytes = herd_limits::read_file(path, FileKind::Prompt)?;
    // Editors on Windows write a byte-order mark; JSON parsers refuse it.
    let bytes = bytes.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(&bytes);
    let mut records = Vec::new();
    let mut bad = Vec::new();
    for (i, line) in bytes.split(|&b| b == b'\n').enumerate() {
        let line_number = i + 1;
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if line.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        let parsed = std::str::from_utf8(line)
            .map_err(|e| format!("not UTF-8 text ({e})"))
            .and_then(parse_line);
        match parsed {
            Ok(kind) => records.push(Record {
                line: line_number,
                kind,
            }),
            Err(reason) => bad.push(BadLine {
                path: path.to_path_buf(),
                line: line_number,
                reason,
            }),
        }
    }
    if records.is_empty() {
        return Err(no_examples(path, &bad));
    }
    Ok((records, bad))
}

/// The error for a file that yields no example (none of its lines read, or none rendered).
pub(crate) fn no_examples(path: &Path, bad: &[BadLine]) -> Error {
    let detail = if bad.is_empty() {
        " (it has no non-blank line)".to_string()
    } else {
        let quoted: Vec<String> = bad
            .iter()
            .take(QUOTED_BAD_LINES)
            .map(|b| format!("line {}: {}", b.line, b.reason))
            .collect();
        let more = if bad.len() > QUOTED_BAD_LINES { "; …" } else { "" };
        format!(" ({} bad lines): {}{more}", bad.len(), quoted.join("; "))
    };
    Error::NoExamples {
        path: path.to_path_buf(),
        detail,
    }
}

/// One line's example, or why it has none.
pub fn parse_line(text: &str) -> std::result::Result<RecordKind, String> {
    let value: Value = serde_json::from_str(text).map_err(|e| format!("not JSON: {e}"))?;
    let Value::Object(mut fields) = value else {
        return Err(format!("expected a JSON object, found {}", kind_of(&value)));
    };
    match (fields.remove("messages"), fields.remove("text")) {
        (Some(_), Some(_)) => Err("has both `messages` and `text`; an example is one or the other".into()),
        (Some(messages), None) => chat(messages, fields.remove("tools")),
        (None, Some(Value::String(text))) if text.trim().is_empty() => Err("`text` is empty".into()),
        (None, Some(Value::String(text))) => Ok(RecordKind::Text(text)),
        (None, Some(other)) => Err(format!("`text` must be a string, found {}", kind_of(&other))),
        (None, None) => Err(format!(
            "no `messages` (a chat) or `text` (plain text){}",
            found_keys(&fields)
        )),
    }
}

fn chat(messages: Value, tools: Option<Value>) -> std::result::Result<RecordKind, String> {
    let messages = parse_messages(messages).map_err(|e| e.to_string())?;
    if messages.is_empty() {
        return Err("`messages` is empty".into());
    }
    let mut n_trained = 0;
    let mut n_assistant = 0;
    for (i, m) in messages.iter().enumerate() {
        check_message(i, m)?;
        if m.role == "assistant" {
            n_assistant += 1;
            if is_trained(m) {
                n_trained += 1;
            }
        }
    }
    if n_assistant == 0 {
        return Err("no assistant message to learn from".into());
    }
    if n_trained == 0 {
        return Err("every assistant message has `weight: 0`: nothing to learn from".into());
    }
    let tools = match tools {
        None | Some(Value::Null) => None,
        Some(Value::Array(tools)) => {
            if let Some(t) = tools.iter().find(|t| !t.is_object()) {
                return Err(format!("`tools` must hold objects, found {}", kind_of(t)));
            }
            Some(tools)
        }
        Some(other) => return Err(format!("`tools` must be a list, found {}", kind_of(&other))),
    };
    Ok(RecordKind::Chat { messages, tools })
}

/// Whether an assistant message is a loss target: OpenAI's format marks the ones that are not
/// with `"weight": 0`.
pub fn is_trained(message: &Message) -> bool {
    message.role == "assistant" && message.extra.get("weight").and_then(Value::as_u64) != Some(0)
}

fn check_message(i: usize, m: &Message) -> std::result::Result<(), String> {
    let role = m.role.as_str();
    let at = || format!("message {i} ({role})");
    if !ROLES.contains(&role) {
        return Err(format!(
            "message {i}: unknown role `{role}` (expected one of {})",
            ROLES.join(", ")
        ));
    }
    if let Content::Parts(parts) = &m.content {
        for part in parts {
            match (part.get("type").and_then(Value::as_str), part.get("text")) {
                (Some("text"), Some(Value::String(_))) => {}
                (Some("text"), _) => return Err(format!("{}: a text part needs a string `text`", at())),
                (Some(kind @ ("image" | "image_url" | "video" | "video_url" | "input_audio")), _) => {
                    return Err(format!(
                        "{}: has an `{kind}` part; herd finetune trains on text only",
                        at()
                    ))
                }
                (Some(kind), _) => return Err(format!("{}: unknown content part type `{kind}`", at())),
                (None, _) => return Err(format!("{}: a content part has no `type`", at())),
            }
        }
    }
    if m.tool_calls.is_some() && role != "assistant" {
        return Err(format!("{}: only assistant messages carry `tool_calls`", at()));
    }
    for call in m.tool_calls.iter().flatten() {
        let name = call.get("function").and_then(|f| f.get("name"));
        if !matches!(name, Some(Value::String(_))) {
            return Err(format!(
                "{}: a tool call needs `function.name` (OpenAI's \
                 `{{\"type\": \"function\", \"function\": {{\"name\": ..., \"arguments\": ...}}}}`)",
                at()
            ));
        }
    }
    match m.extra.get("weight") {
        None => {}
        Some(w) if role != "assistant" => {
            return Err(format!(
                "{}: `weight` ({w}) applies to assistant messages only",
                at()
            ))
        }
        Some(w) if matches!(w.as_u64(), Some(0 | 1)) => {}
        Some(w) => return Err(format!("{}: `weight` must be 0 or 1, found {w}", at())),
    }
    Ok(())
}

fn found_keys(fields: &Map<String, Value>) -> String {
    if fields.is_empty() {
        return String::new();
    }
    let keys: Vec<&str> = fields.keys().map(String::as_str).take(8).collect();
    format!("; found {}", keys.join(", "))
}

/// A value's JSON type, for messages (the value itself may be a megabyte).
fn kind_of(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "an object",
    }
}
