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
    /// P(the first token of `unsafe`) at the reply's first non-whitespace position under the
    /// guard, from the raw logits (no temperature or penalty). `None` when the reply has no
    /// such position.
    pub unsafe_probability: Option<f32>,
    /// The reply as written, without its end-of-turn token.
    pub text: String,
    /// The reply's token ids (without the end-of-turn token).
    pub tokens: Vec<u32>,
}

/// Whether a chat template is a Llama Guard prompt (so its checkpoint is a guard).
pub fn is_guard_template(template: &ChatTemplate) -> bool {
    template.source().contains(GUARD_MARKER)
}

impl GuardResult {
    /// The result as JSON (`herd moderate --json` and `/v1/moderations`' `herd` field):
    /// `verdict`, `categories` (`[{"code", "name"}]`, names from `policy`),
    /// `unsafe_probability`, `text`, and `error` for a parse error.
    pub fn to_json(&self, policy: &Policy) -> Value {
        let categories: Vec<Value> = self
            .verdict
            .categories()
            .iter()
            .map(|code| json!({"code": code, "name": policy.get(code).map(|c| c.name.clone())}))
            .collect();
        let mut v = json!({
            "verdict": self.verdict.label(),
            "categories": categories,
            "unsafe_probability": self.unsafe_probability,
            "text": self.text,
        });
        if let Verdict::ParseError { reason } = &self.verdict {
            v["error"] = json!(reason);
        }
        v
    }
}

