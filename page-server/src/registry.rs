//! The session registry: the sessions being served, by id. An urgent hello opens a session
//! (a new one, or the resumption of one by a client that has some pages already), a
//! background hello joins one, and a session ends with its urgent connection. At most
//! `max_sessions` are open at once.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

use uffd_core::repeat::Repeats;

use crate::image::Image;
use crate::inject::FaultInjection;
use crate::session::{Policy, Session};
use crate::ServeError;

/// The sessions being served.
#[derive(Debug)]
pub(crate) struct Registry {
    image: Arc<Image>,
    policy: Policy,
    fault_injection: FaultInjection,
    max_sessions: usize,
    sessions: Mutex<HashMap<u64, Arc<Session>>>,
    /// Sessions resumed, for the log (a client that keeps reconnecting must not write a line
    /// each time).
    resumes: Repeats,
}

impl Registry {
    /// An empty registry of sessions of `image`, each sending with `policy` (and the test hook
    /// `fault_injection`).
    pub(crate) fn new(
        image: Arc<Image>,
        policy: Policy,
        fault_injection: FaultInjection,
        max_sessions: usize,
    ) -> Registry {
        Registry {
            image,
            policy,
            fault_injection,
            max_sessions,
            sessions: Mutex::new(HashMap::new()),
            resumes: Repeats::default(),
        }
    }

    fn sessions(&self) -> MutexGuard<'_, HashMap<u64, Arc<Session>>> {
        self.sessions.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Number of open sessions.
    pub(crate) fn len(&self) -> usize {
        self.sessions().len()
    }

    /// Opens a session: a new one (`id` 0), or the resumption of session `id` by a client that
    /// already has the pages set in `have` (its received bitmap). A resumed session replaces
    /// the old one, whose connections are closed; after a server restart it is simply created.
    pub(crate) fn open(
        &self,
        id: u64,
        unit: u64,
        have: &[u64],
    ) -> Result<Arc<Session>, ServeError> {
        let mut sessions = self.sessions();
        let replaced = id != 0 && sessions.contains_key(&id);
        if !replaced && sessions.len() >= self.max_sessions {
            return Err(ServeError::TooManySessions(self.max_sessions));
        }
        let id = if id != 0 {
            id
        } else {
            loop {
                let id: u64 = rand::random();
                if id != 0 && !sessions.contains_key(&id) {
                    break id;
                }
            }
        };
        let session = Session::new(id, Arc::clone(&self.image), unit, self.policy)
            .with_fault_injection(self.fault_injection);
        let session = Arc::new(session);
        session.mark_present(0, have);
        let old = sessions.insert(id, Arc::clone(&session));
        drop(sessions);
        if let Some(old) = old {
            old.close();
        }
        if have.is_empty() {
            tracing::info!(session = id, unit, "session opened");
        } else {
            let line = self.resumes.line("sessions resumed", || {
                format!(
                    "session {id} resumed ({} pages present)",
                    session.sent_pages()
                )
            });
            if let Some(line) = line {
                tracing::info!("{line}");
            }
        }
        Ok(session)
    }

    /// Session `id`, for its background connection (a session has at most one).
    pub(crate) fn join(&self, id: u64) -> Result<Arc<Session>, ServeError> {
        let session = self
            .sessions()
            .get(&id)
            .cloned()
            .ok_or(ServeError::UnknownSession(id))?;
        if !session.attach_background() {
            return Err(ServeError::BackgroundTaken);
        }
        Ok(session)
    }

    /// Removes `session` (unless a resumed session has replaced it) and closes it, so that no
    /// session outlives its urgent connection.
    pub(crate) fn end(&self, session: &Arc<Session>) {
        let mut sessions = self.sessions();
        if sessions
            .get(&session.id)
            .is_some_and(|s| Arc::ptr_eq(s, session))
        {
            sessions.remove(&session.id);
        }
        drop(sessions);
        session.close();
    }

    /// Removes and closes every session (at shutdown).
    pub(crate) fn close_all(&self) {
        let sessions: Vec<_> = self.sessions().drain().map(|(_, s)| s).collect();
        for session in sessions {
            session.close();
        }
    }
}
