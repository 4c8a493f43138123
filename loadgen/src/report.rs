//! Results: the live line, the summary table, the JSON result (OpenMessaging Benchmark's field
//! names where they overlap, milliseconds), HdrHistogram interval logs, and an HTML report with
//! SVG plots (latency over time, the percentile spectrum, throughput), all self-contained.

use std::fmt::Write as _;
use std::path::Path;

use hdrhistogram::serialization::interval_log::{IntervalLogWriterBuilder, Tag};
use hdrhistogram::serialization::V2DeflateSerializer;
use serde_json::{json, Map, Value};

use crate::error::LoadgenError;
use crate::run::{RunResult, Second};
use crate::stats::{percentiles, spectrum, Percentiles, QUANTILES};
use crate::workload::{compression_name, MessageSize, Rate, Workload};

/// One line per second: rates, latency so far this second, errors, lag.
pub fn live_line(s: &Second, cum: (u64, u64), w: &Workload) -> String {
    let iv = &s.interval;
    let p = percentiles(&iv.publish);
    let e = percentiles(&iv.end_to_end);
    let mb = iv.acked_bytes as f64 / 1e6;
    let backlog = cum.0.saturating_sub(cum.1);
    let mut line = format!(
        "[{:>4}s{}] pub {:>9} msg/s {:>8.2} MB/s  p50 {:>7.3} p99 {:>7.3} max {:>8.3} ms",
        s.t_s,
        if s.warmup { " warm-up" } else { "" },
        iv.acked_msgs,
        mb,
        p.p50,
        p.p99,
        p.max
    );
    if w.consumers > 0 {
        let _ = write!(
            line,
            " | cons {:>9} msg/s e2e p99 {:>7.3} ms backlog {backlog}",
            iv.consumed_msgs, e.p99
        );
    }
    let _ = write!(
        line,
        " | err {} lag {:.1} ms",
        iv.errors,
        iv.schedule_lag_us as f64 / 1000.0
    );
    line
}

/// Figures derived from a run, used by the summary, the JSON and the exit code.
#[derive(Debug, Clone)]
pub struct Verdict {
    /// Messages per second acknowledged during the measured seconds.
    pub achieved_rate: f64,
    /// MB/s (10^6 bytes of values) acknowledged during the measured seconds.
    pub achieved_mb_s: f64,
    /// Messages per second consumed during the measured seconds.
    pub consume_rate: f64,
    /// Constant rate: whether the rate was kept (None in max mode).
    pub sustained: Option<bool>,
    /// Why not, if not.
    pub why_not: Option<String>,
    pub publish: Percentiles,
    pub publish_delay: Percentiles,
    pub end_to_end: Percentiles,
    /// A load CPU was busier than the warning threshold over the measured window: the latency
    /// figures include the load generator's own queueing (`None` when not measured).
    pub load_cpu_saturated: Option<bool>,
}

/// Tolerance of the sustained-rate check: the measured rate may fall this much below target.
pub const SUSTAIN_TOLERANCE: f64 = 0.05;
/// ... and the producers may be at most this far behind schedule when the window closes.
pub const SUSTAIN_LAG_MS_MAX: f64 = 1000.0;

fn measured(r: &RunResult) -> impl Iterator<Item = &Second> {
    r.seconds
        .iter()
        .filter(|s| !s.warmup)
        .take(r.workload.duration_s as usize)
}

