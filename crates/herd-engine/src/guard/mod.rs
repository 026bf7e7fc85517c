//! Llama Guard 4 moderation: a conversation (user and assistant turns, text and images)
//! rendered in the guard's prompt format, the guard model's reply read as a typed
//! [`Verdict`], and the probability of `unsafe` from the first reply token's logits.
//!
//! The prompt comes from the checkpoint's own chat template when it is a Llama Guard template
//! (it lists `UNSAFE CONTENT CATEGORIES`), else from herd's copy of the official Llama Guard 4
//! template ([`LLAMA_GUARD4_TEMPLATE`]); tests render both byte-identically. The policy
//! ([`Policy`]) reaches the template as transformers' keyword arguments do:
//! `excluded_category_keys` for a subset of S1–S14, `categories` for custom ones.
//!
//! One guard check is an ordinary engine [`Request`]: greedy, with the `unsafe` token watched,
//! and no stop ids — the [`VerdictReader`] sees the end-of-turn token itself and says when the
//! reply is complete. So the CLI runs it on an [`EngineCore`] and the server on its engine
//! thread, batched with other requests.

pub mod policy;
pub mod verdict;

use herd_text::{ChatTemplate, Message, SpecialTokens};
use serde_json::{json, Map, Value};

pub use policy::{Category, Policy, DEFAULT_CATEGORIES};
pub use verdict::Verdict;

use crate::error::EngineError;
use crate::frontend::Frontend;
use crate::model::{ImageFeatures, LanguageModel};
use crate::request::{Event, Request, TokenLogprob};
use crate::sampling::SamplingParams;
use crate::EngineCore;

type Result<T> = std::result::Result<T, EngineError>;

/// Llama Guard 4's chat template (`meta-llama/Llama-Guard-4-12B`). The text is vLLM's vendored
/// copy (tpu-inference `examples/chat_templates/chat_template_llama_guard_4.jinja`) with the one
/// blank line it lost restored, so that Jinja2 renders exactly what the checkpoint's processor
/// prints (its published output; see tools/reference/README.md, guard-chat-tiny). It keeps the
/// original's quirks: each message's text is followed by the four characters `\n\n`
/// (backslash, n) and a blank line, and with an image in the conversation the default list
/// drops S14.
pub const LLAMA_GUARD4_TEMPLATE: &str = include_str!("llama_guard4_template.jinja");

/// What marks a chat template as a Llama Guard prompt.
const GUARD_MARKER: &str = "UNSAFE CONTENT CATEGORIES";

/// Where a guard's prompt format came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TemplateOrigin {
    Checkpoint,
    Builtin,
}

/// A loaded guard model's text side: its prompt format and the id its `unsafe` answer starts
/// with.
#[derive(Debug, Clone)]
pub struct Guard {
    template: ChatTemplate,
    origin: TemplateOrigin,
    unsafe_id: u32,
}

/// A guard check's outcome.
#[derive(Debug, Clone, PartialEq)]
pub struct GuardResult {
    pub verdict: Verdict,
    /// P(first reply token = the first token of `unsafe`) under the guard, from the raw
    /// logits (no temperature or penalty). `None` when the reply has no first token.
    pub unsafe_probability: Option<f32>,
    /// The reply as written, without its end-of-turn token.
    pub text: String,
    /// The reply's token ids (without the end-of-turn token).
    pub tokens: Vec<u32>,
}

impl Guard {
    /// The guard format for the checkpoint behind `frontend`.
    pub fn new(frontend: &Frontend) -> Result<Self> {
        let (template, origin) = if frontend.template.source().contains(GUARD_MARKER) {
            (frontend.template.clone(), TemplateOrigin::Checkpoint)
        } else {
            (builtin_template(), TemplateOrigin::Builtin)
        };
        let ids = frontend.tokenizer.encode("unsafe", SpecialTokens::AsText)?;
        let Some(&unsafe_id) = ids.first() else {
            return Err(EngineError::Frontend(
                "the tokenizer encodes `unsafe` as nothing".into(),
            ));
        };
        Ok(Guard {
            template,
            origin,
            unsafe_id,
        })
    }

    pub fn origin(&self) -> TemplateOrigin {
        self.origin
    }

