//! One tokenizer over the two formats Llama 4 ships in: Hugging Face `tokenizer.json` (read
//! with the `tokenizers` crate, optionally gzipped) and Meta's tiktoken `tokenizer.model`.
//!
//! Special-token strings inside text: [`SpecialTokens::AsText`] (Meta's default, and herd's:
//! a user's text cannot forge `<|eot|>` or a header) encodes them as ordinary text;
//! [`SpecialTokens::Parse`] (what the HF tokenizer always does) turns them into their ids.

use std::path::{Path, PathBuf};

use rayon::prelude::*;

use crate::error::TextError;
use crate::tiktoken::Tiktoken;

/// How special-token strings found in the text are encoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SpecialTokens {
    /// As ordinary text (safe for untrusted input).
    #[default]
    AsText,
    /// As the special token's id.
    Parse,
}

pub struct Tokenizer {
    backend: Backend,
    path: PathBuf,
}

enum Backend {
    /// Two copies: one matching special tokens in text, one encoding them as text
    /// (`encode_special_tokens`), since the setting lives on the tokenizer.
    Hf {
        parse: Box<tokenizers::Tokenizer>,
        as_text: Box<tokenizers::Tokenizer>,
        byte_decoder: Box<[Option<u8>; 512]>,
        /// Llama 4's pre-tokenizer, no normalizer and no added token that strips or holds
        /// whitespace: the pieces of [`line_aligned_pieces`] may be encoded one by one.
        piecewise: bool,
    },
    Tiktoken(Box<Tiktoken>),
}

impl Tokenizer {
    /// Loads the tokenizer of a checkpoint folder: `tokenizer.json` if present, else
    /// `tokenizer.model`.
    pub fn from_dir(dir: &Path) -> Result<Self, TextError> {
        for name in ["tokenizer.json", "tokenizer.json.gz", "tokenizer.model"] {
            let path = dir.join(name);
            // Present but not a regular file (a FIFO, a device): loading it says so.
            if herd_limits::exists(&path) {
                return Self::from_file(&path);
            }
        }
        Err(TextError::NoTokenizer {
            dir: dir.to_path_buf(),
        })
    }

