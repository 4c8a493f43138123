//! A deterministic simulator for Raft groups: seeded network, clock and crashes.
//!
//! Everything random comes from one seeded generator and every collection is ordered, so a
//! seed replays exactly; a failing check panics with the seed (`RAFT_SIM_SEED=<seed>` reruns
//! it). The disk is raft-rs's `MemStorage` behind [`SimStore`]: what a replica persisted in its
//! Ready cycle survives its crash, everything else (its `RawNode`, unpersisted state, messages
//! in flight to it) is lost.
//!
//! What is checked, at every step and at the end:
//! - an index that was ever applied with some data is never applied with other data by any
//!   replica, and each replica applies increasing indexes (nothing lost or reordered);
//! - after the network heals and crashed replicas restart, every replica of a group applies
//!   the same sequence, which contains every entry any replica ever applied (convergence).

use std::cell::RefCell;
use std::collections::{BTreeMap, BinaryHeap, VecDeque};
use std::rc::Rc;

use raft::prelude::{ConfState, Entry, HardState, Message, Snapshot};
use raft::storage::MemStorage;
use raft::{GetEntriesContext, RaftState, Storage};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::replica::{Applied, Durable, Replica, ReplicaError, Timing};
use crate::transport::{self, TransportLimits};
use crate::types::{GroupId, NodeId, RaftIndex};

/// What survives a crash: the entries, hard state and configuration whose writes completed.
#[derive(Clone, Debug, Default)]
struct DurableState {
    conf: ConfState,
    hs: HardState,
    entries: Vec<Entry>,
}

/// A write in flight on the simulated disk.
struct PendingWrite {
    number: u64,
    done_at: u64,
    entries: Vec<Entry>,
    hs: Option<HardState>,
}

/// The simulated disk of one replica: writes become visible at once and durable after a
/// seeded latency, in order; a crash loses the writes still in flight.
#[derive(Default)]
pub struct SimDisk {
    durable: DurableState,
    pending: VecDeque<PendingWrite>,
    /// The simulated time, and the latency the next write gets (set by the simulator).
    now: u64,
    latency: u64,
    last_done_at: u64,
}

impl SimDisk {
    fn apply(durable: &mut DurableState, w: &PendingWrite) {
        if let Some(first) = w.entries.first() {
            durable.entries.retain(|e| e.index < first.index);
            durable.entries.extend(w.entries.iter().cloned());
        }
        if let Some(hs) = &w.hs {
            durable.hs = hs.clone();
        }
    }

    /// Completes the writes due by `now`; returns the last completed Ready number.
    fn complete(&mut self, now: u64) -> Option<u64> {
        let mut last = None;
        while self.pending.front().is_some_and(|w| w.done_at <= now) {
            if let Some(w) = self.pending.pop_front() {
                Self::apply(&mut self.durable, &w);
                last = Some(w.number);
            }
        }
        last
    }
}

/// A replica's log as raft-rs sees it (`MemStorage`, the visible state) over its [`SimDisk`]
/// (what is durable). After a crash the visible state is rebuilt from the durable one.
#[derive(Clone)]
pub struct SimStore {
    mem: MemStorage,
    disk: Rc<RefCell<SimDisk>>,
}

impl SimStore {
    /// A fresh disk for a group of `voters`.
    pub fn new(voters: &[u64]) -> SimStore {
        let conf = ConfState::from((voters.to_vec(), vec![]));
        let disk = SimDisk {
            durable: DurableState {
                conf: conf.clone(),
                ..DurableState::default()
            },
            ..SimDisk::default()
        };
        SimStore {
            mem: MemStorage::new_with_conf_state(conf),
            disk: Rc::new(RefCell::new(disk)),
        }
    }

    /// The store after a crash: in-flight writes are gone; what raft-rs sees is exactly what
    /// was durable.
    fn after_crash(&self) -> SimStore {
        let mut disk = self.disk.borrow_mut();
        disk.pending.clear();
        let d = disk.durable.clone();
        let mem = MemStorage::new_with_conf_state(d.conf.clone());
        {
            let mut w = mem.wl();
            // Rebuilding from our own durable copy can not fail.
            w.append(&d.entries)
                .expect("durable entries are contiguous");
            w.set_hardstate(d.hs.clone());
        }
        SimStore {
            mem,
            disk: self.disk.clone(),
        }
    }
}

