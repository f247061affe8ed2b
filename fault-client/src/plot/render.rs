//! The picture as a file: the format chosen by the extension, the panels stacked under the
//! title, SVG or PNG output, and the embedded font.

use std::path::Path;

use plotters::prelude::*;

use super::cdf::draw_cdf;
use super::chart::draw_notice;
use super::error::{DrawError, PlotError, RenderError};
use super::events::{Events, Latency};
use super::histogram::draw_histogram;
use super::text::title;
use super::timeline::draw_timeline;
use super::{FONT, SIZE};

/// DejaVu Sans (a Latin-1 subset), for every text of the picture.
static FONT_BYTES: &[u8] = include_bytes!("../../assets/DejaVuSans-subset.ttf");

/// The picture as an SVG document.
pub(super) fn render_svg(
    events: &Events,
    latency: Option<&Latency>,
) -> Result<Vec<u8>, RenderError> {
    let mut svg = String::new();
    draw(SVGBackend::with_string(&mut svg, SIZE), events, latency)?;
    Ok(svg.into_bytes())
}

/// The picture as a PNG file: drawn into an RGB buffer, then compressed.
pub(super) fn render_png(
    events: &Events,
    latency: Option<&Latency>,
) -> Result<Vec<u8>, RenderError> {
    let (width, height) = SIZE;
    let mut rgb = vec![0u8; width as usize * height as usize * 3];
    draw(BitMapBackend::with_buffer(&mut rgb, SIZE), events, latency)?;
    let mut png = Vec::new();
    let mut encoder = png::Encoder::new(&mut png, width, height);
    encoder.set_color(png::ColorType::Rgb);
    encoder.set_depth(png::BitDepth::Eight);
    encoder.set_compression(png::Compression::Best);
    encoder.set_adaptive_filter(png::AdaptiveFilterType::Adaptive);
    let mut writer = encoder.write_header().map_err(RenderError::EncodePng)?;
    writer
        .write_image_data(&rgb)
        .map_err(RenderError::EncodePng)?;
    writer.finish().map_err(RenderError::EncodePng)?;
    Ok(png)
}

/// The picture formats, chosen by the extension of the output file.
#[derive(Debug, Clone, Copy)]
pub(super) enum Format {
    Svg,
    Png,
}

impl Format {
    pub(super) fn of(out: &Path) -> Result<Format, PlotError> {
        let ext = out.extension().and_then(|e| e.to_str()).unwrap_or("");
        match ext.to_ascii_lowercase().as_str() {
            "svg" => Ok(Format::Svg),
            "png" => Ok(Format::Png),
            _ => Err(PlotError::Format {
                path: out.to_path_buf(),
            }),
        }
    }
}

/// Registers the embedded DejaVu Sans as the family [`FONT`] (ab_glyph has no system fonts).
pub(super) fn register_font() -> Result<(), PlotError> {
    plotters::style::register_font(FONT, FontStyle::Normal, FONT_BYTES).map_err(|_| PlotError::Font)
}

/// Draws the whole picture with `backend`.
fn draw<DB>(backend: DB, events: &Events, latency: Option<&Latency>) -> Result<(), DrawError>
where
    DB: DrawingBackend,
    DB::ErrorType: 'static,
{
    let root = backend.into_drawing_area();
    root.fill(&WHITE)?;
    let root = root.titled(&title(events, latency), (FONT, 26))?;
    let (histogram, rest) = root.split_vertically(390);
    let (cdf, timeline) = rest.split_vertically(390);
    match latency {
        Some(lat) => {
            draw_histogram(&histogram, lat)?;
            draw_cdf(&cdf, lat)?;
        }
        None => {
            draw_notice(
                &histogram,
                "no resolved faults in this trace: no latency histogram",
            )?;
            draw_notice(&cdf, "no resolved faults in this trace: no latency CDF")?;
        }
    }
    draw_timeline(&timeline, events)?;
    root.present()?;
    Ok(())
}
