//! Starting the broker: one glommio executor per configured core, pinned, joined by a full
//! mesh of bounded channels; each runs the Kafka listener and its partitions.
//!
//! Startup: every core joins the mesh; core 0 opens the controller (replaying the metadata
//! log) and broadcasts the image, which makes each core open the partitions it owns; then
//! every core starts accepting. Shutdown (SIGTERM/SIGINT): cores stop accepting, let in-flight
//! requests finish (bounded), flush and close their logs, and the process exits 0.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use glommio::{CpuSet, LocalExecutorPoolBuilder, PoolPlacement};
use ringlog_storage::BatchCache;

use super::{Job, Shard, ShardId, TopicPartition};
use crate::config::{Config, CoreSpec};
use crate::metadata::{controller, Controller, MetadataImage};
use crate::partition::{partition_dir, Partition};

/// Set by the signal thread; every core polls it.
static STOPPING: AtomicBool = AtomicBool::new(false);

/// True once the broker is shutting down.
pub fn stopping() -> bool {
    STOPPING.load(Ordering::Relaxed)
}

/// Runs the broker until SIGTERM/SIGINT. Returns an error message for startup failures.
pub fn run(config: Config) -> Result<(), String> {
    std::fs::create_dir_all(&config.data_dir)
        .map_err(|e| format!("creating data dir {}: {e}", config.data_dir.display()))?;
    let mut config = config;
    // glommio opens files relative to no directory: every path it sees must be absolute.
    config.data_dir = std::fs::canonicalize(&config.data_dir)
        .map_err(|e| format!("resolving data dir {}: {e}", config.data_dir.display()))?;
    let placement = placement(&config.cores)?;
    let shard_count = placement.executor_count();
    if config.kafka_addr.port() == 0 {
        // Every core binds the same port (SO_REUSEPORT): pick a free one first.
        let l = std::net::TcpListener::bind(config.kafka_addr)
            .map_err(|e| format!("binding {}: {e}", config.kafka_addr))?;
        config.kafka_addr = l.local_addr().map_err(|e| e.to_string())?;
    }
    let advertised = config
        .advertised_kafka_addr
        .clone()
        .unwrap_or_else(|| (config.kafka_addr.ip().to_string(), config.kafka_addr.port()));
    install_signal_thread()?;
    let config = Arc::new(config);
    let mesh = Arc::new(Mesh::new(shard_count, config.limits.mesh_queue_depth));
    tracing::info!(cores = shard_count, addr = %config.kafka_addr, data_dir = %config.data_dir.display(), "starting ringlog");
    let handles = LocalExecutorPoolBuilder::new(placement)
        .io_memory(config.io_memory_bytes)
        .name("ringlog")
        .on_all_shards(move || {
            let config = config.clone();
            let mesh = mesh.clone();
            let advertised = advertised.clone();
            async move {
                let r = shard_main(config, mesh, shard_count, advertised).await;
                if let Err(e) = &r {
                    // One core failing stops them all (fail-stop), instead of a half-alive broker.
                    tracing::error!(error = %e, "core failed; stopping the broker");
                    STOPPING.store(true, Ordering::Relaxed);
                }
                r
            }
        })
        .map_err(|e| format!("starting executors: {e}"))?;
    let mut failure = None;
    for r in handles.join_all() {
        match r {
            Ok(Ok(())) => {}
            Ok(Err(e)) => failure = Some(e),
            Err(e) => failure = Some(format!("executor failed: {e}")),
        }
    }
    match failure {
        Some(e) => Err(e),
        None => {
            tracing::info!("stopped");
            Ok(())
        }
    }
}

fn placement(cores: &CoreSpec) -> Result<PoolPlacement, String> {
    let online = CpuSet::online().map_err(|e| format!("reading online cpus: {e}"))?;
    let online_count = online.clone().into_iter().count();
    match cores {
        CoreSpec::Count(n) if *n > online_count => Err(format!(
            "--cores {n} asks for more cores than the {online_count} online"
        )),
        CoreSpec::Count(n) => Ok(PoolPlacement::MaxSpread(*n, Some(online))),
        CoreSpec::List(cpus) => {
            let mut sets = Vec::new();
            for cpu in cpus {
                let set = online.clone().filter(|l| l.cpu == *cpu);
                if set.is_empty() {
                    return Err(format!("core {cpu} is not online"));
                }
                sets.push(set);
            }
            Ok(PoolPlacement::Custom(sets))
        }
    }
}

