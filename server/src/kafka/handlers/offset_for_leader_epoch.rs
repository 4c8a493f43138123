//! OffsetForLeaderEpoch: where a leader epoch ended, so a client (or a follower) that read
//! from a deposed leader can find where its data diverged and truncate (KIP-101, KIP-320).
//!
//! Answered by the partition's leader from its log's epoch list (the terms of its batches):
//! for the requested epoch, the largest epoch at or below it and the offset where the next
//! epoch starts (the log end for the current one). A `current_leader_epoch` that is older
//! than the leader's gets FENCED_LEADER_EPOCH, a newer one UNKNOWN_LEADER_EPOCH.

use std::rc::Rc;

use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::offset_for_leader_epoch_response::{
    EpochEndOffset, OffsetForLeaderTopicResult,
};
use kafka_protocol::messages::{OffsetForLeaderEpochRequest, OffsetForLeaderEpochResponse};

use super::find_topic;
use crate::kafka::errors::KafkaError;
use crate::shard::Shard;

/// Handles an OffsetForLeaderEpoch request.
pub async fn handle(
    shard: &Rc<Shard>,
    req: OffsetForLeaderEpochRequest,
) -> OffsetForLeaderEpochResponse {
    let mut topics = Vec::new();
    for t in req.topics {
        let meta = find_topic(shard, &t.topic.0, uuid::Uuid::nil());
        let mut parts = Vec::new();
        for p in t.partitions {
            let r = lookup(
                shard,
                meta.clone(),
                &t.topic.0,
                p.partition,
                p.current_leader_epoch,
                p.leader_epoch,
            )
            .await;
            let resp = EpochEndOffset::default().with_partition(p.partition);
            parts.push(match r {
                Ok((epoch, end)) => resp.with_leader_epoch(epoch).with_end_offset(end),
                Err(e) => resp
                    .with_error_code(e.code())
                    .with_leader_epoch(-1)
                    .with_end_offset(-1),
            });
        }
        topics.push(
            OffsetForLeaderTopicResult::default()
                .with_topic(t.topic)
                .with_partitions(parts),
        );
    }
    OffsetForLeaderEpochResponse::default().with_topics(topics)
}

async fn lookup(
    shard: &Rc<Shard>,
    meta: Option<std::sync::Arc<crate::metadata::TopicMeta>>,
    name: &str,
    partition: i32,
    current: i32,
    requested: i32,
) -> Result<(i32, i64), KafkaError> {
    super::on_partition(shard, meta, name, partition, move |p| async move {
        p.check_leader()?;
        let epoch = p.epoch();
        if current >= 0 && current < epoch {
            return Err(KafkaError::new(
                ResponseError::FencedLeaderEpoch,
                format!("epoch {current} is older than the leader's {epoch}"),
            ));
        }
        if current > epoch {
            return Err(KafkaError::new(
                ResponseError::UnknownLeaderEpoch,
                format!("epoch {current} is newer than the leader's {epoch}"),
            ));
        }
        let terms: Vec<(i32, i64)> = p.log.terms().iter().map(|(t, o)| (t.0, o.0)).collect();
        Ok(end_offset_for(
            &terms,
            requested,
            p.log.end_offset().0,
            epoch,
        ))
    })
    .await
}

/// Kafka's rule over the epoch list `(epoch, first offset)`: the largest epoch at or below
/// `requested` and the first offset of the epoch after it (`log_end` when there is none). A
/// requested epoch below every known one answers with it and the first known offset; the
/// current epoch (possibly without a batch yet) ends at the log end.
pub fn end_offset_for(
    terms: &[(i32, i64)],
    requested: i32,
    log_end: i64,
    current: i32,
) -> (i32, i64) {
    if requested < 0 {
        return (-1, -1);
    }
    if requested >= current {
        return (current.min(requested), log_end);
    }
    match terms.iter().position(|(e, _)| *e > requested) {
        Some(0) => (requested, terms[0].1),
        Some(i) => (terms[i - 1].0, terms[i].1),
        None => (terms.last().map_or(requested, |t| t.0), log_end),
    }
}

#[cfg(test)]
mod tests {
    use super::end_offset_for;

    #[test]
    fn kafka_epoch_rule() {
        let terms = [(1, 0), (3, 100), (4, 250)];
        assert_eq!(end_offset_for(&terms, 1, 300, 4), (1, 100));
        assert_eq!(end_offset_for(&terms, 2, 300, 4), (1, 100));
        assert_eq!(end_offset_for(&terms, 3, 300, 4), (3, 250));
        assert_eq!(end_offset_for(&terms, 4, 300, 4), (4, 300));
        assert_eq!(end_offset_for(&terms, 0, 300, 4), (0, 0));
        assert_eq!(end_offset_for(&terms, 5, 300, 5), (5, 300));
        assert_eq!(end_offset_for(&terms, -1, 300, 4), (-1, -1));
        assert_eq!(end_offset_for(&[], 0, 0, 0), (0, 0));
    }
}
