//! One Raft group on its core: the replica over the partition log, its store worker, and what
//! the group implies for Kafka (leader, epoch, high watermark).
//!
//! Runs on the core that owns the partition (the metadata group: core 0). Every event (a
//! tick, a peer's message, a proposal, the store finishing a write or a cold read) steps the
//! replica and runs its Ready cycle at once, synchronously: nothing holds the replica across
//! an await, so events never interleave inside raft-rs. Outgoing messages go to the core's
//! transport queues.
//!
//! High watermark: the commit index, cut back to a batch boundary and to what the local log
//! holds (`offset = index - 1`, see `ringlog_raft::log_store`), so a consumer never reads a
//! batch that is not committed on a majority, or a batch this replica does not have yet. It
//! never moves back (committed entries are never truncated).
//!
//! A failure of the store (disk error, a broken invariant) stops the broker (fail-stop): a
//! replica that can not persist must not vote or acknowledge.

use std::cell::{Cell, RefCell};
use std::path::PathBuf;
use std::rc::{Rc, Weak};

use bytes::BytesMut;
use kafka_protocol::error::ResponseError;
use rand::Rng;
use ringlog_raft::log_store::{self, LogStore, Progress};
use ringlog_raft::replica::{Replica, ReplicaError, Timing};
use ringlog_raft::types::{GroupId, NodeId, RaftIndex, RaftTerm};
use ringlog_storage::batch::{BatchHeader, CheckedBatch};
use ringlog_storage::{Log, Offset};

use super::rpc::Transport;
use crate::kafka::errors::KafkaError;
use crate::notify::Notify;

/// A Raft group member on this core.
pub struct RaftGroup {
    /// The group.
    pub id: GroupId,
    /// For log lines (`topic-partition`).
    pub name: String,
    replica: RefCell<Replica<LogStore>>,
    store: LogStore,
    transport: Rc<Transport>,
    /// Notified when the high watermark, the leader, the term or the local log's durable end
    /// moves.
    pub changed: Rc<Notify>,
    hw: Cell<Offset>,
    leader: Cell<u64>,
    term: Cell<u64>,
    worker: RefCell<Option<glommio::task::JoinHandle<()>>>,
    /// This replica became leader in this term and has not yet had the controller record it.
    report_term: Cell<Option<u64>>,
    /// A report to the controller is in flight.
    reporting: Cell<bool>,
    /// A disk read is finding the batch boundary under the commit index (it was not in
    /// memory, e.g. just after a restart).
    probing: Cell<bool>,
    me: RefCell<Weak<RaftGroup>>,
}

impl RaftGroup {
    /// Opens the group over `log` (its state file at `state_path`) and starts its store
    /// worker. `changed` is notified on every change that can release a waiter.
    #[allow(clippy::too_many_arguments)]
    pub async fn open(
        id: GroupId,
        name: String,
        log: Rc<Log>,
        state_path: PathBuf,
        voters: &[NodeId],
        learners: &[NodeId],
        transport: Rc<Transport>,
        changed: Rc<Notify>,
    ) -> Result<Rc<RaftGroup>, String> {
        let store = LogStore::open(log, state_path, voters, learners)
            .await
            .map_err(|e| format!("opening raft group {name}: {e}"))?;
        // Each replica gets its own election timeout in [E, 2E): raft-rs's own draw is pinned
        // (deterministic simulation), so the spread is chosen here.
        let election_ticks =
            super::ELECTION_TICKS + rand::thread_rng().gen_range(0..super::ELECTION_TICKS);
        let timing = Timing {
            election_ticks,
            heartbeat_ticks: super::HEARTBEAT_TICKS,
        };
        let hw = Offset(store.initial_commit().0 as i64).min(store.log().end_offset());
        let replica = Replica::new(
            transport.me(),
            store.clone(),
            store.initial_commit(),
            timing,
        )
        .map_err(|e| format!("starting raft group {name}: {e}"))?;
        let g = Rc::new(RaftGroup {
            id,
            name,
            replica: RefCell::new(replica),
            store: store.clone(),
            transport,
            changed,
            hw: Cell::new(hw),
            leader: Cell::new(0),
            term: Cell::new(0),
            worker: RefCell::new(None),
            probing: Cell::new(false),
            report_term: Cell::new(None),
            reporting: Cell::new(false),
            me: RefCell::new(Weak::new()),
        });
        *g.me.borrow_mut() = Rc::downgrade(&g);
        let weak: Weak<RaftGroup> = Rc::downgrade(&g);
        let worker = glommio::spawn_local(async move {
            loop {
                let r = store.work().await;
                let Some(g) = weak.upgrade() else { return };
                match r {
                    Ok(p) => g.on_progress(p),
                    Err(e) => super::fail_stop(&format!("raft group {}: {e}", g.name)),
                }
            }
        })
        .detach();
        *g.worker.borrow_mut() = Some(worker);
        // A new group's first replica is its preferred leader: it campaigns at once, so
        // leaders start spread the way placement spread first replicas (and a new topic is
        // writable after one round trip instead of an election timeout).
        let fresh = g.store.initial_commit().0 == 0 && g.store.last().0 == 0;
        if fresh && voters.first() == Some(&g.transport.me()) {
            if let Err(e) = g.replica.borrow_mut().campaign() {
                tracing::warn!(group = %g.name, error = %e, "campaign");
            }
            g.ready();
        }
        Ok(g)
    }

