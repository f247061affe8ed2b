//! The arguments of `fault-client bench` and the settings they give ([`Plan`]).

use std::time::Duration;

use uffd_core::units::{self, ParseError};

/// Default image size of a full run.
pub(super) const DEFAULT_SIZE: u64 = 256 << 20;

/// Image size with `--quick`.
pub(super) const QUICK_SIZE: u64 = 16 << 20;

/// Default fraction of the pages a remote-fault run touches.
pub(super) const DEFAULT_TOUCH: f64 = 0.02;

/// Touch fraction with `--quick` (the image is smaller: about as many faults).
pub(super) const QUICK_TOUCH: f64 = 0.05;

/// Local samples (round trips, and first touches) of a full run, and with `--quick`.
pub(super) const LOCAL_SAMPLES: usize = 5000;

pub(super) const QUICK_LOCAL_SAMPLES: usize = 300;

/// Runs of each remote case in a full run.
pub(super) const DEFAULT_RUNS: u64 = 5;

/// A remote run that takes longer than this (plus a second per the next constant's bytes)
/// counts as hung.
pub(super) const RUN_TIMEOUT_BASE: Duration = Duration::from_secs(10);

pub(super) const RUN_TIMEOUT_BYTES_PER_S: u64 = 32 << 20;

/// Arguments of `fault-client bench`.
#[derive(Debug, Clone, clap::Args)]
pub struct BenchArgs {
    /// Synthetic image size (default 256MiB; 16MiB with --quick).
    #[arg(long, value_name = "SIZE", value_parser = parse_image_size)]
    pub size: Option<u64>,
    /// Fraction of the pages each remote-fault run touches (default 0.02; 0.05 with --quick).
    #[arg(long, value_name = "FRACTION", value_parser = units::parse_positive_fraction)]
    pub touch: Option<f64>,
    /// Runs of each remote case; each column of a remote row is the median over them
    /// (default 5; 1 with --quick).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..=100))]
    pub runs: Option<u64>,
    /// Fewer samples, one run per case and a small image: a smoke run of a few seconds.
    #[arg(long)]
    pub quick: bool,
    /// One JSON object (rows and ratios) instead of the table.
    #[arg(long)]
    pub json: bool,
    /// Leave out the hugetlb-2m rows (they are marked skipped).
    #[arg(long)]
    pub skip_hugetlb: bool,
}

/// The image size: not zero.
fn parse_image_size(s: &str) -> Result<u64, ParseError> {
    units::parse_nonzero_bytes(s)
}

/// The settings of one bench, after defaults.
#[derive(Debug, Clone, Copy)]
pub(super) struct Plan {
    pub(super) image_bytes: u64,
    pub(super) touch: f64,
    pub(super) local_samples: usize,
    pub(super) runs: u64,
    pub(super) quick: bool,
    pub(super) skip_hugetlb: bool,
}

impl Plan {
    /// How long one remote run may take before it counts as hung: 10 s, plus 1 s per 32 MiB
    /// of image (a normal run of 256 MiB takes about 1 s here).
    pub(super) fn run_timeout(&self) -> Duration {
        RUN_TIMEOUT_BASE + Duration::from_secs(self.image_bytes / RUN_TIMEOUT_BYTES_PER_S)
    }

    pub(super) fn from_args(args: &BenchArgs) -> Plan {
        let (size, touch, samples, runs) = if args.quick {
            (QUICK_SIZE, QUICK_TOUCH, QUICK_LOCAL_SAMPLES, 1)
        } else {
            (DEFAULT_SIZE, DEFAULT_TOUCH, LOCAL_SAMPLES, DEFAULT_RUNS)
        };
        Plan {
            image_bytes: args.size.unwrap_or(size),
            touch: args.touch.unwrap_or(touch),
            local_samples: samples,
            runs: args.runs.unwrap_or(runs),
            quick: args.quick,
            skip_hugetlb: args.skip_hugetlb,
        }
    }
}
