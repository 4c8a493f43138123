//! Crash tests: a child process appends and flushes until it is SIGKILLed at a random moment
//! (or until it runs into `RLIMIT_FSIZE`); the log is then reopened in-process and checked.
//!
//! After every kill: the log's end is at or past every offset the child ever reported flushed,
//! every batch from the start to the end reads back byte for byte as the child wrote it
//! (deterministic content, see `src/bin/crash_child.rs`), offsets are consecutive (except for
//! the gaps of a known recovery bug, tolerated while `TOLERATE_ROLL_GAP_BUG` is set, and only
//! over offsets never reported flushed), sealed segment files are cut to their data and have
//! their indexes, and the active segment holds only zeros past its data.
//!
//! Replay a failure with `RINGLOG_CRASH_SEED=<seed printed by the test>`; run longer with
//! `RINGLOG_CRASH_ROUNDS` and `RINGLOG_CRASH_SECS`.

mod common;

#[path = "../src/bin/crash_child.rs"]
#[allow(dead_code)]
mod crash_child;

use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::rc::Rc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use common::run_local;
use crash_child::{expected_batch, expected_stored, XorShift, TERM};
use ringlog_storage::{Batch, BatchCache, BatchHeader, Log, Offset, StorageError, SystemClock};

const CHILD: &str = env!("CARGO_BIN_EXE_ringlog-storage-crash-child");

/// A running child whose stdout and stderr are collected by reader threads. Dropping it kills
/// and reaps the child, so a failing assertion never leaves a process behind.
struct ChildGuard {
    child: Option<Child>,
    stdout: Option<JoinHandle<String>>,
    stderr: Option<JoinHandle<String>>,
}

fn read_all(mut r: impl Read + Send + 'static) -> JoinHandle<String> {
    std::thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = r.read_to_end(&mut buf);
        String::from_utf8_lossy(&buf).into_owned()
    })
}

impl ChildGuard {
    fn spawn(dir: &Path, args: &[String]) -> ChildGuard {
        let mut child = Command::new(CHILD)
            .arg(dir)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn crash child");
        let stdout = read_all(child.stdout.take().expect("stdout"));
        let stderr = read_all(child.stderr.take().expect("stderr"));
        ChildGuard {
            child: Some(child),
            stdout: Some(stdout),
            stderr: Some(stderr),
        }
    }

    /// The exit status if the child already exited.
    fn try_wait(&mut self) -> Option<ExitStatus> {
        self.child
            .as_mut()
            .and_then(|c| c.try_wait().expect("try_wait"))
    }

