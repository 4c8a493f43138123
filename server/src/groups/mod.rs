//! Group coordination: each consumer group lives on the core that owns its partition of the
//! internal compacted topic `__consumer_offsets`, chosen as Kafka chooses it
//! (`abs(javaHashCode(group)) % partitions`).
//!
//! Runs on the coordinator core only: a request for a group that arrives on another core is
//! sent there over the mesh (`with_group`). The core keeps the groups of the partitions it owns
//! in memory ([`Coordinator`]); every change that must survive a restart (membership after a
//! rebalance, committed offsets, deletions) is appended to the group's partition and flushed
//! before the request is answered. A partition's groups are rebuilt by replaying that
//! partition's log the first time a request needs them, so a restart loses no committed offset
//! and no group. Raft (issue #6) replicates `__consumer_offsets` like any partition, so the
//! same replay makes a new leader the coordinator.
//!
//! Record format (key and value are JSON, one record per change; a null value deletes):
//! - key `{"type":"group","group":G}`, value [`state::GroupRecord`];
//! - key `{"type":"offset","group":G,"topic":T,"partition":P}`, value [`state::Committed`].
//!
//! Compaction keeps the latest value per key. Transactions will add the transaction
//! coordinator's own records (keyed by transactional id) in a second internal topic, and
//! transactional offset commits as pending offsets here, made visible by the commit marker.

pub mod state;

use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, HashMap};
use std::rc::Rc;
use std::time::{Duration, Instant};

use kafka_protocol::error::ResponseError;
use ringlog_storage::batch::{self, build::NewRecord};
use ringlog_storage::sync::LocalSemaphore;
use serde::{Deserialize, Serialize};

use crate::kafka::errors::KafkaError;
use crate::metadata::controller::NewTopic;
use crate::shard::Shard;
use state::{Committed, Group, GroupRecord, Timing};

/// The internal topic's name.
pub const OFFSETS_TOPIC: &str = "__consumer_offsets";

/// A record to append: key, and value (None: a tombstone).
pub type KeyValue = (Vec<u8>, Option<Vec<u8>>);

/// How often each coordinator core expires sessions and completes overdue rebalances.
const TICK_MS: u64 = 100;

/// Kafka's `String.hashCode` of the group id (UTF-16 code units, wrapping), made non-negative
/// as `Utils.abs` does, modulo the partition count.
pub fn partition_for(group: &str, partitions: i32) -> i32 {
    let mut h: i32 = 0;
    for u in group.encode_utf16() {
        h = h.wrapping_mul(31).wrapping_add(u as i32);
    }
    let abs = if h == i32::MIN { 0 } else { h.abs() };
    abs % partitions.max(1)
}

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[serde(tag = "type", rename_all = "lowercase")]
enum Key {
    Group {
        group: String,
    },
    Offset {
        group: String,
        topic: String,
        partition: i32,
    },
}

impl Key {
    fn encode(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("keys always encode")
    }
}

/// The groups of the `__consumer_offsets` partitions one core owns.
#[derive(Default)]
pub struct Coordinator {
    /// Groups by id (only groups whose partition this core owns).
    pub groups: RefCell<HashMap<String, Group>>,
    /// Partitions replayed, with the Raft term they were replayed in (0 on a single node): a
    /// replica that leads again in a later term replays again (it was a follower between).
    loaded: RefCell<HashMap<i32, u64>>,
    loading: RefCell<Option<Rc<LocalSemaphore>>>,
    ticking: Cell<bool>,
}

/// The timing rules from the broker config.
pub fn timing(shard: &Shard) -> Timing {
    let g = &shard.config.groups;
    Timing {
        session_timeout_ms_min: g.min_session_timeout_ms,
        session_timeout_ms_max: g.max_session_timeout_ms,
        initial_rebalance_delay_ms: g.initial_rebalance_delay_ms,
    }
}

