//! Command-line arguments: one struct per command, shared groups in their own files.

pub mod model;
pub mod sampling;
pub mod tokens;

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

pub use model::ModelArgs;
pub use sampling::SamplingArgs;

#[derive(Parser)]
#[command(
    name = "herd",
    version,
    about = "Run Meta's Llama 4 models (Scout, Maverick, Llama Guard 4) from Hugging Face checkpoints."
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand)]
pub enum Command {
    /// Continue a prompt, streaming the new tokens as they are chosen.
    Generate(GenerateArgs),
    /// Write the logits at every position of a token sequence to a safetensors file.
    Logits(LogitsArgs),
    /// Print the resolved layer plan, parameter counts and memory needs (reads only config.json
    /// and safetensors headers).
    Inspect(InspectArgs),
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
    /// Prompt text. Needs the tokenizer, which herd does not have yet: use --tokens.
    #[arg(long, value_name = "TEXT")]
    pub prompt: Option<String>,
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
    #[arg(long)]
    pub decode: bool,
}

#[derive(Args)]
pub struct InspectArgs {
    /// Checkpoint folder (config.json; weights are optional here).
    #[arg(long, value_name = "DIR")]
    pub model: PathBuf,
    /// Element type used for the byte figures.
    #[arg(long, value_enum, default_value_t = model::DTypeArg::F32)]
    pub dtype: model::DTypeArg,
}
