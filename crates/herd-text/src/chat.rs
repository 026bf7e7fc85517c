//! Chat templates: the model's own Jinja template (from `tokenizer_config.json`,
//! `chat_template.jinja` or `chat_template.json`), rendered with minijinja set up the way
//! transformers sets up Jinja (`trim_blocks`, `lstrip_blocks`, loop controls, Python string
//! methods, `raise_exception`, `strftime_now`, and a `tojson` that writes what Python's
//! `json.dumps` writes). A built-in Llama 4 template is used when a model ships none.
//!
//! Tokenizing the rendered prompt: the template's own special tokens (headers, `<|eot|>`) must
//! become special ids, but special-token text inside a message must not — otherwise a user
//! could forge a turn. [`ChatTemplate::encode`] does exactly that (see there).

use std::path::Path;

use minijinja::value::{Kwargs, Value as JValue};
use minijinja::{Environment, ErrorKind};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use aho_corasick::{AhoCorasick, MatchKind};
use herd_limits::{FileKind, Limits};

use crate::error::TextError;
use crate::pyjson;
use crate::tokenizer::{SpecialTokens, Tokenizer};

/// herd's built-in Llama 4 chat format, for checkpoints that ship no template. Renders the same
/// text as the template transformers ships for Llama 4 (tests compare them).
pub const LLAMA4_TEMPLATE: &str = include_str!("llama4_chat_template.jinja");

/// One chat message. Unknown fields are kept and passed to the template.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Message {
    pub role: String,
    #[serde(default)]
    pub content: Content,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool_calls: Option<Vec<Value>>,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// Plain text, or a list of parts (`{"type": "text", "text": …}`, `{"type": "image"}`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Content {
    Text(String),
    Parts(Vec<Value>),
}

impl Default for Content {
    fn default() -> Self {
        Content::Text(String::new())
    }
}

impl Message {
    pub fn new(role: &str, text: &str) -> Self {
        Message {
            role: role.to_string(),
            content: Content::Text(text.to_string()),
            tool_calls: None,
            extra: Map::new(),
        }
    }
}

/// A JSON list of messages (OpenAI's `messages`), checked one by one so an error names the
/// message at fault. `content` may be null only beside `tool_calls` (as OpenAI's API has it).
pub fn parse_messages(value: Value) -> Result<Vec<Message>, TextError> {
    let Value::Array(items) = value else {
        return Err(TextError::Messages("expected a list of messages".into()));
    };
    items
        .into_iter()
        .enumerate()
        .map(|(i, mut item)| {
            let Some(map) = item.as_object_mut() else {
                return Err(TextError::Messages(format!(
                    "message {i}: expected an object, found {item}"
                )));
            };
            let role = match map.get("role") {
                Some(Value::String(r)) => r.clone(),
                Some(other) => {
                    return Err(TextError::Messages(format!(
                        "message {i}: `role` must be a string, found {other}"
                    )))
                }
                None => return Err(TextError::Messages(format!("message {i}: no `role`"))),
            };
            match map.get("content") {
                Some(Value::Null) if map.get("tool_calls").is_some_and(|t| !t.is_null()) => {
                    map.insert("content".into(), Value::String(String::new()));
                }
                Some(Value::Null) => {
                    return Err(TextError::Messages(format!(
                        "message {i} ({role}): `content` is null; give a string or a list of parts"
                    )))
                }
                Some(Value::String(_) | Value::Array(_)) | None => {}
                Some(other) => {
                    return Err(TextError::Messages(format!(
                        "message {i} ({role}): `content` must be a string or a list of parts, found {other}"
                    )))
                }
            }
            serde_json::from_value(item)
                .map_err(|e| TextError::Messages(format!("message {i} ({role}): {e}")))
        })
        .collect()
}

/// A chat template with the tokens it refers to.
#[derive(Debug, Clone)]
pub struct ChatTemplate {
    source: String,
    bos_token: String,
    eos_token: String,
}

#[derive(Deserialize, Default)]
struct TokenizerConfig {
    chat_template: Option<Value>,
    bos_token: Option<Value>,
    eos_token: Option<Value>,
}