impl Storage for SimStore {
    fn initial_state(&self) -> raft::Result<RaftState> {
        self.mem.initial_state()
    }
    fn entries(
        &self,
        low: u64,
        high: u64,
        max_size: impl Into<Option<u64>>,
        context: GetEntriesContext,
    ) -> raft::Result<Vec<Entry>> {
        self.mem.entries(low, high, max_size, context)
    }
    fn term(&self, idx: u64) -> raft::Result<u64> {
        self.mem.term(idx)
    }
    fn first_index(&self) -> raft::Result<u64> {
        self.mem.first_index()
    }
    fn last_index(&self) -> raft::Result<u64> {
        self.mem.last_index()
    }
    fn snapshot(&self, request_index: u64, to: u64) -> raft::Result<Snapshot> {
        self.mem.snapshot(request_index, to)
    }
}

impl Durable for SimStore {
    fn write(
        &mut self,
        number: u64,
        snapshot: Option<&Snapshot>,
        entries: &[Entry],
        hs: Option<&HardState>,
    ) -> Result<(), ReplicaError> {
        if snapshot.is_some() {
            // The simulation never compacts, so no replica is ever sent a snapshot.
            return Err(ReplicaError::Persist("snapshots are not simulated".into()));
        }
        {
            let mut w = self.mem.wl();
            if !entries.is_empty() {
                w.append(entries)
                    .map_err(|e| ReplicaError::Persist(e.to_string()))?;
            }
            if let Some(hs) = hs {
                w.set_hardstate(hs.clone());
            }
        }
        let mut disk = self.disk.borrow_mut();
        let done_at = (disk.now + disk.latency).max(disk.last_done_at);
        disk.last_done_at = done_at;
        disk.pending.push_back(PendingWrite {
            number,
            done_at,
            entries: entries.to_vec(),
            hs: hs.cloned(),
        });
        Ok(())
    }
}

/// Knobs of one simulation.
#[derive(Clone, Debug)]
pub struct SimConfig {
    pub groups: usize,
    pub replicas: u64,
    /// Simulated milliseconds with faults, then the healing phase.
    pub fault_ms: u64,
    pub heal_ms_max: u64,
    /// A replica ticks every `tick_ms` (plus jitter).
    pub tick_ms: u64,
    pub delay_ms_max: u64,
    pub drop_probability: f64,
    /// Per replica per millisecond.
    pub crash_probability: f64,
    pub restart_after_ms_max: u64,
    /// Per millisecond: isolate one replica for a while.
    pub partition_probability: f64,
    pub partition_ms_max: u64,
    /// Per group per millisecond: a client proposal to whoever leads.
    pub propose_probability: f64,
    /// A write becomes durable 0..=this many ms after it was issued (in order).
    pub disk_latency_ms_max: u64,
}

impl Default for SimConfig {
    fn default() -> Self {
        SimConfig {
            groups: 3,
            replicas: 3,
            fault_ms: 3_000,
            heal_ms_max: 20_000,
            tick_ms: 10,
            delay_ms_max: 12,
            drop_probability: 0.03,
            crash_probability: 0.000_2,
            restart_after_ms_max: 400,
            partition_probability: 0.001,
            partition_ms_max: 600,
            propose_probability: 0.2,
            disk_latency_ms_max: 3,
        }
    }
}

struct Node {
    store: SimStore,
    replica: Option<Replica<SimStore>>,
    down_until: u64,
    next_tick: u64,
    applied: Vec<Applied>,
}

/// An envelope on the simulated wire: every message due from one replica id to another, of
/// every group, encoded with the real transport format.
#[derive(PartialEq, Eq)]
struct InFlight {
    at: u64,
    seq: u64,
    envelope: Vec<u8>,
    to: u64,
}

impl Ord for InFlight {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        // Earliest first (BinaryHeap is a max-heap).
        (other.at, other.seq).cmp(&(self.at, self.seq))
    }
}

