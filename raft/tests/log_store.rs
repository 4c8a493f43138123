//! Three replicas of one group, each over a real partition log (O_DIRECT segments in its own
//! directory), driven on one glommio executor with an in-memory network the test controls.
//! Checks the Raft-log mapping end to end: committed batches land at the same offsets with the
//! same bytes on every replica, a deposed leader's uncommitted tail is truncated, a follower
//! far behind catches up through cold reads (a tiny batch cache), and a restarted replica
//! reopens from its files and rejoins.

use std::cell::RefCell;
use std::collections::VecDeque;
use std::path::Path;
use std::rc::Rc;
use std::time::Duration;

use glommio::{LocalExecutorBuilder, Placement};
use raft::prelude::Message;
use ringlog_raft::log_store::{self, LogStore, Progress};
use ringlog_raft::replica::{Replica, Timing};
use ringlog_raft::types::{NodeId, RaftIndex};
use ringlog_storage::batch::build::{encode_batch, NewRecord};
use ringlog_storage::batch::BatchHeader;
use ringlog_storage::{BatchCache, Log, LogConfig, Offset, StorageLimits, SystemClock};

const TIMING: Timing = Timing {
    election_ticks: 10,
    heartbeat_ticks: 2,
};

struct Node {
    id: u64,
    replica: Option<Replica<LogStore>>,
    store: Option<LogStore>,
    events: Rc<RefCell<VecDeque<Progress>>>,
    worker: Option<glommio::task::JoinHandle<()>>,
}

fn limits() -> StorageLimits {
    StorageLimits {
        write_buffer_bytes: 64 * 1024,
        write_buffers_in_flight_max: 4,
        read_chunk_bytes: 16 * 1024,
        cache_bytes_max: 32 * 1024,
        compaction_map_bytes_max: 1 << 20,
        preallocate_step_bytes: 256 * 1024,
        recycled_segments_per_log_max: 1,
    }
}

async fn open_node(dir: &Path, id: u64) -> Node {
    let limits = limits();
    let cache = BatchCache::new(limits.cache_bytes_max);
    let config = LogConfig {
        segment_bytes: 256 * 1024,
        ..LogConfig::default()
    };
    let log = Rc::new(
        Log::open(
            &dir.join(format!("n{id}")),
            config,
            limits,
            cache,
            Rc::new(SystemClock),
        )
        .await
        .expect("open log"),
    );
    let voters = [NodeId(1), NodeId(2), NodeId(3)];
    let store = LogStore::open(log, dir.join(format!("n{id}.state")), &voters, &[])
        .await
        .expect("open store");
    let replica =
        Replica::new(NodeId(id), store.clone(), store.initial_commit(), TIMING).expect("replica");
    let events = Rc::new(RefCell::new(VecDeque::new()));
    let (s, ev) = (store.clone(), events.clone());
    let worker = glommio::spawn_local(async move {
        loop {
            match s.work().await {
                Ok(p) => ev.borrow_mut().push_back(p),
                Err(e) => panic!("store worker: {e}"),
            }
        }
    })
    .detach();
    Node {
        id,
        replica: Some(replica),
        store: Some(store),
        events,
        worker: Some(worker),
    }
}

struct Cluster {
    nodes: Vec<Node>,
    net: VecDeque<Message>,
    /// Nodes cut off from every other node.
    isolated: Vec<u64>,
    rounds: u64,
}

impl Cluster {
    fn node(&mut self, id: u64) -> &mut Node {
        &mut self.nodes[(id - 1) as usize]
    }

    /// One round: deliver messages, tick, handle store progress, run Ready cycles, then let
    /// the store workers run.
    async fn round(&mut self, tick: bool) {
        let mut out: Vec<Message> = Vec::new();
        self.rounds += 1;
        let rounds = self.rounds;
        let msgs: Vec<Message> = self.net.drain(..).collect();
        for m in msgs {
            if self.isolated.contains(&m.from) || self.isolated.contains(&m.to) {
                continue;
            }
            let n = self.node(m.to);
            if let Some(r) = n.replica.as_mut() {
                let _ = r.step(m);
            }
        }
        for n in &mut self.nodes {
            let Some(r) = n.replica.as_mut() else {
                continue;
            };
            // Replicas' clocks run at different rates (raft-rs's election timeout is pinned),
            // so elections do not split forever.
            if tick && rounds % (n.id + 2) != 0 {
                r.tick();
            }
            let events: Vec<Progress> = n.events.borrow_mut().drain(..).collect();
            for p in events {
                if let Some(num) = p.persisted {
                    r.on_persisted(num, |m| out.push(m));
                }
                for ctx in p.fetched {
                    r.on_entries_fetched(ctx);
                }
            }
            r.handle_ready(|m| out.push(m), |_| {}).expect("ready");
        }
        self.net.extend(out);
        glommio::timer::sleep(Duration::from_millis(1)).await;
    }

