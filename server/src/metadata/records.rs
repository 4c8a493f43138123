//! Records of the metadata log (the controller's log; a Raft group in a cluster).
//!
//! Stored one record per Kafka record batch in the `__cluster_metadata-0` partition directory,
//! the record's value being a flatbuffers `Envelope` (schema `server/schema/metadata.fbs`,
//! file identifier `RLM1`, generated code in `generated/`). Logs written before the
//! flatbuffers encoding hold JSON values (they start with `{`); those still decode, so an old
//! single-node data dir opens unchanged. A value that is neither is an error, never a guess.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::image::PartitionMeta;

/// One change to the cluster metadata.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type")]
pub enum MetadataRecord {
    /// The cluster's id, written once when the metadata log is created.
    ClusterIdSet {
        /// Kafka cluster id.
        cluster_id: String,
    },
    /// A topic was created.
    TopicCreated {
        /// Topic name.
        name: String,
        /// Topic id.
        id: Uuid,
        /// Placement and epoch of each partition.
        partitions: Vec<PartitionMeta>,
        /// Config overrides (Kafka names).
        configs: BTreeMap<String, String>,
    },
    /// A topic was deleted.
    TopicDeleted {
        /// Topic name.
        name: String,
    },
    /// Partitions were added to a topic.
    PartitionsAdded {
        /// Topic name.
        name: String,
        /// The new partitions, appended after the existing ones.
        partitions: Vec<PartitionMeta>,
    },
    /// A topic's config overrides were replaced.
    ConfigsSet {
        /// Topic name.
        name: String,
        /// The full new set of overrides.
        configs: BTreeMap<String, String>,
    },
    /// Producer ids below `end` are handed out (to a core, in blocks); none is ever reused.
    ProducerIdsAllocated {
        /// First producer id not yet handed out.
        end: i64,
    },
    /// A broker joined the cluster (or came back with new addresses); it is live.
    BrokerRegistered {
        /// Node id.
        node_id: i32,
        /// Host Kafka clients use.
        host: String,
        /// Port Kafka clients use.
        port: u16,
        /// Broker-to-broker (Raft) address (of core 0; core k listens on its port + k).
        rpc: String,
        /// Cores (0 in records written before it was recorded).
        #[serde(default)]
        cores: u16,
        /// Core 0 is kept for the controller (partitions on the others).
        #[serde(default)]
        dedicated: bool,
    },
    /// The active controller stopped hearing from a broker: clients are no longer sent to it.
    BrokerFenced {
        /// Node id.
        node_id: i32,
    },
    /// A partition's Raft group elected a leader (reported by the leader itself).
    PartitionLeaderChanged {
        /// The partition's Raft group.
        group: u64,
        /// The leader's node id.
        leader: i32,
        /// The Raft term, the partition's leader epoch.
        epoch: i32,
    },
    /// A fenced broker is heard from again.
    BrokerUnfenced {
        /// Node id.
        node_id: i32,
    },
}

impl MetadataRecord {
    /// Encodes the record as the value of a Kafka record (flatbuffers).
    pub fn encode(&self) -> Vec<u8> {
        fb_codec::encode(self)
    }

    /// Decodes a record value: flatbuffers, or the JSON of older logs.
    pub fn decode(value: &[u8]) -> Result<MetadataRecord, String> {
        // flatbuffers' own identifier check asserts on short input: check by hand.
        if value.get(4..8) == Some(fb::ENVELOPE_IDENTIFIER.as_bytes()) {
            return fb_codec::decode(value);
        }
        if value.first() == Some(&b'{') {
            return serde_json::from_slice(value).map_err(|e| e.to_string());
        }
        Err(format!(
            "{} bytes that are neither a flatbuffers metadata record nor JSON",
            value.len()
        ))
    }
}

#[allow(unused_imports, dead_code, clippy::all, clippy::pedantic, missing_docs, unsafe_op_in_unsafe_fn)]
#[rustfmt::skip]
#[path = "generated/metadata_generated.rs"]
mod generated;

use generated::ringlog::metadata as fb;

mod fb_codec {
    use std::collections::BTreeMap;

    use flatbuffers::{FlatBufferBuilder, ForwardsUOffset, Vector, WIPOffset};
    use uuid::Uuid;