    /// Kills the child (SIGKILL) if it still runs, reaps it, and returns its status and output.
    fn finish(mut self) -> (ExitStatus, String, String) {
        let mut child = self.child.take().expect("child");
        let _ = child.kill();
        let status = child.wait().expect("wait for child");
        let out = self
            .stdout
            .take()
            .expect("stdout")
            .join()
            .expect("stdout reader");
        let err = self
            .stderr
            .take()
            .expect("stderr")
            .join()
            .expect("stderr reader");
        (status, out, err)
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// The highest `FLUSHED <offset>` line of the child's output.
fn max_flushed(out: &str) -> Option<i64> {
    out.lines()
        .filter_map(|l| l.strip_prefix("FLUSHED "))
        .map(|v| v.trim().parse::<i64>().expect("FLUSHED value"))
        .max()
}

fn seed() -> u64 {
    match std::env::var("RINGLOG_CRASH_SEED") {
        Ok(s) => s.parse().expect("RINGLOG_CRASH_SEED is a number"),
        Err(_) => {
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .expect("clock");
            now.as_nanos() as u64 ^ std::process::id() as u64
        }
    }
}

/// `.log` files of the directory by base offset, with their sizes.
fn log_files(dir: &Path) -> BTreeMap<i64, (PathBuf, u64)> {
    let mut out = BTreeMap::new();
    for e in std::fs::read_dir(dir).expect("read dir") {
        let e = e.expect("dir entry");
        let name = e.file_name().to_string_lossy().into_owned();
        if let Some(digits) = name.strip_suffix(".log") {
            let base: i64 = digits.parse().expect("segment name");
            let len = e.metadata().expect("metadata").len();
            out.insert(base, (e.path(), len));
        }
    }
    out
}

/// What a verified log looks like.
#[derive(Debug, Clone, Copy)]
struct Verified {
    end: i64,
    batches: usize,
    segments: usize,
}

async fn open_log(dir: &Path, fsize_mode: bool) -> Log {
    let limits = crash_child::limits();
    let cache = BatchCache::new(limits.cache_bytes_max);
    Log::open(
        dir,
        crash_child::config(fsize_mode),
        limits,
        cache,
        Rc::new(SystemClock),
    )
    .await
    .expect("reopen log")
}

/// Whether the crash test tolerates the known recovery bug "a crash during a roll leaves a gap
/// of never-flushed offsets before the next segment" (see
/// `crash_during_roll_does_not_leave_a_gap_at_the_end`). Such a gap loses no flushed data,
/// but the log claims offsets that hold nothing. Set to `false` once that test passes.
const TOLERATE_ROLL_GAP_BUG: bool = false;

/// What reading the whole log found.
struct ReadBack {
    end: i64,
    /// (base offset, size) of every batch.
    batches: Vec<(i64, usize)>,
    /// Offsets `[from, to)` below the end that hold no batch, each ending at a segment base
    /// (or the log end).
    gaps: Vec<(i64, i64)>,
}

/// Reads the whole log and checks every batch against the child's deterministic content.
/// `min_start`: `None` when nothing deletes from the log (it must start at 0), else the
/// highest start offset the child reported (retention mode).
async fn verify_reads(log: &Log, dir: &Path, min_start: Option<i64>) -> ReadBack {
    let start = log.start_offset();
    let end = log.end_offset();
    match min_start {
        None => assert_eq!(start, Offset(0), "nothing deletes from this log"),
        Some(m) => assert!(
            start.0 >= m && start <= end,
            "log start {start} is before the reported start {m} or past the end {end}"
        ),
    }
    let bases: Vec<i64> = log_files(dir).keys().copied().collect();
    let mut at = start;
    let mut batches = Vec::new();
    let mut gaps = Vec::new();
    while at < end {
        let got = log.read(at, 512 * 1024, end).await.unwrap_or_else(|e| {
            panic!("read at {at} (end {end}): {e:?}");
        });
        if got.is_empty() {
            // Nothing up to the next segment: a gap (or the end is past the data).
            let next = bases.iter().copied().find(|b| *b > at.0).unwrap_or(end.0);
            assert!(
                next <= end.0,
                "read at {at} below the end {end} returned nothing; segments {bases:?}"
            );
            gaps.push((at.0, next));
            at = Offset(next);
            continue;
        }
        for b in got {
            let h = BatchHeader::read(&b);
            if h.base_offset > at {
                gaps.push((at.0, h.base_offset.0));
                at = h.base_offset;
            }
            assert_eq!(h.base_offset, at, "offsets increase");
            assert_eq!(h.term, TERM);
            let parsed = Batch::parse(b.clone()).unwrap_or_else(|e| panic!("batch at {at}: {e}"));
            let want = expected_stored(at.0);
            assert!(
                parsed.bytes()[..] == want[..],
                "batch at {at}: content differs from what the child appended ({} vs {} bytes)",
                b.len(),
                want.len()
            );
            batches.push((at.0, b.len()));
            at = h.last_offset().plus(1);
        }
    }
    assert_eq!(at, end, "the last batch ends exactly at the log end");
    assert!(
        log.read(end, 1 << 20, end.plus(1000))
            .await
            .expect("read at end")
            .is_empty(),
        "nothing is served at the end"
    );
    assert!(
        matches!(
            log.read(end.plus(1), 1 << 20, end.plus(1000)).await,
            Err(StorageError::OffsetOutOfRange { .. })
        ),
        "reading past the end is out of range"
    );
    for (from, to) in &gaps {
        assert!(
            bases.contains(to) || *to == end.0,
            "gap [{from}, {to}) does not end at a segment: {bases:?}"
        );
    }
    ReadBack {
        end: end.0,
        batches,
        gaps,
    }
}

/// Checks the files against the batches read: sealed segments are cut to their data and have
/// both indexes, the active segment has no index files and only zeros past its data.
fn verify_files(dir: &Path, batches: &[(i64, usize)]) -> usize {
    let files = log_files(dir);
    assert!(!files.is_empty(), "the log has an active segment file");
    let mut data: BTreeMap<i64, (u64, usize)> = files.keys().map(|b| (*b, (0, 0))).collect();
    for (base, size) in batches {
        let (_, seg) = data
            .range_mut(..=*base)
            .next_back()
            .expect("a segment holds the batch");
        seg.0 += *size as u64;
        seg.1 += 1;
    }
    let active = *files.keys().next_back().expect("active");
    for (base, (path, len)) in &files {
        let (bytes, count) = data[base];
        let index = path.with_extension("index");
        let timeindex = path.with_extension("timeindex");
        if *base == active {
            assert!(
                *len >= bytes,
                "active segment {base}: file shorter than its data"
            );
            let content = std::fs::read(path).expect("read active segment");
            if let Some(p) = content[bytes as usize..].iter().position(|b| *b != 0) {
                panic!(
                    "active segment {base}: non-zero byte at {} past the data end {bytes}",
                    bytes as usize + p
                );
            }
            assert!(!index.exists(), "active segment {base} has no .index");
            assert!(
                !timeindex.exists(),
                "active segment {base} has no .timeindex"
            );
        } else {
            assert!(count > 0, "sealed segment {base} holds no batch: {files:?}");
            assert_eq!(*len, bytes, "sealed segment {base} is cut to its data");
            assert!(index.exists(), "sealed segment {base} has its .index");
            assert!(
                timeindex.exists(),
                "sealed segment {base} has its .timeindex"
            );
        }
    }
    let pooled = std::fs::read_dir(dir)
        .expect("read dir")
        .filter(|e| {
            let e = e.as_ref().expect("entry");
            e.file_name().to_string_lossy().ends_with(".log.free")
        })
        .count();
    let pool_max = crash_child::limits().recycled_segments_per_log_max;
    assert!(
        pooled <= pool_max,
        "{pooled} pooled segment files, the bound is {pool_max}"
    );
    let leftovers: Vec<String> = std::fs::read_dir(dir)
        .expect("read dir")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".tmp") || n.ends_with(".cleaned"))
        .collect();
    assert!(
        leftovers.is_empty(),
        "recovery removed leftovers: {leftovers:?}"
    );
    files.len()
}

