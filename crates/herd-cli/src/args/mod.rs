//! Command-line arguments: one struct per command, shared groups in their own files.

pub mod finetune;
pub mod model;
pub mod redteam;
pub mod sampling;
pub mod tokens;
pub mod video;

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

pub use model::ModelArgs;
pub use sampling::SamplingArgs;

#[derive(Parser)]
#[command(
    name = "herd",
    version,
    about = "Run Meta's Llama 4 models (Scout, Maverick, Llama Guard 4) from Hugging Face checkpoints (bf16, FP8) and GGUF files."
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
    /// Raise or lower a limit on untrusted input, NAME=VALUE (repeatable; K/M/G suffixes).
    /// Names and defaults: config-bytes=16M, tokenizer-bytes=256M, template-bytes=1M,
    /// decompressed-bytes=256M, template-steps=10000000, template-output-bytes=64M,
    /// prompt-bytes=64M, nesting-depth=128, image-bytes=64M, image-pixels=268435456,
    /// request-pixels=268435456.
    #[arg(long = "limit", value_name = "NAME=VALUE", global = true)]
    pub limits: Vec<String>,
    /// Threads for the compute kernels (default: the physical cores this process may use).
    #[arg(short = 't', long = "threads", value_name = "N", global = true, value_parser = clap::value_parser!(u16).range(1..=1024))]
    pub threads: Option<u16>,
}

#[derive(Subcommand)]
pub enum Command {
    /// Continue a prompt, streaming the new tokens as they are chosen.
    Generate(GenerateArgs),
    /// Write the logits at every position of a token sequence to a safetensors file.
    Logits(LogitsArgs),
    /// Print the resolved layer plan, parameter counts and memory needs (reads only config.json
    /// and safetensors headers, or a GGUF's header).
    Inspect(InspectArgs),
    /// Tokenize JSON strings read from stdin, one per line (or decode id arrays with --decode).
    Tokenize(TokenizeArgs),
    /// Render a conversation with the model's chat template and print its token ids.
    Render(RenderArgs),
    /// Chat with a model interactively (streaming replies, conversation history).
    Chat(ChatArgs),
    /// Write an image's preprocessed tiles (pixel_values) and tile grid to a safetensors file.
    Preprocess(PreprocessArgs),
    /// Write a checkpoint folder as a GGUF file (F32, F16, BF16, Q8_0, Q4_0, Q4_K_M, Q5_K_M,
    /// Q6_K) that llama.cpp reads, with its tensor names, metadata and vocabulary.
    Quantize(QuantizeArgs),
    /// Write a random-weight checkpoint of real shapes (bf16 safetensors, config, tokenizer)
    /// for benchmarks and memory checks, e.g. `--preset bench-moe-2.7b`.
    Synth(SynthArgs),
    /// Measure prompt processing and decode speed, llama-bench style: a table, then one JSON
    /// line (with this machine's memory bandwidth, probed in the same run).
    Bench(BenchArgs),
    /// Serve the model over an OpenAI-compatible HTTP API (chat completions, completions,
    /// moderations with a guard, models, health, metrics) with continuous batching of
    /// concurrent requests.
    Serve(ServeArgs),
    /// Classify a conversation with a Llama Guard model: `safe`, or `unsafe` with the violated
    /// categories (S1–S14, a subset, or your own), and the probability of `unsafe`.
    Moderate(ModerateArgs),
    /// Red-team a chat model GOAT-style: an attacker model converses with the target for up to
    /// N turns per goal, a judge flags jailbreaks; writes transcripts and an ASR report.
    Redteam(redteam::RedteamArgs),
    /// Fine-tune a checkpoint on JSONL chats or text: LoRA (PEFT-compatible adapters, fused
    /// experts included; QLoRA on a quantized base) or every weight (--full).
    Finetune(finetune::FinetuneArgs),
    /// Fold a LoRA adapter into its base checkpoint and write the result in the base's layout.
    Merge(finetune::MergeArgs),
}

#[derive(Clone, Copy, clap::ValueEnum)]
pub enum GuardModeArg {
    Input,
    Output,
    Both,
}

