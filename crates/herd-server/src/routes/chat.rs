//! `POST /v1/chat/completions`: messages (text, and `image_url` parts as data URLs) through the
//! chat template; replies as one JSON body or streamed as server-sent chunks; Llama 4 tool
//! calls returned as `tool_calls` (while streaming too); logprobs.

use std::sync::Arc;
use std::time::Instant;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::Json;
use herd_engine::frontend::images::EncodedImages;
use herd_engine::image::{PixelBudget, RgbImage};
use herd_text::tool_calls::{self, StreamEvent, StreamParser, ToolCall};
use herd_text::Message;
use serde_json::{json, Map, Value};
use tokio::sync::mpsc;

use super::{collect, fields, run_choices, submit, token_bytes, token_text, PromptJob};
use crate::error::ApiError;
use crate::generation::{GeneratedToken, Update};
use crate::state::{unix_now, AppState};
use crate::wire::{kind, Common, MAX_TOP_LOGPROBS};

/// Roles the Llama 4 chat format has (`developer` is OpenAI's newer name for `system`).
const ROLES: &[&str] = &["system", "developer", "user", "assistant", "tool", "ipython"];

pub async fn handle(State(state): State<Arc<AppState>>, body: Result<Bytes, BytesRejection>) -> Response {
    super::respond(&state.clone(), chat(state, body, Instant::now())).await
}

/// What a chat request asks for beyond sampling.
struct ChatRequest {
    messages: Vec<Message>,
    /// Images and videos of the messages, in order.
    media: Vec<Media>,
    tools: Option<Vec<Value>>,
    logprobs: Option<usize>,
    json_object: bool,
    common: Common,
}

async fn chat(
    state: Arc<AppState>,
    body: Result<Bytes, BytesRejection>,
    arrived: Instant,
) -> Result<Response, ApiError> {
    let mut request = parse(fields(body)?)?;
    let media = std::mem::take(&mut request.media);
    let (messages, pixels, limits) =
        resolve_media(&state, std::mem::take(&mut request.messages), media).await?;
    request.messages = messages;
    let screening = state.options.screening.clone();
    let guard = state.guard.clone();
    if let (Some(screen), Some(guard)) = (&screening, &guard) {
        if screen.mode.input() {
            let result = guard.check(&request.messages, pixels.clone(), true).await?;
            if screen.blocks(&result) {
                return refuse_input(&state, &request, screen, &result, guard.policy());
            }
        }
    }
    let encoded = encode_images(&state, pixels.clone(), limits).await?;
    let (grids, tokens_per_tile, images) = match encoded {
        Some(e) => (e.grids, e.tokens_per_tile, Some(e.features)),
        None => (Vec::new(), 0, None),
    };
    let prompt = state
        .frontend
        .chat_prompt(
            &request.messages,
            request.tools.as_deref(),
            &grids,
            tokens_per_tile,
        )
        .map_err(ApiError::from)?;
    let job = PromptJob {
        prompt,
        images,
        logprobs: request.logprobs,
        prompt_logprobs: None,
        json_object: request.json_object,
    };
    let choices = submit(&state, vec![job], &request.common, arrived, "messages").await?;
    let id = super::response_id("chatcmpl");
    let has_tools = request.tools.is_some();
    let output_screen = match (&screening, &guard) {
        (Some(screen), Some(guard)) if screen.mode.output() => Some((screen, guard)),
        _ => None,
    };
    if request.common.stream && output_screen.is_none() {
        let model = state.served_name(request.common.model.as_deref());
        return Ok(stream(
            state,
            choices,
            id,
            has_tools,
            request.common.include_usage,
            model,
        ));
    }
    let collected = collect(choices).await?;
    // Output screening: every choice's check at once (the guard's engine batches them).
    let mut blocked = vec![false; collected.len()];
    if let Some((screen, guard)) = output_screen {
        let mut checks = Vec::with_capacity(collected.len());
        for c in &collected {
            let mut conversation = request.messages.clone();
            conversation.push(Message::new("assistant", &c.text));
            let (guard, pixels) = (guard.clone(), pixels.clone());
            checks.push(crate::guard::AbortOnDrop(tokio::spawn(async move {
                guard.check(&conversation, pixels, false).await
            })));
        }
        for (i, mut check) in checks.into_iter().enumerate() {
            let result = (&mut check.0)
                .await
                .map_err(|e| ApiError::internal(format!("screening: {e}")))??;
            blocked[i] = screen.blocks(&result);
        }
    }
    let mut usage = herd_engine::Usage::default();
    let mut replies: Vec<Reply> = Vec::new();
    for (c, blocked) in collected.into_iter().zip(blocked) {
        usage.prompt_tokens = c.usage.prompt_tokens;
        usage.completion_tokens += c.usage.completion_tokens;
        let mut message = json!({"role": "assistant", "content": c.text});
        let mut finish_reason = c.finish_reason;
        if has_tools {
            let parsed = tool_calls::parse(&c.text);
            if !parsed.tool_calls.is_empty() {
                message["content"] = if parsed.content.is_empty() {
                    Value::Null
                } else {
                    Value::String(parsed.content)
                };
                message["tool_calls"] = Value::Array(tool_call_values(&parsed.tool_calls, None));
                finish_reason = "tool_calls";
            }
        }
        if blocked {
            let refusal = screening
                .as_ref()
                .and_then(|s| s.refusal.clone())
                .unwrap_or_default();
            message = json!({"role": "assistant", "content": refusal});
            finish_reason = "content_filter";
        }
        // A withheld reply's tokens stay withheld: no logprobs for it.
        let logprobs = request
            .logprobs
            .filter(|_| finish_reason != "content_filter")
            .map(|_| json!({"content": logprob_content(&state, &c.tokens)}));
        replies.push(Reply {
            message,
            logprobs,
            finish_reason,
        });
    }
    state.metrics.request_done(true);
    Ok(respond_with(&state, id, replies, usage, &request.common))
}

