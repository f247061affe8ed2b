//! `fault-client plot`: pictures of a trace (being written).

use std::path::Path;

/// Draws `trace` into `out`; returns a one-line summary of what was drawn.
pub fn plot(trace: &Path, out: &Path) -> anyhow::Result<String> {
    anyhow::bail!(
        "plotting {} into {} is not implemented yet",
        trace.display(),
        out.display()
    )
}