#[derive(Args)]
pub struct ServeArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// Address to listen on (0.0.0.0 exposes the server to the network).
    #[arg(long, default_value = "127.0.0.1")]
    pub host: String,
    /// Port to listen on (0 picks a free one; the address is printed).
    #[arg(long, default_value_t = 8080)]
    pub port: u16,
    /// Require `Authorization: Bearer KEY` on /v1/* (401 otherwise).
    #[arg(long, env = "HERD_API_KEY", hide_env_values = true)]
    pub api_key: Option<String>,
    /// The model name /v1/models lists and responses carry (default: the checkpoint's file or
    /// folder name).
    #[arg(long, value_name = "NAME")]
    pub served_model_name: Option<String>,
    /// Most sequences generating at once; more requests wait in a queue.
    #[arg(long, default_value_t = 16, value_parser = clap::value_parser!(u32).range(1..=4096))]
    pub max_running: u32,
    /// Most tokens one batched step feeds (prefill pieces and decode tokens together); at
    /// least --max-running.
    #[arg(long, default_value_t = 512)]
    pub max_tokens_per_step: usize,
    /// KV cache memory all running sequences may reserve, MiB. A request reserves its prompt
    /// plus max_tokens when it starts; one that cannot fit waits, one that never could is a 400.
    #[arg(long, default_value_t = 4096)]
    pub kv_budget_mib: usize,
    /// max_tokens of a request that gives none (capped by the context left).
    #[arg(long, default_value_t = 1024)]
    pub default_max_tokens: usize,
    /// Largest request body, MiB (images come inside it as data URLs).
    #[arg(long, default_value_t = 32)]
    pub max_body_mib: usize,
    /// Seconds a shutdown (SIGINT/SIGTERM) waits for requests in flight.
    #[arg(long, default_value_t = 30)]
    pub shutdown_timeout_secs: u64,
    /// Fetch `http(s)://` image URLs in requests (default: only `data:` URLs). Each fetch is
    /// bounded by --limit image-bytes and --image-url-timeout-secs; the server then reaches
    /// whatever host a client names, so enable it only where that is acceptable.
    #[arg(long)]
    pub allow_image_urls: bool,
    /// Seconds one image fetch may take, connection to last byte.
    #[arg(long, default_value_t = 10)]
    pub image_url_timeout_secs: u64,
    /// A Llama Guard checkpoint for POST /v1/moderations and --guard-mode screening (loaded
    /// with this command's --dtype, --quant and --kv-dtype, on its own engine thread). Without
    /// it, /v1/moderations answers only when the served model is itself a Llama Guard model.
    #[arg(long, value_name = "DIR|FILE.gguf")]
    pub guard: Option<PathBuf>,
    /// Screen chat completions with --guard: `input` checks each conversation before anything
    /// is generated, `output` checks each reply before the client sees it (streams are held
    /// back and sent once screened), `both` does both.
    #[arg(long, value_enum, value_name = "MODE", requires = "guard")]
    pub guard_mode: Option<GuardModeArg>,
    /// What a flagged chat gets instead: this text as the reply (finish_reason
    /// `content_filter`). Default: a flagged input is a 400 error with code `content_filter`,
    /// a flagged reply is emptied.
    #[arg(long, value_name = "TEXT", requires = "guard_mode")]
    pub guard_refusal: Option<String>,
    /// Let through text the guard answered with something other than a verdict (default:
    /// such text counts as flagged).
    #[arg(long, requires = "guard_mode")]
    pub guard_fail_open: bool,
    /// Guard categories to leave out of the policy (e.g. `S6,S7`).
    #[arg(long, value_delimiter = ',', value_name = "CODES")]
    pub guard_exclude: Vec<String>,
}

#[derive(Args)]
pub struct BenchArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// Prompt lengths to time (prompt processing, one forward step each); 0 skips.
    #[arg(short = 'p', long = "n-prompt", value_delimiter = ',', default_value = "512")]
    pub n_prompt: Vec<usize>,
    /// Tokens to decode one at a time (text generation); 0 skips.
    #[arg(short = 'n', long = "n-gen", value_delimiter = ',', default_value = "128")]
    pub n_gen: Vec<usize>,
    /// Context already in the cache before each test (untimed prefill), e.g. `-d 0,8192`.
    #[arg(short = 'd', long = "depth", value_delimiter = ',', default_value = "0")]
    pub depth: Vec<usize>,
    /// Repetitions of each test, taken round-robin over the tests, the deepest first in each round (mean ± standard deviation are reported).
    #[arg(short = 'r', long = "repetitions", default_value_t = 5, value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub repetitions: u32,
    /// Seed of the random prompt tokens.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Only the JSON line (no table, no progress bar).
    #[arg(long)]
    pub json: bool,
}

