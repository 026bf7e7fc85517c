//! `herd synth`: a random-weight checkpoint folder of real shapes.

use anyhow::{bail, Context, Result};
use herd_model::synth::{self, SynthSpec};
use indicatif::{ProgressBar, ProgressStyle};

use crate::args::SynthArgs;

pub fn run(args: SynthArgs) -> Result<()> {
    let Some(mut spec) = SynthSpec::preset(&args.preset) else {
        bail!("--preset {}: expected bench-moe-2.7b or scout", args.preset);
    };
    if let Some(layers) = args.layers {
        spec.layers = layers;
    }
    if let Some(vocab) = args.vocab {
        spec.vocab = vocab;
    }
    let bar = if args.quiet {
        ProgressBar::hidden()
    } else {
        ProgressBar::new(spec.weight_bytes())
    };
    bar.set_style(
        ProgressStyle::with_template("{bar:40} {bytes}/{total_bytes} {bytes_per_sec} {elapsed_precise}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    synth::write(&spec, &args.out, args.seed, |done, _| bar.set_position(done))
        .with_context(|| format!("writing {}", args.out.display()))?;
    bar.finish_and_clear();
    eprintln!(
        "wrote {} ({} layers, vocab {}, {:.2} GB of bf16 weights)",
        args.out.display(),
        spec.layers,
        spec.vocab,
        spec.weight_bytes() as f64 / 1e9
    );
    Ok(())
}
