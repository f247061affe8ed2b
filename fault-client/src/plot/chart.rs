//! What the panels share: log and linear axes, the frame of a latency chart, the p50/p99
//! marks, legends and the notice of an empty panel.

use plotters::coord::combinators::{LogCoord, WithKeyPoints};
use plotters::coord::types::RangedCoordf64;
use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};

use super::error::DrawResult;
use super::events::Latency;
use super::text::format_latency;
use super::{FONT, LABEL_BAND_PX};

/// The grid of a log axis from `lo` to `hi` (both powers of ten): `m` × 10^k for every
/// decade and every mantissa `m` in `mantissas`.
fn log_grid(lo: f64, hi: f64, mantissas: &[f64]) -> Vec<f64> {
    // Both are powers of ten with hi >= lo: a small whole number of decades.
    #[allow(clippy::cast_possible_truncation)]
    let decades = (hi / lo).log10().round() as i32;
    let mut points: Vec<f64> = (0..decades)
        .flat_map(|k| {
            let decade = lo * 10f64.powi(k);
            mantissas.iter().map(move |m| m * decade)
        })
        .collect();
    points.push(hi);
    points
}

/// A log latency axis from `lo` to `hi`: labelled lines at 1, 2 and 5 times each power of
/// ten, light lines at the other digits, like log paper.
fn log_latency_axis(lo: f64, hi: f64) -> WithKeyPoints<LogCoord<f64>> {
    let digits: Vec<f64> = (1..10).map(f64::from).collect();
    (lo..hi)
        .log_scale()
        .with_key_points(log_grid(lo, hi, &[1.0, 2.0, 5.0]))
        .with_light_points(log_grid(lo, hi, &digits))
}

/// Labels for a linear axis from 0 to `max`: as many decimals as its ticks (about ten of
/// them) need, so that a 1 ms timeline reads 0.2, 0.4, … and a 500 ms one 100, 200, ….
pub(super) fn linear_axis_labels(max: f64) -> impl Fn(&f64) -> String {
    let step = max / 10.0;
    // A whole number clamped to 0..=6.
    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
    let decimals = (-step.log10().floor()).clamp(0.0, 6.0) as usize;
    move |x: &f64| format!("{x:.decimals$}")
}

/// A chart with a log latency x axis and a linear y axis.
pub(super) type LatencyChart<'a, DB> =
    ChartContext<'a, DB, Cartesian2d<WithKeyPoints<LogCoord<f64>>, RangedCoordf64>>;

/// Splits a latency panel under its caption into a band for the p50/p99 labels and the
/// area of the chart.
pub(super) fn latency_panel<DB>(
    area: &DrawingArea<DB, Shift>,
    caption: &str,
) -> DrawResult<(DrawingArea<DB, Shift>, DrawingArea<DB, Shift>)>
where
    DB: DrawingBackend,
    DB::ErrorType: 'static,
{
    let below = area.margin(10, 0, 0, 0).titled(caption, (FONT, 20))?;
    Ok(below.split_vertically(LABEL_BAND_PX))
}

/// Builds the frame shared by the histogram and the CDF: axes and grid.
pub(super) fn latency_chart<'a, DB>(
    area: &'a DrawingArea<DB, Shift>,
    lat: &Latency,
    y_max: f64,
    y_desc: &str,
    y_format: &dyn Fn(&f64) -> String,
) -> DrawResult<LatencyChart<'a, DB>>
where
    DB: DrawingBackend,
    DB::ErrorType: 'static,
{
    let (lo, hi) = lat.axis_range();
    let mut chart = ChartBuilder::on(area)
        .margin(12)
        .margin_top(4)
        .margin_right(30)
        .x_label_area_size(45)
        .y_label_area_size(70)
        .build_cartesian_2d(log_latency_axis(lo, hi), 0.0..y_max)?;
    chart
        .configure_mesh()
        .x_desc("fault latency (log scale)")
        .y_desc(y_desc)
        .x_label_formatter(&|us| format_latency(*us))
        .y_label_formatter(y_format)
        .label_style((FONT, 14))
        .axis_desc_style((FONT, 16))
        .y_max_light_lines(1)
        .bold_line_style(RGBColor(215, 215, 215))
        .light_line_style(RGBColor(240, 240, 240))
        .draw()?;
    Ok(chart)
}

