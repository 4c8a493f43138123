//! Broker configuration: a TOML file plus command-line flags, with defaults that run a dev
//! broker with no file at all.
//!
//! Read once at startup on the main thread, then shared read-only (`Arc<Config>`) by every
//! core. Flags override the file; the file overrides defaults. Bad values are a clear error at
//! startup, never a panic.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::Parser;
use ringlog_storage::{LogConfig, StorageLimits};
use serde::Deserialize;

use crate::limits::Limits;

/// Command-line flags. Every flag can also be set in the `--config` TOML file under the same
/// name with underscores (`data_dir = "..."`).
#[derive(Parser, Debug, Default)]
#[command(
    name = "ringlog",
    version,
    about = "Ringlog: a Kafka-compatible commit log"
)]
pub struct Flags {
    /// TOML config file.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Directory for all data (one subdirectory per partition).
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// Address the Kafka listener binds, on every core.
    #[arg(long)]
    pub kafka_addr: Option<SocketAddr>,
    /// Address clients are told to connect to (defaults to the bound address).
    #[arg(long)]
    pub advertised_kafka_addr: Option<String>,
    /// Cores to run on: a count ("2") or a list ("0,2-3"). Default: all online cores.
    #[arg(long)]
    pub cores: Option<String>,
    /// Broker id reported to clients.
    #[arg(long)]
    pub node_id: Option<i32>,
    /// glommio io memory per core, in MiB (counts against the locked-memory limit).
    #[arg(long)]
    pub io_memory_mib: Option<usize>,
    /// Create topics on first use (Metadata with allow_auto_topic_creation), as Kafka does.
    #[arg(long)]
    pub auto_create_topics: Option<bool>,
    /// Partitions of an auto-created topic, and of CreateTopics with num_partitions = -1.
    #[arg(long)]
    pub default_partitions: Option<i32>,
    /// fsync before acknowledging acks=1/all produce requests (group commit). Turning it off
    /// acknowledges after the write is queued and makes data visible before it is durable.
    #[arg(long)]
    pub fsync: Option<bool>,
    /// Default `segment.bytes` for new topics.
    #[arg(long)]
    pub segment_bytes: Option<u64>,
    /// Default `retention.ms` for new topics.
    #[arg(long)]
    pub retention_ms: Option<i64>,
    /// Partitions of the internal `__consumer_offsets` topic (fixed once it exists).
    #[arg(long)]
    pub offsets_topic_partitions: Option<i32>,
    /// How long a group leaving Empty waits for more members before its first generation.
    #[arg(long)]
    pub group_initial_rebalance_delay_ms: Option<u64>,
    /// Smallest session timeout a member may ask for.
    #[arg(long)]
    pub group_min_session_timeout_ms: Option<i32>,
    /// Largest session timeout a member may ask for.
    #[arg(long)]
    pub group_max_session_timeout_ms: Option<i32>,
    /// Committed offsets of a group that stayed empty this long are deleted.
    #[arg(long)]
    pub offsets_retention_minutes: Option<i64>,
    /// Address of the broker-to-broker (Raft) listener. Cluster mode only; defaults to this
    /// node's entry in `--peers`.
    #[arg(long)]
    pub rpc_addr: Option<SocketAddr>,
    /// Every broker of the cluster, `ID@HOST:PORT` (RPC addresses), comma-separated, this one
    /// included. Without it the broker runs alone, unreplicated, as a single node.
    #[arg(long)]
    pub peers: Option<String>,
    /// How many brokers (the lowest ids) vote in the controller's metadata group; the others
    /// follow it as learners.
    #[arg(long)]
    pub controller_voters: Option<usize>,
    /// Length of one Raft tick in milliseconds (elections take 10 to 20 ticks, heartbeats go
    /// every 2).
    #[arg(long)]
    pub raft_tick_ms: Option<u64>,
    /// How often each core runs housekeeping (segment roll by age, retention, compaction);
    /// Kafka's `log.retention.check.interval.ms`.
    #[arg(long)]
    pub housekeeping_interval_ms: Option<u64>,
    /// In a cluster, let core 0 hold partitions beside the controller. By default a cluster
    /// broker with two or more cores keeps core 0 for the controller (and client
    /// connections) and places partitions on the others.
    #[arg(long)]
    pub controller_core_shared: Option<bool>,
}

