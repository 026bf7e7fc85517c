//! Reading OpenAI request bodies: every field checked for its type and range with a 400 that
//! names it, fields clients commonly send that herd does not use accepted and ignored, and
//! any other field refused (herd cannot honour what it does not know).

use herd_engine::SamplingParams;
use serde_json::{Map, Value};

use crate::error::ApiError;

/// Fields OpenAI clients send that change nothing herd computes.
const IGNORED: &[&str] = &[
    "model",
    "user",
    "metadata",
    "store",
    "service_tier",
    "parallel_tool_calls",
    "prompt_cache_key",
    "safety_identifier",
    "modalities",
    "reasoning_effort",
    "suffix_ignored",
];

/// The most alternatives `top_logprobs` / `logprobs` may ask for per position.
pub const MAX_TOP_LOGPROBS: usize = 20;
/// The most choices one request may ask for.
pub const MAX_N: usize = 16;
/// The most stop strings.
pub const MAX_STOP: usize = 16;
/// The longest stop string, in bytes. Every choice holds its own copy (a `/v1/completions`
/// request may make 1024 choices) and matches it at every token.
pub const MAX_STOP_BYTES: usize = 4096;
/// The most `logit_bias` entries (each choice holds them and applies them at every step).
pub const MAX_LOGIT_BIAS: usize = 2048;

/// A request body's fields, taken out one by one.
pub struct Fields {
    map: Map<String, Value>,
}

impl Fields {
    /// Parses the body as a JSON object.
    pub fn parse(body: &[u8]) -> Result<Self, ApiError> {
        let value: Value = serde_json::from_slice(body)
            .map_err(|e| ApiError::bad_request(format!("the body is not valid JSON: {e}")))?;
        match value {
            Value::Object(map) => Ok(Fields { map }),
            other => Err(ApiError::bad_request(format!(
                "the body must be a JSON object, found {}",
                kind(&other)
            ))),
        }
    }

    /// The value of `key`; absent and `null` are both `None`.
    pub fn take(&mut self, key: &str) -> Option<Value> {
        self.map.remove(key).filter(|v| !v.is_null())
    }

    pub fn f32(&mut self, key: &str) -> Result<Option<f32>, ApiError> {
        match self.take(key) {
            None => Ok(None),
            Some(Value::Number(n)) => n
                .as_f64()
                .filter(|v| v.is_finite())
                .map(|v| Some(v as f32))
                .ok_or_else(|| ApiError::invalid(key, format!("`{key}` must be a finite number"))),
            Some(other) => Err(type_error(key, "a number", &other)),
        }
    }

    pub fn i64(&mut self, key: &str) -> Result<Option<i64>, ApiError> {
        match self.take(key) {
            None => Ok(None),
            Some(Value::Number(n)) => n
                .as_i64()
                .map(Some)
                .ok_or_else(|| ApiError::invalid(key, format!("`{key}` must be an integer, found {n}"))),
            Some(other) => Err(type_error(key, "an integer", &other)),
        }
    }

    /// A non-negative integer at most `max`.
    pub fn count(&mut self, key: &str, max: usize) -> Result<Option<usize>, ApiError> {
        match self.i64(key)? {
            None => Ok(None),
            Some(v) if v < 0 || v as u64 > max as u64 => Err(ApiError::invalid(
                key,
                format!("`{key}` is {v}; it must be between 0 and {max}"),
            )),
            Some(v) => Ok(Some(v as usize)),
        }
    }

    pub fn bool(&mut self, key: &str) -> Result<Option<bool>, ApiError> {
        match self.take(key) {
            None => Ok(None),
            Some(Value::Bool(b)) => Ok(Some(b)),
            Some(other) => Err(type_error(key, "true or false", &other)),
        }
    }

    /// A JSON object field.
    pub fn object(&mut self, key: &str) -> Result<Option<Map<String, Value>>, ApiError> {
        match self.take(key) {
            None => Ok(None),
            Some(Value::Object(m)) => Ok(Some(m)),
            Some(other) => Err(type_error(key, "an object", &other)),
        }
    }

    /// Refuses what is left, but for the fields herd ignores on purpose.
    pub fn finish(self) -> Result<(), ApiError> {
        for (key, value) in self.map {
            if IGNORED.contains(&key.as_str()) || value.is_null() {
                continue;
            }
            return Err(ApiError::invalid(
                key.clone(),
                format!("unknown field `{key}`: herd cannot honour it"),
            ));
        }
        Ok(())
    }
}