    /// Stops the store worker once its current round of I/O is over (bounded wait): an
    /// operation cut off mid-flight at shutdown could outlive the executor.
    pub async fn close_gracefully(&self) {
        for _ in 0..500 {
            if !self.store.is_busy() {
                break;
            }
            glommio::timer::sleep(std::time::Duration::from_millis(10)).await;
        }
        self.close();
    }

    /// Stops the store worker at once.
    pub fn close(&self) {
        if let Some(w) = self.worker.borrow_mut().take() {
            w.cancel();
        }
    }

    /// The log store (and through it the partition log).
    pub fn store(&self) -> &LogStore {
        &self.store
    }

    /// One clock tick.
    pub fn tick(&self) {
        self.replica.borrow_mut().tick();
        self.ready();
    }

    /// A message from a peer.
    pub fn step(&self, m: raft::prelude::Message) {
        // A message raft-rs refuses (stale, from an unknown peer) is dropped, as on a lossy
        // network.
        let _ = self.replica.borrow_mut().step(m);
        self.ready();
    }

    fn on_progress(&self, p: Progress) {
        {
            let mut r = self.replica.borrow_mut();
            if let Some(n) = p.persisted {
                let (t, id) = (&self.transport, self.id);
                r.on_persisted(n, |m| t.send(id, m));
            }
            for ctx in p.fetched {
                r.on_entries_fetched(ctx);
            }
        }
        self.ready();
    }

    /// Runs the Ready cycle and publishes what changed.
    fn ready(&self) {
        let (commit, leader, term) = {
            let mut r = self.replica.borrow_mut();
            let (t, id) = (&self.transport, self.id);
            if let Err(e) = r.handle_ready(|m| t.send(id, m), |_| {}) {
                super::fail_stop(&format!("raft group {}: {e}", self.name));
            }
            (r.commit_index(), r.leader(), r.term())
        };
        if leader != self.leader.get() {
            tracing::info!(group = %self.name, leader, term = term.0, "raft leader changed");
        }
        if leader == self.transport.me().0 && term.0 != self.term.get() {
            self.report_term.set(Some(term.0));
        }
        self.leader.set(leader);
        self.term.set(term.0);
        // A replica that installed a snapshot starts at the leader's log start.
        let start = self.store.log().start_offset();
        if start > self.hw.get() {
            self.hw.set(start);
        }
        match self.store.run_end_at_or_below(commit) {
            Some(end) => self.raise_hw(Offset(end.0 as i64)),
            None if Offset(commit.0 as i64) > self.hw.get() && !self.probing.replace(true) => {
                self.probe_hw(commit)
            }
            None => {}
        }
        // Waiters re-check their own condition (commit, leadership, the durable end for
        // acks=1), so every event wakes them.
        self.changed.notify();
    }

    fn raise_hw(&self, to: Offset) {
        let hw = to.min(self.store.log().end_offset());
        if hw > self.hw.get() {
            self.hw.set(hw);
        }
    }

    /// Reads the batch holding the commit point from disk to find the boundary below it.
    fn probe_hw(&self, commit: RaftIndex) {
        let weak = self.me.borrow().clone();
        glommio::spawn_local(async move {
            let Some(g) = weak.upgrade() else { return };
            let log = g.store.log().clone();
            let o = log_store::offset_of(commit);
            let r = log.read(o, 1, log.end_offset()).await;
            g.probing.set(false);
            if let Ok(batches) = r {
                if let Some(b) = batches.first() {
                    let h = BatchHeader::read(b);
                    let end = if h.last_offset() == o {
                        o.plus(1)
                    } else {
                        h.base_offset
                    };
                    g.raise_hw(end);
                    g.changed.notify();
                }
            }
        })
        .detach();
    }