/// A finished choice as it goes out.
struct Reply {
    message: Value,
    logprobs: Option<Value>,
    finish_reason: &'static str,
}

/// Finished choices as one body, or — for a stream whose text had to be screened first —
/// replayed as the chunks a stream would have carried.
fn respond_with(
    state: &Arc<AppState>,
    id: String,
    replies: Vec<Reply>,
    usage: herd_engine::Usage,
    common: &Common,
) -> Response {
    if common.stream {
        let model = state.served_name(common.model.as_deref());
        return replay_stream(id, replies, usage, common.include_usage, model);
    }
    let choices: Vec<Value> = replies
        .into_iter()
        .enumerate()
        .map(|(index, r)| {
            json!({
                "index": index,
                "message": r.message,
                "logprobs": r.logprobs,
                "finish_reason": r.finish_reason,
            })
        })
        .collect();
    Json(json!({
        "id": id,
        "object": "chat.completion",
        "created": unix_now(),
        "model": state.served_name(common.model.as_deref()),
        "choices": choices,
        "usage": usage_value(usage),
    }))
    .into_response()
}

/// One `chat.completion.chunk` of a stream.
fn chunk_of(model: &str, id: &str, created: u64, include_usage: bool, choices: Value) -> Value {
    let mut c = json!({
        "id": id,
        "object": "chat.completion.chunk",
        "created": created,
        "model": model,
        "choices": choices,
    });
    if include_usage {
        // OpenAI's shape: every chunk has `usage`, null until the last.
        c["usage"] = Value::Null;
    }
    c
}

