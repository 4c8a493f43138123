#!/usr/bin/env bash
# Storage benchmark: fio and ringlog-storage-bench in the same run, on the same filesystem.
#
#   perf/storage-bench.sh [--dir DIR] [--total-bytes N] [--latency-ops N] [--rounds R]
#                         [--timeout S] [--no-extra] [-- extra ringlog-storage-bench args...]
#
# Defaults: DIR /tmp/ringlog-storage-bench (must not be tmpfs), 1 GiB, 5000 latency ops, 3 rounds,
# every fio job and the bench bounded by --timeout (300 s) seconds. Each round runs, in order:
#  1. fio sequential write: O_DIRECT, 1 MiB blocks, file preallocated (--fallocate=native),
#     --end_fsync=1 (the log's figure also ends with everything durable). iodepth=2: the log keeps
#     at most write_buffers_in_flight_max (8) x write_buffer_bytes (256 KiB) = 2 MiB in flight,
#     and two 1 MiB writes are the same number of bytes in flight. Engine: io_uring (what the log
#     uses), else libaio, else psync.
#     Extra fio jobs (skip with --no-extra), recorded but not used in the targets:
#       - bs=16k iodepth=1 O_DSYNC on a fresh 1 GiB preallocated file: the device operation the
#         log's flush is (a write-through write); its p99 is the floor of the log's p99, and the
#         summary gives the log's p99 against it as well;
#       - bs=256k iodepth=8: the log's exact write shape;
#       - bs=1M iodepth=1 --fdatasync=1: a sync after every MiB, the durability work the log does.
#  2. fio fdatasync latency: 16 KiB O_DIRECT writes each followed by fdatasync, LATENCY_OPS of
#     them at the start of a fresh file preallocated to 1 GiB (the size of the log's segment in
#     its latency phase: ext4's fdatasync is slower in a larger preallocated file), same engine,
#     iodepth=1 (glommio issues its fdatasync through io_uring too); p99 is read from fio's JSON
#     `sync` section.
#  3. ringlog-storage-bench (release build): append throughput with 1 MiB flush groups (20 of
#     them outstanding, as the broker's write workload has produce requests in flight), then
#     append+flush latency of 16 KiB batches.
# The ratios are computed per round (fio and log measured minutes apart at most); the headline
# figure of each is the median over rounds. Writes perf/results/storage-<UTC time>-<git rev>.json
# and .md; raw fio and bench outputs go to perf/tmp/<same name>/.
# Targets: append bandwidth >= 90% of fio's; log p99 append+flush <= 1.5 x fio's p99 fdatasync.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
DIR=/tmp/ringlog-storage-bench
TOTAL=1G
LAT_OPS=5000
STEP_TIMEOUT=300
ROUNDS=3
EXTRA=1
BENCH_ARGS=()

usage() { sed -n '2,7p' "$0" | sed 's/^# \{0,1\}//'; exit "${1:-2}"; }
while [[ $# -gt 0 ]]; do
    case "$1" in
        --dir) DIR=$2; shift 2 ;;
        --total-bytes) TOTAL=$2; shift 2 ;;
        --latency-ops) LAT_OPS=$2; shift 2 ;;
        --timeout) STEP_TIMEOUT=$2; shift 2 ;;
        --rounds) ROUNDS=$2; shift 2 ;;
        --no-extra) EXTRA=0; shift ;;
        -h|--help) usage 0 ;;
        --) shift; BENCH_ARGS=("$@"); break ;;
        *) echo "unknown argument: $1" >&2; usage ;;
    esac
done

log() { echo "[storage-bench] $*" >&2; }
die() { echo "[storage-bench] error: $*" >&2; exit 1; }

# Sizes: plain bytes or K/M/G (powers of 1024), resolved here so fio and the bench agree.
TOTAL_BYTES=$(python3 -c '
import re, sys
m = re.fullmatch(r"(\d+)\s*([kmg]?)(i?b)?", sys.argv[1].strip().lower())
if not m: sys.exit("bad size " + sys.argv[1])
print(int(m.group(1)) << {"": 0, "k": 10, "m": 20, "g": 30}[m.group(2)])' "$TOTAL")
[[ $TOTAL_BYTES -ge $((16 << 20)) ]] || die "--total-bytes must be at least 16M"
[[ $LAT_OPS =~ ^[0-9]+$ && $LAT_OPS -ge 100 ]] || die "--latency-ops must be a number >= 100"
[[ $ROUNDS =~ ^[0-9]+$ && $ROUNDS -ge 1 ]] || die "--rounds must be a number >= 1"

# --- fio ---------------------------------------------------------------------------------------
if ! command -v fio >/dev/null; then
    SUDO=""
    [[ $(id -u) -eq 0 ]] || SUDO=sudo
    log "installing fio"
    if ! timeout 300 $SUDO apt-get install -y fio >/dev/null 2>&1; then
        timeout 300 $SUDO apt-get update >/dev/null
        timeout 300 $SUDO apt-get install -y fio >/dev/null
    fi
fi
command -v fio >/dev/null || die "fio is not installed"

# --- scratch directory -------------------------------------------------------------------------
mkdir -p "$DIR/fio" "$DIR/log"
FSTYPE=$(findmnt -no FSTYPE --target "$DIR" 2>/dev/null || stat -f -c %T "$DIR")
case "$FSTYPE" in
    tmpfs|ramfs) die "$DIR is on $FSTYPE: O_DIRECT and fdatasync would measure memory" ;;