/// Reopens the log in-process, checks that it holds at least `reported` and is consistent,
/// and closes it. Gaps not in `known_gaps` must start at or after `reported` (no flushed data
/// lost) and are only accepted while [`TOLERATE_ROLL_GAP_BUG`] is set; they are added to
/// `known_gaps`.
fn reopen_and_verify(
    dir: &Path,
    reported: i64,
    fsize_mode: bool,
    min_start: Option<i64>,
    known_gaps: &mut Vec<(i64, i64)>,
) -> Verified {
    let d = dir.to_path_buf();
    let r = run_local(move || async move {
        let log = open_log(&d, fsize_mode).await;
        assert!(!log.is_failed());
        let end = log.end_offset().0;
        assert!(
            end >= reported,
            "log end {end} is before the reported flushed end {reported}"
        );
        let r = verify_reads(&log, &d, min_start).await;
        assert_eq!(
            log.flushed_end_offset(),
            log.end_offset(),
            "a reopened log is durable"
        );
        log.close().await.expect("close");
        r
    });
    for gap in &r.gaps {
        if known_gaps.contains(gap) {
            continue;
        }
        assert!(
            gap.0 >= reported,
            "offsets [{}, {}) are missing, but everything below {reported} was reported flushed",
            gap.0,
            gap.1
        );
        if !TOLERATE_ROLL_GAP_BUG {
            panic!(
                "offsets [{}, {}) hold no batch after recovery (crash during a roll)",
                gap.0, gap.1
            );
        }
        println!(
            "KNOWN STORAGE BUG: after recovery, offsets [{}, {}) hold no batch (never flushed; \
             a crash during a roll left the next segment's base as the end)",
            gap.0, gap.1
        );
        known_gaps.push(*gap);
    }
    assert_eq!(
        r.gaps.len(),
        known_gaps.len(),
        "known gaps stay as they were: {known_gaps:?}"
    );
    let segments = verify_files(dir, &r.batches);
    Verified {
        end: r.end,
        batches: r.batches.len(),
        segments,
    }
}