fn replay_stream(
    id: String,
    replies: Vec<Reply>,
    usage: herd_engine::Usage,
    include_usage: bool,
    model: String,
) -> Response {
    super::sse(move |tx: mpsc::Sender<Value>| async move {
        let created = unix_now();
        let chunk = |choices: Value| chunk_of(&model, &id, created, include_usage, choices);
        for (index, r) in replies.into_iter().enumerate() {
            let mut chunks = vec![
                json!({"index": index, "delta": {"role": "assistant", "content": ""}, "logprobs": null, "finish_reason": null}),
            ];
            if let Some(text) = r.message["content"].as_str().filter(|t| !t.is_empty()) {
                chunks.push(json!({"index": index, "delta": {"content": text}, "logprobs": r.logprobs, "finish_reason": null}));
            }
            if let Some(Value::Array(calls)) = r.message.get("tool_calls") {
                let calls: Vec<Value> = calls
                    .iter()
                    .enumerate()
                    .map(|(k, call)| {
                        let mut call = call.clone();
                        call["index"] = json!(k);
                        call
                    })
                    .collect();
                chunks.push(json!({"index": index, "delta": {"tool_calls": calls}, "logprobs": null, "finish_reason": null}));
            }
            chunks.push(
                json!({"index": index, "delta": {}, "logprobs": null, "finish_reason": r.finish_reason}),
            );
            for c in chunks {
                if tx.send(chunk(json!([c]))).await.is_err() {
                    return;
                }
            }
        }
        if include_usage {
            let mut last = chunk(json!([]));
            last["usage"] = usage_value(usage);
            let _ = tx.send(last).await;
        }
    })
}

/// A flagged request: a 400 `content_filter` error, or the refusal text as every choice's
/// reply (`finish_reason: "content_filter"`, no tokens generated).
fn refuse_input(
    state: &Arc<AppState>,
    request: &ChatRequest,
    screen: &crate::guard::Screening,
    result: &herd_engine::guard::GuardResult,
    policy: &herd_engine::guard::Policy,
) -> Result<Response, ApiError> {
    let Some(refusal) = &screen.refusal else {
        return Err(crate::guard::flagged_error(result, policy, "request"));
    };
    let replies = (0..request.common.n)
        .map(|_| Reply {
            message: json!({"role": "assistant", "content": refusal}),
            logprobs: None,
            finish_reason: "content_filter",
        })
        .collect();
    state.metrics.request_done(true);
    Ok(respond_with(
        state,
        super::response_id("chatcmpl"),
        replies,
        herd_engine::Usage::default(),
        &request.common,
    ))
}

fn parse(mut f: crate::wire::Fields) -> Result<ChatRequest, ApiError> {
    let Some(messages) = f.take("messages") else {
        return Err(ApiError::invalid("messages", "`messages` is required"));
    };
    let (messages, media) = read_messages(messages)?;
    let mut tools = match f.take("tools") {
        None => None,
        Some(Value::Array(t)) if t.is_empty() => None,
        Some(Value::Array(t)) => {
            for (i, tool) in t.iter().enumerate() {
                let ok = tool
                    .get("function")
                    .and_then(|f| f.get("name"))
                    .is_some_and(Value::is_string);
                if !ok {
                    return Err(ApiError::invalid(
                        "tools",
                        format!(
                            "tools[{i}] must be {{\"type\": \"function\", \"function\": {{\"name\": …}}}}"
                        ),
                    ));
                }
            }
            Some(t)
        }
        Some(other) => {
            return Err(ApiError::invalid(
                "tools",
                format!("`tools` must be a list, found {}", kind(&other)),
            ))
        }
    };
    match f.take("tool_choice") {
        None => {}
        Some(Value::String(s)) if s == "auto" => {}
        Some(Value::String(s)) if s == "none" => tools = None,
        Some(other) => {
            return Err(ApiError::invalid(
                "tool_choice",
                format!("`tool_choice` {other}: herd takes \"auto\" or \"none\" (it cannot force a call)"),
            ))
        }
    }
    let mut json_object = false;
    if let Some(format) = f.object("response_format")? {
        match format.get("type").and_then(Value::as_str) {
            Some("text") => {}
            Some("json_object") => json_object = true,
            Some(other) => {
                return Err(ApiError::invalid(
                    "response_format",
                    format!("`response_format` type `{other}` is not supported by herd yet (\"text\" or \"json_object\")"),
                ))
            }
            None => {
                return Err(ApiError::invalid(
                    "response_format",
                    "`response_format` needs a `type`",
                ))
            }
        }
    }
    let logprobs = f.bool("logprobs")?.unwrap_or(false);
    let top = f.count("top_logprobs", MAX_TOP_LOGPROBS)?;
    if top.is_some() && !logprobs {
        return Err(ApiError::invalid(
            "top_logprobs",
            "`top_logprobs` needs `logprobs: true`",
        ));
    }
    let common = Common::parse(&mut f, &["max_tokens", "max_completion_tokens"])?;
    f.finish()?;
    Ok(ChatRequest {
        messages,
        media,
        tools,
        logprobs: logprobs.then_some(top.unwrap_or(0)),
        json_object,
        common,
    })
}

