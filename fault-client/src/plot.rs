//! `fault-client plot TRACE --out FILE.svg|FILE.png`: one picture of a trace written by
//! `fault-client run --trace` (the CSV format is described in [`crate::trace`]).
//!
//! The picture has a title with the totals (faults, arrivals, p50/p99 fault latency) and three
//! panels, stacked:
//!
//! 1. **Latency histogram.** How many faults took how long, from the `resolved` events'
//!    `latency_us` (from the fault message to the return of the ioctl that mapped the page
//!    and woke the thread; one per fault). The x axis
//!    is logarithmic, so every bar covers the same *ratio* of latencies (10 bars per decade):
//!    a remote fault and a local wake-up, a thousand times faster, fit in one picture. The
//!    bars are stacked by how the fault was resolved: `urgent` (answered on the urgent
//!    connection: one network round trip), `background` (the stream brought the page first),
//!    `zero` (placed as zeros) and `already_present` (the page was mapped before the handler
//!    read the fault: only a wake-up). Dashed lines mark the median (p50) and the 99th
//!    percentile (p99) of all faults, with their values above the plot.
//! 2. **Latency CDF.** The same latencies as cumulative distributions: for a latency x, the
//!    fraction of faults that took at most x. One curve per resolution with samples and a
//!    wide grey one for all faults; the p50 and p99 lines are where the grey curve crosses
//!    0.5 and 0.99. A curve far to the left is cheap; a long flat tail on the right is the
//!    faults that waited behind something.
//! 3. **Timeline of page arrivals.** x is the time since the run started (ms), y the offset
//!    in the image (MiB). Every `arrival` event is a short vertical mark at its time over its
//!    range of the image, coloured by how the pages came (`duplicate`: every page of the
//!    frame was already present); a huge page shows once, when it is mapped whole (the
//!    chunks `gathered` into its staging page before are not drawn: they are not present). A mark is at least a few pixels tall so that a single 4 KiB
//!    page shows; a huge page (2 MiB) is taller. `fault` events are small black rings.
//!    How to read it: the background stream is the diagonal sweep from the bottom left (its
//!    slope is the stream's throughput; it is flatter while urgent requests share the link).
//!    The workload's faults are the rings scattered above the sweep, each with the red mark
//!    of the urgent page that answered it inside; a ring on the sweep is a fault that the
//!    stream answered first. Below the sweep every page is present, so nothing faults there.
//!    Where marks overlap the later kind covers the earlier: duplicate, zero, background,
//!    urgent, then the rings (zero pages carried by the stream mostly hide under the sweep).
//!
//! The format of the picture follows the extension of `out`: `.svg` (text stays text, any
//! viewer scales it) or `.png` (rendered here into an RGB buffer, then written with the `png`
//! crate at its best compression: a plot is mostly flat colour and shrinks well).
//!
//! Text needs a font, in both formats (plotters measures every label to lay it out). The
//! font is compiled into the binary: `assets/DejaVuSans-subset.ttf`, DejaVu Sans cut down to
//! Latin-1 and a few symbols (32 KB; its licence and how it was made are beside it), registered
//! with plotters' `ab_glyph` feature. No system font is looked up, so a PNG looks the same on
//! any machine, and no system library is needed.

use std::path::Path;

use anyhow::{anyhow, bail, Context, Result};
use plotters::coord::combinators::{LogCoord, WithKeyPoints};
use plotters::coord::types::RangedCoordf64;
use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};
use uffd_core::stats::percentile_sorted;

use crate::trace::{self, EventKind, Resolution as How};

/// The size of the picture in pixels.
const SIZE: (u32, u32) = (1200, 1400);
/// The font family every text uses (registered from the embedded DejaVu Sans).
const FONT: &str = "sans-serif";
/// Histogram bars per decade of latency.
const BINS_PER_DECADE: f64 = 10.0;
/// The trace writes latencies with one decimal: a logged 0.0 is drawn at this value, the
/// smallest one a log axis can show.
const MIN_LATENCY_US: f64 = 0.1;
/// The smallest mark on the timeline, in pixels (a 4 KiB page of a large image would
/// otherwise be far thinner than a pixel).
const MIN_MARK_PX: f64 = 3.0;
/// The height of the band for the p50/p99 labels above a latency chart, in pixels.
const LABEL_BAND_PX: u32 = 24;
/// The radius of a fault's ring on the timeline, in pixels.
const FAULT_RING_PX: u32 = 3;
/// DejaVu Sans (a Latin-1 subset), for every text of the picture.
static FONT_BYTES: &[u8] = include_bytes!("../assets/DejaVuSans-subset.ttf");
const MIB: f64 = 1024.0 * 1024.0;