#[derive(Args)]
pub struct SynthArgs {
    /// Shapes to use: `bench-moe-2.7b` (hidden 2048, 16 layers, 16 q / 8 kv heads × 128,
    /// 16 experts + shared, top-1, expert width 1024, vocab 202048; 5.5 GB) or `scout` (Llama 4
    /// Scout's text model: hidden 5120, 48 layers, 40 q / 8 kv heads × 128, 16 experts of 8192
    /// + shared; 216 GB, so pick a slice with `--layers`: 4 layers are 21.8 GB).
    #[arg(long, default_value = "bench-moe-2.7b")]
    pub preset: String,
    /// Output folder (created).
    #[arg(long, value_name = "DIR")]
    pub out: PathBuf,
    /// Seed of the weight generator (same seed, same bytes).
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Override the number of layers (smaller models for quick checks).
    #[arg(long)]
    pub layers: Option<usize>,
    /// Override the vocabulary size (at least 265).
    #[arg(long)]
    pub vocab: Option<usize>,
    /// No progress bar.
    #[arg(long)]
    pub quiet: bool,
}

#[derive(Args)]
pub struct QuantizeArgs {
    /// Hugging Face checkpoint folder (config.json, safetensors, tokenizer.json).
    #[arg(long, value_name = "DIR")]
    pub model: PathBuf,
    /// Output GGUF file (written beside, then renamed into place).
    #[arg(long, value_name = "FILE.gguf")]
    pub out: PathBuf,
    /// File type: F32, F16, BF16, Q8_0, Q4_0, Q4_K_M, Q5_K_M or Q6_K.
    #[arg(long = "type", value_name = "TYPE")]
    pub file_type: String,
    /// No progress bar.
    #[arg(long)]
    pub quiet: bool,
}

#[derive(Args)]
pub struct GenerateArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// Prompt token ids, comma-separated (e.g. 1,2,3). The continuation is printed as ids.
    #[arg(
        long,
        value_name = "IDS",
        conflicts_with = "prompt",
        required_unless_present = "prompt"
    )]
    pub tokens: Option<String>,
    /// Prompt text, tokenized with the checkpoint's tokenizer (BOS first); the continuation is
    /// printed as text.
    #[arg(long, value_name = "TEXT")]
    pub prompt: Option<String>,
    /// Let special-token text in --prompt (e.g. `<|eot|>`) become special tokens.
    #[arg(long)]
    pub allow_special: bool,
    /// An image file or `data:image/...;base64,...` URL for the prompt (repeatable). With
    /// --prompt the images come first, each as its full token layout; with --tokens the ids
    /// must already hold the layouts.
    #[arg(long = "image", value_name = "FILE|DATA-URL")]
    pub images: Vec<PathBuf>,
    /// A video for the prompt (with --prompt): an animated GIF, a folder of frames, or — in a
    /// herd built with `--features video` — MP4, WebM and whatever else FFmpeg reads. Each
    /// chosen frame goes after BOS as `Frame at M:SS:` and its image layout, before the text.
    #[arg(long, value_name = "FILE|DIR", conflicts_with = "images")]
    pub video: Option<PathBuf>,
    #[command(flatten)]
    pub video_select: video::VideoSelectArgs,
    #[command(flatten)]
    pub sampling: SamplingArgs,
}

#[derive(Args)]
pub struct LogitsArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// Token ids, comma-separated (e.g. 1,2,3).
    #[arg(long, value_name = "IDS")]
    pub tokens: String,
    /// Output file: one f32 tensor named `logits`, shape [n_tokens, vocab].
    #[arg(long, value_name = "FILE.safetensors")]
    pub out: PathBuf,
    /// Feed the tokens one at a time through the KV cache instead of one full pass (the rows
    /// must agree: a check of the cache).
    #[arg(long, conflicts_with = "images")]
    pub decode: bool,
    /// Image whose features replace the `<|patch|>` tokens of IDS (repeatable, in order; IDS
    /// must already contain each image's expanded layout). A file or a data URL.
    #[arg(long = "image", value_name = "FILE|DATA-URL")]
    pub images: Vec<PathBuf>,
}

#[derive(Args)]
pub struct PreprocessArgs {
    /// Checkpoint folder (only config.json and preprocessor_config.json are read).
    #[arg(long, value_name = "DIR")]
    pub model: PathBuf,
    /// The image: a file or a `data:image/...;base64,...` URL.
    #[arg(long, value_name = "FILE|DATA-URL")]
    pub image: PathBuf,
    /// Output: `pixel_values` [tiles, 3, S, S] (f32) and `aspect_ratio` [rows, cols] (i64).
    #[arg(long, value_name = "FILE.safetensors")]
    pub out: PathBuf,
}