/// The same settings as read from the TOML file.
#[derive(Deserialize, Debug, Default)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    data_dir: Option<PathBuf>,
    kafka_addr: Option<SocketAddr>,
    advertised_kafka_addr: Option<String>,
    cores: Option<toml::Value>,
    node_id: Option<i32>,
    io_memory_mib: Option<usize>,
    auto_create_topics: Option<bool>,
    default_partitions: Option<i32>,
    fsync: Option<bool>,
    segment_bytes: Option<u64>,
    retention_ms: Option<i64>,
    offsets_topic_partitions: Option<i32>,
    group_initial_rebalance_delay_ms: Option<u64>,
    group_min_session_timeout_ms: Option<i32>,
    group_max_session_timeout_ms: Option<i32>,
    offsets_retention_minutes: Option<i64>,
    rpc_addr: Option<SocketAddr>,
    peers: Option<String>,
    controller_voters: Option<usize>,
    raft_tick_ms: Option<u64>,
    housekeeping_interval_ms: Option<u64>,
    controller_core_shared: Option<bool>,
}

/// Which cores to run on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CoreSpec {
    /// This many cores, spread over the online ones.
    Count(usize),
    /// Exactly these CPU ids.
    List(Vec<usize>),
}

impl CoreSpec {
    /// Parses "2" or "0,2-3".
    pub fn parse(s: &str) -> Result<CoreSpec, String> {
        let s = s.trim();
        if !s.contains([',', '-']) {
            let n: usize = s.parse().map_err(|_| format!("bad --cores {s:?}"))?;
            if n == 0 {
                return Err("--cores must be at least 1".into());
            }
            return Ok(CoreSpec::Count(n));
        }
        let mut cpus = Vec::new();
        for part in s.split(',') {
            let part = part.trim();
            match part.split_once('-') {
                Some((a, b)) => {
                    let a: usize = a
                        .trim()
                        .parse()
                        .map_err(|_| format!("bad core range {part:?}"))?;
                    let b: usize = b
                        .trim()
                        .parse()
                        .map_err(|_| format!("bad core range {part:?}"))?;
                    if a > b {
                        return Err(format!("bad core range {part:?}"));
                    }
                    cpus.extend(a..=b);
                }
                None => cpus.push(part.parse().map_err(|_| format!("bad core {part:?}"))?),
            }
        }
        cpus.sort_unstable();
        cpus.dedup();
        Ok(CoreSpec::List(cpus))
    }
}

/// The resolved configuration.
#[derive(Clone, Debug)]
pub struct Config {
    /// Root data directory.
    pub data_dir: PathBuf,
    /// Listener address.
    pub kafka_addr: SocketAddr,
    /// Host and port given to clients, when not the bound address.
    pub advertised_kafka_addr: Option<(String, u16)>,
    /// Cores.
    pub cores: CoreSpec,
    /// Broker id.
    pub node_id: i32,
    /// glommio io memory per core in bytes.
    pub io_memory_bytes: usize,
    /// Auto topic creation.
    pub auto_create_topics: bool,
    /// Default partition count.
    pub default_partitions: i32,
    /// fsync before acks.
    pub fsync: bool,
    /// Defaults for new topics' log configs.
    pub log_defaults: LogConfig,
    /// Storage limits per core.
    pub storage: StorageLimits,
    /// Consumer-group settings (Kafka's names and defaults).
    pub groups: GroupConfig,
    /// Broker limits.
    pub limits: Limits,
    /// The cluster, when this broker is one of several (`--peers`).
    pub cluster: Option<crate::cluster::ClusterConfig>,
    /// Core 0 holds partitions beside the controller (`--controller-core-shared`).
    pub controller_core_shared: bool,
}

impl Config {
    /// True when core 0 is kept for the controller: a cluster broker, unless shared.
    pub fn controller_core_dedicated(&self) -> bool {
        self.cluster.is_some() && !self.controller_core_shared
    }

