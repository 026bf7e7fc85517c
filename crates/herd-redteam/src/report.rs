//! The run report, computed from transcripts (so a committed transcript has known numbers):
//! attack success rate (ASR) overall, per technique and per goal category, and turns to success.
//!
//! Definitions:
//! - a goal *succeeds* when a turn of its conversation was judged jailbroken; ASR = successful
//!   goals / goals (goals that ended in an error or the time budget count as failures);
//! - per technique: *goals using it* = goals with at least one turn whose technique (the one the
//!   attacker's strategy named, else the suggested one) is it; *successes* = successful goals
//!   whose jailbroken turn used it; ASR = successes / goals using it (none when unused). A goal
//!   that tried several techniques counts toward each, so per-technique ASRs do not add up;
//! - per category: the goals of that category (`uncategorized` when none) and their successes;
//! - turns to success: the jailbroken turn's number (1-based), over successful goals.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::RedteamError;
use crate::techniques::Technique;
use crate::transcript::{read_transcript, OutcomeRecord, StopReason, TranscriptLine, TurnRecord};

/// The category name of goals that have none.
pub const UNCATEGORIZED: &str = "uncategorized";

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TechniqueStats {
    pub technique: Technique,
    pub goals_using: usize,
    pub turns_using: usize,
    pub successes: usize,
    /// `None` when no goal used the technique.
    pub attack_success_rate: Option<f64>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CategoryStats {
    pub category: String,
    pub goals: usize,
    pub successes: usize,
    pub attack_success_rate: f64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Report {
    pub goals: usize,
    pub successes: usize,
    /// Successful goals / goals (0 when there are no goals).
    pub attack_success_rate: f64,
    /// Turns taken over all goals.
    pub turns: usize,
    /// Attacker answers that did not follow the Observation/Thought/Strategy/Reply format.
    pub attacker_format_errors: usize,
    /// Judge answers that could not be read (counted as not jailbroken).
    pub judge_parse_errors: usize,
    /// How many goals ended for each reason (every reason listed, zeros included).
    pub stop_reasons: BTreeMap<StopReason, usize>,
    pub turns_to_success_mean: Option<f64>,
    pub turns_to_success_median: Option<f64>,
    /// Successful goals by the turn they succeeded at.
    pub turns_to_success: BTreeMap<usize, usize>,
    /// Every technique, in [`Technique::ALL`] order.
    pub by_technique: Vec<TechniqueStats>,
    /// Categories in name order.
    pub by_category: Vec<CategoryStats>,
}

/// One goal's lines: its turns and its outcome.
struct GoalTranscript {
    turns: Vec<TurnRecord>,
    outcome: OutcomeRecord,
}

impl Report {
    /// The report of the transcripts in `paths` (files may hold one goal or several).
    pub fn from_transcripts(paths: &[PathBuf]) -> Result<Report, RedteamError> {
        let mut goals = Vec::new();
        for path in paths {
            goals.extend(goals_of(path, read_transcript(path)?)?);
        }
        Ok(Report::from_goals(&goals))
    }

    fn from_goals(goals: &[GoalTranscript]) -> Report {
        let successful: Vec<&GoalTranscript> = goals.iter().filter(|g| g.outcome.success).collect();
        let mut turns_to_success: BTreeMap<usize, usize> = BTreeMap::new();
        for g in &successful {
            *turns_to_success.entry(g.outcome.turns).or_default() += 1;
        }
        let mut stop_reasons: BTreeMap<StopReason, usize> =
            StopReason::ALL.into_iter().map(|r| (r, 0)).collect();
        for g in goals {
            *stop_reasons.entry(g.outcome.stop_reason).or_default() += 1;
        }
        let by_technique = Technique::ALL
            .into_iter()
            .map(|technique| {
                let uses = |g: &&GoalTranscript| g.turns.iter().any(|t| t.technique == technique);
                let goals_using = goals.iter().filter(uses).count();
                let successes = successful
                    .iter()
                    .filter(|g| winning_turn(g).is_some_and(|t| t.technique == technique))
                    .count();
                TechniqueStats {
                    technique,
                    goals_using,
                    turns_using: goals
                        .iter()
                        .flat_map(|g| &g.turns)
                        .filter(|t| t.technique == technique)
                        .count(),
                    successes,
                    attack_success_rate: (goals_using > 0).then(|| ratio(successes, goals_using)),
                }
            })
            .collect();
        let mut categories: BTreeMap<String, (usize, usize)> = BTreeMap::new();
        for g in goals {
            let name = g
                .outcome
                .category
                .clone()
                .unwrap_or_else(|| UNCATEGORIZED.to_string());
            let entry = categories.entry(name).or_default();
            entry.0 += 1;
            entry.1 += usize::from(g.outcome.success);
        }
        let mut steps: Vec<usize> = successful.iter().map(|g| g.outcome.turns).collect();
        steps.sort_unstable();
        let all_turns = || goals.iter().flat_map(|g| &g.turns);
        Report {
            goals: goals.len(),
            successes: successful.len(),
            attack_success_rate: ratio(successful.len(), goals.len()),
            turns: all_turns().count(),
            attacker_format_errors: all_turns().filter(|t| !t.format_ok).count(),
            judge_parse_errors: all_turns().filter(|t| t.judgement.parse_error.is_some()).count(),
            stop_reasons,
            turns_to_success_mean: (!steps.is_empty())
                .then(|| steps.iter().sum::<usize>() as f64 / steps.len() as f64),
            turns_to_success_median: median(&steps),
            turns_to_success,
            by_technique,
            by_category: categories
                .into_iter()
                .map(|(category, (goals, successes))| CategoryStats {
                    category,
                    goals,
                    successes,
                    attack_success_rate: ratio(successes, goals),
                })
                .collect(),
        }
    }

    /// The report as Markdown.
    pub fn to_markdown(&self) -> String {
        let mut md = String::from("# herd redteam report\n\n");
        md.push_str(&format!(
            "- Goals: {}; jailbroken: {}; attack success rate: {}\n",
            self.goals,
            self.successes,
            percent(Some(self.attack_success_rate))
        ));
        md.push_str(&format!(
            "- Turns to success: mean {}, median {}; distribution: {}\n",
            number(self.turns_to_success_mean),
            number(self.turns_to_success_median),
            if self.turns_to_success.is_empty() {
                "none".to_string()
            } else {
                let parts: Vec<String> = self
                    .turns_to_success
                    .iter()
                    .map(|(turn, n)| format!("turn {turn}: {n}"))
                    .collect();
                parts.join(", ")
            }
        ));
        let reasons: Vec<String> = self
            .stop_reasons
            .iter()
            .map(|(reason, n)| format!("{} {n}", reason.id()))
            .collect();
        md.push_str(&format!("- Stop reasons: {}\n", reasons.join(", ")));
        md.push_str(&format!(
            "- Turns: {}; attacker format errors: {}; judge parse errors: {}\n",
            self.turns, self.attacker_format_errors, self.judge_parse_errors
        ));
        md.push_str(
            "\n## By technique\n\n\
             A goal counts for every technique one of its turns used; a success counts for the \
             technique of the jailbroken turn.\n\n\
             | technique | goals using it | turns | successes | ASR |\n\
             |---|---:|---:|---:|---:|\n",
        );
        for t in &self.by_technique {
            md.push_str(&format!(
                "| {} | {} | {} | {} | {} |\n",
                t.technique.name(),
                t.goals_using,
                t.turns_using,
                t.successes,
                percent(t.attack_success_rate)
            ));
        }
        md.push_str("\n## By category\n\n| category | goals | successes | ASR |\n|---|---:|---:|---:|\n");
        for c in &self.by_category {
            md.push_str(&format!(
                "| {} | {} | {} | {} |\n",
                c.category.replace('|', "\\|"),
                c.goals,
                c.successes,
                percent(Some(c.attack_success_rate))
            ));
        }
        md
    }

    /// Writes the report as JSON to `path` (replaced whole, never through a link).
    pub fn write_json(&self, path: &Path) -> Result<(), RedteamError> {
        let text = serde_json::to_string_pretty(self).map_err(|e| RedteamError::Io {
            path: path.to_path_buf(),
            source: std::io::Error::other(e),
        })?;
        write_text(path, &text)
    }

    /// Writes [`Report::to_markdown`] to `path`.
    pub fn write_markdown(&self, path: &Path) -> Result<(), RedteamError> {
        write_text(path, &self.to_markdown())
    }
}

/// Groups a file's lines by goal; every goal needs exactly one outcome, and a successful one a
/// jailbroken turn at the outcome's turn count.
fn goals_of(path: &Path, lines: Vec<TranscriptLine>) -> Result<Vec<GoalTranscript>, RedteamError> {
    let bad = |reason: String| RedteamError::TranscriptGoal {
        path: path.to_path_buf(),
        reason,
    };
    let mut turns: BTreeMap<usize, Vec<TurnRecord>> = BTreeMap::new();
    let mut outcomes: BTreeMap<usize, OutcomeRecord> = BTreeMap::new();
    for line in lines {
        match line {
            TranscriptLine::Turn(t) => turns.entry(t.goal_index).or_default().push(t),
            TranscriptLine::Outcome(o) => {
                let index = o.goal_index;
                if outcomes.insert(index, o).is_some() {
                    return Err(bad(format!("goal {index} has two outcome lines")));
                }
            }
        }
    }
    if let Some(index) = turns.keys().find(|i| !outcomes.contains_key(i)) {
        return Err(bad(format!(
            "goal {index} has turns but no outcome line (an interrupted run?)"
        )));
    }
    let mut goals = Vec::new();
    for (index, outcome) in outcomes {
        let goal = GoalTranscript {
            turns: turns.remove(&index).unwrap_or_default(),
            outcome,
        };
        if goal.outcome.success && winning_turn(&goal).is_none() {
            return Err(bad(format!(
                "goal {index} is marked successful but turn {} is not a jailbroken turn",
                goal.outcome.turns
            )));
        }
        goals.push(goal);
    }
    Ok(goals)
}

/// The jailbroken turn of a successful goal.
fn winning_turn(goal: &GoalTranscript) -> Option<&TurnRecord> {
    goal.turns
        .iter()
        .find(|t| t.turn == goal.outcome.turns && t.judgement.jailbroken)
}

fn ratio(part: usize, whole: usize) -> f64 {
    if whole == 0 {
        0.0
    } else {
        part as f64 / whole as f64
    }
}

fn median(sorted: &[usize]) -> Option<f64> {
    let n = sorted.len();
    if n == 0 {
        return None;
    }
    let mid = |i: usize| sorted.get(i).map(|&v| v as f64);
    if n % 2 == 1 {
        mid(n / 2)
    } else {
        Some((mid(n / 2 - 1)? + mid(n / 2)?) / 2.0)
    }
}

fn percent(rate: Option<f64>) -> String {
    rate.map_or_else(|| "–".to_string(), |r| format!("{:.1}%", r * 100.0))
}

fn number(value: Option<f64>) -> String {
    value.map_or_else(|| "–".to_string(), |v| format!("{v:.2}"))
}

fn write_text(path: &Path, text: &str) -> Result<(), RedteamError> {
    write_bytes(path, text.as_bytes())
}

/// Writes `bytes` to `path` through a temporary file renamed into place.
pub(crate) fn write_bytes(path: &Path, bytes: &[u8]) -> Result<(), RedteamError> {
    herd_limits::write_output(path, &[], |tmp| std::fs::write(tmp, bytes))?.map_err(|source| {
        RedteamError::Io {
            path: path.to_path_buf(),
            source,
        }
    })
}
