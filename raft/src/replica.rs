//! One member of one Raft group: the raft-rs `RawNode` and the Ready cycle around it, with
//! asynchronous persistence.
//!
//! Runs on the core that owns the group (never shared: `RawNode` is driven from one task).
//! Each call that can produce work ([`Replica::tick`], [`Replica::step`],
//! [`Replica::propose`], [`Replica::on_persisted`]) is followed by
//! [`Replica::handle_ready`], which in raft-rs's order:
//! 1. sends the messages that need no persistence (a leader's appends go out in parallel with
//!    its own write),
//! 2. hands committed entries to the caller to apply (committed means a quorum has them, so
//!    applying does not wait for the local write),
//! 3. starts the write of the snapshot, new entries and hard state ([`Durable::write`]; they
//!    must be readable through `Storage` at once, durable later), and keeps the messages that
//!    must wait for that write (votes, append acknowledgements) under the Ready's number,
//! 4. advances without waiting (`advance_append_async`).
//!
//! When the store reports a write durable, [`Replica::on_persisted`] releases the messages
//! held for it and every earlier Ready. This is how the partition log's group commit will
//! carry Raft: appends return at once, one fdatasync covers many Readies.
//!
//! Invariants: nothing is acknowledged to a peer before it is durable here; writes complete in
//! Ready order; entries are applied in index order, each once per incarnation of the replica;
//! Raft's own entries (a new leader's empty entry, configuration changes) are not handed out as
//! data.

use std::collections::VecDeque;

use raft::prelude::{Entry, EntryType, HardState, Message, Snapshot};
use raft::{Config, RawNode, StateRole, Storage};

use crate::types::{NodeId, RaftIndex, RaftTerm};

/// Persistence of a replica's log beside raft-rs's read-only `Storage` view of it.
pub trait Durable {
    /// Starts writing Ready `number`: the snapshot (first), then `entries` (replacing any
    /// conflicting suffix), then the hard state. They must be visible to `Storage` reads when
    /// this returns; the store reports them durable later, in `number` order, and the owner
    /// then calls [`Replica::on_persisted`]. A write with nothing in it still completes in
    /// order (it orders the messages of its Ready).
    fn write(
        &mut self,
        number: u64,
        snapshot: Option<&Snapshot>,
        entries: &[Entry],
        hs: Option<&HardState>,
    ) -> Result<(), ReplicaError>;
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
    /// Messages waiting for the write of their Ready, by Ready number.
    held: VecDeque<(u64, Vec<Message>)>,
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
            held: VecDeque::new(),
        })
    }

    /// Starts an election now (a preferred leader of a new group, instead of waiting for its
    /// election timeout).
    pub fn campaign(&mut self) -> Result<(), ReplicaError> {
        Ok(self.node.campaign()?)
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

    /// Proposes one record batch of `records` records as a run of Raft entries (see
    /// `log_store`): `stamp` gets the index the batch will have and the current term and
    /// returns the stamped batch; the other `records - 1` entries are empty placeholders.
    /// Returns the run's first and last index. Only a leader accepts.
    pub fn propose_run(
        &mut self,
        records: usize,
        stamp: impl FnOnce(RaftIndex, RaftTerm) -> Result<bytes::Bytes, String>,
    ) -> Result<(RaftIndex, RaftIndex), ReplicaError> {
        if !self.is_leader() || self.node.raft.lead_transferee.is_some() {
            return Err(ReplicaError::Raft(raft::Error::ProposalDropped));
        }
        let first = self.node.raft.raft_log.last_index() + 1;
        let term = self.node.raft.term;
        let data = stamp(RaftIndex(first), RaftTerm(term)).map_err(ReplicaError::Persist)?;
        let mut m = Message::default();
        m.set_msg_type(raft::prelude::MessageType::MsgPropose);
        m.from = self.node.raft.id;
        m.entries.push(Entry {
            data,
            ..Entry::default()
        });
        for _ in 1..records.max(1) {
            m.entries.push(Entry::default());
        }
        self.node.step(m)?;
        let last = self.node.raft.raft_log.last_index();
        assert_eq!(
            last,
            first + records.max(1) as u64 - 1,
            "a proposed run did not get consecutive indexes"
        );
        Ok((RaftIndex(first), RaftIndex(last)))
    }

    /// A cold read the store started for raft-rs finished: raft-rs retries the send.
    pub fn on_entries_fetched(&mut self, context: raft::GetEntriesContext) {
        self.node.on_entries_fetched(context);
    }

    /// The last index of the log (persisted or not).
    pub fn last_index(&self) -> RaftIndex {
        RaftIndex(self.node.raft.raft_log.last_index())
    }

    /// The mutable log store.
    pub fn store_mut(&mut self) -> &mut S {
        self.node.mut_store()
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

    /// The store made Ready `number` (and every earlier one) durable: sends what waited for
    /// it. Call [`Replica::handle_ready`] afterwards (raft-rs may have more to do).
    pub fn on_persisted(&mut self, number: u64, mut send: impl FnMut(Message)) {
        self.node.on_persist_ready(number);
        while self.held.front().is_some_and(|(n, _)| *n <= number) {
            if let Some((_, msgs)) = self.held.pop_front() {
                for m in msgs {
                    send(m);
                }
            }
        }
    }

    /// Runs the Ready cycle; `send` gets outgoing messages, `apply` committed data entries.
    pub fn handle_ready(
        &mut self,
        mut send: impl FnMut(Message),
        mut apply: impl FnMut(Applied),
    ) -> Result<(), ReplicaError> {
        while self.node.has_ready() {
            let mut rd = self.node.ready();
            for m in rd.take_messages() {
                send(m);
            }
            let mut last_applied = None;
            for e in rd.take_committed_entries() {
                last_applied = Some(e.index);
                deliver(e, &mut apply);
            }
            let snapshot = (!rd.snapshot().is_empty()).then(|| rd.snapshot().clone());
            let entries = rd.entries().clone();
            let hs = rd.hs().cloned();
            let number = rd.number();
            self.node
                .mut_store()
                .write(number, snapshot.as_ref(), &entries, hs.as_ref())?;
            self.held.push_back((number, rd.take_persisted_messages()));
            self.node.advance_append_async(rd);
            if let Some(i) = last_applied {
                self.node.advance_apply_to(i);
            }
        }
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