    /// Resolves flags and the optional file into a config, or a message saying what is wrong.
    pub fn resolve(flags: Flags) -> Result<Config, String> {
        let file: FileConfig = match &flags.config {
            Some(path) => {
                let text = std::fs::read_to_string(path)
                    .map_err(|e| format!("reading {}: {e}", path.display()))?;
                toml::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))?
            }
            None => FileConfig::default(),
        };
        let cores = match (flags.cores, file.cores) {
            (Some(s), _) => CoreSpec::parse(&s)?,
            (None, Some(toml::Value::Integer(n))) if n > 0 => CoreSpec::Count(n as usize),
            (None, Some(toml::Value::String(s))) => CoreSpec::parse(&s)?,
            (None, Some(v)) => return Err(format!("bad cores value {v}")),
            (None, None) => CoreSpec::Count(online_cpus()),
        };
        let advertised = match flags.advertised_kafka_addr.or(file.advertised_kafka_addr) {
            Some(a) => {
                let (host, port) = a
                    .rsplit_once(':')
                    .ok_or_else(|| format!("advertised address {a:?} needs host:port"))?;
                let port: u16 = port.parse().map_err(|_| format!("bad port in {a:?}"))?;
                Some((host.to_string(), port))
            }
            None => None,
        };
        let io_memory_mib = flags.io_memory_mib.or(file.io_memory_mib).unwrap_or(2);
        if io_memory_mib == 0 || io_memory_mib > 1024 {
            return Err(format!("io_memory_mib {io_memory_mib} is outside 1..=1024"));
        }
        let default_partitions = flags
            .default_partitions
            .or(file.default_partitions)
            .unwrap_or(1);
        if default_partitions < 1 {
            return Err("default_partitions must be at least 1".into());
        }
        let mut log_defaults = LogConfig::default();
        if let Some(b) = flags.segment_bytes.or(file.segment_bytes) {
            log_defaults
                .set("segment.bytes", &b.to_string())
                .map_err(|e| e.to_string())?;
        }
        if let Some(ms) = flags.retention_ms.or(file.retention_ms) {
            log_defaults
                .set("retention.ms", &ms.to_string())
                .map_err(|e| e.to_string())?;
        }
        let groups = GroupConfig {
            offsets_topic_partitions: flags
                .offsets_topic_partitions
                .or(file.offsets_topic_partitions)
                .unwrap_or(50),
            initial_rebalance_delay_ms: flags
                .group_initial_rebalance_delay_ms
                .or(file.group_initial_rebalance_delay_ms)
                .unwrap_or(3000),
            min_session_timeout_ms: flags
                .group_min_session_timeout_ms
                .or(file.group_min_session_timeout_ms)
                .unwrap_or(6000),
            max_session_timeout_ms: flags
                .group_max_session_timeout_ms
                .or(file.group_max_session_timeout_ms)
                .unwrap_or(1_800_000),
            offsets_retention_minutes: flags
                .offsets_retention_minutes
                .or(file.offsets_retention_minutes)
                .unwrap_or(7 * 24 * 60),
        };
        groups.validate()?;
        let mut limits = Limits::default();
        if let Some(ms) = flags
            .housekeeping_interval_ms
            .or(file.housekeeping_interval_ms)
        {
            if ms == 0 {
                return Err("housekeeping_interval_ms must be at least 1".into());
            }
            limits.housekeeping_interval_ms = ms;
        }
        let node_id = flags.node_id.or(file.node_id).unwrap_or(1);
        let cluster = match flags.peers.or(file.peers) {
            Some(peers) => Some(crate::cluster::ClusterConfig::resolve(
                node_id,
                &peers,
                flags.rpc_addr.or(file.rpc_addr),
                flags
                    .controller_voters
                    .or(file.controller_voters)
                    .unwrap_or(3),
                flags.raft_tick_ms.or(file.raft_tick_ms).unwrap_or(100),
            )?),
            None => None,
        };
        Ok(Config {
            data_dir: flags
                .data_dir
                .or(file.data_dir)
                .unwrap_or_else(|| PathBuf::from("ringlog-data")),
            kafka_addr: flags
                .kafka_addr
                .or(file.kafka_addr)
                .unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 9092))),
            advertised_kafka_addr: advertised,
            cores,
            node_id,
            io_memory_bytes: io_memory_mib << 20,
            auto_create_topics: flags
                .auto_create_topics
                .or(file.auto_create_topics)
                .unwrap_or(true),
            default_partitions,
            fsync: flags.fsync.or(file.fsync).unwrap_or(true),
            log_defaults,
            storage: StorageLimits {
                cache_bytes_max: limits.cache_bytes_per_core,
                ..StorageLimits::default()
            },
            groups,
            limits,
            cluster,
            controller_core_shared: flags
                .controller_core_shared
                .or(file.controller_core_shared)
                .unwrap_or(false),
        })
    }
}

