//! Every bound the broker enforces, in one place. Each says what happens when it is reached.
//!
//! Storage bounds (write buffers, cache) live in `ringlog_storage::StorageLimits`, set from here
//! where the broker chooses them.

/// Broker limits. One instance, shared read-only by all cores.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Largest request frame accepted. A larger declared size closes the connection with a log
    /// line (Kafka's `socket.request.max.bytes`, same default).
    pub request_bytes_max: usize,
    /// Requests read from one connection and not yet answered. When reached, the connection
    /// stops reading until the oldest response is written (pipelining backpressure).
    pub requests_in_flight_per_connection_max: usize,
    /// Bytes of requests read from one connection and not yet answered. When reached, the
    /// connection stops reading until responses free room (a single request larger than this
    /// but within `request_bytes_max` waits until it is the only one in flight).
    pub request_bytes_in_flight_per_connection_max: usize,
    /// Open client connections per core. Past it, new connections are closed at once.
    pub connections_per_core_max: usize,
    /// Jobs one core may have outstanding on another (queued or running, until the reply
    /// arrives). When all are taken, the sender waits.
    pub mesh_queue_depth: usize,
    /// Cross-core jobs running at once on one core. When reached, the core stops taking jobs
    /// off the mesh (senders then wait on the full queue).
    pub mesh_jobs_in_flight_max: usize,
    /// Flush rounds in flight on one core, over all its partitions (each round's write-through
    /// write or fdatasync runs on a kernel io-wq worker; see `Log::share_sync_slots`). When
    /// reached, a partition's flush waits for a slot; appends that arrive meanwhile join that
    /// flush. Measured with 100 partitions at 250k msg/s, before rounds wrote through (session
    /// 6): 1, 2 or 4 slots raise p50 publish latency 2-8x (syncs of different files run well in
    /// parallel), 16 or more match no bound, so the bound is set where it only caps runaway
    /// concurrency.
    pub flush_rounds_in_flight_per_core_max: u64,
    /// Producer ids a core takes from the controller at a time (one metadata record per block).
    /// When a core's block is used up, the next InitProducerId waits for a new block.
    pub producer_id_block_size: i64,
    /// Longest fetch wait honoured (`max_wait_ms` is capped to this).
    pub fetch_wait_ms_max: u64,
    /// Bytes of batches kept in each core's cache.
    pub cache_bytes_per_core: usize,
    /// How often each core runs housekeeping (segment roll by age, retention, compaction) over
    /// its partitions, in its low-priority task queue (Kafka's
    /// `log.retention.check.interval.ms` plays the same role).
    pub housekeeping_interval_ms: u64,
    /// Partitions one CreateTopics or CreatePartitions may ask for per topic.
    pub partitions_per_topic_max: i32,
    /// Topics in the cluster. CreateTopics past it fails with a clear error.
    pub topics_max: usize,
    /// Raft messages queued on one core for one peer broker. Past it new messages are dropped
    /// (and counted): Raft retransmits, and a peer that slow is behind anyway.
    pub raft_messages_queued_per_peer_max: usize,
    /// Controller requests queued on one core for one peer (forwarded admin requests), and
    /// responses queued on one inbound connection. Past it a new request fails at once with
    /// a retriable error.
    pub rpc_requests_queued_per_peer_max: usize,
    /// Largest broker-to-broker frame. A peer sending a larger one is disconnected (with a
    /// log line); senders split envelopes well below it.
    pub rpc_frame_bytes_max: usize,
    /// How long a forwarded controller request may take before the client gets a retriable
    /// error (REQUEST_TIMED_OUT).
    pub controller_request_timeout_ms: u64,
    /// How long a replicated produce or internal append waits for its commit before the
    /// client gets REQUEST_TIMED_OUT (the write may still commit: idempotent producers'
    /// retries are recognised).
    pub replication_timeout_ms: u64,
    /// A broker the active controller has not heard from (heartbeats every second) for this
    /// long is fenced: Metadata stops listing it until it is heard again.
    pub broker_session_timeout_ms: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            request_bytes_max: 100 * 1024 * 1024,
            requests_in_flight_per_connection_max: 64,
            request_bytes_in_flight_per_connection_max: 128 * 1024 * 1024,
            connections_per_core_max: 10_000,
            mesh_queue_depth: 1024,
            mesh_jobs_in_flight_max: 4096,
            flush_rounds_in_flight_per_core_max: 64,
            producer_id_block_size: 1000,
            fetch_wait_ms_max: 30_000,
            cache_bytes_per_core: 64 << 20,
            housekeeping_interval_ms: 30_000,
            partitions_per_topic_max: 10_000,
            topics_max: 100_000,
            raft_messages_queued_per_peer_max: 8192,
            rpc_requests_queued_per_peer_max: 256,
            rpc_frame_bytes_max: 64 << 20,
            controller_request_timeout_ms: 10_000,
            replication_timeout_ms: 30_000,
            broker_session_timeout_ms: 6_000,
        }
    }
}
