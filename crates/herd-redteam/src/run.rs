//! The red-team loop: for each goal, up to `max_turns` rounds of attacker turn → target reply
//! → judge, stopping at the first jailbroken reply; goals run in parallel on plain threads.
//! Bounded in turns, tokens per reply, total time and concurrency.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use crate::attacker::AttackerSession;
use crate::chat::{ChatMessage, ChatModel};
use crate::error::RedteamError;
use crate::goals::Goal;
use crate::judge::Judge;
use crate::report::Report;
use crate::transcript::{OutcomeRecord, StopReason, TranscriptLine, TranscriptWriter, TurnRecord};

/// Most turns per goal allowed (GOAT uses 5).
pub const MAX_TURNS_LIMIT: usize = 100;
/// Most goals run at once.
pub const MAX_CONCURRENCY: usize = 256;

#[derive(Debug, Clone)]
pub struct RunConfig {
    /// Turns per goal, at least 1.
    pub max_turns: usize,
    /// `max_tokens` of every attacker and target reply.
    pub max_tokens: usize,
    /// The whole run's time: no turn starts once it is spent (a turn already started finishes,
    /// bounded by the models' request timeouts).
    pub time_budget: Duration,
    /// Goals run at once.
    pub concurrency: usize,
    /// Where `transcripts/` and the report files go.
    pub output_dir: PathBuf,
}

impl RunConfig {
    fn validate(&self) -> Result<(), RedteamError> {
        let bad = |m: String| Err(RedteamError::Config(m));
        if !(1..=MAX_TURNS_LIMIT).contains(&self.max_turns) {
            return bad(format!(
                "max_turns must be 1..={MAX_TURNS_LIMIT}, not {}",
                self.max_turns
            ));
        }
        if self.max_tokens == 0 {
            return bad("max_tokens must be at least 1".into());
        }
        if !(1..=MAX_CONCURRENCY).contains(&self.concurrency) {
            return bad(format!(
                "concurrency must be 1..={MAX_CONCURRENCY}, not {}",
                self.concurrency
            ));
        }
        Ok(())
    }
}

/// What a run produced.
#[derive(Debug, Clone)]
pub struct RunSummary {
    /// One per goal, in goal order.
    pub outcomes: Vec<OutcomeRecord>,
    pub report: Report,
    /// One per goal, in goal order.
    pub transcripts: Vec<PathBuf>,
    pub report_markdown: PathBuf,
    pub report_json: PathBuf,
    pub report_png: PathBuf,
}

/// [`run_with_progress`] without progress.
pub fn run(
    config: &RunConfig,
    goals: &[Goal],
    attacker: &dyn ChatModel,
    target: &dyn ChatModel,
    judge: &dyn Judge,
) -> Result<RunSummary, RedteamError> {
    run_with_progress(config, goals, attacker, target, judge, &|_| {})
}

/// Runs every goal, writes `output_dir/transcripts/<index>.jsonl` per goal and the report
/// (`report.md`, `report.json`, `report.png`) computed from those transcripts. A model or judge
/// error ends only its goal (stop reason `error`); failing to write output ends the run.
/// `on_outcome` is called as each goal finishes, from the thread that ran it.
pub fn run_with_progress(
    config: &RunConfig,
    goals: &[Goal],
    attacker: &dyn ChatModel,
    target: &dyn ChatModel,
    judge: &dyn Judge,
    on_outcome: &(dyn Fn(&OutcomeRecord) + Sync),
) -> Result<RunSummary, RedteamError> {
    config.validate()?;
    let started = Instant::now();
    let transcripts_dir = config.output_dir.join("transcripts");
    std::fs::create_dir_all(&transcripts_dir).map_err(|source| RedteamError::Io {
        path: transcripts_dir.clone(),
        source,
    })?;
    let width = goals.len().saturating_sub(1).to_string().len().max(4);
    let transcripts: Vec<PathBuf> = (0..goals.len())
        .map(|i| transcripts_dir.join(format!("{i:0width$}.jsonl")))
        .collect();
    let next = AtomicUsize::new(0);
    let workers = config.concurrency.min(goals.len()).max(1);
    let ctx = GoalContext {
        config,
        started,
        attacker,
        target,
        judge,
    };
    let mut results: Vec<(usize, Result<OutcomeRecord, RedteamError>)> = Vec::new();
    std::thread::scope(|scope| {
        let handles: Vec<_> = (0..workers)
            .map(|_| {
                scope.spawn(|| {
                    let mut done = Vec::new();
                    loop {
                        let index = next.fetch_add(1, Ordering::Relaxed);
                        let (Some(goal), Some(path)) = (goals.get(index), transcripts.get(index)) else {
                            break;
                        };
                        let result = ctx.run_goal(index, goal, path);
                        if let Ok(outcome) = &result {
                            on_outcome(outcome);
                        }
                        done.push((index, result));
                    }
                    done
                })
            })
            .collect();
        for handle in handles {
            match handle.join() {
                Ok(done) => results.extend(done),
                Err(panic) => std::panic::resume_unwind(panic),
            }
        }
    });
    results.sort_by_key(|(index, _)| *index);
    let outcomes = results
        .into_iter()
        .map(|(_, result)| result)
        .collect::<Result<Vec<_>, _>>()?;
    let report = Report::from_transcripts(&transcripts)?;
    let report_markdown = config.output_dir.join("report.md");
    let report_json = config.output_dir.join("report.json");
    let report_png = config.output_dir.join("report.png");
    report.write_markdown(&report_markdown)?;
    report.write_json(&report_json)?;
    report.write_png(&report_png)?;
    Ok(RunSummary {
        outcomes,
        report,
        transcripts,
        report_markdown,
        report_json,
        report_png,
    })
}

