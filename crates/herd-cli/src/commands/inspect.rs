//! `herd inspect`: what a checkpoint is and what it costs, without loading its weights.

use anyhow::{Context, Result};
use herd_model::{inspect, LoadOptions, ModelConfig, QuantType, WeightSource};

use crate::args::InspectArgs;

pub fn run(args: InspectArgs) -> Result<()> {
    let quant = args
        .quant
        .as_deref()
        .map(|q| {
            QuantType::parse(q)
                .filter(|t| t.writable())
                .with_context(|| format!("--quant {q}: expected q8_0, q4_0, q4_k, q5_k or q6_k"))
        })
        .transpose()?;
    // Weights are optional: a config alone (e.g. Scout's) is enough for the arithmetic.
    let (config, source) = match WeightSource::open(&args.model) {
        Ok((source, config)) => (config, Some(source)),
        Err(e) if args.model.is_dir() => {
            eprintln!("(no weights read: {e})");
            let config = ModelConfig::load(&args.model)
                .with_context(|| format!("reading {}", args.model.display()))?;
            (config, None)
        }
        Err(e) => return Err(e).with_context(|| format!("reading {}", args.model.display())),
    };
    let stored = source.as_ref().map(|s| match s {
        WeightSource::Safetensors(c) => {
            (c.stored_bytes(c.text_prefix()) + c.stored_bytes(c.lm_head_name())) as u64
        }
        WeightSource::Gguf(g) => g.data_bytes(),
    });
    let bytes = args.dtype.dtype().size_in_bytes();
    print!("{}", inspect::report(&config, bytes, stored));
    if let Some(source) = &source {
        let options = LoadOptions {
            quant,
            ..LoadOptions::new(args.dtype.dtype(), &candle_core::Device::Cpu)
        };
        let resident = inspect::resident_weight_bytes(source, &config, &options)?;
        let how = quant.map_or(String::new(), |q| format!(", --quant {q}"));
        println!(
            "resident weights when loaded ({} compute{how}): {} ({resident} B)",
            args.dtype.dtype().as_str(),
            inspect::human_bytes(resident)
        );
    }
    if args.model.is_dir() {
        let top = herd_model::json_file::read_json(&args.model.join("config.json"))?;
        if let Some(vision) = herd_model::vision::VisionConfig::from_json(&top)? {
            print!("{}", inspect::vision_report(&vision, config.hidden_size, bytes));
        }
    }
    Ok(())
}