esac
[[ $(stat -c %d "$DIR/fio") == $(stat -c %d "$DIR/log") ]] || die "fio and log dirs on different filesystems"
AVAIL=$(df -P -B1 "$DIR" | awk 'NR == 2 { print $4 }')
NEED=$((TOTAL_BYTES * 2 + (2 << 30)))
[[ $AVAIL -ge $NEED ]] || die "$DIR has $AVAIL bytes free, need $NEED"
rm -f "$DIR"/fio/*

STAMP=$(date -u +%Y%m%dT%H%M%SZ)
REV=$(git -C "$ROOT" rev-parse --short=12 HEAD 2>/dev/null || echo nocommit)
[[ -z $(git -C "$ROOT" status --porcelain 2>/dev/null | head -1) ]] || REV="$REV-dirty"
NAME="storage-$STAMP-$REV"
RAW="$ROOT/perf/tmp/$NAME"
mkdir -p "$RAW" "$ROOT/perf/results"

# Settle between steps: deleted files are discarded (the filesystem may be mounted with
# `discard`) and dirty metadata written, so one step's cleanup does not land in the next.
settle() { rm -f "$DIR"/fio/*; sync; sleep 2; }

ENGINE=""
for e in io_uring libaio psync; do
    if timeout 60 fio --name=probe --filename="$DIR/fio/probe" --rw=write --bs=4k --size=64k \
        --direct=1 --ioengine="$e" --output-format=json >/dev/null 2>&1; then
        ENGINE=$e
        break
    fi
done
[[ -n $ENGINE ]] || die "no fio engine can do O_DIRECT writes in $DIR"
log "fio $(fio --version), engine $ENGINE, $FSTYPE at $DIR, total $TOTAL_BYTES bytes, $LAT_OPS latency ops"

# fio_run NAME ARGS...: one job, JSON to $RAW/fio-NAME.json, bounded by fio's runtime and timeout.
fio_run() {
    local name=$1
    shift
    settle
    log "fio $name"
    timeout $((STEP_TIMEOUT + 60)) fio --name="$name" --filename="$DIR/fio/$name.dat" \
        --direct=1 --ioengine="$ENGINE" --fallocate=native --runtime="$STEP_TIMEOUT" \
        --output-format=json --output="$RAW/fio-$name.json" "$@" \
        || die "fio $name failed (see $RAW/fio-$name.json)"
}

# Built before anything is measured, so the compiler does not share the disk with fio.
log "building ringlog-storage-bench (release)"
(cd "$ROOT" && timeout 1200 cargo build --release --quiet -p ringlog-storage --bin ringlog-storage-bench)
# Where cargo put it: CARGO_TARGET_DIR when set (a private build dir), else the workspace's.
BENCH="${CARGO_TARGET_DIR:-$ROOT/target}/release/ringlog-storage-bench"
[[ -x $BENCH ]] || die "no bench binary at $BENCH"

# Each round pairs each log phase with its fio baseline, back to back: fio's sequential write,
# then the log's throughput phase; fio's fdatasync job, then the log's latency phase; the extra
# fio jobs last. A shared virtual disk drifts by 2x within minutes, and after gigabytes of
# writes it is slower than fresh: measured with the extra jobs between fio's sequential write
# and the log (the order before session 6), the log's throughput was 1.0-1.6 GB/s against
# 1.65-1.85 GB/s when run right after fio's.
bench() {
    local name=$1
    shift
    settle
    log "ringlog-storage-bench $name ${BENCH_ARGS[*]:-}"
    timeout $((STEP_TIMEOUT * 2)) "$BENCH" --dir "$DIR/log" --json "$RAW/$name.json" "$@" \
        ${BENCH_ARGS[@]+"${BENCH_ARGS[@]}"} | tee "$RAW/$name.txt" >&2 \
        || die "ringlog-storage-bench $name failed"
}
for ((r = 1; r <= ROUNDS; r++)); do
    log "round $r of $ROUNDS"
    fio_run "seqwrite-r$r" --rw=write --bs=1M --iodepth=2 --size="$TOTAL_BYTES" --end_fsync=1
    bench "log-throughput-r$r" --total-bytes "$TOTAL_BYTES" --latency-ops 0
    fio_run "fdatasync-r$r" --rw=write --bs=16k --iodepth=1 --fdatasync=1 --size=1G \
        --io_size=$((LAT_OPS * 16384))
    bench "log-latency-r$r" --total-bytes 0 --latency-ops "$LAT_OPS"
    if [[ $EXTRA == 1 ]]; then
        fio_run "dsync16k-r$r" --rw=write --bs=16k --iodepth=1 --sync=dsync --size=1G \
            --io_size=$((LAT_OPS * 16384))
        fio_run "seqwrite-256k-qd8-r$r" --rw=write --bs=256k --iodepth=8 --size="$TOTAL_BYTES" --end_fsync=1
        fio_run "seqwrite-1m-fdatasync-r$r" --rw=write --bs=1M --iodepth=1 --fdatasync=1 --size="$TOTAL_BYTES"
    fi
done
settle

# --- results ----------------------------------------------------------------------------------
export RAW NAME ENGINE FSTYPE DIR TOTAL_BYTES LAT_OPS STAMP REV ROUNDS
export RESULTS="$ROOT/perf/results"
export DEVICE=$(df -P "$DIR" | awk 'NR == 2 { print $1 }')
export MOUNT_OPTS=$(findmnt -no OPTIONS --target "$DIR" 2>/dev/null || echo unknown)
export FIO_VERSION=$(fio --version)
export RUSTC_VERSION=$(rustc --version 2>/dev/null || echo unknown)
export BENCH_ARGS_STR="${BENCH_ARGS[*]:-}"
python3 - <<'PY'
import json, os, platform, statistics

env = os.environ
raw, rounds = env["RAW"], int(env["ROUNDS"])
BW_MIN, P99_MAX = 0.90, 1.5

def fio(name):
    path = f"{raw}/fio-{name}.json"
    if not os.path.exists(path):
        return None
    with open(path) as f:
        text = f.read()
    # fio may print notes before the JSON document.
    return json.loads(text[text.index("{"):])["jobs"][0]

def pct(lat, p):
    v = lat.get("percentile", {}).get(p)
    return None if v is None else v / 1000.0

def bw(job):
    w = job["write"]
    return {"bytes_per_sec": w["bw_bytes"], "mib_per_sec": w["bw_bytes"] / 2**20,
            "runtime_ms": w["runtime"], "bytes": w["io_bytes"]}

def one_round(r):
    seq = fio(f"seqwrite-r{r}")
    sync_job = fio(f"fdatasync-r{r}")
    sync = sync_job["sync"]["lat_ns"]
    out = {
        "seqwrite": {"bs": "1M", "iodepth": 2, "fallocate": "native", "end_fsync": True, **bw(seq)},
        "fdatasync": {
            "bs": "16k", "iodepth": 1, "ops": sync["N"],
            "sync_us": {"min": sync["min"] / 1000, "mean": sync["mean"] / 1000,
                        "p50": pct(sync, "50.000000"), "p90": pct(sync, "90.000000"),
                        "p99": pct(sync, "99.000000"), "p99_9": pct(sync, "99.900000"),
                        "max": sync["max"] / 1000},
            "write_clat_us": {"p50": pct(sync_job["write"]["clat_ns"], "50.000000"),
                              "p99": pct(sync_job["write"]["clat_ns"], "99.000000")},
        },
        "extra": {},
    }
    dsync = fio(f"dsync16k-r{r}")
    if dsync is not None:
        c = dsync["write"]["clat_ns"]
        out["dsync16k"] = {"bs": "16k", "iodepth": 1, "sync": "dsync",
                           "write_us": {"p50": pct(c, "50.000000"), "p99": pct(c, "99.000000"),
                                        "p99_9": pct(c, "99.900000")}}
    for name, desc in [("seqwrite-256k-qd8", "bs=256k iodepth=8 (the log's write shape)"),
                       ("seqwrite-1m-fdatasync", "bs=1M iodepth=1, fdatasync after every write")]:
        job = fio(f"{name}-r{r}")
        if job is not None:
            e = {"desc": desc, **bw(job)}
            if job.get("sync", {}).get("lat_ns", {}).get("N"):
                e["sync_p99_us"] = pct(job["sync"]["lat_ns"], "99.000000")
            out["extra"][name] = e
    with open(f"{raw}/log-throughput-r{r}.json") as f:
        bench = json.load(f)
    with open(f"{raw}/log-latency-r{r}.json") as f:
        bench["latency"] = json.load(f)["latency"]
    tp, lat = bench["throughput"], bench["latency"]
    return {
        "round": r,
        "fio": out,
        "log": bench,
        "ratios": {
            "append_bw_over_fio_bw": tp["bytes_per_sec"] / out["seqwrite"]["bytes_per_sec"],
            "log_p99_over_fio_fdatasync_p99": lat["append_flush_us"]["p99"] / out["fdatasync"]["sync_us"]["p99"],
            "log_p99_over_fio_dsync_write_p99": (lat["append_flush_us"]["p99"] / out["dsync16k"]["write_us"]["p99"]
                                                 if "dsync16k" in out else None),
        },
    }

rs = [one_round(r) for r in range(1, rounds + 1)]
med = lambda xs: statistics.median(xs)
col = lambda f: [f(x) for x in rs]
summary = {
    "fio_bw_mib_per_sec": med(col(lambda x: x["fio"]["seqwrite"]["mib_per_sec"])),
    "fio_fdatasync_p50_us": med(col(lambda x: x["fio"]["fdatasync"]["sync_us"]["p50"])),
    "fio_fdatasync_p99_us": med(col(lambda x: x["fio"]["fdatasync"]["sync_us"]["p99"])),
    "log_append_bw_mib_per_sec": med(col(lambda x: x["log"]["throughput"]["mib_per_sec"])),
    "log_p50_us": med(col(lambda x: x["log"]["latency"]["append_flush_us"]["p50"])),
    "log_p99_us": med(col(lambda x: x["log"]["latency"]["append_flush_us"]["p99"])),
    "log_p99_9_us": med(col(lambda x: x["log"]["latency"]["append_flush_us"]["p99_9"])),
    "append_bw_over_fio_bw": med(col(lambda x: x["ratios"]["append_bw_over_fio_bw"])),
    "log_p99_over_fio_fdatasync_p99": med(col(lambda x: x["ratios"]["log_p99_over_fio_fdatasync_p99"])),
}
if all(x["ratios"]["log_p99_over_fio_dsync_write_p99"] is not None for x in rs):
    summary["fio_dsync_write_p99_us"] = med(col(lambda x: x["fio"]["dsync16k"]["write_us"]["p99"]))
    summary["log_p99_over_fio_dsync_write_p99"] = med(col(lambda x: x["ratios"]["log_p99_over_fio_dsync_write_p99"]))
limits = rs[0]["log"]["limits"]
result = {
    "name": env["NAME"],
    "date": env["STAMP"],
    "git_rev": env["REV"],
    "machine": {"kernel": platform.release(), "cpus": os.cpu_count(),
                "cpu": next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo")
                             if l.startswith("model name")), "unknown"),
                "dir": env["DIR"], "fstype": env["FSTYPE"], "device": env["DEVICE"],
                "mount_options": env["MOUNT_OPTS"], "rustc": env["RUSTC_VERSION"]},
    "fio_version": env["FIO_VERSION"],
    "fio_engine": env["ENGINE"],
    "total_bytes": int(env["TOTAL_BYTES"]),
    "latency_ops": int(env["LAT_OPS"]),
    "rounds": rounds,
    "bench_args": env["BENCH_ARGS_STR"],
    "log_limits": limits,
    "summary": summary,
    "ratios": {
        "append_bw_over_fio_bw": summary["append_bw_over_fio_bw"],
        "log_p99_over_fio_fdatasync_p99": summary["log_p99_over_fio_fdatasync_p99"],
    },
    "targets": {
        "append_bw_over_fio_bw_min": BW_MIN,
        "log_p99_over_fio_fdatasync_p99_max": P99_MAX,
        "append_bw_met": summary["append_bw_over_fio_bw"] >= BW_MIN,
        "p99_met": summary["log_p99_over_fio_fdatasync_p99"] <= P99_MAX,
    },
    "per_round": rs,
    "raw": raw,
}
with open(f"{env['RESULTS']}/{env['NAME']}.json", "w") as f:
    json.dump(result, f, indent=2)
    f.write("\n")

S = summary
ok = lambda b: "met" if b else "**missed**"
m = result["machine"]
md = [
    f"# Storage benchmark {env['NAME']}",
    "",
    f"{m['cpus']} CPUs ({m['cpu']}), kernel {m['kernel']}, {env['FSTYPE']} on {env['DEVICE']} "
    f"({env['MOUNT_OPTS']}), dir `{env['DIR']}`. {env['FIO_VERSION']}, engine {env['ENGINE']}. "
    f"{int(env['TOTAL_BYTES']) >> 20} MiB per throughput run, {env['LAT_OPS']} latency ops, "
    f"{rounds} rounds (fio then the log in each); headline = median over rounds. "
    f"Log limits: write_buffer_bytes={limits['write_buffer_bytes']}, "
    f"write_buffers_in_flight_max={limits['write_buffers_in_flight_max']}"
    + (" (defaults)" if limits["default"] else " (**not the defaults**)")
    + (f"; bench args `{env['BENCH_ARGS_STR']}`" if env["BENCH_ARGS_STR"] else "") + ".",
    "",
    "| | median | target | |",
    "|---|---|---|---|",
    f"| fio seq write, 1 MiB O_DIRECT, iodepth 2 | {S['fio_bw_mib_per_sec']:.0f} MiB/s | | |",
    f"| log append, 16 KiB batches, flush every 1 MiB | {S['log_append_bw_mib_per_sec']:.0f} MiB/s | | |",
    f"| ratio log / fio bandwidth (median of per-round ratios) | {S['append_bw_over_fio_bw']:.2f} | >= {BW_MIN} | {ok(result['targets']['append_bw_met'])} |",
    f"| fio fdatasync after a 16 KiB write, p50 / p99 | {S['fio_fdatasync_p50_us']:.0f} / {S['fio_fdatasync_p99_us']:.0f} us | | |",
    f"| log append+flush 16 KiB, p50 / p99 / p99.9 | {S['log_p50_us']:.0f} / {S['log_p99_us']:.0f} / {S['log_p99_9_us']:.0f} us | | |",
    f"| ratio log p99 / fio fdatasync p99 (median of per-round ratios) | {S['log_p99_over_fio_fdatasync_p99']:.2f} | <= {P99_MAX} | {ok(result['targets']['p99_met'])} |",
]
if "log_p99_over_fio_dsync_write_p99" in S:
    md.append(f"| fio O_DSYNC 16 KiB write (the log's flush operation), p99 | {S['fio_dsync_write_p99_us']:.0f} us | | |")
    md.append(f"| ratio log p99 / fio O_DSYNC write p99 (median of per-round ratios) | {S['log_p99_over_fio_dsync_write_p99']:.2f} | | not a target |")
md += [
    "",
    "Per round:",
    "",
    "| round | fio MiB/s | log MiB/s | bw ratio | fio sync p50/p99 us | fio write p50/p99 us | log p50/p99/p99.9 us | p99 ratio | fio O_DSYNC write p50/p99 us | fio 256k qd8 MiB/s | fio 1M+fdatasync MiB/s | log flushes p50/p99 us |",
    "|---|---|---|---|---|---|---|---|---|---|---|---|",
]
for x in rs:
    f, l = x["fio"], x["log"]
    s, w, a, tp = f["fdatasync"]["sync_us"], f["fdatasync"]["write_clat_us"], l["latency"]["append_flush_us"], l["throughput"]
    ex = lambda k: f"{f['extra'][k]['mib_per_sec']:.0f}" if k in f["extra"] else "-"
    ds = f"{f['dsync16k']['write_us']['p50']:.0f}/{f['dsync16k']['write_us']['p99']:.0f}" if "dsync16k" in f else "-"
    md.append(
        f"| {x['round']} | {f['seqwrite']['mib_per_sec']:.0f} | {tp['mib_per_sec']:.0f} | "
        f"{x['ratios']['append_bw_over_fio_bw']:.2f} | {s['p50']:.0f}/{s['p99']:.0f} | {w['p50']:.0f}/{w['p99']:.0f} | "
        f"{a['p50']}/{a['p99']}/{a['p99_9']} | {x['ratios']['log_p99_over_fio_fdatasync_p99']:.2f} | "
        f"{ds} | {ex('seqwrite-256k-qd8')} | {ex('seqwrite-1m-fdatasync')} | "
        f"{tp['flush_latency_us']['p50']}/{tp['flush_latency_us']['p99']} |")
md += [
    "",
    "The log's latency includes its 16 KiB write; fio's sync figure does not (fio write column).",
    "",
    f"Raw outputs: `{raw}`.",
    "",
]
with open(f"{env['RESULTS']}/{env['NAME']}.md", "w") as f:
    f.write("\n".join(md))
print("\n".join(md))
PY
log "wrote perf/results/$NAME.json and .md"