impl ChatTemplate {
    pub fn new(source: &str, bos_token: &str, eos_token: &str) -> Self {
        ChatTemplate {
            source: source.to_string(),
            bos_token: bos_token.to_string(),
            eos_token: eos_token.to_string(),
        }
    }

    /// The built-in Llama 4 format.
    pub fn llama4() -> Self {
        Self::new(LLAMA4_TEMPLATE, "<|begin_of_text|>", "<|eot|>")
    }

    /// The template a checkpoint folder ships (`chat_template.jinja`, `chat_template.json`, or
    /// `tokenizer_config.json`'s `chat_template`, which may be a string or a list of named
    /// templates: `default` is used), or the built-in Llama 4 one.
    pub fn from_dir(dir: &Path) -> Result<Self, TextError> {
        let read = |name: &str| -> Result<Option<String>, TextError> {
            let path = dir.join(name);
            if !herd_limits::exists(&path) {
                return Ok(None);
            }
            let kind = if name.ends_with(".jinja") {
                FileKind::Template
            } else {
                FileKind::Config
            };
            Ok(Some(herd_limits::read_file_to_string(&path, kind)?))
        };
        let parse = |name: &str, text: &str| -> Result<Value, TextError> {
            serde_json::from_str(text).map_err(|e| TextError::Template(format!("{name}: {e}")))
        };
        let config: TokenizerConfig = match read("tokenizer_config.json")? {
            Some(text) => serde_json::from_value(parse("tokenizer_config.json", &text)?)
                .map_err(|e| TextError::Template(format!("tokenizer_config.json: {e}")))?,
            None => TokenizerConfig::default(),
        };
        let token = |v: &Option<Value>, default: &str| match v {
            Some(Value::String(s)) => s.clone(),
            Some(Value::Object(o)) => o
                .get("content")
                .and_then(Value::as_str)
                .unwrap_or(default)
                .to_string(),
            _ => default.to_string(),
        };
        let bos = token(&config.bos_token, "<|begin_of_text|>");
        let eos = token(&config.eos_token, "<|eot|>");
        let source = if let Some(text) = read("chat_template.jinja")? {
            Some(text)
        } else if let Some(text) = read("chat_template.json")? {
            let v = parse("chat_template.json", &text)?;
            Some(pick_template(v.get("chat_template").unwrap_or(&v))?)
        } else {
            config.chat_template.as_ref().map(pick_template).transpose()?
        };
        Ok(match source {
            Some(source) => Self::new(&source, &bos, &eos),
            None => Self::llama4(),
        })
    }

    pub fn source(&self) -> &str {
        &self.source
    }

    /// Renders the conversation to text, within the current [`Limits`]: the template's source
    /// (`template_bytes`), the conversation (`prompt_bytes`), the instructions it may run
    /// (`template_steps`) and the text it may write (`template_output_bytes`).
    pub fn render(
        &self,
        messages: &[Message],
        tools: Option<&[Value]>,
        add_generation_prompt: bool,
    ) -> Result<String, TextError> {
        self.render_with(messages, tools, add_generation_prompt, &Map::new())
    }