/// OpenAI messages → the template's: roles checked, `image_url` parts become `{"type":
/// "image"}` with their URLs collected in order, tool-call arguments given as JSON strings
/// become objects (the Llama 4 template writes them with `tojson`).
fn read_messages(value: Value) -> Result<(Vec<Message>, Vec<Media>), ApiError> {
    let Value::Array(mut items) = value else {
        return Err(ApiError::invalid("messages", "`messages` must be a list"));
    };
    if items.is_empty() {
        return Err(ApiError::invalid("messages", "`messages` is empty"));
    }
    let mut urls = Vec::new();
    for (i, item) in items.iter_mut().enumerate() {
        let Some(m) = item.as_object_mut() else {
            return Err(ApiError::invalid(
                "messages",
                format!("messages[{i}] must be an object"),
            ));
        };
        match m.get("role").and_then(Value::as_str) {
            Some(role) if ROLES.contains(&role) => {
                if role == "developer" {
                    m.insert("role".into(), "system".into());
                }
            }
            Some(role) => {
                return Err(ApiError::invalid(
                    "messages",
                    format!("messages[{i}].role `{role}` is not one of {}", ROLES.join(", ")),
                ))
            }
            None => {
                return Err(ApiError::invalid(
                    "messages",
                    format!("messages[{i}] needs a string `role`"),
                ))
            }
        }
        if let Some(Value::Array(parts)) = m.get_mut("content") {
            for (j, part) in parts.iter_mut().enumerate() {
                let kind = part
                    .get("type")
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .to_string();
                match kind.as_str() {
                    "text" if part.get("text").is_some_and(Value::is_string) => {}
                    "image_url" => {
                        let url = super::part_url(part, "image_url").ok_or_else(|| {
                                ApiError::invalid("messages", format!("messages[{i}].content[{j}]: `image_url.url` must be a string"))
                            })?;
                        urls.push(Media::Image(url.to_string()));
                        *part = json!({"type": "image"});
                    }
                    "video_url" | "video" => {
                        let video = read_video_part(part, i, j)?;
                        *part = json!({"type": "video", "herd_media": urls.len()});
                        urls.push(video);
                    }
                    _ => {
                        return Err(ApiError::invalid(
                            "messages",
                            format!("messages[{i}].content[{j}]: parts are {{\"type\": \"text\", \"text\": …}}, {{\"type\": \"image_url\", …}}, {{\"type\": \"video_url\", …}} or {{\"type\": \"video\", \"video\": [frame URLs]}}"),
                        ))
                    }
                }
            }
        }
        if let Some(Value::Array(calls)) = m.get_mut("tool_calls") {
            for call in calls {
                if let Some(args) = call.pointer_mut("/function/arguments") {
                    if let Some(parsed) = args
                        .as_str()
                        .and_then(|s| serde_json::from_str::<Map<String, Value>>(s).ok())
                    {
                        *args = Value::Object(parsed);
                    }
                }
            }
        }
    }
    let messages = herd_text::chat::parse_messages(Value::Array(items))
        .map_err(|e| ApiError::invalid("messages", e.to_string()))?;
    Ok((messages, urls))
}

