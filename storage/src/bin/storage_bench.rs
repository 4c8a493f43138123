//! `ringlog-storage-bench`: throughput and durability latency of one partition's [`Log`].
//!
//! Runs on one glommio executor (one core and its io_uring rings), like a partition in the broker.
//! Two phases, each on a fresh log directory under `--dir`:
//!
//! 1. **Throughput.** One task appends batches of `--batch-bytes` back to back. Every
//!    `--flush-bytes` appended, a flush is spawned as its own task, so appends go on while it
//!    runs; at most `--outstanding-flushes` flushes are in progress (the appender waits for the
//!    oldest beyond that). The clock stops when `--total-bytes` are appended *and* flushed.
//! 2. **Latency.** `--latency-ops` times (after `--warmup-ops` unrecorded ones): append one
//!    batch, await its flush; the latency of append+flush goes into an HdrHistogram (µs).
//!    The segment is Kafka's default 1 GiB, preallocated: on ext4 an fdatasync after a write
//!    into a 2 GiB preallocated file costs 40-60% more than into a 128 MiB one (a deeper extent
//!    tree to update), so fio's file must be the same size for a fair comparison.
//!
//! `perf/storage-bench.sh` runs fio on the same filesystem and compares. A size argument takes
//! a plain byte count or a K/M/G suffix (powers of 1024). `--total-bytes 0` or
//! `--latency-ops 0` skips a phase. Exit status is non-zero on any storage error.

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use glommio::{LocalExecutorBuilder, Placement};
use hdrhistogram::Histogram;
use ringlog_storage::batch::build::{encode_batch, NewRecord};
use ringlog_storage::{BatchCache, Log, LogConfig, StorageLimits, SystemClock, Term};
use serde_json::{json, Value};