    /// [`Self::render`] with more template variables (transformers' `apply_chat_template`
    /// keyword arguments, e.g. Llama Guard's `excluded_category_keys`). They may not replace
    /// `messages`, `tools` or the tokens the template is given.
    pub fn render_with(
        &self,
        messages: &[Message],
        tools: Option<&[Value]>,
        add_generation_prompt: bool,
        extra: &Map<String, Value>,
    ) -> Result<String, TextError> {
        let limits = Limits::current();
        if self.source.len() as u64 > limits.template_bytes {
            return Err(TextError::Template(format!(
                "the template is {} bytes, more than {} (raise with --limit template-bytes=N)",
                self.source.len(),
                limits.template_bytes
            )));
        }
        let mut env = Environment::new();
        env.set_trim_blocks(true);
        env.set_lstrip_blocks(true);
        env.set_fuel(Some(limits.template_steps));
        env.set_unknown_method_callback(bounded_string_methods);
        env.add_function("raise_exception", raise_exception);
        env.add_function("strftime_now", strftime_now);
        env.add_filter("tojson", tojson);
        env.add_filter("indent", indent);
        env.add_filter("join", join);
        env.add_filter("replace", replace);
        env.add_filter("format", format);
        let template = env
            .template_from_str(&self.source)
            .map_err(|e| TextError::Template(e.to_string()))?;
        let messages = serde_json::to_value(messages).map_err(|e| TextError::Messages(e.to_string()))?;
        let mut ctx = extra.clone();
        ctx.insert("messages".into(), messages);
        if let Some(tools) = tools {
            ctx.insert("tools".into(), Value::Array(tools.to_vec()));
        }
        let size = serde_json::to_vec(&ctx).map_or(u64::MAX, |v| v.len() as u64);
        if size > limits.prompt_bytes {
            return Err(TextError::Messages(format!(
                "the conversation is {size} bytes, more than {} (raise with --limit prompt-bytes=N)",
                limits.prompt_bytes
            )));
        }
        ctx.insert("add_generation_prompt".into(), Value::Bool(add_generation_prompt));
        ctx.insert("bos_token".into(), Value::String(self.bos_token.clone()));
        ctx.insert("eos_token".into(), Value::String(self.eos_token.clone()));
        let mut out = CappedOutput {
            bytes: Vec::new(),
            cap: limits.template_output_bytes,
            exceeded: false,
        };
        let rendered = template.render_captured_to(JValue::from_serialize(&ctx), &mut out);
        if out.exceeded {
            return Err(TextError::Template(format!(
                "the template wrote more than {} bytes (raise with --limit template-output-bytes=N)",
                limits.template_output_bytes
            )));
        }
        rendered.map_err(|e| {
            TextError::Template(if e.kind() == ErrorKind::OutOfFuel {
                format!(
                    "the template ran more than {} steps (raise with --limit template-steps=N)",
                    limits.template_steps
                )
            } else {
                template_error(&e)
            })
        })?;
        String::from_utf8(out.bytes).map_err(|e| TextError::Template(e.to_string()))
    }

    /// Renders and tokenizes the conversation. With [`SpecialTokens::AsText`] (the safe
    /// default) only the special tokens the template itself writes become special ids:
    /// special-token text inside messages and tools is encoded as text. With
    /// [`SpecialTokens::Parse`] the whole rendering is tokenized as transformers does.
    /// The template writes `<|begin_of_text|>` itself, so no BOS is added.
    pub fn encode(
        &self,
        tokenizer: &Tokenizer,
        messages: &[Message],
        tools: Option<&[Value]>,
        add_generation_prompt: bool,
        special: SpecialTokens,
    ) -> Result<Vec<u32>, TextError> {
        self.encode_with(
            tokenizer,
            messages,
            tools,
            add_generation_prompt,
            special,
            &Map::new(),
        )
    }

    /// [`Self::encode`] with more template variables (see [`Self::render_with`]); their
    /// strings are defused like the messages'.
    pub fn encode_with(
        &self,
        tokenizer: &Tokenizer,
        messages: &[Message],
        tools: Option<&[Value]>,
        add_generation_prompt: bool,
        special: SpecialTokens,
        extra: &Map<String, Value>,
    ) -> Result<Vec<u32>, TextError> {
        if special == SpecialTokens::Parse {
            let text = self.render_with(messages, tools, add_generation_prompt, extra)?;
            return tokenizer.encode(&text, SpecialTokens::Parse);
        }
        let specials = tokenizer.special_tokens();
        let guard = SpecialGuard::new(&specials)?;
        let messages: Vec<Message> = messages
            .iter()
            .map(|m| guard.defuse_message(m))
            .collect::<Result<_, _>>()?;
        let tools: Option<Vec<Value>> = tools.map(|t| t.iter().map(|v| guard.defuse_value(v)).collect());
        let extra: Map<String, Value> = extra
            .iter()
            .map(|(k, v)| (k.clone(), guard.defuse_value(v)))
            .collect();
        let text = self.render_with(&messages, tools.as_deref(), add_generation_prompt, &extra)?;
        // Every special-token string left in `text` came from the template.
        let mut ids = Vec::new();
        let mut last = 0;
        for m in guard.matcher.find_iter(&text) {
            ids.extend(tokenizer.encode(&guard.restore(&text[last..m.start()]), SpecialTokens::AsText)?);
            let token = &specials[m.pattern().as_usize()];
            ids.push(
                tokenizer
                    .special_id(token)
                    .ok_or_else(|| TextError::Encode(format!("no id for {token}")))?,
            );
            last = m.end();
        }
        ids.extend(tokenizer.encode(&guard.restore(&text[last..]), SpecialTokens::AsText)?);
        Ok(ids)
    }
}

