//! `herd merge`: fold a LoRA adapter into its base and write the base's layout.

use anyhow::{Context, Result};
use herd_train::adapter::Adapter;

use crate::args::finetune::MergeArgs;

pub fn run(args: MergeArgs) -> Result<()> {
    let adapter =
        Adapter::load(&args.adapter).with_context(|| format!("reading {}", args.adapter.display()))?;
    let merged = herd_train::export::merged_tensors(&args.model, &adapter)?;
    herd_train::export::write_checkpoint(&args.model, &args.out, &merged)?;
    eprintln!(
        "merged {} tensors of {} into {}",
        merged.len(),
        args.adapter.display(),
        args.out.display()
    );
    Ok(())
}