    /// Loads `tokenizer.json` (or `.json.gz`) or a tiktoken `tokenizer.model`.
    pub fn from_file(path: &Path) -> Result<Self, TextError> {
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or_default();
        let backend = if name.ends_with(".json") || name.ends_with(".json.gz") {
            load_hf(path)?
        } else {
            Backend::Tiktoken(Box::new(Tiktoken::load(path)?))
        };
        Ok(Tokenizer {
            backend,
            path: path.to_path_buf(),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Number of ids (BPE ranks plus special tokens).
    pub fn vocab_size(&self) -> usize {
        match &self.backend {
            Backend::Hf { parse, .. } => parse.get_vocab_size(true),
            Backend::Tiktoken(t) => t.vocab_size(),
        }
    }

    /// Encodes `text` without BOS/EOS. Text past the `prompt-bytes` limit is refused (every
    /// prompt, chat line and request passes here).
    pub fn encode(&self, text: &str, special: SpecialTokens) -> Result<Vec<u32>, TextError> {
        let limit = herd_limits::Limits::current().prompt_bytes;
        if text.len() as u64 > limit {
            return Err(TextError::Encode(format!(
                "a text of {} bytes is more than {limit} (raise with --limit prompt-bytes=N)",
                text.len()
            )));
        }
        match &self.backend {
            Backend::Hf {
                parse,
                as_text,
                piecewise,
                ..
            } => {
                let tokenizer = match special {
                    SpecialTokens::Parse => parse,
                    SpecialTokens::AsText => as_text,
                };
                // A tokenizer.json's Split regex runs in Oniguruma, whose Rust binding panics
                // when a pattern backtracks past its retry limit: that is the file's fault,
                // and an error here, not a crash.
                let mut ids = Vec::new();
                let pieces = if *piecewise {
                    line_aligned_pieces(text, HF_PIECE_BYTES)
                } else {
                    vec![text]
                };
                // Pieces encoded in parallel, each on its worker with its panic contained there
                // (rayon's collect keeps their order).
                let encoded: Vec<Result<Vec<u32>, TextError>> = pieces
                    .par_iter()
                    .map(|piece| {
                        herd_limits::catch_panic(|| tokenizer.encode_fast(*piece, false))
                            .map_err(|panic| {
                                TextError::Encode(format!(
                                    "{}: the pre-tokenizer regex failed on this text ({panic})",
                                    self.path.display()
                                ))
                            })?
                            .map(|e| e.get_ids().to_vec())
                            .map_err(|e| TextError::Encode(e.to_string()))
                    })
                    .collect();
                for piece_ids in encoded {
                    ids.extend(piece_ids?);
                }
                Ok(ids)
            }
            Backend::Tiktoken(t) => t.encode(text, special == SpecialTokens::Parse),
        }
    }

    /// The raw bytes of one token. Byte-level BPE tokens may hold part of a UTF-8 character,
    /// so streaming works on bytes (see [`crate::IncrementalDecoder`]).
    pub fn token_bytes(&self, id: u32) -> Result<Vec<u8>, TextError> {
        let unknown = || TextError::UnknownId {
            id,
            vocab_size: self.vocab_size(),
        };
        match &self.backend {
            Backend::Hf {
                parse, byte_decoder, ..
            } => {
                let token = parse.id_to_token(id).ok_or_else(unknown)?;
                if parse.get_added_vocabulary().is_special_token(&token)
                    || parse
                        .get_added_vocabulary()
                        .get_added_tokens_decoder()
                        .contains_key(&id)
                {
                    return Ok(token.into_bytes());
                }
                // Byte-level alphabet: each char stands for one byte (GPT-2's bytes_to_unicode).
                token
                    .chars()
                    .map(|c| byte_decoder.get(c as usize).copied().flatten())
                    .collect::<Option<Vec<u8>>>()
                    .ok_or_else(|| TextError::Encode(format!("token {id} `{token}` is not byte-level")))
            }
            Backend::Tiktoken(t) => t.token_bytes(id).ok_or_else(unknown),
        }
    }

    /// Decodes ids to text; bytes that are not valid UTF-8 become U+FFFD (as both references
    /// do).
    pub fn decode(&self, ids: &[u32]) -> Result<String, TextError> {
        let mut bytes = Vec::new();
        for &id in ids {
            bytes.extend(self.token_bytes(id)?);
        }
        Ok(String::from_utf8_lossy(&bytes).into_owned())
    }

    /// The id of a special token such as `<|eot|>`.
    pub fn special_id(&self, token: &str) -> Option<u32> {
        match &self.backend {
            Backend::Hf { parse, .. } => parse.token_to_id(token),
            Backend::Tiktoken(t) => t.special_id(token),
        }
    }

    /// Every special-token string this tokenizer knows.
    pub fn special_tokens(&self) -> Vec<String> {
        match &self.backend {
            Backend::Hf { parse, .. } => parse
                .get_added_tokens_decoder()
                .values()
                .filter(|t| t.special)
                .map(|t| t.content.clone())
                .collect(),
            Backend::Tiktoken(t) => t.special_tokens().to_vec(),
        }
    }
}

/// The `tokenizers` crate keeps ~140 bytes of bookkeeping per input byte while it encodes (a
/// 50 MB prompt took 7 GB): long texts go through it a piece at a time.
const HF_PIECE_BYTES: usize = 1 << 20;

/// `text` cut into pieces of about `target` bytes, each cut at a point Llama 4's split regex
/// ([`crate::tiktoken::LLAMA4_PATTERN`]) never lets a pre-token span: just after a line break
/// followed by a non-space other than `/` (words take a leading space, never a leading newline;
/// newline runs end there; only punctuation's `[\r\n/]*` tail crosses a line break), or just
/// before a space or tab that follows a non-space (a pre-token holds such whitespace only at
/// its start). Encoding the pieces one by one gives the ids of the whole; text without such a
/// point stays whole. Other regexes need other cut points: see `is_llama4_pre_tokenizer`.
pub fn line_aligned_pieces(text: &str, target: usize) -> Vec<&str> {
    let target = target.max(1);
    let mut pieces = Vec::new();
    let mut start = 0;
    while text.len() - start > target {
        let mut from = start + target;
        while !text.is_char_boundary(from) {
            from += 1;
        }
        let mut previous = text[..from].chars().next_back();
        let cut = text[from..].char_indices().find_map(|(i, c)| {
            let before = previous.replace(c)?;
            let newline = |c: char| c == '\n' || c == '\r';
            // (a) a line break followed by a non-space other than `/` (punctuation pre-tokens
            // end in `[\r\n/]*`, so `;\n//` is one); (b) a space or tab (not a line break)
            // after a non-space. Both always start a new pre-token.
            let safe = (newline(before) && !c.is_whitespace() && c != '/')
                || (!before.is_whitespace() && c.is_whitespace() && !newline(c));
            safe.then_some(from + i)
        });
        match cut {
            Some(at) => {
                pieces.push(&text[start..at]);
                start = at;
            }
            None => break,
        }
    }
    pieces.push(&text[start..]);
    pieces
}

impl Tokenizer {
    /// Loads a `tokenizer.json` held in memory; `path` names it in errors.
    pub fn from_json_bytes(json: &[u8], path: &Path) -> Result<Self, TextError> {
        Ok(Tokenizer {
            backend: hf_backend(json, path)?,
            path: path.to_path_buf(),
        })
    }
}

fn load_hf(path: &Path) -> Result<Backend, TextError> {
    let raw = herd_limits::read_file(path, herd_limits::FileKind::Tokenizer)?;
    let json = if path.extension().is_some_and(|e| e == "gz") {
        let limits = herd_limits::Limits::current();
        let cap = limits.decompressed_bytes.min(limits.tokenizer_bytes);
        herd_limits::read_capped(flate2::read::GzDecoder::new(raw.as_slice()), cap)
            .map_err(|e| TextError::Tokenizer {
                path: path.to_path_buf(),
                message: format!("not a gzip file: {e}"),
            })?
            .ok_or_else(|| TextError::Tokenizer {
                path: path.to_path_buf(),
                message: format!(
                    "unpacks to more than {cap} bytes (raise with --limit decompressed-bytes=N and \
                     --limit tokenizer-bytes=N)"
                ),
            })?
    } else {
        raw
    };
    hf_backend(&json, path)
}

fn hf_backend(json: &[u8], path: &Path) -> Result<Backend, TextError> {
    // The `tokenizers` crate panics on some malformed files (found by fuzzing): contain it.
    let parse = herd_limits::catch_panic(|| tokenizers::Tokenizer::from_bytes(json))
        .map_err(|panic| format!("malformed ({panic})"))
        .and_then(|r| r.map_err(|e| e.to_string()))
        .map_err(|message| TextError::Tokenizer {
            path: path.to_path_buf(),
            message,
        })?;
    // A prompt is never padded or silently cut: a tokenizer.json's `padding`/`truncation`
    // (some Hub files carry them, for training) do not apply to inference.
    let mut parse = parse;
    parse.with_padding(None);
    parse.with_truncation(None).map_err(|e| TextError::Tokenizer {
        path: path.to_path_buf(),
        message: e.to_string(),
    })?;
    let mut as_text = parse.clone();
    as_text.set_encode_special_tokens(true);
    let piecewise = parse.get_normalizer().is_none()
        && parse.get_pre_tokenizer().is_some_and(is_llama4_pre_tokenizer)
        && parse
            .get_added_tokens_decoder()
            .values()
            .all(|t| !t.lstrip && !t.rstrip && !t.content.contains(char::is_whitespace));
    Ok(Backend::Hf {
        parse: Box::new(parse),
        as_text: Box::new(as_text),
        byte_decoder: Box::new(byte_decoder()),
        piecewise,
    })
}

/// Llama 4's pre-tokenizer exactly: its split regex, then byte-level without a prefix space
/// (the cut points of [`line_aligned_pieces`] are proven for this regex only).
fn is_llama4_pre_tokenizer(p: &tokenizers::PreTokenizerWrapper) -> bool {
    let Ok(v) = serde_json::to_value(p) else {
        return false;
    };
    let steps = v.get("pretokenizers").and_then(serde_json::Value::as_array);
    match steps.map(Vec::as_slice) {
        Some([split, byte_level]) => {
            split.get("type") == Some(&"Split".into())
                && split
                    .pointer("/pattern/Regex")
                    .and_then(serde_json::Value::as_str)
                    == Some(crate::tiktoken::LLAMA4_PATTERN)
                && split.get("behavior") == Some(&"Isolated".into())
                && split.get("invert") == Some(&false.into())
                && byte_level.get("type") == Some(&"ByteLevel".into())
                && byte_level.get("add_prefix_space") == Some(&false.into())
                && byte_level.get("use_regex") == Some(&false.into())
        }
        _ => false,
    }
}

/// Inverse of GPT-2's `bytes_to_unicode`: printable bytes map to themselves, the others to
/// code points 256 + n in byte order.
fn byte_decoder() -> [Option<u8>; 512] {
    let mut table = [None; 512];
    let printable = |b: u8| matches!(b, b'!'..=b'~' | 0xA1..=0xAC | 0xAE..=0xFF);
    let mut next = 256usize;
    for b in 0..=255u8 {
        if printable(b) {
            table[b as usize] = Some(b);
        } else {
            table[next] = Some(b);
            next += 1;
        }
    }
    table
}