    /// The id whose probability is [`GuardResult::unsafe_probability`].
    pub fn unsafe_id(&self) -> u32 {
        self.unsafe_id
    }

    /// The guard prompt's text for `conversation` under `policy`.
    pub fn render(&self, conversation: &[Message], policy: &Policy) -> Result<String> {
        let (messages, extra) = template_input(conversation, policy)?;
        Ok(self.template.render_with(&messages, None, true, &extra)?)
    }

    /// The guard prompt's ids, each `<|image|>` expanded to its image's tile layout (`grids`
    /// in order). Special-token text inside messages stays text.
    pub fn prompt(
        &self,
        frontend: &Frontend,
        conversation: &[Message],
        policy: &Policy,
        grids: &[(u32, u32)],
        tokens_per_tile: usize,
    ) -> Result<Vec<u32>> {
        let (messages, extra) = template_input(conversation, policy)?;
        let ids = self.template.encode_with(
            &frontend.tokenizer,
            &messages,
            None,
            true,
            SpecialTokens::AsText,
            &extra,
        )?;
        let wanted = count_images(&messages);
        if wanted != grids.len() {
            return Err(EngineError::Frontend(format!(
                "the conversation has {wanted} image(s) but {} were given",
                grids.len()
            )));
        }
        if grids.is_empty() {
            return Ok(ids);
        }
        let markup = herd_text::image_layout::ImageTokenIds::from_tokenizer(&frontend.tokenizer)?;
        Ok(herd_text::image_layout::expand_images(
            &ids,
            &markup,
            grids,
            tokens_per_tile,
        )?)
    }

    /// The engine request for a guard prompt: greedy, `unsafe` watched, no stop ids (the
    /// reader ends the reply), room for the longest verdict `policy` allows.
    pub fn request(
        &self,
        prompt: Vec<u32>,
        images: Option<ImageFeatures>,
        policy: &Policy,
        max_positions: usize,
    ) -> Request {
        // "unsafe\n" and every code with its comma, generously tokenized.
        let longest = 8 + 8 * policy.categories().len();
        let room = max_positions.saturating_sub(prompt.len()).max(1);
        let params = SamplingParams {
            temperature: 0.0,
            max_new_tokens: longest.min(room),
            stop_token_ids: Vec::new(),
            ..SamplingParams::default()
        };
        let mut request = Request::new(prompt, params);
        request.images = images;
        request.watch = vec![self.unsafe_id];
        request
    }

    /// A reader for one check's tokens.
    pub fn reader(&self, frontend: &Frontend) -> VerdictReader {
        VerdictReader {
            unsafe_id: self.unsafe_id,
            stop_ids: frontend.stop_ids.clone(),
            tokens: Vec::new(),
            unsafe_probability: None,
            done: false,
        }
    }

    /// Runs one check to its end on `core` (the CLI's path; the server submits
    /// [`Self::request`] to its engine thread instead).
    pub fn check<M: LanguageModel>(
        &self,
        core: &mut EngineCore<M>,
        frontend: &Frontend,
        prompt: Vec<u32>,
        images: Option<ImageFeatures>,
        policy: &Policy,
    ) -> Result<GuardResult> {
        let request = self.request(prompt, images, policy, core.model().max_positions());
        let id = core.add(request)?;
        let mut reader = self.reader(frontend);
        while core.has_work() {
            for event in core.step() {
                if event.request() != id {
                    continue;
                }
                match event {
                    Event::Token { token, logprob, .. } => {
                        if reader.push(token, logprob.as_ref()) {
                            core.cancel(id);
                            return reader.finish(frontend, policy);
                        }
                    }
                    Event::Finished { .. } => return reader.finish(frontend, policy),
                    Event::Failed { message, .. } => return Err(EngineError::Frontend(message)),
                    Event::PromptLogprobs { .. } => {}
                }
            }
        }
        reader.finish(frontend, policy)
    }
}

/// A guard reply as its tokens arrive.
#[derive(Debug, Clone)]
pub struct VerdictReader {
    unsafe_id: u32,
    stop_ids: Vec<u32>,
    tokens: Vec<u32>,
    unsafe_probability: Option<f32>,
    done: bool,
}