async fn shard_main(
    config: Arc<Config>,
    mesh: Arc<Mesh>,
    shard_count: usize,
    advertised: (String, u16),
) -> Result<(), String> {
    let (id, senders, inbox) = mesh.join().ok_or("joining the core mesh")?;
    let transport = crate::cluster::rpc::Transport::start(&config, &advertised);
    let shard = Rc::new(Shard {
        id,
        shard_count,
        cache: BatchCache::new(config.storage.cache_bytes_max),
        sync_slots: ringlog_storage::sync::LocalSemaphore::new(
            config.limits.flush_rounds_in_flight_per_core_max,
        ),
        producer_ids: RefCell::new(0..0),
        groups: crate::groups::Coordinator::default(),
        config: config.clone(),
        advertised,
        mesh_slots: (0..shard_count)
            .map(|_| {
                ringlog_storage::sync::LocalSemaphore::new(config.limits.mesh_queue_depth as u64)
            })
            .collect(),
        senders,
        image: RefCell::new(Arc::new(MetadataImage::default())),
        partitions: RefCell::new(HashMap::new()),
        controller: RefCell::new(None),
        connections: Cell::new(0),
        raft_groups: RefCell::new(HashMap::new()),
        transport,
    });
    {
        let shard = shard.clone();
        let max = config.limits.mesh_jobs_in_flight_max;
        // At most `max` jobs run at once; past that the inbox fills and senders wait.
        glommio::spawn_local(inbox.for_each_concurrent(max, move |job| job(shard.clone())))
            .detach();
    }
    // Core to core: core k listens for brokers on the RPC port + k.
    let rpc = match &shard.config.cluster {
        Some(cluster) => {
            let port = cluster
                .rpc_addr
                .port()
                .checked_add(id.0)
                .ok_or("rpc port + core index is past 65535")?;
            let addr = std::net::SocketAddr::new(cluster.rpc_addr.ip(), port);
            let l = glommio::net::TcpListener::bind(addr)
                .map_err(|e| format!("binding the rpc address {addr} (core {}): {e}", id.0))?;
            if id.0 == 0 {
                tracing::info!(addr = %addr, node = cluster.node_id.0, cores = shard_count, "listening for brokers (one port per core)");
            }
            if let Some(t) = &shard.transport {
                let weak = Rc::downgrade(&shard);
                t.set_resolver(Box::new(move |group, node| {
                    weak.upgrade().map_or(0, |s| s.peer_core_of(group, node.0))
                }));
            }
            Some(glommio::spawn_local(crate::cluster::rpc::serve(
                shard.clone(),
                l,
            )))
        }
        _ => None,
    };
    let ticker = shard.config.cluster.as_ref().map(|c| {
        let (s, every) = (shard.clone(), Duration::from_millis(c.tick_ms));
        glommio::spawn_local(async move {
            loop {
                glommio::timer::sleep(every).await;
                let groups: Vec<_> = s.raft_groups.borrow().values().cloned().collect();
                for g in &groups {
                    g.tick();
                    g.report_leadership(&s);
                }
            }
        })
    });
    if id.0 == 0 {
        let c = Rc::new(Controller::open(&shard).await?);
        *shard.controller.borrow_mut() = Some(c.clone());
        if shard.config.cluster.is_some() {
            glommio::spawn_local(c.clone().run_apply(shard.clone())).detach();
            glommio::spawn_local(crate::cluster::register_and_heartbeat(shard.clone())).detach();
        } else {
            controller::broadcast(&shard, c.image()).await;
        }
    }
    // Serve only with a metadata image: from core 0 at once on a single node; in a cluster
    // once the metadata group has a leader and this broker has applied its log.
    let mut waited_ms = 0u64;
    while shard.image().cluster_id.is_empty() {
        if STOPPING.load(Ordering::Relaxed) {
            return Err("stopped before the metadata was available".into());
        }
        if id.0 == 0 && waited_ms > 0 && waited_ms % 5000 == 0 {
            tracing::info!(waited_ms, "waiting for the controller quorum");
        }
        glommio::timer::sleep(Duration::from_millis(5)).await;
        waited_ms += 5;
    }
    // A cluster broker serves once the metadata log has it registered and live, so the
    // brokers it lists to clients include itself and the controller.
    if let Some(c) = &shard.config.cluster {
        let me = c.node_id.0 as i32;
        while shard.image().brokers.get(&me).is_none_or(|b| b.fenced) {
            if STOPPING.load(Ordering::Relaxed) {
                return Err("stopped before this broker was registered".into());
            }
            glommio::timer::sleep(Duration::from_millis(5)).await;
        }
    }
    let housekeeping = spawn_housekeeping(shard.clone())?;
    let listener = crate::kafka::listener::Listener::bind(&shard)?;
    let accept = glommio::spawn_local(listener.run(shard.clone()));
    while !STOPPING.load(Ordering::Relaxed) {
        glommio::timer::sleep(Duration::from_millis(50)).await;
    }
    tracing::info!(shard = id.0, "stopping");
    drop(accept);
    drop(rpc);
    drop(ticker);
    drop(housekeeping);
    // Let in-flight requests finish, bounded.
    for _ in 0..100 {
        if shard.connections.get() == 0 {
            break;
        }
        glommio::timer::sleep(Duration::from_millis(20)).await;
    }
    let parts: Vec<Rc<Partition>> = shard
        .partitions
        .borrow_mut()
        .drain()
        .map(|(_, p)| p)
        .collect();
    for p in parts {
        p.close().await;
    }
    // The metadata group (core 0) is not a partition of the table: stop it the same way.
    let groups: Vec<_> = shard
        .raft_groups
        .borrow_mut()
        .drain()
        .map(|(_, g)| g)
        .collect();
    for g in groups {
        g.close_gracefully().await;
    }
    Ok(())
}

