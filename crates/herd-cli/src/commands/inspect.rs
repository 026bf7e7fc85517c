//! `herd inspect`: what a checkpoint is and what it costs, without loading its weights.

use anyhow::{Context, Result};
use herd_model::{inspect, Checkpoint, ModelConfig};

use crate::args::InspectArgs;

pub fn run(args: InspectArgs) -> Result<()> {
    let config =
        ModelConfig::load(&args.model).with_context(|| format!("reading {}", args.model.display()))?;
    // Weights are optional: a config alone (e.g. Scout's) is enough for the arithmetic.
    let stored = match Checkpoint::open(&args.model) {
        Ok(checkpoint) => {
            let text = checkpoint.stored_bytes(checkpoint.text_prefix())
                + checkpoint.stored_bytes(checkpoint.lm_head_name());
            Some(text as u64)
        }
        Err(e) => {
            eprintln!("(no weights read: {e})");
            None
        }
    };
    let bytes = args.dtype.dtype().size_in_bytes();
    print!("{}", inspect::report(&config, bytes, stored));
    let top: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(args.model.join("config.json"))?)?;
    if let Some(vision) = herd_model::vision::VisionConfig::from_json(&top)? {
        print!("{}", inspect::vision_report(&vision, config.hidden_size, bytes));
    }
    Ok(())
}
