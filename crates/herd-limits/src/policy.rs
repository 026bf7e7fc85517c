//! The limits themselves: one struct, its defaults, and the process-wide current policy.

use std::sync::RwLock;

/// How much herd accepts from untrusted input. Byte counts are bytes; `*_steps` count
/// template instructions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// JSON metadata files: `config.json`, `generation_config.json`, `tokenizer_config.json`,
    /// `preprocessor_config.json`, `model.safetensors.index.json`, `chat_template.json`.
    pub config_bytes: u64,
    /// `tokenizer.json` (after decompression when gzipped) or `tokenizer.model`. Llama 4's
    /// tokenizer.json is 27 MiB.
    pub tokenizer_bytes: u64,
    /// A chat template's source (`chat_template.jinja`).
    pub template_bytes: u64,
    /// What a gzip file may unpack to, whatever it holds.
    pub decompressed_bytes: u64,
    /// Instructions one chat-template rendering may execute (minijinja fuel).
    pub template_steps: u64,
    /// Text one chat-template rendering may produce.
    pub template_output_bytes: u64,
    /// A prompt, a conversation file or a message's text, in bytes (a 10M-token context is
    /// about 40 MiB of text).
    pub prompt_bytes: u64,
    /// Nesting depth of structured text herd parses itself (tool calls in model replies).
    pub nesting_depth: u32,
    /// An encoded image file or data URL.
    pub image_bytes: u64,
    /// Decoded pixels of one image (width × height).
    pub image_pixels: u64,
    /// Decoded pixels of all the images of one request together (a server request's pictures
    /// and video frame lists): each image passes `image_pixels`, and many of them would
    /// otherwise all be decoded before the prompt's length is known.
    pub request_pixels: u64,
}

impl Default for Limits {
    fn default() -> Self {
        const MIB: u64 = 1 << 20;
        Limits {
            config_bytes: 16 * MIB,
            tokenizer_bytes: 256 * MIB,
            template_bytes: MIB,
            decompressed_bytes: 256 * MIB,
            template_steps: 10_000_000,
            template_output_bytes: 64 * MIB,
            prompt_bytes: 64 * MIB,
            nesting_depth: 128,
            image_bytes: 64 * MIB,
            image_pixels: 16_384 * 16_384,
            request_pixels: 16_384 * 16_384,
        }
    }
}

/// The names `--limit NAME=VALUE` takes, each with what it bounds.
pub const LIMIT_NAMES: [(&str, &str); 11] = [
    (
        "config-bytes",
        "JSON metadata files (config.json, tokenizer_config.json, ...)",
    ),
    ("tokenizer-bytes", "tokenizer.json (unpacked) or tokenizer.model"),
    ("template-bytes", "a chat template's source"),
    ("decompressed-bytes", "what a gzip file may unpack to"),
    ("template-steps", "instructions per chat-template rendering"),
    ("template-output-bytes", "text per chat-template rendering"),
    ("prompt-bytes", "a prompt, conversation file or message"),
    ("nesting-depth", "nesting of tool calls parsed from replies"),
    ("image-bytes", "an encoded image file or data URL"),
    ("image-pixels", "decoded pixels (width × height) of one image"),
    (
        "request-pixels",
        "decoded pixels of all the images of one server request",
    ),
];

#[derive(Debug, thiserror::Error)]
pub enum LimitParseError {
    #[error("`{0}`: expected NAME=VALUE (e.g. prompt-bytes=256M)")]
    Syntax(String),
    #[error("unknown limit `{name}`; known: {known}")]
    UnknownName { name: String, known: String },
    #[error("limit `{name}`: `{value}` is not a positive number (suffixes K, M, G: powers of 1024)")]
    Value { name: String, value: String },
}

static CURRENT: RwLock<Option<Limits>> = RwLock::new(None);

