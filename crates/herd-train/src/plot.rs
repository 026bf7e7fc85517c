//! The training loss curve as a PNG: the training loss of every step as a line, the validation
//! loss as markers joined by a line. Drawn the way herd-redteam draws its chart: plotters into an
//! RGB buffer with text from the embedded DejaVu Sans (nothing depends on the system's fonts),
//! encoded with the png crate.

use std::ops::Range;

use plotters::backend::{BitMapBackend, RGBPixel};
use plotters::chart::{ChartBuilder, SeriesLabelPosition};
use plotters::drawing::IntoDrawingArea;
use plotters::element::{Circle, EmptyElement, PathElement};
use plotters::style::{register_font, Color, FontStyle, RGBColor, BLACK, WHITE};

use crate::error::{Error, Result};
use crate::trainer::StepRecord;

const FONT: &str = "sans-serif";
// The font file lives once in the workspace, in herd-redteam's tree; both charts embed it rather
// than keep a second copy of a large binary.
static FONT_BYTES: &[u8] = include_bytes!(concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../herd-redteam/assets/DejaVuSans.ttf"
));

pub const WIDTH: u32 = 900;
pub const HEIGHT: u32 = 500;

/// The training line's colour.
pub const TRAIN: RGBColor = RGBColor(66, 114, 196);
/// The validation markers' and line's colour.
pub const VALIDATION: RGBColor = RGBColor(206, 86, 62);

const MARKER_RADIUS: i32 = 4;

/// The loss curve of `history` as PNG bytes (`WIDTH` × `HEIGHT`, RGB), titled `title`.
///
/// Non-finite losses (a diverged step, a validation that overflowed) are left out rather than
/// failing the plot, so a run that went wrong still gets a picture of how it got there; the
/// training line joins the steps either side of one left out.
pub fn loss_png(history: &[StepRecord], title: &str) -> Result<Vec<u8>> {
    if history.is_empty() {
        return Err(Error::Data("no steps to plot".to_string()));
    }
    let mut train: Vec<(u64, f64)> = history
        .iter()
        .filter(|r| r.loss.is_finite())
        .map(|r| (r.step, r.loss))
        .collect();
    let mut validation: Vec<(u64, f64)> = history
        .iter()
        .filter_map(|r| r.validation_loss.filter(|v| v.is_finite()).map(|v| (r.step, v)))
        .collect();
    // A resumed run's history is in step order already; sorting keeps the lines from doubling
    // back should one ever arrive out of order.
    train.sort_by_key(|p| p.0);
    validation.sort_by_key(|p| p.0);
    let all = || train.iter().chain(&validation);
    let (Some(x_range), Some(y_range)) = (step_range(all().map(|p| p.0)), loss_range(all().map(|p| p.1)))
    else {
        return Err(Error::Data("no finite loss to plot".to_string()));
    };
    let mut pixels = vec![0u8; WIDTH as usize * HEIGHT as usize * 3];
    draw(&mut pixels, title, x_range, y_range, &train, &validation)
        .map_err(|e| Error::Data(format!("loss chart: {e}")))?;
    encode_png(&pixels)
}

/// The x axis: the steps plotted, widened to a span of at least one step so a single step (or
/// every record at one step) still gives plotters a range with width.
fn step_range(steps: impl Iterator<Item = u64>) -> Option<Range<u64>> {
    let (lo, hi) = steps.fold(None, |acc: Option<(u64, u64)>, s| match acc {
        None => Some((s, s)),
        Some((lo, hi)) => Some((lo.min(s), hi.max(s))),
    })?;
    if lo == hi {
        Some(lo.saturating_sub(1)..hi.saturating_add(1))
    } else {
        Some(lo..hi)
    }
}

/// The y axis: the finite losses with a margin, given some height when they are all equal (or
/// nearly: a span far below the values' magnitude gives plotters' tick search nothing to do).
/// None when there is no value, or when the span cannot be represented.
fn loss_range(losses: impl Iterator<Item = f64>) -> Option<Range<f64>> {
    let (lo, hi) = losses.fold(None, |acc: Option<(f64, f64)>, v| match acc {
        None => Some((v, v)),
        Some((lo, hi)) => Some((lo.min(v), hi.max(v))),
    })?;
    let floor = (lo.abs().max(hi.abs()) * 1e-2).max(1e-6);
    let (lo, hi) = if hi - lo < floor {
        let mid = lo / 2.0 + hi / 2.0;
        (mid - floor / 2.0, mid + floor / 2.0)
    } else {
        (lo, hi)
    };
    let pad = (hi - lo) * 0.05;
    // A loss is not negative: keep the axis from dipping below zero for the margin's sake only.
    let bottom = if lo >= 0.0 { (lo - pad).max(0.0) } else { lo - pad };
    let top = hi + pad;
    (bottom.is_finite() && top.is_finite() && top - bottom > 0.0 && (top - bottom).is_finite())
        .then_some(bottom..top)
}

