//! Per-topic log settings (Kafka's names and defaults) and the storage crate's limits.
//!
//! Every bound the storage layer enforces lives in [`StorageLimits`], each documented with what
//! happens when it is reached. Topic settings live in [`LogConfig`], parsed from Kafka config
//! names so `AlterConfigs` and `DescribeConfigs` speak the same language as the log.

/// What happens to old data (`cleanup.policy`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CleanupPolicy {
    /// Delete whole segments past retention.
    Delete,
    /// Keep the latest record per key in sealed segments.
    Compact,
    /// Both: compact, and also delete past retention.
    CompactDelete,
}

impl CleanupPolicy {
    /// True when compaction runs.
    pub fn compacts(self) -> bool {
        matches!(self, CleanupPolicy::Compact | CleanupPolicy::CompactDelete)
    }

    /// True when time and size retention delete segments.
    pub fn deletes(self) -> bool {
        matches!(self, CleanupPolicy::Delete | CleanupPolicy::CompactDelete)
    }

    /// Kafka's spelling.
    pub fn as_kafka_str(self) -> &'static str {
        match self {
            CleanupPolicy::Delete => "delete",
            CleanupPolicy::Compact => "compact",
            CleanupPolicy::CompactDelete => "compact,delete",
        }
    }
}

/// A topic config that is unknown or has an invalid value (Kafka's INVALID_CONFIG).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid value {value:?} for config {name}: {reason}")]
pub struct ConfigError {
    /// The config name.
    pub name: String,
    /// The rejected value.
    pub value: String,
    /// Why.
    pub reason: &'static str,
}

/// Settings of one partition's log, by Kafka topic config name. Defaults are Kafka's.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LogConfig {
    /// `segment.bytes`: roll to a new segment before the active one would exceed this size.
    /// Segments are preallocated in steps up to this size.
    pub segment_bytes: u64,
    /// `segment.ms`: roll a non-empty active segment older than this.
    pub segment_ms: i64,
    /// `retention.bytes`: delete the oldest sealed segments while the log is larger; -1 = no limit.
    pub retention_bytes: i64,
    /// `retention.ms`: delete sealed segments whose newest record is older; -1 = forever.
    pub retention_ms: i64,
    /// `cleanup.policy`.
    pub cleanup_policy: CleanupPolicy,
    /// `delete.retention.ms`: how long compaction keeps tombstones.
    pub delete_retention_ms: i64,
    /// `max.message.bytes`: largest record batch accepted by `append`.
    pub max_message_bytes: usize,
    /// `index.interval.bytes`: bytes of log between sparse index entries.
    pub index_interval_bytes: usize,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            segment_bytes: 1 << 30,
            segment_ms: 7 * 24 * 3600 * 1000,
            retention_bytes: -1,
            retention_ms: 7 * 24 * 3600 * 1000,
            cleanup_policy: CleanupPolicy::Delete,
            delete_retention_ms: 24 * 3600 * 1000,
            max_message_bytes: 1_048_588,
            index_interval_bytes: 4096,
        }
    }
}

/// Smallest `segment.bytes` accepted (Kafka's own minimum is 14 bytes; ours keeps a segment
/// able to hold a maximum-size batch plus alignment).
pub const SEGMENT_BYTES_MIN: u64 = 64 * 1024;

impl LogConfig {
    /// The config names this log honours, for DescribeConfigs.
    pub const NAMES: [&'static str; 8] = [
        "segment.bytes",
        "segment.ms",
        "retention.bytes",
        "retention.ms",
        "cleanup.policy",
        "delete.retention.ms",
        "max.message.bytes",
        "index.interval.bytes",
    ];

    /// Sets one config by its Kafka name, validating the value.
    pub fn set(&mut self, name: &str, value: &str) -> Result<(), ConfigError> {
        let err = |reason| ConfigError {
            name: name.to_string(),
            value: value.to_string(),
            reason,
        };
        let int = |min: i64| -> Result<i64, ConfigError> {
            let v: i64 = value.trim().parse().map_err(|_| err("not an integer"))?;
            if v < min {
                return Err(err("below the minimum"));
            }
            Ok(v)
        };
        match name {
            "segment.bytes" => {
                let v = int(SEGMENT_BYTES_MIN as i64)?;
                if v > i32::MAX as i64 {
                    return Err(err("above 2 GiB"));
                }
                self.segment_bytes = v as u64
            }
            "segment.ms" => self.segment_ms = int(1)?,
            "retention.bytes" => self.retention_bytes = int(-1)?,
            "retention.ms" => self.retention_ms = int(-1)?,
            "delete.retention.ms" => self.delete_retention_ms = int(0)?,
            "max.message.bytes" => {
                let v = int(0)?;
                if v > (self.segment_bytes / 2) as i64 {
                    return Err(err("above half of segment.bytes"));
                }
                self.max_message_bytes = v as usize
            }
            "index.interval.bytes" => {
                self.index_interval_bytes = int(1)?.min(i32::MAX as i64) as usize
            }
            "cleanup.policy" => {
                let mut parts: Vec<&str> = value.split(',').map(str::trim).collect();
                parts.sort_unstable();
                parts.dedup();
                self.cleanup_policy = match parts.as_slice() {
                    ["delete"] => CleanupPolicy::Delete,
                    ["compact"] => CleanupPolicy::Compact,
                    ["compact", "delete"] => CleanupPolicy::CompactDelete,
                    _ => return Err(err("expected delete, compact or compact,delete")),
                }
            }
            _ => return Err(err("unknown topic config")),
        }
        Ok(())
    }

