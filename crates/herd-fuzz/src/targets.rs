//! What is fuzzed: every parser of untrusted input, each as a function of bytes that returns
//! `Ok` or the error it gave (its first words tell error paths apart for the corpus).

use std::path::{Path, PathBuf};

use herd_engine::image::{decode, preprocess, PreprocessConfig};
use herd_text::tool_calls::{parse, StreamParser};
use herd_text::{ChatTemplate, SpecialTokens, Tokenizer};

/// `Err` is an input error (expected); a bug panics (or aborts, or hangs).
pub type Outcome = Result<(), String>;

pub struct Target {
    pub name: &'static str,
    pub about: &'static str,
    /// Seed inputs, from the repo's fixtures.
    pub seeds: fn(&Path) -> Vec<Vec<u8>>,
    pub dictionary: &'static [&'static [u8]],
    pub max_len: usize,
    pub run: fn(&Scratch, &[u8]) -> Outcome,
}

/// Per-process scratch space: a file the file-reading parsers open.
pub struct Scratch {
    pub dir: PathBuf,
}

impl Scratch {
    /// Writes `bytes` (then `zeros` sparse zero bytes: a header's tensor data) to `name`.
    fn file(&self, name: &str, bytes: &[u8], zeros: u64) -> Result<PathBuf, String> {
        let path = self.dir.join(name);
        std::fs::write(&path, bytes).map_err(|e| e.to_string())?;
        if zeros > 0 {
            let f = std::fs::OpenOptions::new()
                .write(true)
                .open(&path)
                .map_err(|e| e.to_string())?;
            f.set_len(bytes.len() as u64 + zeros).map_err(|e| e.to_string())?;
        }
        Ok(path)
    }
}

fn err(e: impl std::fmt::Display) -> String {
    e.to_string()
}

fn read(path: PathBuf) -> Vec<Vec<u8>> {
    std::fs::read(path).map(|b| vec![b]).unwrap_or_default()
}

