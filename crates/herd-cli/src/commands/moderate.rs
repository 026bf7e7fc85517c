//! `herd moderate`: one conversation through a Llama Guard model, the verdict printed (or as
//! JSON with `--json`).

use std::io::Write;

use anyhow::{bail, Context, Result};
use herd_engine::frontend::Frontend;
use herd_engine::guard::{Guard, GuardResult, Policy, TemplateOrigin, Verdict};
use herd_engine::{EngineCore, SchedulerConfig};
use herd_text::Message;
use serde_json::Value;

use crate::args::ModerateArgs;

pub fn run(args: ModerateArgs) -> Result<()> {
    let policy = policy(&args)?;
    let conversation = read_conversation(&args.messages)?;
    let path = &args.model.model;
    let model = args.model.load()?;
    let frontend = Frontend::load(path, model.config()).context("moderate needs the guard's tokenizer")?;
    let guard = Guard::new(&frontend)?;
    if guard.origin() == TemplateOrigin::Builtin {
        tracing::info!("the checkpoint's chat template is not a Llama Guard template: using herd's built-in Llama Guard 4 format");
    }
    let images = herd_engine::frontend::images::encode_files(path, &model, &args.images)?;
    let (grids, tokens_per_tile, features) = match images {
        Some(i) => (i.grids, i.tokens_per_tile, Some(i.features)),
        None => (Vec::new(), 0, None),
    };
    let mut out = std::io::stdout().lock();
    if args.show_prompt {
        writeln!(out, "{}", guard.render(&conversation, &policy)?)?;
    }
    let prompt = guard.prompt(&frontend, &conversation, &policy, &grids, tokens_per_tile)?;
    let mut core = EngineCore::new(model, SchedulerConfig::default())?;
    let result = guard.check(&mut core, &frontend, prompt, features, &policy)?;
    // Written, not printed: a closed pipe (`| head`) is an error, not a panic.
    if args.json {
        writeln!(out, "{}", serde_json::to_string(&result.to_json(&policy))?)?;
    } else {
        writeln!(out, "{}", describe(&result, &policy))?;
    }
    Ok(())
}

fn policy(args: &ModerateArgs) -> Result<Policy> {
    if let Some(path) = &args.custom_categories {
        let text = herd_limits::read_file_to_string(path, herd_limits::FileKind::Prompt)?;
        let value: Value =
            serde_json::from_str(&text).with_context(|| format!("{}: not valid JSON", path.display()))?;
        return Policy::from_json(&value).with_context(|| path.display().to_string());
    }
    if !args.categories.is_empty() {
        return Ok(Policy::only(&args.categories)?);
    }
    if !args.exclude.is_empty() {
        return Ok(Policy::excluding(&args.exclude)?);
    }
    Ok(Policy::default())
}

/// A list of messages, or `{"messages": [...]}`.
fn read_conversation(path: &std::path::Path) -> Result<Vec<Message>> {
    let text = herd_limits::read_file_to_string(path, herd_limits::FileKind::Prompt)?;
    let value: Value =
        serde_json::from_str(&text).with_context(|| format!("{}: not valid JSON", path.display()))?;
    let messages = match value {
        Value::Array(_) => value,
        Value::Object(mut o) => o
            .remove("messages")
            .with_context(|| format!("{}: expected a `messages` field", path.display()))?,
        _ => bail!("{}: expected a list of messages", path.display()),
    };
    herd_text::chat::parse_messages(messages).with_context(|| path.display().to_string())
}

/// One line: the verdict, the categories with their names, P(unsafe).
fn describe(result: &GuardResult, policy: &Policy) -> String {
    let p = result
        .unsafe_probability
        .map_or_else(|| "n/a".to_string(), |p| format!("{p:.4}"));
    match &result.verdict {
        Verdict::Safe => format!("safe  (P(unsafe) = {p})"),
        Verdict::Unsafe { categories } => {
            let named: Vec<String> = categories
                .iter()
                .map(|code| match policy.get(code) {
                    Some(c) => format!("{code} {}", c.name),
                    None => code.clone(),
                })
                .collect();
            let list = if named.is_empty() {
                "no category given".to_string()
            } else {
                named.join(", ")
            };
            format!("unsafe: {list}  (P(unsafe) = {p})")
        }
        Verdict::ParseError { reason } => format!(
            "parse error: {reason}  (P(unsafe) = {p}; the guard wrote {:?})",
            result.text
        ),
    }
}