/// Computes the verdict of a run.
pub fn verdict(r: &RunResult) -> Verdict {
    let secs = r.workload.duration_s.max(1) as f64;
    let (acked, bytes, consumed) = measured(r).fold((0u64, 0u64, 0u64), |a, s| {
        (
            a.0 + s.interval.acked_msgs,
            a.1 + s.interval.acked_bytes,
            a.2 + s.interval.consumed_msgs,
        )
    });
    let achieved_rate = acked as f64 / secs;
    let lag_ms = r.lag_at_end_us as f64 / 1000.0;
    let (sustained, why_not) = match r.workload.rate {
        Rate::Max => (None, None),
        Rate::Constant(target) if r.workload.producers > 0 => {
            let mut why = Vec::new();
            if achieved_rate < target * (1.0 - SUSTAIN_TOLERANCE) {
                why.push(format!(
                    "achieved {achieved_rate:.0} msg/s, below the target {target:.0} msg/s by more than {:.0}%",
                    SUSTAIN_TOLERANCE * 100.0
                ));
            }
            if lag_ms > SUSTAIN_LAG_MS_MAX {
                why.push(format!(
                    "producers were {lag_ms:.0} ms behind schedule when the window closed"
                ));
            }
            if why.is_empty() {
                (Some(true), None)
            } else {
                (Some(false), Some(why.join("; ")))
            }
        }
        Rate::Constant(_) => (None, None),
    };
    Verdict {
        achieved_rate,
        achieved_mb_s: bytes as f64 / secs / 1e6,
        consume_rate: consumed as f64 / secs,
        sustained,
        why_not,
        publish: percentiles(&r.totals.publish),
        publish_delay: percentiles(&r.totals.publish_delay),
        end_to_end: percentiles(&r.totals.end_to_end),
        load_cpu_saturated: r
            .cpu
            .as_ref()
            .filter(|c| !c.load_cpus.is_empty())
            .map(|c| c.max_busy() > r.load_cpu_busy_warn_fraction),
    }
}

/// The summary table, for a terminal.
pub fn summary(r: &RunResult, v: &Verdict) -> String {
    let w = &r.workload;
    let mut s = String::new();
    let size = match w.message_size {
        MessageSize::Fixed { bytes } => format!("{bytes} B"),
        MessageSize::Uniform { min, max } => format!("{min}-{max} B"),
    };
    let _ = writeln!(
        s,
        "workload {}: topic {} ({} partitions), {} producers, {} consumers, {size} messages, acks={}, {} cores",
        w.name,
        w.topic,
        w.partitions,
        w.producers,
        w.consumers,
        w.acks.name(),
        r.cores
    );
    let target = match w.rate {
        Rate::Max => "max".to_string(),
        Rate::Constant(t) => format!("{t:.0} msg/s"),
    };
    let _ = writeln!(
        s,
        "rate: target {target}, achieved {:.0} msg/s ({:.2} MB/s), consumed {:.0} msg/s{}",
        v.achieved_rate,
        v.achieved_mb_s,
        v.consume_rate,
        match (v.sustained, &v.why_not) {
            (Some(true), _) => " - sustained".to_string(),
            (Some(false), Some(why)) => format!(" - NOT SUSTAINED: {why}"),
            _ => String::new(),
        }
    );
    let _ = writeln!(
        s,
        "{:<14}{:>10}{:>10}{:>10}{:>10}{:>10}{:>10}{:>10}{:>10}{:>11}{:>11}",
        "latency (ms)", "avg", "p50", "p75", "p90", "p95", "p99", "p99.9", "p99.99", "max", "count"
    );
    for (name, p) in [
        ("publish", &v.publish),
        ("publish delay", &v.publish_delay),
        ("end-to-end", &v.end_to_end),
    ] {
        let _ = writeln!(
            s,
            "{name:<14}{:>10.3}{:>10.3}{:>10.3}{:>10.3}{:>10.3}{:>10.3}{:>10.3}{:>10.3}{:>11.3}{:>11}",
            p.avg, p.p50, p.p75, p.p90, p.p95, p.p99, p.p999, p.p9999, p.max, p.count
        );
    }
    if r.totals.produce_requests > 0 {
        let _ = writeln!(
            s,
            "batching: {} produce requests, {:.1} messages and {:.2} partition batches per request",
            r.totals.produce_requests,
            r.totals.acked_msgs as f64 / r.totals.produce_requests as f64,
            r.totals.produce_batches as f64 / r.totals.produce_requests as f64
        );
    }
    let _ = writeln!(
        s,
        "messages: {} intended, {} acked, {} errors in the window; {} acked and {} consumed in the whole run",
        r.totals.intended_msgs,
        r.totals.acked_msgs,
        r.totals.errors,
        r.run_acked,
        r.run_consumed
    );
    if let Some(c) = &r.cpu {
        let cpus: Vec<String> = c
            .load_cpus
            .iter()
            .map(|(cpu, busy)| format!("CPU {cpu} {:.0}%", busy * 100.0))
            .collect();
        let _ = writeln!(
            s,
            "load CPUs over the window: {} busy (all work on them, kernel included); the load generator used {:.2} cores",
            if cpus.is_empty() { "?".to_string() } else { cpus.join(", ") },
            c.process_cores
        );
        if v.load_cpu_saturated == Some(true) {
            let _ = writeln!(
                s,
                "WARNING: a load CPU was over {:.0}% busy: the latency figures include the load generator's own queueing; give it more or quieter cores",
                r.load_cpu_busy_warn_fraction * 100.0
            );
        }
    }
    s
}