// ---------------------------------------------------------------------------------------
// The trace
// ---------------------------------------------------------------------------------------

/// One colour per resolution, the same in every panel.
fn colour(how: How) -> RGBColor {
    match how {
        How::Urgent => RGBColor(214, 39, 40),
        How::Background => RGBColor(31, 119, 180),
        How::Zero => RGBColor(44, 160, 44),
        How::AlreadyPresent => RGBColor(148, 103, 189),
        How::Duplicate => RGBColor(170, 170, 170),
    }
}

/// A `fault` event: the handler read a fault message for the page at `offset`.
#[derive(Debug, Clone, Copy)]
struct Fault {
    t_ms: f64,
    offset: u64,
    len: u64,
}

/// A `resolved` event: a fault's page became present, `latency_us` after the fault.
#[derive(Debug, Clone, Copy)]
struct Resolved {
    latency_us: f64,
    how: How,
}

/// An `arrival` event: `len` bytes at `offset` were placed.
#[derive(Debug, Clone, Copy)]
struct Arrival {
    t_ms: f64,
    offset: u64,
    len: u64,
    how: How,
}

/// A whole trace, split by event kind.
#[derive(Debug, Default)]
struct Events {
    faults: Vec<Fault>,
    resolved: Vec<Resolved>,
    arrivals: Vec<Arrival>,
}

impl Events {
    /// The time of the last fault or arrival, in ms (0 without any).
    fn duration_ms(&self) -> f64 {
        let faults = self.faults.iter().map(|f| f.t_ms);
        let arrivals = self.arrivals.iter().map(|a| a.t_ms);
        faults.chain(arrivals).fold(0.0, f64::max)
    }

    /// The highest byte any event touches, in MiB, rounded up to a whole MiB.
    fn image_mib(&self) -> f64 {
        let faults = self.faults.iter().map(|f| f.offset + f.len);
        let arrivals = self.arrivals.iter().map(|a| a.offset + a.len);
        let end = faults.chain(arrivals).max().unwrap_or(0);
        (end as f64 / MIB).ceil().max(1.0)
    }

    /// Bytes placed by arrivals that were not duplicates.
    fn bytes_placed(&self) -> u64 {
        let placed = self.arrivals.iter().filter(|a| a.how != How::Duplicate);
        placed.map(|a| a.len).sum()
    }
}

/// Reads the trace at `path` ([`crate::trace::read`]; an error names the line that is wrong).
fn read_trace(path: &Path) -> Result<Events> {
    let mut events = Events::default();
    for line in trace::read(path)? {
        let t_ms = line.t_us / 1000.0;
        let (offset, len) = (line.offset, line.len);
        let how = |line: &trace::Line| {
            line.resolution
                .ok_or_else(|| anyhow!("{} event without a resolution", line.event.name()))
        };
        match line.event {
            EventKind::Fault => events.faults.push(Fault { t_ms, offset, len }),
            EventKind::Resolved => events.resolved.push(Resolved {
                latency_us: line.latency_us.unwrap_or(0.0),
                how: how(&line)?,
            }),
            EventKind::Arrival => events.arrivals.push(Arrival {
                t_ms,
                offset,
                len,
                how: how(&line)?,
            }),
            // Chunks in staging (not present yet), the urgent connection's own stages and the
            // workload's accesses: not drawn (`fault-client stages` reads the last two).
            EventKind::Gathered | EventKind::Request | EventKind::Answer | EventKind::Touch => {}
        }
    }
    Ok(events)
}

// ---------------------------------------------------------------------------------------
// Latency statistics
// ---------------------------------------------------------------------------------------

/// The latencies of the resolved faults, sorted, overall and per resolution.
#[derive(Debug)]
struct Latency {
    /// Every latency (µs, at least [`MIN_LATENCY_US`]), ascending.
    all: Vec<f64>,
    /// Per resolution that has samples, ascending.
    by_how: Vec<(How, Vec<f64>)>,
    p50: f64,
    p99: f64,
}

impl Latency {
    /// `None` when no fault was resolved.
    fn new(resolved: &[Resolved]) -> Option<Latency> {
        let sorted = |how: Option<How>| {
            let mut v: Vec<f64> = resolved
                .iter()
                .filter(|r| how.is_none_or(|h| r.how == h))
                .map(|r| r.latency_us.max(MIN_LATENCY_US))
                .collect();
            v.sort_by(f64::total_cmp);
            v
        };
        let all = sorted(None);
        if all.is_empty() {
            return None;
        }
        let by_how = How::ALL
            .iter()
            .map(|&how| (how, sorted(Some(how))))
            .filter(|(_, v)| !v.is_empty())
            .collect();
        Some(Latency {
            p50: percentile_sorted(&all, 0.5).unwrap_or(0.0),
            p99: percentile_sorted(&all, 0.99).unwrap_or(0.0),
            all,
            by_how,
        })
    }

