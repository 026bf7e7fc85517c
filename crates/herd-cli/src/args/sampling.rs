//! Sampling flags, turned into the engine's one validated [`SamplingParams`].

use anyhow::Result;
use clap::Args;
use herd_engine::SamplingParams;

#[derive(Args)]
pub struct SamplingArgs {
    /// 0 = greedy.
    #[arg(long, default_value_t = 1.0, allow_negative_numbers = true)]
    pub temperature: f32,
    /// Nucleus sampling: keep the most likely tokens whose probabilities sum to this (1 = off).
    #[arg(long, default_value_t = 1.0, allow_negative_numbers = true)]
    pub top_p: f32,
    /// Keep only the K most likely tokens (0 = off).
    #[arg(long, default_value_t = 0)]
    pub top_k: usize,
    /// Drop tokens less likely than MIN_P × the most likely token (0 = off).
    #[arg(long, default_value_t = 0.0, allow_negative_numbers = true)]
    pub min_p: f32,
    /// Penalise tokens already in the sequence, transformers-style (1 = off).
    #[arg(long, default_value_t = 1.0, allow_negative_numbers = true)]
    pub repetition_penalty: f32,
    /// OpenAI-style: subtract this from the logit of every token generated so far, once
    /// ([-2, 2]; 0 = off).
    #[arg(long, default_value_t = 0.0, allow_negative_numbers = true)]
    pub presence_penalty: f32,
    /// OpenAI-style: subtract this once per time a token has been generated ([-2, 2]; 0 = off).
    #[arg(long, default_value_t = 0.0, allow_negative_numbers = true)]
    pub frequency_penalty: f32,
    /// Add BIAS to token ID's logit before sampling (repeatable; BIAS in [-100, 100]).
    #[arg(long = "logit-bias", value_name = "ID=BIAS", value_parser = parse_logit_bias, allow_negative_numbers = true)]
    pub logit_bias: Vec<(u32, f32)>,
    /// Random seed: the same seed gives the same tokens.
    #[arg(long)]
    pub seed: Option<u64>,
    /// Most tokens to generate.
    #[arg(long, default_value_t = 128)]
    pub max_new_tokens: usize,
    /// Extra stop token id (repeatable). The checkpoint's eos_token_id (config.json and
    /// generation_config.json) always stop generation too.
    #[arg(long = "stop-token-id", value_name = "ID")]
    pub stop_token_ids: Vec<u32>,
    /// Do not stop at the checkpoint's eos ids.
    #[arg(long)]
    pub ignore_eos: bool,
}

impl SamplingArgs {
    /// Builds the parameters, adding the checkpoint's stop ids unless `--ignore-eos`.
    pub fn params(&self, checkpoint_stop_ids: &[u32]) -> Result<SamplingParams> {
        let mut stop_token_ids = self.stop_token_ids.clone();
        if !self.ignore_eos {
            stop_token_ids.extend(
                checkpoint_stop_ids
                    .iter()
                    .filter(|id| !self.stop_token_ids.contains(id)),
            );
        }
        let params = SamplingParams {
            temperature: self.temperature,
            top_p: self.top_p,
            top_k: self.top_k,
            min_p: self.min_p,
            repetition_penalty: self.repetition_penalty,
            presence_penalty: self.presence_penalty,
            frequency_penalty: self.frequency_penalty,
            logit_bias: self.logit_bias.clone(),
            seed: self.seed,
            max_new_tokens: self.max_new_tokens,
            stop_token_ids,
        };
        params.validate()?;
        Ok(params)
    }
}

fn parse_logit_bias(s: &str) -> Result<(u32, f32), String> {
    let (id, bias) = s
        .split_once('=')
        .ok_or_else(|| format!("`{s}`: expected ID=BIAS, e.g. 128009=-100"))?;
    let id = id
        .trim()
        .parse()
        .map_err(|e| format!("`{id}` is not a token id: {e}"))?;
    let bias = bias
        .trim()
        .parse()
        .map_err(|e| format!("`{bias}` is not a number: {e}"))?;
    Ok((id, bias))
}