fn pct_lists(out: &mut Map<String, Value>, prefix: &str, secs: &[&Second], pick: PickHist) {
    let ps: Vec<Percentiles> = secs.iter().map(|s| percentiles(pick(s))).collect();
    out.insert(
        format!("{prefix}Avg"),
        json!(ps.iter().map(|p| p.avg).collect::<Vec<_>>()),
    );
    for (_, suffix) in QUANTILES {
        out.insert(
            format!("{prefix}{suffix}"),
            json!(ps.iter().map(|p| p.by_suffix(suffix)).collect::<Vec<_>>()),
        );
    }
    out.insert(
        format!("{prefix}Max"),
        json!(ps.iter().map(|p| p.max).collect::<Vec<_>>()),
    );
}

type PickHist = fn(&Second) -> &hdrhistogram::Histogram<u64>;

fn aggregated(out: &mut Map<String, Value>, prefix: &str, h: &hdrhistogram::Histogram<u64>) {
    let p = percentiles(h);
    out.insert(format!("{prefix}Avg"), json!(p.avg));
    for (_, suffix) in QUANTILES {
        out.insert(format!("{prefix}{suffix}"), json!(p.by_suffix(suffix)));
    }
    out.insert(format!("{prefix}Max"), json!(p.max));
    let q: Map<String, Value> = spectrum(h)
        .into_iter()
        .map(|(q, v)| (format!("{q}"), json!(v)))
        .collect();
    out.insert(format!("{prefix}Quantiles"), Value::Object(q));
}

/// Facts about the machine, for the result.
pub fn hardware() -> Value {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split_once(':'))
        .map(|(_, m)| m.trim().to_string());
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let mem_kib = meminfo
        .lines()
        .find(|l| l.starts_with("MemTotal:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|n| n.parse::<u64>().ok());
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_string())
        .ok();
    json!({
        "cpuModel": model,
        "onlineCpus": std::thread::available_parallelism().map(|n| n.get()).ok(),
        "memTotalKiB": mem_kib,
        "kernel": kernel,
    })
}

/// Labels for the result that the caller knows (broker name and version, git revision).
#[derive(Debug, Clone, Default)]
pub struct Labels {
    pub broker: Option<String>,
    pub git_revision: Option<String>,
}