/// Decodes the images (data URLs; http(s) URLs when allowed), off the async threads, their
/// pixels taken out of the request's `budget` (`--limit request-pixels`) as each header is
/// read. `has_vision` says whether the model that will see them can (a 400 otherwise).
pub async fn load_images(
    state: &Arc<AppState>,
    urls: Vec<String>,
    has_vision: bool,
    budget: &mut PixelBudget,
) -> Result<Vec<RgbImage>, ApiError> {
    if urls.is_empty() {
        return Ok(Vec::new());
    }
    if !has_vision {
        return Err(ApiError::invalid(
            "messages",
            "this model takes no images (it has no vision tower)",
        ));
    }
    for (i, url) in urls.iter().enumerate() {
        let remote = url.starts_with("http://") || url.starts_with("https://");
        if remote && !state.options.allow_image_urls {
            return Err(ApiError::invalid(
                "messages",
                format!(
                    "image {}: this server takes images as `data:image/…;base64,…` URLs (start it with --allow-image-urls to fetch http(s) URLs)",
                    i + 1
                ),
            ));
        }
        if !remote && !url.starts_with("data:") {
            return Err(ApiError::invalid(
                "messages",
                format!("image {}: expected a `data:` or http(s) URL", i + 1),
            ));
        }
    }
    let timeout = state.options.image_url_timeout;
    let mut left = *budget;
    let (images, left) = tokio::task::spawn_blocking(move || {
        let images = urls
            .iter()
            .enumerate()
            .map(|(i, url)| {
                let image = if url.starts_with("data:") {
                    herd_engine::image::load_data_url_within(url, &mut left).map_err(|e| e.to_string())
                } else {
                    crate::fetch::image(url, timeout, &mut left)
                };
                image.map_err(|e| ApiError::invalid("messages", format!("image {}: {e}", i + 1)))
            })
            .collect::<Result<Vec<_>, _>>();
        (images, left)
    })
    .await
    .map_err(|e| ApiError::internal(format!("image decoding: {e}")))?;
    *budget = left;
    images
}

/// Runs the served model's vision tower, off the async threads (video frames with their tile
/// limit).
async fn encode_images(
    state: &Arc<AppState>,
    pixels: Vec<RgbImage>,
    limits: Vec<Option<u32>>,
) -> Result<Option<EncodedImages>, ApiError> {
    if pixels.is_empty() {
        return Ok(None);
    }
    let state = state.clone();
    tokio::task::spawn_blocking(move || {
        let encoder = state
            .images
            .as_ref()
            .ok_or_else(|| ApiError::internal("the vision tower went away"))?;
        encoder.encode_limited(&pixels, &limits).map_err(ApiError::from)
    })
    .await
    .map_err(|e| ApiError::internal(format!("image encoding: {e}")))?
}

/// A video's message parts (labels and image placeholders) and its frames with their tile
/// limit.
type VideoParts = (Vec<Value>, Vec<(RgbImage, Option<u32>)>);

/// An image or a video of a request, before it is fetched or decoded.
#[derive(Debug)]
pub enum Media {
    Image(String),
    Video {
        source: VideoInput,
        options: herd_engine::video::VideoOptions,
    },
}

#[derive(Debug)]
pub enum VideoInput {
    /// A `data:` URL of a clip (GIF; MP4, WebM, … with the `video` feature).
    Clip(String),
    /// Frames as image URLs, `fps` a second.
    Frames(Vec<String>, f64),
}

