//! The load generator's operating errors, and the exit code of each.

use std::net::SocketAddr;

/// Why a run could not start or could not finish as asked.
#[derive(Debug, thiserror::Error)]
pub enum LoadgenError {
    /// Bad flags or a bad workload file.
    #[error("invalid workload: {0}")]
    Workload(String),
    /// No bootstrap address answered.
    #[error("broker unreachable at {addr}: {reason}")]
    Unreachable { addr: String, reason: String },
    /// The topic does not exist and the workload does not create it.
    #[error("topic '{0}' does not exist (create it, or pass --create-topic)")]
    TopicMissing(String),
    /// The topic exists with a different partition count than asked for.
    #[error("topic '{topic}' has {actual} partitions, the workload asks for {wanted}")]
    PartitionMismatch {
        topic: String,
        actual: usize,
        wanted: usize,
    },
    /// The broker answered with something the load generator can not use.
    #[error("broker {addr}: {reason}")]
    Protocol { addr: SocketAddr, reason: String },
    /// A connection failed during the run.
    #[error("connection to {addr} failed: {reason}")]
    Connection { addr: SocketAddr, reason: String },
    /// The broker refused an admin request.
    #[error("{what}: Kafka error {code} ({name})")]
    Kafka {
        what: String,
        code: i16,
        name: &'static str,
    },
    /// Writing results failed.
    #[error("writing {path}: {reason}")]
    Output { path: String, reason: String },
    /// Executors could not start (cores, locked memory).
    #[error("starting executors: {0}")]
    Executor(String),
}

impl LoadgenError {
    /// The process exit code for this error (documented in `--help` and the README).
    pub fn exit_code(&self) -> i32 {
        match self {
            LoadgenError::Workload(_) => 2,
            LoadgenError::Unreachable { .. } => 3,
            LoadgenError::TopicMissing(_) | LoadgenError::PartitionMismatch { .. } => 4,
            LoadgenError::Protocol { .. }
            | LoadgenError::Connection { .. }
            | LoadgenError::Kafka { .. } => 5,
            LoadgenError::Output { .. } | LoadgenError::Executor(_) => 7,
        }
    }
}

/// Exit code of a run that finished but did not sustain its target rate.
pub const EXIT_NOT_SUSTAINED: i32 = 6;
/// Exit code of a run that finished with publish errors (failed or unacknowledged messages).
pub const EXIT_PUBLISH_ERRORS: i32 = 8;

/// Short name of a Kafka error code, for messages.
pub fn kafka_error_name(code: i16) -> &'static str {
    match code {
        0 => "NONE",
        1 => "OFFSET_OUT_OF_RANGE",
        2 => "CORRUPT_MESSAGE",
        3 => "UNKNOWN_TOPIC_OR_PARTITION",
        5 => "LEADER_NOT_AVAILABLE",
        6 => "NOT_LEADER_OR_FOLLOWER",
        7 => "REQUEST_TIMED_OUT",
        10 => "MESSAGE_TOO_LARGE",
        19 => "NOT_ENOUGH_REPLICAS",
        35 => "UNSUPPORTED_VERSION",
        36 => "TOPIC_ALREADY_EXISTS",
        37 => "INVALID_PARTITIONS",
        38 => "INVALID_REPLICATION_FACTOR",
        41 => "NOT_CONTROLLER",
        42 => "INVALID_REQUEST",
        87 => "INVALID_RECORD",
        _ => "see the Kafka protocol's error table",
    }
}

/// True for errors after which the client should refresh metadata (leadership moved).
pub fn needs_metadata_refresh(code: i16) -> bool {
    matches!(code, 3 | 5 | 6)
}
