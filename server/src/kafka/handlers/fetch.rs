//! Fetch: read from owner cores, long-poll until `min_bytes` or `max_wait_ms`.
//!
//! The connection's core groups partitions by owner core and sends each owner one read job.
//! If fewer than `min_bytes` came back and time remains, it sends each owner a wait job that
//! returns as soon as one of its partitions' high watermark moves past the fetch position
//! (woken by the append path on that core) or at the deadline, then reads again once.
//!
//! Fetch sessions (KIP-227) are not offered: the response's session id is 0, which makes
//! clients send full fetches, and a request naming a session gets FETCH_SESSION_ID_NOT_FOUND.

use std::collections::BTreeMap;
use std::rc::Rc;
use std::time::Instant;

use bytes::{Bytes, BytesMut};
use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::fetch_response::{FetchableTopicResponse, PartitionData};
use kafka_protocol::messages::{FetchRequest, FetchResponse, ResponseKind, TopicName};
use kafka_protocol::protocol::StrBytes;
use ringlog_storage::Offset;

use super::{find_topic, Reply};
use crate::kafka::errors::KafkaError;
use crate::partition::fetch_deadline;
use crate::shard::{Shard, ShardId};

/// One partition to read.
#[derive(Clone, Debug)]
struct Item {
    slot: usize,
    topic: String,
    partition: i32,
    offset: i64,
    max_bytes: usize,
}

/// What one partition read gave.
#[derive(Clone, Debug, Default)]
struct ItemResult {
    error: Option<KafkaError>,
    high_watermark: i64,
    log_start_offset: i64,
    records: Vec<Bytes>,
}

impl ItemResult {
    fn size(&self) -> usize {
        self.records.iter().map(Bytes::len).sum()
    }
}

/// Handles a Fetch request.
pub async fn handle(shard: &Rc<Shard>, req: FetchRequest, _version: i16) -> Reply {
    if req.session_id != 0 {
        let resp = FetchResponse::default()
            .with_error_code(ResponseError::FetchSessionIdNotFound.code())
            .with_session_id(0);
        return super::respond(ResponseKind::Fetch(resp));
    }
    let response_max = req.max_bytes.max(0) as usize;
    let mut layout = Vec::new();
    let mut results: Vec<ItemResult> = Vec::new();
    let mut by_owner: BTreeMap<ShardId, Vec<Item>> = BTreeMap::new();
    for t in req.topics {
        let meta = find_topic(shard, &t.topic.0, t.topic_id);
        let mut slots = Vec::new();
        for p in t.partitions {
            let slot = results.len();
            slots.push((p.partition, slot));
            results.push(ItemResult::default());
            let owner = meta.as_ref().and_then(|m| {
                usize::try_from(p.partition)
                    .ok()
                    .and_then(|i| m.partitions.get(i))
                    .map(|x| (m.name.clone(), shard.owner_core(x)))
            });
            match owner {
                Some((name, owner)) => by_owner.entry(owner).or_default().push(Item {
                    slot,
                    topic: name,
                    partition: p.partition,
                    offset: p.fetch_offset,
                    max_bytes: (p.partition_max_bytes.max(0) as usize).min(response_max.max(1)),
                }),
                None => {
                    let code = if t.topic.0.is_empty() {
                        KafkaError::new(ResponseError::UnknownTopicId, "unknown topic id")
                    } else {
                        KafkaError::unknown_partition(&t.topic.0, p.partition)
                    };
                    results[slot].error = Some(code);
                }
            }
        }
        let name = meta
            .as_ref()
            .map(|m| m.name.clone())
            .unwrap_or_else(|| t.topic.0.to_string());
        layout.push((name, t.topic_id, slots));
    }
    let deadline = fetch_deadline(req.max_wait_ms, shard.config.limits.fetch_wait_ms_max);
    read_all(shard, &by_owner, &mut results).await;
    let total: usize = results.iter().map(ItemResult::size).sum();
    if total < req.min_bytes.max(0) as usize && Instant::now() < deadline && !by_owner.is_empty() {
        wait_any(shard, &by_owner, &results, deadline).await;
        read_all(shard, &by_owner, &mut results).await;
    }
    let responses = layout
        .into_iter()
        .map(|(name, id, slots)| {
            let partitions = slots
                .into_iter()
                .map(|(index, slot)| partition_data(index, std::mem::take(&mut results[slot])))
                .collect();
            FetchableTopicResponse::default()
                .with_topic(TopicName(StrBytes::from_string(name)))
                .with_topic_id(id)
                .with_partitions(partitions)
        })
        .collect();
    super::respond(ResponseKind::Fetch(
        FetchResponse::default()
            .with_session_id(0)
            .with_responses(responses),
    ))
}