/// The highest `<prefix><offset>` value of the child's output.
fn max_said(out: &str, prefix: &str) -> Option<i64> {
    out.lines()
        .filter_map(|l| l.strip_prefix(prefix))
        .map(|v| v.trim().parse::<i64>().expect("a number after the prefix"))
        .max()
}

/// What a series of kill rounds saw.
struct KillRounds {
    rounds: usize,
    last: Verified,
    reported_ever: i64,
    /// Highest start offset the child reported (retention mode).
    start_ever: Option<i64>,
    /// Rounds in which a roll reused a pooled segment file.
    rounds_reusing: usize,
}

/// Runs the child again and again in one directory, killing it at a random moment each time,
/// and verifies the reopened log after each kill. `retain_bytes` runs the child with
/// retention (and so segment recycling).
fn kill_rounds(retain_bytes: Option<u64>, rounds_default: u64, secs_default: u64) -> KillRounds {
    // Overridable for longer stress runs: RINGLOG_CRASH_ROUNDS, RINGLOG_CRASH_SECS.
    let env = |name: &str, default: u64| -> u64 {
        std::env::var(name).map_or(default, |v| v.parse().expect("a number"))
    };
    let rounds_max = env("RINGLOG_CRASH_ROUNDS", rounds_default) as usize;
    let new_rounds_until = Duration::from_secs(env("RINGLOG_CRASH_SECS", secs_default));
    let seed = seed();
    println!("crash test seed: {seed} (replay with RINGLOG_CRASH_SEED={seed})");
    let mut rng = XorShift::new(seed);
    let dir = tempfile::tempdir_in("/tmp").expect("tempdir");
    let started = Instant::now();
    let mut reported_ever = 0i64;
    let mut start_ever = retain_bytes.map(|_| 0i64);
    let mut rounds_reusing = 0;
    let mut flush_lines = 0usize;
    let mut rounds = 0usize;
    let mut last = None;
    let mut gaps = Vec::new();
    while rounds < rounds_max && started.elapsed() < new_rounds_until {
        rounds += 1;
        let run_ms = 10 + rng.below(391);
        let child_seed = rng.next_u64();
        let mut args = vec!["--seed".to_string(), child_seed.to_string()];
        if let Some(n) = retain_bytes {
            args.extend(["--retain-bytes".to_string(), n.to_string()]);
        }
        let mut child = ChildGuard::spawn(dir.path(), &args);
        std::thread::sleep(Duration::from_millis(run_ms));
        if let Some(status) = child.try_wait() {
            let (_, out, err) = child.finish();
            panic!("round {rounds}: the child exited on its own ({status}):\n{out}\n{err}");
        }
        let (status, out, err) = child.finish();
        assert!(
            !status.success() && status.code().is_none(),
            "round {rounds}: the child was killed by a signal, not {status}:\n{err}"
        );
        assert!(
            !out.contains("ERROR"),
            "round {rounds}: the child reported an error:\n{out}\n{err}"
        );
        flush_lines += out.lines().filter(|l| l.starts_with("FLUSHED ")).count();
        let reported = max_flushed(&out).unwrap_or(0);
        reported_ever = reported_ever.max(reported);
        if let (Some(s), Some(said)) = (start_ever.as_mut(), max_said(&out, "START ")) {
            *s = (*s).max(said);
        }
        if out.lines().any(|l| l.starts_with("REUSED ")) {
            rounds_reusing += 1;
        }
        let v = reopen_and_verify(dir.path(), reported_ever, false, start_ever, &mut gaps);
        println!(
            "round {rounds}: ran {run_ms} ms, child seed {child_seed}, reported {reported}, \
             reopened end {}, {} batches, {} segments",
            v.end, v.batches, v.segments
        );
        if let Some(prev) = last {
            let prev: Verified = prev;
            assert!(
                v.end >= prev.end,
                "round {rounds}: the log end went back from {}",
                prev.end
            );
        }
        last = Some(v);
    }
    let last = last.expect("at least one round");
    println!(
        "{rounds} rounds in {:?}, {flush_lines} flushes reported, final end {}, {} segments, \
         start {start_ever:?}, {rounds_reusing} rounds reused a pooled segment, \
         gaps left by the known roll bug: {gaps:?}",
        started.elapsed(),
        last.end,
        last.segments
    );
    assert!(rounds >= 5, "only {rounds} rounds ran");
    assert!(
        flush_lines > 0 && reported_ever > 0,
        "the child never reported a flush"
    );
    KillRounds {
        rounds,
        last,
        reported_ever,
        start_ever,
        rounds_reusing,
    }
}

