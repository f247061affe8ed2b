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

mod cdf;
mod chart;
mod error;
mod events;
mod histogram;
mod render;
mod text;
mod timeline;

use std::path::Path;

use plotters::style::RGBColor;

use crate::trace::Resolution as How;
pub use error::{DrawError, PlotError, RenderError};
use events::{read_trace, Latency};
use render::{register_font, render_png, render_svg, Format};
use text::summary;

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
const MIB: f64 = 1024.0 * 1024.0;

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

/// Draws `trace` into `out`; returns a one-line summary of what was drawn.
pub fn plot(trace: &Path, out: &Path) -> Result<String, PlotError> {
    let format = Format::of(out)?;
    let events = read_trace(trace)?;
    let latency = Latency::new(&events.resolved);
    register_font()?;
    let bytes = match format {
        Format::Svg => render_svg(&events, latency.as_ref()),
        Format::Png => render_png(&events, latency.as_ref()),
    }
    .map_err(|source| PlotError::Render {
        path: out.to_path_buf(),
        source,
    })?;
    std::fs::write(out, bytes).map_err(|source| PlotError::Write {
        path: out.to_path_buf(),
        source,
    })?;
    Ok(summary(out, &events, latency.as_ref()))
}
