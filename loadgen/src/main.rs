//! The `ringlog-loadgen` command line.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};
use ringlog_loadgen::error::{LoadgenError, EXIT_NOT_SUSTAINED, EXIT_PUBLISH_ERRORS};
use ringlog_loadgen::limits::Limits;
use ringlog_loadgen::report::{self, Labels};
use ringlog_loadgen::run::{self, Cores, RunOptions};
use ringlog_loadgen::workload::{parse_compression, parse_rate, Acks, MessageSize, Workload};

const EXIT_CODES: &str = "Exit codes: 0 ok; 2 invalid workload or flags; 3 broker unreachable; \
4 topic missing or of another shape; 5 protocol or Kafka error; 6 target rate not sustained; \
7 could not start or write results; 8 publish errors (failed or unacknowledged messages).";

#[derive(Parser)]
#[command(name = "ringlog-loadgen", version, about = "Kafka-protocol load generator: open-loop constant rate with coordinated-omission correction, HdrHistogram percentiles, OpenMessaging-compatible JSON.", after_help = EXIT_CODES)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Produce (and optionally consume) a workload given by flags.
    Produce(ProduceArgs),
    /// Run a workload file (TOML; see perf/workloads/).
    Run(RunArgs),
    /// Compare two JSON results (a regression check): exit 1 if B is worse than A beyond the
    /// threshold on throughput or on p99 / p99.9 publish latency.
    Compare(CompareArgs),
}

#[derive(Args, Clone)]
struct Common {
    /// Bootstrap brokers, HOST:PORT[,HOST:PORT...] (the first that answers is used).
    #[arg(long, default_value = "127.0.0.1:9092")]
    bootstrap: String,
    /// Load cores: a count (spread over online CPUs) or a list such as 1 or 0,2-3.
    #[arg(long, default_value = "1")]
    cores: String,
    /// glommio io memory per load core, KiB (registered with io_uring; counts against the
    /// locked-memory limit).
    #[arg(long, default_value_t = 512)]
    io_memory_kib: usize,
    /// Write the JSON result here.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Write an HdrHistogram interval log here.
    #[arg(long)]
    hdr_log: Option<PathBuf>,
    /// Write the HTML report here.
    #[arg(long)]
    html: Option<PathBuf>,
    /// The broker under test, recorded in the result (e.g. "ringlog 0.1.0 abc123").
    #[arg(long)]
    broker_label: Option<String>,
    /// The git revision recorded in the result (default: `git rev-parse HEAD` here).
    #[arg(long)]
    git_revision: Option<String>,
    /// No per-second line.
    #[arg(long)]
    quiet: bool,
}

#[derive(Args)]
struct ProduceArgs {
    #[command(flatten)]
    common: Common,
    /// Topic (created if missing unless --no-create-topic).
    #[arg(long, default_value = "loadgen")]
    topic: String,
    /// Partitions of the topic.
    #[arg(long, default_value_t = 1)]
    partitions: usize,
    /// Fail instead of creating a missing topic.
    #[arg(long)]
    no_create_topic: bool,
    /// Replication factor of a created topic (-1: the broker's default).
    #[arg(long, default_value_t = -1)]
    replication_factor: i16,
    /// Message (value) size: BYTES or uniform:MIN-MAX.
    #[arg(long, default_value = "1024")]
    message_size: String,
    /// Messages per second in total (open loop), or max (closed loop).
    #[arg(long, default_value = "1000")]
    rate: String,
    /// Measured seconds.
    #[arg(long, default_value_t = 60)]
    duration: u64,
    /// Warm-up seconds before measuring.
    #[arg(long, default_value_t = 0)]
    warmup: u64,
    /// all, 1 or 0.
    #[arg(long, default_value = "all")]
    acks: String,
    /// Producers.
    #[arg(long, default_value_t = 1)]
    producers: usize,
    /// Consumers (end-to-end latency); partitions are split between them.
    #[arg(long, default_value_t = 0)]
    consumers: usize,
    /// Keyed messages over this many distinct keys (default: unkeyed).
    #[arg(long)]
    key_count: Option<u32>,
    /// Batch size per partition, bytes.
    #[arg(long, default_value_t = 131072)]
    batch_size: usize,
    /// Linger per batch, ms.
    #[arg(long, default_value_t = 0)]
    linger_ms: u64,
    /// none, gzip, snappy, lz4 or zstd.
    #[arg(long, default_value = "none")]
    compression: String,
    /// Requests in flight per connection.
    #[arg(long, default_value_t = 5)]
    max_in_flight: usize,
    /// Consumers' fetch max_wait_ms.
    #[arg(long, default_value_t = 100)]
    fetch_max_wait_ms: i32,
    /// Name of the workload in results.
    #[arg(long, default_value = "cli")]
    name: String,
}

#[derive(Args)]
struct RunArgs {
    #[command(flatten)]
    common: Common,
    /// The workload file.
    #[arg(long)]
    workload: PathBuf,
    /// Override the file's rate (messages/s or max).
    #[arg(long)]
    rate: Option<String>,
    /// Override the file's measured seconds.
    #[arg(long)]
    duration: Option<u64>,
    /// Override the file's warm-up seconds.
    #[arg(long)]
    warmup: Option<u64>,
    /// Override the file's topic.
    #[arg(long)]
    topic: Option<String>,
}

#[derive(Args)]
struct CompareArgs {
    /// The baseline result.
    a: PathBuf,
    /// The candidate result.
    b: PathBuf,
    /// Allowed relative regression (0.1 = 10%).
    #[arg(long, default_value_t = 0.1)]
    threshold: f64,
}

fn bad(e: String) -> LoadgenError {
    LoadgenError::Workload(e)
}

