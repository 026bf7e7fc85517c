//! The report's PNG: horizontal bars of attack success rate per technique and per goal
//! category. Text uses the embedded DejaVu Sans, so nothing depends on the system's fonts.

use std::path::Path;

use plotters::backend::{BitMapBackend, RGBPixel};
use plotters::coord::Shift;
use plotters::drawing::{DrawingArea, IntoDrawingArea};
use plotters::element::Rectangle;
use plotters::style::text_anchor::{HPos, Pos, VPos};
use plotters::style::{register_font, Color, FontStyle, IntoFont, RGBColor, TextStyle, BLACK, WHITE};

use crate::error::RedteamError;
use crate::report::{write_bytes, Report};

const FONT: &str = "sans-serif";
static FONT_BYTES: &[u8] = include_bytes!("../assets/DejaVuSans.ttf");

const PANEL_WIDTH: u32 = 620;
const LABEL_WIDTH: i32 = 190;
const VALUE_WIDTH: i32 = 110;
const ROW_HEIGHT: i32 = 34;
const TOP: i32 = 56;
const BOTTOM: i32 = 44;
/// Most category bars drawn (the categories with the most goals); the Markdown lists all.
pub const MAX_CHART_CATEGORIES: usize = 24;

const GRID: RGBColor = RGBColor(220, 220, 220);
const TECHNIQUE_BAR: RGBColor = RGBColor(66, 114, 196);
const CATEGORY_BAR: RGBColor = RGBColor(206, 86, 62);

/// One bar: its label, its rate (none: nothing to show) and the text after it.
struct Bar {
    label: String,
    rate: Option<f64>,
    note: String,
}

impl Report {
    /// Writes the chart as a PNG to `path` (replaced whole, never through a link).
    pub fn write_png(&self, path: &Path) -> Result<(), RedteamError> {
        write_bytes(path, &self.render_png()?)
    }

    /// The chart as PNG bytes.
    pub fn render_png(&self) -> Result<Vec<u8>, RedteamError> {
        let techniques: Vec<Bar> = self
            .by_technique
            .iter()
            .map(|t| Bar {
                label: t.technique.name().to_string(),
                rate: t.attack_success_rate,
                note: match t.attack_success_rate {
                    Some(r) => format!("{:.0}% ({}/{})", r * 100.0, t.successes, t.goals_using),
                    None => "unused".to_string(),
                },
            })
            .collect();
        let mut categories: Vec<_> = self.by_category.iter().collect();
        let shown = categories.len().min(MAX_CHART_CATEGORIES);
        // Stable sort: the largest categories, ties kept in name order.
        categories.sort_by_key(|c| std::cmp::Reverse(c.goals));
        categories.truncate(shown);
        categories.sort_by(|a, b| a.category.cmp(&b.category));
        let categories: Vec<Bar> = categories
            .iter()
            .map(|c| Bar {
                label: c.category.clone(),
                rate: Some(c.attack_success_rate),
                note: format!(
                    "{:.0}% ({}/{})",
                    c.attack_success_rate * 100.0,
                    c.successes,
                    c.goals
                ),
            })
            .collect();
        let category_title = if shown < self.by_category.len() {
            format!("ASR by category ({shown} largest of {})", self.by_category.len())
        } else {
            "ASR by category".to_string()
        };
        let rows = techniques.len().max(categories.len()) as i32;
        let width = PANEL_WIDTH * 2;
        let height = (TOP + rows * ROW_HEIGHT + BOTTOM) as u32;
        let mut pixels = vec![0u8; width as usize * height as usize * 3];
        draw(
            &mut pixels,
            (width, height),
            &techniques,
            &categories,
            &category_title,
        )
        .map_err(RedteamError::Chart)?;
        encode_png(&pixels, width, height)
    }
}

fn draw(
    pixels: &mut [u8],
    size: (u32, u32),
    techniques: &[Bar],
    categories: &[Bar],
    category_title: &str,
) -> Result<(), String> {
    register_font(FONT, FontStyle::Normal, FONT_BYTES)
        .map_err(|_| "the embedded font cannot be read".to_string())?;
    let backend =
        BitMapBackend::<RGBPixel>::with_buffer_and_format(pixels, size).map_err(|e| e.to_string())?;
    let root = backend.into_drawing_area();
    root.fill(&WHITE).map_err(|e| e.to_string())?;
    let (left, right) = root.split_horizontally(PANEL_WIDTH);
    panel(&left, "ASR by technique", techniques, TECHNIQUE_BAR)?;
    if !categories.is_empty() {
        panel(&right, category_title, categories, CATEGORY_BAR)?;
    }
    root.present().map_err(|e| e.to_string())
}

/// Draws one panel: a title, a label column, bars over a 0–100% grid and each bar's value.
fn panel(
    area: &DrawingArea<BitMapBackend<'_, RGBPixel>, Shift>,
    title: &str,
    bars: &[Bar],
    colour: RGBColor,
) -> Result<(), String> {
    let err = |e: plotters::drawing::DrawingAreaErrorKind<_>| e.to_string();
    let width = area.dim_in_pixel().0 as i32;
    let text = |size: f64, h: HPos| {
        TextStyle::from((FONT, size).into_font())
            .color(&BLACK)
            .pos(Pos::new(h, VPos::Center))
    };
    area.draw_text(title, &text(19.0, HPos::Center), (width / 2, TOP / 2))
        .map_err(err)?;
    let x0 = LABEL_WIDTH;
    let span = width - LABEL_WIDTH - VALUE_WIDTH;
    let bottom = TOP + bars.len() as i32 * ROW_HEIGHT;
    for step in 0..=4 {
        let x = x0 + span * step / 4;
        area.draw(&Rectangle::new([(x, TOP - 4), (x + 1, bottom)], GRID.filled()))
            .map_err(err)?;
        area.draw_text(
            &format!("{}%", step * 25),
            &text(13.0, HPos::Center),
            (x, bottom + 14),
        )
        .map_err(err)?;
    }
    area.draw_text(
        "attack success rate",
        &text(13.0, HPos::Center),
        (x0 + span / 2, bottom + 34),
    )
    .map_err(err)?;
    for (i, bar) in bars.iter().enumerate() {
        let y = TOP + i as i32 * ROW_HEIGHT;
        let middle = y + ROW_HEIGHT / 2;
        let label: String = bar.label.chars().take(26).collect();
        area.draw_text(&label, &text(14.0, HPos::Right), (x0 - 8, middle))
            .map_err(err)?;
        let end = x0 + (bar.rate.unwrap_or(0.0).clamp(0.0, 1.0) * f64::from(span)).round() as i32;
        if end > x0 {
            area.draw(&Rectangle::new(
                [(x0, y + 6), (end, y + ROW_HEIGHT - 6)],
                colour.filled(),
            ))
            .map_err(err)?;
        }
        area.draw_text(&bar.note, &text(13.0, HPos::Left), (end + 6, middle))
            .map_err(err)?;
    }
    Ok(())
}

fn encode_png(pixels: &[u8], width: u32, height: u32) -> Result<Vec<u8>, RedteamError> {
    let mut out = Vec::new();
    let chart = |e: png::EncodingError| RedteamError::Chart(format!("PNG encoding: {e}"));
    let mut encoder = png::Encoder::new(&mut out, width, height);
    encoder.set_color(png::ColorType::Rgb);
    encoder.set_depth(png::BitDepth::Eight);
    let mut writer = encoder.write_header().map_err(chart)?;
    writer.write_image_data(pixels).map_err(chart)?;
    writer.finish().map_err(chart)?;
    Ok(out)
}
