//! The controller: sole writer of the metadata log, on core 0.
//!
//! Every change (create or delete a topic, add partitions, set configs) is validated against
//! the current image, appended to the metadata log and flushed, applied to a new image, and
//! then broadcast to every core; the request is answered only after every core has the new
//! image and has opened (or closed) its partitions. Changes run one at a time.
//!
//! Placement: each new partition goes to the core that owns the fewest partitions, ties to the
//! lowest core, so placement is balanced; it is recorded in the log, so it is stable across
//! restarts and visible (Metadata, and the `opened partition` log line of each core).

use std::collections::BTreeMap;
use std::rc::Rc;
use std::sync::Arc;

use kafka_protocol::error::ResponseError;
use ringlog_storage::batch::build::{encode_batch, NewRecord};
use ringlog_storage::sync::LocalSemaphore;
use ringlog_storage::{batch, Log, LogConfig, Offset, Term};
use uuid::Uuid;

use super::image::{MetadataImage, PartitionMeta};
use super::records::MetadataRecord;
use crate::kafka::errors::KafkaError;
use crate::shard::{Shard, ShardId};

/// Directory of the metadata log under the data dir.
pub const METADATA_DIR: &str = "__cluster_metadata-0";

/// A topic to create.
#[derive(Clone, Debug)]
pub struct NewTopic {
    /// Name.
    pub name: String,
    /// Partitions (-1: the broker default).
    pub partitions: i32,
    /// Replication factor (-1: default; only 1 is possible on a single node).
    pub replication_factor: i16,
    /// Config overrides.
    pub configs: BTreeMap<String, String>,
}

/// The controller state.
pub struct Controller {
    log: Log,
    image: std::cell::RefCell<Arc<MetadataImage>>,
    one_change: Rc<LocalSemaphore>,
}

impl Controller {
    /// Opens the metadata log and replays it into an image.
    pub async fn open(shard: &Shard) -> Result<Controller, String> {
        let dir = shard.config.data_dir.join(METADATA_DIR);
        let log = Log::open(
            &dir,
            LogConfig::default(),
            shard.config.storage.clone(),
            shard.cache.clone(),
            Rc::new(ringlog_storage::SystemClock),
        )
        .await
        .map_err(|e| format!("opening metadata log: {e}"))?;
        let mut image = MetadataImage::default();
        let mut at = log.start_offset();
        let end = log.end_offset();
        while at < end {
            let batches = log
                .read(at, 1 << 20, end)
                .await
                .map_err(|e| format!("reading metadata log: {e}"))?;
            if batches.is_empty() {
                break;
            }
            for b in batches {
                let parsed = batch::Batch::parse(b).map_err(|e| format!("metadata log: {e}"))?;
                at = parsed.header().last_offset().plus(1);
                for r in batch::records(&parsed).map_err(|e| format!("metadata log: {e}"))? {
                    let value = r.value.unwrap_or_default();
                    let record = MetadataRecord::decode(&value)
                        .map_err(|e| format!("metadata record at {at}: {e}"))?;
                    image = image.apply(&record);
                }
            }
        }
        let c = Controller {
            log,
            image: std::cell::RefCell::new(Arc::new(image)),
            one_change: LocalSemaphore::new(1),
        };
        if c.image().cluster_id.is_empty() {
            let id = Uuid::new_v4().simple().to_string();
            c.append(&[MetadataRecord::ClusterIdSet {
                cluster_id: id[..22].to_string(),
            }])
            .await
            .map_err(|e| e.message)?;
        }
        tracing::info!(topics = c.image().topics.len(), records = %c.log.end_offset(), "metadata log replayed");
        Ok(c)
    }

    /// The current image.
    pub fn image(&self) -> Arc<MetadataImage> {
        self.image.borrow().clone()
    }

    /// Appends and flushes records, then applies them.
    async fn append(&self, records: &[MetadataRecord]) -> Result<Arc<MetadataImage>, KafkaError> {
        let mut next = (*self.image()).clone();
        for r in records {
            let value = r.encode();
            let b = encode_batch(
                &[NewRecord {
                    key: None,
                    value: Some(value),
                }],
                now_ms(),
            );
            self.log.append(b, Term(0)).await?;
            next = next.apply(r);
        }
        self.log.flush().await?;
        let next = Arc::new(next);
        *self.image.borrow_mut() = next.clone();
        Ok(next)
    }

    /// Appends records and makes every core apply the new image before returning.
    async fn commit(
        &self,
        shard: &Rc<Shard>,
        records: Vec<MetadataRecord>,
    ) -> Result<(), KafkaError> {
        if records.is_empty() {
            return Ok(());
        }
        let image = self.append(&records).await?;
        broadcast(shard, image).await;
        Ok(())
    }