/// What both endpoints read the same way: sampling, stops, choices and streaming.
pub struct Common {
    pub params: SamplingParams,
    /// `max_tokens` as given (the default is applied once the prompt length is known).
    pub max_tokens: Option<usize>,
    pub stop: Vec<String>,
    pub n: usize,
    pub stream: bool,
    pub include_usage: bool,
    pub ignore_eos: bool,
    /// `model` as given: the served model, or a LoRA adapter it serves (`--adapter NAME=DIR`).
    pub model: Option<String>,
}

impl Common {
    pub fn parse(fields: &mut Fields, max_tokens_keys: &[&str]) -> Result<Self, ApiError> {
        let model = match fields.take("model") {
            None | Some(Value::Null) => None,
            Some(Value::String(m)) => Some(m),
            Some(_) => return Err(ApiError::invalid("model", "`model` must be a string")),
        };
        let mut params = SamplingParams::default();
        if let Some(t) = fields.f32("temperature")? {
            if !(0.0..=2.0).contains(&t) {
                return Err(ApiError::invalid(
                    "temperature",
                    format!("`temperature` is {t}; it must be between 0 and 2"),
                ));
            }
            params.temperature = t;
        }
        if let Some(p) = fields.f32("top_p")? {
            params.top_p = p;
        }
        if let Some(k) = fields.i64("top_k")? {
            // vLLM's convention: -1 (or 0) is off.
            params.top_k = match k {
                -1 | 0 => 0,
                k if k > 0 => k as usize,
                k => {
                    return Err(ApiError::invalid(
                        "top_k",
                        format!("`top_k` is {k}; use -1 (off) or a positive number"),
                    ))
                }
            };
        }
        if let Some(p) = fields.f32("min_p")? {
            params.min_p = p;
        }
        if let Some(p) = fields.f32("presence_penalty")? {
            params.presence_penalty = p;
        }
        if let Some(p) = fields.f32("frequency_penalty")? {
            params.frequency_penalty = p;
        }
        if let Some(p) = fields.f32("repetition_penalty")? {
            params.repetition_penalty = p;
        }
        if let Some(bias) = fields.object("logit_bias")? {
            if bias.len() > MAX_LOGIT_BIAS {
                return Err(ApiError::invalid(
                    "logit_bias",
                    format!(
                        "`logit_bias` has {} entries; at most {MAX_LOGIT_BIAS}",
                        bias.len()
                    ),
                ));
            }
            for (token, value) in bias {
                let id: u32 = token.parse().map_err(|_| {
                    ApiError::invalid(
                        "logit_bias",
                        format!("`logit_bias` key `{token}` is not a token id"),
                    )
                })?;
                let b = value
                    .as_f64()
                    .filter(|b| (-100.0..=100.0).contains(b))
                    .ok_or_else(|| {
                        ApiError::invalid(
                            "logit_bias",
                            format!("`logit_bias[{token}]` must be a number from -100 to 100"),
                        )
                    })?;
                params.logit_bias.push((id, b as f32));
            }
        }
        if let Some(seed) = fields.i64("seed")? {
            params.seed = Some(seed as u64);
        }
        let mut max_tokens = None;
        for key in max_tokens_keys {
            if let Some(m) = fields.i64(key)? {
                if m < 0 {
                    return Err(ApiError::invalid(
                        *key,
                        format!("`{key}` is {m}; it must be at least 0"),
                    ));
                }
                max_tokens = Some(m as usize);
            }
        }
        let stop = match fields.take("stop") {
            None => Vec::new(),
            Some(Value::String(s)) => vec![s],
            Some(Value::Array(items)) => {
                if items.len() > MAX_STOP {
                    return Err(ApiError::invalid(
                        "stop",
                        format!("at most {MAX_STOP} stop strings"),
                    ));
                }
                items
                    .into_iter()
                    .map(|v| match v {
                        Value::String(s) => Ok(s),
                        other => Err(type_error("stop", "a string or a list of strings", &other)),
                    })
                    .collect::<Result<_, _>>()?
            }
            Some(other) => return Err(type_error("stop", "a string or a list of strings", &other)),
        };
        if let Some(long) = stop.iter().find(|s| s.len() > MAX_STOP_BYTES) {
            return Err(ApiError::invalid(
                "stop",
                format!("a stop string of {} bytes; at most {MAX_STOP_BYTES}", long.len()),
            ));
        }
        let n = fields.i64("n")?.unwrap_or(1);
        if !(1..=MAX_N as i64).contains(&n) {
            return Err(ApiError::invalid(
                "n",
                format!("`n` is {n}; it must be between 1 and {MAX_N}"),
            ));
        }
        let stream = fields.bool("stream")?.unwrap_or(false);
        let include_usage = match fields.object("stream_options")? {
            None => false,
            Some(mut o) => {
                let v = match o.remove("include_usage") {
                    None | Some(Value::Null) => false,
                    Some(Value::Bool(b)) => b,
                    Some(other) => {
                        return Err(type_error(
                            "stream_options.include_usage",
                            "true or false",
                            &other,
                        ))
                    }
                };
                if let Some(k) = o.keys().find(|k| *k != "continuous_usage_stats") {
                    return Err(ApiError::invalid(
                        "stream_options",
                        format!("unknown field `stream_options.{k}`"),
                    ));
                }
                v
            }
        };
        let ignore_eos = fields.bool("ignore_eos")?.unwrap_or(false);
        params.validate_sampling().map_err(ApiError::from)?;
        Ok(Common {
            params,
            max_tokens,
            stop,
            n: n as usize,
            stream,
            include_usage,
            ignore_eos,
            model,
        })
    }
}