/// Runs housekeeping over this core's partitions every `housekeeping_interval_ms`, in a
/// low-priority task queue so produce and fetch always go first.
fn spawn_housekeeping(shard: Rc<Shard>) -> Result<glommio::Task<()>, String> {
    let queue = ringlog_storage::housekeeping_queue();
    let every = Duration::from_millis(shard.config.limits.housekeeping_interval_ms);
    let task = glommio::spawn_local_into(
        async move {
            loop {
                glommio::timer::sleep(every).await;
                let parts: Vec<Rc<Partition>> = shard.partitions.borrow().values().cloned().collect();
                for p in parts {
                    p.snapshot_producers().await;
                    match p.log.housekeeping().await {
                        Ok(r) if r.rolled || r.segments_deleted > 0 || r.records_compacted > 0 => {
                            tracing::info!(
                                partition = %format!("{}-{}", p.tp.topic, p.tp.partition),
                                rolled = r.rolled,
                                segments_deleted = r.segments_deleted,
                                records_compacted = r.records_compacted,
                                "housekeeping"
                            );
                            p.notify();
                        }
                        Ok(_) => {}
                        Err(e) => tracing::error!(partition = %format!("{}-{}", p.tp.topic, p.tp.partition), error = %e, "housekeeping"),
                    }
                }
            }
        },
        queue,
    )
    .map_err(|e| format!("starting housekeeping: {e}"))?;
    Ok(task)
}

/// The cross-core queues: one bounded inbox per core, which every core may send to. Built
/// before the executors start; each executor takes its index and inbox once.
pub struct Mesh {
    next_id: std::sync::atomic::AtomicUsize,
    senders: Vec<futures::channel::mpsc::Sender<Job>>,
    inboxes: std::sync::Mutex<Vec<Option<futures::channel::mpsc::Receiver<Job>>>>,
}