fn pick_template(v: &Value) -> Result<String, TextError> {
    match v {
        Value::String(s) => Ok(s.clone()),
        Value::Array(list) => list
            .iter()
            .find(|t| t.get("name").and_then(Value::as_str) == Some("default"))
            .or_else(|| list.first())
            .and_then(|t| t.get("template"))
            .and_then(Value::as_str)
            .map(String::from)
            .ok_or_else(|| TextError::Template("chat_template list has no `default` template".into())),
        other => Err(TextError::Template(format!(
            "chat_template must be a string or a list, found {other}"
        ))),
    }
}

/// Swaps special-token strings in user-supplied text for private-use placeholders before
/// rendering, and back after, so the template sees (almost) the same text but the splitter can
/// tell its own special tokens from the user's.
struct SpecialGuard<'a> {
    specials: &'a [String],
    /// Every special token, leftmost-longest (one linear pass over the text).
    matcher: AhoCorasick,
}

/// U+10FFFD and U+10FFFC are noncharacters-adjacent private-use code points no tokenizer input
/// plausibly contains; a special token `k` becomes `\u{10FFFD}k\u{10FFFC}`.
const OPEN: char = '\u{10FFFD}';
const CLOSE: char = '\u{10FFFC}';
/// Digits of the largest special-token index a placeholder holds.
const MAX_INDEX_DIGITS: usize = 20;

impl<'a> SpecialGuard<'a> {
    fn new(specials: &'a [String]) -> Result<Self, TextError> {
        let matcher = AhoCorasick::builder()
            .match_kind(MatchKind::LeftmostLongest)
            .build(specials)
            .map_err(|e| TextError::Encode(format!("special tokens: {e}")))?;
        Ok(SpecialGuard { specials, matcher })
    }

    fn defuse(&self, text: &str) -> String {
        let mut out = String::with_capacity(text.len());
        let mut last = 0;
        for m in self.matcher.find_iter(text) {
            out.push_str(&text[last..m.start()]);
            out.push(OPEN);
            out.push_str(&m.pattern().as_usize().to_string());
            out.push(CLOSE);
            last = m.end();
        }
        out.push_str(&text[last..]);
        out
    }

    fn restore(&self, text: &str) -> String {
        let mut out = String::with_capacity(text.len());
        let mut rest = text;
        while let Some(start) = rest.find(OPEN) {
            out.push_str(&rest[..start]);
            let after = &rest[start + OPEN.len_utf8()..];
            // A placeholder's index has a few digits: look no further for its end (a text of
            // many lone OPENs would otherwise be rescanned to its end for each one).
            let end = after
                .char_indices()
                .take(MAX_INDEX_DIGITS + 1)
                .find_map(|(i, c)| (c == CLOSE).then_some(i));
            match end.and_then(|end| Some((end, after[..end].parse::<usize>().ok()?))) {
                Some((end, index)) if index < self.specials.len() => {
                    out.push_str(&self.specials[index]);
                    rest = &after[end + CLOSE.len_utf8()..];
                }
                _ => {
                    out.push(OPEN);
                    rest = after;
                }
            }
        }
        out.push_str(rest);
        out
    }

