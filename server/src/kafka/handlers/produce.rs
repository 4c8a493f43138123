//! Produce: validate, route each partition to its owner core, append there, acknowledge once
//! durable (acks=1/all) or not at all (acks=0).
//!
//! All partitions of a request are produced concurrently; the response lists them in request
//! order. The owner core re-checks that it owns the partition when the job arrives.
//!
//! Two phases, so that a connection can pipeline while keeping Kafka's order: phase one
//! appends every batch of the request (offsets fixed) and fires [`Dispatched`], which lets the
//! connection start the next request; phase two waits until the batches are durable and
//! answers. Requests on one connection are therefore appended in the order they were sent,
//! while their fsyncs overlap (group commit).

use std::ops::Range;
use std::rc::Rc;
use std::sync::Arc;

use bytes::{Buf, Bytes, BytesMut};
use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::produce_response::{PartitionProduceResponse, TopicProduceResponse};
use kafka_protocol::messages::{
    ProduceRequest, ProduceResponse, RequestHeader, ResponseKind, TopicName, TransactionalId,
};
use kafka_protocol::protocol::StrBytes;

use super::{find_topic, Dispatched, Reply};
use crate::kafka::errors::KafkaError;
use crate::shard::Shard;

/// Takes the records of every partition of `req` out of the request frame, in request order,
/// as buffers the log can stamp in place (the batches are then neither copied to be stamped
/// nor checked twice).
///
/// The decoded request and header hold slices of `frame`; the small ones (names, the client
/// id) are copied to owned strings, unknown tagged fields (which nothing reads) are dropped,
/// and then `frame` is the only handle on its buffer, which is split into the record slices
/// without a copy. Should another handle remain, the records are copied instead.
pub fn take_records(
    header: &mut RequestHeader,
    req: &mut ProduceRequest,
    frame: Bytes,
) -> Vec<Option<BytesMut>> {
    let own = |s: &StrBytes| StrBytes::from_string(s.to_string());
    header.client_id = header.client_id.as_ref().map(own);
    header.unknown_tagged_fields.clear();
    req.transactional_id = req
        .transactional_id
        .as_ref()
        .map(|t| TransactionalId(own(&t.0)));
    req.unknown_tagged_fields.clear();
    let base = frame.as_ptr() as usize;
    let mut ranges = Vec::new();
    for t in &mut req.topic_data {
        t.name = TopicName(own(&t.name.0));
        t.unknown_tagged_fields.clear();
        for p in &mut t.partition_data {
            p.unknown_tagged_fields.clear();
            ranges.push(p.records.take().map(|r| {
                let start = r.as_ptr() as usize - base;
                start..start + r.len()
            }));
        }
    }
    let in_order = ranges
        .iter()
        .flatten()
        .try_fold(0, |end, r| (r.start >= end).then_some(r.end))
        .is_some();
    match frame.try_into_mut() {
        Ok(mut buf) if in_order => {
            let mut at = 0;
            ranges
                .into_iter()
                .map(|r| {
                    r.map(|r| {
                        buf.advance(r.start - at);
                        at = r.end;
                        buf.split_to(r.len())
                    })
                })
                .collect()
        }
        Ok(buf) => copy_ranges(&buf, ranges),
        Err(frame) => copy_ranges(&frame, ranges),
    }
}

fn copy_ranges(frame: &[u8], ranges: Vec<Option<Range<usize>>>) -> Vec<Option<BytesMut>> {
    ranges
        .into_iter()
        .map(|r| r.map(|r| BytesMut::from(&frame[r])))
        .collect()
}

/// Handles a Produce request whose records [`take_records`] took out.
pub async fn handle(
    shard: &Rc<Shard>,
    req: ProduceRequest,
    records: Vec<Option<BytesMut>>,
    _version: i16,
    mut dispatched: Dispatched,
) -> Reply {
    let acks = req.acks;
    let mut appended = Vec::new();
    let mut topics = Vec::with_capacity(req.topic_data.len());
    let mut work = Vec::new();
    let mut records = records.into_iter();
    for t in req.topic_data {
        let meta = find_topic(shard, &t.name.0, t.topic_id);
        let mut parts = Vec::with_capacity(t.partition_data.len());
        for p in t.partition_data {
            let slot = work.len();
            parts.push((p.index, slot));
            let (tx, rx) = futures::channel::oneshot::channel();
            appended.push(rx);
            let fut = produce_one(
                shard.clone(),
                meta.clone(),
                t.name.0.to_string(),
                p.index,
                records.next().flatten(),
                acks,
                tx,
            );
            work.push(fut);
        }
        topics.push((t.name, t.topic_id, parts));
    }
    let all = futures::future::join_all(work);
    futures::pin_mut!(all);
    // Phase one: every partition's batches have offsets (or failed); the connection may go on.
    let appended_all = futures::future::join_all(appended);
    let results = match futures::future::select(all, appended_all).await {
        futures::future::Either::Left((results, _)) => results,
        futures::future::Either::Right((_, all)) => {
            dispatched.fire();
            all.await
        }
    };
    dispatched.fire();
    if acks == 0 {
        return Reply::None;
    }
    let responses = topics
        .into_iter()
        .map(|(name, id, parts)| {
            let partition_responses = parts
                .into_iter()
                .map(|(index, slot)| {
                    let r = PartitionProduceResponse::default()
                        .with_index(index)
                        .with_log_append_time_ms(-1);
                    match &results[slot] {
                        Ok((base, start)) => {
                            r.with_base_offset(*base).with_log_start_offset(*start)
                        }
                        Err(e) => r
                            .with_error_code(e.code())
                            .with_error_message(Some(StrBytes::from_string(e.message.clone())))
                            .with_base_offset(-1)
                            .with_log_start_offset(-1),
                    }
                })
                .collect();
            TopicProduceResponse::default()
                .with_name(TopicName(name.0))
                .with_topic_id(id)
                .with_partition_responses(partition_responses)
        })
        .collect();
    super::respond(ResponseKind::Produce(
        ProduceResponse::default().with_responses(responses),
    ))
}

async fn produce_one(
    shard: Rc<Shard>,
    meta: Option<Arc<crate::metadata::TopicMeta>>,
    name: String,
    partition: i32,
    records: Option<BytesMut>,
    acks: i16,
    appended: futures::channel::oneshot::Sender<()>,
) -> Result<(i64, i64), KafkaError> {
    if !matches!(acks, -1..=1) {
        return Err(KafkaError::new(
            ResponseError::InvalidRequiredAcks,
            format!("acks={acks} is not -1, 0 or 1"),
        ));
    }
    let meta = meta.ok_or_else(|| KafkaError::unknown_partition(&name, partition))?;
    let owner = usize::try_from(partition)
        .ok()
        .and_then(|i| meta.partitions.get(i))
        .map(|p| shard.owner_core(p))
        .ok_or_else(|| KafkaError::unknown_partition(&meta.name, partition))?;
    let records =
        records.ok_or_else(|| KafkaError::new(ResponseError::CorruptMessage, "no records"))?;
    let topic = meta.name.clone();
    let r = shard
        .invoke_on(owner, move |s| async move {
            let Some(p) = s.partition(&topic, partition) else {
                return Err(KafkaError::new(
                    ResponseError::NotLeaderOrFollower,
                    format!("{topic}-{partition} is not on this core"),
                ));
            };
            let base = p.produce(records, acks, appended).await?;
            Ok((base.0, p.log.start_offset().0))
        })
        .await;
    match r {
        Ok(r) => r,
        Err(e) => Err(KafkaError::new(
            ResponseError::NotLeaderOrFollower,
            e.to_string(),
        )),
    }
}
