//! ListOffsets: earliest (-2), latest (-1, the high watermark), or by timestamp.

use std::rc::Rc;

use kafka_protocol::messages::list_offsets_response::{
    ListOffsetsPartitionResponse, ListOffsetsTopicResponse,
};
use kafka_protocol::messages::{ListOffsetsRequest, ListOffsetsResponse};

use super::find_topic;
use crate::kafka::errors::KafkaError;
use crate::shard::Shard;

/// Handles a ListOffsets request.
pub async fn handle(
    shard: &Rc<Shard>,
    req: ListOffsetsRequest,
    version: i16,
) -> ListOffsetsResponse {
    let mut topics = Vec::new();
    for t in req.topics {
        let meta = find_topic(shard, &t.name.0, uuid::Uuid::nil());
        let mut parts = Vec::new();
        for p in t.partitions {
            let index = p.partition_index;
            let r = lookup(shard, meta.clone(), &t.name.0, index, p.timestamp).await;
            let resp = ListOffsetsPartitionResponse::default().with_partition_index(index);
            parts.push(match r {
                Ok((offset, ts, epoch)) => {
                    let resp = resp.with_offset(offset).with_timestamp(ts);
                    // leader_epoch exists from v4; the codec refuses it earlier.
                    if version >= 4 {
                        resp.with_leader_epoch(epoch)
                    } else {
                        resp
                    }
                }
                Err(e) => resp
                    .with_error_code(e.code())
                    .with_offset(-1)
                    .with_timestamp(-1),
            });
        }
        topics.push(
            ListOffsetsTopicResponse::default()
                .with_name(t.name)
                .with_partitions(parts),
        );
    }
    ListOffsetsResponse::default().with_topics(topics)
}

async fn lookup(
    shard: &Rc<Shard>,
    meta: Option<std::sync::Arc<crate::metadata::TopicMeta>>,
    name: &str,
    partition: i32,
    timestamp: i64,
) -> Result<(i64, i64, i32), KafkaError> {
    super::on_partition(shard, meta, name, partition, move |p| async move {
        let (offset, ts) = p.offset_for(timestamp).await?;
        Ok((offset.0, ts, p.epoch()))
    })
    .await
}