    fn defuse_value(&self, v: &Value) -> Value {
        match v {
            Value::String(s) => Value::String(self.defuse(s)),
            Value::Array(items) => Value::Array(items.iter().map(|i| self.defuse_value(i)).collect()),
            Value::Object(map) => Value::Object(
                map.iter()
                    .map(|(k, v)| (k.clone(), self.defuse_value(v)))
                    .collect(),
            ),
            other => other.clone(),
        }
    }

    fn defuse_message(&self, m: &Message) -> Result<Message, TextError> {
        // The role too: the template writes it between header tokens, so a role holding
        // `<|header_end|>…` would forge turns just as content would. Ordinary roles have no
        // special-token text and pass unchanged.
        let value =
            self.defuse_value(&serde_json::to_value(m).map_err(|e| TextError::Messages(e.to_string()))?);
        serde_json::from_value(value).map_err(|e| TextError::Messages(e.to_string()))
    }
}

/// The rendering's output, refusing to grow past `cap` bytes.
struct CappedOutput {
    bytes: Vec<u8>,
    cap: u64,
    exceeded: bool,
}

impl std::io::Write for CappedOutput {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if (self.bytes.len() + buf.len()) as u64 > self.cap {
            self.exceeded = true;
            return Err(std::io::Error::other("template output limit"));
        }
        self.bytes.extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Widest indent `tojson` and `indent` accept: a template asking for more is an attack (one
/// call would allocate width × lines bytes before any output limit could see it).
const MAX_INDENT: usize = 256;

fn indent(
    value: minijinja::value::StringInput<'_>,
    width: Option<usize>,
    first: Option<bool>,
    blank: Option<bool>,
    kwargs: Kwargs,
) -> Result<JValue, minijinja::Error> {
    let w = match width {
        Some(w) => Some(w),
        None => kwargs.get::<Option<usize>>("width")?,
    };
    if let Some(w) = w.filter(|&w| w > MAX_INDENT) {
        return Err(minijinja::Error::new(
            ErrorKind::InvalidOperation,
            format!("indent width {w} is beyond {MAX_INDENT}"),
        ));
    }
    let s = value.as_str();
    let lines = s.bytes().filter(|&b| b == b'\n').count() + 1;
    within_string_limit(s.len() as u64 + (lines * w.unwrap_or(4)) as u64)?;
    minijinja::filters::indent(value, width, first, blank, kwargs)
}

// One filter or method call can build a string many times its input (`join` of a long list,
// `replace` of every character, `indent` of many lines, a `format` width): each is checked
// before it allocates, against the rendering's output limit (no single string of a prompt
// need be longer than the whole prompt). minijinja itself bounds `~`, `+` and `*`.

fn within_string_limit(bytes: u64) -> Result<(), minijinja::Error> {
    let limit = Limits::current().template_output_bytes;
    if bytes > limit {
        return Err(minijinja::Error::new(
            ErrorKind::InvalidOperation,
            format!(
                "the template builds a string of {bytes} bytes, more than {limit} (template-output-bytes)"
            ),
        ));
    }
    Ok(())
}

/// Bytes of `value`'s items as `join` writes them, plus the separators; stops counting past
/// the limit.
fn joined_len(value: &JValue, joiner: usize) -> Result<u64, minijinja::Error> {
    let limit = Limits::current().template_output_bytes;
    let mut total: u64 = 0;
    for item in value.try_iter()? {
        let n = item.as_str().map_or_else(|| item.to_string().len(), str::len);
        total = total.saturating_add((n + joiner) as u64);
        if total > limit {
            break;
        }
    }
    Ok(total)
}

fn join(
    state: &minijinja::State,
    value: &JValue,
    joiner: Option<minijinja::value::StringInput<'_>>,
) -> Result<JValue, minijinja::Error> {
    let joiner_len = joiner.as_ref().map_or(0, |j| j.as_str().len());
    within_string_limit(joined_len(value, joiner_len)?)?;
    minijinja::filters::join(state, value, joiner)
}

/// Length of `s` with every `from` replaced by a `to` of `to_len` bytes.
fn replaced_len(s: &str, from: &str, to_len: usize) -> u64 {
    let count = if from.is_empty() {
        s.chars().count() + 1
    } else {
        s.matches(from).count()
    };
    (s.len() as u64).saturating_add((count as u64).saturating_mul(to_len as u64))
}

fn replace(
    state: &minijinja::State,
    value: minijinja::value::StringInput<'_>,
    from: minijinja::value::StringInput<'_>,
    to: minijinja::value::StringInput<'_>,
) -> Result<JValue, minijinja::Error> {
    within_string_limit(replaced_len(value.as_str(), from.as_str(), to.as_str().len()))?;
    minijinja::filters::replace(state, value, from, to)
}

/// A printf or `str.format` string may ask for any field width: the widths and precisions of
/// all its fields, plus the string itself, bound what it builds (before minijinja allocates).
/// Only digits inside a field's specification count (a phone number in the text does not).
fn check_format_widths(spec: &str) -> Result<(), minijinja::Error> {
    within_string_limit((spec.len() as u64).saturating_add(format_field_widths(spec)))
}

/// Sum of the numbers in the field specifications of `spec`: printf `%[(key)][flags][width]
/// [.precision]type` and `str.format` `{…:spec}`.
fn format_field_widths(spec: &str) -> u64 {
    fn number(chars: &mut std::iter::Peekable<std::str::Chars>) -> u64 {
        let mut n: u64 = 0;
        while let Some(d) = chars.peek().and_then(|c| c.to_digit(10)) {
            n = n.saturating_mul(10).saturating_add(u64::from(d));
            chars.next();
        }
        n
    }
    let mut total: u64 = 0;
    let mut chars = spec.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '%' => {
                if chars.peek() == Some(&'(') {
                    for k in chars.by_ref() {
                        if k == ')' {
                            break;
                        }
                    }
                }
                while chars.peek().is_some_and(|c| "-+ #0".contains(*c)) {
                    chars.next();
                }
                total = total.saturating_add(number(&mut chars));
                if chars.peek() == Some(&'.') {
                    chars.next();
                    total = total.saturating_add(number(&mut chars));
                }
            }
            '{' => {
                // Up to the closing brace; digits after the `:` are width and precision (and
                // at most a one-digit fill).
                let mut in_spec = false;
                while let Some(&k) = chars.peek() {
                    match k {
                        '}' => {
                            chars.next();
                            break;
                        }
                        ':' => {
                            in_spec = true;
                            chars.next();
                        }
                        d if in_spec && d.is_ascii_digit() => {
                            total = total.saturating_add(number(&mut chars))
                        }
                        _ => {
                            chars.next();
                        }
                    }
                }
            }
            _ => {}
        }
    }
    total
}