fn draw(
    pixels: &mut [u8],
    title: &str,
    x_range: Range<u64>,
    y_range: Range<f64>,
    train: &[(u64, f64)],
    validation: &[(u64, f64)],
) -> std::result::Result<(), String> {
    let err = |e: plotters::drawing::DrawingAreaErrorKind<_>| e.to_string();
    // Registering again replaces the entry with the same bytes; the registry is process-wide, so
    // this is also what herd-redteam's chart finds should both run in one process.
    register_font(FONT, FontStyle::Normal, FONT_BYTES)
        .map_err(|_| "the embedded font cannot be read".to_string())?;
    let backend = BitMapBackend::<RGBPixel>::with_buffer_and_format(pixels, (WIDTH, HEIGHT))
        .map_err(|e| e.to_string())?;
    let root = backend.into_drawing_area();
    root.fill(&WHITE).map_err(err)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, (FONT, 22))
        .margin(16)
        .x_label_area_size(48)
        .y_label_area_size(72)
        .build_cartesian_2d(x_range, y_range)
        .map_err(err)?;
    chart
        .configure_mesh()
        .x_desc("step")
        .y_desc("loss")
        .axis_desc_style((FONT, 16))
        .label_style((FONT, 13))
        .draw()
        .map_err(err)?;

    let train_style = TRAIN.stroke_width(2);
    chart
        .draw_series(std::iter::once(PathElement::new(train.to_vec(), train_style)))
        .map_err(err)?
        .label("train")
        .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], train_style));
    // A line through one point draws nothing: a lone step gets a marker so it shows.
    if let [only] = train {
        chart
            .draw_series(std::iter::once(Circle::new(*only, MARKER_RADIUS, TRAIN.filled())))
            .map_err(err)?;
    }

    if !validation.is_empty() {
        let line = VALIDATION.stroke_width(2);
        chart
            .draw_series(std::iter::once(PathElement::new(validation.to_vec(), line)))
            .map_err(err)?
            .label("validation")
            .legend(move |(x, y)| {
                EmptyElement::at((x, y))
                    + PathElement::new(vec![(0, 0), (20, 0)], line)
                    + Circle::new((10, 0), MARKER_RADIUS, VALIDATION.filled())
            });
        chart
            .draw_series(
                validation
                    .iter()
                    .map(|p| Circle::new(*p, MARKER_RADIUS, VALIDATION.filled())),
            )
            .map_err(err)?;
    }

    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperRight)
        .label_font((FONT, 14))
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .draw()
        .map_err(err)?;
    root.present().map_err(err)
}