/// `{"type": "video_url", "video_url": {"url": "data:video/mp4;base64,…"}}` or `{"type":
/// "video", "video": [frame URLs], "fps": 1}`; either may say `"frames": N` or `"fps": F`
/// (which moments to take; default 8 evenly spaced) and `"max_video_tokens": N`.
fn read_video_part(part: &Value, i: usize, j: usize) -> Result<Media, ApiError> {
    let bad = |what: &str| ApiError::invalid("messages", format!("messages[{i}].content[{j}]: {what}"));
    let mut options = herd_engine::video::VideoOptions::default();
    let number = |key: &str| part.get(key).filter(|v| !v.is_null());
    if let Some(n) = number("frames") {
        let n = n
            .as_u64()
            .ok_or_else(|| bad("`frames` must be a positive integer"))?;
        options.selection = herd_engine::video::Selection::Count(n as usize);
    }
    let fps = match number("fps") {
        Some(f) => Some(f.as_f64().ok_or_else(|| bad("`fps` must be a number"))?),
        None => None,
    };
    if let Some(n) = number("max_video_tokens") {
        options.max_video_tokens =
            n.as_u64()
                .ok_or_else(|| bad("`max_video_tokens` must be a positive integer"))? as usize;
    }
    if part.get("type").and_then(Value::as_str) == Some("video") {
        let Some(Value::Array(frames)) = part.get("video") else {
            return Err(bad("`video` must be a list of frame URLs"));
        };
        let urls: Vec<String> = frames
            .iter()
            .map(|f| {
                f.as_str()
                    .map(str::to_string)
                    .ok_or_else(|| bad("`video` must be a list of frame URLs"))
            })
            .collect::<Result<_, _>>()?;
        // The list's own rate places its frames in time; `frames` (if given) picks among them.
        return Ok(Media::Video {
            source: VideoInput::Frames(urls, fps.unwrap_or(1.0)),
            options,
        });
    }
    if let Some(f) = fps {
        options.selection = herd_engine::video::Selection::Fps(f);
    }
    let url = super::part_url(part, "video_url").ok_or_else(|| bad("`video_url.url` must be a string"))?;
    if !url.starts_with("data:") {
        return Err(bad(
            "`video_url.url` must be a `data:` URL (herd does not fetch videos)",
        ));
    }
    Ok(Media::Video {
        source: VideoInput::Clip(url.to_string()),
        options,
    })
}

/// Fetches and decodes the request's images and videos; each video part of `messages` becomes
/// its frames (a `Frame at M:SS:` text part and an image part each, see
/// `herd_engine::video::label`). Returns the messages, the pictures in prompt order and their
/// tile limits (video frames fitted to their budget).
async fn resolve_media(
    state: &Arc<AppState>,
    mut messages: Vec<Message>,
    media: Vec<Media>,
) -> Result<(Vec<Message>, Vec<RgbImage>, Vec<Option<u32>>), ApiError> {
    if media.is_empty() {
        return Ok((messages, Vec::new(), Vec::new()));
    }
    // The images in one decoding pass (numbered in errors as the request orders them).
    let urls: Vec<String> = media
        .iter()
        .filter_map(|m| match m {
            Media::Image(url) => Some(url.clone()),
            Media::Video { .. } => None,
        })
        .collect();
    // One budget for the request's pictures and frame lists together.
    let mut budget = PixelBudget::for_request();
    let mut images: std::collections::VecDeque<RgbImage> =
        load_images(state, urls, state.images.is_some(), &mut budget)
            .await?
            .into();
    let mut resolved: Vec<Option<VideoParts>> = Vec::with_capacity(media.len());
    for m in media {
        match m {
            Media::Image(_) => resolved.push(None),
            Media::Video { source, options } => {
                let frames = video_frames(state, source, options, &mut budget).await?;
                let limit = Some(frames.max_tiles);
                let pictures = frames
                    .frames
                    .iter()
                    .map(|(_, img)| (img.clone(), limit))
                    .collect();
                resolved.push(Some((frames.message_parts(), pictures)));
            }
        }
    }
    let mut pixels = Vec::new();
    let mut limits = Vec::new();
    for m in &mut messages {
        let herd_text::chat::Content::Parts(parts) = &mut m.content else {
            continue;
        };
        let mut out = Vec::with_capacity(parts.len());
        for part in parts.drain(..) {
            match part.get("type").and_then(Value::as_str) {
                Some("image") => {
                    let img = images
                        .pop_front()
                        .ok_or_else(|| ApiError::internal("an image part lost its image"))?;
                    pixels.push(img);
                    limits.push(None);
                    out.push(part);
                }
                Some("video") => {
                    let k = part.get("herd_media").and_then(Value::as_u64).unwrap_or(u64::MAX) as usize;
                    let (frame_parts, pictures) = resolved
                        .get_mut(k)
                        .and_then(Option::take)
                        .ok_or_else(|| ApiError::internal("a video part lost its frames"))?;
                    out.extend(frame_parts);
                    for (img, limit) in pictures {
                        pixels.push(img);
                        limits.push(limit);
                    }
                }
                _ => out.push(part),
            }
        }
        *parts = out;
    }
    Ok((messages, pixels, limits))
}