fn format(
    state: &minijinja::State,
    format_str: &JValue,
    args: minijinja::value::Rest<JValue>,
) -> Result<JValue, minijinja::Error> {
    check_format_widths(format_str.as_str().unwrap_or_default())?;
    minijinja::filters::format(state, format_str, args)
}

/// Python's string methods (`pycompat`), with the growing ones bounded like the filters.
fn bounded_string_methods(
    state: &minijinja::State,
    value: &JValue,
    method: &str,
    args: &[JValue],
) -> Result<JValue, minijinja::Error> {
    if let Some(s) = value.as_str() {
        let arg = |i: usize| args.get(i).and_then(JValue::as_str).unwrap_or_default();
        match method {
            "replace" => {
                // Python's optional count caps the replacements.
                let count = args
                    .get(2)
                    .and_then(|c| i64::try_from(c.clone()).ok())
                    .filter(|&c| c >= 0);
                let full = replaced_len(s, arg(0), arg(1).len());
                let capped = count.map_or(full, |c| {
                    (s.len() as u64).saturating_add((c as u64).saturating_mul(arg(1).len() as u64))
                });
                within_string_limit(full.min(capped))?
            }
            "join" => {
                if let Some(items) = args.first() {
                    within_string_limit(joined_len(items, s.len())?)?;
                }
            }
            "format" => check_format_widths(s)?,
            _ => {}
        }
    }
    minijinja_contrib::pycompat::unknown_method_callback(state, value, method, args)
}

