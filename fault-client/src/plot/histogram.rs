//! Panel 1: the latency histogram, log-binned and stacked by resolution.

use plotters::coord::Shift;
use plotters::prelude::*;

use super::chart::{
    draw_legend, draw_percentile_marks, latency_chart, latency_panel, linear_axis_labels,
};
use super::error::DrawResult;
use super::events::Latency;
use super::{colour, BINS_PER_DECADE};

/// The histogram: log-spaced bins, counts per resolution in the order of `lat.by_how`.
#[derive(Debug)]
struct Histogram {
    /// `bins + 1` bin edges, µs.
    edges: Vec<f64>,
    /// `counts[h][b]`: faults of `lat.by_how[h]` in bin `b`.
    counts: Vec<Vec<u64>>,
}

impl Histogram {
    fn new(lat: &Latency) -> Histogram {
        let (lo, hi) = lat.axis_range();
        // Both are powers of ten with hi > lo: a small positive whole number of bins.
        #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
        let bins = ((hi / lo).log10() * BINS_PER_DECADE).round() as usize;
        let edge = |i: usize| lo * 10f64.powf(i as f64 / BINS_PER_DECADE);
        let edges: Vec<f64> = (0..=bins).map(edge).collect();
        let bin_of = |us: f64| {
            let i = ((us / lo).log10() * BINS_PER_DECADE).floor();
            // Flooring a non-negative bin position is the point; above the last bin saturates.
            #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
            let bin = i.max(0.0) as usize;
            bin.min(bins - 1)
        };
        let counts = lat
            .by_how
            .iter()
            .map(|(_, samples)| {
                let mut c = vec![0; bins];
                samples.iter().for_each(|&us| c[bin_of(us)] += 1);
                c
            })
            .collect();
        Histogram { edges, counts }
    }

    /// The height of the tallest stack.
    fn max_stack(&self) -> u64 {
        let bins = self.edges.len() - 1;
        let stack = |b: usize| self.counts.iter().map(|c| c[b]).sum::<u64>();
        (0..bins).map(stack).max().unwrap_or(0)
    }
}

/// Panel 1: the stacked log-binned histogram, with p50/p99 lines.
pub(super) fn draw_histogram<DB>(area: &DrawingArea<DB, Shift>, lat: &Latency) -> DrawResult<()>
where
    DB: DrawingBackend,
    DB::ErrorType: 'static,
{
    let hist = Histogram::new(lat);
    let y_max = (hist.max_stack() as f64 * 1.25).max(1.0);
    let caption = format!(
        "Fault latency histogram ({} faults, {} bars per decade, stacked by resolution)",
        lat.all.len(),
        BINS_PER_DECADE
    );
    let (band, plot) = latency_panel(area, &caption)?;
    let counts = linear_axis_labels(y_max);
    let mut chart = latency_chart(&plot, lat, y_max, "faults", &counts)?;
    let bins = hist.edges.len() - 1;
    let mut base = vec![0u64; bins];
    for ((how, samples), counts) in lat.by_how.iter().zip(&hist.counts) {
        let colour = colour(*how);
        let bars: Vec<Rectangle<(f64, f64)>> = (0..bins)
            .filter(|&b| counts[b] > 0)
            .map(|b| {
                let (x0, x1) = (hist.edges[b], hist.edges[b + 1]);
                let (y0, y1) = (base[b] as f64, (base[b] + counts[b]) as f64);
                Rectangle::new([(x0, y0), (x1, y1)], colour.filled())
            })
            .collect();
        chart
            .draw_series(bars)?
            .label(format!("{} ({})", how.name(), samples.len()))
            .legend(move |(x, y)| Rectangle::new([(x, y - 6), (x + 14, y + 6)], colour.filled()));
        base.iter_mut().zip(counts).for_each(|(b, c)| *b += c);
    }
    draw_percentile_marks(&band, &mut chart, lat, y_max)?;
    draw_legend(&mut chart, SeriesLabelPosition::UpperRight)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plot::events::Resolved;
    use crate::trace::Resolution as How;

    #[test]
    fn histogram_counts_every_sample() {
        let resolved: Vec<Resolved> = [3.0, 30.0, 31.0, 900.0, 0.0]
            .iter()
            .map(|&latency_us| Resolved {
                latency_us,
                how: How::Urgent,
            })
            .collect();
        let lat = Latency::new(&resolved).expect("samples");
        assert_eq!(lat.axis_range(), (0.1, 1000.0));
        let hist = Histogram::new(&lat);
        assert_eq!(hist.counts[0].iter().sum::<u64>(), 5);
        assert_eq!(hist.edges.len(), 41);
    }
}