/// One video's frames: decoded off the async threads, fitted to its budget (at most half the
/// context).
async fn video_frames(
    state: &Arc<AppState>,
    source: VideoInput,
    mut options: herd_engine::video::VideoOptions,
    budget: &mut PixelBudget,
) -> Result<herd_engine::video::VideoFrames, ApiError> {
    if state.images.is_none() {
        return Err(ApiError::invalid(
            "messages",
            "this model takes no video (it has no vision tower)",
        ));
    }
    options.max_video_tokens = options.max_video_tokens.min(state.max_positions / 2);
    let pictures = match &source {
        VideoInput::Frames(urls, _) => load_images(state, urls.clone(), true, budget).await?,
        VideoInput::Clip(_) => Vec::new(),
    };
    let state = state.clone();
    tokio::task::spawn_blocking(move || {
        let encoder = state
            .images
            .as_ref()
            .ok_or_else(|| ApiError::internal("the vision tower went away"))?;
        let tokenizer = &state.frontend.tokenizer;
        let bad = |e: herd_engine::EngineError| ApiError::invalid("messages", format!("video: {e}"));
        match source {
            VideoInput::Frames(_, fps) => {
                let source = herd_engine::video::source::Pictures::new(pictures, fps).map_err(bad)?;
                encoder
                    .video_frames_from(tokenizer, Box::new(source), &options)
                    .map_err(bad)
            }
            VideoInput::Clip(url) => {
                let bytes = herd_engine::image::data_url_bytes(&url)
                    .map_err(|e| ApiError::invalid("messages", format!("video: {e}")))?;
                let file = crate::temp_file::TempFile::with_bytes(&bytes)
                    .map_err(|e| ApiError::internal(format!("video: {e}")))?;
                encoder
                    .video_frames(tokenizer, file.path(), &options)
                    .map_err(bad)
            }
        }
    })
    .await
    .map_err(|e| ApiError::internal(format!("video decoding: {e}")))?
}

fn tool_call_values(calls: &[ToolCall], first_index: Option<usize>) -> Vec<Value> {
    calls
        .iter()
        .enumerate()
        .map(|(k, call)| {
            let mut v = json!({
                "id": super::response_id("call"),
                "type": "function",
                "function": {"name": call.name, "arguments": call.arguments.to_string()},
            });
            if let Some(first) = first_index {
                v["index"] = json!(first + k);
            }
            v
        })
        .collect()
}

fn logprob_content(state: &AppState, tokens: &[GeneratedToken]) -> Vec<Value> {
    tokens
        .iter()
        .filter_map(|t| {
            let lp = t.logprob.as_ref()?;
            let top: Vec<Value> = lp
                .top
                .iter()
                .map(|&(id, l)| json!({"token": token_text(state, id), "logprob": l, "bytes": token_bytes(state, id)}))
                .collect();
            Some(json!({
                "token": token_text(state, t.id),
                "logprob": lp.logprob,
                "bytes": token_bytes(state, t.id),
                "top_logprobs": top,
            }))
        })
        .collect()
}