    /// The x range of both latency panels: whole decades around the samples.
    fn axis_range(&self) -> (f64, f64) {
        let first = self.all.first().copied().unwrap_or(1.0);
        let last = self.all.last().copied().unwrap_or(1.0);
        let lo = 10f64.powf(first.log10().floor());
        let hi = 10f64.powf(last.log10().ceil()).max(lo * 10.0);
        (lo, hi)
    }
}

/// A latency for people: "0.4 µs", "37 µs", "1.2 ms".
fn format_latency(us: f64) -> String {
    if us >= 1000.0 {
        format!("{} ms", trim_number(us / 1000.0))
    } else {
        format!("{} µs", trim_number(us))
    }
}

/// Up to three significant digits, no trailing zeros: 0.2, 5, 37.5, 120.
fn trim_number(x: f64) -> String {
    let text = if x < 10.0 {
        format!("{x:.2}")
    } else if x < 100.0 {
        format!("{x:.1}")
    } else {
        format!("{x:.0}")
    };
    if text.contains('.') {
        text.trim_end_matches('0').trim_end_matches('.').to_string()
    } else {
        text
    }
}

/// The grid of a log axis from `lo` to `hi` (both powers of ten): `m` × 10^k for every
/// decade and every mantissa `m` in `mantissas`.
fn log_grid(lo: f64, hi: f64, mantissas: &[f64]) -> Vec<f64> {
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
fn linear_axis_labels(max: f64) -> impl Fn(&f64) -> String {
    let step = max / 10.0;
    let decimals = (-step.log10().floor()).clamp(0.0, 6.0) as usize;
    move |x: &f64| format!("{x:.decimals$}")
}

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
        let bins = ((hi / lo).log10() * BINS_PER_DECADE).round() as usize;
        let edge = |i: usize| lo * 10f64.powf(i as f64 / BINS_PER_DECADE);
        let edges: Vec<f64> = (0..=bins).map(edge).collect();
        let bin_of = |us: f64| {
            let i = ((us / lo).log10() * BINS_PER_DECADE).floor();
            (i.max(0.0) as usize).min(bins - 1)
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

// ---------------------------------------------------------------------------------------
// Drawing
// ---------------------------------------------------------------------------------------

/// Draws `trace` into `out`; returns a one-line summary of what was drawn.
pub fn plot(trace: &Path, out: &Path) -> Result<String> {
    let format = Format::of(out)?;
    let events = read_trace(trace)?;
    let latency = Latency::new(&events.resolved);
    register_font()?;
    let bytes = match format {
        Format::Svg => render_svg(&events, latency.as_ref()),
        Format::Png => render_png(&events, latency.as_ref()),
    }
    .with_context(|| format!("drawing {}", out.display()))?;
    std::fs::write(out, bytes).with_context(|| format!("writing {}", out.display()))?;
    Ok(summary(out, &events, latency.as_ref()))
}

/// The picture as an SVG document.
fn render_svg(events: &Events, latency: Option<&Latency>) -> Result<Vec<u8>> {
    let mut svg = String::new();
    draw(SVGBackend::with_string(&mut svg, SIZE), events, latency)?;
    Ok(svg.into_bytes())
}

/// The picture as a PNG file: drawn into an RGB buffer, then compressed.
fn render_png(events: &Events, latency: Option<&Latency>) -> Result<Vec<u8>> {
    let (width, height) = SIZE;
    let mut rgb = vec![0u8; width as usize * height as usize * 3];
    draw(BitMapBackend::with_buffer(&mut rgb, SIZE), events, latency)?;
    let mut png = Vec::new();
    let mut encoder = png::Encoder::new(&mut png, width, height);
    encoder.set_color(png::ColorType::Rgb);
    encoder.set_depth(png::BitDepth::Eight);
    encoder.set_compression(png::Compression::Best);
    encoder.set_adaptive_filter(png::AdaptiveFilterType::Adaptive);
    let mut writer = encoder.write_header().context("encoding the PNG")?;
    writer.write_image_data(&rgb).context("encoding the PNG")?;
    writer.finish().context("encoding the PNG")?;
    Ok(png)
}

/// The picture formats, chosen by the extension of the output file.
#[derive(Debug, Clone, Copy)]
enum Format {
    Svg,
    Png,
}

impl Format {
    fn of(out: &Path) -> Result<Format> {
        let ext = out.extension().and_then(|e| e.to_str()).unwrap_or("");
        match ext.to_ascii_lowercase().as_str() {
            "svg" => Ok(Format::Svg),
            "png" => Ok(Format::Png),
            _ => bail!(
                "cannot tell the picture format of {}: the file name must end in .svg or .png",
                out.display()
            ),
        }
    }
}

/// Registers the embedded DejaVu Sans as the family [`FONT`] (ab_glyph has no system fonts).
fn register_font() -> Result<()> {
    plotters::style::register_font(FONT, FontStyle::Normal, FONT_BYTES)
        .map_err(|_| anyhow!("the embedded DejaVu Sans font could not be loaded"))
}

/// "1 fault", "2 faults".
fn count_of(n: usize, noun: &str) -> String {
    if n == 1 {
        format!("1 {noun}")
    } else {
        format!("{n} {noun}s")
    }
}

/// The line `plot` returns.
fn summary(out: &Path, events: &Events, latency: Option<&Latency>) -> String {
    let latency = match latency {
        Some(l) => format!(
            "{} resolved (p50 {}, p99 {})",
            l.all.len(),
            format_latency(l.p50),
            format_latency(l.p99)
        ),
        None => "no resolved faults (latency panels left empty)".to_string(),
    };
    format!(
        "wrote {}: {}, {latency}; {} ({:.1} MiB placed) over {:.1} ms",
        out.display(),
        count_of(events.faults.len(), "fault"),
        count_of(events.arrivals.len(), "arrival"),
        events.bytes_placed() as f64 / MIB,
        events.duration_ms()
    )
}

/// The title: the totals of the trace.
fn title(events: &Events, latency: Option<&Latency>) -> String {
    let latency = match latency {
        Some(l) => format!(
            "fault latency p50 {}, p99 {}",
            format_latency(l.p50),
            format_latency(l.p99)
        ),
        None => "no resolved faults".to_string(),
    };
    format!(
        "{}, {} ({:.1} MiB) in {:.1} ms; {latency}",
        count_of(events.faults.len(), "fault"),
        count_of(events.arrivals.len(), "arrival"),
        events.bytes_placed() as f64 / MIB,
        events.duration_ms()
    )
}

/// Draws the whole picture with `backend`.
fn draw<DB>(backend: DB, events: &Events, latency: Option<&Latency>) -> Result<()>
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

/// A panel with only a sentence in the middle.
fn draw_notice<DB>(area: &DrawingArea<DB, Shift>, text: &str) -> Result<()>
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

/// A chart with a log latency x axis and a linear y axis.
type LatencyChart<'a, DB> =
    ChartContext<'a, DB, Cartesian2d<WithKeyPoints<LogCoord<f64>>, RangedCoordf64>>;

/// Splits a latency panel under its caption into a band for the p50/p99 labels and the
/// area of the chart.
fn latency_panel<DB>(
    area: &DrawingArea<DB, Shift>,
    caption: &str,
) -> Result<(DrawingArea<DB, Shift>, DrawingArea<DB, Shift>)>
where
    DB: DrawingBackend,
    DB::ErrorType: 'static,
{
    let below = area.margin(10, 0, 0, 0).titled(caption, (FONT, 20))?;
    Ok(below.split_vertically(LABEL_BAND_PX))
}

/// Builds the frame shared by the histogram and the CDF: axes and grid.
fn latency_chart<'a, DB>(
    area: &'a DrawingArea<DB, Shift>,
    lat: &Latency,
    y_max: f64,
    y_desc: &str,
    y_format: &dyn Fn(&f64) -> String,
) -> Result<LatencyChart<'a, DB>>
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

/// Panel 1: the stacked log-binned histogram, with p50/p99 lines.
fn draw_histogram<DB>(area: &DrawingArea<DB, Shift>, lat: &Latency) -> Result<()>
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

/// Panel 2: the CDF per resolution and of all faults, with p50/p99 lines.
fn draw_cdf<DB>(area: &DrawingArea<DB, Shift>, lat: &Latency) -> Result<()>
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

/// Dashed vertical lines at p50 and p99 over the whole height of the plot. Their labels
/// stand in `band`, the strip between the caption and the plot, where no bar, curve or
/// legend can hide them: p50's ends at its line and p99's starts at its line, so the two
/// never overlap.
fn draw_percentile_marks<DB>(
    band: &DrawingArea<DB, Shift>,
    chart: &mut LatencyChart<'_, DB>,
    lat: &Latency,
    y_top: f64,
) -> Result<()>
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
) -> Result<(i32, i32)>
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
fn draw_legend<'a, DB, X, Y>(
    chart: &mut ChartContext<'a, DB, Cartesian2d<X, Y>>,
    position: SeriesLabelPosition,
) -> Result<()>
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

/// Panel 3: arrivals as marks over time and offset, faults as crosses on top.
fn draw_timeline<DB>(area: &DrawingArea<DB, Shift>, events: &Events) -> Result<()>
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
) -> Result<()>
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