const USAGE: &str = "\
usage: ringlog-storage-bench --dir DIR [options]
  --dir DIR                 scratch directory (created; the bench's subdirectories are removed at the end)
  --total-bytes N           bytes to append in the throughput phase (default 1G; --quick 16M; 0 skips)
  --latency-ops N           append+flush operations in the latency phase (default 5000; --quick 100; 0 skips)
  --warmup-ops N            unrecorded latency operations first (default 50; --quick 5)
  --json FILE               write the results as JSON
  --quick                   small defaults, for smoke tests
  --batch-bytes N           size of each appended batch (default 16K)
  --flush-bytes N           throughput phase: spawn a flush every N appended bytes (default 1M)
  --outstanding-flushes N   throughput phase: flushes in progress before appends wait (default 20: the
                            broker's write workload, 4 producers x 5 requests of up to 1 MiB in flight)
  --clone-in-loop           throughput phase: copy each batch from a template inside the timed loop
                            (default: all batches are built before the clock starts, as fio's buffers are)
  --recycled                latency phase in a recycled segment, a broker's steady state once retention
                            deletes: before the clock starts the log fills a whole segment, retention
                            retires it into the segment pool, and a roll reuses its file, so appends
                            overwrite written blocks (default: a fresh segment, a new log's first life)
  --baseline                also run the latency phase on a bare glommio DmaFile (write_at + fdatasync,
                            no log): separates glommio's cost from the log's
  --yield-every N           throughput phase: yield to the executor every N appends (default 0: never)
  --segment-bytes N         segment.bytes of both phases (default: the latency phase 1G, Kafka's default;
                            the throughput phase 1G or larger to hold --total-bytes; --quick 8M)
  --write-buffer-bytes N    StorageLimits::write_buffer_bytes (default: the library default)
  --inflight N              StorageLimits::write_buffers_in_flight_max (default: the library default)
  --preallocate-step-bytes N  StorageLimits::preallocate_step_bytes (default: the library default)
  --io-memory N             glommio io_memory (default 4M; the locked-memory limit is 8 MiB)
  --spin-before-park-us N   glommio executor: spin N us before sleeping (default 0: glommio's default)
  --pin CPU                 pin the executor to CPU (default: unbound, like fio)
  --keep                    keep the log directories";

#[derive(Clone, Debug)]
struct Args {
    dir: PathBuf,
    total_bytes: u64,
    latency_ops: u64,
    warmup_ops: u64,
    json: Option<PathBuf>,
    quick: bool,
    batch_bytes: usize,
    flush_bytes: u64,
    outstanding_flushes: usize,
    yield_every: u64,
    clone_in_loop: bool,
    baseline: bool,
    /// Latency phase in a segment recycled by the log (retention, then a roll reusing the file).
    recycled: bool,
    /// segment.bytes of the throughput phase's log.
    segment_bytes: u64,
    /// segment.bytes of the latency phase's log.
    latency_segment_bytes: u64,
    limits: StorageLimits,
    io_memory: usize,
    spin_before_park_us: u64,
    pin_cpu: Option<usize>,
    keep: bool,
}

fn parse_size(flag: &str, v: &str) -> Result<u64, String> {
    let t = v.trim();
    let lower = t.to_ascii_lowercase();
    let digits = lower.trim_end_matches(|c: char| c.is_ascii_alphabetic());
    let mult: u64 = match &lower[digits.len()..] {
        "" | "b" => 1,
        "k" | "kb" | "kib" => 1 << 10,
        "m" | "mb" | "mib" => 1 << 20,
        "g" | "gb" | "gib" => 1 << 30,
        _ => return Err(format!("{flag}: bad size {v:?}")),
    };
    let n: u64 = digits
        .parse()
        .map_err(|_| format!("{flag}: bad size {v:?}"))?;
    n.checked_mul(mult)
        .ok_or_else(|| format!("{flag}: {v:?} is too large"))
}

fn parse_args() -> Result<Args, String> {
    let argv: Vec<String> = std::env::args().skip(1).collect();
    let quick = argv.iter().any(|a| a == "--quick");
    let mut dir = None;
    let mut total_bytes = None;
    let mut latency_ops = None;
    let mut warmup_ops = None;
    let mut json_path = None;
    let mut batch_bytes = 16 * 1024;
    let mut flush_bytes = 1 << 20;
    // As many flushes as the broker's write workload (perf/workloads/max-write.toml) has
    // produce requests waiting on group commit: 4 producers x 5 in flight. With 8, the
    // appender waited for flushes a fifth of the run: an fdatasync issued while writes stream
    // takes ~5 ms here, and 8 MiB outstanding is less than the disk writes in that time, so the
    // figure measured the bench's pipeline depth, not the log (perf/README.md, session 8).
    let mut outstanding_flushes = 20;
    let mut yield_every = 0;
    let mut clone_in_loop = false;
    let mut baseline = false;
    let mut recycled = false;
    let mut segment_bytes = None;
    let mut limits = StorageLimits::default();
    let mut io_memory = 4 << 20;
    let mut spin_before_park_us = 0;
    let mut pin_cpu = None;
    let mut keep = false;
    let mut it = argv.into_iter();
    while let Some(flag) = it.next() {
        let mut value = || it.next().ok_or_else(|| format!("{flag} needs a value"));
        match flag.as_str() {
            "--quick" => {}
            "--keep" => keep = true,
            "--clone-in-loop" => clone_in_loop = true,
            "--baseline" => baseline = true,
            "--recycled" => recycled = true,
            "-h" | "--help" => {
                println!("{USAGE}");
                std::process::exit(0);
            }
            "--dir" => dir = Some(PathBuf::from(value()?)),
            "--json" => json_path = Some(PathBuf::from(value()?)),
            "--total-bytes" => total_bytes = Some(parse_size(&flag, &value()?)?),
            "--latency-ops" => latency_ops = Some(parse_size(&flag, &value()?)?),
            "--warmup-ops" => warmup_ops = Some(parse_size(&flag, &value()?)?),
            "--batch-bytes" => batch_bytes = parse_size(&flag, &value()?)? as usize,
            "--flush-bytes" => flush_bytes = parse_size(&flag, &value()?)?,
            "--outstanding-flushes" => outstanding_flushes = parse_size(&flag, &value()?)? as usize,
            "--yield-every" => yield_every = parse_size(&flag, &value()?)?,
            "--segment-bytes" => segment_bytes = Some(parse_size(&flag, &value()?)?),
            "--write-buffer-bytes" => {
                limits.write_buffer_bytes = parse_size(&flag, &value()?)? as usize
            }
            "--preallocate-step-bytes" => {
                limits.preallocate_step_bytes = parse_size(&flag, &value()?)?
            }
            "--inflight" => {
                limits.write_buffers_in_flight_max = parse_size(&flag, &value()?)? as usize
            }
            "--spin-before-park-us" => spin_before_park_us = parse_size(&flag, &value()?)?,
            "--pin" => pin_cpu = Some(parse_size(&flag, &value()?)? as usize),
            "--io-memory" => io_memory = parse_size(&flag, &value()?)? as usize,
            other => return Err(format!("unknown argument {other:?}\n{USAGE}")),
        }
    }
    let dir = dir.ok_or_else(|| format!("--dir is required\n{USAGE}"))?;
    let total_bytes = total_bytes.unwrap_or(if quick { 16 << 20 } else { 1 << 30 });
    // Prebuilding holds every batch in memory at once: beyond 8 GiB, copy inside the loop.
    let clone_in_loop = clone_in_loop || total_bytes > 8 << 30;
    let default_segment = LogConfig::default().segment_bytes;
    let latency_segment_bytes =
        segment_bytes.unwrap_or(if quick { 8 << 20 } else { default_segment });
    let segment_bytes = segment_bytes.unwrap_or(if quick {
        8 << 20
    } else {
        // One segment holds the whole run, like fio's one preallocated file: no roll is timed.
        default_segment.max((total_bytes + (2 << 20)).next_multiple_of(1 << 20))
    });
    if segment_bytes.max(latency_segment_bytes) > u32::MAX as u64 {
        // A segment's index holds u32 byte positions (the broker caps segment.bytes at 2 GiB).
        return Err(
            "a segment must stay below 4 GiB: lower --total-bytes or --segment-bytes".into(),
        );
    }
    if batch_bytes < 128 || batch_bytes as u64 > latency_segment_bytes.min(segment_bytes) / 2 {
        return Err(
            "--batch-bytes must be at least 128 and at most half of --segment-bytes".into(),
        );
    }
    if limits.write_buffer_bytes == 0 || limits.write_buffer_bytes % 4096 != 0 {
        return Err("--write-buffer-bytes must be a positive multiple of 4096".into());
    }
    if flush_bytes == 0 || outstanding_flushes == 0 {
        return Err("--flush-bytes and --outstanding-flushes must be positive".into());
    }
    Ok(Args {
        dir,
        total_bytes,
        latency_ops: latency_ops.unwrap_or(if quick { 100 } else { 5000 }),
        warmup_ops: warmup_ops.unwrap_or(if quick { 5 } else { 50 }),
        json: json_path,
        quick,
        batch_bytes,
        flush_bytes,
        outstanding_flushes,
        yield_every,
        clone_in_loop,
        baseline,
        recycled,
        segment_bytes,
        latency_segment_bytes,
        limits,
        io_memory,
        spin_before_park_us,
        pin_cpu,
        keep,
    })
}

/// A valid, uncompressed RecordBatch v2 of exactly `size` bytes: 16 records (fewer for small
/// sizes), the last one's value trimmed so the total comes out exact.
fn exact_batch(size: usize) -> Result<BytesMut, String> {
    let count = (size / 1024).clamp(1, 16);
    let value = (size.saturating_sub(61) / count).saturating_sub(8).max(1);
    let mut last = value;
    for _ in 0..32 {
        let mut recs: Vec<NewRecord> = (0..count)
            .map(|i| NewRecord {
                key: None,
                value: Some(vec![b'a' + (i % 26) as u8; value]),
            })
            .collect();
        recs[count - 1].value = Some(vec![b'z'; last]);
        let b = encode_batch(&recs, 1_700_000_000_000);
        if b.len() == size {
            return Ok(b);
        }
        let diff = size as i64 - b.len() as i64;
        // Near a varint length boundary the size can jump; nudge by one byte then.
        let step = if diff.abs() == 1 {
            diff
        } else {
            diff - diff.signum()
        };
        let next = last as i64 + step;
        if next < 0 {
            break;
        }
        last = next as usize;
    }
    Err(format!("cannot build a batch of exactly {size} bytes"))
}

async fn open_log(dir: &Path, args: &Args, segment_bytes: u64) -> Result<Log, String> {
    std::fs::create_dir_all(dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
    let config = LogConfig {
        segment_bytes,
        max_message_bytes: LogConfig::default().max_message_bytes.max(args.batch_bytes),
        ..LogConfig::default()
    };
    let cache = BatchCache::new(args.limits.cache_bytes_max);
    Log::open(
        dir,
        config,
        args.limits.clone(),
        cache,
        Rc::new(SystemClock),
    )
    .await
    .map_err(|e| format!("opening log in {}: {e}", dir.display()))
}

async fn close_log(log: Rc<Log>) -> Result<(), String> {
    let log = Rc::try_unwrap(log).map_err(|_| "log still shared at close".to_string())?;
    log.close().await.map_err(|e| format!("closing log: {e}"))
}

/// CPU time (user + system) of the calling thread: the executor's core.
fn thread_cpu() -> Duration {
    // SAFETY: getrusage only writes the struct it is given.
    let ru = unsafe {
        let mut ru: libc::rusage = std::mem::zeroed();
        libc::getrusage(libc::RUSAGE_THREAD, &mut ru);
        ru
    };
    let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
    tv(ru.ru_utime) + tv(ru.ru_stime)
}

fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 120_000_000, 3).expect("valid histogram bounds")
}

fn micros(d: Duration) -> u64 {
    (d.as_nanos() as u64).div_ceil(1000).max(1)
}

fn summary(h: &Histogram<u64>) -> Value {
    if h.is_empty() {
        return json!({"count": 0});
    }
    json!({
        "count": h.len(),
        "min": h.min(),
        "mean": (h.mean() * 10.0).round() / 10.0,
        "p50": h.value_at_quantile(0.50),
        "p90": h.value_at_quantile(0.90),
        "p95": h.value_at_quantile(0.95),
        "p99": h.value_at_quantile(0.99),
        "p99_5": h.value_at_quantile(0.995),
        "p99_9": h.value_at_quantile(0.999),
        "max": h.max(),
    })
}

/// Phase 1: continuous appends with a flush spawned every `flush_bytes`.
async fn throughput(args: &Args, dir: &Path) -> Result<Value, String> {
    let log = Rc::new(open_log(dir, args, args.segment_bytes).await?);
    let recycled_bytes = if args.recycled {
        Some(recycle_a_segment(&log).await?)
    } else {
        None
    };
    let template = exact_batch(args.batch_bytes)?;
    let batch_len = template.len() as u64;
    let batches = args.total_bytes.div_ceil(batch_len);
    let mut flushes = VecDeque::new();
    let mut flush_hist = histogram();
    let mut flush_count = 0u64;
    let mut flush_wait = Duration::ZERO;
    let mut clone_time = Duration::ZERO;
    let mut append_time = Duration::ZERO;
    let mut since_flush = 0u64;
    // Built up front unless asked otherwise: copying the producer's bytes is the network
    // layer's cost, not the log's (fio does not build its buffers inside the timed region either).
    let mut prebuilt: VecDeque<BytesMut> = if args.clone_in_loop {
        VecDeque::new()
    } else {
        (0..batches).map(|_| template.clone()).collect()
    };

    let cpu_start = thread_cpu();
    let start = Instant::now();
    for i in 0..batches {
        let t = Instant::now();
        let b = match prebuilt.pop_front() {
            Some(b) => b,
            None => template.clone(),
        };
        let t_append = Instant::now();
        clone_time += t_append - t;
        log.append(b, Term(0))
            .await
            .map_err(|e| format!("append: {e}"))?;
        append_time += t_append.elapsed();
        if args.yield_every > 0 && (i + 1) % args.yield_every == 0 {
            glommio::executor().yield_task_queue_now().await;
        }
        since_flush += batch_len;
        if since_flush >= args.flush_bytes || i + 1 == batches {
            since_flush = 0;
            while flushes.len() >= args.outstanding_flushes {
                let t = Instant::now();
                let task: glommio::Task<_> = flushes.pop_front().expect("non-empty");
                let (r, d): (ringlog_storage::Result<_>, Duration) = task.await;
                flush_wait += t.elapsed();
                r.map_err(|e| format!("flush: {e}"))?;
                flush_hist.record(micros(d)).ok();
            }
            let l = log.clone();
            flush_count += 1;
            flushes.push_back(glommio::spawn_local(async move {
                let t = Instant::now();
                let r = l.flush().await;
                (r, t.elapsed())
            }));
        }
    }
    while let Some(task) = flushes.pop_front() {
        let t = Instant::now();
        let (r, d) = task.await;
        flush_wait += t.elapsed();
        r.map_err(|e| format!("flush: {e}"))?;
        flush_hist.record(micros(d)).ok();
    }
    let flushed = log.flush().await.map_err(|e| format!("flush: {e}"))?;
    let secs = start.elapsed().as_secs_f64();
    let cpu_secs = (thread_cpu() - cpu_start).as_secs_f64();
    if flushed != log.end_offset() {
        return Err(format!(
            "flushed end {flushed} != log end {}",
            log.end_offset()
        ));
    }
    let bytes = batches * batch_len;
    let segments = log.segment_count();
    let stats = log.flush_stats();
    close_log(log).await?;
    let bps = bytes as f64 / secs;
    Ok(json!({
        "bytes": bytes,
        "batches": batches,
        "batch_bytes": batch_len,
        "seconds": secs,
        "bytes_per_sec": bps,
        "mib_per_sec": bps / (1 << 20) as f64,
        "segments": segments,
        "segment": if args.recycled { "recycled" } else { "fresh" },
        "recycled_file_bytes": recycled_bytes,
        "flushes": flush_count,
        "flush_rounds": stats.rounds(),
        "flush_rounds_written_through": stats.write_through_rounds,
        "flush_latency_us": summary(&flush_hist),
        "executor_cpu_seconds": cpu_secs,
        "append_seconds": append_time.as_secs_f64(),
        "flush_wait_seconds": flush_wait.as_secs_f64(),
        "batch_clone_seconds": clone_time.as_secs_f64(),
    }))
}

/// Phase 2: append one batch, await its flush, repeat.
async fn latency(args: &Args, dir: &Path) -> Result<Value, String> {
    let log = open_log(dir, args, args.latency_segment_bytes).await?;
    let template = exact_batch(args.batch_bytes)?;
    let ops = args.warmup_ops + args.latency_ops;
    if ops * template.len() as u64 > args.latency_segment_bytes {
        return Err("the latency phase does not fit in one segment".into());
    }
    let recycled_bytes = if args.recycled {
        Some(recycle_a_segment(&log).await?)
    } else {
        None
    };
    let mut total = histogram();
    let mut append = histogram();
    let mut flush = histogram();
    let start = Instant::now();
    for i in 0..args.warmup_ops + args.latency_ops {
        let b = template.clone();
        let t0 = Instant::now();
        log.append(b, Term(0))
            .await
            .map_err(|e| format!("append: {e}"))?;
        let t1 = Instant::now();
        log.flush().await.map_err(|e| format!("flush: {e}"))?;
        let t2 = Instant::now();
        if i >= args.warmup_ops {
            total.record(micros(t2 - t0)).ok();
            append.record(micros(t1 - t0)).ok();
            flush.record(micros(t2 - t1)).ok();
        }
    }
    let secs = start.elapsed().as_secs_f64();
    let pool = log.pool_stats();
    log.close().await.map_err(|e| format!("closing log: {e}"))?;
    Ok(json!({
        "ops": args.latency_ops,
        "warmup_ops": args.warmup_ops,
        "batch_bytes": template.len(),
        "segment": if args.recycled { "recycled" } else { "fresh" },
        "recycled_file_bytes": recycled_bytes,
        "pool": {"pooled": pool.pooled, "reused": pool.reused},
        "seconds": secs,
        "append_flush_us": summary(&total),
        "append_us": summary(&append),
        "flush_us": summary(&flush),
    }))
}

/// Brings the log to a broker's steady state: it fills its first segment to the roll, flushes,
/// lets retention retire that segment into the pool (`retention.bytes` 0 for one pass), and
/// rolls, so the active segment is the first one's file with every block written. Returns the
/// reused file's size. The clock has not started; the disk gets two seconds to settle after.
async fn recycle_a_segment(log: &Log) -> Result<u64, String> {
    let fill = exact_batch(1 << 20)?;
    let mut appended = 0u64;
    while log.segment_count() < 2 {
        log.append(fill.clone(), Term(0))
            .await
            .map_err(|e| format!("filling the first segment: {e}"))?;
        appended += 1;
        if appended % 64 == 0 {
            log.flush().await.map_err(|e| format!("flush: {e}"))?;
        }
    }
    log.flush().await.map_err(|e| format!("flush: {e}"))?;
    let cfg = log.config();
    log.set_config(LogConfig {
        retention_bytes: 0,
        ..cfg.clone()
    });
    let retired = log
        .enforce_retention()
        .await
        .map_err(|e| format!("retention: {e}"))?;
    log.set_config(cfg);
    if retired != 1 || log.pool_stats().pooled != 1 {
        return Err(format!(
            "retention retired {retired} segments, pool {:?}",
            log.pool_stats()
        ));
    }
    let base = log.end_offset();
    log.roll().await.map_err(|e| format!("roll: {e}"))?;
    if log.pool_stats().reused != 1 {
        return Err(format!(
            "the roll did not reuse the pooled segment: {:?}",
            log.pool_stats()
        ));
    }
    let path = log.dir().join(format!("{:020}.log", base.0));
    let size = std::fs::metadata(&path)
        .map_err(|e| format!("{}: {e}", path.display()))?
        .len();
    glommio::timer::sleep(Duration::from_secs(2)).await;
    Ok(size)
}

/// The latency phase without the log: the same O_DIRECT write and fdatasync, straight through
/// glommio, into a preallocated file.
async fn baseline_latency(args: &Args, dir: &Path) -> Result<Value, String> {
    use glommio::io::OpenOptions;
    std::fs::create_dir_all(dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
    let path = dir.join("baseline.dat");
    let err = |what: &str, e: glommio::GlommioError<()>| format!("{what} {}: {e}", path.display());
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .dma_open(&path)
        .await
        .map_err(|e| err("opening", e))?;
    let block = (args.batch_bytes as u64).next_multiple_of(4096);
    let ops = args.warmup_ops + args.latency_ops;
    // As large as the log's segment: ext4's fdatasync cost grows with the file's extent tree.
    let size = (ops * block).max(args.latency_segment_bytes);
    file.pre_allocate(size, false)
        .await
        .map_err(|e| err("preallocating", e))?;
    let template = exact_batch(args.batch_bytes)?;
    let mut total = histogram();
    let mut write = histogram();
    for i in 0..ops {
        let t0 = Instant::now();
        let mut buf = file.alloc_dma_buffer(block as usize);
        buf.as_bytes_mut()[..template.len()].copy_from_slice(&template);
        buf.as_bytes_mut()[template.len()..].fill(0);
        file.write_at(buf, i * block)
            .await
            .map_err(|e| err("writing", e))?;
        let t1 = Instant::now();
        file.fdatasync().await.map_err(|e| err("syncing", e))?;
        let t2 = Instant::now();
        if i >= args.warmup_ops {
            total.record(micros(t2 - t0)).ok();
            write.record(micros(t1 - t0)).ok();
        }
    }
    file.close().await.map_err(|e| err("closing", e))?;
    Ok(json!({
        "ops": args.latency_ops,
        "write_fdatasync_us": summary(&total),
        "write_us": summary(&write),
    }))
}

async fn run(args: Args) -> Result<Value, String> {
    let mut out = json!({
        "tool": "ringlog-storage-bench",
        "format": 1,
        "dir": args.dir.display().to_string(),
        "quick": args.quick,
        "config": {
            "total_bytes": args.total_bytes,
            "latency_ops": args.latency_ops,
            "warmup_ops": args.warmup_ops,
            "batch_bytes": args.batch_bytes,
            "flush_bytes": args.flush_bytes,
            "outstanding_flushes": args.outstanding_flushes,
            "yield_every": args.yield_every,
            "clone_in_loop": args.clone_in_loop,
            "segment_bytes": args.segment_bytes,
            "latency_segment_bytes": args.latency_segment_bytes,
            "io_memory_bytes": args.io_memory,
            "spin_before_park_us": args.spin_before_park_us,
            "pin_cpu": args.pin_cpu,
            "recycled": args.recycled,
        },
        "limits": {
            "write_buffer_bytes": args.limits.write_buffer_bytes,
            "write_buffers_in_flight_max": args.limits.write_buffers_in_flight_max,
            "read_chunk_bytes": args.limits.read_chunk_bytes,
            "cache_bytes_max": args.limits.cache_bytes_max,
            "default": args.limits == StorageLimits::default(),
        },
        "throughput": null,
        "latency": null,
        "glommio_baseline": null,
    });
    let tp_dir = args.dir.join("bench-throughput");
    let lat_dir = args.dir.join("bench-latency");
    let base_dir = args.dir.join("bench-baseline");
    for d in [&tp_dir, &lat_dir, &base_dir] {
        // A previous run's log would be recovered and appended to: start from nothing.
        let _ = std::fs::remove_dir_all(d);
    }
    let result = async {
        if args.total_bytes > 0 {
            out["throughput"] = throughput(&args, &tp_dir).await?;
        }
        if args.latency_ops > 0 {
            out["latency"] = latency(&args, &lat_dir).await?;
        }
        if args.baseline && args.latency_ops > 0 {
            out["glommio_baseline"] = baseline_latency(&args, &base_dir).await?;
        }
        Ok::<_, String>(())
    }
    .await;
    if !args.keep {
        for d in [&tp_dir, &lat_dir, &base_dir] {
            let _ = std::fs::remove_dir_all(d);
        }
    }
    result.map(|()| out)
}

fn print_summary(v: &Value) {
    let limits = &v["limits"];
    println!(
        "ringlog-storage-bench: write_buffer_bytes={} in_flight_max={} segment_bytes={}",
        limits["write_buffer_bytes"],
        limits["write_buffers_in_flight_max"],
        v["config"]["segment_bytes"]
    );
    let tp = &v["throughput"];
    if !tp.is_null() {
        println!(
            "throughput: {} bytes in {:.3} s = {:.1} MiB/s ({} B batches, {} flushes in {} rounds, flush p50/p99 {}/{} us, appender waited {:.3} s for flushes, executor CPU {:.3} s)",
            tp["bytes"],
            tp["seconds"].as_f64().unwrap_or(0.0),
            tp["mib_per_sec"].as_f64().unwrap_or(0.0),
            tp["batch_bytes"],
            tp["flushes"],
            tp["flush_rounds"],
            tp["flush_latency_us"]["p50"],
            tp["flush_latency_us"]["p99"],
            tp["flush_wait_seconds"].as_f64().unwrap_or(0.0),
            tp["executor_cpu_seconds"].as_f64().unwrap_or(0.0),
        );
    }
    let lat = &v["latency"];
    if !lat.is_null() {
        let h = &lat["append_flush_us"];
        println!(
            "latency: {} ops of {} B append+flush: p50 {} us, p90 {} us, p99 {} us, p99.9 {} us, max {} us (flush alone p99 {} us)",
            lat["ops"], lat["batch_bytes"], h["p50"], h["p90"], h["p99"], h["p99_9"], h["max"], lat["flush_us"]["p99"],
        );
    }
}

fn print_baseline(v: &Value) {
    let b = &v["glommio_baseline"];
    if !b.is_null() {
        let h = &b["write_fdatasync_us"];
        println!(
            "glommio baseline: {} ops write_at+fdatasync: p50 {} us, p90 {} us, p99 {} us, p99.9 {} us, max {} us (write alone p99 {} us)",
            b["ops"], h["p50"], h["p90"], h["p99"], h["p99_9"], h["max"], b["write_us"]["p99"],
        );
    }
}

fn main() {
    // The broker's allocator settings, so the log's write buffers are allocated as there.
    ringlog_storage::alloc::tune_system_allocator();
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("{e}");
            std::process::exit(2);
        }
    };
    if let Err(e) = std::fs::create_dir_all(&args.dir) {
        eprintln!("creating {}: {e}", args.dir.display());
        std::process::exit(1);
    }
    let json_path = args.json.clone();
    let placement = match args.pin_cpu {
        Some(cpu) => Placement::Fixed(cpu),
        None => Placement::Unbound,
    };
    let mut builder = LocalExecutorBuilder::new(placement)
        .name("storage-bench")
        .io_memory(args.io_memory);
    if args.spin_before_park_us > 0 {
        builder = builder.spin_before_park(Duration::from_micros(args.spin_before_park_us));
    }
    let result = builder
        .spawn(move || run(args))
        .map_err(|e| format!("starting the glommio executor: {e}"))
        .and_then(|h| h.join().map_err(|e| format!("executor thread: {e:?}")))
        .and_then(|r| r);
    let v = match result {
        Ok(v) => v,
        Err(e) => {
            eprintln!("ringlog-storage-bench: {e}");
            std::process::exit(1);
        }
    };
    print_summary(&v);
    print_baseline(&v);
    if let Some(p) = json_path {
        let text = serde_json::to_string_pretty(&v).expect("JSON value serializes");
        if let Err(e) = std::fs::write(&p, text + "\n") {
            eprintln!("writing {}: {e}", p.display());
            std::process::exit(1);
        }
    }
}
