//! A workload: what to produce and consume, at what rate, for how long.
//!
//! Workloads come from the command line (`produce`) or from TOML files (`run --workload`,
//! examples in `perf/workloads/`). Both end up as one validated [`Workload`]; nothing past this
//! module sees an unchecked value.

use std::path::Path;

use kafka_protocol::records::Compression;
use serde::{Deserialize, Serialize};

use crate::error::LoadgenError;
use crate::limits::Limits;

/// Bytes at the start of each value that carry the intended send time (see `payload`).
pub const PAYLOAD_HEADER_BYTES: u32 = 12;

/// How fast producers send.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Rate {
    /// Open loop: this many messages per second in total, each with an intended send time;
    /// latency is measured from that time (coordinated-omission correction).
    Constant(f64),
    /// Closed loop: as fast as the broker acknowledges, with `max_in_flight` requests per
    /// connection; finds the highest rate the broker sustains.
    Max,
}

/// Message sizes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum MessageSize {
    /// Every value has this many bytes.
    Fixed { bytes: u32 },
    /// Uniformly distributed in `[min, max]`.
    Uniform { min: u32, max: u32 },
}

impl MessageSize {
    /// Parses `1024` or `uniform:512-1536`.
    pub fn parse(s: &str) -> Result<MessageSize, String> {
        let s = s.trim();
        if let Some(range) = s.strip_prefix("uniform:") {
            let (a, b) = range
                .split_once('-')
                .ok_or_else(|| format!("bad size range '{range}' (want MIN-MAX)"))?;
            let min = parse_bytes(a)?;
            let max = parse_bytes(b)?;
            if min > max {
                return Err(format!("size range {min}-{max} is empty"));
            }
            return Ok(MessageSize::Uniform { min, max });
        }
        Ok(MessageSize::Fixed {
            bytes: parse_bytes(s)?,
        })
    }

    /// Mean size in bytes.
    pub fn mean(&self) -> f64 {
        match *self {
            MessageSize::Fixed { bytes } => bytes as f64,
            MessageSize::Uniform { min, max } => (min as f64 + max as f64) / 2.0,
        }
    }

    /// Largest size.
    pub fn max(&self) -> u32 {
        match *self {
            MessageSize::Fixed { bytes } => bytes,
            MessageSize::Uniform { max, .. } => max,
        }
    }
}

fn parse_bytes(s: &str) -> Result<u32, String> {
    let s = s.trim().to_ascii_lowercase();
    let (num, shift) = if let Some(n) = s.strip_suffix("kib").or(s.strip_suffix('k')) {
        (n, 10)
    } else if let Some(n) = s.strip_suffix("mib").or(s.strip_suffix('m')) {
        (n, 20)
    } else {
        (s.as_str(), 0)
    };
    let n: u64 = num
        .trim()
        .parse()
        .map_err(|_| format!("bad byte count '{s}'"))?;
    let v = n << shift;
    u32::try_from(v).map_err(|_| format!("byte count {v} too large"))
}

/// Producer acknowledgement level.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Acks {
    /// No response (acks=0): latency is measured to the hand-off to the socket writer.
    None,
    /// The leader's local append (acks=1).
    Leader,
    /// The full in-sync set (acks=all, -1).
    All,
}

impl Acks {
    /// Parses `0`, `1`, `all` or `-1`.
    pub fn parse(s: &str) -> Result<Acks, String> {
        match s.trim() {
            "0" => Ok(Acks::None),
            "1" => Ok(Acks::Leader),
            "all" | "-1" => Ok(Acks::All),
            other => Err(format!("bad acks '{other}' (want 0, 1 or all)")),
        }
    }

    /// The wire value.
    pub fn wire(self) -> i16 {
        match self {
            Acks::None => 0,
            Acks::Leader => 1,
            Acks::All => -1,
        }
    }

    /// The name used in results.
    pub fn name(self) -> &'static str {
        match self {
            Acks::None => "0",
            Acks::Leader => "1",
            Acks::All => "all",
        }
    }
}

/// Parses a compression codec name.
pub fn parse_compression(s: &str) -> Result<Compression, String> {
    match s.trim() {
        "none" => Ok(Compression::None),
        "gzip" => Ok(Compression::Gzip),
        "snappy" => Ok(Compression::Snappy),
        "lz4" => Ok(Compression::Lz4),
        "zstd" => Ok(Compression::Zstd),
        other => Err(format!(
            "bad compression '{other}' (want none, gzip, snappy, lz4 or zstd)"
        )),
    }
}

/// The name of a compression codec.
pub fn compression_name(c: Compression) -> &'static str {
    match c {
        Compression::None => "none",
        Compression::Gzip => "gzip",
        Compression::Snappy => "snappy",
        Compression::Lz4 => "lz4",
        Compression::Zstd => "zstd",
    }
}