/// Dashed vertical lines at p50 and p99 over the whole height of the plot. Their labels
/// stand in `band`, the strip between the caption and the plot, where no bar, curve or
/// legend can hide them: p50's ends at its line and p99's starts at its line, so the two
/// never overlap.
pub(super) fn draw_percentile_marks<DB>(
    band: &DrawingArea<DB, Shift>,
    chart: &mut LatencyChart<'_, DB>,
    lat: &Latency,
    y_top: f64,
) -> DrawResult<()>
where
    DB: DrawingBackend,
    DB::ErrorType: 'static,
{
    let marks = [("p50", lat.p50, HPos::Right), ("p99", lat.p99, HPos::Left)];
    for (name, x, side) in marks {
        let line = DashedLineSeries::new([(x, 0.0), (x, y_top)], 6, 4, BLACK.stroke_width(2));
        chart.draw_series(line)?;
        let text = format!("{name} = {}", format_latency(x));
        let style = TextStyle::from((FONT, 16).into_font()).pos(Pos::new(side, VPos::Bottom));
        let line_x = chart.backend_coord(&(x, y_top)).0 - band.get_base_pixel().0;
        let at = label_position(band, line_x, side, &text, &style)?;
        band.draw_text(&text, &style, at)?;
    }
    Ok(())
}

/// Where a percentile label goes in `band`: at its bottom, beside the line at `line_x` on
/// the `side` of it, moved in if it would stick out of the band.
fn label_position<DB>(
    band: &DrawingArea<DB, Shift>,
    line_x: i32,
    side: HPos,
    text: &str,
    style: &TextStyle,
) -> DrawResult<(i32, i32)>
where
    DB: DrawingBackend,
    DB::ErrorType: 'static,
{
    let (band_w, band_h) = band.dim_in_pixel();
    let (text_w, _) = band.estimate_text_size(text, style)?;
    let (band_w, band_h, text_w) = (band_w as i32, band_h as i32, text_w as i32);
    let x = match side {
        HPos::Right => (line_x - 4).max(text_w + 2),
        _ => (line_x + 4).min(band_w - text_w - 2),
    };
    Ok((x, band_h - 2))
}

/// The legend box of a chart's labelled series.
pub(super) fn draw_legend<'a, DB, X, Y>(
    chart: &mut ChartContext<'a, DB, Cartesian2d<X, Y>>,
    position: SeriesLabelPosition,
) -> DrawResult<()>
where
    DB: DrawingBackend + 'a,
    DB::ErrorType: 'static,
    X: Ranged,
    Y: Ranged,
{
    chart
        .configure_series_labels()
        .position(position)
        .margin(10)
        .label_font((FONT, 15))
        .background_style(WHITE.mix(0.85))
        .border_style(RGBColor(150, 150, 150))
        .draw()?;
    Ok(())
}

/// A panel with only a sentence in the middle.
pub(super) fn draw_notice<DB>(area: &DrawingArea<DB, Shift>, text: &str) -> DrawResult<()>
where
    DB: DrawingBackend,
    DB::ErrorType: 'static,
{
    let (w, h) = area.dim_in_pixel();
    let style = TextStyle::from((FONT, 20).into_font())
        .color(&RGBColor(90, 90, 90))
        .pos(Pos::new(HPos::Center, VPos::Center));
    area.draw_text(text, &style, (w as i32 / 2, h as i32 / 2))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn latencies_format_for_people() {
        assert_eq!(format_latency(0.4), "0.4 µs");
        assert_eq!(format_latency(37.24), "37.2 µs");
        assert_eq!(format_latency(1200.0), "1.2 ms");
        assert_eq!(
            log_grid(1.0, 100.0, &[1.0, 5.0]),
            [1.0, 5.0, 10.0, 50.0, 100.0]
        );
    }
}
