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
            if !path.is_file() {
                return Ok(None);
            }
            std::fs::read_to_string(&path)
                .map(Some)
                .map_err(|source| TextError::Io { path, source })
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

    /// Renders the conversation to text.
    pub fn render(
        &self,
        messages: &[Message],
        tools: Option<&[Value]>,
        add_generation_prompt: bool,
    ) -> Result<String, TextError> {
        let mut env = Environment::new();
        env.set_trim_blocks(true);
        env.set_lstrip_blocks(true);
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_function("raise_exception", raise_exception);
        env.add_function("strftime_now", strftime_now);
        env.add_filter("tojson", tojson);
        let template = env
            .template_from_str(&self.source)
            .map_err(|e| TextError::Template(e.to_string()))?;
        let messages = serde_json::to_value(messages).map_err(|e| TextError::Messages(e.to_string()))?;
        let mut ctx = Map::new();
        ctx.insert("messages".into(), messages);
        if let Some(tools) = tools {
            ctx.insert("tools".into(), Value::Array(tools.to_vec()));
        }
        ctx.insert("add_generation_prompt".into(), Value::Bool(add_generation_prompt));
        ctx.insert("bos_token".into(), Value::String(self.bos_token.clone()));
        ctx.insert("eos_token".into(), Value::String(self.eos_token.clone()));
        template
            .render(JValue::from_serialize(&ctx))
            .map_err(|e| TextError::Template(template_error(&e)))
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
        if special == SpecialTokens::Parse {
            let text = self.render(messages, tools, add_generation_prompt)?;
            return tokenizer.encode(&text, SpecialTokens::Parse);
        }
        let specials = tokenizer.special_tokens();
        let guard = SpecialGuard::new(&specials);
        let messages: Vec<Message> = messages
            .iter()
            .map(|m| guard.defuse_message(m))
            .collect::<Result<_, _>>()?;
        let tools: Option<Vec<Value>> = tools.map(|t| t.iter().map(|v| guard.defuse_value(v)).collect());
        let text = self.render(&messages, tools.as_deref(), add_generation_prompt)?;
        // Every special-token string left in `text` came from the template.
        let mut ids = Vec::new();
        let mut rest = text.as_str();
        while let Some((at, token)) = find_first(rest, &specials) {
            ids.extend(tokenizer.encode(&guard.restore(&rest[..at]), SpecialTokens::AsText)?);
            ids.push(
                tokenizer
                    .special_id(token)
                    .ok_or_else(|| TextError::Encode(format!("no id for {token}")))?,
            );
            rest = &rest[at + token.len()..];
        }
        ids.extend(tokenizer.encode(&guard.restore(rest), SpecialTokens::AsText)?);
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

/// The earliest special-token occurrence in `text` (longest token wins at a position).
fn find_first<'a>(text: &str, specials: &'a [String]) -> Option<(usize, &'a str)> {
    let mut best: Option<(usize, &str)> = None;
    let mut search_from = 0;
    while let Some(offset) = text[search_from..].find("<|") {
        let at = search_from + offset;
        for s in specials {
            if text[at..].starts_with(s.as_str()) && best.is_none_or(|(_, b)| s.len() > b.len()) {
                best = Some((at, s));
            }
        }
        if best.is_some() {
            return best;
        }
        search_from = at + 2;
    }
    None
}

/// Swaps special-token strings in user-supplied text for private-use placeholders before
/// rendering, and back after, so the template sees (almost) the same text but the splitter can
/// tell its own special tokens from the user's.
struct SpecialGuard<'a> {
    specials: &'a [String],
}

/// U+10FFFD and U+10FFFC are noncharacters-adjacent private-use code points no tokenizer input
/// plausibly contains; a special token `k` becomes `\u{10FFFD}k\u{10FFFC}`.
const OPEN: char = '\u{10FFFD}';
const CLOSE: char = '\u{10FFFC}';

impl<'a> SpecialGuard<'a> {
    fn new(specials: &'a [String]) -> Self {
        SpecialGuard { specials }
    }

    fn defuse(&self, text: &str) -> String {
        let mut out = String::with_capacity(text.len());
        let mut rest = text;
        while let Some((at, token)) = find_first(rest, self.specials) {
            let index = self.specials.iter().position(|s| s == token).unwrap_or(0);
            out.push_str(&rest[..at]);
            out.push(OPEN);
            out.push_str(&index.to_string());
            out.push(CLOSE);
            rest = &rest[at + token.len()..];
        }
        out.push_str(rest);
        out
    }

    fn restore(&self, text: &str) -> String {
        let mut out = String::with_capacity(text.len());
        let mut rest = text;
        while let Some(start) = rest.find(OPEN) {
            out.push_str(&rest[..start]);
            let after = &rest[start + OPEN.len_utf8()..];
            match after
                .find(CLOSE)
                .and_then(|end| Some((end, after[..end].parse::<usize>().ok()?)))
            {
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
        let mut value = serde_json::to_value(m).map_err(|e| TextError::Messages(e.to_string()))?;
        // The role picks the header: it is never user text to protect, and must stay intact.
        if let Value::Object(map) = &mut value {
            for (_, v) in map.iter_mut().filter(|(k, _)| k.as_str() != "role") {
                *v = self.defuse_value(v);
            }
        }
        serde_json::from_value(value).map_err(|e| TextError::Messages(e.to_string()))
    }
}

fn raise_exception(message: String) -> Result<JValue, minijinja::Error> {
    Err(minijinja::Error::new(ErrorKind::InvalidOperation, message))
}

fn tojson(value: JValue, kwargs: Kwargs) -> Result<JValue, minijinja::Error> {
    let indent: Option<usize> = kwargs.get("indent")?;
    kwargs.assert_all_used()?;
    let json = serde_json::to_value(&value)
        .map_err(|e| minijinja::Error::new(ErrorKind::InvalidOperation, e.to_string()))?;
    Ok(JValue::from_safe_string(pyjson::dumps(&json, indent)))
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