/// A validated workload.
#[derive(Debug, Clone)]
pub struct Workload {
    /// Name, used in results and report titles.
    pub name: String,
    /// Topic to produce to and consume from.
    pub topic: String,
    /// Its partition count.
    pub partitions: usize,
    /// Create the topic if it does not exist.
    pub create_topic: bool,
    /// Replication factor for a created topic (-1: the broker's default).
    pub replication_factor: i16,
    /// Producer count (each its own connections).
    pub producers: usize,
    /// Consumer count (partitions are split between them; end-to-end latency needs at least 1).
    pub consumers: usize,
    /// Value sizes.
    pub message_size: MessageSize,
    /// Distinct keys; `None` sends unkeyed messages (sticky partitioning, as Kafka clients do).
    pub key_count: Option<u32>,
    /// A partition's batch is sent once it holds this many bytes.
    pub batch_size_bytes: usize,
    /// ... or once its first message waited this long (0: as soon as a request slot is free).
    pub linger_ms: u64,
    /// Acknowledgement level.
    pub acks: Acks,
    /// Batch compression.
    pub compression: Compression,
    /// Requests pipelined per connection.
    pub max_in_flight: usize,
    /// Rate.
    pub rate: Rate,
    /// Measured seconds, after the warm-up.
    pub duration_s: u64,
    /// Seconds of load before measuring.
    pub warmup_s: u64,
    /// Fetch `max_wait_ms` for consumers.
    pub fetch_max_wait_ms: i32,
}

/// The TOML form of a workload (see `perf/workloads/*.toml`).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WorkloadFile {
    pub name: Option<String>,
    pub topic: Option<String>,
    pub partitions: Option<usize>,
    pub create_topic: Option<bool>,
    pub replication_factor: Option<i16>,
    pub producers: Option<usize>,
    pub consumers: Option<usize>,
    /// `1024` or `"uniform:512-1536"`.
    pub message_size: Option<toml::Value>,
    pub key_count: Option<u32>,
    pub batch_size_bytes: Option<usize>,
    pub linger_ms: Option<u64>,
    /// `"all"`, `"1"` or `"0"`.
    pub acks: Option<toml::Value>,
    pub compression: Option<String>,
    pub max_in_flight: Option<usize>,
    /// Messages per second, or `"max"`.
    pub rate: Option<toml::Value>,
    pub duration_s: Option<u64>,
    pub warmup_s: Option<u64>,
    pub fetch_max_wait_ms: Option<i32>,
}

impl Default for Workload {
    fn default() -> Self {
        Workload {
            name: "cli".into(),
            topic: "loadgen".into(),
            partitions: 1,
            create_topic: true,
            replication_factor: -1,
            producers: 1,
            consumers: 0,
            message_size: MessageSize::Fixed { bytes: 1024 },
            key_count: None,
            batch_size_bytes: 128 << 10,
            linger_ms: 0,
            acks: Acks::All,
            compression: Compression::None,
            max_in_flight: 5,
            rate: Rate::Constant(1000.0),
            duration_s: 60,
            warmup_s: 0,
            fetch_max_wait_ms: 100,
        }
    }
}