    fn leader(&self) -> Option<u64> {
        self.nodes
            .iter()
            .filter(|n| !self.isolated.contains(&n.id))
            .find(|n| n.replica.as_ref().is_some_and(|r| r.is_leader()))
            .map(|n| n.id)
    }

    async fn wait_leader(&mut self) -> u64 {
        for i in 0..3000 {
            if let Some(l) = self.leader() {
                return l;
            }
            self.round(i % 2 == 0).await;
        }
        panic!("no leader elected");
    }

    /// Proposes a batch of `records` records on `id`; returns its run.
    fn propose(&mut self, id: u64, records: usize, tag: u32) -> (RaftIndex, RaftIndex) {
        let recs: Vec<NewRecord> = (0..records)
            .map(|i| NewRecord {
                key: Some(format!("k{tag}").into_bytes()),
                value: Some(format!("value {tag} {i} {}", "x".repeat(200)).into_bytes()),
            })
            .collect();
        let r = self.node(id).replica.as_mut().expect("alive");
        r.propose_run(records, |at, term| {
            let mut b = encode_batch(&recs, 1_700_000_000_000);
            log_store::stamp_for_proposal(&mut b, at, term)?;
            Ok(b.freeze())
        })
        .expect("propose")
    }

    fn commit(&self, id: u64) -> RaftIndex {
        self.nodes[(id - 1) as usize]
            .replica
            .as_ref()
            .map_or(RaftIndex(0), |r| r.commit_index())
    }

    async fn run_until(&mut self, what: &str, mut done: impl FnMut(&Cluster) -> bool) {
        for i in 0..20_000 {
            if done(self) {
                return;
            }
            self.round(i % 3 == 0).await;
        }
        panic!("timed out waiting for {what}");
    }
}

async fn all_batches(log: &Log) -> Vec<bytes::Bytes> {
    let mut out = Vec::new();
    let mut at = log.start_offset();
    let end = log.end_offset();
    while at < end {
        let got = log.read(at, 1 << 20, end).await.expect("read");
        let Some(last) = got.last() else { break };
        at = BatchHeader::read(last).last_offset().plus(1);
        out.extend(got);
    }
    out
}

