//! The metadata image: the state the metadata log describes, as every core reads it.
//!
//! Immutable once built: the controller builds the next image by applying a record to a copy
//! and broadcasts it; cores swap their `Arc`. Applying is a pure function, so replaying the log
//! at start rebuilds exactly the image the broker served.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use ringlog_storage::LogConfig;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::records::MetadataRecord;
use crate::shard::ShardId;

/// One partition's placement.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartitionMeta {
    /// The core that owns the partition (on a broker with fewer cores: this modulo its count).
    pub shard: ShardId,
    /// Leader epoch on a single node (0). In a cluster the Raft group's term is the epoch.
    pub leader_epoch: i32,
    /// Brokers holding a replica (cluster mode); empty on a single node, where the partition
    /// is not replicated.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub replicas: Vec<u64>,
    /// The partition's Raft group (cluster mode; 0 on a single node).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub group: u64,
}

fn is_zero(v: &u64) -> bool {
    *v == 0
}

impl PartitionMeta {
    /// The core of a broker with `shard_count` cores that owns this partition.
    pub fn owner(&self, shard_count: usize) -> ShardId {
        ShardId((self.shard.0 as usize % shard_count.max(1)) as u16)
    }

    /// True when the partition is replicated by Raft (cluster mode).
    pub fn is_replicated(&self) -> bool {
        !self.replicas.is_empty()
    }
}

/// A registered broker (cluster mode).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BrokerMeta {
    /// Host Kafka clients use.
    pub host: String,
    /// Port Kafka clients use.
    pub port: u16,
    /// Broker-to-broker address (core 0).
    pub rpc: String,
    /// Cores (0: not recorded).
    pub cores: u16,
    /// Core 0 is kept for the controller.
    pub dedicated: bool,
    /// Not heard from by the active controller within the session timeout.
    pub fenced: bool,
}

/// A topic.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TopicMeta {
    /// Name.
    pub name: String,
    /// Id (Produce v13 and Fetch v13 name topics by id).
    pub id: Uuid,
    /// Partitions by index.
    pub partitions: Vec<PartitionMeta>,
    /// Config overrides by Kafka name.
    pub configs: BTreeMap<String, String>,
}

impl TopicMeta {
    /// The log config: broker defaults with this topic's overrides.
    pub fn log_config(&self, defaults: &LogConfig) -> LogConfig {
        let mut c = defaults.clone();
        for (k, v) in &self.configs {
            // Overrides were validated before they were written.
            let _ = c.set(k, v);
        }
        c
    }

    /// Internal topics (leading `__`) are reported with `is_internal`.
    pub fn is_internal(&self) -> bool {
        self.name.starts_with("__")
    }
}

/// The whole image.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MetadataImage {
    /// Bumped by every applied record.
    pub version: u64,
    /// Cluster id.
    pub cluster_id: String,
    /// Topics by name.
    pub topics: BTreeMap<String, Arc<TopicMeta>>,
    /// Topic names by id.
    pub ids: HashMap<Uuid, String>,
    /// First producer id not yet handed out.
    pub next_producer_id: i64,
    /// Raft group of each replicated partition: topic and partition index.
    pub groups: HashMap<u64, (String, i32)>,
    /// First Raft group id not yet used (partition groups start at 1; 0 is the metadata log's).
    pub next_group: u64,
    /// Registered brokers by node id (cluster mode), with their liveness.
    pub brokers: BTreeMap<i32, BrokerMeta>,
    /// The last reported leader and epoch of each partition's Raft group (cluster mode).
    pub leaders: HashMap<u64, (i32, i32)>,
}

