//! `herd redteam`'s arguments.

use std::path::PathBuf;

use clap::{Args, ValueEnum};

#[derive(Args)]
pub struct RedteamArgs {
    /// Goals, JSONL: one {"goal": "...", "category": "S2", "id": "..."} per line (category and
    /// id optional).
    #[arg(long, value_name = "FILE.jsonl")]
    pub goals: PathBuf,
    /// The target's OpenAI API base URL, e.g. http://127.0.0.1:8080/v1.
    #[arg(long, value_name = "URL")]
    pub target_url: String,
    /// The model name sent to the target.
    #[arg(long, value_name = "NAME")]
    pub target_model: String,
    /// The attacker's OpenAI API base URL (any chat model).
    #[arg(
        long,
        value_name = "URL",
        required_unless_present = "attacker_path",
        conflicts_with = "attacker_path"
    )]
    pub attacker_url: Option<String>,
    /// The model name sent to the attacker (with --attacker-url).
    #[arg(long, value_name = "NAME", requires = "attacker_url")]
    pub attacker_model: Option<String>,
    /// A local attacker: a checkpoint folder or GGUF herd runs in this process (f32, CPU),
    /// with its chat template.
    #[arg(long, value_name = "DIR|FILE.gguf")]
    pub attacker_path: Option<PathBuf>,
    /// Attacker sampling temperature (GOAT samples the attacker at 1.0).
    #[arg(long, default_value_t = 1.0)]
    pub attacker_temperature: f32,
    /// The judge's OpenAI API base URL: a moderation endpoint (e.g. `herd serve` with Llama
    /// Guard) or a chat model, per --judge-kind.
    #[arg(
        long,
        value_name = "URL",
        required_unless_present = "judge_guard",
        conflicts_with = "judge_guard"
    )]
    pub judge_url: Option<String>,
    /// A local Llama Guard judge: a guard checkpoint herd runs in this process (f32, CPU);
    /// jailbroken = its verdict is `unsafe`.
    #[arg(long, value_name = "DIR|FILE.gguf")]
    pub judge_guard: Option<PathBuf>,
    /// Seed of a local attacker's sampling.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// moderation: POST {judge-url}/moderations, jailbroken = flagged. prompt: ask a chat
    /// model to classify the reply as safe or unsafe.
    #[arg(long, value_enum, default_value_t = JudgeKind::Moderation)]
    pub judge_kind: JudgeKind,
    /// The judge's model name (required with --judge-kind prompt).
    #[arg(long, value_name = "NAME")]
    pub judge_model: Option<String>,
    /// Sent as `Authorization: Bearer KEY` to every endpoint that has no key of its own below.
    #[arg(long, env = "HERD_REDTEAM_API_KEY", hide_env_values = true)]
    pub api_key: Option<String>,
    /// The target's key (default: --api-key).
    #[arg(long, env = "HERD_REDTEAM_TARGET_API_KEY", hide_env_values = true)]
    pub target_api_key: Option<String>,
    /// The attacker's key (default: --api-key).
    #[arg(long, env = "HERD_REDTEAM_ATTACKER_API_KEY", hide_env_values = true)]
    pub attacker_api_key: Option<String>,
    /// The judge's key (default: --api-key).
    #[arg(long, env = "HERD_REDTEAM_JUDGE_API_KEY", hide_env_values = true)]
    pub judge_api_key: Option<String>,
    /// Most turns per goal (attacker message → target reply → judge).
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u32).range(1..=100))]
    pub max_turns: u32,
    /// max_tokens of each attacker and target reply.
    #[arg(long, default_value_t = 256, value_parser = clap::value_parser!(u32).range(1..=65536))]
    pub max_tokens: u32,
    /// Seconds the whole run may take: no turn starts after that (turns in flight finish).
    #[arg(long, default_value_t = 3600)]
    pub time_budget_secs: u64,
    /// Seconds one HTTP request may take, connection to last byte.
    #[arg(long, default_value_t = 120, value_parser = clap::value_parser!(u64).range(1..))]
    pub request_timeout_secs: u64,
    /// Goals run at once.
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u32).range(1..=256))]
    pub concurrency: u32,
    /// Output folder: transcripts/NNNN.jsonl and report.md, report.json, report.png.
    #[arg(long, value_name = "DIR", default_value = "redteam-out")]
    pub out: PathBuf,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum JudgeKind {
    Moderation,
    Prompt,
}

impl RedteamArgs {
    /// An endpoint's own key, else the shared one: one host's key reaches another only when
    /// the user gave a single key for all.
    pub fn key(&self, own: &Option<String>) -> Option<String> {
        own.clone().or_else(|| self.api_key.clone())
    }
}
