//! `herd render`: what the model will actually see for a conversation.

use anyhow::{bail, Context, Result};
use herd_text::{Message, SpecialTokens};
use serde_json::Value;

use crate::args::RenderArgs;

pub fn run(args: RenderArgs) -> Result<()> {
    let (messages, mut tools) = read_messages(&args.messages)?;
    if let Some(path) = &args.tools {
        let v = read_json(path)?;
        let Value::Array(list) = v else {
            bail!("{}: expected a JSON list of tool definitions", path.display());
        };
        tools = Some(list);
    }
    let tokenizer = herd_engine::frontend::tokenizer(&args.model)?;
    let template = herd_engine::frontend::chat_template(&args.model, &tokenizer)?;
    let generation_prompt = !args.no_generation_prompt;
    if args.text {
        println!(
            "{}",
            template.render(&messages, tools.as_deref(), generation_prompt)?
        );
        return Ok(());
    }

    let special = if args.allow_special {
        SpecialTokens::Parse
    } else {
        SpecialTokens::AsText
    };
    let ids = template.encode(
        &tokenizer,
        &messages,
        tools.as_deref(),
        generation_prompt,
        special,
    )?;
    println!("{}", serde_json::to_string(&ids)?);
    Ok(())
}

fn read_json(path: &std::path::Path) -> Result<Value> {
    let text = herd_limits::read_file_to_string(path, herd_limits::FileKind::Prompt)?;
    serde_json::from_str(&text).with_context(|| format!("{}: not valid JSON", path.display()))
}

/// A list of messages, or `{"messages": [...], "tools": [...]}`.
fn read_messages(path: &std::path::Path) -> Result<(Vec<Message>, Option<Vec<Value>>)> {
    let v = read_json(path)?;
    let (messages, tools) = match v {
        Value::Array(_) => (v, None),
        Value::Object(mut o) => {
            let messages = o.remove("messages").context("expected a `messages` field")?;
            let tools = match o.remove("tools") {
                Some(Value::Array(t)) => Some(t),
                Some(Value::Null) | None => None,
                Some(_) => bail!("{}: `tools` must be a list", path.display()),
            };
            (messages, tools)
        }
        _ => bail!("{}: expected a list of messages", path.display()),
    };
    let messages = herd_text::chat::parse_messages(messages).with_context(|| path.display().to_string())?;
    Ok((messages, tools))
}