pub const TARGETS: [Target; 10] = [
    Target {
        name: "safetensors",
        about: "safetensors header (shard files)",
        seeds: |f| {
            ["scout-tiny/model.safetensors", "fp8-tiny/model.safetensors"]
                .iter()
                .flat_map(|p| read(f.join(p)))
                .filter_map(|b| {
                    let n = u64::from_le_bytes(b.get(..8)?.try_into().ok()?) as usize;
                    b.get(..8 + n).map(<[u8]>::to_vec)
                })
                .collect()
        },
        dictionary: &[b"\"dtype\"", b"\"shape\"", b"\"data_offsets\"", b"\"F8_E4M3\"", b"\"BF16\"", b"[0,0]", b"__metadata__"],
        max_len: 1 << 20,
        run: |s, input| {
            let path = s.file("fuzz.safetensors", input, 8 << 20)?;
            let file = herd_model::weights::safetensors::SafetensorsFile::open(&path).map_err(err)?;
            for (name, info) in file.tensors() {
                if info.n_bytes() <= 1 << 16 {
                    let _ = file.read_dense(name, info);
                }
            }
            Ok(())
        },
    },
    Target {
        name: "gguf",
        about: "GGUF header and metadata, then the llama4 config built from it",
        seeds: |f| {
            ["gguf-tiny/model-q4_k_m.gguf", "gguf-tiny/model-q8_0.gguf"]
                .iter()
                .flat_map(|p| read(f.join(p)))
                .filter_map(|b| {
                    let path = std::env::temp_dir().join(format!("herd-fuzz-seed-{}.gguf", std::process::id()));
                    std::fs::write(&path, &b).ok()?;
                    let data = herd_model::weights::gguf::GgufFile::open(&path).ok()?.data_bytes() as usize;
                    let _ = std::fs::remove_file(&path);
                    b.get(..b.len().checked_sub(data)?).map(<[u8]>::to_vec)
                })
                .collect()
        },
        dictionary: &[b"llama4.", b"general.architecture", b"tokenizer.ggml.tokens", b"blk.0.", b"\xff\xff\xff\xff"],
        max_len: 4 << 20,
        run: |s, input| {
            let path = s.file("fuzz.gguf", input, 16 << 20)?;
            let gguf = herd_model::weights::gguf::GgufFile::open(&path).map_err(err)?;
            let config = herd_model::weights::gguf_llama4::config_json(&gguf).map_err(err)?;
            herd_model::ModelConfig::from_json(&config).map_err(err)?;
            Ok(())
        },
    },
    Target {
        name: "config",
        about: "config.json resolution (text and vision)",
        seeds: |f| {
            ["scout-tiny", "maverick-tiny", "guard-tiny", "vision-tiny", "sharded-bf16", "fp8-tiny"]
                .iter()
                .flat_map(|d| read(f.join(d).join("config.json")))
                .collect()
        },
        dictionary: &[b"\"rope_parameters\"", b"\"rope_type\"", b"\"llama3\"", b"null", b"\"text_config\"", b"\"vision_config\"", b"[]", b"{}", b"true"],
        max_len: 1 << 16,
        run: |_, input| {
            let value: serde_json::Value = serde_json::from_slice(input).map_err(err)?;
            let text = herd_model::ModelConfig::from_json(&value).map_err(err);
            herd_model::vision::VisionConfig::from_json(&value).map_err(err)?;
            if let Ok(c) = &text {
                let _ = herd_model::inspect::param_counts(c);
                let _ = herd_model::inspect::kv_footprint(c, 4).bytes_at(usize::MAX);
            }
            text.map(|_| ())
        },
    },
    Target {
        name: "tokenizer-json",
        about: "tokenizer.json loading, then encode/decode",
        seeds: |f| read(f.join("chat-tiny/tokenizer.json")),
        dictionary: &[b"\"Split\"", b"\"Regex\"", b"\"added_tokens\"", b"\"special\":true", b"\"merges\"", b"(a|aa)+"],
        max_len: 1 << 17,
        run: |_, input| {
            let tok = Tokenizer::from_json_bytes(input, Path::new("fuzz/tokenizer.json")).map_err(err)?;
            let ids = tok.encode("Hello <|eot|> wörld 123 \n\n", SpecialTokens::AsText).map_err(err)?;
            tok.encode("<|header_start|>x", SpecialTokens::Parse).map_err(err)?;
            tok.decode(&ids).map_err(err)?;
            Ok(())
        },
    },
    Target {
        name: "tokenizer-model",
        about: "tiktoken tokenizer.model loading (a truncated real file and variants)",
        seeds: |f| {
            read(f.join("tokenizer/tokenizer.model"))
                .into_iter()
                .map(|b| b.into_iter().take(4096).collect())
                .collect()
        },
        dictionary: &[b" 0\n", b"==", b"\n\n", b" 4294967295\n", b"!!!!"],
        max_len: 1 << 16,
        run: |s, input| {
            let path = s.file("tokenizer.model", input, 0)?;
            let tok = Tokenizer::from_file(&path).map_err(err)?;
            tok.encode("hello", SpecialTokens::AsText).map_err(err)?;
            Ok(())
        },
    },
    Target {
        name: "encode",
        about: "text through both real tokenizers (tokenizer.model, tokenizer.json), both special modes, and back",
        seeds: |_| vec![b"Hello world".to_vec(), b"<|eot|><|header_start|>user<|header_end|>".to_vec(), "日本語 🙂 \r\n\t x".as_bytes().to_vec()],
        dictionary: &[b"<|", b"|>", b"<|eot|>", b"<|python_start|>", b"\xf0\x9f", b"  ", b"\n"],
        max_len: 1 << 12,
        run: |s, input| {
            let text = String::from_utf8_lossy(input);
            for tok in s.tokenizers() {
                for mode in [SpecialTokens::AsText, SpecialTokens::Parse] {
                    let ids = tok.encode(&text, mode).map_err(err)?;
                    let back = tok.decode(&ids).map_err(err)?;
                    // An oracle, not an input error: a failed round trip is a bug.
                    assert!(
                        mode == SpecialTokens::Parse || back == text,
                        "round trip changed the text: {text:?} -> {back:?}"
                    );
                }
            }
            Ok(())
        },
    },
    Target {
        name: "chat-template",
        about: "chat template rendering: template source, then a NUL, then the messages JSON",
        seeds: |f| {
            let messages = br#"[{"role":"system","content":"be brief"},{"role":"user","content":[{"type":"image"},{"type":"text","text":"hi"}]},{"role":"assistant","content":null,"tool_calls":[{"function":{"name":"f","arguments":{"a":1}}}]},{"role":"tool","content":"{\"x\":1}"}]"#;
            let mut seeds: Vec<Vec<u8>> = read(f.join("tokenizer/chat_template.jinja"));
            seeds.push(herd_text::chat::LLAMA4_TEMPLATE.as_bytes().to_vec());
            seeds.into_iter().map(|t| [t, vec![0], messages.to_vec()].concat()).collect()
        },
        dictionary: &[b"{% for i in range(99999) %}", b"{% endfor %}", b"{{ messages|tojson(indent=4) }}", b" ~ ", b"|indent(", b"{% set ns.x = ns.x ~ ns.x %}", b"raise_exception(", b"strftime_now("],
        max_len: 1 << 16,
        run: |s, input| {
            let (source, messages) = match input.iter().position(|&b| b == 0) {
                Some(i) => (&input[..i], &input[i + 1..]),
                None => (input, &b"[]"[..]),
            };
            let source = std::str::from_utf8(source).map_err(err)?;
            let messages: serde_json::Value = serde_json::from_slice(messages).map_err(err)?;
            let messages = herd_text::chat::parse_messages(messages).map_err(err)?;
            let template = ChatTemplate::new(source, "<|begin_of_text|>", "<|eot|>");
            template.render(&messages, None, true).map_err(err)?;
            let tok = s.tokenizers()[0];
            template.encode(tok, &messages, None, true, SpecialTokens::AsText).map_err(err)?;
            Ok(())
        },
    },
    Target {
        name: "tool-calls",
        about: "tool-call parsing of model replies, whole and streamed in random pieces",
        seeds: |_| {
            [
                r#"[get_weather(city="Paris", days=[1, 2.5, None]), f()]"#,
                r#"<|python_start|>{"name": "f", "parameters": {"a": {"b": [1]}}}<|python_end|>"#,
                r#"Sure. {"type": "function", "name": "g", "arguments": "{\"x\": 1}"}; {"name": "h"}"#,
            ]
            .iter()
            .map(|s| s.as_bytes().to_vec())
            .collect()
        },
        dictionary: &[b"[", b"{", b"(", b"<|python_start|>", b"<|eot|>", b"\\u", b"'", b"\"", b"=", b"True"],
        max_len: 1 << 16,
        run: |_, input| {
            let text = String::from_utf8_lossy(input);
            let whole = parse(&text);
            // A stream ends at the end-of-turn token (the engine stops there); the whole-reply
            // parser cuts there itself.
            let end = ["<|eot|>", "<|eom|>"].iter().filter_map(|m| text.find(m)).min().unwrap_or(text.len());
            let text = &text[..end];
            let mut stream = StreamParser::new();
            let mut events = Vec::new();
            let mut rest: &str = text;
            let mut step = 1 + input.first().copied().unwrap_or(3) as usize % 13;
            while !rest.is_empty() {
                let mut cut = step.min(rest.len());
                while !rest.is_char_boundary(cut) {
                    cut += 1;
                }
                events.extend(stream.push(&rest[..cut]));
                rest = &rest[cut..];
                step = step % 13 + 1;
            }
            events.extend(stream.finish());
            let calls: Vec<_> = events
                .iter()
                .filter_map(|e| match e {
                    herd_text::tool_calls::StreamEvent::ToolCalls(c) => Some(c.clone()),
                    herd_text::tool_calls::StreamEvent::Text(_) => None,
                })
                .flatten()
                .collect();
            // An oracle: streaming must find exactly the calls parsing the whole reply finds.
            assert_eq!(calls, whole.tool_calls, "streamed calls differ from the whole reply's");
            Ok(())
        },
    },
    Target {
        name: "image",
        about: "image decoding (JPEG incl. CMYK, PNG, WebP, GIF) and preprocessing to tiles",
        seeds: |f| {
            ["cmyk.jpg", "palette.png", "alpha.png", "grey.png", "exif_rotate90.jpg"]
                .iter()
                .flat_map(|n| read(f.join("images").join(n)))
                .filter(|b| b.len() <= 64 << 10)
                .collect()
        },
        dictionary: &[b"\xff\xd8\xff", b"\xff\xd9", b"IHDR", b"IDAT", b"\x89PNG", b"RIFF", b"GIF89a", b"Adobe"],
        max_len: 1 << 17,
        run: |_, input| {
            let img = decode(input, "fuzz").map_err(err)?;
            let config = PreprocessConfig {
                tile: 28,
                max_patches: 4,
                ..PreprocessConfig::default()
            };
            preprocess(&img, &config, &candle_core::Device::Cpu).map_err(err)?;
            Ok(())
        },
    },
    Target {
        name: "json-mode",
        about: "JSON mode's automaton over raw bytes (what it calls a whole object must parse)",
        seeds: |_| {
            [
                r#"{"a": [1, -2.5e+3, true, null, "x\u00e9\ud83d\ude00"], "b": {}}"#,
                "{\n    \"k\": \"日本語\"\n}",
                r#"{"n": 0.5E-2, "s": "\\\"\/\b\f\n\r\t"}"#,
            ]
            .iter()
            .map(|s| s.as_bytes().to_vec())
            .collect()
        },
        dictionary: &[b"{", b"}", b"[", b"]", b"\"", b":", b",", b"\\u", b"\\ud800", b"1e", b"-0.", b"true", b"\xed\xa0\x80", b"\xf4\x90"],
        max_len: 1 << 12,
        run: |_, input| {
            let mut prefix = herd_engine::frontend::json_mode::JsonPrefix::new();
            if !prefix.feed(input) {
                return Err("not a JSON-object prefix".into());
            }
            if !prefix.is_complete() {
                return Err("an unfinished object".into());
            }
            // An oracle: whatever the automaton calls a whole object, serde_json parses as one.
            let value: serde_json::Value = serde_json::from_slice(input)
                .unwrap_or_else(|e| panic!("JsonPrefix accepted what serde_json refuses: {e}"));
            assert!(value.is_object(), "JsonPrefix accepted a non-object");
            Ok(())
        },
    },
];

impl Scratch {
    /// The two real Llama 4 tokenizers, loaded once per process.
    pub fn tokenizers(&self) -> [&'static Tokenizer; 2] {
        use std::sync::OnceLock;
        static T: OnceLock<Option<[Tokenizer; 2]>> = OnceLock::new();
        let loaded = T.get_or_init(|| {
            let f = crate::fixtures_dir();
            Some([
                Tokenizer::from_file(&f.join("tokenizer/tokenizer.model")).ok()?,
                Tokenizer::from_file(&f.join("tokenizer/tokenizer.json.gz")).ok()?,
            ])
        });
        match loaded {
            Some([a, b]) => [a, b],
            None => {
                eprintln!("herd-fuzz: cannot load the fixture tokenizers");
                std::process::exit(3)
            }
        }
    }
}