    /// The current value of a config by Kafka name, as a string.
    pub fn get(&self, name: &str) -> Option<String> {
        Some(match name {
            "segment.bytes" => self.segment_bytes.to_string(),
            "segment.ms" => self.segment_ms.to_string(),
            "retention.bytes" => self.retention_bytes.to_string(),
            "retention.ms" => self.retention_ms.to_string(),
            "cleanup.policy" => self.cleanup_policy.as_kafka_str().to_string(),
            "delete.retention.ms" => self.delete_retention_ms.to_string(),
            "max.message.bytes" => self.max_message_bytes.to_string(),
            "index.interval.bytes" => self.index_interval_bytes.to_string(),
            _ => return None,
        })
    }
}

/// The storage layer's bounds. One instance per core; all logs on the core share it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StorageLimits {
    /// Size of one aligned DMA write buffer. Appends are copied into the current buffer; a full
    /// buffer is submitted as one O_DIRECT write. Must be a multiple of 4096.
    pub write_buffer_bytes: usize,
    /// Buffers submitted to the disk but not yet completed, per log. When reached, `append`
    /// waits for the oldest write to finish (backpressure): memory never grows past
    /// `write_buffer_bytes * (write_buffers_in_flight_max + 1)` per log.
    pub write_buffers_in_flight_max: usize,
    /// Bytes read from disk per DMA read when scanning or serving a fetch. A batch larger than
    /// this is read with one extra read of its exact size.
    pub read_chunk_bytes: usize,
    /// Bytes of recent batches kept in the per-core cache. When full, the oldest inserted batches
    /// are evicted; a read that misses goes to disk.
    pub cache_bytes_max: usize,
    /// Segments are preallocated (fallocate) this far ahead of the write position rather than
    /// to their full `segment.bytes` at once, so an idle partition costs little disk. When the
    /// data comes within half a step of the preallocated end, the next step is preallocated in
    /// the background; writes past it (a burst outrunning it) still work, only slower.
    pub preallocate_step_bytes: u64,
    /// Bytes of the key -> latest offset map that one compaction pass builds. When reached, the
    /// pass compacts only the segments scanned so far; the next pass continues (keeping an
    /// older value a little longer is always safe).
    pub compaction_map_bytes_max: usize,
    /// Sealed segment files that retention retires are kept, renamed `<base>.log.free`, up to
    /// this many per log, and the next roll reuses one instead of creating a file (see
    /// `recycle.rs`): appends then overwrite blocks that are already written, so a flush makes
    /// no extent conversion durable, which on ext4 is most of the gap between the log's p99
    /// append+flush and the disk's fdatasync (perf/README.md, session 9). When the pool is
    /// full, further retired segments are deleted. Disk cost: up to this many segment files
    /// (`segment.bytes` each) per partition beyond what retention keeps. 0 turns recycling off.
    pub recycled_segments_per_log_max: usize,
}

impl Default for StorageLimits {
    fn default() -> Self {
        StorageLimits {
            write_buffer_bytes: 256 * 1024,
            write_buffers_in_flight_max: 8,
            read_chunk_bytes: 256 * 1024,
            cache_bytes_max: 64 << 20,
            compaction_map_bytes_max: 32 << 20,
            preallocate_step_bytes: 32 << 20,
            recycled_segments_per_log_max: 1,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn set_and_get_round_trip_kafka_names() {
        let mut c = LogConfig::default();
        c.set("retention.ms", "1000").expect("valid");
        c.set("cleanup.policy", "delete,compact").expect("valid");
        assert_eq!(c.get("retention.ms").as_deref(), Some("1000"));
        assert_eq!(c.cleanup_policy, CleanupPolicy::CompactDelete);
        assert!(c.set("retention.ms", "soon").is_err());
        assert!(c.set("segment.bytes", "10").is_err());
        assert!(c.set("no.such.config", "1").is_err());
        assert!(c.set("cleanup.policy", "sometimes").is_err());
    }
}
