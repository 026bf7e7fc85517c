//! The transcript format: one JSONL file per goal, a `turn` line per turn and an `outcome` line
//! last. The report is computed from these files, so a run's numbers can be recomputed from what
//! it wrote.

use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::RedteamError;
use crate::judge::Judgement;
use crate::techniques::Technique;

/// The largest transcript read back (a goal's turns are bounded by turns × reply sizes).
pub const MAX_TRANSCRIPT_BYTES: u64 = 256 << 20;

/// One line of a transcript.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum TranscriptLine {
    Turn(TurnRecord),
    Outcome(OutcomeRecord),
}

/// One attacker → target → judge round.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TurnRecord {
    pub goal_index: usize,
    /// 1-based.
    pub turn: usize,
    pub suggested_technique: Technique,
    pub technique: Technique,
    pub format_ok: bool,
    pub observation: String,
    pub thought: String,
    pub strategy: String,
    pub attack_prompt: String,
    pub target_reply: String,
    pub judgement: Judgement,
    pub elapsed_ms: u64,
    /// The attacker's answer as written, kept only when it did not follow the format.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attacker_raw: Option<String>,
}

/// Why a goal's conversation ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StopReason {
    Jailbroken,
    MaxTurns,
    TimeBudget,
    Error,
}

impl StopReason {
    pub const ALL: [StopReason; 4] = [
        StopReason::Jailbroken,
        StopReason::MaxTurns,
        StopReason::TimeBudget,
        StopReason::Error,
    ];

    pub fn id(self) -> &'static str {
        match self {
            StopReason::Jailbroken => "jailbroken",
            StopReason::MaxTurns => "max_turns",
            StopReason::TimeBudget => "time_budget",
            StopReason::Error => "error",
        }
    }
}

/// How a goal ended: the last line of its transcript.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OutcomeRecord {
    pub goal_index: usize,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub goal_id: Option<String>,
    pub goal: String,
    #[serde(default)]
    pub category: Option<String>,
    pub success: bool,
    /// Turns completed (the jailbroken turn's number on success).
    pub turns: usize,
    pub stop_reason: StopReason,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    pub elapsed_ms: u64,
}

/// Writes a transcript line by line, flushing each, so an interrupted run keeps its turns.
pub struct TranscriptWriter {
    path: PathBuf,
    file: std::fs::File,
}

impl TranscriptWriter {
    /// Creates `path`, replacing a regular file there (never a link or a device).
    pub fn create(path: &Path) -> Result<Self, RedteamError> {
        Ok(Self {
            path: path.to_path_buf(),
            file: herd_limits::create_output_file(path)?,
        })
    }

    pub fn write(&mut self, line: &TranscriptLine) -> Result<(), RedteamError> {
        let mut text = serde_json::to_string(line).map_err(|e| RedteamError::Io {
            path: self.path.clone(),
            source: std::io::Error::other(e),
        })?;
        text.push('\n');
        self.file
            .write_all(text.as_bytes())
            .and_then(|()| self.file.flush())
            .map_err(|source| RedteamError::Io {
                path: self.path.clone(),
                source,
            })
    }
}

/// Reads a transcript file; a line that is not a transcript line is an error naming it.
pub fn read_transcript(path: &Path) -> Result<Vec<TranscriptLine>, RedteamError> {
    let file = herd_limits::open_regular(path)?;
    let bytes = herd_limits::read_capped(file, MAX_TRANSCRIPT_BYTES)
        .map_err(|source| RedteamError::Io {
            path: path.to_path_buf(),
            source,
        })?
        .ok_or_else(|| RedteamError::TooLarge {
            path: path.to_path_buf(),
            limit: MAX_TRANSCRIPT_BYTES,
        })?;
    let text = String::from_utf8_lossy(&bytes);
    let mut lines = Vec::new();
    for (index, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let parsed = serde_json::from_str(line).map_err(|e| RedteamError::Transcript {
            path: path.to_path_buf(),
            line: index + 1,
            reason: e.to_string(),
        })?;
        lines.push(parsed);
    }
    Ok(lines)
}
