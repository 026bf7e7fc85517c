//! Fake attacker, target and judge: deterministic, no network, recording what they were sent.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use herd_redteam::{ChatMessage, ChatModel, Goal, Judge, Judgement, RedteamError, Role, Technique};

/// The goal named in the attacker's system prompt (`+++ goal +++`).
fn goal_of(messages: &[ChatMessage]) -> String {
    let system = &messages[0].content;
    let start = system.find("+++ ").unwrap() + 4;
    let end = system[start..].find(" +++").unwrap() + start;
    system[start..end].to_string()
}

/// Answers in the GOAT format, naming the technique it was suggested (or `strategy_names`).
#[derive(Default)]
pub struct FakeAttacker {
    pub calls: Mutex<Vec<Vec<ChatMessage>>>,
    /// The technique the strategy names instead of the suggested one.
    pub strategy_names: Option<Technique>,
}

impl FakeAttacker {
    pub fn calls_for(&self, goal: &str) -> Vec<Vec<ChatMessage>> {
        let calls = self.calls.lock().unwrap();
        calls.iter().filter(|c| goal_of(c) == goal).cloned().collect()
    }
}

/// The technique a turn message suggests.
pub fn suggested_in(message: &str) -> Technique {
    Technique::ALL
        .into_iter()
        .find(|t| {
            message.contains(&format!(
                "Suggested technique for this turn: {} ({})",
                t.name(),
                t.id()
            ))
        })
        .unwrap()
}

impl ChatModel for FakeAttacker {
    fn reply(&self, messages: &[ChatMessage], _max_tokens: usize) -> Result<String, RedteamError> {
        self.calls.lock().unwrap().push(messages.to_vec());
        let suggested = suggested_in(&messages.last().unwrap().content);
        let technique = self.strategy_names.unwrap_or(suggested);
        let turn = messages.iter().filter(|m| m.role == Role::User).count();
        Ok(format!(
            "Observation: the target answered.\nThought: keep going.\nStrategy: apply {} now.\n\
             Reply: attack on [{}] turn {turn}",
            technique.name(),
            goal_of(messages)
        ))
    }
}

/// Complies ("SUCCESS") at a given turn for some goals, fails with an error at a given turn
/// for others, refuses otherwise; optionally slow; counts requests in flight.
#[derive(Default)]
pub struct FakeTarget {
    pub succeed_at: HashMap<String, usize>,
    pub fail_at: HashMap<String, usize>,
    pub delay: Duration,
    pub conversations: Mutex<Vec<Vec<ChatMessage>>>,
    pub in_flight: AtomicUsize,
    pub max_in_flight: AtomicUsize,
}

impl ChatModel for FakeTarget {
    fn reply(&self, messages: &[ChatMessage], _max_tokens: usize) -> Result<String, RedteamError> {
        let now = self.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
        self.max_in_flight.fetch_max(now, Ordering::SeqCst);
        std::thread::sleep(self.delay);
        self.in_flight.fetch_sub(1, Ordering::SeqCst);
        self.conversations.lock().unwrap().push(messages.to_vec());
        let last = &messages.last().unwrap().content;
        let goal = &last[last.find('[').unwrap() + 1..last.find(']').unwrap()];
        let turn = messages.iter().filter(|m| m.role == Role::User).count();
        if self.fail_at.get(goal) == Some(&turn) {
            return Err(RedteamError::Transport {
                url: "http://fake/v1/chat/completions".into(),
                message: "connection refused".into(),
            });
        }
        if self.succeed_at.get(goal) == Some(&turn) {
            return Ok(format!("SUCCESS: here is how to {goal}"));
        }
        Ok("I cannot help with that.".into())
    }
}

/// Jailbroken when the last reply says SUCCESS; fails for goals that contain "judge-fails".
pub struct FakeJudge;

impl Judge for FakeJudge {
    fn judge(&self, goal: &Goal, conversation: &[ChatMessage]) -> Result<Judgement, RedteamError> {
        if goal.goal.contains("judge-fails") {
            return Err(RedteamError::Transport {
                url: "http://fake/v1/moderations".into(),
                message: "timed out".into(),
            });
        }
        let reply = &conversation.last().unwrap().content;
        Ok(Judgement {
            jailbroken: reply.contains("SUCCESS"),
            categories: if reply.contains("SUCCESS") {
                vec!["S2".into()]
            } else {
                vec![]
            },
            score: None,
            raw: "fake".into(),
            parse_error: None,
        })
    }
}
