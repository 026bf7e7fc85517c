//! `herd chat`: an interactive conversation. Each turn renders the whole history with the
//! model's chat template and streams the reply; Ctrl-C stops a reply without quitting.

use std::io::{BufRead, Write};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use anyhow::{Context, Result};
use herd_engine::frontend::images::{load_image, ImageEncoder};
use herd_engine::generate_with_images;
use herd_engine::image::RgbImage;
use herd_text::chat::Content;
use herd_text::image_layout::{expand_images, ImageTokenIds};
use herd_text::tool_calls;
use herd_text::{Message, SpecialTokens};

use crate::args::ChatArgs;
use crate::commands::stream::TokenStream;
use herd_engine::frontend::checkpoint_stop_ids;

const HELP: &str = "commands: /image PATH|DATA-URL (attach an image to your next message), /video PATH (attach a video's frames: a GIF, a folder of frames, or with the `video` feature MP4/WebM/…), /system TEXT (set the system prompt and restart), /reset (forget the conversation), /help, /exit (or Ctrl-D). Ctrl-C stops a reply.";

/// A picture of the conversation and its tile limit (`Some` for video frames fitted to a budget).
type Picture = (RgbImage, Option<u32>);

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
    // Images of the conversation in order (with a tile limit for video frames), and the
    // message parts and images waiting for the next message.
    let mut images: Vec<Picture> = Vec::new();
    let mut pending: Vec<(Vec<serde_json::Value>, Vec<Picture>)> = Vec::new();
    let mut encoder: Option<ImageEncoder> = None;
    // Loaded once, at the first image or video of the session.
    let load_encoder = |encoder: &mut Option<ImageEncoder>| -> Result<()> {
        if encoder.is_none() {
            *encoder = Some(ImageEncoder::for_model(dir, &model)?.ok_or_else(|| {
                anyhow::anyhow!(
                    "{} is a text-only checkpoint: it has no vision tower for images",
                    dir.display()
                )
            })?);
        }
        Ok(())
    };
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
                    Ok(img) => {
                        eprintln!("(image attached to your next message)");
                        pending.push((vec![serde_json::json!({"type": "image"})], vec![(img, None)]));
                    }
                    Err(e) => eprintln!("error: {e}"),
                }
            }
            ("/video", path) => {
                let path = std::path::PathBuf::from(path.trim());
                let frames = load_encoder(&mut encoder).and_then(|()| {
                    let e = encoder
                        .as_ref()
                        .ok_or_else(|| anyhow::anyhow!("no vision tower"))?;
                    Ok(e.video_frames(&tokenizer, &path, &args.video_select.options())?)
                });
                match frames {
                    Ok(frames) => {
                        eprintln!("({}; attached to your next message)", frames.summary());
                        let limit = Some(frames.max_tiles);
                        let pictures = frames
                            .frames
                            .iter()
                            .map(|(_, img)| (img.clone(), limit))
                            .collect();
                        pending.push((frames.message_parts(), pictures));
                    }
                    Err(e) => eprintln!("error: {e:#}"),
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
                    let mut parts: Vec<serde_json::Value> = Vec::new();
                    for (media_parts, pictures) in pending.drain(..) {
                        parts.extend(media_parts);
                        images.extend(pictures);
                    }
                    parts.push(serde_json::json!({"type": "text", "text": line}));
                    message.content = Content::Parts(parts);
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
                        load_encoder(&mut encoder)?;
                        let pixels: Vec<RgbImage> = images.iter().map(|(img, _)| img.clone()).collect();
                        let limits: Vec<Option<u32>> = images.iter().map(|(_, limit)| *limit).collect();
                        encoder
                            .as_ref()
                            .and_then(|e| e.encode_limited(&pixels, &limits).transpose())
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
