//! `herd redteam`: GOAT-style multi-turn red-teaming of an OpenAI-compatible target
//! (herd-redteam), with transcripts and a report written to --out.

use std::time::Duration;

use anyhow::{bail, Context, Result};
use herd_redteam::{
    read_goals, run_with_progress, ChatModel, Judge, ModerationJudge, OpenAiChat, OutcomeRecord, PromptJudge,
    RunConfig,
};

use herd_engine::frontend::Frontend;
use herd_engine::guard::Policy;

use super::redteam_local::{LocalChat, LocalGuardJudge};
use crate::args::model::{DTypeArg, MatmulPrecisionArg};
use crate::args::redteam::{JudgeKind, RedteamArgs};
use crate::args::ModelArgs;

pub fn run(args: RedteamArgs) -> Result<()> {
    let goals = read_goals(&args.goals)?;
    let attacker = build_attacker(&args)?;
    let target = build_target(&args)?;
    let judge = build_judge(&args)?;
    let config = RunConfig {
        max_turns: args.max_turns as usize,
        max_tokens: args.max_tokens as usize,
        time_budget: Duration::from_secs(args.time_budget_secs),
        concurrency: args.concurrency as usize,
        output_dir: args.out.clone(),
    };
    eprintln!(
        "red-teaming {} with {} goals, up to {} turns each",
        args.target_url,
        goals.len(),
        config.max_turns
    );
    let progress = |o: &OutcomeRecord| {
        let how = match &o.error {
            Some(e) => format!("error: {e}"),
            None => o.stop_reason.id().to_string(),
        };
        eprintln!("goal {}: {} after {} turns", o.goal_index, how, o.turns);
    };
    let summary = run_with_progress(&config, &goals, &*attacker, &*target, &*judge, &progress)
        .context("red-team run")?;
    print!("{}", summary.report.to_markdown());
    eprintln!(
        "wrote {} transcripts to {}, and {}, {}, {}",
        summary.transcripts.len(),
        args.out.join("transcripts").display(),
        summary.report_markdown.display(),
        summary.report_json.display(),
        summary.report_png.display()
    );
    // A run in which no goal got past an error measured nothing: say so in the exit status.
    if let Some(first) = summary.outcomes.iter().find_map(|o| o.error.as_ref()) {
        if summary.outcomes.iter().all(|o| o.error.is_some()) {
            bail!("every goal ended in an error, the first: {first}");
        }
    }
    Ok(())
}

fn request_timeout(args: &RedteamArgs) -> Duration {
    Duration::from_secs(args.request_timeout_secs)
}

/// The attacker: a model served over the OpenAI API, or a local one.
fn build_attacker(args: &RedteamArgs) -> Result<Box<dyn ChatModel>> {
    if let Some(path) = &args.attacker_path {
        let (model, frontend) = load_local(path)?;
        let name = format!("local attacker {}", path.display());
        return Ok(Box::new(LocalChat::new(
            name,
            model,
            frontend,
            args.attacker_temperature,
            args.seed,
        )));
    }
    let (Some(url), Some(model)) = (&args.attacker_url, &args.attacker_model) else {
        bail!("--attacker-url needs --attacker-model (or give --attacker-path DIR)");
    };
    let chat = OpenAiChat::new(
        url,
        model.clone(),
        args.key(&args.attacker_api_key),
        request_timeout(args),
    )
    .context("--attacker-url")?;
    Ok(Box::new(chat.with_temperature(args.attacker_temperature)))
}

/// A checkpoint herd runs in this process, with its tokenizer and template.
fn load_local(path: &std::path::Path) -> Result<(herd_model::TextModel, Frontend)> {
    let args = ModelArgs {
        model: path.to_path_buf(),
        dtype: DTypeArg::F32,
        quant: None,
        kv_dtype: None,
        matmul_precision: MatmulPrecisionArg::Highest,
        device: "cpu".into(),
        adapter: Vec::new(),
        check_finite: false,
    };
    let model = args.load()?;
    let frontend =
        Frontend::load(path, model.config()).with_context(|| format!("{}: tokenizer", path.display()))?;
    Ok((model, frontend))
}

/// The model under test.
fn build_target(args: &RedteamArgs) -> Result<Box<dyn ChatModel>> {
    let chat = OpenAiChat::new(
        &args.target_url,
        args.target_model.clone(),
        args.key(&args.target_api_key),
        request_timeout(args),
    )
    .context("--target-url")?;
    Ok(Box::new(chat))
}

/// The judge: a local Llama Guard, a moderation endpoint, or a classification prompt on a
/// chat model.
fn build_judge(args: &RedteamArgs) -> Result<Box<dyn Judge>> {
    if let Some(path) = &args.judge_guard {
        let (model, frontend) = load_local(path)?;
        let name = format!("local guard {}", path.display());
        return Ok(Box::new(LocalGuardJudge::new(
            name,
            model,
            frontend,
            Policy::default(),
        )?));
    }
    let Some(url) = &args.judge_url else {
        bail!("give --judge-url URL or --judge-guard DIR");
    };
    match args.judge_kind {
        JudgeKind::Moderation => Ok(Box::new(
            ModerationJudge::new(
                url,
                args.judge_model.clone(),
                args.key(&args.judge_api_key),
                request_timeout(args),
            )
            .context("--judge-url")?,
        )),
        JudgeKind::Prompt => {
            let Some(model) = &args.judge_model else {
                bail!("--judge-kind prompt needs --judge-model (the chat model that classifies replies)");
            };
            // Classification wants the model's most likely answer, not a sample.
            let chat = OpenAiChat::new(
                url,
                model.clone(),
                args.key(&args.judge_api_key),
                request_timeout(args),
            )
            .context("--judge-url")?
            .with_temperature(0.0);
            Ok(Box::new(PromptJudge::new(Box::new(chat))))
        }
    }
}
