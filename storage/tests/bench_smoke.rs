//! Keeps `ringlog-storage-bench` from rotting: a tiny `--quick` run must succeed and write JSON
//! with the fields `perf/storage-bench.sh` reads. No timing is asserted.

use std::path::Path;
use std::process::Command;

/// Runs the bench with `args` (plus `--dir <dir>/data --json <dir>/bench.json`), checks that
/// it succeeded, and returns its JSON.
fn run_bench(dir: &Path, args: &[&str]) -> serde_json::Value {
    let json_path = dir.join("bench.json");
    let out = Command::new(env!("CARGO_BIN_EXE_ringlog-storage-bench"))
        .args(args)
        .arg("--dir")
        .arg(dir.join("data"))
        .arg("--json")
        .arg(&json_path)
        .output()
        .expect("run ringlog-storage-bench");
    assert!(
        out.status.success(),
        "bench failed: {}\nstdout:\n{}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let text = std::fs::read_to_string(&json_path).expect("JSON written");
    serde_json::from_str(&text).expect("valid JSON")
}

#[test]
fn quick_bench_run_writes_json() {
    let dir = tempfile::tempdir().expect("tempdir");
    let v = run_bench(
        dir.path(),
        &[
            "--quick",
            "--total-bytes",
            "2M",
            "--latency-ops",
            "20",
            "--warmup-ops",
            "2",
            "--io-memory",
            "2M",
            "--baseline",
        ],
    );

    let tp = &v["throughput"];
    assert_eq!(tp["bytes"].as_u64(), Some(2 << 20), "{tp}");
    assert_eq!(tp["batch_bytes"].as_u64(), Some(16 * 1024), "{tp}");
    assert!(
        tp["bytes_per_sec"].as_f64().is_some_and(|b| b > 0.0),
        "{tp}"
    );
    assert!(tp["seconds"].as_f64().is_some_and(|s| s > 0.0), "{tp}");
    assert!(tp["flushes"].as_u64().is_some_and(|n| n >= 2), "{tp}");

    let lat = &v["latency"];
    assert_eq!(lat["ops"].as_u64(), Some(20), "{lat}");
    for h in ["append_flush_us", "append_us", "flush_us"] {
        assert_eq!(lat[h]["count"].as_u64(), Some(20), "{h}: {lat}");
        for q in ["p50", "p90", "p99", "p99_9", "max"] {
            assert!(
                lat[h][q].as_u64().is_some_and(|us| us > 0),
                "{h}.{q}: {lat}"
            );
        }
        assert!(
            lat[h]["p50"].as_u64() <= lat[h]["max"].as_u64(),
            "{h}: {lat}"
        );
    }
    let base = &v["glommio_baseline"];
    assert!(
        base["write_fdatasync_us"]["p99"].as_u64().is_some(),
        "{base}"
    );

    assert_eq!(
        v["limits"]["default"].as_bool(),
        Some(true),
        "{}",
        v["limits"]
    );
    for key in ["write_buffer_bytes", "write_buffers_in_flight_max"] {
        assert!(
            v["limits"][key].as_u64().is_some(),
            "{key}: {}",
            v["limits"]
        );
    }
    // The bench removes its log directories when done (unless --keep).
    let left: Vec<_> = std::fs::read_dir(dir.path().join("data"))
        .expect("data dir")
        .map(|e| e.expect("entry").file_name())
        .collect();
    assert!(left.is_empty(), "left behind: {left:?}");
}

#[test]
fn quick_recycled_latency_run_appends_into_a_reused_segment() {
    let dir = tempfile::tempdir_in("/tmp").expect("tempdir");
    let v = run_bench(
        dir.path(),
        &[
            "--quick",
            "--recycled",
            "--total-bytes",
            "0",
            "--latency-ops",
            "20",
            "--warmup-ops",
            "2",
            "--io-memory",
            "2M",
        ],
    );
    let lat = &v["latency"];
    assert_eq!(lat["segment"].as_str(), Some("recycled"), "{lat}");
    assert_eq!(lat["pool"]["reused"].as_u64(), Some(1), "{lat}");
    // --quick segments are 8 MiB: the reused file is the whole first segment.
    assert!(
        lat["recycled_file_bytes"]
            .as_u64()
            .is_some_and(|b| b > 7 << 20),
        "{lat}"
    );
    assert_eq!(lat["append_flush_us"]["count"].as_u64(), Some(20), "{lat}");
}

#[test]
fn bad_arguments_exit_with_usage() {
    let out = Command::new(env!("CARGO_BIN_EXE_ringlog-storage-bench"))
        .arg("--no-such-flag")
        .output()
        .expect("run ringlog-storage-bench");
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("usage"));
}