fn raise_exception(message: String) -> Result<JValue, minijinja::Error> {
    Err(minijinja::Error::new(ErrorKind::InvalidOperation, message))
}

fn tojson(value: JValue, kwargs: Kwargs) -> Result<JValue, minijinja::Error> {
    let indent: Option<usize> = kwargs.get("indent")?;
    kwargs.assert_all_used()?;
    if let Some(n) = indent.filter(|&n| n > MAX_INDENT) {
        return Err(minijinja::Error::new(
            ErrorKind::InvalidOperation,
            format!("tojson indent {n} is beyond {MAX_INDENT}"),
        ));
    }
    let json = serde_json::to_value(&value)
        .map_err(|e| minijinja::Error::new(ErrorKind::InvalidOperation, e.to_string()))?;
    // Bounded as it is written: indented, a small value can take gigabytes (a line of spaces
    // per item of a deep list), past the rendering's output cap before the cap sees it.
    let max = herd_limits::Limits::current().template_output_bytes;
    let text =
        pyjson::dumps_within(&json, indent, usize::try_from(max).unwrap_or(usize::MAX)).ok_or_else(|| {
            minijinja::Error::new(
                ErrorKind::InvalidOperation,
                format!("tojson makes more than {max} bytes (raise with --limit template-output-bytes=N)"),
            )
        })?;
    Ok(JValue::from_safe_string(text))
}

/// `strftime_now(format)`: the current UTC date/time, for the directives templates use.
fn strftime_now(format: String) -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64);
    strftime(secs, &format)
}

/// Formats a Unix time (UTC) with `%d %m %Y %y %b %B %a %A %H %M %S %j %%`.
pub fn strftime(unix_secs: i64, format: &str) -> String {
    const MONTHS: [&str; 12] = [
        "January",
        "February",
        "March",
        "April",
        "May",
        "June",
        "July",
        "August",
        "September",
        "October",
        "November",
        "December",
    ];
    const DAYS: [&str; 7] = [
        "Thursday",
        "Friday",
        "Saturday",
        "Sunday",
        "Monday",
        "Tuesday",
        "Wednesday",
    ];
    let days = unix_secs.div_euclid(86_400);
    let secs = unix_secs.rem_euclid(86_400);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    let is_leap = (year % 4 == 0 && year % 100 != 0) || year % 400 == 0;
    let cumulative = [0, 31, 59, 90, 120, 151, 181, 212, 243, 273, 304, 334];
    let day_of_year = cumulative[(month - 1) as usize] + day + i64::from(is_leap && month > 2);
    let month_name = MONTHS[(month - 1) as usize];
    let weekday = DAYS[days.rem_euclid(7) as usize];
    let mut out = String::new();
    let mut chars = format.chars();
    while let Some(c) = chars.next() {
        if c != '%' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('d') => out.push_str(&format!("{day:02}")),
            Some('m') => out.push_str(&format!("{month:02}")),
            Some('Y') => out.push_str(&year.to_string()),
            Some('y') => out.push_str(&format!("{:02}", year % 100)),
            Some('b') => out.push_str(&month_name[..3]),
            Some('B') => out.push_str(month_name),
            Some('a') => out.push_str(&weekday[..3]),
            Some('A') => out.push_str(weekday),
            Some('H') => out.push_str(&format!("{:02}", secs / 3600)),
            Some('M') => out.push_str(&format!("{:02}", secs % 3600 / 60)),
            Some('S') => out.push_str(&format!("{:02}", secs % 60)),
            Some('j') => out.push_str(&format!("{day_of_year:03}")),
            Some('%') => out.push('%'),
            Some(other) => {
                out.push('%');
                out.push(other);
            }
            None => out.push('%'),
        }
    }
    out
}

fn template_error(e: &minijinja::Error) -> String {
    let mut message = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        message.push_str(&format!(": {s}"));
        source = s.source();
    }
    message
}
