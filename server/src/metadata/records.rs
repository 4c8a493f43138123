//! Records of the metadata log (the future KRaft-like controller log).
//!
//! Stored one record per Kafka record batch in the `__cluster_metadata-0` partition directory,
//! the record's value being the JSON encoding of [`MetadataRecord`]. JSON keeps the log
//! readable by a person while the broker is single-node; the Raft controller (issue #6) moves
//! the encoding to flatbuffers behind the same enum.

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
}

impl MetadataRecord {
    /// Encodes the record as the value of a Kafka record.
    pub fn encode(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("metadata records always encode")
    }

    /// Decodes a record value.
    pub fn decode(value: &[u8]) -> Result<MetadataRecord, String> {
        serde_json::from_slice(value).map_err(|e| e.to_string())
    }
}
