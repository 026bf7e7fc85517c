//! Records to token ids with a loss mask: [`Sample`]s.
//!
//! A chat goes through the model's own chat template, and only its assistant turns are
//! learned. For assistant message `i`, the template renders `messages[..i]` with the
//! generation prompt (what inference feeds the model before its reply) and `messages[..=i]`
//! without it; the text between the two ends — with Llama 4's template the reply and its
//! `<|eot|>` — is the trained span. Both renderings must be prefixes of the whole
//! conversation's rendering: a template that rewrites earlier turns (or writes a turn
//! differently from the generation prompt it writes before it) cannot be trained on this way,
//! and the line is refused rather than trained on text inference never shows.
//!
//! The rendering is tokenized span by span, so every token lies wholly inside or outside a
//! trained span, and the context of a reply is tokenized as at inference (which ends the
//! prompt at the generation prompt). Special-token text inside messages stays text, as
//! [`ChatTemplate::encode`] keeps it: that encoding of the whole conversation says where the
//! template's own special tokens are (a special id there can only come from the template), and
//! the spans are cut from the rendering around them.
//!
//! Plain text is BOS + text + EOS, all learned but the BOS. The first token of a sample is
//! never learned: no earlier row of the same sample predicts it.

use std::collections::HashSet;
use std::ops::Range;

use herd_engine::frontend::Frontend;
use herd_text::{ChatTemplate, Message, SpecialTokens, Tokenizer};
use serde_json::Value;

use super::jsonl::{is_trained, Record, RecordKind};
use crate::error::{Error, Result};

/// Opens a trained span in [`Renderer::marked_text`].
pub const TRAINED_START: char = '⟦';
/// Closes a trained span in [`Renderer::marked_text`].
pub const TRAINED_END: char = '⟧';

/// One example as token ids. `trained[i]` says `ids[i]` is a loss target (predicted from the
/// rows before it); `trained[0]` is always false.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sample {
    /// The line of the file it came from.
    pub line: usize,
    pub ids: Vec<u32>,
    pub trained: Vec<bool>,
}

impl Sample {
    pub fn len(&self) -> usize {
        self.ids.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }

    /// Tokens that are loss targets.
    pub fn n_trained(&self) -> usize {
        self.trained.iter().filter(|&&t| t).count()
    }
}

/// Renders records with a checkpoint's tokenizer, chat template, BOS and EOS.
pub struct Renderer<'a> {
    tokenizer: &'a Tokenizer,
    template: &'a ChatTemplate,
    bos_id: Option<u32>,
    eos_id: Option<u32>,
    special_ids: HashSet<u32>,
}

impl<'a> Renderer<'a> {
    /// `bos_id` starts and `eos_id` ends a plain-text sample (chats get what the template
    /// writes).
    pub fn new(
        tokenizer: &'a Tokenizer,
        template: &'a ChatTemplate,
        bos_id: Option<u32>,
        eos_id: Option<u32>,
    ) -> Self {
        let special_ids = tokenizer
            .special_tokens()
            .iter()
            .filter_map(|t| tokenizer.special_id(t))
            .collect();
        Renderer {
            tokenizer,
            template,
            bos_id,
            eos_id,
            special_ids,
        }
    }

    /// The frontend's tokenizer, template and BOS; its first stop id as EOS (`eos_token_id`'s
    /// first, `<|end_of_text|>` in Llama 4's config: a document ends there, not at `<|eot|>`).
    pub fn from_frontend(frontend: &'a Frontend) -> Self {
        Self::new(
            &frontend.tokenizer,
            &frontend.template,
            frontend.bos_id,
            frontend.stop_ids.first().copied(),
        )
    }

    pub fn tokenizer(&self) -> &Tokenizer {
        self.tokenizer
    }

    /// The record's ids and loss mask.
    pub fn sample(&self, record: &Record) -> Result<Sample> {
        let (ids, trained) = match &record.kind {
            RecordKind::Chat { messages, tools } => self.chat(messages, tools.as_deref())?,
            RecordKind::Text(text) => self.text(text)?,
        };
        Ok(Sample {
            line: record.line,
            ids,
            trained,
        })
    }

    fn text(&self, text: &str) -> Result<(Vec<u32>, Vec<bool>)> {
        let mut ids: Vec<u32> = self.bos_id.into_iter().collect();
        ids.extend(self.tokenizer.encode(text, SpecialTokens::AsText)?);
        ids.extend(self.eos_id);
        let mut trained = vec![true; ids.len()];
        if let Some(first) = trained.first_mut() {
            *first = false;
        }
        Ok((ids, trained))
    }

    /// The conversation up to the end of its last trained turn (tokens after it teach nothing),
    /// tokenized span by span.
    fn chat(&self, messages: &[Message], tools: Option<&[Value]>) -> Result<(Vec<u32>, Vec<bool>)> {
        let rendered = self.template.render(messages, tools, false)?;
        let spans = trained_spans(self.template, messages, tools, &rendered)?;
        let whole = self
            .template
            .encode(self.tokenizer, messages, tools, false, SpecialTokens::AsText)?;
        let specials = self.template_specials(&whole, &rendered)?;
        let mut ids = Vec::new();
        let mut trained = Vec::new();
        let mut end = 0;
        for span in spans {
            for (range, is_trained) in [(end..span.start, false), (span.clone(), true)] {
                let span_ids = self.encode_span(&rendered, &specials, range)?;
                trained.extend(std::iter::repeat_n(is_trained, span_ids.len()));
                ids.extend(span_ids);
            }
            end = span.end;
        }
        if let Some(first) = trained.first_mut() {
            *first = false;
        }
        Ok((ids, trained))
    }

