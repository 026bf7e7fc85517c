//! `herd logits`: the logits at every position, for comparison with other implementations.

use std::collections::HashMap;

use anyhow::{Context, Result};
use candle_core::Tensor;
use herd_model::LogitsFor;

use crate::args::tokens::parse_ids;
use crate::args::LogitsArgs;

pub fn run(args: LogitsArgs) -> Result<()> {
    let ids = parse_ids(&args.tokens)?;
    let model = args.model.load()?;
    let mut cache = model.new_cache();
    let images = herd_engine::frontend::images::encode_files(&args.model.model, &model, &args.images)?;
    let logits = if let Some(images) = &images {
        model.forward_with_images(
            &ids,
            &images.features.rows,
            images.features.patch_id,
            &mut cache,
            LogitsFor::All,
        )?
    } else if args.decode {
        let rows = ids
            .iter()
            .map(|&id| model.forward(&[id], &mut cache, LogitsFor::All))
            .collect::<Result<Vec<_>, _>>()?;
        Tensor::cat(&rows, 0)?
    } else {
        model.forward(&ids, &mut cache, LogitsFor::All)?
    };
    let logits = logits.to_device(&candle_core::Device::Cpu)?;
    let (n, v) = logits.dims2()?;
    let mut inputs: Vec<&std::path::Path> = vec![&args.model.model];
    inputs.extend(args.images.iter().map(|p| p.as_path()));
    herd_limits::write_output(&args.out, &inputs, |tmp| {
        candle_core::safetensors::save(&HashMap::from([("logits", logits)]), tmp)
    })?
    .with_context(|| format!("writing {}", args.out.display()))?;
    eprintln!("wrote logits [{n}, {v}] to {}", args.out.display());
    Ok(())
}
