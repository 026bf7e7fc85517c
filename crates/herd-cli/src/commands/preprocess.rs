//! `herd preprocess`: an image as the model will see it, for comparison with another
//! implementation. Reads only the checkpoint's config files.

use std::collections::HashMap;

use anyhow::{Context, Result};
use candle_core::{Device, Tensor};

use crate::args::PreprocessArgs;
use herd_engine::frontend::images::preprocess_file;

pub fn run(args: PreprocessArgs) -> Result<()> {
    let processed = preprocess_file(&args.model, &args.image, &Device::Cpu)?;
    let (rows, cols) = processed.aspect_ratio;
    let aspect = Tensor::new(&[rows as i64, cols as i64], &Device::Cpu)?;
    let dims = processed.pixel_values.dims().to_vec();
    herd_limits::write_output(&args.out, &[&args.model, &args.image], |tmp| {
        candle_core::safetensors::save(
            &HashMap::from([("pixel_values", processed.pixel_values), ("aspect_ratio", aspect)]),
            tmp,
        )
    })?
    .with_context(|| format!("writing {}", args.out.display()))?;
    eprintln!(
        "wrote pixel_values {dims:?} and aspect_ratio [{rows}, {cols}] to {}",
        args.out.display()
    );
    Ok(())
}