    /// Byte ranges (in `rendered`) and ids of the special tokens the template wrote. In the
    /// protected encoding a special id stands only for the template's own token — a message's
    /// special-token text was encoded as text — and the tokens spell the rendering, so their
    /// byte offsets place each one.
    fn template_specials(&self, whole: &[u32], rendered: &str) -> Result<Vec<(Range<usize>, u32)>> {
        let mut spelled = Vec::with_capacity(rendered.len());
        let mut specials = Vec::new();
        for &id in whole {
            let start = spelled.len();
            spelled.extend(self.tokenizer.token_bytes(id)?);
            if self.special_ids.contains(&id) {
                specials.push((start..spelled.len(), id));
            }
        }
        if spelled != rendered.as_bytes() {
            return Err(Error::Data(
                "the conversation's tokens do not spell its rendered text (the template treats \
                 special-token text in messages differently from other text)"
                    .into(),
            ));
        }
        Ok(specials)
    }

    /// The ids of `rendered[span]`: the template's special tokens inside it as their ids, the
    /// text between them as text.
    fn encode_span(
        &self,
        rendered: &str,
        specials: &[(Range<usize>, u32)],
        span: Range<usize>,
    ) -> Result<Vec<u32>> {
        let mut ids = Vec::new();
        let mut at = span.start;
        let first = specials.partition_point(|(r, _)| r.end <= span.start);
        for (range, id) in specials[first..].iter().take_while(|(r, _)| r.start < span.end) {
            if range.start < span.start || range.end > span.end {
                return Err(Error::Data(format!(
                    "a trained span's edge (byte {} or {}) falls inside the template's special token \
                     at bytes {}..{}",
                    span.start, span.end, range.start, range.end
                )));
            }
            ids.extend(self.encode_text(rendered, at..range.start)?);
            ids.push(*id);
            at = range.end;
        }
        ids.extend(self.encode_text(rendered, at..span.end)?);
        Ok(ids)
    }

    fn encode_text(&self, rendered: &str, range: Range<usize>) -> Result<Vec<u32>> {
        if range.is_empty() {
            return Ok(Vec::new());
        }
        let text = rendered.get(range.clone()).ok_or_else(|| {
            Error::Data(format!(
                "bytes {range:?} of the rendering are not whole characters"
            ))
        })?;
        Ok(self.tokenizer.encode(text, SpecialTokens::AsText)?)
    }

    /// The sample's text with every trained span between [`TRAINED_START`] and [`TRAINED_END`]
    /// (what `herd finetune --dry-run` shows): decoded token by token, so the marks sit exactly
    /// where the loss starts and stops.
    pub fn marked_text(&self, sample: &Sample) -> Result<String> {
        let mut runs: Vec<(bool, Vec<u32>)> = Vec::new();
        for (&id, &is_trained) in sample.ids.iter().zip(&sample.trained) {
            match runs.last_mut() {
                Some((flag, ids)) if *flag == is_trained => ids.push(id),
                _ => runs.push((is_trained, vec![id])),
            }
        }
        let mut out = String::new();
        for (is_trained, ids) in runs {
            let text = self.tokenizer.decode(&ids)?;
            if is_trained {
                out.push(TRAINED_START);
                out.push_str(&text);
                out.push(TRAINED_END);
            } else {
                out.push_str(&text);
            }
        }
        Ok(out)
    }
}

/// Byte ranges in `rendered` (the whole conversation) of the trained assistant turns, in
/// order: from the end of the generation prompt before each to the end of its own rendering.
fn trained_spans(
    template: &ChatTemplate,
    messages: &[Message],
    tools: Option<&[Value]>,
    rendered: &str,
) -> Result<Vec<Range<usize>>> {
    let mut spans = Vec::new();
    let mut end = 0;
    for (i, _) in messages.iter().enumerate().filter(|(_, m)| is_trained(m)) {
        let prompt = template.render(&messages[..i], tools, true)?;
        let full = template.render(&messages[..=i], tools, false)?;
        let unstable = |what: &str| {
            Error::Data(format!(
                "the chat template is not prefix-stable: {what} for assistant message {i} is not \
                 the start of the whole conversation's rendering, so its trained span cannot be \
                 cut out"
            ))
        };
        if !rendered.starts_with(&prompt) || prompt.len() < end {
            return Err(unstable("the generation prompt it writes"));
        }
        if !rendered.starts_with(&full) {
            return Err(unstable("the conversation rendered up to and including it"));
        }
        if full.len() <= prompt.len() {
            return Err(Error::Data(format!(
                "the chat template writes nothing after the generation prompt for assistant message \
                 {i} (a reply it does not render, such as empty `tool_calls`)"
            )));
        }
        spans.push(prompt.len()..full.len());
        end = full.len();
    }
    Ok(spans)
}
