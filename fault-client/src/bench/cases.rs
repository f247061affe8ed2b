//! The comparison cases: one row of the table each, and how each runs.

use std::time::Duration;

use hugepage::Backing;

use super::args::Plan;
use crate::demo::ServerChild;
use crate::{RunConfig, Workload};

/// The background stream of a remote-fault case.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Stream {
    /// No background connection.
    Off,
    /// Background on, default server (preempts for urgent answers).
    Preempt,
    /// Background on, server started with `--no-preempt`.
    NoPreempt,
}

/// One row of the table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Case {
    LocalRoundTrip,
    LocalFirstTouch,
    Fault(Backing, Stream),
    Transfer(Backing),
}

pub(super) const BACKINGS: [Backing; 3] = [Backing::Anon, Backing::Thp, Backing::Hugetlb2M];

impl Case {
    /// Every case, in table order.
    pub(super) fn all() -> Vec<Case> {
        let mut cases = vec![Case::LocalRoundTrip, Case::LocalFirstTouch];
        for backing in BACKINGS {
            for stream in [Stream::Off, Stream::Preempt, Stream::NoPreempt] {
                cases.push(Case::Fault(backing, stream));
            }
        }
        cases.push(Case::Transfer(Backing::Anon));
        cases.push(Case::Transfer(Backing::Thp));
        cases
    }

    /// The row's name (the `case` key of the JSON).
    pub(super) fn id(self) -> String {
        match self {
            Case::LocalRoundTrip => "local-roundtrip-4k".into(),
            Case::LocalFirstTouch => "local-first-touch-4k".into(),
            Case::Fault(backing, Stream::Off) => format!("remote-{}", backing.name()),
            Case::Fault(backing, Stream::Preempt) => format!("remote-{}-bg", backing.name()),
            Case::Fault(backing, Stream::NoPreempt) => {
                format!("remote-{}-bg-nopreempt", backing.name())
            }
            Case::Transfer(backing) => format!("transfer-{}", backing.name()),
        }
    }

    pub(super) fn kind(self) -> &'static str {
        match self {
            Case::LocalRoundTrip | Case::LocalFirstTouch => "local",
            Case::Fault(..) => "remote",
            Case::Transfer(_) => "transfer",
        }
    }

    pub(super) fn backing(self) -> Option<Backing> {
        match self {
            Case::LocalRoundTrip | Case::LocalFirstTouch => None,
            Case::Fault(backing, _) | Case::Transfer(backing) => Some(backing),
        }
    }

    pub(super) fn background(self) -> bool {
        matches!(
            self,
            Case::Fault(_, Stream::Preempt | Stream::NoPreempt) | Case::Transfer(_)
        )
    }

    /// Whether the server of this case preempts (None: no server, or no stream to preempt).
    pub(super) fn preempt(self) -> Option<bool> {
        match self {
            Case::Fault(_, Stream::Preempt) | Case::Transfer(_) => Some(true),
            Case::Fault(_, Stream::NoPreempt) => Some(false),
            _ => None,
        }
    }

    /// Which server the case runs against: `Some(preempt)`, or None for local cases.
    pub(super) fn server(self) -> Option<bool> {
        match self {
            Case::LocalRoundTrip | Case::LocalFirstTouch => None,
            Case::Fault(_, stream) => Some(stream != Stream::NoPreempt),
            Case::Transfer(_) => Some(true),
        }
    }
}

pub(super) fn remote_config(case: Case, plan: &Plan, server: &ServerChild) -> RunConfig {
    let mut config = RunConfig::new(server.endpoint.clone());
    config.workload = match case {
        Case::Transfer(_) => Workload::None,
        _ => Workload::Random,
    };
    config.threads = 1;
    config.touch = plan.touch;
    config.client.background = case.background();
    config.client.backing = case.backing().unwrap_or(Backing::Anon);
    config.quiet = true;
    // A lost connection to our own loopback child is a failure, not something to ride out.
    config.client.reconnect_timeout = Duration::ZERO;
    config
}

/// Why a hugetlb case cannot run: `--skip-hugetlb`, or a pool too short for the image.
pub(super) fn skip_reason(case: Case, plan: &Plan) -> Option<String> {
    let size = case.backing()?.hugetlb_size()?;
    if plan.skip_hugetlb {
        return Some("--skip-hugetlb".into());
    }
    let pages = plan.image_bytes.div_ceil(size);
    hugepage::pool::check_available(size, pages)
        .err()
        .map(|err| err.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn case_names_are_unique_and_in_order() {
        let ids: Vec<String> = Case::all().into_iter().map(Case::id).collect();
        let mut unique = ids.clone();
        unique.sort();
        unique.dedup();
        assert_eq!(unique.len(), ids.len());
        assert_eq!(ids.first().map(String::as_str), Some("local-roundtrip-4k"));
        assert!(ids.contains(&"remote-hugetlb-2m-bg-nopreempt".to_string()));
        assert_eq!(ids.last().map(String::as_str), Some("transfer-thp"));
    }
}