    use super::fb;
    use super::MetadataRecord;
    use crate::metadata::image::PartitionMeta;
    use crate::shard::ShardId;

    type Offsets<'a, T> = WIPOffset<Vector<'a, ForwardsUOffset<T>>>;

    fn partitions<'a>(
        b: &mut FlatBufferBuilder<'a>,
        ps: &[PartitionMeta],
    ) -> Offsets<'a, fb::Partition<'a>> {
        let items: Vec<_> = ps
            .iter()
            .map(|p| {
                let replicas = b.create_vector(&p.replicas);
                fb::Partition::create(
                    b,
                    &fb::PartitionArgs {
                        shard: p.shard.0,
                        leader_epoch: p.leader_epoch,
                        replicas: Some(replicas),
                        group: p.group,
                    },
                )
            })
            .collect();
        b.create_vector(&items)
    }

    fn configs<'a>(
        b: &mut FlatBufferBuilder<'a>,
        c: &BTreeMap<String, String>,
    ) -> Offsets<'a, fb::KeyValue<'a>> {
        let items: Vec<_> = c
            .iter()
            .map(|(k, v)| {
                let (key, value) = (b.create_string(k), b.create_string(v));
                fb::KeyValue::create(
                    b,
                    &fb::KeyValueArgs {
                        key: Some(key),
                        value: Some(value),
                    },
                )
            })
            .collect();
        b.create_vector(&items)
    }

    pub fn encode(r: &MetadataRecord) -> Vec<u8> {
        let mut b = FlatBufferBuilder::with_capacity(256);
        let (kind, record) = match r {
            MetadataRecord::ClusterIdSet { cluster_id } => {
                let s = b.create_string(cluster_id);
                let args = fb::ClusterIdSetArgs {
                    cluster_id: Some(s),
                };
                let t = fb::ClusterIdSet::create(&mut b, &args);
                (fb::Record::ClusterIdSet, t.as_union_value())
            }
            MetadataRecord::TopicCreated {
                name,
                id,
                partitions: ps,
                configs: cs,
            } => {
                let name = b.create_string(name);
                let id = b.create_vector(id.as_bytes());
                let partitions = partitions(&mut b, ps);
                let configs = configs(&mut b, cs);
                let args = fb::TopicCreatedArgs {
                    name: Some(name),
                    id: Some(id),
                    partitions: Some(partitions),
                    configs: Some(configs),
                };
                let t = fb::TopicCreated::create(&mut b, &args);
                (fb::Record::TopicCreated, t.as_union_value())
            }
            MetadataRecord::TopicDeleted { name } => {
                let name = b.create_string(name);
                let t =
                    fb::TopicDeleted::create(&mut b, &fb::TopicDeletedArgs { name: Some(name) });
                (fb::Record::TopicDeleted, t.as_union_value())
            }
            MetadataRecord::PartitionsAdded {
                name,
                partitions: ps,
            } => {
                let name = b.create_string(name);
                let partitions = partitions(&mut b, ps);
                let args = fb::PartitionsAddedArgs {
                    name: Some(name),
                    partitions: Some(partitions),
                };
                let t = fb::PartitionsAdded::create(&mut b, &args);
                (fb::Record::PartitionsAdded, t.as_union_value())
            }
            MetadataRecord::ConfigsSet { name, configs: cs } => {
                let name = b.create_string(name);
                let configs = configs(&mut b, cs);
                let args = fb::ConfigsSetArgs {
                    name: Some(name),
                    configs: Some(configs),
                };
                let t = fb::ConfigsSet::create(&mut b, &args);
                (fb::Record::ConfigsSet, t.as_union_value())
            }
            MetadataRecord::ProducerIdsAllocated { end } => {
                let args = fb::ProducerIdsAllocatedArgs { end: *end };
                let t = fb::ProducerIdsAllocated::create(&mut b, &args);
                (fb::Record::ProducerIdsAllocated, t.as_union_value())
            }
            MetadataRecord::BrokerRegistered {
                node_id,
                host,
                port,
                rpc,
                cores,
                dedicated,
            } => {
                let (host, rpc) = (b.create_string(host), b.create_string(rpc));
                let args = fb::BrokerRegisteredArgs {
                    node_id: *node_id,
                    host: Some(host),
                    port: *port,
                    rpc: Some(rpc),
                    cores: *cores,
                    dedicated: *dedicated,
                };
                let t = fb::BrokerRegistered::create(&mut b, &args);
                (fb::Record::BrokerRegistered, t.as_union_value())
            }
            MetadataRecord::BrokerFenced { node_id } => {
                let args = fb::BrokerFencedArgs { node_id: *node_id };
                let t = fb::BrokerFenced::create(&mut b, &args);
                (fb::Record::BrokerFenced, t.as_union_value())
            }
            MetadataRecord::BrokerUnfenced { node_id } => {
                let args = fb::BrokerUnfencedArgs { node_id: *node_id };
                let t = fb::BrokerUnfenced::create(&mut b, &args);
                (fb::Record::BrokerUnfenced, t.as_union_value())
            }
            MetadataRecord::PartitionLeaderChanged {
                group,
                leader,
                epoch,
            } => {
                let args = fb::PartitionLeaderChangedArgs {
                    group: *group,
                    leader: *leader,
                    epoch: *epoch,
                };
                let t = fb::PartitionLeaderChanged::create(&mut b, &args);
                (fb::Record::PartitionLeaderChanged, t.as_union_value())
            }
        };
        let env = fb::Envelope::create(
            &mut b,
            &fb::EnvelopeArgs {
                record_type: kind,
                record: Some(record),
            },
        );
        fb::finish_envelope_buffer(&mut b, env);
        b.finished_data().to_vec()
    }

    fn need<T>(v: Option<T>, what: &str) -> Result<T, String> {
        v.ok_or_else(|| format!("metadata record without {what}"))
    }

    fn read_partitions(
        v: Option<Vector<'_, ForwardsUOffset<fb::Partition<'_>>>>,
    ) -> Vec<PartitionMeta> {
        v.map(|v| {
            v.iter()
                .map(|p| PartitionMeta {
                    shard: ShardId(p.shard()),
                    leader_epoch: p.leader_epoch(),
                    replicas: p.replicas().map(|r| r.iter().collect()).unwrap_or_default(),
                    group: p.group(),
                })
                .collect()
        })
        .unwrap_or_default()
    }

    fn read_configs(
        v: Option<Vector<'_, ForwardsUOffset<fb::KeyValue<'_>>>>,
    ) -> Result<BTreeMap<String, String>, String> {
        let mut out = BTreeMap::new();
        for kv in v.iter().flat_map(|v| v.iter()) {
            out.insert(
                need(kv.key(), "a config key")?.to_string(),
                need(kv.value(), "a config value")?.to_string(),
            );
        }
        Ok(out)
    }

    pub fn decode(bytes: &[u8]) -> Result<MetadataRecord, String> {
        let env = fb::root_as_envelope(bytes).map_err(|e| e.to_string())?;
        let t = env.record_type();
        let r = match t {
            fb::Record::ClusterIdSet => {
                let x = need(env.record_as_cluster_id_set(), "its body")?;
                MetadataRecord::ClusterIdSet {
                    cluster_id: need(x.cluster_id(), "a cluster id")?.to_string(),
                }
            }
            fb::Record::TopicCreated => {
                let x = need(env.record_as_topic_created(), "its body")?;
                let id = need(x.id(), "a topic id")?;
                MetadataRecord::TopicCreated {
                    name: need(x.name(), "a topic name")?.to_string(),
                    id: Uuid::from_slice(id.bytes()).map_err(|e| e.to_string())?,
                    partitions: read_partitions(x.partitions()),
                    configs: read_configs(x.configs())?,
                }
            }
            fb::Record::TopicDeleted => {
                let x = need(env.record_as_topic_deleted(), "its body")?;
                MetadataRecord::TopicDeleted {
                    name: need(x.name(), "a topic name")?.to_string(),
                }
            }
            fb::Record::PartitionsAdded => {
                let x = need(env.record_as_partitions_added(), "its body")?;
                MetadataRecord::PartitionsAdded {
                    name: need(x.name(), "a topic name")?.to_string(),
                    partitions: read_partitions(x.partitions()),
                }
            }
            fb::Record::ConfigsSet => {
                let x = need(env.record_as_configs_set(), "its body")?;
                MetadataRecord::ConfigsSet {
                    name: need(x.name(), "a topic name")?.to_string(),
                    configs: read_configs(x.configs())?,
                }
            }
            fb::Record::ProducerIdsAllocated => {
                let x = need(env.record_as_producer_ids_allocated(), "its body")?;
                MetadataRecord::ProducerIdsAllocated { end: x.end() }
            }
            fb::Record::BrokerRegistered => {
                let x = need(env.record_as_broker_registered(), "its body")?;
                MetadataRecord::BrokerRegistered {
                    node_id: x.node_id(),
                    host: need(x.host(), "a host")?.to_string(),
                    port: x.port(),
                    rpc: need(x.rpc(), "an rpc address")?.to_string(),
                    cores: x.cores(),
                    dedicated: x.dedicated(),
                }
            }
            fb::Record::BrokerFenced => {
                let x = need(env.record_as_broker_fenced(), "its body")?;
                MetadataRecord::BrokerFenced {
                    node_id: x.node_id(),
                }
            }
            fb::Record::BrokerUnfenced => {
                let x = need(env.record_as_broker_unfenced(), "its body")?;
                MetadataRecord::BrokerUnfenced {
                    node_id: x.node_id(),
                }
            }
            fb::Record::PartitionLeaderChanged => {
                let x = need(env.record_as_partition_leader_changed(), "its body")?;
                MetadataRecord::PartitionLeaderChanged {
                    group: x.group(),
                    leader: x.leader(),
                    epoch: x.epoch(),
                }
            }
            other => return Err(format!("unknown metadata record type {}", other.0)),
        };
        Ok(r)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::shard::ShardId;

    fn all() -> Vec<MetadataRecord> {
        let mut configs = BTreeMap::new();
        configs.insert("retention.ms".to_string(), "1000".to_string());
        let p = PartitionMeta {
            shard: ShardId(1),
            leader_epoch: 3,
            replicas: vec![1, 2, 3],
            group: 7,
        };
        vec![
            MetadataRecord::ClusterIdSet {
                cluster_id: "abc".into(),
            },
            MetadataRecord::TopicCreated {
                name: "t".into(),
                id: Uuid::new_v4(),
                partitions: vec![p.clone(), p.clone()],
                configs: configs.clone(),
            },
            MetadataRecord::TopicDeleted { name: "t".into() },
            MetadataRecord::PartitionsAdded {
                name: "t".into(),
                partitions: vec![p],
            },
            MetadataRecord::ConfigsSet {
                name: "t".into(),
                configs,
            },
            MetadataRecord::ProducerIdsAllocated { end: 5000 },
            MetadataRecord::BrokerRegistered {
                node_id: 2,
                host: "127.0.0.1".into(),
                port: 9093,
                rpc: "127.0.0.1:9193".into(),
                cores: 2,
                dedicated: true,
            },
            MetadataRecord::BrokerFenced { node_id: 2 },
            MetadataRecord::BrokerUnfenced { node_id: 2 },
            MetadataRecord::PartitionLeaderChanged {
                group: 7,
                leader: 2,
                epoch: 4,
            },
        ]
    }

    #[test]
    fn every_record_round_trips_through_flatbuffers() {
        for r in all() {
            let bytes = r.encode();
            assert_eq!(&bytes[4..8], b"RLM1");
            assert_eq!(MetadataRecord::decode(&bytes).expect("decodes"), r);
        }
    }

    #[test]
    fn json_of_older_logs_still_decodes() {
        for r in all() {
            let json = serde_json::to_vec(&r).expect("json");
            assert_eq!(MetadataRecord::decode(&json).expect("decodes"), r);
        }
    }

    #[test]
    fn garbage_is_an_error() {
        assert!(MetadataRecord::decode(b"").is_err());
        assert!(MetadataRecord::decode(b"\x00\x01\x02").is_err());
        let mut bytes = all()[1].encode();
        let n = bytes.len();
        bytes.truncate(n / 2);
        assert!(MetadataRecord::decode(&bytes).is_err());
        proptest::proptest!(|(v in proptest::collection::vec(proptest::num::u8::ANY, 0..200))| {
            let _ = MetadataRecord::decode(&v);
        });
    }
}
