//! Every bound the load generator keeps, in one place.
//!
//! The load generator must never be the bottleneck and never grow without bound when the broker
//! is slower than the workload asks for: a slow broker shows up as latency (measured from each
//! message's intended send time) and as schedule lag, not as memory. Each field says what
//! happens when its bound is reached.

/// The load generator's limits. `Limits::default()` is what the command line uses.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Bytes of messages a producer holds that are generated but not yet sent (Kafka's
    /// `buffer.memory`). When full, the producer stops generating; messages keep their intended
    /// send times, so the wait shows up in publish latency and in the schedule lag, and a run
    /// whose lag keeps growing is reported as not sustained.
    pub producer_buffer_bytes_max: usize,
    /// Largest produce request a producer builds. Ready batches beyond it wait for the next
    /// request on the same connection.
    pub request_bytes_max: usize,
    /// Largest response frame accepted. A larger one closes the connection with an error (the
    /// broker is not speaking Kafka, or a fetch limit was ignored).
    pub response_bytes_max: usize,
    /// Upper bound on the workload's `max_in_flight` (requests pipelined per connection).
    /// Workloads asking for more are rejected at load time.
    pub in_flight_per_connection_max: usize,
    /// Messages generated in one turn of a producer's loop before it yields to other tasks on
    /// its core (a producer far behind schedule catches up in slices, not in one burst).
    pub messages_per_turn_max: usize,
    /// `max_bytes` of each fetch request.
    pub fetch_bytes_max: i32,
    /// `partition_max_bytes` of each fetch request.
    pub fetch_partition_bytes_max: i32,
    /// Time to connect to a broker before the run fails as unreachable.
    pub connect_timeout_ms: u64,
    /// Time a request may wait for its response before it counts as an error and the
    /// connection is closed.
    pub request_timeout_ms: u64,
    /// After the last message is due, how long producers wait for outstanding acks and consumers
    /// for the messages still to read. What is still missing then counts as errors (producers)
    /// or as unconsumed (consumers).
    pub drain_timeout_ms: u64,
    /// Per-second reports queued from the cores to the reporting thread. When full, a core keeps
    /// the interval and merges it into its next report (no sample is dropped).
    pub report_queue_depth: usize,
    /// Longest a producer sleeps between checks of its schedule and linger deadlines, so it
    /// notices the end of the run promptly even with nothing due.
    pub producer_idle_sleep_us: u64,
    /// Shortest sleep of a producer between turns: at high rates it generates every message
    /// that fell due during the sleep in one turn (their latency still counts from their
    /// intended times); at max rate it makes up to `messages_per_turn_max` per turn. The sleeps
    /// are when the load core reads acks.
    pub producer_tick_us: u64,
    /// A load CPU busier than this fraction of the measured window (everything that ran on
    /// it, kernel work included) gets a warning in the summary and `loadCpuSaturated` in the
    /// JSON: the latency figures then include the load generator's own queueing.
    pub load_cpu_busy_warn_fraction: f64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            producer_buffer_bytes_max: 32 << 20,
            request_bytes_max: 8 << 20,
            response_bytes_max: 64 << 20,
            in_flight_per_connection_max: 64,
            messages_per_turn_max: 4096,
            fetch_bytes_max: 8 << 20,
            fetch_partition_bytes_max: 1 << 20,
            connect_timeout_ms: 5_000,
            request_timeout_ms: 30_000,
            drain_timeout_ms: 15_000,
            report_queue_depth: 1024,
            producer_idle_sleep_us: 10_000,
            producer_tick_us: 100,
            load_cpu_busy_warn_fraction: 0.85,
        }
    }
}