impl Limits {
    /// The process-wide policy: the defaults unless [`Limits::install`] replaced them.
    pub fn current() -> Limits {
        match CURRENT.read() {
            Ok(guard) => guard.unwrap_or_default(),
            Err(poisoned) => poisoned.into_inner().unwrap_or_default(),
        }
    }

    /// Makes `self` the process-wide policy (the CLI does this once, from `--limit`).
    pub fn install(self) {
        match CURRENT.write() {
            Ok(mut guard) => *guard = Some(self),
            Err(poisoned) => *poisoned.into_inner() = Some(self),
        }
    }

    /// Applies one `NAME=VALUE` setting, e.g. `prompt-bytes=256M` or `template-steps=1e8`.
    pub fn set(&mut self, setting: &str) -> Result<(), LimitParseError> {
        let (name, value) = setting
            .split_once('=')
            .ok_or_else(|| LimitParseError::Syntax(setting.to_string()))?;
        let (name, value) = (name.trim(), value.trim());
        let bad = || LimitParseError::Value {
            name: name.to_string(),
            value: value.to_string(),
        };
        let n = parse_amount(value).filter(|&n| n > 0).ok_or_else(bad)?;
        match name {
            "config-bytes" => self.config_bytes = n,
            "tokenizer-bytes" => self.tokenizer_bytes = n,
            "template-bytes" => self.template_bytes = n,
            "decompressed-bytes" => self.decompressed_bytes = n,
            "template-steps" => self.template_steps = n,
            "template-output-bytes" => self.template_output_bytes = n,
            "prompt-bytes" => self.prompt_bytes = n,
            "nesting-depth" => self.nesting_depth = u32::try_from(n).map_err(|_| bad())?,
            "image-bytes" => self.image_bytes = n,
            "image-pixels" => self.image_pixels = n,
            "request-pixels" => self.request_pixels = n,
            _ => {
                return Err(LimitParseError::UnknownName {
                    name: name.to_string(),
                    known: LIMIT_NAMES.iter().map(|(n, _)| *n).collect::<Vec<_>>().join(", "),
                })
            }
        }
        Ok(())
    }
}

/// `4096`, `64K`/`64M`/`2G` (powers of 1024), or `1e8`.
fn parse_amount(text: &str) -> Option<u64> {
    let (digits, scale) = match text.char_indices().last()? {
        (i, 'K' | 'k') => (&text[..i], 1u64 << 10),
        (i, 'M' | 'm') => (&text[..i], 1 << 20),
        (i, 'G' | 'g') => (&text[..i], 1 << 30),
        _ => (text, 1),
    };
    if let Ok(n) = digits.parse::<u64>() {
        return n.checked_mul(scale);
    }
    // `1e8`: scientific notation for whole numbers only.
    let (mantissa, exponent) = digits.split_once(['e', 'E'])?;
    let mantissa: u64 = mantissa.parse().ok()?;
    let exponent: u32 = exponent.parse().ok()?;
    10u64
        .checked_pow(exponent)?
        .checked_mul(mantissa)?
        .checked_mul(scale)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn settings_parse_with_suffixes_and_reject_nonsense() {
        let mut l = Limits::default();
        l.set("prompt-bytes=256M").unwrap();
        l.set("template-steps=1e8").unwrap();
        l.set(" nesting-depth = 512 ").unwrap();
        assert_eq!(l.prompt_bytes, 256 << 20);
        assert_eq!(l.template_steps, 100_000_000);
        assert_eq!(l.nesting_depth, 512);
        for bad in [
            "prompt-bytes",
            "prompt-bytes=0",
            "prompt-bytes=-1",
            "prompt-bytes=1.5M",
            "x=1",
            "image-pixels=99999999999G",
        ] {
            assert!(l.set(bad).is_err(), "{bad} accepted");
        }
        assert_eq!(LIMIT_NAMES.len(), 11);
        for (name, _) in LIMIT_NAMES {
            Limits::default().set(&format!("{name}=7")).unwrap();
        }
    }
}