/// Makes sure `__consumer_offsets` exists; returns its partition count.
pub async fn ensure_offsets_topic(shard: &Rc<Shard>) -> Result<i32, KafkaError> {
    if let Some(t) = shard.image().topics.get(OFFSETS_TOPIC) {
        return Ok(t.partitions.len() as i32);
    }
    let partitions = shard.config.groups.offsets_topic_partitions;
    let mut configs = BTreeMap::new();
    configs.insert("cleanup.policy".to_string(), "compact".to_string());
    // Small segments: compaction works on sealed segments, and each partition preallocates
    // its segment up front.
    configs.insert("segment.bytes".to_string(), (8u64 << 20).to_string());
    let topic = NewTopic {
        name: OFFSETS_TOPIC.to_string(),
        partitions,
        replication_factor: -1,
        configs,
    };
    let results =
        crate::kafka::handlers::admin::create_topics_via_controller(shard, vec![topic], false)
            .await;
    match results.into_iter().next() {
        Some(Ok(_)) => {}
        Some(Err(e)) if e.error == ResponseError::TopicAlreadyExists => {}
        Some(Err(e)) => return Err(e),
        None => {
            return Err(KafkaError::new(
                ResponseError::CoordinatorNotAvailable,
                "creating __consumer_offsets gave no result",
            ))
        }
    }
    shard
        .image()
        .topics
        .get(OFFSETS_TOPIC)
        .map(|t| t.partitions.len() as i32)
        .ok_or_else(|| {
            KafkaError::new(
                ResponseError::CoordinatorNotAvailable,
                "__consumer_offsets is not there yet",
            )
        })
}

/// Runs `f` on the coordinator core of `group` with its partition loaded. The closure gets the
/// coordinator core's shard and the group's partition.
pub async fn with_group<T, F, Fut>(shard: &Rc<Shard>, group: String, unavailable: T, f: F) -> T
where
    T: Send + 'static,
    F: FnOnce(Rc<Shard>, i32) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = T> + 'static,
{
    let n = match ensure_offsets_topic(shard).await {
        Ok(n) => n,
        Err(e) => {
            tracing::warn!(error = %e.message, "group request without __consumer_offsets");
            return unavailable;
        }
    };
    let p = partition_for(&group, n);
    let Some(owner) = shard.owner_of(OFFSETS_TOPIC, p) else {
        return unavailable;
    };
    let r = shard
        .invoke_on(owner, move |s| async move {
            if let Err(e) = ensure_loaded(&s, p).await {
                tracing::warn!(partition = p, error = %e.message, "loading groups");
                return None;
            }
            Some(f(s, p).await)
        })
        .await;
    match r {
        Ok(Some(v)) => v,
        _ => unavailable,
    }
}

/// Replays partition `p` of `__consumer_offsets` into this core's groups, once.
pub async fn ensure_loaded(shard: &Rc<Shard>, p: i32) -> Result<(), KafkaError> {
    // Just after the topic is created, the image may name this core before it finished
    // opening the partition: wait for it (bounded), then let the client retry.
    let mut waited = 0;
    let part = loop {
        if let Some(part) = shard.partition(OFFSETS_TOPIC, p) {
            break part;
        }
        if waited >= 50 {
            return Err(KafkaError::new(
                ResponseError::CoordinatorLoadInProgress,
                format!("{OFFSETS_TOPIC}-{p} is not open on this core yet"),
            ));
        }
        waited += 1;
        glommio::timer::sleep(Duration::from_millis(100)).await;
    };
    // In a cluster only the leader of the group's partition coordinates.
    let term = match &part.raft {
        Some(g) if !g.is_leader() => {
            return Err(KafkaError::new(
                ResponseError::NotCoordinator,
                format!("{OFFSETS_TOPIC}-{p} is led by broker {}", g.leader()),
            ))
        }
        Some(g) => g.term().0,
        None => 0,
    };
    if shard.groups.loaded.borrow().get(&p) == Some(&term) {
        return Ok(());
    }
    let lock = shard
        .groups
        .loading
        .borrow_mut()
        .get_or_insert_with(|| LocalSemaphore::new(1))
        .clone();
    let _one = lock.acquire(1).await;
    if shard.groups.loaded.borrow().get(&p) == Some(&term) {
        return Ok(());
    }
    if let Some(g) = &part.raft {
        // A new leader: its log must hold everything it received, and its first entry of the
        // term must be committed (which commits every earlier one) before the replay.
        let deadline = Instant::now() + Duration::from_secs(5);
        let caught_up = g.wait_log_caught_up(deadline).await
            && g.changed
                .wait_until(deadline, || g.high_watermark() >= part.log.end_offset())
                .await;
        if !caught_up {
            return Err(KafkaError::new(
                ResponseError::CoordinatorLoadInProgress,
                format!("{OFFSETS_TOPIC}-{p}: the new leader is catching up"),
            ));
        }
        // What this core knew of the partition's groups is stale (it was a follower).
        let n = shard
            .image()
            .topics
            .get(OFFSETS_TOPIC)
            .map_or(1, |t| t.partitions.len() as i32);
        shard
            .groups
            .groups
            .borrow_mut()
            .retain(|name, _| partition_for(name, n) != p);
    }
    let now = Instant::now();
    let end = part.log.end_offset();
    let mut at = part.log.start_offset();
    let mut groups_seen = 0usize;
    while at < end {
        let batches = part.log.read(at, 4 << 20, end).await?;
        let Some(last) = batches.last() else { break };
        at = batch::BatchHeader::read(last).last_offset().plus(1);
        for b in batches {
            let parsed = batch::Batch::parse(b)
                .map_err(|e| KafkaError::from(ringlog_storage::StorageError::from(e)))?;
            for r in batch::records(&parsed)
                .map_err(|e| KafkaError::from(ringlog_storage::StorageError::from(e)))?
            {
                let Some(key) = r
                    .key
                    .as_deref()
                    .and_then(|k| serde_json::from_slice::<Key>(k).ok())
                else {
                    continue;
                };
                apply(
                    &mut shard.groups.groups.borrow_mut(),
                    key,
                    r.value.as_deref(),
                    now,
                );
                groups_seen += 1;
            }
        }
    }
    shard.groups.loaded.borrow_mut().insert(p, term);
    tracing::info!(
        partition = p,
        records = groups_seen,
        "loaded group coordinator partition"
    );
    start_ticker(shard);
    Ok(())
}

