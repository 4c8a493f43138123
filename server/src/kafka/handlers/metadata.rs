//! Metadata: brokers, topics, partitions and their leaders; auto topic creation.

use std::rc::Rc;

use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::metadata_response::{
    MetadataResponseBroker, MetadataResponsePartition, MetadataResponseTopic,
};
use kafka_protocol::messages::{BrokerId, MetadataRequest, MetadataResponse, TopicName};
use kafka_protocol::protocol::StrBytes;

use super::admin::create_topics_via_controller;
use crate::metadata::controller::NewTopic;
use crate::metadata::TopicMeta;
use crate::shard::Shard;

/// Handles a Metadata request.
pub async fn handle(shard: &Rc<Shard>, req: MetadataRequest, version: i16) -> MetadataResponse {
    let auto_create =
        shard.config.auto_create_topics && (version < 4 || req.allow_auto_topic_creation);
    // Without ACLs every operation is allowed; report that when asked (v8+), else Kafka's
    // "not requested" value.
    let topic_ops = if version >= 8 && req.include_topic_authorized_operations {
        TOPIC_OPERATIONS
    } else {
        i32::MIN
    };
    let cluster_ops = if (8..=10).contains(&version) && req.include_cluster_authorized_operations {
        CLUSTER_OPERATIONS
    } else {
        i32::MIN
    };
    let node = BrokerId(shard.config.node_id);
    // Which topics: all (None), or those named (by name or id).
    let wanted: Option<Vec<(Option<String>, uuid::Uuid)>> = req.topics.map(|ts| {
        ts.into_iter()
            .map(|t| (t.name.map(|n| n.0.to_string()), t.topic_id))
            .collect()
    });
    if auto_create {
        if let Some(w) = &wanted {
            let img = shard.image();
            let missing: Vec<NewTopic> = w
                .iter()
                .filter_map(|(n, _)| n.clone())
                .filter(|n| !img.topics.contains_key(n) && !n.is_empty())
                .filter(|n| crate::metadata::controller::validate_topic_name(n).is_ok())
                .map(|name| NewTopic {
                    name,
                    partitions: -1,
                    replication_factor: -1,
                    configs: Default::default(),
                })
                .collect();
            if !missing.is_empty() {
                for r in create_topics_via_controller(shard, missing, false).await {
                    if let Err(e) = r {
                        if e.error != ResponseError::TopicAlreadyExists {
                            tracing::warn!(error = %e.message, "auto topic creation");
                        }
                    }
                }
            }
        }
    }
    let img = shard.image();
    let topics: Vec<MetadataResponseTopic> = match wanted {
        None => img
            .topics
            .values()
            .map(|t| topic_entry(t, node, topic_ops))
            .collect(),
        Some(w) => w
            .into_iter()
            .map(|(name, id)| {
                let found = match &name {
                    Some(n) => img.topics.get(n).cloned(),
                    None => img.ids.get(&id).and_then(|n| img.topics.get(n).cloned()),
                };
                match found {
                    Some(t) => topic_entry(&t, node, topic_ops),
                    None => {
                        let code = match &name {
                            Some(n)
                                if crate::metadata::controller::validate_topic_name(n).is_err() =>
                            {
                                ResponseError::InvalidTopicException
                            }
                            Some(_) => ResponseError::UnknownTopicOrPartition,
                            None => ResponseError::UnknownTopicId,
                        };
                        MetadataResponseTopic::default()
                            .with_error_code(code.code())
                            .with_name(name.map(|n| TopicName(StrBytes::from_string(n))))
                            .with_topic_id(id)
                    }
                }
            })
            .collect(),
    };
    let (host, port) = &shard.advertised;
    MetadataResponse::default()
        .with_brokers(vec![MetadataResponseBroker::default()
            .with_node_id(node)
            .with_host(StrBytes::from_string(host.clone()))
            .with_port(*port as i32)])
        .with_cluster_id(Some(StrBytes::from_string(img.cluster_id.clone())))
        .with_controller_id(node)
        .with_topics(topics)
        .with_cluster_authorized_operations(cluster_ops)
}

/// Bits of Kafka's AclOperation codes allowed on a topic: READ 3, WRITE 4, CREATE 5, DELETE 6,
/// ALTER 7, DESCRIBE 8, DESCRIBE_CONFIGS 10, ALTER_CONFIGS 11.
const TOPIC_OPERATIONS: i32 =
    (1 << 3) | (1 << 4) | (1 << 5) | (1 << 6) | (1 << 7) | (1 << 8) | (1 << 10) | (1 << 11);
/// On the cluster: CREATE 5, ALTER 7, DESCRIBE 8, CLUSTER_ACTION 9, DESCRIBE_CONFIGS 10,
/// ALTER_CONFIGS 11, IDEMPOTENT_WRITE 12.
const CLUSTER_OPERATIONS: i32 =
    (1 << 5) | (1 << 7) | (1 << 8) | (1 << 9) | (1 << 10) | (1 << 11) | (1 << 12);

fn topic_entry(t: &TopicMeta, node: BrokerId, ops: i32) -> MetadataResponseTopic {
    let partitions = t
        .partitions
        .iter()
        .enumerate()
        .map(|(i, p)| {
            MetadataResponsePartition::default()
                .with_partition_index(i as i32)
                .with_leader_id(node)
                .with_leader_epoch(p.leader_epoch)
                .with_replica_nodes(vec![node])
                .with_isr_nodes(vec![node])
        })
        .collect();
    MetadataResponseTopic::default()
        .with_name(Some(TopicName(StrBytes::from_string(t.name.clone()))))
        .with_topic_id(t.id)
        .with_is_internal(t.is_internal())
        .with_partitions(partitions)
        .with_topic_authorized_operations(ops)
}