impl VerdictReader {
    /// Takes the next reply token; true once the reply is complete (an end-of-turn token).
    pub fn push(&mut self, token: u32, logprob: Option<&TokenLogprob>) -> bool {
        if self.done {
            return true;
        }
        if self.unsafe_probability.is_none() && self.tokens.is_empty() {
            self.unsafe_probability = logprob
                .and_then(|lp| lp.watched.iter().find(|(id, _)| *id == self.unsafe_id))
                .map(|&(_, lp)| lp.exp());
        }
        if self.stop_ids.contains(&token) {
            self.done = true;
        } else {
            self.tokens.push(token);
        }
        self.done
    }

    /// The verdict of the reply so far (a reply cut off by the length limit is judged as it
    /// stands: an unfinished category list is a parse error or a shorter list).
    pub fn finish(self, frontend: &Frontend, policy: &Policy) -> Result<GuardResult> {
        let text = frontend.tokenizer.decode(&self.tokens)?;
        Ok(GuardResult {
            verdict: Verdict::parse(&text, policy),
            unsafe_probability: self.unsafe_probability,
            text,
            tokens: self.tokens,
        })
    }
}

fn builtin_template() -> ChatTemplate {
    ChatTemplate::new(LLAMA_GUARD4_TEMPLATE, "<|begin_of_text|>", "<|eot|>")
}

/// The template's input: messages with list content (the template reads only `text` and
/// `image` parts; a plain string becomes one text part), and the policy as keyword arguments.
fn template_input(conversation: &[Message], policy: &Policy) -> Result<(Vec<Message>, Map<String, Value>)> {
    if conversation.is_empty() {
        return Err(EngineError::Frontend("the conversation to check is empty".into()));
    }
    let mut messages = Vec::with_capacity(conversation.len());
    for (i, m) in conversation.iter().enumerate() {
        let expected = if i % 2 == 0 { "user" } else { "assistant" };
        if m.role != expected {
            return Err(EngineError::Frontend(format!(
                "message {i}: Llama Guard checks turns that alternate user, assistant, user, …; found `{}` where `{expected}` belongs",
                m.role
            )));
        }
        let mut m = m.clone();
        if let herd_text::chat::Content::Text(text) = &m.content {
            m.content = herd_text::chat::Content::Parts(vec![json!({"type": "text", "text": text})]);
        }
        messages.push(m);
    }
    let mut extra = Map::new();
    extra.insert("excluded_category_keys".into(), json!(policy.excluded_codes()));
    if !policy.is_builtin() {
        let categories: Map<String, Value> = policy
            .categories()
            .iter()
            .map(|c| (c.code.clone(), Value::String(c.name.clone())))
            .collect();
        extra.insert("categories".into(), Value::Object(categories));
        extra.insert("excluded_category_keys".into(), json!([]));
    }
    Ok((messages, extra))
}

fn count_images(messages: &[Message]) -> usize {
    messages
        .iter()
        .map(|m| match &m.content {
            herd_text::chat::Content::Parts(parts) => parts
                .iter()
                .filter(|p| p.get("type").and_then(Value::as_str) == Some("image"))
                .count(),
            herd_text::chat::Content::Text(_) => 0,
        })
        .sum()
}

/// The user and assistant turns of a chat, as a guard checks them: system, tool and ipython
/// messages dropped, consecutive turns of one role merged (their parts in order), leading
/// assistant turns dropped so the conversation starts with the user. Empty when no user turn
/// remains.
pub fn screening_conversation(messages: &[Message]) -> Vec<Message> {
    let mut out: Vec<Message> = Vec::new();
    for m in messages {
        if m.role != "user" && m.role != "assistant" {
            continue;
        }
        if out.is_empty() && m.role == "assistant" {
            continue;
        }
        let parts = match &m.content {
            herd_text::chat::Content::Text(t) => vec![json!({"type": "text", "text": t})],
            herd_text::chat::Content::Parts(p) => p.clone(),
        };
        match out.last_mut() {
            Some(last) if last.role == m.role => {
                if let herd_text::chat::Content::Parts(p) = &mut last.content {
                    p.extend(parts);
                }
            }
            _ => {
                let mut turn = Message::new(&m.role, "");
                turn.content = herd_text::chat::Content::Parts(parts);
                out.push(turn);
            }
        }
    }
    out
}