fn apply(groups: &mut HashMap<String, Group>, key: Key, value: Option<&[u8]>, now: Instant) {
    match key {
        Key::Group { group } => {
            match value.and_then(|v| serde_json::from_slice::<GroupRecord>(v).ok()) {
                Some(rec) => groups
                    .entry(group.clone())
                    .or_insert_with(|| Group::new(&group))
                    .restore(rec, now),
                None => {
                    groups.remove(&group);
                }
            }
        }
        Key::Offset {
            group,
            topic,
            partition,
        } => match value.and_then(|v| serde_json::from_slice::<Committed>(v).ok()) {
            Some(c) => {
                groups
                    .entry(group.clone())
                    .or_insert_with(|| Group::new(&group))
                    .offsets
                    .insert((topic, partition), c);
            }
            None => {
                if let Some(g) = groups.get_mut(&group) {
                    g.offsets.remove(&(topic, partition));
                }
            }
        },
    }
}

/// Appends records to partition `p` and makes them durable.
pub async fn persist(
    shard: &Rc<Shard>,
    p: i32,
    records: Vec<(Vec<u8>, Option<Vec<u8>>)>,
) -> Result<(), KafkaError> {
    if records.is_empty() {
        return Ok(());
    }
    let part = shard.partition(OFFSETS_TOPIC, p).ok_or_else(|| {
        KafkaError::new(
            ResponseError::NotCoordinator,
            format!("{OFFSETS_TOPIC}-{p} is not on this core"),
        )
    })?;
    let records: Vec<NewRecord> = records
        .into_iter()
        .map(|(k, v)| NewRecord {
            key: Some(k),
            value: v,
        })
        .collect();
    part.append_internal(&records).await
}

/// The membership record of `group` as a (key, value) to persist.
pub fn group_record(g: &Group) -> (Vec<u8>, Option<Vec<u8>>) {
    let key = Key::Group {
        group: g.id.clone(),
    }
    .encode();
    let value = serde_json::to_vec(&g.record()).expect("group records always encode");
    (key, Some(value))
}

/// An offset record (or its tombstone).
pub fn offset_record(
    group: &str,
    topic: &str,
    partition: i32,
    c: Option<&Committed>,
) -> (Vec<u8>, Option<Vec<u8>>) {
    let key = Key::Offset {
        group: group.to_string(),
        topic: topic.to_string(),
        partition,
    }
    .encode();
    (
        key,
        c.map(|c| serde_json::to_vec(c).expect("offsets always encode")),
    )
}