impl PartialOrd for InFlight {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

/// What a simulation did, for reporting.
#[derive(Debug, Default, Clone)]
pub struct SimReport {
    pub proposed: u64,
    pub committed: u64,
    pub crashes: u64,
    pub partitions: u64,
    pub dropped: u64,
    pub heal_ms: u64,
}

const TIMING: Timing = Timing {
    election_ticks: 10,
    heartbeat_ticks: 2,
};

/// Runs one seeded simulation; panics (with the seed) when a check fails.
pub fn run(seed: u64, cfg: &SimConfig) -> SimReport {
    let fail = |what: String| -> ! {
        panic!("raft simulation failed with seed {seed}: {what} (rerun: RAFT_SIM_SEED={seed})")
    };
    assert!(
        cfg.tick_ms > 0
            && cfg.delay_ms_max > 0
            && cfg.partition_ms_max > 0
            && cfg.restart_after_ms_max > 0
            && cfg.replicas > 0,
        "simulation intervals must be positive"
    );
    // ChaCha, reproducible for a seed within rand 0.8 (the lockfile pins it).
    let mut rng = StdRng::seed_from_u64(seed);
    let voters: Vec<u64> = (1..=cfg.replicas).collect();
    let mut groups: Vec<BTreeMap<u64, Node>> = (0..cfg.groups)
        .map(|_| {
            voters
                .iter()
                .map(|&id| {
                    let store = SimStore::new(&voters);
                    let replica = Replica::new(NodeId(id), store.clone(), RaftIndex(0), TIMING)
                        .unwrap_or_else(|e| fail(format!("creating replica: {e}")));
                    (
                        id,
                        Node {
                            store,
                            replica: Some(replica),
                            down_until: 0,
                            next_tick: 0,
                            applied: Vec::new(),
                        },
                    )
                })
                .collect()
        })
        .collect();
    // The data first applied at each index, per group.
    let mut history: Vec<BTreeMap<u64, Vec<u8>>> = vec![BTreeMap::new(); cfg.groups];
    let mut net: BinaryHeap<InFlight> = BinaryHeap::new();
    let mut wire: BTreeMap<(u64, u64), Vec<(GroupId, Message)>> = BTreeMap::new();
    let mut seq = 0u64;
    let mut isolated: Option<(u64, u64)> = None; // (replica id, until)
    let mut report = SimReport::default();
    let mut next_value = 0u64;
    let end_ms = cfg.fault_ms + cfg.heal_ms_max;
    let mut now = 0u64;
    while now < end_ms {
        let faults = now < cfg.fault_ms;
        if isolated.is_some_and(|(_, until)| now >= until) || !faults {
            isolated = None;
        }
        if faults && isolated.is_none() && rng.gen_bool(cfg.partition_probability) {
            isolated = Some((
                1 + rng.gen_range(0..cfg.replicas),
                now + 1 + rng.gen_range(0..cfg.partition_ms_max),
            ));
            report.partitions += 1;
        }
        for (g, nodes) in groups.iter_mut().enumerate() {
            let mut outbox: Vec<Message> = Vec::new();
            // Crashes and restarts.
            for (&id, n) in nodes.iter_mut() {
                if n.replica.is_none() && (now >= n.down_until || !faults) {
                    n.store = n.store.after_crash();
                    n.replica = Some(
                        Replica::new(NodeId(id), n.store.clone(), RaftIndex(0), TIMING)
                            .unwrap_or_else(|e| fail(format!("restarting {id}: {e}"))),
                    );
                    // It re-applies the committed log from the start.
                    n.applied.clear();
                    n.next_tick = now + rng.gen_range(0..cfg.tick_ms);
                } else if faults && n.replica.is_some() && rng.gen_bool(cfg.crash_probability) {
                    n.replica = None;
                    // Writes in flight are lost with the process.
                    n.store.disk.borrow_mut().pending.clear();
                    n.down_until = now + 1 + rng.gen_range(0..cfg.restart_after_ms_max);
                    report.crashes += 1;
                }
            }
            // Ticks, with jitter so that election timeouts differ.
            for n in nodes.values_mut() {
                if let Some(r) = n.replica.as_mut() {
                    if now >= n.next_tick {
                        r.tick();
                        n.next_tick = now + cfg.tick_ms + rng.gen_range(0..cfg.tick_ms / 2 + 1);
                    }
                }
            }
            // Client proposals go to whoever thinks it leads.
            if rng.gen_bool(cfg.propose_probability) {
                if let Some(r) = nodes
                    .values_mut()
                    .filter_map(|n| n.replica.as_mut())
                    .find(|r| r.is_leader())
                {
                    let v = format!("g{g}-v{next_value}").into_bytes();
                    next_value += 1;
                    if r.propose(v).is_ok() {
                        report.proposed += 1;
                    }
                }
            }
            // Ready cycles; check every applied entry against the history.
            for (&id, n) in nodes.iter_mut() {
                let Some(r) = n.replica.as_mut() else {
                    continue;
                };
                let done = {
                    let mut disk = n.store.disk.borrow_mut();
                    disk.now = now;
                    disk.latency = rng.gen_range(0..cfg.disk_latency_ms_max + 1);
                    disk.complete(now)
                };
                if let Some(number) = done {
                    r.on_persisted(number, |m| outbox.push(m));
                }
                let mut applied = Vec::new();
                r.handle_ready(|m| outbox.push(m), |a| applied.push(a))
                    .unwrap_or_else(|e| fail(format!("group {g} replica {id}: {e}")));
                for a in applied {
                    if let Some(last) = n.applied.last() {
                        if a.index <= last.index {
                            fail(format!(
                                "group {g} replica {id} applied index {} after {}",
                                a.index, last.index
                            ));
                        }
                    }
                    match history[g].get(&a.index.0) {
                        Some(d) if *d != a.data => fail(format!(
                            "group {g} replica {id} applied {:?} at index {}, which held {:?}",
                            String::from_utf8_lossy(&a.data),
                            a.index,
                            String::from_utf8_lossy(d)
                        )),
                        Some(_) => {}
                        None => {
                            history[g].insert(a.index.0, a.data.clone());
                            report.committed += 1;
                        }
                    }
                    n.applied.push(a);
                }
            }
            for m in outbox {
                wire.entry((m.from, m.to))
                    .or_default()
                    .push((GroupId(g as u64), m));
            }
        }
        // One envelope per pair of replica ids per millisecond, for all groups at once (the
        // way brokers batch heartbeats); a drop or a partition loses the whole envelope.
        for ((from, to), msgs) in std::mem::take(&mut wire) {
            let cut = isolated.is_some_and(|(i, _)| i == from || i == to);
            if cut || (faults && rng.gen_bool(cfg.drop_probability)) {
                report.dropped += msgs.len() as u64;
                continue;
            }
            seq += 1;
            net.push(InFlight {
                at: now + 1 + rng.gen_range(0..cfg.delay_ms_max),
                seq,
                envelope: transport::encode(NodeId(from), NodeId(to), &msgs),
                to,
            });
        }
        // Deliver what is due; messages to a crashed replica are lost.
        while net.peek().is_some_and(|m| m.at <= now) {
            let Some(m) = net.pop() else { break };
            let (_, _, msgs) = transport::decode(&m.envelope, &TransportLimits::default())
                .unwrap_or_else(|e| fail(format!("the simulator's own envelope: {e}")));
            for (g, msg) in msgs {
                if let Some(r) = groups
                    .get_mut(g.0 as usize)
                    .and_then(|nodes| nodes.get_mut(&m.to))
                    .and_then(|n| n.replica.as_mut())
                {
                    // Stale or unexpected messages are refused by raft-rs; not a failure.
                    let _ = r.step(msg);
                }
            }
        }
        // After the faults: stop once every replica applied the whole history.
        if !faults && converged(&groups, &history) {
            report.heal_ms = now - cfg.fault_ms;
            return report;
        }
        now += 1;
    }
    fail(format!(
        "replicas did not converge within {} ms of healing",
        cfg.heal_ms_max
    ))
}

fn converged(groups: &[BTreeMap<u64, Node>], history: &[BTreeMap<u64, Vec<u8>>]) -> bool {
    groups.iter().zip(history).all(|(nodes, h)| {
        let want: Vec<(u64, &Vec<u8>)> = h.iter().map(|(i, d)| (*i, d)).collect();
        let leader_ok = nodes
            .values()
            .filter_map(|n| n.replica.as_ref())
            .any(|r| r.is_leader());
        leader_ok
            && nodes.values().all(|n| {
                n.replica.is_some()
                    && n.applied.len() == want.len()
                    && n.applied
                        .iter()
                        .zip(&want)
                        .all(|(a, (i, d))| a.index.0 == *i && a.data == **d)
            })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_quiet_cluster_elects_and_commits() {
        let cfg = SimConfig {
            groups: 1,
            fault_ms: 500,
            drop_probability: 0.0,
            crash_probability: 0.0,
            partition_probability: 0.0,
            ..SimConfig::default()
        };
        let r = run(1, &cfg);
        assert!(r.committed > 10, "{r:?}");
    }
}