#[derive(Args)]
pub struct InspectArgs {
    /// Checkpoint folder (config.json; weights are optional here) or GGUF file.
    #[arg(long, value_name = "DIR|FILE.gguf")]
    pub model: PathBuf,
    /// Element type used for the byte figures of configs without weights.
    #[arg(long, value_enum, default_value_t = model::DTypeArg::F32)]
    pub dtype: model::DTypeArg,
    /// Report the resident weight bytes as if loaded with `--quant TYPE`.
    #[arg(long, value_name = "TYPE")]
    pub quant: Option<String>,
}

#[derive(Args)]
pub struct TokenizeArgs {
    /// Checkpoint folder whose tokenizer.json (or tokenizer.model) to use, or a GGUF file (its
    /// vocabulary, unless a tokenizer file sits beside it).
    #[arg(
        long,
        value_name = "DIR|FILE.gguf",
        required_unless_present = "tokenizer",
        conflicts_with = "tokenizer"
    )]
    pub model: Option<PathBuf>,
    /// A tokenizer file: tokenizer.json(.gz) or Meta's tiktoken tokenizer.model.
    #[arg(long, value_name = "FILE")]
    pub tokenizer: Option<PathBuf>,
    /// Start each sequence with <|begin_of_text|>.
    #[arg(long)]
    pub bos: bool,
    /// Encode special-token text (e.g. `<|eot|>`) as the special token instead of as text.
    #[arg(long)]
    pub allow_special: bool,
    /// Read JSON arrays of ids and print JSON strings instead.
    #[arg(long)]
    pub decode: bool,
}

#[derive(Args)]
pub struct RenderArgs {
    /// Checkpoint folder or GGUF file (its chat template and tokenizer are used; weights are not
    /// read).
    #[arg(long, value_name = "DIR|FILE.gguf")]
    pub model: PathBuf,
    /// A JSON list of messages (`[{"role": "user", "content": "Hi"}]`), or an object with
    /// `messages` (and optionally `tools`).
    #[arg(long, value_name = "FILE.json")]
    pub messages: PathBuf,
    /// A JSON list of tool (function) definitions.
    #[arg(long, value_name = "FILE.json")]
    pub tools: Option<PathBuf>,
    /// Do not end with the assistant header.
    #[arg(long)]
    pub no_generation_prompt: bool,
    /// Print the rendered text instead of the ids.
    #[arg(long)]
    pub text: bool,
    /// Tokenize special-token text inside messages as special tokens (as transformers does)
    /// instead of as text.
    #[arg(long)]
    pub allow_special: bool,
}

#[derive(Args)]
pub struct ChatArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// System prompt to start with (change it later with /system).
    #[arg(long)]
    pub system: Option<String>,
    /// How `/video PATH` picks frames.
    #[command(flatten)]
    pub video_select: video::VideoSelectArgs,
    #[command(flatten)]
    pub sampling: SamplingArgs,
}

#[derive(Args)]
pub struct ModerateArgs {
    /// The guard checkpoint (Llama Guard 4 or anything of its architecture).
    #[command(flatten)]
    pub model: ModelArgs,
    /// The conversation: a JSON list of messages (or `{"messages": [...]}`), user and assistant
    /// turns alternating from the user; the guard judges the last one. Content is a string or
    /// a list of `{"type": "text", "text": …}` and `{"type": "image"}` parts.
    #[arg(long, value_name = "FILE.json")]
    pub messages: PathBuf,
    /// An image file for the conversation's `{"type": "image"}` parts, in order (repeatable;
    /// needs a guard with a vision tower).
    #[arg(long = "image", value_name = "FILE")]
    pub images: Vec<PathBuf>,
    /// Check only these default categories (e.g. `S1,S9,S10`).
    #[arg(long, value_delimiter = ',', value_name = "CODES", conflicts_with_all = ["exclude", "custom_categories"])]
    pub categories: Vec<String>,
    /// Check every default category but these (e.g. `S6,S7`).
    #[arg(
        long,
        value_delimiter = ',',
        value_name = "CODES",
        conflicts_with = "custom_categories"
    )]
    pub exclude: Vec<String>,
    /// Your own categories instead of S1–S14: a JSON object `{"C1": "Description.", …}` (in
    /// prompt order) or a list of `{"code": …, "name": …}`.
    #[arg(long, value_name = "FILE.json")]
    pub custom_categories: Option<PathBuf>,
    /// Print the verdict as one JSON object.
    #[arg(long)]
    pub json: bool,
    /// Print the guard prompt's text (what the model sees) before the verdict.
    #[arg(long)]
    pub show_prompt: bool,
}
