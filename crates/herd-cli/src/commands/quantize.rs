//! `herd quantize`: a checkpoint folder → a GGUF file of the chosen type.

use anyhow::{Context, Result};
use herd_model::quantize::{quantize_to_gguf, FileType};
use indicatif::{ProgressBar, ProgressStyle};

use crate::args::QuantizeArgs;

pub fn run(args: QuantizeArgs) -> Result<()> {
    let ftype = FileType::parse(&args.file_type)
        .with_context(|| format!("--type {}: expected one of {}", args.file_type, FileType::NAMES))?;
    let bar = if args.quiet {
        ProgressBar::hidden()
    } else {
        ProgressBar::new(0)
    };
    bar.set_style(
        ProgressStyle::with_template("{bar:40} {pos}/{len} tensors {elapsed_precise} {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let report = quantize_to_gguf(&args.model, &args.out, ftype, |done, total, name| {
        bar.set_length(total as u64);
        bar.set_position(done as u64);
        bar.set_message(name.to_string());
    })
    .with_context(|| format!("quantizing {} to {}", args.model.display(), args.out.display()))?;
    bar.finish_and_clear();
    eprintln!(
        "wrote {} ({} tensors, {:.1} MB, {})",
        args.out.display(),
        report.n_tensors,
        report.file_bytes as f64 / 1e6,
        args.file_type.to_ascii_uppercase()
    );
    Ok(())
}
