//! Shards: one per core. A shard owns a set of partitions, its own io_uring ring (through its
//! glommio executor), its batch cache and its read copy of the metadata image.
//!
//! Runs on its own core; `Shard` is `!Send` and shared by that core's tasks through `Rc`. The
//! only way to touch another core's state is [`Shard::invoke_on`], which sends a closure over
//! bounded cross-core queues (the mesh: one inbox per core) to run on the owner, Seastar-style;
//! the owner re-checks ownership when the closure runs. The queues are `futures` channels, not
//! glommio's channel mesh: with glommio's, two-core brokers corrupted the heap now and then at
//! startup (glibc "unaligned tcache chunk"), which the one-core broker never did.

pub mod runtime;

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::Arc;

use ringlog_storage::BatchCache;
use serde::{Deserialize, Serialize};

use crate::config::Config;
use crate::metadata::{Controller, MetadataImage};
use crate::partition::Partition;

/// Index of a core in the broker's core list (0-based; not the CPU id).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct ShardId(pub u16);

/// A topic partition, as the key of a shard's partition table.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TopicPartition {
    /// Topic name.
    pub topic: Arc<str>,
    /// Partition index.
    pub partition: i32,
}

/// The core owning a partition placed on `placed` on a broker with `cores` cores: skipping
/// core 0 when the broker keeps it for the controller (`dedicated`, two or more cores).
pub fn owner_core_for(placed: u16, cores: usize, dedicated: bool) -> u16 {
    if dedicated && cores > 1 {
        1 + (placed as usize % (cores - 1)) as u16
    } else {
        (placed as usize % cores.max(1)) as u16
    }
}

/// A closure sent to run on another core.
pub type Job = Box<dyn FnOnce(Rc<Shard>) -> Pin<Box<dyn Future<Output = ()>>> + Send>;

/// The mesh went away (the broker is shutting down).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("core {0:?} is not reachable (shutting down)")]
pub struct MeshClosed(pub ShardId);

/// One core's state.
pub struct Shard {
    /// This core.
    pub id: ShardId,
    /// Number of cores.
    pub shard_count: usize,
    /// The broker configuration.
    pub config: Arc<Config>,
    /// Host and port clients are told to use.
    pub advertised: (String, u16),
    pub(crate) senders: Vec<futures::channel::mpsc::Sender<Job>>,
    /// Jobs this core has outstanding on each other core (`mesh_queue_depth` each): a job
    /// holds its slot until its reply arrives; when all are taken, `invoke_on` waits.
    pub(crate) mesh_slots: Vec<Rc<ringlog_storage::sync::LocalSemaphore>>,
    /// Read copy of the metadata image.
    pub image: RefCell<Arc<MetadataImage>>,
    /// Partitions this core owns.
    pub partitions: RefCell<HashMap<TopicPartition, Rc<Partition>>>,
    /// This core's batch cache.
    pub cache: Rc<BatchCache>,
    /// Flush rounds in flight on this core (`flush_rounds_in_flight_per_core_max`), shared by its logs.
    pub sync_slots: Rc<ringlog_storage::sync::LocalSemaphore>,
    /// The controller, on core 0 only.
    pub controller: RefCell<Option<Rc<Controller>>>,
    /// Open client connections on this core.
    pub connections: Cell<usize>,
    /// Producer ids this core may hand out (a block from the controller).
    pub producer_ids: RefCell<std::ops::Range<i64>>,
    /// The consumer groups this core coordinates.
    pub groups: crate::groups::Coordinator,
    /// Raft groups on this core (cluster mode): its replicated partitions, and on core 0 the
    /// metadata group.
    pub raft_groups:
        RefCell<HashMap<ringlog_raft::types::GroupId, Rc<crate::cluster::group::RaftGroup>>>,
    /// This core's connections to the other brokers (cluster mode).
    pub transport: Option<Rc<crate::cluster::rpc::Transport>>,
}

impl Shard {
    /// Runs `f` on core `target` and returns its result. Runs inline when `target` is this
    /// core. Waits when the target's queue is full (backpressure).
    pub async fn invoke_on<T, F, Fut>(
        self: &Rc<Self>,
        target: ShardId,
        f: F,
    ) -> Result<T, MeshClosed>
    where
        T: Send + 'static,
        F: FnOnce(Rc<Shard>) -> Fut + Send + 'static,
        Fut: Future<Output = T> + 'static,
    {
        if target == self.id {
            return Ok(f(self.clone()).await);
        }
        let (tx, rx) = futures::channel::oneshot::channel();
        let job: Job = Box::new(move |shard| {
            Box::pin(async move {
                let _ = tx.send(f(shard).await);
            })
        });
        let (Some(sender), Some(slots)) = (
            self.senders.get(target.0 as usize),
            self.mesh_slots.get(target.0 as usize),
        ) else {
            return Err(MeshClosed(target));
        };
        let _slot = slots.acquire(1).await;
        if futures::SinkExt::send(&mut sender.clone(), job)
            .await
            .is_err()
        {
            return Err(MeshClosed(target));
        }
        rx.await.map_err(|_| MeshClosed(target))
    }

    /// The current metadata image.
    pub fn image(&self) -> Arc<MetadataImage> {
        self.image.borrow().clone()
    }

    /// The partition if this core owns it.
    pub fn partition(&self, topic: &str, partition: i32) -> Option<Rc<Partition>> {
        let key = TopicPartition {
            topic: Arc::from(topic),
            partition,
        };
        self.partitions.borrow().get(&key).cloned()
    }

    /// The core of this broker that owns a partition: its placed core modulo this broker's
    /// core count, skipping core 0 when the controller has it to itself (a cluster broker
    /// with more than one core, unless `--controller-core-shared`).
    pub fn owner_core(&self, p: &crate::metadata::PartitionMeta) -> ShardId {
        ShardId(owner_core_for(
            p.shard.0,
            self.shard_count,
            self.config.controller_core_dedicated(),
        ))
    }

    /// The core of broker `node` that owns Raft group `group` (0 when unknown: core 0
    /// routes), from the image and the broker's registration.
    pub fn peer_core_of(&self, group: ringlog_raft::types::GroupId, node: u64) -> u16 {
        if group == crate::cluster::METADATA_GROUP {
            return 0;
        }
        let img = self.image.borrow();
        let Some((topic, p)) = img.groups.get(&group.0) else {
            return 0;
        };
        let Some(meta) = img
            .topics
            .get(topic)
            .and_then(|t| t.partitions.get(usize::try_from(*p).ok()?))
        else {
            return 0;
        };
        match i32::try_from(node).ok().and_then(|n| img.brokers.get(&n)) {
            Some(b) if b.cores > 0 => owner_core_for(meta.shard.0, b.cores as usize, b.dedicated),
            _ => 0,
        }
    }

    /// The core that owns a partition, from the image.
    pub fn owner_of(&self, topic: &str, partition: i32) -> Option<ShardId> {
        let img = self.image.borrow();
        let t = img.topics.get(topic)?;
        let p = usize::try_from(partition).ok()?;
        t.partitions.get(p).map(|p| self.owner_core(p))
    }
}
