//! How an image appears in the prompt (LLAMA4.md §7). The chat template writes one `<|image|>`
//! per image; each is expanded to the image's token layout for its tile grid:
//!
//! - 1 tile: `<|image_start|> <|image|> <|patch|>×K <|image_end|>`
//! - rows×cols > 1: `<|image_start|>`, then per row the tiles' `<|patch|>×K` separated by
//!   `<|tile_x_separator|>` and followed by `<|tile_y_separator|>` (after every row, the last
//!   too), then `<|image|> <|patch|>×K` for the global tile, then `<|image_end|>`.
//!
//! K is the number of tokens per tile (144 for 336-px tiles of 14-px patches, shuffled 2×2).

use crate::error::TextError;
use crate::tokenizer::Tokenizer;

/// The special ids of the image markup.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ImageTokenIds {
    pub image_start: u32,
    pub image_end: u32,
    pub image: u32,
    pub patch: u32,
    pub tile_x_separator: u32,
    pub tile_y_separator: u32,
}

impl ImageTokenIds {
    pub fn from_tokenizer(tokenizer: &Tokenizer) -> Result<Self, TextError> {
        let id = |token: &str| {
            tokenizer
                .special_id(token)
                .ok_or_else(|| TextError::Encode(format!("the tokenizer has no {token}")))
        };
        Ok(ImageTokenIds {
            image_start: id("<|image_start|>")?,
            image_end: id("<|image_end|>")?,
            image: id("<|image|>")?,
            patch: id("<|patch|>")?,
            tile_x_separator: id("<|tile_x_separator|>")?,
            tile_y_separator: id("<|tile_y_separator|>")?,
        })
    }
}

/// The token layout of one image with a (rows, cols) tile grid.
pub fn image_layout(ids: &ImageTokenIds, (rows, cols): (u32, u32), tokens_per_tile: usize) -> Vec<u32> {
    let patches = || std::iter::repeat_n(ids.patch, tokens_per_tile);
    let mut out = vec![ids.image_start];
    if rows * cols > 1 {
        for _ in 0..rows {
            for c in 0..cols {
                out.extend(patches());
                if c + 1 < cols {
                    out.push(ids.tile_x_separator);
                }
            }
            out.push(ids.tile_y_separator);
        }
    }
    out.push(ids.image);
    out.extend(patches());
    out.push(ids.image_end);
    out
}

/// Replaces each `<|image|>` placeholder of a rendered prompt, in order, by the layout of the
/// corresponding image. The number of placeholders must equal the number of images.
pub fn expand_images(
    prompt: &[u32],
    ids: &ImageTokenIds,
    grids: &[(u32, u32)],
    tokens_per_tile: usize,
) -> Result<Vec<u32>, TextError> {
    let placeholders = prompt.iter().filter(|&&t| t == ids.image).count();
    if placeholders != grids.len() {
        return Err(TextError::Messages(format!(
            "the prompt has {placeholders} image placeholders but {} images were given",
            grids.len()
        )));
    }
    let mut grids = grids.iter();
    let mut out = Vec::with_capacity(prompt.len());
    for &t in prompt {
        match (t == ids.image).then(|| grids.next()).flatten() {
            Some(&grid) => out.extend(image_layout(ids, grid, tokens_per_tile)),
            None => out.push(t),
        }
    }
    Ok(out)
}