/// A group deletion: tombstones for its membership and every offset.
pub fn deletion_records(g: &Group) -> Vec<(Vec<u8>, Option<Vec<u8>>)> {
    let mut out = vec![(
        Key::Group {
            group: g.id.clone(),
        }
        .encode(),
        None,
    )];
    for (t, p) in g.offsets.keys() {
        out.push(offset_record(&g.id, t, *p, None));
    }
    out
}

/// Persists the membership of `group` if it still exists (after a state change).
pub async fn persist_group(shard: &Rc<Shard>, p: i32, group: &str) -> Result<(), KafkaError> {
    let rec = shard.groups.groups.borrow().get(group).map(group_record);
    match rec {
        Some(r) => persist(shard, p, vec![r]).await,
        None => Ok(()),
    }
}

fn start_ticker(shard: &Rc<Shard>) {
    if shard.groups.ticking.replace(true) {
        return;
    }
    let s = shard.clone();
    glommio::spawn_local(async move {
        let retention_ms = s
            .config
            .groups
            .offsets_retention_minutes
            .saturating_mul(60_000);
        loop {
            glommio::timer::sleep(Duration::from_millis(TICK_MS)).await;
            if crate::shard::runtime::stopping() {
                return;
            }
            let now = Instant::now();
            let now_ms = state::now_ms();
            let mut writes: Vec<(String, Vec<KeyValue>)> = Vec::new();
            {
                let mut groups = s.groups.groups.borrow_mut();
                let mut dead = Vec::new();
                for (id, g) in groups.iter_mut() {
                    let mut changed = false;
                    g.tick(now, &mut changed);
                    if changed {
                        writes.push((id.clone(), vec![group_record(g)]));
                    }
                    // Offsets of a group empty for longer than the retention expire.
                    if g.state == state::State::Empty
                        && g.empty_since_ms.is_some_and(|t| now_ms - t > retention_ms)
                        && !g.offsets.is_empty()
                    {
                        writes.push((id.clone(), deletion_records(g)));
                        dead.push(id.clone());
                    }
                }
                for id in dead {
                    groups.remove(&id);
                }
            }
            for (id, recs) in writes {
                let n = s
                    .image()
                    .topics
                    .get(OFFSETS_TOPIC)
                    .map(|t| t.partitions.len() as i32);
                let Some(n) = n else { continue };
                if let Err(e) = persist(&s, partition_for(&id, n), recs).await {
                    tracing::warn!(group = %id, error = %e.message, "persisting group state");
                }
            }
        }
    })
    .detach();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partition_matches_kafka() {
        // Java: Math.abs("my-group".hashCode()) % 50 and friends.
        assert_eq!(partition_for("", 50), 0);
        let h = "my-group"
            .encode_utf16()
            .fold(0i32, |h, u| h.wrapping_mul(31).wrapping_add(u as i32));
        assert_eq!(partition_for("my-group", 50), h.abs() % 50);
        for g in ["a", "group-1", "çé", "x".repeat(300).as_str()] {
            let p = partition_for(g, 50);
            assert!((0..50).contains(&p));
        }
    }

    #[test]
    fn keys_are_stable_bytes() {
        let k = Key::Offset {
            group: "g".into(),
            topic: "t".into(),
            partition: 3,
        };
        assert_eq!(
            String::from_utf8(k.encode()).unwrap(),
            r#"{"type":"offset","group":"g","topic":"t","partition":3}"#
        );
    }

    #[test]
    fn replay_applies_upserts_and_tombstones() {
        let mut groups = HashMap::new();
        let now = Instant::now();
        let (k, v) = offset_record(
            "g",
            "t",
            0,
            Some(&Committed {
                offset: 5,
                leader_epoch: -1,
                metadata: None,
                commit_timestamp_ms: 1,
            }),
        );
        apply(
            &mut groups,
            serde_json::from_slice(&k).unwrap(),
            v.as_deref(),
            now,
        );
        assert_eq!(groups["g"].offsets[&("t".to_string(), 0)].offset, 5);
        let (k, v) = offset_record("g", "t", 0, None);
        apply(
            &mut groups,
            serde_json::from_slice(&k).unwrap(),
            v.as_deref(),
            now,
        );
        assert!(groups["g"].offsets.is_empty());
    }
}