/// The JSON result.
pub fn to_json(r: &RunResult, v: &Verdict, labels: &Labels) -> Value {
    let w = &r.workload;
    let secs: Vec<&Second> = measured(r).collect();
    let mut o = Map::new();
    o.insert("workload".into(), json!(w.name));
    o.insert("driver".into(), json!("ringlog-loadgen"));
    o.insert(
        "messageSize".into(),
        json!(w.message_size.mean().round() as u64),
    );
    o.insert("topics".into(), json!(1));
    o.insert("partitions".into(), json!(w.partitions));
    o.insert("producersPerTopic".into(), json!(w.producers));
    o.insert("consumersPerTopic".into(), json!(w.consumers));
    o.insert(
        "publishRate".into(),
        json!(secs
            .iter()
            .map(|s| s.interval.acked_msgs as f64)
            .collect::<Vec<_>>()),
    );
    o.insert(
        "publishErrorRate".into(),
        json!(secs
            .iter()
            .map(|s| s.interval.errors as f64)
            .collect::<Vec<_>>()),
    );
    o.insert(
        "consumeRate".into(),
        json!(secs
            .iter()
            .map(|s| s.interval.consumed_msgs as f64)
            .collect::<Vec<_>>()),
    );
    let mut cum = (0i64, 0i64);
    let mut backlog = Vec::new();
    for s in &r.seconds {
        cum.0 += s.interval.acked_msgs as i64;
        cum.1 += s.interval.consumed_msgs as i64;
        if !s.warmup && backlog.len() < secs.len() {
            backlog.push(if w.consumers > 0 { cum.0 - cum.1 } else { 0 });
        }
    }
    o.insert("backlog".into(), json!(backlog));
    pct_lists(&mut o, "publishLatency", &secs, |s| &s.interval.publish);
    aggregated(&mut o, "aggregatedPublishLatency", &r.totals.publish);
    // OpenMessaging keeps publish delay in microseconds.
    let d = percentiles(&r.totals.publish_delay);
    o.insert(
        "aggregatedPublishDelayLatencyAvg".into(),
        json!(d.avg * 1000.0),
    );
    for (_, suffix) in QUANTILES {
        o.insert(
            format!("aggregatedPublishDelayLatency{suffix}"),
            json!((d.by_suffix(suffix) * 1000.0).round() as u64),
        );
    }
    o.insert(
        "aggregatedPublishDelayLatencyMax".into(),
        json!((d.max * 1000.0).round() as u64),
    );
    pct_lists(&mut o, "endToEndLatency", &secs, |s| &s.interval.end_to_end);
    aggregated(&mut o, "aggregatedEndToEndLatency", &r.totals.end_to_end);
    let series: Vec<Value> = r
        .seconds
        .iter()
        .map(|s| {
            let p = percentiles(&s.interval.publish);
            let e = percentiles(&s.interval.end_to_end);
            json!({
                "t": s.t_s,
                "warmup": s.warmup,
                "publishRate": s.interval.acked_msgs,
                "publishMBps": s.interval.acked_bytes as f64 / 1e6,
                "consumeRate": s.interval.consumed_msgs,
                "errors": s.interval.errors,
                "publishP50": p.p50, "publishP99": p.p99, "publishP999": p.p999, "publishMax": p.max,
                "endToEndP50": e.p50, "endToEndP99": e.p99, "endToEndMax": e.max,
                "scheduleLagMs": s.interval.schedule_lag_us as f64 / 1000.0,
            })
        })
        .collect();
    let (mode, target) = match w.rate {
        Rate::Max => ("max", Value::Null),
        Rate::Constant(t) => ("constant", json!(t)),
    };
    let git = labels.git_revision.clone().or_else(git_revision);
    o.insert(
        "ringlog".into(),
        json!({
            "loadgenVersion": env!("CARGO_PKG_VERSION"),
            "gitRevision": git,
            "broker": labels.broker,
            "bootstrap": r.bootstrap,
            "clusterId": r.cluster.cluster_id,
            "brokers": r.cluster.brokers.len(),
            "startedUnixMs": r.started_unix_ms,
            "hardware": hardware(),
            "loadgenCores": r.cores,
            "mode": mode,
            "targetRate": target,
            "achievedPublishRate": v.achieved_rate,
            "achievedPublishMBps": v.achieved_mb_s,
            "achievedConsumeRate": v.consume_rate,
            "sustained": v.sustained,
            "notSustainedBecause": v.why_not,
            "scheduleLagAtEndMs": r.lag_at_end_us as f64 / 1000.0,
            "produceRequests": r.totals.produce_requests,
            "messagesPerProduceRequest": if r.totals.produce_requests > 0 {
                json!(r.totals.acked_msgs as f64 / r.totals.produce_requests as f64)
            } else {
                Value::Null
            },
            "batchesPerProduceRequest": if r.totals.produce_requests > 0 {
                json!(r.totals.produce_batches as f64 / r.totals.produce_requests as f64)
            } else {
                Value::Null
            },
            "messagesIntended": r.totals.intended_msgs,
            "messagesAcked": r.totals.acked_msgs,
            "messagesConsumed": r.totals.consumed_msgs,
            "errors": r.totals.errors,
            "runAcked": r.run_acked,
            "runConsumed": r.run_consumed,
            "publishLatency": v.publish,
            "publishDelayLatency": v.publish_delay,
            "endToEndLatency": v.end_to_end,
            "latencyUnit": "ms",
            "loadCpus": r.cpu.as_ref().map(load_cpus_json),
            "loadgenProcessCores": r.cpu.as_ref().map(|c| c.process_cores),
            "loadCpuSaturated": v.load_cpu_saturated,
            "loadCpuBusyWarnFraction": r.load_cpu_busy_warn_fraction,
            "parameters": {
                "topic": w.topic,
                "partitions": w.partitions,
                "producers": w.producers,
                "consumers": w.consumers,
                "messageSize": w.message_size,
                "keyCount": w.key_count,
                "batchSizeBytes": w.batch_size_bytes,
                "lingerMs": w.linger_ms,
                "acks": w.acks.name(),
                "compression": compression_name(w.compression),
                "maxInFlight": w.max_in_flight,
                "rate": match w.rate { Rate::Max => json!("max"), Rate::Constant(t) => json!(t) },
                "durationS": w.duration_s,
                "warmupS": w.warmup_s,
                "fetchMaxWaitMs": w.fetch_max_wait_ms,
            },
            "timeSeries": series,
        }),
    );
    Value::Object(o)
}