fn workload_from_flags(a: &ProduceArgs) -> Result<Workload, LoadgenError> {
    Ok(Workload {
        name: a.name.clone(),
        topic: a.topic.clone(),
        partitions: a.partitions,
        create_topic: !a.no_create_topic,
        replication_factor: a.replication_factor,
        producers: a.producers,
        consumers: a.consumers,
        message_size: MessageSize::parse(&a.message_size).map_err(bad)?,
        key_count: a.key_count,
        batch_size_bytes: a.batch_size,
        linger_ms: a.linger_ms,
        acks: Acks::parse(&a.acks).map_err(bad)?,
        compression: parse_compression(&a.compression).map_err(bad)?,
        max_in_flight: a.max_in_flight,
        rate: parse_rate(&a.rate).map_err(bad)?,
        duration_s: a.duration,
        warmup_s: a.warmup,
        fetch_max_wait_ms: a.fetch_max_wait_ms,
    })
}

fn execute(workload: Workload, c: &Common) -> Result<i32, LoadgenError> {
    let limits = Limits::default();
    let cores = Cores::parse(&c.cores).map_err(bad)?;
    let opts = RunOptions {
        bootstrap: c.bootstrap.clone(),
        workload,
        cores,
        io_memory_bytes: c.io_memory_kib.max(64) << 10,
        live: !c.quiet,
    };
    let result = run::run(&opts, &limits)?;
    let v = report::verdict(&result);
    print!("{}", report::summary(&result, &v));
    let labels = Labels {
        broker: c.broker_label.clone(),
        git_revision: c.git_revision.clone(),
    };
    if let Some(p) = &c.json {
        report::write_json(p, &report::to_json(&result, &v, &labels))?;
    }
    if let Some(p) = &c.hdr_log {
        report::write_hdr_log(p, &result)?;
    }
    if let Some(p) = &c.html {
        std::fs::write(p, report::to_html(&result, &v)).map_err(|e| LoadgenError::Output {
            path: p.display().to_string(),
            reason: e.to_string(),
        })?;
    }
    if v.sustained == Some(false) {
        eprintln!(
            "loadgen: target rate not sustained: {}",
            v.why_not.as_deref().unwrap_or("")
        );
        return Ok(EXIT_NOT_SUSTAINED);
    }
    if result.totals.errors > 0 {
        eprintln!(
            "loadgen: {} messages failed or were not acknowledged",
            result.totals.errors
        );
        return Ok(EXIT_PUBLISH_ERRORS);
    }
    Ok(0)
}

fn compare(a: &CompareArgs) -> Result<i32, LoadgenError> {
    let load = |p: &PathBuf| -> Result<serde_json::Value, LoadgenError> {
        let text = std::fs::read_to_string(p).map_err(|e| bad(format!("{}: {e}", p.display())))?;
        serde_json::from_str(&text).map_err(|e| bad(format!("{}: {e}", p.display())))
    };
    let (ja, jb) = (load(&a.a)?, load(&a.b)?);
    let num = |j: &serde_json::Value, path: &[&str]| -> Option<f64> {
        let mut v = j;
        for k in path {
            v = v.get(*k)?;
        }
        v.as_f64()
    };
    // (name, path, higher is better)
    let metrics: [(&str, &[&str], bool); 6] = [
        (
            "publish rate msg/s",
            &["ringlog", "achievedPublishRate"],
            true,
        ),
        ("publish MB/s", &["ringlog", "achievedPublishMBps"], true),
        ("publish p50 ms", &["aggregatedPublishLatency50pct"], false),
        ("publish p99 ms", &["aggregatedPublishLatency99pct"], false),
        (
            "publish p99.9 ms",
            &["aggregatedPublishLatency999pct"],
            false,
        ),
        (
            "end-to-end p99 ms",
            &["aggregatedEndToEndLatency99pct"],
            false,
        ),
    ];
    let mut worse = Vec::new();
    println!("{:<22}{:>14}{:>14}{:>10}", "metric", "A", "B", "B/A");
    for (name, path, higher_better) in metrics {
        let (Some(x), Some(y)) = (num(&ja, path), num(&jb, path)) else {
            continue;
        };
        let ratio = if x > 0.0 { y / x } else { f64::NAN };
        println!("{name:<22}{x:>14.3}{y:>14.3}{ratio:>10.3}");
        let gated = !name.starts_with("publish p50") && !name.starts_with("end-to-end");
        if gated && ratio.is_finite() {
            let regressed = if higher_better {
                ratio < 1.0 - a.threshold
            } else {
                ratio > 1.0 + a.threshold
            };
            if regressed {
                worse.push(name);
            }
        }
    }
    if worse.is_empty() {
        println!("no regression beyond {:.0}%", a.threshold * 100.0);
        Ok(0)
    } else {
        println!(
            "REGRESSION beyond {:.0}%: {}",
            a.threshold * 100.0,
            worse.join(", ")
        );
        Ok(1)
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let r = match &cli.cmd {
        Cmd::Produce(a) => workload_from_flags(a).and_then(|w| execute(w, &a.common)),
        Cmd::Run(a) => Workload::from_file(&a.workload).and_then(|mut w| {
            if let Some(r) = &a.rate {
                w.rate = parse_rate(r).map_err(bad)?;
            }
            if let Some(d) = a.duration {
                w.duration_s = d;
            }
            if let Some(d) = a.warmup {
                w.warmup_s = d;
            }
            if let Some(t) = &a.topic {
                w.topic = t.clone();
            }
            execute(w, &a.common)
        }),
        Cmd::Compare(a) => compare(a),
    };
    match r {
        Ok(code) => ExitCode::from(code as u8),
        Err(e) => {
            eprintln!("loadgen: error: {e}");
            ExitCode::from(e.exit_code() as u8)
        }
    }
}
