//! One member of one Raft group: the raft-rs `RawNode` and the Ready cycle around it.
//!
//! Runs on the core that owns the group (never shared: `RawNode` is driven from one task).
//! Each call that can produce work ([`Replica::tick`], [`Replica::step`],
//! [`Replica::propose`]) is followed by [`Replica::handle_ready`], which in raft-rs's order:
//! 1. sends the messages that need no persistence (a leader's appends go out in parallel with
//!    its own write),
//! 2. installs a snapshot, if any, and persists new entries and the hard state
//!    ([`Durable::persist`] returns only once they are durable),
//! 3. sends the messages that needed that persistence (votes, append acknowledgements),
//! 4. hands committed entries to the caller to apply, and advances.
//!
//! Invariants: nothing is acknowledged to a peer before it is durable here (step 3 after 2);
//! entries are applied in index order, each once per incarnation of the replica; Raft's own
//! entries (the empty entry a new leader appends, configuration changes) are not handed out as
//! data.

use raft::prelude::{Entry, EntryType, HardState, Message, Snapshot};
use raft::{Config, RawNode, StateRole, Storage};

use crate::types::{NodeId, RaftIndex, RaftTerm};

/// Persistence of a replica's log beside raft-rs's read-only `Storage` view of it.
pub trait Durable {
    /// Makes `entries` (replacing any conflicting suffix), the hard state and the snapshot
    /// durable, in that order of precedence: a snapshot first, then entries, then `hs`.
    fn persist(
        &mut self,
        snapshot: Option<&Snapshot>,
        entries: &[Entry],
        hs: Option<&HardState>,
    ) -> Result<(), ReplicaError>;

    /// Records a newer commit index (part of the hard state, persisted lazily).
    fn set_commit(&mut self, commit: RaftIndex);
}

/// Errors of a replica.
#[derive(Debug, thiserror::Error)]
pub enum ReplicaError {
    /// raft-rs refused (e.g. a proposal while there is no leader).
    #[error("raft: {0}")]
    Raft(#[from] raft::Error),
    /// Persisting failed; the replica must stop (fail-stop).
    #[error("persisting the raft log: {0}")]
    Persist(String),
}

/// An entry to apply: its index and its data.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Applied {
    pub index: RaftIndex,
    pub term: RaftTerm,
    pub data: Vec<u8>,
}

/// Timing of a replica, in ticks.
#[derive(Clone, Copy, Debug)]
pub struct Timing {
    pub election_ticks: usize,
    pub heartbeat_ticks: usize,
}

/// One member of a Raft group.
pub struct Replica<S: Storage + Durable> {
    node: RawNode<S>,
}

impl<S: Storage + Durable> Replica<S> {
    /// A replica over `store` (which holds whatever was persisted before).
    ///
    /// The randomized election timeout is pinned to `election_ticks`: raft-rs draws it from a
    /// thread-local RNG, which would make a seeded simulation irreproducible. The caller breaks
    /// symmetry instead (the simulator ticks nodes with seeded jitter; real brokers differ in
    /// timing anyway).
    pub fn new(
        id: NodeId,
        store: S,
        applied: RaftIndex,
        timing: Timing,
    ) -> Result<Self, ReplicaError> {
        let cfg = Config {
            id: id.0,
            election_tick: timing.election_ticks,
            heartbeat_tick: timing.heartbeat_ticks,
            min_election_tick: timing.election_ticks,
            max_election_tick: timing.election_ticks + 1,
            applied: applied.0,
            max_size_per_msg: 1 << 20,
            max_inflight_msgs: 256,
            check_quorum: true,
            pre_vote: true,
            ..Config::default()
        };
        cfg.validate()?;
        let logger = slog::Logger::root(slog::Discard, slog::o!());
        Ok(Replica {
            node: RawNode::new(&cfg, store, &logger)?,
        })
    }

    /// One logical clock tick.
    pub fn tick(&mut self) {
        self.node.tick();
    }

    /// A message from a peer.
    pub fn step(&mut self, m: Message) -> Result<(), ReplicaError> {
        Ok(self.node.step(m)?)
    }

    /// Proposes `data` (only a leader accepts; others return `ProposalDropped`).
    pub fn propose(&mut self, data: Vec<u8>) -> Result<(), ReplicaError> {
        Ok(self.node.propose(Vec::new(), data)?)
    }

    /// True while this replica leads.
    pub fn is_leader(&self) -> bool {
        self.node.raft.state == StateRole::Leader
    }

    /// The leader this replica knows of (0: none).
    pub fn leader(&self) -> u64 {
        self.node.raft.leader_id
    }

    /// The commit index.
    pub fn commit_index(&self) -> RaftIndex {
        RaftIndex(self.node.raft.raft_log.committed)
    }

    /// The current term.
    pub fn term(&self) -> RaftTerm {
        RaftTerm(self.node.raft.term)
    }

    /// The log store.
    pub fn store(&self) -> &S {
        self.node.store()
    }

    /// Runs the Ready cycle; `send` gets outgoing messages, `apply` committed data entries.
    pub fn handle_ready(
        &mut self,
        mut send: impl FnMut(Message),
        mut apply: impl FnMut(Applied),
    ) -> Result<(), ReplicaError> {
        if !self.node.has_ready() {
            return Ok(());
        }
        let mut rd = self.node.ready();
        for m in rd.take_messages() {
            send(m);
        }
        let snapshot = (!rd.snapshot().is_empty()).then(|| rd.snapshot().clone());
        let entries = rd.entries().clone();
        let hs = rd.hs().cloned();
        if snapshot.is_some() || !entries.is_empty() || hs.is_some() {
            self.node
                .mut_store()
                .persist(snapshot.as_ref(), &entries, hs.as_ref())?;
        }
        for e in rd.take_committed_entries() {
            deliver(e, &mut apply);
        }
        for m in rd.take_persisted_messages() {
            send(m);
        }
        let mut light = self.node.advance(rd);
        if let Some(c) = light.commit_index() {
            self.node.mut_store().set_commit(RaftIndex(c));
        }
        for m in light.take_messages() {
            send(m);
        }
        for e in light.take_committed_entries() {
            deliver(e, &mut apply);
        }
        self.node.advance_apply();
        Ok(())
    }
}

fn deliver(e: Entry, apply: &mut impl FnMut(Applied)) {
    // Raft's own entries are not data: the empty entry of a new leader, configuration changes.
    if e.get_entry_type() != EntryType::EntryNormal || e.data.is_empty() {
        return;
    }
    apply(Applied {
        index: RaftIndex(e.index),
        term: RaftTerm(e.term),
        data: e.data.to_vec(),
    });
}
