//! Panel 3: the timeline of page arrivals over the image, with the faults as rings.

use plotters::coord::types::RangedCoordf64;
use plotters::coord::Shift;
use plotters::prelude::*;

use super::chart::{draw_legend, draw_notice, linear_axis_labels};
use super::error::DrawResult;
use super::events::{Arrival, Events, Fault};
use super::{colour, FAULT_RING_PX, FONT, MIB, MIN_MARK_PX};
use crate::trace::Resolution as How;

/// Panel 3: arrivals as marks over time and offset, faults as crosses on top.
pub(super) fn draw_timeline<DB>(area: &DrawingArea<DB, Shift>, events: &Events) -> DrawResult<()>
where
    DB: DrawingBackend,
    DB::ErrorType: 'static,
{
    // At least 1 ms, so that the axis of an empty trace has a length.
    let (t_max, mib_max) = ((events.duration_ms() * 1.02).max(1.0), events.image_mib());
    let mut chart = ChartBuilder::on(area)
        .caption(
            "Timeline: pages arriving over the image (mark height = bytes placed)",
            (FONT, 20),
        )
        .margin(12)
        .margin_right(30)
        .x_label_area_size(45)
        .y_label_area_size(70)
        .build_cartesian_2d(0.0..t_max, 0.0..mib_max)?;
    chart
        .configure_mesh()
        .x_desc("time since the run started (ms)")
        .y_desc("image offset (MiB)")
        .x_label_formatter(&linear_axis_labels(t_max))
        .y_label_formatter(&linear_axis_labels(mib_max))
        .max_light_lines(1)
        .bold_line_style(RGBColor(215, 215, 215))
        .label_style((FONT, 14))
        .axis_desc_style((FONT, 16))
        .light_line_style(RGBColor(240, 240, 240))
        .draw()?;
    let (w_px, h_px) = chart.plotting_area().dim_in_pixel();
    let min_w = t_max * MIN_MARK_PX / f64::from(w_px.max(1));
    let min_h = mib_max * MIN_MARK_PX / f64::from(h_px.max(1));
    // Later marks cover earlier ones where they overlap (on the sweep, many frames share a
    // pixel column): duplicates at the bottom, then zero pages, then the background stream,
    // urgent pages on top.
    let order = [How::Duplicate, How::Zero, How::Background, How::Urgent];
    for how in order {
        let marks: Vec<_> = events
            .arrivals
            .iter()
            .filter(|a| a.how == how)
            .map(|a| arrival_mark(a, min_w, min_h))
            .collect();
        if marks.is_empty() {
            continue;
        }
        let colour = colour(how);
        chart
            .draw_series(marks)?
            .label(format!("{} arrivals ({})", how.name(), count(events, how)))
            .legend(move |(x, y)| {
                Rectangle::new([(x + 5, y - 7), (x + 9, y + 7)], colour.filled())
            });
    }
    draw_fault_markers(&mut chart, &events.faults)?;
    if events.arrivals.is_empty() && events.faults.is_empty() {
        draw_notice(area, "no faults and no arrivals in this trace")?;
        return Ok(());
    }
    // Below and right of the background sweep every page is present already: no faults, no
    // urgent pages. That corner is the emptiest place for the legend.
    draw_legend(&mut chart, SeriesLabelPosition::LowerRight)
}

/// Arrivals of one resolution.
fn count(events: &Events, how: How) -> usize {
    events.arrivals.iter().filter(|a| a.how == how).count()
}

/// One arrival: a filled mark centred on its time and on its range of the image, as tall as
/// the range but at least `min_w` × `min_h` (data units) so that a single page is visible.
fn arrival_mark(a: &Arrival, min_w: f64, min_h: f64) -> Rectangle<(f64, f64)> {
    let middle = (a.offset as f64 + a.len as f64 / 2.0) / MIB;
    let half_height = (a.len as f64 / MIB).max(min_h) / 2.0;
    let half_width = min_w / 2.0;
    Rectangle::new(
        [
            (a.t_ms - half_width, middle - half_height),
            (a.t_ms + half_width, middle + half_height),
        ],
        colour(a.how).filled(),
    )
}

/// Faults as small black rings, drawn over the arrivals: the mark of the page that answered
/// a fault shows inside its ring.
fn draw_fault_markers<DB>(
    chart: &mut ChartContext<'_, DB, Cartesian2d<RangedCoordf64, RangedCoordf64>>,
    faults: &[Fault],
) -> DrawResult<()>
where
    DB: DrawingBackend,
    DB::ErrorType: 'static,
{
    if faults.is_empty() {
        return Ok(());
    }
    let style = BLACK.stroke_width(1);
    let page_middle = |f: &Fault| (f.offset as f64 + f.len as f64 / 2.0) / MIB;
    let rings = faults
        .iter()
        .map(|f| Circle::new((f.t_ms, page_middle(f)), FAULT_RING_PX, style));
    chart
        .draw_series(rings)?
        .label(format!("faults ({})", faults.len()))
        .legend(move |(x, y)| Circle::new((x + 7, y), FAULT_RING_PX, style));
    Ok(())
}
