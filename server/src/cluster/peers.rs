//! What this broker knows of the others: each one's Kafka address (from its hello) and when it
//! was last heard from.
//!
//! Shared by all cores of the broker (`Arc`, a mutex inside): written when an RPC frame
//! arrives on core 0, read by Metadata requests on any core. Control plane only: produce and
//! fetch never touch it.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use ringlog_raft::types::NodeId;

/// A broker as last heard of.
#[derive(Clone, Debug)]
pub struct Peer {
    /// Host and port Kafka clients use.
    pub kafka: (String, u16),
    /// When a frame from it last arrived.
    pub heard: Instant,
}

/// Every other broker this one has heard from, and the partition leaders they announced.
#[derive(Default)]
pub struct PeerTable {
    peers: Mutex<BTreeMap<NodeId, Peer>>,
    /// Raft group -> (leader, term), as announced by leaders (the highest term wins), for
    /// partitions this broker does not host.
    leaders: Mutex<std::collections::HashMap<u64, (u64, u64)>>,
}

impl PeerTable {
    /// Records a hello (the broker's Kafka address).
    pub fn hello(&self, node: NodeId, kafka: (String, u16)) {
        if let Ok(mut p) = self.peers.lock() {
            p.insert(
                node,
                Peer {
                    kafka,
                    heard: Instant::now(),
                },
            );
        }
    }

    /// Records that a frame from `node` arrived.
    pub fn heard(&self, node: NodeId) {
        if let Ok(mut p) = self.peers.lock() {
            if let Some(peer) = p.get_mut(&node) {
                peer.heard = Instant::now();
            }
        }
    }

    /// Brokers heard from within `within`, with their Kafka addresses.
    pub fn alive(&self, within: Duration) -> Vec<(NodeId, (String, u16))> {
        let Ok(p) = self.peers.lock() else {
            return Vec::new();
        };
        p.iter()
            .filter(|(_, peer)| peer.heard.elapsed() <= within)
            .map(|(n, peer)| (*n, peer.kafka.clone()))
            .collect()
    }

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

    /// The Kafka address of `node`, if it ever said hello.
    pub fn kafka_addr(&self, node: NodeId) -> Option<(String, u16)> {
        self.peers.lock().ok()?.get(&node).map(|p| p.kafka.clone())
    }
}