impl Guard {
    /// The guard format for the checkpoint behind `frontend`.
    pub fn new(frontend: &Frontend) -> Result<Self> {
        let (template, origin) = if is_guard_template(&frontend.template) {
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
                        if reader.push(frontend, token, logprob.as_ref()) {
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
    /// P(unsafe) is read at the first token that is not only whitespace: Llama Guard 4 starts
    /// its reply with `\n\n` (the prompt ends at the assistant header), and the verdict word
    /// comes after it.
    pub fn push(&mut self, frontend: &Frontend, token: u32, logprob: Option<&TokenLogprob>) -> bool {
        if self.done {
            return true;
        }
        if self.stop_ids.contains(&token) {
            self.done = true;
            return true;
        }
        if self.unsafe_probability.is_none() {
            let blank = frontend
                .tokenizer
                .decode(&[token])
                .is_ok_and(|t| !t.is_empty() && t.trim().is_empty());
            if !blank {
                self.unsafe_probability = logprob
                    .and_then(|lp| lp.watched.iter().find(|(id, _)| *id == self.unsafe_id))
                    .map(|&(_, lp)| lp.exp());
            }
        }
        self.tokens.push(token);
        false
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
        match &mut m.content {
            herd_text::chat::Content::Text(text) => {
                m.content = herd_text::chat::Content::Parts(vec![json!({"type": "text", "text": text})]);
            }
            // The template writes a turn (and its images) only through a text part.
            herd_text::chat::Content::Parts(parts) => {
                if !parts
                    .iter()
                    .any(|p| p.get("type").and_then(Value::as_str) == Some("text"))
                {
                    parts.push(json!({"type": "text", "text": ""}));
                }
            }
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

/// A chat as a guard checks it: user and assistant turns alternating from the user, with
/// nothing the client wrote left out — system, developer, tool and ipython messages, and
/// assistant turns before the first user turn, are folded into the next user turn (or the last
/// one, when none follows); consecutive turns of one role are merged. With `up_to_last_user`
/// the turns after the last user turn are dropped, so the guard judges the user's request
/// (the template judges the conversation's last turn). Also returns, for the images of the
/// result in order, their indices among the chat's images.
pub fn screening_conversation(messages: &[Message], up_to_last_user: bool) -> (Vec<Message>, Vec<usize>) {
    let parts_of = |m: &Message| -> Vec<Value> {
        match &m.content {
            herd_text::chat::Content::Text(t) => vec![json!({"type": "text", "text": t})],
            herd_text::chat::Content::Parts(p) => p.clone(),
        }
    };
    // Tag each image with its index in the chat, to follow it through the folding.
    let mut next_image = 0usize;
    let mut tagged: Vec<(String, Vec<Value>)> = Vec::with_capacity(messages.len());
    for m in messages {
        let parts: Vec<Value> = parts_of(m)
            .into_iter()
            .map(|mut p| {
                if p.get("type").and_then(Value::as_str) == Some("image") {
                    p["herd_image"] = json!(next_image);
                    next_image += 1;
                }
                p
            })
            .collect();
        tagged.push((m.role.clone(), parts));
    }
    let mut turns: Vec<(String, Vec<Value>)> = Vec::new();
    let mut pending: Vec<Value> = Vec::new();
    for (role, parts) in tagged {
        let is_turn = role == "user" || (role == "assistant" && !turns.is_empty());
        if !is_turn {
            pending.extend(parts);
            continue;
        }
        let mut parts = parts;
        if role == "user" && !pending.is_empty() {
            let mut folded = std::mem::take(&mut pending);
            folded.extend(parts);
            parts = folded;
        }
        match turns.last_mut() {
            Some((last, p)) if *last == role => p.extend(parts),
            _ => turns.push((role, parts)),
        }
    }
    if up_to_last_user {
        if let Some(last_user) = turns.iter().rposition(|(r, _)| r == "user") {
            turns.truncate(last_user + 1);
        }
    }
    if !pending.is_empty() {
        match turns.iter_mut().rev().find(|(r, _)| r == "user") {
            Some((_, p)) => p.extend(pending),
            None => turns.insert(0, ("user".into(), pending)),
        }
    }
    let mut order = Vec::new();
    let out = turns
        .into_iter()
        .map(|(role, mut parts)| {
            for p in &mut parts {
                if let Some(obj) = p.as_object_mut() {
                    if let Some(i) = obj.remove("herd_image").and_then(|v| v.as_u64()) {
                        order.push(i as usize);
                    }
                }
            }
            let mut turn = Message::new(&role, "");
            turn.content = herd_text::chat::Content::Parts(parts);
            turn
        })
        .collect();
    (out, order)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn texts(m: &Message) -> Vec<String> {
        match &m.content {
            herd_text::chat::Content::Parts(p) => p
                .iter()
                .map(|v| {
                    v.get("text")
                        .and_then(Value::as_str)
                        .map_or("<image>".to_string(), str::to_string)
                })
                .collect(),
            herd_text::chat::Content::Text(t) => vec![t.clone()],
        }
    }

    #[test]
    fn nothing_the_client_wrote_is_left_out() {
        let image = |role: &str| {
            let mut m = Message::new(role, "");
            m.content = herd_text::chat::Content::Parts(vec![json!({"type": "image"})]);
            m
        };
        let chat = vec![
            Message::new("system", "sys"),
            image("assistant"),
            Message::new("user", "u1"),
            image("user"),
            Message::new("assistant", "a1"),
            Message::new("tool", "t1"),
            Message::new("user", "u2"),
            Message::new("assistant", "a2"),
            Message::new("ipython", "t2"),
        ];
        let (turns, order) = screening_conversation(&chat, false);
        let roles: Vec<&str> = turns.iter().map(|m| m.role.as_str()).collect();
        assert_eq!(roles, ["user", "assistant", "user", "assistant"]);
        assert_eq!(texts(&turns[0]), ["sys", "<image>", "u1", "<image>"]);
        assert_eq!(texts(&turns[2]), ["t1", "u2", "t2"]);
        assert_eq!(order, [0, 1]);
        // Judging the request: the turns after the last user turn go.
        let (turns, _) = screening_conversation(&chat, true);
        assert_eq!(turns.len(), 3);
        assert_eq!(turns[2].role, "user");
        // No user turn at all: everything is one user turn.
        let (turns, _) = screening_conversation(&[Message::new("system", "only")], true);
        assert_eq!(turns.len(), 1);
        assert_eq!(texts(&turns[0]), ["only"]);
    }
}