/// Each load CPU's busy fraction over the window, as JSON objects.
fn load_cpus_json(c: &crate::cpu::CpuUsage) -> Vec<Value> {
    c.load_cpus
        .iter()
        .map(|(cpu, busy)| json!({"cpu": cpu, "busyFraction": busy}))
        .collect()
}

/// The git revision of the current directory's repository, if any.
pub fn git_revision() -> Option<String> {
    let out = std::process::Command::new("git")
        .args(["rev-parse", "--short=12", "HEAD"])
        .stderr(std::process::Stdio::null())
        .output()
        .ok()?;
    if !out.status.success() {
        return None;
    }
    Some(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

fn io_err(path: &Path) -> impl Fn(String) -> LoadgenError + '_ {
    move |reason| LoadgenError::Output {
        path: path.display().to_string(),
        reason,
    }
}

/// Writes `value` as pretty JSON.
pub fn write_json(path: &Path, value: &Value) -> Result<(), LoadgenError> {
    let text = serde_json::to_string_pretty(value).map_err(|e| io_err(path)(e.to_string()))?;
    std::fs::write(path, text + "\n").map_err(|e| io_err(path)(e.to_string()))
}

/// Writes the per-second publish and end-to-end histograms as an HdrHistogram interval log
/// (tags `publish` and `e2e`, values in microseconds), readable by HdrHistogram's log tools.
pub fn write_hdr_log(path: &Path, r: &RunResult) -> Result<(), LoadgenError> {
    let err = io_err(path);
    let mut file = std::fs::File::create(path).map_err(|e| err(e.to_string()))?;
    let mut ser = V2DeflateSerializer::new();
    let start = std::time::UNIX_EPOCH + std::time::Duration::from_millis(r.started_unix_ms);
    let mut log = IntervalLogWriterBuilder::new()
        .add_comment("ringlog-loadgen latency log, values in microseconds")
        .with_start_time(start)
        .with_base_time(start)
        .with_max_value_divisor(1000.0)
        .begin_log_with(&mut file, &mut ser)
        .map_err(|e| err(e.to_string()))?;
    let publish = Tag::new("publish");
    let e2e = Tag::new("e2e");
    for s in &r.seconds {
        let at = std::time::Duration::from_secs(s.t_s - 1);
        let len = std::time::Duration::from_secs(1);
        log.write_histogram(&s.interval.publish, at, len, publish)
            .map_err(|e| err(format!("{e:?}")))?;
        if !s.interval.end_to_end.is_empty() {
            log.write_histogram(&s.interval.end_to_end, at, len, e2e)
                .map_err(|e| err(format!("{e:?}")))?;
        }
    }
    Ok(())
}

struct Series<'a> {
    name: &'a str,
    color: &'a str,
    points: Vec<(f64, f64)>,
}

