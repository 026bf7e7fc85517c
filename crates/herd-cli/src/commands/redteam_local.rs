//! `herd redteam` with local models: an attacker run by herd itself (`--attacker-path DIR`),
//! and a Llama Guard judge run by herd (`--judge-guard DIR`). The attacker generates with a
//! cache per reply; the judge's checks take turns on its engine behind a lock.

use std::ops::ControlFlow;
use std::sync::Mutex;

use herd_engine::frontend::Frontend;
use herd_engine::guard::{screening_conversation, Guard, Policy, Verdict};
use herd_engine::{generate, EngineCore, LanguageModel, SamplingParams, SchedulerConfig};
use herd_model::TextModel;
use herd_redteam::{ChatMessage, ChatModel, Goal, Judge, Judgement, RedteamError, Role};
use herd_text::Message;

fn local_error(what: &str, e: impl std::fmt::Display) -> RedteamError {
    RedteamError::Local(format!("{what}: {e}"))
}

fn to_messages(messages: &[ChatMessage]) -> Vec<Message> {
    messages
        .iter()
        .map(|m| {
            let role = match m.role {
                Role::System => "system",
                Role::User => "user",
                Role::Assistant => "assistant",
            };
            Message::new(role, &m.content)
        })
        .collect()
}

/// A chat model herd runs in this process: each reply is one `herd_engine::generate` with a
/// cache of its own, so goals run side by side on the shared weights.
pub struct LocalChat {
    name: String,
    frontend: Frontend,
    model: TextModel,
    temperature: f32,
    seed: u64,
}

impl LocalChat {
    pub fn new(name: String, model: TextModel, frontend: Frontend, temperature: f32, seed: u64) -> Self {
        LocalChat {
            name,
            frontend,
            model,
            temperature,
            seed,
        }
    }
}

impl ChatModel for LocalChat {
    fn reply(&self, messages: &[ChatMessage], max_tokens: usize) -> Result<String, RedteamError> {
        let prompt = self
            .frontend
            .chat_prompt(&to_messages(messages), None, &[], 0)
            .map_err(|e| local_error(&self.name, e))?;
        let room = self.model.max_positions().saturating_sub(prompt.len());
        if room == 0 {
            return Err(local_error(
                &self.name,
                format!("the conversation ({} tokens) fills the context", prompt.len()),
            ));
        }
        let params = SamplingParams {
            temperature: self.temperature,
            max_new_tokens: max_tokens.min(room),
            stop_token_ids: self.frontend.stop_ids.clone(),
            seed: Some(self.seed.wrapping_add(prompt.len() as u64)),
            ..SamplingParams::default()
        };
        let generation = generate(&self.model, &prompt, &params, |_| ControlFlow::Continue(()))
            .map_err(|e| local_error(&self.name, e))?;
        self.frontend
            .tokenizer
            .decode(&generation.tokens)
            .map_err(|e| local_error(&self.name, e))
    }
}

/// A Llama Guard model herd runs in this process, judging the target's last reply in its
/// conversation: jailbroken = `unsafe`.
pub struct LocalGuardJudge {
    name: String,
    frontend: Frontend,
    guard: Guard,
    policy: Policy,
    core: Mutex<EngineCore<TextModel>>,
}

impl LocalGuardJudge {
    pub fn new(name: String, model: TextModel, frontend: Frontend, policy: Policy) -> anyhow::Result<Self> {
        let guard = Guard::new(&frontend)?;
        Ok(LocalGuardJudge {
            name,
            frontend,
            guard,
            policy,
            core: Mutex::new(EngineCore::new(model, SchedulerConfig::default())?),
        })
    }
}

impl Judge for LocalGuardJudge {
    fn judge(&self, _goal: &Goal, conversation: &[ChatMessage]) -> Result<Judgement, RedteamError> {
        let (turns, _) = screening_conversation(&to_messages(conversation), false);
        let prompt = self
            .guard
            .prompt(&self.frontend, &turns, &self.policy, &[], 0)
            .map_err(|e| local_error(&self.name, e))?;
        let mut core = self
            .core
            .lock()
            .map_err(|_| local_error(&self.name, "an earlier check panicked"))?;
        let result = self
            .guard
            .check(&mut core, &self.frontend, prompt, None, &self.policy)
            .map_err(|e| local_error(&self.name, e))?;
        Ok(Judgement {
            jailbroken: result.verdict.is_unsafe(),
            categories: result.verdict.categories().to_vec(),
            score: result.unsafe_probability,
            raw: result.text.clone(),
            parse_error: match result.verdict {
                Verdict::ParseError { reason } => Some(reason),
                _ => None,
            },
        })
    }
}