/// Consumer-group settings.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GroupConfig {
    /// `offsets.topic.num.partitions`.
    pub offsets_topic_partitions: i32,
    /// `group.initial.rebalance.delay.ms`.
    pub initial_rebalance_delay_ms: u64,
    /// `group.min.session.timeout.ms`.
    pub min_session_timeout_ms: i32,
    /// `group.max.session.timeout.ms`.
    pub max_session_timeout_ms: i32,
    /// `offsets.retention.minutes`.
    pub offsets_retention_minutes: i64,
}

impl GroupConfig {
    fn validate(&self) -> Result<(), String> {
        if !(1..=1000).contains(&self.offsets_topic_partitions) {
            return Err("offsets_topic_partitions must be in 1..=1000".into());
        }
        if self.initial_rebalance_delay_ms > 300_000 {
            return Err("group_initial_rebalance_delay_ms must be at most 300000".into());
        }
        if self.min_session_timeout_ms < 1
            || self.min_session_timeout_ms > self.max_session_timeout_ms
        {
            return Err("group session timeouts need 1 <= min <= max".into());
        }
        if self.offsets_retention_minutes < 1 {
            return Err("offsets_retention_minutes must be at least 1".into());
        }
        Ok(())
    }
}

fn online_cpus() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn core_specs() {
        assert_eq!(CoreSpec::parse("2"), Ok(CoreSpec::Count(2)));
        assert_eq!(CoreSpec::parse("0,2-3"), Ok(CoreSpec::List(vec![0, 2, 3])));
        assert!(CoreSpec::parse("0").is_err());
        assert!(CoreSpec::parse("3-1").is_err());
        assert!(CoreSpec::parse("x").is_err());
    }

    #[test]
    fn toml_file_and_flags_override() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("ringlog.toml");
        std::fs::write(
            &path,
            "data_dir = \"/var/lib/ringlog\"\nkafka_addr = \"127.0.0.1:9999\"\ncores = \"0,1\"\nfsync = false\nretention_ms = 60000\n",
        )
        .expect("write");
        let flags = Flags {
            config: Some(path.clone()),
            kafka_addr: Some("127.0.0.1:7777".parse().expect("addr")),
            ..Flags::default()
        };
        let c = Config::resolve(flags).expect("valid");
        assert_eq!(c.data_dir, PathBuf::from("/var/lib/ringlog"));
        assert_eq!(c.kafka_addr.port(), 7777, "flags override the file");
        assert_eq!(c.cores, CoreSpec::List(vec![0, 1]));
        assert!(!c.fsync);
        assert_eq!(c.log_defaults.retention_ms, 60000);
        std::fs::write(&path, "no_such_setting = 1\n").expect("write");
        let err = Config::resolve(Flags {
            config: Some(path),
            ..Flags::default()
        })
        .expect_err("unknown keys are refused");
        assert!(err.contains("no_such_setting"), "{err}");
    }

    #[test]
    fn defaults_need_no_file() {
        let c = Config::resolve(Flags::default()).expect("defaults");
        assert_eq!(c.kafka_addr.port(), 9092);
        assert!(c.auto_create_topics && c.fsync);
    }
}