#[test]
fn sigkill_at_random_points_keeps_every_flushed_batch() {
    let k = kill_rounds(None, 25, 25);
    assert!(k.last.segments > 1, "the child never rolled a segment");
}

#[test]
fn sigkill_with_retention_and_recycled_segments_keeps_every_flushed_batch() {
    // Two segments' worth kept: retention retires a segment about every segment of appends,
    // and the next roll reuses its file, so most rounds append into a recycled segment.
    let k = kill_rounds(Some(2 * crash_child::SEGMENT_BYTES), 25, 20);
    let start = k.start_ever.unwrap_or(0);
    assert!(
        start > 0 && start < k.reported_ever,
        "retention moved the start ({start}, flushed end {})",
        k.reported_ever
    );
    assert!(
        k.rounds_reusing * 2 >= k.rounds.min(10),
        "rolls reused pooled segments in only {} of {} rounds",
        k.rounds_reusing,
        k.rounds
    );
}

#[test]
fn file_size_limit_fails_the_log_with_efbig_and_keeps_flushed_data() {
    // A multiple of the child's write buffer (16 KiB), so the failing write starts exactly at
    // the limit and fails with EFBIG (a write crossing it would be cut short instead).
    const LIMIT: u64 = 256 * 1024;
    let dir = tempfile::tempdir_in("/tmp").expect("tempdir");
    let mut child = ChildGuard::spawn(
        dir.path(),
        &[
            "--seed".into(),
            "7".into(),
            "--fsize-limit".into(),
            LIMIT.to_string(),
        ],
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(s) = child.try_wait() {
            break s;
        }
        assert!(
            Instant::now() < deadline,
            "the child did not stop at the file size limit"
        );
        std::thread::sleep(Duration::from_millis(10));
    };
    let (_, out, err) = child.finish();
    let tail: Vec<&str> = out.lines().rev().take(6).collect();
    assert_eq!(
        status.code(),
        Some(crash_child::EXIT_OP_FAILED),
        "child exit: {status}; last lines: {tail:?}\n{err}"
    );
    let error = out
        .lines()
        .find(|l| l.starts_with("ERROR "))
        .unwrap_or_else(|| panic!("no ERROR line: {tail:?}"));
    assert!(
        error.contains("kind=FileTooLarge") && error.contains("File too large"),
        "a typed EFBIG error: {error}"
    );
    assert!(error.contains("Io {"), "an I/O error: {error}");
    assert!(
        out.lines().any(|l| l == "AFTER_FLUSH Err(Failed)"),
        "flush after the failure returns Failed: {tail:?}"
    );
    assert!(
        out.lines().any(|l| l == "AFTER_APPEND Err(Failed)"),
        "append after the failure returns Failed: {tail:?}"
    );
    let flushes = out.lines().filter(|l| l.starts_with("FLUSHED ")).count() as u64;
    assert!(
        flushes > crash_child::FSIZE_WARMUP_FLUSHES,
        "{flushes} flushes reported"
    );
    let reported = max_flushed(&out).expect("FLUSHED lines");
    assert!(reported > 0);
    for (base, (path, len)) in log_files(dir.path()) {
        assert!(
            len <= LIMIT,
            "segment {base} ({}) is {len} bytes, past the limit",
            path.display()
        );
    }

    // Reopened without the limit: everything flushed is there, the oversized batch is not
    // (it could not be written whole), and the log is consistent.
    let mut gaps = Vec::new();
    let v = reopen_and_verify(dir.path(), reported, true, None, &mut gaps);
    assert!(
        gaps.is_empty(),
        "no offsets missing without a crash: {gaps:?}"
    );
    println!("fsize: reported {reported}, reopened {v:?}; {error}");
    assert_eq!(
        v.end, reported,
        "everything before the oversized batch was flushed when the segment rolled"
    );
    assert!(
        v.segments > 2,
        "the log rolled before the limit was hit: {v:?}"
    );

    // And it takes appends again.
    let d = dir.path().to_path_buf();
    let end = run_local(move || async move {
        let log = open_log(&d, true).await;
        for _ in 0..50 {
            let base = log.end_offset();
            let info = log
                .append(expected_batch(base.0), TERM)
                .await
                .expect("append after reopen");
            assert_eq!(info.base_offset, base);
        }
        let end = log.flush().await.expect("flush after reopen");
        log.close().await.expect("close");
        end.0
    });
    assert!(end > reported);
    let again = reopen_and_verify(dir.path(), end, true, None, &mut gaps);
    assert!(
        gaps.is_empty(),
        "no offsets missing without a crash: {gaps:?}"
    );
    assert_eq!(again.end, end);
    assert_eq!(again.batches, v.batches + 50);
}

