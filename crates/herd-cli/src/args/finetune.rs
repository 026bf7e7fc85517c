//! `herd finetune` and `herd merge` arguments.

use std::path::PathBuf;

use clap::Args;
use herd_model::QuantType;
use herd_train::trainer::LayerLr;

use super::model::{parse_quant, DTypeArg};

#[derive(Args, Clone)]
pub struct FinetuneArgs {
    /// The base checkpoint: a Hugging Face folder or a GGUF file.
    #[arg(long, value_name = "DIR|FILE.gguf")]
    pub model: PathBuf,
    /// Training data, JSONL: `{"messages": [...]}` chats (loss on assistant turns only) or
    /// `{"text": "..."}` documents (continued pre-training).
    #[arg(long, value_name = "FILE.jsonl")]
    pub data: PathBuf,
    /// Where the adapter (or, with --full, the checkpoint), checkpoints, loss.csv and loss.png
    /// go.
    #[arg(long, value_name = "DIR")]
    pub out: PathBuf,
    /// Print the rendered examples with the trained spans marked ⟦…⟧, the counts and the plan;
    /// train nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Examples --dry-run prints.
    #[arg(long, default_value_t = 3, value_name = "N")]
    pub dry_run_examples: usize,

    /// Train every weight (f32 master copies) instead of LoRA adapters.
    #[arg(long, conflicts_with_all = ["lora_rank", "lora_alpha", "lora_dropout", "target_modules", "target_parameters", "use_rslora", "quant", "init_adapter"])]
    pub full: bool,
    /// LoRA rank r.
    #[arg(long, default_value_t = 16, value_name = "R")]
    pub lora_rank: usize,
    /// LoRA alpha: updates are scaled by alpha / r. Default: 2 r.
    #[arg(long, value_name = "ALPHA")]
    pub lora_alpha: Option<f64>,
    /// Dropout on LoRA inputs. Cannot be combined with --target-parameters or the router
    /// (PEFT refuses to load such an adapter).
    #[arg(long, default_value_t = 0.0, value_name = "P")]
    pub lora_dropout: f64,
    /// Modules to adapt, PEFT's names, comma-separated: q_proj, k_proj, v_proj, o_proj,
    /// gate_proj, up_proj, down_proj (dense MLPs and the shared expert; prefix with
    /// `shared_expert.` for that one only), router, or all-linear.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "q_proj,k_proj,v_proj,o_proj",
        value_name = "NAMES"
    )]
    pub target_modules: Vec<String>,
    /// Fused routed-expert tensors to adapt (PEFT's target_parameters), comma-separated:
    /// feed_forward.experts.gate_up_proj, feed_forward.experts.down_proj.
    #[arg(long, value_delimiter = ',', value_name = "NAMES")]
    pub target_parameters: Vec<String>,
    /// rsLoRA scaling: alpha / √r.
    #[arg(long)]
    pub use_rslora: bool,
    /// Start from this adapter's weights (same settings) instead of PEFT's initialisation.
    #[arg(long, value_name = "DIR")]
    pub init_adapter: Option<PathBuf>,
    /// Quantize the frozen base at load (QLoRA): q8_0, q4_k, …
    #[arg(long, value_name = "TYPE", value_parser = parse_quant)]
    pub quant: Option<QuantType>,
    /// Activation precision.
    #[arg(long, value_enum, default_value_t = DTypeArg::F32)]
    pub dtype: DTypeArg,

    /// Peak learning rate.
    #[arg(long, default_value_t = 2e-4)]
    pub lr: f64,
    /// Steps of linear warmup from 0 before the cosine decay.
    #[arg(long, default_value_t = 0, value_name = "N")]
    pub warmup_steps: u64,
    /// Optimizer steps (default: enough for --epochs).
    #[arg(long, value_name = "N")]
    pub steps: Option<u64>,
    /// Passes over the training data when --steps is not given.
    #[arg(long, default_value_t = 1.0, value_name = "E")]
    pub epochs: f64,
    /// Packed sequences per micro-batch.
    #[arg(long, default_value_t = 1, value_name = "N")]
    pub batch_size: usize,
    /// Micro-batches per optimizer step.
    #[arg(long, default_value_t = 1, value_name = "N")]
    pub grad_accum: usize,
    /// Clip the global gradient norm to this (0: off).
    #[arg(long, default_value_t = 1.0)]
    pub max_grad_norm: f64,
    /// AdamW's decoupled weight decay.
    #[arg(long, default_value_t = 0.0)]
    pub weight_decay: f64,
    #[arg(long, default_value_t = 0.9)]
    pub adam_beta1: f64,
    #[arg(long, default_value_t = 0.999)]
    pub adam_beta2: f64,
    #[arg(long, default_value_t = 1e-8)]
    pub adam_eps: f64,
    /// A learning-rate multiplier for a range of layers, e.g. `0-3=0.5`, `12-=2`; repeatable,
    /// the last match wins.
    #[arg(long, value_name = "LAYERS=MULT")]
    pub layer_lr: Vec<LayerLr>,
    /// Seeds the adapters' initialisation, the validation split, the data order and dropout.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,

    /// Tokens per packed sequence; longer examples are cut (and counted).
    #[arg(long, default_value_t = 2048, value_name = "TOKENS")]
    pub max_len: usize,
    /// One example per sequence instead of packing short ones together.
    #[arg(long)]
    pub no_packing: bool,
    /// Hold out this fraction of the examples for validation.
    #[arg(long, value_name = "F", conflicts_with = "validation_data")]
    pub validation_fraction: Option<f64>,
    /// Validation examples from their own file.
    #[arg(long, value_name = "FILE.jsonl")]
    pub validation_data: Option<PathBuf>,
    /// Validation loss every N steps (and at the end).
    #[arg(long, value_name = "N")]
    pub eval_every: Option<u64>,
    /// Write a resumable checkpoint every N steps (and at the end).
    #[arg(long, value_name = "N")]
    pub save_every: Option<u64>,
    /// Continue the run saved in this checkpoint folder (same data and settings), with results
    /// identical to an uninterrupted run.
    #[arg(long, value_name = "DIR")]
    pub resume: Option<PathBuf>,
    /// Disable the progress bar; print one line per step instead.
    #[arg(long)]
    pub quiet: bool,
}

#[derive(Args, Clone)]
pub struct MergeArgs {
    /// The base checkpoint folder (safetensors) the adapter was trained on.
    #[arg(long, value_name = "DIR")]
    pub model: PathBuf,
    /// A PEFT LoRA adapter folder (adapter_config.json + adapter_model.safetensors).
    #[arg(long, value_name = "DIR")]
    pub adapter: PathBuf,
    /// The merged checkpoint: the base's layout, dtypes and files, W + (alpha/r)·B A folded in.
    #[arg(long, value_name = "DIR")]
    pub out: PathBuf,
}
