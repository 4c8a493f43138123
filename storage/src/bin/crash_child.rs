//! Crash-test child: appends batches with deterministic content to a log and reports every
//! flush on stdout, until it is killed (`storage/tests/crash.rs` drives it).
//!
//! Usage: `ringlog-storage-crash-child <dir> [--seed N] [--retain-bytes N] [--fsize-limit BYTES]`
//!
//! Stdout, one line per event, flushed at once:
//! - `OPENED <end offset>` after the log opened;
//! - `FLUSHED <end offset>` after each successful `flush()` (everything below it is durable);
//! - `ERROR kind=<io::ErrorKind or -> <Debug of the error>` when an operation fails, followed by
//!   `FLUSHED <flushed end offset>`, `AFTER_FLUSH <Debug>` and `AFTER_APPEND <Debug>` (the
//!   results of a flush and an append tried after the failure); the process then exits with 3.
//!
//! The batch at base offset `b` is always [`expected_batch`]`(b)`: a record count and values
//! derived from `b` alone, so a reader can check every byte of every batch in the log.
//!
//! `--retain-bytes N` sets `retention.bytes` and runs retention after every flush, so sealed
//! segments are retired into the segment pool and rolls reuse them (see `recycle.rs`); it then
//! also reports `START <log start offset>` whenever retention moved the start (the start
//! offset checkpoint is durable before that line) and `REUSED <count>` whenever a roll reused
//! a pooled file.
//!
//! `--fsize-limit BYTES` sets `RLIMIT_FSIZE` (and ignores `SIGXFSZ`) before the executor
//! starts, uses 64 KiB segments (below the limit, so the log opens and rolls normally), appends
//! and flushes normal batches for a while, then appends one batch larger than the limit. That
//! batch goes into a fresh segment whose writes run into the limit: the write at the limit
//! fails with `EFBIG`. The test tree includes this file as a module to share the content
//! functions.

use std::io::Write;
use std::path::PathBuf;
use std::rc::Rc;

use bytes::{Bytes, BytesMut};
use glommio::{LocalExecutorBuilder, Placement};
use ringlog_storage::batch::build::{encode_batch, NewRecord};
use ringlog_storage::{
    BatchCache, Log, LogConfig, Offset, StorageError, StorageLimits, SystemClock, Term,
};

/// Segment size in the default (crash) mode: small so the log rolls often.
pub const SEGMENT_BYTES: u64 = 256 * 1024;
/// Segment size in `--fsize-limit` mode (must stay below the limit).
pub const FSIZE_SEGMENT_BYTES: u64 = 64 * 1024;
/// Flushes of normal batches before the oversized batch, in `--fsize-limit` mode.
pub const FSIZE_WARMUP_FLUSHES: u64 = 60;
/// The term every batch is appended with.
pub const TERM: Term = Term(1);
/// Exit code after an operation failed (the error was reported on stdout).
pub const EXIT_OP_FAILED: i32 = 3;

