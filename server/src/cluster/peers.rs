//! What this broker learns from the others over RPC: the partition leaders they announce.
//!
//! Shared by all cores of the broker (`Arc`, a mutex inside): written when an announcement
//! arrives on core 0, read by Metadata and FindCoordinator on any core for partitions this
//! broker does not host. Control plane only: produce and fetch never touch it. (Which brokers
//! are live, and their addresses, is in the metadata log: registrations and fences.)

use std::collections::HashMap;
use std::sync::Mutex;

/// Partition leaders announced by the brokers that lead them.
#[derive(Default)]
pub struct PeerTable {
    /// Raft group -> (leader, term); the highest term wins.
    leaders: Mutex<HashMap<u64, (u64, u64)>>,
}

impl PeerTable {
    /// Records leaders' announcements `(group, leader, term)`.
    pub fn leader_hints(&self, hints: &[(u64, u64, u64)]) {
        if let Ok(mut l) = self.leaders.lock() {
            for (group, leader, term) in hints {
                let e = l.entry(*group).or_insert((*leader, *term));
                if *term >= e.1 {
                    *e = (*leader, *term);
                }
            }
        }
    }

    /// The announced leader and term of `group`.
    pub fn leader_hint(&self, group: u64) -> Option<(u64, u64)> {
        self.leaders.lock().ok()?.get(&group).copied()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_highest_term_wins() {
        let t = PeerTable::default();
        t.leader_hints(&[(7, 1, 3)]);
        t.leader_hints(&[(7, 2, 2)]);
        assert_eq!(t.leader_hint(7), Some((1, 3)));
        t.leader_hints(&[(7, 3, 4)]);
        assert_eq!(t.leader_hint(7), Some((3, 4)));
        assert_eq!(t.leader_hint(8), None);
    }
}
