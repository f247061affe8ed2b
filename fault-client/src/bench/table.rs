//! The bench as a table: one line per case, the ratios, the notes.

use std::fmt::Write as _;

use super::results::{Bench, Row};

impl Bench {
    /// The table, the ratios under it, and the notes.
    pub fn to_table(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "fault-client bench: synthetic {} image (no zero pages) on loopback, \
             remote runs touch {} of the pages{}",
            size_name(self.image_bytes),
            self.touch,
            if self.quick { " (--quick)" } else { "" }
        );
        let _ = writeln!(out);
        let _ = writeln!(
            out,
            "{:<31} {:>9} {:>9} {:>9} {:>7} {:>9} {:>8} {:>10}",
            "case", "p50 us", "p99 us", "mean us", "faults", "elapsed s", "MiB/s", "huge pages"
        );
        for row in &self.rows {
            let _ = writeln!(out, "{}", table_line(row));
        }
        let _ = writeln!(out);
        let _ = writeln!(out, "ratios");
        for (name, value, meaning) in self.ratio_lines() {
            let _ = writeln!(out, "  {name:<44} {:>8}  {meaning}", fmt_ratio(value));
        }
        let _ = writeln!(out);
        for note in &self.notes {
            let _ = writeln!(out, "note: {note}");
        }
        out
    }

    pub(super) fn ratio_lines(&self) -> [(&'static str, Option<f64>, &'static str); 4] {
        let r = &self.ratios;
        [
            (
                "remote-anon p50 / local-roundtrip-4k p50",
                r.remote_anon_p50_over_local_p50,
                "what TCP, the server and the pager add to a bare round trip",
            ),
            (
                "transfer-thp / transfer-anon time",
                r.thp_over_anon_transfer_time,
                "< 1: 2 MiB units fill the image faster",
            ),
            (
                "remote-hugetlb-2m p50 / remote-anon p50",
                r.hugetlb_2m_p50_over_anon_p50,
                "one 2 MiB fault against one 4 KiB fault",
            ),
            (
                "remote-thp-bg p99: preempt / no-preempt",
                r.thp_bg_p99_preempt_over_no_preempt,
                "< 1: preemption shortens the tail",
            ),
        ]
    }
}

pub(super) fn table_line(row: &Row) -> String {
    if let Some(why) = &row.skipped {
        return format!("{:<31} skipped: {why}", row.case);
    }
    let huge = match (row.huge_pages_mapped, row.huge_pages_total) {
        (Some(mapped), Some(total)) => format!("{mapped}/{total}"),
        _ => "-".into(),
    };
    let mut line = format!(
        "{:<31} {:>9} {:>9} {:>9} {:>7} {:>9} {:>8} {:>10}",
        row.case,
        fmt_opt(row.p50_us, 1),
        fmt_opt(row.p99_us, 1),
        fmt_opt(row.mean_us, 1),
        row.faults,
        fmt_opt(row.elapsed_s, 3),
        fmt_opt(row.throughput_mib_s, 1),
        huge
    );
    if row.hung > 0 {
        let _ = write!(line, "  HUNG {}/{}", row.hung, row.hung + row.runs);
    }
    line
}

pub(super) fn fmt_opt(value: Option<f64>, decimals: usize) -> String {
    value.map_or_else(|| "-".into(), |v| format!("{v:.decimals$}"))
}

pub(super) fn fmt_ratio(value: Option<f64>) -> String {
    value.map_or_else(|| "-".into(), |v| format!("{v:.2}x"))
}

/// `256 MiB`, `1 GiB`, or bytes.
pub(super) fn size_name(bytes: u64) -> String {
    match bytes {
        b if b >= 1 << 30 && b % (1 << 30) == 0 => format!("{} GiB", b >> 30),
        b if b >= 1 << 20 && b % (1 << 20) == 0 => format!("{} MiB", b >> 20),
        b => format!("{b} bytes"),
    }
}

#[cfg(test)]
mod tests {
    use hugepage::Backing;

    use super::*;
    use crate::bench::cases::{Case, Stream};
    use crate::bench::results::Ratios;

    #[test]
    fn skipped_rows_show_the_reason() {
        let row = Row::skipped(Case::Fault(Backing::Hugetlb2M, Stream::Off), "short".into());
        assert!(table_line(&row).contains("skipped: short"));
        let ratios = Ratios::from_rows(&[row]);
        assert_eq!(ratios.hugetlb_2m_p50_over_anon_p50, None);
    }
}