    /// Has the controller record this replica's leadership, if it leads in a term not yet
    /// reported (run by the core's ticker; retried on the next tick after a failure).
    pub fn report_leadership(&self, shard: &Rc<crate::shard::Shard>) {
        let Some(term) = self.report_term.get() else {
            return;
        };
        if self.reporting.get() || self.id == super::METADATA_GROUP {
            return;
        }
        if !self.is_leader() || self.term.get() != term {
            self.report_term.set(None);
            return;
        }
        self.reporting.set(true);
        let (weak, shard) = (self.me.borrow().clone(), shard.clone());
        let (group, leader) = (self.id.0, self.transport.me().0 as i32);
        let epoch = i32::try_from(term).unwrap_or(i32::MAX);
        glommio::spawn_local(async move {
            let r = shard
                .invoke_on(crate::shard::ShardId(0), move |s| async move {
                    let c = s.controller.borrow().clone();
                    match c {
                        Some(c) => c
                            .report_leader(&s, group, leader, epoch)
                            .await
                            .map_err(|e| e.message),
                        None => Err("no controller".to_string()),
                    }
                })
                .await;
            let Some(g) = weak.upgrade() else { return };
            g.reporting.set(false);
            match r {
                Ok(Ok(())) => {
                    if g.report_term.get() == Some(term) {
                        g.report_term.set(None);
                    }
                }
                Ok(Err(e)) => tracing::debug!(group = %g.name, error = %e, "reporting leadership"),
                Err(e) => tracing::debug!(group = %g.name, error = %e, "reporting leadership"),
            }
        })
        .detach();
    }

    /// True while this replica leads.
    pub fn is_leader(&self) -> bool {
        self.replica.borrow().is_leader()
    }

    /// The leader's node id (0: none known).
    pub fn leader(&self) -> u64 {
        self.leader.get()
    }

    /// The current term (the partition's leader epoch).
    pub fn term(&self) -> RaftTerm {
        RaftTerm(self.term.get())
    }

    /// The term as a Kafka leader epoch.
    pub fn leader_epoch(&self) -> i32 {
        i32::try_from(self.term.get()).unwrap_or(i32::MAX)
    }

    /// The high watermark (see the module doc).
    pub fn high_watermark(&self) -> Offset {
        self.hw.get()
    }

    /// Proposes a batch this broker built itself (internal records).
    pub fn propose_built(&self, batch: BytesMut) -> Result<(Offset, Offset), KafkaError> {
        let b = CheckedBatch::check(batch)
            .map_err(|e| KafkaError::from(ringlog_storage::StorageError::from(e)))?;
        self.propose_batch(b)
    }

    /// Proposes one batch, stamped in place on the way; returns its first and last offset.
    /// Fails with NOT_LEADER_OR_FOLLOWER on a follower or a leader stepping down.
    pub fn propose_batch(&self, batch: CheckedBatch) -> Result<(Offset, Offset), KafkaError> {
        let h = batch.header();
        let records = usize::try_from(h.last_offset_delta).unwrap_or(0) + 1;
        let r = self
            .replica
            .borrow_mut()
            .propose_run(records, move |at, term| {
                let mut v = batch.into_inner();
                log_store::stamp_for_proposal(&mut v, at, term)?;
                Ok(v.freeze())
            });
        let (first, last) = match r {
            Ok(run) => run,
            Err(ReplicaError::Raft(raft::Error::ProposalDropped)) => {
                return Err(self.not_leader());
            }
            Err(e) => {
                return Err(KafkaError::new(
                    ResponseError::UnknownServerError,
                    format!("proposing to {}: {e}", self.name),
                ))
            }
        };
        self.ready();
        Ok((log_store::offset_of(first), log_store::offset_of(last)))
    }

    /// NOT_LEADER_OR_FOLLOWER, naming the leader when known.
    pub fn not_leader(&self) -> KafkaError {
        KafkaError::new(
            ResponseError::NotLeaderOrFollower,
            format!(
                "{} is led by broker {} (this is a follower)",
                self.name,
                self.leader.get()
            ),
        )
    }

    /// Waits until the batch proposed in `term` ending at `last` is committed (below the
    /// high watermark), or the deadline. Fails when leadership moved before that: the batch
    /// may have been overwritten (a retry is safe: idempotent producers are deduplicated).
    pub async fn wait_committed(
        &self,
        term: RaftTerm,
        first: Offset,
        last: Offset,
        deadline: std::time::Instant,
    ) -> Result<(), KafkaError> {
        let ok = self
            .changed
            .wait_until(deadline, || {
                self.hw.get() > last || self.term.get() != term.0 || !self.is_leader()
            })
            .await;
        if self.hw.get() > last {
            // Committed at that index: make sure it is our batch, not a later leader's.
            let t = self.store.log().term_at(first);
            if t.map(|t| t.0 as u64) == Some(term.0) {
                return Ok(());
            }
            return Err(self.not_leader());
        }
        if !ok {
            return Err(KafkaError::new(
                ResponseError::RequestTimedOut,
                format!("{}: not committed in time", self.name),
            ));
        }
        Err(self.not_leader())
    }

    /// Waits until this replica's log has every entry of its Raft log (a new leader's store
    /// may still be writing what it received as a follower).
    pub async fn wait_log_caught_up(&self, deadline: std::time::Instant) -> bool {
        self.changed
            .wait_until(deadline, || {
                let last: RaftIndex = self.replica.borrow().last_index();
                self.store.log().end_offset() >= log_store::offset_of(last).plus(1)
            })
            .await
    }
}
