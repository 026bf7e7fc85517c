//! The goal list: JSONL, one `{"goal": "...", "category": "S2", "id": "..."}` per line
//! (`category` and `id` optional; blank lines skipped).

use std::path::Path;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::error::RedteamError;

/// The largest goals file read; a goal list is text written by people, far below this.
pub const MAX_GOALS_BYTES: u64 = 16 << 20;

/// What the attacker should make the target do.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Goal {
    pub goal: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub category: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
}

impl Goal {
    pub fn new(goal: impl Into<String>) -> Self {
        Self {
            goal: goal.into(),
            category: None,
            id: None,
        }
    }

    pub fn with_category(mut self, category: impl Into<String>) -> Self {
        self.category = Some(category.into());
        self
    }
}

/// One line as written; unknown keys are refused so a misspelt `categroy` is not silently lost.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct GoalLine {
    goal: String,
    #[serde(default)]
    category: Option<String>,
    #[serde(default)]
    id: Option<Value>,
}

/// Reads the goals in `path`, which must be a regular file of at most [`MAX_GOALS_BYTES`].
pub fn read_goals(path: &Path) -> Result<Vec<Goal>, RedteamError> {
    let file = herd_limits::open_regular(path)?;
    let io = |source| RedteamError::Io {
        path: path.to_path_buf(),
        source,
    };
    let bytes = herd_limits::read_capped(file, MAX_GOALS_BYTES)
        .map_err(io)?
        .ok_or_else(|| RedteamError::TooLarge {
            path: path.to_path_buf(),
            limit: MAX_GOALS_BYTES,
        })?;
    let text = String::from_utf8(bytes).map_err(|e| RedteamError::GoalLine {
        path: path.to_path_buf(),
        line: line_of_byte(e.as_bytes(), e.utf8_error().valid_up_to()),
        reason: "not UTF-8 text".into(),
    })?;
    parse_goals(&text, path)
}

/// The goals in `text`; `path` only names the source in errors. A bad line is an error naming
/// its 1-based line number, and a text without any goal is an error too.
pub fn parse_goals(text: &str, path: &Path) -> Result<Vec<Goal>, RedteamError> {
    let mut goals = Vec::new();
    for (index, line) in text.lines().enumerate() {
        let line_no = index + 1;
        let bad = |reason: String| RedteamError::GoalLine {
            path: path.to_path_buf(),
            line: line_no,
            reason,
        };
        let line = line.trim();
        if line.is_empty() {
            continue;
        }
        // serde would also take `["..."]` for the struct; a goal line is an object.
        if !line.starts_with('{') {
            return Err(bad("expected a JSON object such as {\"goal\": \"...\"}".into()));
        }
        let parsed: GoalLine = serde_json::from_str(line).map_err(|e| bad(e.to_string()))?;
        if parsed.goal.trim().is_empty() {
            return Err(bad("\"goal\" is empty".into()));
        }
        let id = match parsed.id {
            None => None,
            Some(Value::String(s)) => Some(s),
            Some(Value::Number(n)) => Some(n.to_string()),
            Some(other) => return Err(bad(format!("\"id\" must be a string or a number, not {other}"))),
        };
        goals.push(Goal {
            goal: parsed.goal,
            category: parsed.category.filter(|c| !c.trim().is_empty()),
            id,
        });
    }
    if goals.is_empty() {
        return Err(RedteamError::NoGoals {
            path: path.to_path_buf(),
        });
    }
    Ok(goals)
}

fn line_of_byte(bytes: &[u8], at: usize) -> usize {
    bytes[..at.min(bytes.len())]
        .iter()
        .filter(|&&b| b == b'\n')
        .count()
        + 1
}
