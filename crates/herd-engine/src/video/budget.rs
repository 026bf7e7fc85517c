//! Fitting frames into a token budget: every frame gets the same tile limit, the largest that
//! lets all of them fit (down to one tile, which also drops the global tile); if one tile each
//! is still too much, frames are thinned evenly.

use crate::error::EngineError;
use crate::image::{best_fit, canvases, PreprocessConfig};

/// What the budget allows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    /// Tiles per frame at most (the preprocessor's `max_patches` for these frames).
    pub max_tiles: u32,
    /// Indices of the frames kept, in order.
    pub keep: Vec<usize>,
    /// Prompt tokens of the kept frames: labels and image layouts.
    pub tokens: usize,
}

/// Tokens of one image's layout for a (rows, cols) grid (see `herd_text::image_layout`).
pub fn layout_tokens((rows, cols): (u32, u32), tokens_per_tile: usize) -> usize {
    let tiles = (rows * cols) as usize;
    let grid = if tiles > 1 {
        tiles * tokens_per_tile + (rows * (cols - 1)) as usize + rows as usize
    } else {
        0
    };
    // <|image_start|> … <|image|> global tile <|image_end|>
    1 + grid + 1 + tokens_per_tile + 1
}

/// The tile grid the preprocessor picks for a `height`×`width` picture under `max_tiles`.
pub fn grid(height: u32, width: u32, config: &PreprocessConfig, max_tiles: u32) -> (u32, u32) {
    let canvas = best_fit(
        height,
        width,
        &canvases(max_tiles, config.tile),
        config.resize_to_max_canvas,
    );
    (canvas.0 / config.tile, canvas.1 / config.tile)
}

/// The plan for frames of these sizes (height, width) whose labels cost `label_tokens` each.
pub fn plan(
    sizes: &[(u32, u32)],
    label_tokens: &[usize],
    config: &PreprocessConfig,
    tokens_per_tile: usize,
    budget: usize,
) -> Result<Plan, EngineError> {
    if sizes.is_empty() {
        return Err(EngineError::Frontend("the video has no frames".into()));
    }
    let cost = |i: usize, max_tiles: u32| {
        let (h, w) = sizes[i];
        label_tokens.get(i).copied().unwrap_or(0)
            + layout_tokens(grid(h, w, config, max_tiles), tokens_per_tile)
    };
    let all: Vec<usize> = (0..sizes.len()).collect();
    for max_tiles in (1..=config.max_patches.max(1)).rev() {
        let tokens: usize = all.iter().map(|&i| cost(i, max_tiles)).sum();
        if tokens <= budget {
            return Ok(Plan {
                max_tiles,
                keep: all,
                tokens,
            });
        }
    }
    // One tile each and still too many: keep as many frames as fit, evenly spread.
    let each = (0..sizes.len()).map(|i| cost(i, 1)).max().unwrap_or(1).max(1);
    let n = budget / each;
    if n == 0 {
        return Err(EngineError::InvalidParameter {
            field: "max_video_tokens",
            message: format!("{budget} tokens cannot hold one frame (one tile and its label take {each})"),
        });
    }
    let keep: Vec<usize> = (0..n).map(|k| (2 * k + 1) * sizes.len() / (2 * n)).collect();
    let tokens = keep.iter().map(|&i| cost(i, 1)).sum();
    Ok(Plan {
        max_tiles: 1,
        keep,
        tokens,
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use herd_text::image_layout::{image_layout, ImageTokenIds};

    fn config() -> PreprocessConfig {
        PreprocessConfig {
            tile: 16,
            max_patches: 4,
            ..PreprocessConfig::default()
        }
    }

    #[test]
    fn layout_tokens_is_the_layouts_length() {
        let ids = ImageTokenIds {
            image_start: 1,
            image_end: 2,
            image: 3,
            patch: 4,
            tile_x_separator: 5,
            tile_y_separator: 6,
        };
        for grid in [(1, 1), (1, 2), (2, 1), (2, 2), (4, 4), (1, 4)] {
            assert_eq!(
                layout_tokens(grid, 9),
                image_layout(&ids, grid, 9).len(),
                "{grid:?}"
            );
        }
    }

    #[test]
    fn tiles_shrink_before_frames_go() {
        let sizes = vec![(32, 32); 4];
        let labels = vec![5; 4];
        // 2×2 + global at 9 tokens a tile: 1 + 36 + 2 + 2 + 1 + 9 + 1 = 52, + 5 label = 57.
        let full = plan(&sizes, &labels, &config(), 9, 1000).unwrap();
        assert_eq!((full.max_tiles, full.keep.len(), full.tokens), (4, 4, 4 * 57));
        // One tile each: 1 + 1 + 9 + 1 + 5 = 17 a frame. Under a limit of 3 a square picture
        // already gets one tile (no 2×2 canvas), so 3 is the largest limit that fits.
        let small = plan(&sizes, &labels, &config(), 9, 4 * 17).unwrap();
        assert_eq!((small.max_tiles, small.keep.len(), small.tokens), (3, 4, 68));
        let thinned = plan(&sizes, &labels, &config(), 9, 2 * 17 + 3).unwrap();
        assert_eq!(
            (thinned.max_tiles, thinned.keep.clone(), thinned.tokens),
            (1, vec![1, 3], 34)
        );
        assert!(plan(&sizes, &labels, &config(), 9, 10).is_err());
        assert!(plan(&[], &[], &config(), 9, 100).is_err());
    }
}
