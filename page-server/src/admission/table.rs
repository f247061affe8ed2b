//! The pending-connection table: connections by accept order (the first entry is the oldest,
//! the one a full table drops), and how many of them each IP address holds (for
//! `--max-pending-per-source`).

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::time::Instant;

use super::pending::Pending;

/// Pending connections by id, ids given in accept order.
#[derive(Debug, Default)]
pub(super) struct Table {
    entries: BTreeMap<u64, Pending>,
    per_source: HashMap<IpAddr, usize>,
    next_id: u64,
}

impl Table {
    /// Adds a connection, counted against its source if it has one; returns its id.
    pub(super) fn insert(&mut self, pending: Pending) -> u64 {
        let id = self.next_id;
        self.next_id += 1;
        if let Some(ip) = pending.source {
            *self.per_source.entry(ip).or_default() += 1;
        }
        self.entries.insert(id, pending);
        id
    }

    /// Takes a connection out of the table (it closes when the result is dropped).
    pub(super) fn remove(&mut self, id: u64) -> Option<Pending> {
        let pending = self.entries.remove(&id)?;
        if let Some(ip) = pending.source {
            if let Some(n) = self.per_source.get_mut(&ip) {
                *n -= 1;
                if *n == 0 {
                    self.per_source.remove(&ip);
                }
            }
        }
        Some(pending)
    }

    /// The connection with `id`, if it is still here.
    pub(super) fn get_mut(&mut self, id: u64) -> Option<&mut Pending> {
        self.entries.get_mut(&id)
    }

    /// Connections in the table.
    pub(super) fn len(&self) -> usize {
        self.entries.len()
    }

    /// The connection that has waited longest.
    pub(super) fn oldest(&self) -> Option<u64> {
        self.entries.keys().next().copied()
    }

    /// The connection from `ip` that has waited longest.
    pub(super) fn oldest_from(&self, ip: IpAddr) -> Option<u64> {
        self.entries
            .iter()
            .find(|(_, p)| p.source == Some(ip))
            .map(|(&id, _)| id)
    }

    /// Connections from `ip` counted against its limit.
    pub(super) fn count_from(&self, ip: IpAddr) -> usize {
        self.per_source.get(&ip).copied().unwrap_or(0)
    }

    /// Every connection with its id, oldest first.
    pub(super) fn iter(&self) -> impl Iterator<Item = (u64, &Pending)> {
        self.entries.iter().map(|(&id, p)| (id, p))
    }

    /// The connections whose deadline is `now` or earlier.
    pub(super) fn expired(&self, now: Instant) -> Vec<u64> {
        self.iter()
            .filter(|(_, p)| p.deadline <= now)
            .map(|(id, _)| id)
            .collect()
    }

    /// Closes every connection.
    pub(super) fn clear(&mut self) {
        self.entries.clear();
        self.per_source.clear();
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::net::UnixStream;
    use std::time::Duration;

    use uffd_core::Conn;

    use super::*;
    use crate::admission::pending::State;

    fn pending(source: Option<IpAddr>) -> Pending {
        let (ours, _theirs) = UnixStream::pair().expect("pair");
        Pending {
            conn: Conn::Unix(ours),
            source,
            deadline: Instant::now() + Duration::from_secs(5),
            state: State::Closing,
        }
    }

    #[test]
    fn oldest_first_and_counted_per_source() {
        let a: IpAddr = "10.0.0.1".parse().expect("address");
        let b: IpAddr = "10.0.0.2".parse().expect("address");
        let mut table = Table::default();
        let first = table.insert(pending(Some(a)));
        let second = table.insert(pending(Some(b)));
        let third = table.insert(pending(Some(a)));
        let uncounted = table.insert(pending(None));
        assert_eq!((table.len(), table.oldest()), (4, Some(first)));
        assert_eq!((table.count_from(a), table.count_from(b)), (2, 1));
        assert_eq!(table.oldest_from(b), Some(second));
        assert!(table.remove(first).is_some());
        assert!(table.remove(first).is_none(), "removed once");
        assert_eq!(table.count_from(a), 1);
        assert_eq!(table.oldest_from(a), Some(third));
        assert_eq!(table.oldest(), Some(second));
        assert_eq!(table.expired(Instant::now()), Vec::<u64>::new());
        let later = Instant::now() + Duration::from_secs(6);
        assert_eq!(table.expired(later), vec![second, third, uncounted]);
        table.clear();
        assert_eq!((table.len(), table.count_from(a)), (0, 0));
    }
}
