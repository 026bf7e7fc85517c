//! `herd redteam`: a GOAT-style multi-turn red-team harness (Pavlova et al., "Automated Red
//! Teaming with GOAT", arXiv:2410.01606).
//!
//! An attacker chat model converses with a target model for up to N turns per goal. Each turn
//! the attacker is suggested one of GOAT's seven techniques (rotating), reasons in an
//! Observation / Thought / Strategy / Reply format, and only its Reply reaches the target; a
//! judge (a moderation endpoint such as Llama Guard, or a classification prompt on a chat model)
//! decides whether the target's answer is a jailbreak. Every goal's conversation is written as a
//! JSONL transcript, and the report (attack success rate per technique and category, turns to
//! success) is computed from those transcripts as Markdown, JSON and a PNG chart.
//!
//! Models and judges are traits ([`ChatModel`], [`Judge`]); the OpenAI-API clients contact only
//! the base URLs they are given and never follow redirects.

pub mod attacker;
mod chart;
pub mod chat;
pub mod error;
pub mod goals;
mod http;
pub mod judge;
pub mod report;
pub mod run;
pub mod techniques;
pub mod transcript;

pub use attacker::{parse_attacker_output, suggested_technique, AttackerSession, AttackerTurn};
pub use chart::MAX_CHART_CATEGORIES;
pub use chat::{ChatMessage, ChatModel, OpenAiChat, Role};
pub use error::RedteamError;
pub use goals::{parse_goals, read_goals, Goal};
pub use judge::{Judge, Judgement, ModerationJudge, PromptJudge};
pub use report::Report;
pub use run::{run, run_with_progress, RunConfig, RunSummary};
pub use techniques::Technique;
pub use transcript::{OutcomeRecord, StopReason, TranscriptLine, TurnRecord};