/// A 64-bit mix (splitmix64 finalizer): content and sizes derived from an offset.
pub fn mix(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// Number of records in the batch whose base offset is `base` (1..=12).
pub fn batch_records(base: i64) -> usize {
    1 + (mix(base as u64) % 12) as usize
}

/// The value of the record at `offset`: its offset in text, then filler derived from it.
pub fn record_value(offset: i64) -> Vec<u8> {
    let h = mix(offset as u64 ^ 0x5151_5151);
    let mut v = format!("v{offset}:").into_bytes();
    let fill = (h % 400) as usize;
    v.extend((0..fill).map(|i| b'a' + ((h >> 8) as usize + i) as u8 % 26));
    v
}

/// The batch a producer sends for base offset `base` (not yet stamped by the log).
pub fn expected_batch(base: i64) -> BytesMut {
    let recs: Vec<NewRecord> = (0..batch_records(base))
        .map(|i| {
            let offset = base + i as i64;
            NewRecord {
                key: Some(format!("k{}", offset % 97).into_bytes()),
                value: Some(record_value(offset)),
            }
        })
        .collect();
    encode_batch(&recs, 1_700_000_000_000 + base)
}

/// The bytes the log stores for base offset `base`: [`expected_batch`] stamped with the base
/// offset and [`TERM`].
pub fn expected_stored(base: i64) -> Bytes {
    let mut b = expected_batch(base);
    ringlog_storage::batch::stamp(&mut b, Offset(base), TERM);
    b.freeze()
}

/// A small xorshift64* generator (no dependency, replayable from its seed).
pub struct XorShift(u64);

impl XorShift {
    /// A generator seeded with `seed` (any value; zero is remapped).
    pub fn new(seed: u64) -> XorShift {
        XorShift(mix(seed) | 1)
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// A number in `0..n` (`n > 0`).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }
}

struct Args {
    dir: PathBuf,
    seed: u64,
    fsize_limit: Option<u64>,
    retain_bytes: Option<u64>,
}

fn parse_args() -> Result<Args, String> {
    let mut dir = None;
    let mut seed = 1;
    let mut fsize_limit = None;
    let mut retain_bytes = None;
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        let mut num = |name: &str| -> Result<u64, String> {
            let v = it.next().ok_or(format!("{name} needs a value"))?;
            v.parse().map_err(|_| format!("{name}: not a number: {v}"))
        };
        match a.as_str() {
            "--seed" => seed = num("--seed")?,
            "--fsize-limit" => fsize_limit = Some(num("--fsize-limit")?),
            "--retain-bytes" => retain_bytes = Some(num("--retain-bytes")?),
            _ if dir.is_none() && !a.starts_with("--") => dir = Some(PathBuf::from(a)),
            _ => return Err(format!("unexpected argument {a}")),
        }
    }
    let dir = dir.ok_or(
        "usage: ringlog-storage-crash-child <dir> [--seed N] [--retain-bytes N] [--fsize-limit BYTES]",
    )?;
    Ok(Args {
        dir,
        seed,
        fsize_limit,
        retain_bytes,
    })
}

/// Writes one line to stdout and flushes it; exits when the parent is gone.
fn say(line: &str) {
    let mut out = std::io::stdout().lock();
    if writeln!(out, "{line}").and_then(|_| out.flush()).is_err() {
        std::process::exit(2);
    }
}

fn error_kind(e: &StorageError) -> String {
    match e {
        StorageError::Io { source, .. } => format!("{:?}", source.kind()),
        _ => "-".to_string(),
    }
}

/// Sets `RLIMIT_FSIZE` and ignores `SIGXFSZ`, so an over-limit write fails with `EFBIG`
/// instead of killing the process.
fn limit_file_size(limit: u64) -> Result<(), String> {
    // SAFETY: plain libc calls on a single thread (no executor has started yet); the rlimit
    // struct is fully initialized.
    unsafe {
        if libc::signal(libc::SIGXFSZ, libc::SIG_IGN) == libc::SIG_ERR {
            return Err(format!(
                "signal(SIGXFSZ): {}",
                std::io::Error::last_os_error()
            ));
        }
        let mut rl = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        if libc::getrlimit(libc::RLIMIT_FSIZE, &mut rl) != 0 {
            return Err(format!("getrlimit: {}", std::io::Error::last_os_error()));
        }
        rl.rlim_cur = limit as libc::rlim_t;
        if rl.rlim_max != libc::RLIM_INFINITY && rl.rlim_max < rl.rlim_cur {
            rl.rlim_cur = rl.rlim_max;
        }
        if libc::setrlimit(libc::RLIMIT_FSIZE, &rl) != 0 {
            return Err(format!("setrlimit: {}", std::io::Error::last_os_error()));
        }
    }
    Ok(())
}

/// The log config of each mode (the test reopens the log with the same one).
pub fn config(fsize_mode: bool) -> LogConfig {
    let (segment_bytes, max_message_bytes) = if fsize_mode {
        // Room for the oversized batch: it is meant to run into the file size limit.
        (FSIZE_SEGMENT_BYTES, 16 << 20)
    } else {
        (SEGMENT_BYTES, (SEGMENT_BYTES / 2) as usize)
    };
    LogConfig {
        segment_bytes,
        max_message_bytes,
        index_interval_bytes: 1024,
        ..LogConfig::default()
    }
}

/// Limits the child (and the test, when it reopens the log) use: small buffers, so appends
/// cross buffer boundaries and hit the in-flight bound.
pub fn limits() -> StorageLimits {
    StorageLimits {
        write_buffer_bytes: 16 * 1024,
        write_buffers_in_flight_max: 3,
        read_chunk_bytes: 64 * 1024,
        cache_bytes_max: 256 * 1024,
        compaction_map_bytes_max: 1 << 20,
        preallocate_step_bytes: 1 << 20,
        recycled_segments_per_log_max: 1,
    }
}

/// Reports a failed operation, what the log says afterwards, and returns the exit code.
async fn failed(log: &Log, what: &str, e: StorageError) -> i32 {
    say(&format!("ERROR kind={} {what}: {e:?}", error_kind(&e)));
    say(&format!("FLUSHED {}", log.flushed_end_offset().0));
    let after_flush = log.flush().await;
    say(&format!("AFTER_FLUSH {after_flush:?}"));
    let base = log.end_offset().0;
    let after_append = log.append(expected_batch(base), TERM).await;
    say(&format!("AFTER_APPEND {after_append:?}"));
    EXIT_OP_FAILED
}

/// Appends the next deterministic batch, checking the offset the log assigns.
async fn append_next(log: &Log) -> Result<(), (String, Option<StorageError>)> {
    let base = log.end_offset();
    match log.append(expected_batch(base.0), TERM).await {
        Ok(info) if info.base_offset == base => Ok(()),
        Ok(info) => Err((format!("append at {base} was assigned {info:?}"), None)),
        Err(e) => Err(("append".to_string(), Some(e))),
    }
}

async fn run(args: Args) -> i32 {
    let fsize_mode = args.fsize_limit.is_some();
    let limits = limits();
    let cache = BatchCache::new(limits.cache_bytes_max);
    let mut cfg = config(fsize_mode);
    if let Some(n) = args.retain_bytes {
        // By size only: the batches' timestamps are from 2023, far past any retention.ms.
        cfg.retention_bytes = n as i64;
        cfg.retention_ms = -1;
    }
    let log = match Log::open(&args.dir, cfg, limits, cache, Rc::new(SystemClock)).await {
        Ok(log) => Rc::new(log),
        Err(e) => {
            say(&format!("ERROR kind={} open: {e:?}", error_kind(&e)));
            return EXIT_OP_FAILED;
        }
    };
    say(&format!("OPENED {}", log.end_offset().0));
    let mut rng = XorShift::new(args.seed);
    let mut flushes = 0u64;
    let mut reused_said = 0;
    loop {
        if fsize_mode && flushes >= FSIZE_WARMUP_FLUSHES {
            return oversized(&log, args.fsize_limit.unwrap_or(0)).await;
        }
        // Sometimes flush concurrently with the next appends (group commit while appending).
        let concurrent = if rng.below(3) == 0 {
            let l = log.clone();
            Some(glommio::spawn_local(async move { l.flush().await }))
        } else {
            None
        };
        for _ in 0..1 + rng.below(4) {
            match append_next(&log).await {
                Ok(()) => {}
                Err((what, Some(e))) => return failed(&log, &what, e).await,
                Err((what, None)) => {
                    say(&format!("ERROR {what}"));
                    return 4;
                }
            }
        }
        let flushed = match concurrent {
            Some(task) => task.await,
            None => log.flush().await,
        };
        match flushed {
            Ok(end) => say(&format!("FLUSHED {}", end.0)),
            Err(e) => return failed(&log, "flush", e).await,
        }
        flushes += 1;
        if args.retain_bytes.is_some() {
            let start = log.start_offset();
            if let Err(e) = log.enforce_retention().await {
                return failed(&log, "retention", e).await;
            }
            if log.start_offset() != start {
                say(&format!("START {}", log.start_offset().0));
            }
            let reused = log.pool_stats().reused;
            if reused != reused_said {
                say(&format!("REUSED {reused}"));
                reused_said = reused;
            }
        }
    }
}

/// `--fsize-limit` mode: one batch larger than the limit, which must fail.
async fn oversized(log: &Log, limit: u64) -> i32 {
    let recs = [NewRecord {
        key: Some(b"oversized".to_vec()),
        value: Some(vec![b'o'; limit as usize + 64 * 1024]),
    }];
    let r = log
        .append(encode_batch(&recs, 1_800_000_000_000), TERM)
        .await;
    let r = match r {
        Ok(_) => log.flush().await.map(|_| ()),
        Err(e) => Err(e),
    };
    match r {
        Err(e) => failed(log, "oversized batch", e).await,
        Ok(()) => {
            say("NOERROR the oversized batch was written past the file size limit");
            5
        }
    }
}

fn main() {
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("{e}");
            std::process::exit(2);
        }
    };
    if let Some(limit) = args.fsize_limit {
        if let Err(e) = limit_file_size(limit) {
            say(&format!("ERROR setup: {e}"));
            std::process::exit(2);
        }
    }
    let dir = args.dir.clone();
    let handle = LocalExecutorBuilder::new(Placement::Unbound)
        .io_memory(2 << 20)
        .name("crash-child")
        .spawn(move || run(args));
    let code = match handle {
        Ok(h) => match h.join() {
            Ok(code) => code,
            Err(e) => {
                say(&format!("ERROR executor: {e:?}"));
                2
            }
        },
        Err(e) => {
            say(&format!(
                "ERROR spawning executor for {}: {e:?}",
                dir.display()
            ));
            2
        }
    };
    std::process::exit(code);
}
