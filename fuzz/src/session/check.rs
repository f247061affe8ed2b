//! A played script checked as a whole: each connection's answer, then per session no page sent
//! twice and a finished background stream that completed the image.

use std::collections::{BTreeSet, HashMap};

use uffd_core::proto::{self, Frame, Limits, Role};

use super::answer::{check_connection, Seen, Summary};
use super::connection::{End, Live, Received};
use super::expect::{expect, Expect, Welcomed};
use super::target::Target;

/// The session id of the welcome that starts `bytes`, if it starts with one.
fn welcome_session(bytes: &[u8], limits: &Limits) -> Option<u64> {
    match proto::decode(bytes, limits) {
        Ok(Some((Frame::Welcome(w), _))) => Some(w.session),
        _ => None,
    }
}

/// Checks each connection of a played script against the model, then each session across its
/// connections.
pub(super) fn check(target: &Target<'_>, conns: &[Live], received: &[Option<Received>]) -> Summary {
    let limits = target.limits();
    let mut summary = Summary {
        connections: conns.len(),
        ..Summary::default()
    };
    // A resumption replaces the live session of that id and shuts its connections down,
    // wherever they were: those may end anyhow, and the session's page accounting restarts.
    // Sessions welcomed on more than one urgent connection are such sessions.
    let mut resumed = BTreeSet::new();
    let expects: Vec<Expect> = conns
        .iter()
        .map(|conn| {
            let e = expect(target, conn, &resumed);
            if let Expect::Welcome(Welcomed {
                resumed: true,
                session: Some(id),
                ..
            }) = e
            {
                resumed.insert(id);
            }
            e
        })
        .collect();
    let mut urgent_welcomes: HashMap<u64, usize> = HashMap::new();
    for (got, e) in received.iter().zip(&expects) {
        if let (Some(got), Expect::Welcome(w)) = (got, e) {
            if let (Role::Urgent, Some(id)) = (w.role, welcome_session(&got.bytes, &limits)) {
                *urgent_welcomes.entry(id).or_default() += 1;
            }
        }
    }
    let replaced = |id: Option<u64>| id.is_some_and(|id| urgent_welcomes.get(&id) > Some(&1));
    let mut seen = Vec::new();
    for (i, (conn, got)) in conns.iter().zip(received).enumerate() {
        let Some(got) = got else {
            continue; // aborted: nothing to check
        };
        if conn.aborted || got.end == End::Aborted {
            continue;
        }
        let relaxed = replaced(welcome_session(&got.bytes, &limits));
        let what = format!("connection {i} (sent {} bytes)", conn.sent.len());
        let s = check_connection(target, &expects[i], got, relaxed, &mut summary)
            .unwrap_or_else(|why| panic!("{what}: {why}"));
        seen.push(s);
    }
    // Per session: no page twice (nor one the client has); a complete background stream
    // completes the image, with the urgent answers and the pages the client had.
    let mut sessions: HashMap<u64, Vec<&Seen>> = HashMap::new();
    for s in &seen {
        if let Some(id) = s.session.filter(|&id| !replaced(Some(id))) {
            sessions.entry(id).or_default().push(s);
        }
    }
    for (id, members) in sessions {
        let mut pages: BTreeSet<u64> = members.iter().flat_map(|s| s.have.clone()).collect();
        for s in &members {
            for &p in &s.pages {
                assert!(
                    pages.insert(p),
                    "session {id:#x}: page {p} sent twice (or sent although the client has it)"
                );
            }
        }
        let complete = members.iter().any(|s| s.end && !s.urgent);
        let has_urgent = members.iter().any(|s| s.urgent);
        if complete && has_urgent {
            assert_eq!(
                pages.len() as u64,
                target.image.pages(),
                "session {id:#x}: the background stream ended but pages are missing"
            );
        }
    }
    summary
}