impl MetadataImage {
    /// The image after `record`. Records that do not apply (a replayed duplicate) leave it as is.
    pub fn apply(&self, record: &MetadataRecord) -> MetadataImage {
        let mut next = self.clone();
        next.version += 1;
        match record {
            MetadataRecord::ClusterIdSet { cluster_id } => {
                // The first one wins: two controllers of successive terms may both propose one.
                if next.cluster_id.is_empty() {
                    next.cluster_id = cluster_id.clone();
                }
            }
            MetadataRecord::TopicCreated {
                name,
                id,
                partitions,
                configs,
            } => {
                next.ids.insert(*id, name.clone());
                next.topics.insert(
                    name.clone(),
                    Arc::new(TopicMeta {
                        name: name.clone(),
                        id: *id,
                        partitions: partitions.clone(),
                        configs: configs.clone(),
                    }),
                );
            }
            MetadataRecord::TopicDeleted { name } => {
                if let Some(t) = next.topics.remove(name) {
                    next.ids.remove(&t.id);
                    for p in &t.partitions {
                        next.groups.remove(&p.group);
                        next.leaders.remove(&p.group);
                    }
                }
            }
            MetadataRecord::PartitionsAdded { name, partitions } => {
                if let Some(t) = next.topics.get(name) {
                    let mut t = (**t).clone();
                    t.partitions.extend(partitions.iter().cloned());
                    next.topics.insert(name.clone(), Arc::new(t));
                }
            }
            MetadataRecord::ConfigsSet { name, configs } => {
                if let Some(t) = next.topics.get(name) {
                    let mut t = (**t).clone();
                    t.configs = configs.clone();
                    next.topics.insert(name.clone(), Arc::new(t));
                }
            }
            MetadataRecord::ProducerIdsAllocated { end } => {
                next.next_producer_id = next.next_producer_id.max(*end);
            }
            MetadataRecord::BrokerRegistered {
                node_id,
                host,
                port,
                rpc,
                cores,
                dedicated,
            } => {
                next.brokers.insert(
                    *node_id,
                    BrokerMeta {
                        host: host.clone(),
                        port: *port,
                        rpc: rpc.clone(),
                        cores: *cores,
                        dedicated: *dedicated,
                        fenced: false,
                    },
                );
            }
            MetadataRecord::PartitionLeaderChanged {
                group,
                leader,
                epoch,
            } => {
                // Reports can arrive late: an older epoch never replaces a newer one.
                if next.groups.contains_key(group)
                    && next.leaders.get(group).is_none_or(|(_, e)| *epoch > *e)
                {
                    next.leaders.insert(*group, (*leader, *epoch));
                }
            }
            MetadataRecord::BrokerFenced { node_id } => {
                if let Some(b) = next.brokers.get_mut(node_id) {
                    b.fenced = true;
                }
            }
            MetadataRecord::BrokerUnfenced { node_id } => {
                if let Some(b) = next.brokers.get_mut(node_id) {
                    b.fenced = false;
                }
            }
        }
        if let MetadataRecord::TopicCreated { name, .. }
        | MetadataRecord::PartitionsAdded { name, .. } = record
        {
            if let Some(t) = next.topics.get(name).cloned() {
                for (i, p) in t.partitions.iter().enumerate() {
                    if p.group != 0 {
                        next.groups.insert(p.group, (name.clone(), i as i32));
                        next.next_group = next.next_group.max(p.group + 1);
                    }
                }
            }
        }
        next
    }

    /// Partitions owned by each shard, for balanced placement.
    pub fn load_per_shard(&self, shard_count: usize) -> Vec<usize> {
        let mut load = vec![0; shard_count];
        for t in self.topics.values() {
            for p in &t.partitions {
                if let Some(l) = load.get_mut(p.shard.0 as usize) {
                    *l += 1;
                }
            }
        }
        load
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn apply_create_add_config_delete() {
        let img = MetadataImage::default();
        let id = Uuid::new_v4();
        let p = PartitionMeta {
            shard: ShardId(0),
            leader_epoch: 0,
            replicas: Vec::new(),
            group: 0,
        };
        let img = img.apply(&MetadataRecord::TopicCreated {
            name: "t".into(),
            id,
            partitions: vec![p.clone()],
            configs: BTreeMap::new(),
        });
        let img = img.apply(&MetadataRecord::PartitionsAdded {
            name: "t".into(),
            partitions: vec![p.clone(), p.clone()],
        });
        assert_eq!(img.topics["t"].partitions.len(), 3);
        assert_eq!(img.load_per_shard(2), vec![3, 0]);
        let mut c = BTreeMap::new();
        c.insert("retention.ms".to_string(), "5".to_string());
        let img = img.apply(&MetadataRecord::ConfigsSet {
            name: "t".into(),
            configs: c,
        });
        assert_eq!(
            img.topics["t"]
                .log_config(&LogConfig::default())
                .retention_ms,
            5
        );
        let img = img.apply(&MetadataRecord::TopicDeleted { name: "t".into() });
        assert!(img.topics.is_empty() && img.ids.is_empty());
    }
}