impl Mesh {
    fn new(shard_count: usize, depth: usize) -> Mesh {
        let (senders, inboxes) = (0..shard_count)
            .map(|_| {
                let (tx, rx) = futures::channel::mpsc::channel(depth);
                (tx, Some(rx))
            })
            .unzip();
        Mesh {
            next_id: std::sync::atomic::AtomicUsize::new(0),
            senders,
            inboxes: std::sync::Mutex::new(inboxes),
        }
    }

    /// This executor's id, senders to every core, and its own inbox.
    fn join(
        &self,
    ) -> Option<(
        ShardId,
        Vec<futures::channel::mpsc::Sender<Job>>,
        futures::channel::mpsc::Receiver<Job>,
    )> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let inbox = self.inboxes.lock().ok()?.get_mut(id)?.take()?;
        Some((ShardId(id as u16), self.senders.clone(), inbox))
    }
}

/// Installs the image on this core: opens partitions it now owns, closes and deletes those
/// whose topic is gone, and applies config changes.
pub async fn apply_image(shard: &Rc<Shard>, image: Arc<MetadataImage>) {
    let old = shard.image.replace(image.clone());
    // Deleted topics (or recreated with a new id): close and remove.
    let doomed: Vec<TopicPartition> = shard
        .partitions
        .borrow()
        .keys()
        .filter(|tp| {
            let now = image.topics.get(&*tp.topic);
            let before = old.topics.get(&*tp.topic);
            now.is_none() || now.map(|t| t.id) != before.map(|t| t.id)
        })
        .cloned()
        .collect();
    for tp in doomed {
        let p = shard.partitions.borrow_mut().remove(&tp);
        if let Some(p) = p {
            if let Some(g) = &p.raft {
                shard.raft_groups.borrow_mut().remove(&g.id);
            }
            p.close().await;
        }
        let dir = partition_dir(shard, &tp);
        if let Err(e) = std::fs::remove_dir_all(&dir) {
            tracing::warn!(dir = %dir.display(), error = %e, "removing deleted partition");
        }
        tracing::info!(partition = %format!("{}-{}", tp.topic, tp.partition), "deleted partition");
    }
    for t in image.topics.values() {
        let config = t.log_config(&shard.config.log_defaults);
        for (i, p) in t.partitions.iter().enumerate() {
            if shard.owner_core(p) != shard.id {
                continue;
            }
            // In a cluster a broker holds only the partitions it has a replica of.
            let me = shard.config.cluster.as_ref().map(|c| c.node_id.0);
            if p.is_replicated() && me.is_some_and(|me| !p.replicas.contains(&me)) {
                continue;
            }
            let tp = TopicPartition {
                topic: Arc::from(t.name.as_str()),
                partition: i as i32,
            };
            let existing = shard.partitions.borrow().get(&tp).cloned();
            match existing {
                Some(part) => {
                    if part.log.config() != config {
                        part.log.set_config(config.clone());
                    }
                }
                None => match Partition::open(shard, tp.clone(), config.clone(), p).await {
                    Ok(part) => {
                        shard.partitions.borrow_mut().insert(tp, part);
                    }
                    Err(e) => {
                        tracing::error!(topic = %t.name, partition = i, error = %e.message, "opening partition")
                    }
                },
            }
        }
    }
}

fn install_signal_thread() -> Result<(), String> {
    // Block SIGTERM and SIGINT in every thread (executors inherit the mask) and wait for them
    // on a dedicated thread, which only flips the flag the cores poll.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGTERM);
        libc::sigaddset(&mut set, libc::SIGINT);
        if libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) != 0 {
            return Err("blocking signals".into());
        }
        let set_copy = set;
        std::thread::Builder::new()
            .name("ringlog-signals".into())
            .spawn(move || {
                let mut sig: libc::c_int = 0;
                libc::sigwait(&set_copy, &mut sig);
                tracing::info!(signal = sig, "shutdown requested");
                STOPPING.store(true, Ordering::Relaxed);
            })
            .map_err(|e| format!("starting the signal thread: {e}"))?;
    }
    Ok(())
}