fn type_error(key: &str, expected: &str, found: &Value) -> ApiError {
    ApiError::invalid(key, format!("`{key}` must be {expected}, found {}", kind(found)))
}

pub fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "an object",
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn common(body: &str) -> Result<Common, ApiError> {
        let mut f = Fields::parse(body.as_bytes())?;
        let c = Common::parse(&mut f, &["max_tokens", "max_completion_tokens"])?;
        f.finish()?;
        Ok(c)
    }

    #[test]
    fn reads_sampling_fields_and_ignores_the_harmless_ones() {
        let c = common(
            r#"{"temperature": 0.5, "top_p": 0.9, "top_k": -1, "seed": 3, "max_tokens": 7, "stop": "x",
                "n": 2, "stream": true, "stream_options": {"include_usage": true}, "user": "u",
                "metadata": {"a": 1}, "logit_bias": {"12": -100}, "presence_penalty": 0.5}"#,
        )
        .unwrap();
        assert_eq!(c.params.temperature, 0.5);
        assert_eq!(c.params.top_k, 0);
        assert_eq!(c.params.seed, Some(3));
        assert_eq!(c.max_tokens, Some(7));
        assert_eq!(c.stop, ["x"]);
        assert_eq!((c.n, c.stream, c.include_usage), (2, true, true));
        assert_eq!(c.params.logit_bias, [(12, -100.0)]);
    }

    #[test]
    fn bad_fields_are_400s_naming_them() {
        for (body, param) in [
            (r#"{"temperature": "hot"}"#, "temperature"),
            (r#"{"temperature": 3}"#, "temperature"),
            (r#"{"n": 0}"#, "n"),
            (r#"{"n": 100}"#, "n"),
            (r#"{"max_tokens": -1}"#, "max_tokens"),
            (r#"{"stop": 5}"#, "stop"),
            (r#"{"top_p": 0}"#, "top_p"),
            (r#"{"logit_bias": {"x": 1}}"#, "logit_bias"),
            (r#"{"logit_bias": {"5": 101}}"#, "logit_bias"),
            (r#"{"logit_bias": {"5": -1e300}}"#, "logit_bias"),
            (r#"{"frobnicate": 1}"#, "frobnicate"),
            (r#"{"seed": 1.5}"#, "seed"),
        ] {
            let e = common(body).err().unwrap_or_else(|| panic!("{body} passed"));
            assert_eq!(e.param.as_deref(), Some(param), "{body}: {}", e.message);
            assert_eq!(e.status, 400);
        }
        // Sizes: a stop string past MAX_STOP_BYTES, more biases than MAX_LOGIT_BIAS.
        let long = serde_json::json!({"stop": ["x".repeat(MAX_STOP_BYTES + 1)]}).to_string();
        let many: serde_json::Map<String, Value> = (0..=MAX_LOGIT_BIAS)
            .map(|i| (i.to_string(), Value::from(1)))
            .collect();
        let many = serde_json::json!({"logit_bias": many}).to_string();
        for (body, param) in [(&long, "stop"), (&many, "logit_bias")] {
            let e = common(body).err().unwrap_or_else(|| panic!("{param} passed"));
            assert_eq!(e.param.as_deref(), Some(param), "{}", e.message);
        }
        let at_most = serde_json::json!({"stop": ["x".repeat(MAX_STOP_BYTES)]}).to_string();
        assert!(common(&at_most).is_ok());
        assert!(common("[1]").is_err());
        assert!(common("{").is_err());
    }
}