    /// Creates topics. Returns one result per request, in order.
    pub async fn create_topics(
        &self,
        shard: &Rc<Shard>,
        topics: Vec<NewTopic>,
        validate_only: bool,
    ) -> Vec<Result<(i32, Uuid), KafkaError>> {
        let _one = self.one_change.acquire(1).await;
        let mut image = (*self.image()).clone();
        let mut records = Vec::new();
        let mut results = Vec::new();
        for t in topics {
            let r = self.plan_topic(shard, &image, t);
            if let Ok((rec, count, id)) = r {
                image = image.apply(&rec);
                records.push(rec);
                results.push(Ok((count, id)));
            } else if let Err(e) = r {
                results.push(Err(e));
            }
        }
        if validate_only {
            return results;
        }
        if let Err(e) = self.commit(shard, records).await {
            return results.into_iter().map(|r| r.and(Err(e.clone()))).collect();
        }
        results
    }

    fn plan_topic(
        &self,
        shard: &Shard,
        image: &MetadataImage,
        t: NewTopic,
    ) -> Result<(MetadataRecord, i32, Uuid), KafkaError> {
        validate_topic_name(&t.name)?;
        if image.topics.contains_key(&t.name) {
            return Err(KafkaError::new(
                ResponseError::TopicAlreadyExists,
                format!("topic {} already exists", t.name),
            ));
        }
        if image.topics.len() >= shard.config.limits.topics_max {
            return Err(KafkaError::new(
                ResponseError::PolicyViolation,
                "too many topics",
            ));
        }
        let count = if t.partitions == -1 {
            shard.config.default_partitions
        } else {
            t.partitions
        };
        if count < 1 || count > shard.config.limits.partitions_per_topic_max {
            return Err(KafkaError::new(
                ResponseError::InvalidPartitions,
                format!(
                    "partition count {count} is outside 1..={}",
                    shard.config.limits.partitions_per_topic_max
                ),
            ));
        }
        if t.replication_factor != -1 && t.replication_factor != 1 {
            return Err(KafkaError::new(
                ResponseError::InvalidReplicationFactor,
                format!(
                    "replication factor {} is impossible on a single broker",
                    t.replication_factor
                ),
            ));
        }
        validate_configs(&shard.config.log_defaults, &t.configs)?;
        let partitions = place(image, shard.shard_count, count as usize);
        let id = Uuid::new_v4();
        Ok((
            MetadataRecord::TopicCreated {
                name: t.name,
                id,
                partitions,
                configs: t.configs,
            },
            count,
            id,
        ))
    }

    /// Deletes topics by name.
    pub async fn delete_topics(
        &self,
        shard: &Rc<Shard>,
        names: Vec<String>,
    ) -> Vec<Result<Uuid, KafkaError>> {
        let _one = self.one_change.acquire(1).await;
        let image = self.image();
        let mut records = Vec::new();
        let mut results = Vec::new();
        for name in names {
            match image.topics.get(&name) {
                Some(t)
                    if !records.contains(&MetadataRecord::TopicDeleted { name: name.clone() }) =>
                {
                    records.push(MetadataRecord::TopicDeleted { name });
                    results.push(Ok(t.id));
                }
                _ => results.push(Err(KafkaError::new(
                    ResponseError::UnknownTopicOrPartition,
                    format!("topic {name} does not exist"),
                ))),
            }
        }
        if let Err(e) = self.commit(shard, records).await {
            return results.into_iter().map(|r| r.and(Err(e.clone()))).collect();
        }
        results
    }

    /// Grows a topic to `count` partitions.
    pub async fn create_partitions(
        &self,
        shard: &Rc<Shard>,
        name: &str,
        count: i32,
        validate_only: bool,
    ) -> Result<(), KafkaError> {
        let _one = self.one_change.acquire(1).await;
        let image = self.image();
        let t = topic_or_unknown(&image, name)?;
        let have = t.partitions.len() as i32;
        if count <= have || count > shard.config.limits.partitions_per_topic_max {
            return Err(KafkaError::new(
                ResponseError::InvalidPartitions,
                format!("topic {name} has {have} partitions; {count} is not a valid new count"),
            ));
        }
        let partitions = place(&image, shard.shard_count, (count - have) as usize);
        if validate_only {
            return Ok(());
        }
        self.commit(
            shard,
            vec![MetadataRecord::PartitionsAdded {
                name: name.to_string(),
                partitions,
            }],
        )
        .await
    }

