//! `herd generate`: stream a continuation of token ids or of text.

use anyhow::{bail, Context, Result};
use herd_engine::frontend::images::ImageEncoder;
use herd_engine::generate_with_images;
use herd_engine::video::frame_label;
use herd_text::image_layout::{image_layout, ImageTokenIds};
use herd_text::SpecialTokens;

use crate::args::tokens::parse_ids;
use crate::args::GenerateArgs;
use crate::commands::stream::TokenStream;
use herd_engine::frontend::{bos_id, checkpoint_stop_ids};

pub fn run(args: GenerateArgs) -> Result<()> {
    let dir = &args.model.model;
    if args.video.is_some() && args.prompt.is_none() {
        // (clap drops `requires` on an argument that conflicts with one present)
        bail!("--video needs --prompt: the frames' labels are text");
    }
    // The prompt as (head, tail): with --prompt, images' layouts go between BOS and the text;
    // with --tokens the ids already hold them.
    let (head, tail, tokenizer) = match (&args.tokens, &args.prompt) {
        (Some(tokens), _) => (Vec::new(), parse_ids(tokens)?, None),
        (None, Some(text)) => {
            let tokenizer =
                herd_engine::frontend::tokenizer(dir).context("--prompt needs the model's tokenizer")?;
            // A raw completion starts with BOS, as transformers' tokenizer and Meta's
            // `encode(bos=True)` do; special-token text in the prompt is text unless allowed.
            let special = if args.allow_special {
                SpecialTokens::Parse
            } else {
                SpecialTokens::AsText
            };
            let bos: Vec<u32> = bos_id(dir, &tokenizer)?.into_iter().collect();
            let text_ids = tokenizer.encode(text, special)?;
            (bos, text_ids, Some(tokenizer))
        }
        (None, None) => bail!("give the prompt as --prompt TEXT or --tokens IDS"),
    };
    let model = args.model.load()?;
    let mut prompt = head;
    let images = match (&args.video, &tokenizer) {
        (Some(video), Some(tokenizer)) => {
            // Each frame: its label, then its image layout (herd_engine::video::label).
            let Some(encoder) = ImageEncoder::for_model(dir, &model)? else {
                bail!(
                    "{} is a text-only checkpoint: it has no vision tower for video",
                    dir.display()
                );
            };
            let frames = encoder.video_frames(tokenizer, video, &args.video_select.options())?;
            eprintln!("{}", frames.summary());
            let limits = vec![Some(frames.max_tiles); frames.frames.len()];
            let encoded = encoder.encode_limited(&frames.images(), &limits)?;
            if let Some(e) = &encoded {
                let markup = ImageTokenIds::from_tokenizer(tokenizer)?;
                for ((t, _), &grid) in frames.frames.iter().zip(&e.grids) {
                    prompt.extend(tokenizer.encode(&frame_label(*t), SpecialTokens::AsText)?);
                    prompt.extend(image_layout(&markup, grid, e.tokens_per_tile));
                }
            }
            encoded
        }
        _ => {
            let images = herd_engine::frontend::images::encode_files(dir, &model, &args.images)?;
            if let (Some(images), Some(tokenizer)) = (&images, &tokenizer) {
                let markup = ImageTokenIds::from_tokenizer(tokenizer)?;
                for &grid in &images.grids {
                    prompt.extend(image_layout(&markup, grid, images.tokens_per_tile));
                }
            }
            images
        }
    };
    prompt.extend(tail);
    if args.video.is_some() {
        eprintln!("prompt: {} tokens", prompt.len());
    }
    let stops = checkpoint_stop_ids(dir, model.config(), tokenizer.as_ref())?;
    let params = args.sampling.params(&stops)?;

    let mut out = TokenStream::new(tokenizer.as_ref());
    let features = images.as_ref().map(|i| &i.features);
    let generation = generate_with_images(&model, &prompt, features, &params, |id| out.on_token(id))?;
    let _ = out.finish();
    if let Some(e) = out.error.take() {
        return Err(e);
    }
    eprintln!("{}", out.summary(&generation));
    Ok(())
}