fn partition_data(index: i32, r: ItemResult) -> PartitionData {
    let d = PartitionData::default()
        .with_partition_index(index)
        .with_preferred_read_replica(kafka_protocol::messages::BrokerId(-1))
        .with_aborted_transactions(Some(Vec::new()));
    if let Some(e) = r.error {
        return d
            .with_error_code(e.code())
            .with_high_watermark(-1)
            .with_last_stable_offset(-1)
            .with_log_start_offset(-1)
            .with_records(Some(Bytes::new()));
    }
    let records = match r.records.len() {
        0 => Bytes::new(),
        1 => r.records.into_iter().next().unwrap_or_default(),
        _ => {
            let mut all = BytesMut::with_capacity(r.records.iter().map(Bytes::len).sum());
            for b in &r.records {
                all.extend_from_slice(b);
            }
            all.freeze()
        }
    };
    d.with_high_watermark(r.high_watermark)
        .with_last_stable_offset(r.high_watermark)
        .with_log_start_offset(r.log_start_offset)
        .with_records(Some(records))
}

/// Reads every item from its owner core, filling `results` (errors stay).
async fn read_all(
    shard: &Rc<Shard>,
    by_owner: &BTreeMap<ShardId, Vec<Item>>,
    results: &mut [ItemResult],
) {
    let jobs = by_owner.iter().map(|(owner, items)| {
        let items = items.clone();
        shard.invoke_on(*owner, move |s| async move {
            let mut out = Vec::with_capacity(items.len());
            for it in items {
                out.push((it.slot, read_one(&s, &it).await));
            }
            out
        })
    });
    for r in futures::future::join_all(jobs).await {
        match r {
            Ok(items) => {
                for (slot, res) in items {
                    results[slot] = res;
                }
            }
            Err(e) => tracing::warn!(error = %e, "fetch read"),
        }
    }
}

async fn read_one(s: &Shard, it: &Item) -> ItemResult {
    let Some(p) = s.partition(&it.topic, it.partition) else {
        return ItemResult {
            error: Some(KafkaError::new(
                ResponseError::NotLeaderOrFollower,
                "not on this core",
            )),
            ..ItemResult::default()
        };
    };
    match p.read(Offset(it.offset), it.max_bytes.max(1)).await {
        Ok(d) => ItemResult {
            error: None,
            high_watermark: d.high_watermark.0,
            log_start_offset: d.log_start_offset.0,
            records: d.batches,
        },
        Err(e) => ItemResult {
            error: Some(e),
            high_watermark: p.high_watermark().0,
            log_start_offset: p.log.start_offset().0,
            records: Vec::new(),
        },
    }
}

/// Waits until any partition gets data past its fetch position, or the deadline.
async fn wait_any(
    shard: &Rc<Shard>,
    by_owner: &BTreeMap<ShardId, Vec<Item>>,
    results: &[ItemResult],
    deadline: Instant,
) {
    let waits: Vec<_> = by_owner
        .iter()
        .map(|(owner, items)| {
            let items: Vec<Item> = items
                .iter()
                .filter(|it| results[it.slot].error.is_none())
                .cloned()
                .collect();
            Box::pin(shard.invoke_on(*owner, move |s| async move {
                let waits = items.iter().filter_map(|it| {
                    let p = s.partition(&it.topic, it.partition)?;
                    let offset = Offset(it.offset);
                    Some(Box::pin(
                        async move { p.wait_for_data(offset, deadline).await },
                    ))
                });
                let waits: Vec<_> = waits.collect();
                if waits.is_empty() {
                    let now = Instant::now();
                    if deadline > now {
                        glommio::timer::sleep(deadline - now).await;
                    }
                    return;
                }
                let _ = futures::future::select_all(waits).await;
            }))
        })
        .collect();
    if !waits.is_empty() {
        let _ = futures::future::select_all(waits).await;
    }
}