#[test]
fn replicas_over_partition_logs_agree_after_failures() {
    let dir = tempfile::tempdir_in("/tmp").expect("tempdir");
    let path = dir.path().to_path_buf();
    LocalExecutorBuilder::new(Placement::Unbound)
        .io_memory(2 << 20)
        .spawn(move || async move {
            let mut c = Cluster {
                nodes: vec![
                    open_node(&path, 1).await,
                    open_node(&path, 2).await,
                    open_node(&path, 3).await,
                ],
                net: VecDeque::new(),
                isolated: Vec::new(),
                rounds: 0,
            };
            let mut tag = 0u32;
            let mut acknowledged: Vec<(RaftIndex, RaftIndex)> = Vec::new();

            // 1. A leader takes 40 batches of 1..20 records; all commit.
            let l1 = c.wait_leader().await;
            let mut runs = Vec::new();
            for i in 0..40 {
                tag += 1;
                runs.push(c.propose(l1, 1 + (i * 7) % 20, tag));
                if i % 5 == 0 {
                    c.round(false).await;
                }
            }
            let last = runs.last().expect("runs").1;
            c.run_until("first commits", |c| (1..=3).all(|n| c.commit(n) >= last))
                .await;
            acknowledged.extend(runs);

            // 2. One follower is cut off while 120 more batches commit: far more than the
            // 32 KiB cache holds, so it catches up later from disk.
            let lagging = (1..=3).find(|n| *n != l1).expect("follower");
            c.isolated = vec![lagging];
            let mut runs = Vec::new();
            for i in 0..120 {
                tag += 1;
                runs.push(c.propose(l1, 1 + (i * 3) % 11, tag));
                c.round(false).await;
            }
            let last = runs.last().expect("runs").1;
            c.run_until("commits without the lagging follower", |c| {
                c.commit(l1) >= last
            })
            .await;
            acknowledged.extend(runs);

            // 3. The leader is cut off and takes batches that can never commit; the other two
            // elect a new leader, which overwrites them.
            c.isolated = vec![l1];
            let mut doomed_tags = Vec::new();
            for _ in 0..10 {
                tag += 1;
                c.propose(l1, 5, tag);
                doomed_tags.push(tag);
            }
            let l2 = c.wait_leader().await;
            assert_ne!(l1, l2);
            let mut runs = Vec::new();
            for i in 0..20 {
                tag += 1;
                runs.push(c.propose(l2, 1 + i % 4, tag));
                c.round(false).await;
            }
            let last = runs.last().expect("runs").1;
            c.run_until("commits on the new leader", |c| c.commit(l2) >= last)
                .await;
            acknowledged.extend(runs);

            // 4. Everyone is back; a replica restarts from its files.
            c.isolated.clear();
            let restart = (1..=3).find(|n| *n != l2).expect("follower");
            {
                let n = c.node(restart);
                n.replica = None;
                n.store = None;
                if let Some(w) = n.worker.take() {
                    w.cancel();
                }
            }
            for _ in 0..20 {
                c.round(true).await;
            }
            let fresh = open_node(&path, restart).await;
            c.nodes[(restart - 1) as usize] = fresh;
            let leader = c.wait_leader().await;
            tag += 1;
            let final_run = c.propose(leader, 3, tag);
            acknowledged.push(final_run);
            c.run_until("convergence", |c| {
                (1..=3).all(|n| {
                    c.commit(n) >= final_run.1
                        && c.nodes[(n - 1) as usize].store.as_ref().is_some_and(|s| {
                            s.log().flushed_end_offset().0 as u64 >= final_run.1 .0
                        })
                })
            })
            .await;

            // Every replica's log is byte-identical and holds every acknowledged batch at its
            // offsets; the deposed leader's doomed batches are gone.
            let mut logs = Vec::new();
            for n in &c.nodes {
                let s = n.store.as_ref().expect("store");
                logs.push(all_batches(s.log()).await);
            }
            assert_eq!(logs[0], logs[1], "replicas 1 and 2 differ");
            assert_eq!(logs[1], logs[2], "replicas 2 and 3 differ");
            let by_base: std::collections::BTreeMap<i64, &bytes::Bytes> = logs[0]
                .iter()
                .map(|b| (BatchHeader::read(b).base_offset.0, b))
                .collect();
            for (first, last) in &acknowledged {
                let o = log_store::offset_of(*first);
                let b = by_base
                    .get(&o.0)
                    .unwrap_or_else(|| panic!("acknowledged batch at offset {o} is missing"));
                assert_eq!(
                    BatchHeader::read(b).last_offset(),
                    log_store::offset_of(*last)
                );
            }
            // Offsets are dense: every offset belongs to exactly one batch.
            let mut next = Offset(0);
            for b in &logs[0] {
                let h = BatchHeader::read(b);
                assert_eq!(h.base_offset, next, "gap or overlap in offsets");
                next = h.last_offset().plus(1);
            }
            let noops = logs[0]
                .iter()
                .filter(|b| BatchHeader::read(b).is_control())
                .count();
            assert!(noops >= 2, "each leader's no-op entry is a control batch");
            let stats: Vec<_> = c
                .nodes
                .iter()
                .map(|n| n.store.as_ref().expect("store").stats())
                .collect();
            assert!(
                stats[(l2 - 1) as usize].cold_reads + stats[(l1 - 1) as usize].cold_reads > 0,
                "the lagging follower caught up without a cold read: {stats:?}"
            );
            assert!(
                stats[(l1 - 1) as usize].truncations > 0 || restart == l1,
                "the deposed leader's tail was not truncated: {stats:?}"
            );
            eprintln!("store stats: {stats:?}");
            for t in doomed_tags {
                let needle = format!("value {t} 0 ");
                for b in &logs[0] {
                    assert!(
                        !b.windows(needle.len()).any(|w| w == needle.as_bytes()),
                        "an uncommitted batch of the deposed leader survived (tag {t})"
                    );
                }
            }
            for n in &mut c.nodes {
                n.replica = None;
                n.store = None;
                if let Some(w) = n.worker.take() {
                    w.cancel();
                }
            }
        })
        .expect("spawn executor")
        .join()
        .expect("executor thread");
}
