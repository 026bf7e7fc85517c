//! `herd generate`: stream a continuation.

use std::io::Write;
use std::ops::ControlFlow;
use std::time::Instant;

use anyhow::{bail, Result};
use herd_engine::{generate, FinishReason};
use herd_model::generation_config::{stop_token_ids, GenerationConfig};

use crate::args::tokens::parse_ids;
use crate::args::GenerateArgs;

pub fn run(args: GenerateArgs) -> Result<()> {
    let Some(tokens) = &args.tokens else {
        bail!("--prompt needs a tokenizer, which herd does not load yet; pass token ids with --tokens");
    };
    let prompt = parse_ids(tokens)?;
    let generation_config = GenerationConfig::load(&args.model.model)?;
    let model = args.model.load()?;
    let stops = stop_token_ids(&model.config().eos_token_ids, &generation_config);
    let params = args.sampling.params(&stops)?;

    let started = Instant::now();
    let mut first_token_at = None;
    let mut stdout = std::io::stdout().lock();
    let mut write_error = None;
    let generation = generate(&model, &prompt, &params, |id| {
        first_token_at.get_or_insert_with(Instant::now);
        match write!(stdout, "{id} ").and_then(|_| stdout.flush()) {
            Ok(()) => ControlFlow::Continue(()),
            Err(e) => {
                write_error = Some(e);
                ControlFlow::Break(())
            }
        }
    })?;
    if let Some(e) = write_error {
        return Err(e.into());
    }
    writeln!(stdout)?;

    let ttft = first_token_at.map_or(started.elapsed(), |t| t - started);
    let decode_s = started.elapsed().saturating_sub(ttft).as_secs_f64();
    let finish = match generation.finish_reason {
        FinishReason::Stop(id) => format!("stop token {id}"),
        FinishReason::Length => "max_new_tokens".into(),
        FinishReason::ContextFull => "context full".into(),
        FinishReason::Cancelled => "cancelled".into(),
    };
    let decode_tps = if decode_s > 0.0 {
        (generation.tokens.len().saturating_sub(1)) as f64 / decode_s
    } else {
        0.0
    };
    eprintln!(
        "[{} prompt tokens, {} generated, finished by {finish}; prefill {:.1} ms, decode {decode_tps:.1} tok/s]",
        generation.prompt_tokens,
        generation.tokens.len(),
        ttft.as_secs_f64() * 1e3,
    );
    Ok(())
}