/// What every goal's conversation shares.
struct GoalContext<'a> {
    config: &'a RunConfig,
    started: Instant,
    attacker: &'a dyn ChatModel,
    target: &'a dyn ChatModel,
    judge: &'a dyn Judge,
}

impl GoalContext<'_> {
    /// Runs one goal's conversation, writing its transcript as it goes. Only a failure to write
    /// is an `Err`; model and judge failures end the conversation with stop reason `error`.
    fn run_goal(&self, index: usize, goal: &Goal, path: &Path) -> Result<OutcomeRecord, RedteamError> {
        let goal_started = Instant::now();
        let mut writer = TranscriptWriter::create(path)?;
        let mut session = AttackerSession::new(self.attacker, goal, index);
        let mut conversation: Vec<ChatMessage> = Vec::new();
        let mut previous: Option<(String, String)> = None;
        let mut turns = 0;
        let mut error = None;
        let mut stop_reason = StopReason::MaxTurns;
        for turn in 1..=self.config.max_turns {
            if self.started.elapsed() >= self.config.time_budget {
                stop_reason = StopReason::TimeBudget;
                break;
            }
            let turn_started = Instant::now();
            let prev = previous.as_ref().map(|(p, r)| (p.as_str(), r.as_str()));
            let record = match self.turn(&mut session, &mut conversation, goal, index, turn, prev) {
                Ok(record) => record,
                Err(message) => {
                    stop_reason = StopReason::Error;
                    error = Some(message);
                    break;
                }
            };
            let record = TurnRecord {
                elapsed_ms: millis(turn_started.elapsed()),
                ..record
            };
            writer.write(&TranscriptLine::Turn(record.clone()))?;
            turns = turn;
            if record.judgement.jailbroken {
                stop_reason = StopReason::Jailbroken;
                break;
            }
            previous = Some((record.attack_prompt, record.target_reply));
        }
        let outcome = OutcomeRecord {
            goal_index: index,
            goal_id: goal.id.clone(),
            goal: goal.goal.clone(),
            category: goal.category.clone(),
            success: stop_reason == StopReason::Jailbroken,
            turns,
            stop_reason,
            error,
            elapsed_ms: millis(goal_started.elapsed()),
        };
        writer.write(&TranscriptLine::Outcome(outcome.clone()))?;
        Ok(outcome)
    }

    /// One attacker → target → judge round; the error says which of the three failed.
    fn turn(
        &self,
        session: &mut AttackerSession<'_>,
        conversation: &mut Vec<ChatMessage>,
        goal: &Goal,
        index: usize,
        turn: usize,
        previous: Option<(&str, &str)>,
    ) -> Result<TurnRecord, String> {
        let max_tokens = self.config.max_tokens;
        let attack = session
            .next_turn(turn, previous, max_tokens)
            .map_err(|e| format!("attacker: {e}"))?;
        if attack.reply.trim().is_empty() {
            return Err("attacker: empty answer".into());
        }
        // The target sees a plain chat: the attack prompts and its own replies, nothing else.
        conversation.push(ChatMessage::user(attack.reply.clone()));
        let target_reply = self
            .target
            .reply(conversation, max_tokens)
            .map_err(|e| format!("target: {e}"))?;
        conversation.push(ChatMessage::assistant(target_reply.clone()));
        let judgement = self
            .judge
            .judge(goal, conversation)
            .map_err(|e| format!("judge: {e}"))?;
        Ok(TurnRecord {
            goal_index: index,
            turn,
            suggested_technique: crate::attacker::suggested_technique(index, turn),
            technique: attack.technique,
            format_ok: attack.format_ok,
            attacker_raw: (!attack.format_ok).then(|| attack.raw.clone()),
            observation: attack.observation,
            thought: attack.thought,
            strategy: attack.strategy,
            attack_prompt: attack.reply,
            target_reply,
            judgement,
            elapsed_ms: 0,
        })
    }
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}