/// The disk state a crash leaves when it hits a roll between creating the new segment file
/// and writing out the old segment's buffered batches: the old segment's data ends at `n`, and
/// an empty, preallocated segment for the (never written) end `n + k` exists under its
/// temporary name. The log must reopen with its end where the data ends; it must not claim
/// offsets that hold nothing.
#[test]
fn crash_during_roll_does_not_leave_a_gap_at_the_end() {
    let dir = tempfile::tempdir_in("/tmp").expect("tempdir");
    let d = dir.path().to_path_buf();
    let end = run_local(move || async move {
        let log = open_log(&d, false).await;
        for _ in 0..40 {
            let base = log.end_offset();
            log.append(expected_batch(base.0), TERM)
                .await
                .expect("append");
        }
        let end = log.flush().await.expect("flush");
        log.close().await.expect("close");
        end.0
    });
    // What a roll at `end + 13` (13 offsets appended, not written) leaves before the old
    // segment is sealed: an empty file preallocated to segment.bytes, named `.log.tmp`.
    let f = std::fs::File::create(dir.path().join(format!("{:020}.log.tmp", end + 13)))
        .expect("create");
    f.set_len(crash_child::SEGMENT_BYTES).expect("preallocate");
    drop(f);
    let d = dir.path().to_path_buf();
    let (reopened, last, read_at_end) = run_local(move || async move {
        let log = open_log(&d, false).await;
        let reopened = log.end_offset().0;
        let last = log.last_offset_and_term().map(|(o, _)| o.0);
        let read = log
            .read(Offset(end), 1 << 20, log.end_offset())
            .await
            .map(|v| v.len())
            .map_err(|e| e.to_string());
        log.close().await.expect("close");
        (reopened, last, read)
    });
    assert_eq!(
        (reopened, last),
        (end, Some(end - 1)),
        "the log end is where the data ends (read at {end}: {read_at_end:?} batches)"
    );
}