pub fn usage_value(u: herd_engine::Usage) -> Value {
    json!({
        "prompt_tokens": u.prompt_tokens,
        "completion_tokens": u.completion_tokens,
        "total_tokens": u.prompt_tokens + u.completion_tokens,
    })
}

fn stream(
    state: Arc<AppState>,
    choices: Vec<crate::generation::Generation>,
    id: String,
    has_tools: bool,
    include_usage: bool,
    model: String,
) -> Response {
    super::sse(move |tx: mpsc::Sender<Value>| async move {
        let n = choices.len();
        let created = unix_now();
        let chunk = |choices: Value| chunk_of(&model, &id, created, include_usage, choices);
        for index in 0..n {
            let first = json!([{"index": index, "delta": {"role": "assistant", "content": ""}, "logprobs": null, "finish_reason": null}]);
            if tx.send(chunk(first)).await.is_err() {
                return;
            }
        }
        let mut parsers: Vec<Option<StreamParser>> =
            (0..n).map(|_| has_tools.then(StreamParser::new)).collect();
        let mut usage = herd_engine::Usage::default();
        let mut rx = run_choices(choices);
        let mut finished = 0;
        let mut ok = true;
        while finished < n {
            let next = tokio::select! {
                next = rx.recv() => next,
                _ = tx.closed() => return,
            };
            let Some((index, update)) = next else {
                break;
            };
            let mut deltas: Vec<(Value, Option<&str>)> = Vec::new();
            match update {
                Err(e) => {
                    // Mid-stream there is no status to change: the error goes as a chunk.
                    let _ = tx.send(e.body()).await;
                    ok = false;
                    break;
                }
                Ok(Update::PromptLogprobs(_)) => {}
                Ok(Update::Text { text, tokens }) => {
                    let logprobs = tokens
                        .iter()
                        .any(|t| t.logprob.is_some())
                        .then(|| json!({"content": logprob_content(&state, &tokens)}));
                    let texts = match &mut parsers[index] {
                        None => vec![StreamEvent::Text(text)],
                        Some(p) => p.push(&text),
                    };
                    let content: String = texts
                        .into_iter()
                        .filter_map(|e| match e {
                            StreamEvent::Text(t) => Some(t),
                            StreamEvent::ToolCalls(_) => None,
                        })
                        .collect();
                    if !content.is_empty() || logprobs.is_some() {
                        let mut c =
                            json!({"index": index, "delta": {"content": content}, "finish_reason": null});
                        c["logprobs"] = logprobs.unwrap_or(Value::Null);
                        deltas.push((c, None));
                    }
                }
                Ok(Update::Done {
                    finish_reason,
                    usage: u,
                }) => {
                    usage.prompt_tokens = u.prompt_tokens;
                    usage.completion_tokens += u.completion_tokens;
                    let mut reason = finish_reason;
                    if let Some(p) = &mut parsers[index] {
                        for event in p.finish() {
                            match event {
                                StreamEvent::Text(t) => deltas.push((json!({"index": index, "delta": {"content": t}, "logprobs": null, "finish_reason": null}), None)),
                                StreamEvent::ToolCalls(calls) => {
                                    reason = "tool_calls";
                                    deltas.push((json!({"index": index, "delta": {"tool_calls": tool_call_values(&calls, Some(0))}, "logprobs": null, "finish_reason": null}), None));
                                }
                            }
                        }
                    }
                    deltas.push((
                        json!({"index": index, "delta": {}, "logprobs": null, "finish_reason": reason}),
                        Some(reason),
                    ));
                    finished += 1;
                }
            }
            for (delta, _) in deltas {
                if tx.send(chunk(json!([delta]))).await.is_err() {
                    return;
                }
            }
        }
        if ok && include_usage {
            let mut last = chunk(json!([]));
            last["usage"] = usage_value(usage);
            let _ = tx.send(last).await;
        }
        state.metrics.request_done(ok);
    })
}
