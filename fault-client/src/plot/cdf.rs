//! Panel 2: the latency CDF, per resolution and of all faults.

use plotters::coord::Shift;
use plotters::prelude::*;

use super::chart::{
    draw_legend, draw_percentile_marks, latency_chart, latency_panel, linear_axis_labels,
};
use super::colour;
use super::error::DrawResult;
use super::events::Latency;

/// Panel 2: the CDF per resolution and of all faults, with p50/p99 lines.
pub(super) fn draw_cdf<DB>(area: &DrawingArea<DB, Shift>, lat: &Latency) -> DrawResult<()>
where
    DB: DrawingBackend,
    DB::ErrorType: 'static,
{
    let caption = "Fault latency CDF: fraction of faults resolved within x";
    let (band, plot) = latency_panel(area, caption)?;
    let fractions = linear_axis_labels(1.0);
    let mut chart = latency_chart(&plot, lat, 1.0, "fraction of faults", &fractions)?;
    // All faults first, wide and pale, so that the coloured curves stay visible on top.
    let all = RGBColor(190, 190, 190).stroke_width(6);
    chart
        .draw_series(LineSeries::new(cdf_points(&lat.all), all))?
        .label(format!("all ({})", lat.all.len()))
        .legend(move |(x, y)| PathElement::new([(x, y), (x + 18, y)], all));
    for (how, samples) in &lat.by_how {
        let colour = colour(*how);
        chart
            .draw_series(LineSeries::new(cdf_points(samples), colour.stroke_width(2)))?
            .label(format!("{} ({})", how.name(), samples.len()))
            .legend(move |(x, y)| PathElement::new([(x, y), (x + 18, y)], colour.stroke_width(2)));
    }
    draw_percentile_marks(&band, &mut chart, lat, 1.0)?;
    // Every curve rises from the lower left to the upper right: the upper left stays empty.
    draw_legend(&mut chart, SeriesLabelPosition::UpperLeft)
}

/// The steps of an empirical CDF of ascending `samples`: (x, fraction ≤ x).
fn cdf_points(samples: &[f64]) -> Vec<(f64, f64)> {
    let n = samples.len() as f64;
    let mut points = Vec::with_capacity(samples.len() * 2);
    for (i, &x) in samples.iter().enumerate() {
        points.push((x, i as f64 / n));
        points.push((x, (i + 1) as f64 / n));
    }
    points
}