fn encode_png(pixels: &[u8]) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    let chart = |e: png::EncodingError| Error::Data(format!("loss chart PNG encoding: {e}"));
    let mut encoder = png::Encoder::new(&mut out, WIDTH, HEIGHT);
    encoder.set_color(png::ColorType::Rgb);
    encoder.set_depth(png::BitDepth::Eight);
    let mut writer = encoder.write_header().map_err(chart)?;
    writer.write_image_data(pixels).map_err(chart)?;
    writer.finish().map_err(chart)?;
    Ok(out)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn record(step: u64, loss: f64, validation_loss: Option<f64>) -> StepRecord {
        StepRecord {
            step,
            epoch: step as f64 / 10.0,
            loss,
            lr: 1e-4,
            grad_norm: 1.0,
            tokens: 128,
            trained_tokens: 100,
            seconds: 0.5,
            validation_loss,
        }
    }

    /// A falling curve over 30 steps, validated every 10th step when `validate`.
    fn history(validate: bool) -> Vec<StepRecord> {
        (1..=30)
            .map(|s| {
                let loss = 3.0 / (1.0 + s as f64 * 0.1);
                let val = (validate && s % 10 == 0).then_some(loss + 0.2);
                record(s, loss, val)
            })
            .collect()
    }

    /// Decodes `png` and returns (width, height, RGB bytes).
    fn decode(png: &[u8]) -> (u32, u32, Vec<u8>) {
        let decoder = png::Decoder::new(std::io::Cursor::new(png));
        let mut reader = decoder.read_info().unwrap();
        let mut buf = vec![0; reader.output_buffer_size().unwrap()];
        let info = reader.next_frame(&mut buf).unwrap();
        assert_eq!(info.color_type, png::ColorType::Rgb);
        buf.truncate(info.buffer_size());
        (info.width, info.height, buf)
    }

    fn count_colour(rgb: &[u8], colour: RGBColor) -> usize {
        rgb.chunks_exact(3)
            .filter(|p| p[0] == colour.0 && p[1] == colour.1 && p[2] == colour.2)
            .count()
    }

    #[test]
    fn png_decodes_to_chart_size() {
        let png = loss_png(&history(true), "loss").unwrap();
        let (w, h, rgb) = decode(&png);
        assert_eq!((w, h), (WIDTH, HEIGHT));
        assert!(count_colour(&rgb, TRAIN) > 0, "the training line is drawn");
        // Text from the embedded font is drawn (the title, labels): some dark pixels exist.
        assert!(rgb.chunks_exact(3).any(|p| p.iter().all(|&c| c < 64)));
    }

    #[test]
    fn validation_points_draw_validation_colour() {
        let (_, _, rgb) = decode(&loss_png(&history(true), "with validation").unwrap());
        assert!(count_colour(&rgb, VALIDATION) > 0);
    }

    #[test]
    fn no_validation_draws_no_validation_colour() {
        let (_, _, rgb) = decode(&loss_png(&history(false), "without validation").unwrap());
        assert_eq!(count_colour(&rgb, VALIDATION), 0);
        assert!(count_colour(&rgb, TRAIN) > 0);
    }

    #[test]
    fn empty_history_is_an_error() {
        let err = loss_png(&[], "empty").unwrap_err();
        assert!(matches!(&err, Error::Data(m) if m == "no steps to plot"), "{err}");
    }

    #[test]
    fn one_step_is_drawn() {
        let (w, h, rgb) = decode(&loss_png(&[record(1, 2.5, Some(2.7))], "one").unwrap());
        assert_eq!((w, h), (WIDTH, HEIGHT));
        assert!(count_colour(&rgb, TRAIN) > 0, "a lone step gets a marker");
        assert!(count_colour(&rgb, VALIDATION) > 0);
    }

    #[test]
    fn equal_losses_get_a_y_range() {
        let flat: Vec<_> = (1..=5).map(|s| record(s, 1.25, None)).collect();
        let (_, _, rgb) = decode(&loss_png(&flat, "flat").unwrap());
        assert!(count_colour(&rgb, TRAIN) > 0);
        let zeros: Vec<_> = (1..=5).map(|s| record(s, 0.0, None)).collect();
        loss_png(&zeros, "zeros").unwrap();
        let range = loss_range([1.25, 1.25].into_iter()).unwrap();
        assert!(range.start < 1.25 && range.end > 1.25);
    }

    #[test]
    fn non_finite_losses_are_skipped() {
        let mut h = history(true);
        h[3].loss = f64::NAN;
        h[4].loss = f64::INFINITY;
        h[5].loss = f64::NEG_INFINITY;
        h[9].validation_loss = Some(f64::NAN);
        h[19].validation_loss = Some(f64::INFINITY);
        let (w, h_px, _) = decode(&loss_png(&h, "nan").unwrap());
        assert_eq!((w, h_px), (WIDTH, HEIGHT));
    }

    #[test]
    fn only_non_finite_losses_is_an_error() {
        let h = vec![
            record(1, f64::NAN, Some(f64::INFINITY)),
            record(2, f64::NAN, None),
        ];
        assert!(matches!(loss_png(&h, "nan"), Err(Error::Data(_))));
    }

    #[test]
    fn extreme_values_do_not_panic() {
        let h = vec![record(0, f64::MAX, None), record(u64::MAX, -f64::MAX, None)];
        // The span overflows: an error, not a panic.
        assert!(loss_png(&h, "extreme").is_err());
        let h = vec![record(u64::MAX, 1e-300, None)];
        loss_png(&h, "tiny").unwrap();
        let h = vec![record(0, 1.0, Some(2.0)), record(u64::MAX, 2.0, Some(1.0))];
        loss_png(&h, "wide").unwrap();
    }
}