/// A line chart as inline SVG. `log_y` plots log10 of positive values.
fn svg_chart(
    title: &str,
    x_label: &str,
    y_label: &str,
    series: &[Series],
    log_y: bool,
    x_ticks: Option<&[(f64, &str)]>,
) -> String {
    let (w, h, ml, mr, mt, mb) = (760.0, 320.0, 70.0, 150.0, 30.0, 45.0);
    let pts: Vec<(f64, f64)> = series
        .iter()
        .flat_map(|s| s.points.iter().copied())
        .filter(|(_, y)| !log_y || *y > 0.0)
        .collect();
    let mut out = format!(
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" font-family="sans-serif" font-size="11"><text x="{}" y="18" font-size="14" text-anchor="middle">{title}</text>"#,
        w / 2.0
    );
    if pts.is_empty() {
        out.push_str(r#"<text x="300" y="160">no data</text></svg>"#);
        return out;
    }
    let ty = |y: f64| if log_y { y.log10() } else { y };
    let (mut x0, mut x1) = (f64::MAX, f64::MIN);
    let (mut y0, mut y1) = (f64::MAX, f64::MIN);
    for &(x, y) in &pts {
        x0 = x0.min(x);
        x1 = x1.max(x);
        y0 = y0.min(ty(y));
        y1 = y1.max(ty(y));
    }
    if log_y {
        y0 = y0.floor();
        y1 = y1.ceil().max(y0 + 1.0);
    } else {
        y0 = 0.0;
        y1 = if y1 <= 0.0 { 1.0 } else { y1 * 1.1 };
    }
    if x1 <= x0 {
        x1 = x0 + 1.0;
    }
    let px = |x: f64| ml + (x - x0) / (x1 - x0) * (w - ml - mr);
    let py = |y: f64| h - mb - (ty(y) - y0) / (y1 - y0) * (h - mt - mb);
    let _ = write!(
        out,
        r##"<rect x="{ml}" y="{mt}" width="{}" height="{}" fill="none" stroke="#999"/>"##,
        w - ml - mr,
        h - mt - mb
    );
    // Y ticks.
    let yticks: Vec<f64> = if log_y {
        (y0 as i32..=y1 as i32).map(|e| 10f64.powi(e)).collect()
    } else {
        (0..=4).map(|i| y0 + (y1 - y0) * i as f64 / 4.0).collect()
    };
    for t in yticks {
        let y = if log_y {
            h - mb - (t.log10() - y0) / (y1 - y0) * (h - mt - mb)
        } else {
            h - mb - (t - y0) / (y1 - y0) * (h - mt - mb)
        };
        let _ = write!(
            out,
            r##"<line x1="{ml}" x2="{}" y1="{y:.1}" y2="{y:.1}" stroke="#eee"/><text x="{}" y="{:.1}" text-anchor="end">{}</text>"##,
            w - mr,
            ml - 4.0,
            y + 4.0,
            fmt_num(t)
        );
    }
    // X ticks.
    let xt: Vec<(f64, String)> = match x_ticks {
        Some(t) => t.iter().map(|(x, l)| (*x, l.to_string())).collect(),
        None => (0..=5)
            .map(|i| {
                let x = x0 + (x1 - x0) * i as f64 / 5.0;
                (x, fmt_num(x))
            })
            .collect(),
    };
    for (x, l) in xt {
        if x < x0 - 1e-9 || x > x1 + 1e-9 {
            continue;
        }
        let _ = write!(
            out,
            r##"<line x1="{0:.1}" x2="{0:.1}" y1="{mt}" y2="{1}" stroke="#eee"/><text x="{0:.1}" y="{2}" text-anchor="middle">{l}</text>"##,
            px(x),
            h - mb,
            h - mb + 14.0
        );
    }
    let _ = write!(
        out,
        r#"<text x="{}" y="{}" text-anchor="middle">{x_label}</text><text x="14" y="{}" transform="rotate(-90 14 {})" text-anchor="middle">{y_label}</text>"#,
        ml + (w - ml - mr) / 2.0,
        h - 8.0,
        mt + (h - mt - mb) / 2.0,
        mt + (h - mt - mb) / 2.0
    );
    for (i, s) in series.iter().enumerate() {
        let path: Vec<String> = s
            .points
            .iter()
            .filter(|(_, y)| !log_y || *y > 0.0)
            .map(|&(x, y)| format!("{:.1},{:.1}", px(x), py(y)))
            .collect();
        if !path.is_empty() {
            let _ = write!(
                out,
                r#"<polyline fill="none" stroke="{}" stroke-width="1.5" points="{}"/>"#,
                s.color,
                path.join(" ")
            );
        }
        let ly = mt + 12.0 + i as f64 * 16.0;
        let _ = write!(
            out,
            r#"<line x1="{0}" x2="{1}" y1="{ly}" y2="{ly}" stroke="{2}" stroke-width="3"/><text x="{3}" y="{4}">{5}</text>"#,
            w - mr + 10.0,
            w - mr + 30.0,
            s.color,
            w - mr + 35.0,
            ly + 4.0,
            s.name
        );
    }
    out.push_str("</svg>");
    out
}

fn fmt_num(v: f64) -> String {
    if v == 0.0 {
        "0".into()
    } else if v.abs() >= 1000.0 {
        format!("{v:.0}")
    } else if v.abs() >= 1.0 {
        format!("{v:.3}")
            .trim_end_matches('0')
            .trim_end_matches('.')
            .to_string()
    } else {
        format!("{v:.4}")
            .trim_end_matches('0')
            .trim_end_matches('.')
            .to_string()
    }
}

fn html_escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// The HTML report: summary, latency over time, percentile spectrum, throughput.
pub fn to_html(r: &RunResult, v: &Verdict) -> String {
    let per_sec = |f: fn(&Second) -> f64| -> Vec<(f64, f64)> {
        r.seconds.iter().map(|s| (s.t_s as f64, f(s))).collect()
    };
    let lat = svg_chart(
        "Publish latency over time (per second)",
        "seconds since start",
        "ms (log)",
        &[
            Series {
                name: "p50",
                color: "#2b8cbe",
                points: per_sec(|s| percentiles(&s.interval.publish).p50),
            },
            Series {
                name: "p99",
                color: "#e6550d",
                points: per_sec(|s| percentiles(&s.interval.publish).p99),
            },
            Series {
                name: "max",
                color: "#756bb1",
                points: per_sec(|s| percentiles(&s.interval.publish).max),
            },
            Series {
                name: "e2e p99",
                color: "#31a354",
                points: per_sec(|s| percentiles(&s.interval.end_to_end).p99),
            },
        ],
        true,
        None,
    );
    // Percentile spectrum: x = log10(1 / (1 - q)).
    let spec = |h: &hdrhistogram::Histogram<u64>| -> Vec<(f64, f64)> {
        spectrum(h)
            .into_iter()
            .filter(|(q, _)| *q < 100.0)
            .map(|(q, v)| ((1.0 / (1.0 - q / 100.0)).log10(), v))
            .collect()
    };
    let ticks: [(f64, &str); 7] = [
        (0.0, "0%"),
        (1.0, "90%"),
        (2.0, "99%"),
        (3.0, "99.9%"),
        (4.0, "99.99%"),
        (5.0, "99.999%"),
        (6.0, "99.9999%"),
    ];
    let spectrum_svg = svg_chart(
        "Latency by percentile (measured window)",
        "percentile",
        "ms (log)",
        &[
            Series {
                name: "publish",
                color: "#e6550d",
                points: spec(&r.totals.publish),
            },
            Series {
                name: "end-to-end",
                color: "#31a354",
                points: spec(&r.totals.end_to_end),
            },
        ],
        true,
        Some(&ticks),
    );
    let thr = svg_chart(
        "Throughput (per second)",
        "seconds since start",
        "messages/s",
        &[
            Series {
                name: "published",
                color: "#2b8cbe",
                points: per_sec(|s| s.interval.acked_msgs as f64),
            },
            Series {
                name: "consumed",
                color: "#31a354",
                points: per_sec(|s| s.interval.consumed_msgs as f64),
            },
            Series {
                name: "errors",
                color: "#de2d26",
                points: per_sec(|s| s.interval.errors as f64),
            },
        ],
        false,
        None,
    );
    format!(
        "<!doctype html><html><head><meta charset=\"utf-8\"><title>ringlog-loadgen: {name}</title>\
<style>body{{font-family:sans-serif;margin:24px}}pre{{background:#f6f6f6;padding:12px}}</style></head><body>\
<h1>ringlog-loadgen: {name}</h1><p>bootstrap {boot}, {cores} load cores, git {git}</p><pre>{summary}</pre>\
{lat}<br>{spectrum_svg}<br>{thr}</body></html>\n",
        name = html_escape(&r.workload.name),
        boot = html_escape(&r.bootstrap),
        cores = r.cores,
        git = git_revision().unwrap_or_else(|| "unknown".into()),
        summary = html_escape(&summary(r, v)),
    )
}
