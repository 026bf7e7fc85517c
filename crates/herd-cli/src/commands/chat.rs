//! `herd chat`: an interactive conversation. Each turn renders the whole history with the
//! model's chat template and streams the reply; Ctrl-C stops a reply without quitting.

use std::io::{BufRead, Write};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use anyhow::{Context, Result};
use herd_engine::frontend::images::{load_image, ImageEncoder};
use herd_engine::generate_with_images;
use herd_text::chat::Content;
use herd_text::image_layout::{expand_images, ImageTokenIds};
use herd_text::tool_calls;
use herd_text::{Message, SpecialTokens};

use crate::args::ChatArgs;
use crate::commands::stream::TokenStream;
use herd_engine::frontend::checkpoint_stop_ids;

const HELP: &str = "commands: /image PATH|DATA-URL (attach an image to your next message), /system TEXT (set the system prompt and restart), /reset (forget the conversation), /help, /exit (or Ctrl-D). Ctrl-C stops a reply.";

pub fn run(args: ChatArgs) -> Result<()> {
    let dir = &args.model.model;
    let tokenizer = herd_engine::frontend::tokenizer(dir).context("chat needs the model's tokenizer")?;
    let template = herd_engine::frontend::chat_template(dir, &tokenizer)?;
    let model = args.model.load()?;
    let stops = checkpoint_stop_ids(dir, model.config(), Some(&tokenizer))?;
    let params = args.sampling.params(&stops)?;

    let interrupted = Arc::new(AtomicBool::new(false));
    let flag = interrupted.clone();
    ctrlc::set_handler(move || flag.store(true, Ordering::SeqCst))
        .context("installing the Ctrl-C handler")?;

    let mut system = args.system.clone();
    let mut history: Vec<Message> = Vec::new();
    // Images of the conversation in order, and those waiting for the next message.
    let mut images: Vec<std::path::PathBuf> = Vec::new();
    let mut pending: Vec<std::path::PathBuf> = Vec::new();
    let mut encoder: Option<ImageEncoder> = None;
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
            ("/image", path) => {
                let path = std::path::PathBuf::from(path.trim());
                match load_image(&path) {
                    Ok(_) => {
                        eprintln!("(image attached to your next message)");
                        pending.push(path);
                    }
                    Err(e) => eprintln!("error: {e}"),
                }
            }
            ("/reset", _) => {
                history.clear();
                images.clear();
                pending.clear();
                eprintln!("(conversation cleared)");
            }
            ("/system", text) => {
                system = (!text.trim().is_empty()).then(|| text.to_string());
                history.clear();
                images.clear();
                eprintln!("(system prompt set; conversation cleared)");
            }
            _ if line.trim().is_empty() => {}
            (command, _) if command.starts_with('/') && !command.starts_with("//") => {
                eprintln!("error: unknown command `{command}` (start a message with // to send a leading /)");
                eprintln!("{HELP}");
            }
            _ => {
                // `//text` sends `/text`.
                let line = line
                    .strip_prefix('/')
                    .filter(|l| l.starts_with('/'))
                    .unwrap_or(line);
                let images_before = images.len();
                let mut message = Message::new("user", line);
                if !pending.is_empty() {
                    let mut parts: Vec<serde_json::Value> = pending
                        .iter()
                        .map(|_| serde_json::json!({"type": "image"}))
                        .collect();
                    parts.push(serde_json::json!({"type": "text", "text": line}));
                    message.content = Content::Parts(parts);
                    images.append(&mut pending);
                }
                history.push(message);
                let mut messages: Vec<Message> = system.iter().map(|s| Message::new("system", s)).collect();
                messages.extend(history.iter().cloned());
                let turn = (|| -> Result<_> {
                    let mut prompt =
                        template.encode(&tokenizer, &messages, None, true, SpecialTokens::AsText)?;
                    let encoded = if images.is_empty() {
                        None
                    } else {
                        if encoder.is_none() {
                            // Loaded once, at the first image of the session.
                            encoder = Some(
                                ImageEncoder::load(
                                    dir,
                                    model.config().hidden_size,
                                    model.dtype(),
                                    model.device(),
                                )?
                                .ok_or_else(|| {
                                    anyhow::anyhow!(
                                        "{} is a text-only checkpoint: it has no vision tower for images",
                                        dir.display()
                                    )
                                })?,
                            );
                        }
                        let pixels = images
                            .iter()
                            .map(|p| load_image(p))
                            .collect::<Result<Vec<_>, _>>()?;
                        encoder
                            .as_ref()
                            .and_then(|e| e.encode(&pixels).transpose())
                            .transpose()?
                    };
                    if let Some(e) = &encoded {
                        let ids = ImageTokenIds::from_tokenizer(&tokenizer)?;
                        prompt = expand_images(&prompt, &ids, &e.grids, e.tokens_per_tile)?;
                    }
                    Ok((prompt, encoded))
                })();
                let (prompt, encoded) = match turn {
                    Ok(t) => t,
                    Err(e) => {
                        // The conversation survives a failed turn.
                        history.pop();
                        images.truncate(images_before);
                        eprintln!("error: {e:#}");
                        continue;
                    }
                };
                interrupted.store(false, Ordering::SeqCst);
                let mut out = TokenStream::new(Some(&tokenizer));
                let features = encoded.as_ref().map(|e| &e.features);
                let generation = generate_with_images(&model, &prompt, features, &params, |id| {
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
