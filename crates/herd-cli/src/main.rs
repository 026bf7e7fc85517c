//! `herd`: run Llama 4 checkpoints from the command line.

mod args;
mod commands;

use clap::Parser;

use args::{Cli, Command};

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    // `herd serve` logs a line per request unless HERD_LOG says otherwise.
    let default_log = match cli.command {
        Command::Serve(_) => "herd_server=info",
        _ => "error",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_env("HERD_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_log));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr)
        .init();
    let mut limits = herd_limits::Limits::default();
    for setting in &cli.limits {
        if let Err(e) = limits.set(setting) {
            eprintln!("error: --limit {e}");
            return std::process::ExitCode::FAILURE;
        }
    }
    limits.install();
    if let Some(n) = cli.threads {
        // Before any pool exists: candle's pools (and herd's kernels on them) size themselves
        // from this variable when first used. Single-threaded here, so setting it is sound.
        std::env::set_var("RAYON_NUM_THREADS", n.to_string());
    }
    // Every command runs forward passes that free and reallocate the same buffers each step.
    herd_model::heap::reuse_freed_buffers();
    let result = match cli.command {
        Command::Generate(a) => commands::generate::run(a),
        Command::Logits(a) => commands::logits::run(a),
        Command::Inspect(a) => commands::inspect::run(a),
        Command::Tokenize(a) => commands::tokenize::run(a),
        Command::Render(a) => commands::render::run(a),
        Command::Chat(a) => commands::chat::run(a),
        Command::Preprocess(a) => commands::preprocess::run(a),
        Command::Quantize(a) => commands::quantize::run(a),
        Command::Synth(a) => commands::synth::run(a),
        Command::Bench(a) => commands::bench::run(a),
        Command::Serve(a) => commands::serve::run(a),
        Command::Moderate(a) => commands::moderate::run(a),
        Command::Redteam(a) => commands::redteam::run(a),
        Command::Finetune(a) => commands::finetune::run(a),
        Command::Merge(a) => commands::merge::run(a),
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