fn value_str(v: &toml::Value) -> String {
    match v {
        toml::Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// Parses a rate: messages per second, or `max`.
pub fn parse_rate(s: &str) -> Result<Rate, String> {
    let s = s.trim();
    if s == "max" {
        return Ok(Rate::Max);
    }
    let r: f64 = s
        .parse()
        .map_err(|_| format!("bad rate '{s}' (want messages per second, or max)"))?;
    Ok(Rate::Constant(r))
}

impl Workload {
    /// Loads a TOML workload file over the defaults.
    pub fn from_file(path: &Path) -> Result<Workload, LoadgenError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| LoadgenError::Workload(format!("reading {}: {e}", path.display())))?;
        let f: WorkloadFile = toml::from_str(&text)
            .map_err(|e| LoadgenError::Workload(format!("{}: {e}", path.display())))?;
        let mut w = Workload::default();
        let bad = |e: String| LoadgenError::Workload(format!("{}: {e}", path.display()));
        if let Some(v) = f.name {
            w.name = v;
        } else if let Some(stem) = path.file_stem() {
            w.name = stem.to_string_lossy().into_owned();
        }
        w.topic = f.topic.unwrap_or_else(|| format!("loadgen-{}", w.name));
        if let Some(v) = f.partitions {
            w.partitions = v;
        }
        if let Some(v) = f.create_topic {
            w.create_topic = v;
        }
        if let Some(v) = f.replication_factor {
            w.replication_factor = v;
        }
        if let Some(v) = f.producers {
            w.producers = v;
        }
        if let Some(v) = f.consumers {
            w.consumers = v;
        }
        if let Some(v) = &f.message_size {
            w.message_size = MessageSize::parse(&value_str(v)).map_err(bad)?;
        }
        w.key_count = f.key_count;
        if let Some(v) = f.batch_size_bytes {
            w.batch_size_bytes = v;
        }
        if let Some(v) = f.linger_ms {
            w.linger_ms = v;
        }
        if let Some(v) = &f.acks {
            w.acks = Acks::parse(&value_str(v)).map_err(bad)?;
        }
        if let Some(v) = &f.compression {
            w.compression = parse_compression(v).map_err(bad)?;
        }
        if let Some(v) = f.max_in_flight {
            w.max_in_flight = v;
        }
        if let Some(v) = &f.rate {
            w.rate = parse_rate(&value_str(v)).map_err(bad)?;
        }
        if let Some(v) = f.duration_s {
            w.duration_s = v;
        }
        if let Some(v) = f.warmup_s {
            w.warmup_s = v;
        }
        if let Some(v) = f.fetch_max_wait_ms {
            w.fetch_max_wait_ms = v;
        }
        Ok(w)
    }

    /// Checks every field against the others and against `limits`.
    pub fn validate(&self, limits: &Limits) -> Result<(), LoadgenError> {
        let fail = |m: String| Err(LoadgenError::Workload(m));
        if self.topic.is_empty() || self.topic.len() > 249 {
            return fail(format!("topic name '{}' must be 1-249 chars", self.topic));
        }
        if self.partitions == 0 || self.partitions > 100_000 {
            return fail(format!("partitions {} not in 1..=100000", self.partitions));
        }
        if self.producers == 0 && self.consumers == 0 {
            return fail("no producers and no consumers".into());
        }
        if self.producers > 10_000 || self.consumers > 10_000 {
            return fail("at most 10000 producers and 10000 consumers".into());
        }
        if self.message_size.max() as usize > limits.request_bytes_max / 2 {
            return fail(format!(
                "message size {} too large (max {})",
                self.message_size.max(),
                limits.request_bytes_max / 2
            ));
        }
        if self.batch_size_bytes == 0 || self.batch_size_bytes > limits.request_bytes_max / 2 {
            return fail(format!(
                "batch_size_bytes {} not in 1..={}",
                self.batch_size_bytes,
                limits.request_bytes_max / 2
            ));
        }
        if self.max_in_flight == 0 || self.max_in_flight > limits.in_flight_per_connection_max {
            return fail(format!(
                "max_in_flight {} not in 1..={}",
                self.max_in_flight, limits.in_flight_per_connection_max
            ));
        }
        if let Some(0) = self.key_count {
            return fail("key_count must be at least 1".into());
        }
        if let Rate::Constant(r) = self.rate {
            if !(r.is_finite() && r > 0.0 && r <= 1e8) {
                return fail(format!("rate {r} not in (0, 1e8] messages/s"));
            }
        }
        if self.duration_s == 0 || self.duration_s > 7 * 24 * 3600 {
            return fail(format!("duration {} s not in 1..=604800", self.duration_s));
        }
        if self.warmup_s > 24 * 3600 {
            return fail("warm-up longer than a day".into());
        }
        if !(0..=60_000).contains(&self.fetch_max_wait_ms) {
            return fail("fetch_max_wait_ms not in 0..=60000".into());
        }
        if self.consumers > 0 && self.message_size.max() < PAYLOAD_HEADER_BYTES {
            return fail(format!(
                "end-to-end latency needs messages of at least {PAYLOAD_HEADER_BYTES} bytes"
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse() {
        assert_eq!(
            MessageSize::parse("1024").unwrap(),
            MessageSize::Fixed { bytes: 1024 }
        );
        assert_eq!(
            MessageSize::parse("1k").unwrap(),
            MessageSize::Fixed { bytes: 1024 }
        );
        assert_eq!(
            MessageSize::parse("uniform:100-2k").unwrap(),
            MessageSize::Uniform {
                min: 100,
                max: 2048
            }
        );
        assert!(MessageSize::parse("uniform:9-1").is_err());
        assert!(MessageSize::parse("x").is_err());
    }

    #[test]
    fn workload_file_parses_and_validates() {
        let dir = std::env::temp_dir().join(format!("loadgen-wl-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("w.toml");
        std::fs::write(
            &p,
            "partitions = 12\nproducers = 2\nconsumers = 2\nmessage_size = \"uniform:100-200\"\nrate = \"max\"\nacks = 1\nkey_count = 10\n",
        )
        .unwrap();
        let w = Workload::from_file(&p).unwrap();
        assert_eq!(w.name, "w");
        assert_eq!(w.topic, "loadgen-w");
        assert_eq!(w.partitions, 12);
        assert_eq!(w.rate, Rate::Max);
        assert_eq!(w.acks, Acks::Leader);
        w.validate(&Limits::default()).unwrap();
        std::fs::write(&p, "bogus = 1\n").unwrap();
        assert!(Workload::from_file(&p).is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn bad_workloads_are_rejected() {
        let l = Limits::default();
        let mut w = Workload {
            max_in_flight: 0,
            ..Workload::default()
        };
        assert!(w.validate(&l).is_err());
        w.max_in_flight = 5;
        w.rate = Rate::Constant(0.0);
        assert!(w.validate(&l).is_err());
        w.rate = Rate::Constant(10.0);
        w.consumers = 1;
        w.message_size = MessageSize::Fixed { bytes: 4 };
        assert!(w.validate(&l).is_err());
    }
}