    /// Replaces (`incremental` false) or edits a topic's config overrides. In `changes`, a
    /// `None` value deletes the override.
    pub async fn set_configs(
        &self,
        shard: &Rc<Shard>,
        name: &str,
        changes: Vec<(String, Option<String>)>,
        incremental: bool,
        validate_only: bool,
    ) -> Result<(), KafkaError> {
        let _one = self.one_change.acquire(1).await;
        let image = self.image();
        let t = topic_or_unknown(&image, name)?;
        let mut configs = if incremental {
            t.configs.clone()
        } else {
            BTreeMap::new()
        };
        for (k, v) in changes {
            match v {
                Some(v) => configs.insert(k, v),
                None => configs.remove(&k),
            };
        }
        validate_configs(&shard.config.log_defaults, &configs)?;
        if validate_only {
            return Ok(());
        }
        self.commit(
            shard,
            vec![MetadataRecord::ConfigsSet {
                name: name.to_string(),
                configs,
            }],
        )
        .await
    }

    /// Hands out `count` producer ids, durably: a restart continues after them.
    pub async fn allocate_producer_ids(
        &self,
        shard: &Rc<Shard>,
        count: i64,
    ) -> Result<std::ops::Range<i64>, KafkaError> {
        assert!(count > 0);
        let _one = self.one_change.acquire(1).await;
        let start = self.image().next_producer_id;
        let end = start.checked_add(count).ok_or_else(|| {
            KafkaError::new(
                kafka_protocol::error::ResponseError::UnknownServerError,
                "producer ids exhausted",
            )
        })?;
        self.commit(shard, vec![MetadataRecord::ProducerIdsAllocated { end }])
            .await?;
        Ok(start..end)
    }

    /// The metadata log's end offset (the image's position in the log).
    pub fn log_end(&self) -> Offset {
        self.log.end_offset()
    }
}

/// Sends `image` to every core and waits until each has applied it.
pub async fn broadcast(shard: &Rc<Shard>, image: Arc<MetadataImage>) {
    let mut waits = Vec::new();
    for i in 0..shard.shard_count {
        let img = image.clone();
        waits.push(shard.invoke_on(ShardId(i as u16), move |s| async move {
            crate::shard::runtime::apply_image(&s, img).await;
        }));
    }
    for w in futures::future::join_all(waits).await {
        if let Err(e) = w {
            tracing::warn!(error = %e, "metadata broadcast");
        }
    }
}

/// The topic, or UNKNOWN_TOPIC_OR_PARTITION.
fn topic_or_unknown<'a>(
    image: &'a MetadataImage,
    name: &str,
) -> Result<&'a Arc<super::TopicMeta>, KafkaError> {
    image.topics.get(name).ok_or_else(|| {
        KafkaError::new(
            ResponseError::UnknownTopicOrPartition,
            format!("topic {name} does not exist"),
        )
    })
}

/// Picks the least-loaded core for each of `count` new partitions.
fn place(image: &MetadataImage, shard_count: usize, count: usize) -> Vec<PartitionMeta> {
    let mut load = image.load_per_shard(shard_count);
    (0..count)
        .map(|_| {
            let (i, _) = load
                .iter()
                .enumerate()
                .min_by_key(|(i, l)| (**l, *i))
                .expect("at least one core");
            load[i] += 1;
            PartitionMeta {
                shard: ShardId(i as u16),
                leader_epoch: 0,
            }
        })
        .collect()
}

/// Kafka's topic name rules.
pub fn validate_topic_name(name: &str) -> Result<(), KafkaError> {
    let bad = |why: &str| {
        Err(KafkaError::new(
            ResponseError::InvalidTopicException,
            format!("topic name {name:?} {why}"),
        ))
    };
    if name.is_empty() {
        return bad("is empty");
    }
    if name == "." || name == ".." {
        return bad("is not allowed");
    }
    if name.len() > 249 {
        return bad("is longer than 249 characters");
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'_' || b == b'-')
    {
        return bad("has characters outside [a-zA-Z0-9._-]");
    }
    if name == super::controller::METADATA_DIR.trim_end_matches("-0") {
        return bad("is reserved");
    }
    Ok(())
}

fn validate_configs(
    defaults: &LogConfig,
    configs: &BTreeMap<String, String>,
) -> Result<(), KafkaError> {
    let mut c = defaults.clone();
    for (k, v) in configs {
        c.set(k, v)
            .map_err(|e| KafkaError::new(ResponseError::InvalidConfig, e.to_string()))?;
    }
    Ok(())
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}
