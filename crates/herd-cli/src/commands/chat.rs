//! `herd chat`: an interactive conversation. Each turn renders the whole history with the
//! model's chat template and streams the reply; Ctrl-C stops a reply without quitting.

use std::io::{BufRead, Write};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use anyhow::{Context, Result};
use herd_engine::generate;
use herd_text::tool_calls;
use herd_text::{ChatTemplate, Message, SpecialTokens, Tokenizer};

use crate::args::ChatArgs;
use crate::commands::stream::TokenStream;
use crate::commands::text::checkpoint_stop_ids;

const HELP: &str = "commands: /system TEXT (set the system prompt and restart), /reset (forget the conversation), /help, /exit (or Ctrl-D). Ctrl-C stops a reply.";

pub fn run(args: ChatArgs) -> Result<()> {
    let dir = &args.model.model;
    let tokenizer =
        Tokenizer::from_dir(dir).with_context(|| format!("chat needs {}'s tokenizer", dir.display()))?;
    let template = ChatTemplate::from_dir(dir)?;
    let model = args.model.load()?;
    let stops = checkpoint_stop_ids(dir, model.config(), Some(&tokenizer))?;
    let params = args.sampling.params(&stops)?;

    let interrupted = Arc::new(AtomicBool::new(false));
    let flag = interrupted.clone();
    ctrlc::set_handler(move || flag.store(true, Ordering::SeqCst))
        .context("installing the Ctrl-C handler")?;

    let mut system = args.system.clone();
    let mut history: Vec<Message> = Vec::new();
    eprintln!("{HELP}");
    let stdin = std::io::stdin();
    loop {
        eprint!("> ");
        std::io::stderr().flush()?;
        let mut line = String::new();
        if stdin.lock().read_line(&mut line)? == 0 {
            break; // Ctrl-D
        }
        let line = line.trim_end_matches(['\n', '\r']);
        match line.split_once(' ').map_or((line, ""), |(c, rest)| (c, rest)) {
            ("/exit" | "/quit", _) => break,
            ("/help", _) => eprintln!("{HELP}"),
            ("/reset", _) => {
                history.clear();
                eprintln!("(conversation cleared)");
            }
            ("/system", text) => {
                system = (!text.trim().is_empty()).then(|| text.to_string());
                history.clear();
                eprintln!("(system prompt set; conversation cleared)");
            }
            _ if line.trim().is_empty() => {}
            _ => {
                history.push(Message::new("user", line));
                let mut messages: Vec<Message> = system.iter().map(|s| Message::new("system", s)).collect();
                messages.extend(history.iter().cloned());
                let prompt = template.encode(&tokenizer, &messages, None, true, SpecialTokens::AsText)?;
                interrupted.store(false, Ordering::SeqCst);
                let mut out = TokenStream::new(Some(&tokenizer));
                let generation = generate(&model, &prompt, &params, |id| {
                    if interrupted.load(Ordering::SeqCst) {
                        return std::ops::ControlFlow::Break(());
                    }
                    out.on_token(id)
                });
                let _ = out.finish();
                let generation = match generation {
                    Ok(g) => g,
                    Err(e) => {
                        // The conversation survives a failed turn (e.g. context full).
                        history.pop();
                        eprintln!("error: {e}");
                        continue;
                    }
                };
                if let Some(e) = out.error.take() {
                    return Err(e);
                }
                eprintln!("{}", out.summary(&generation));
                let parsed = tool_calls::parse(&out.text);
                for call in &parsed.tool_calls {
                    eprintln!("(tool call: {} {})", call.name, call.arguments);
                }
                history.push(Message::new("assistant", &out.text));
            }
        }
    }
    Ok(())
}
