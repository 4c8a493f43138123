#!/usr/bin/env bash
# Storage benchmark: fio and ringlog-storage-bench in the same run, on the same filesystem.
#
#   perf/storage-bench.sh [--dir DIR] [--total-bytes N] [--latency-ops N] [--rounds R]
#                         [--timeout S] [--no-extra] [-- extra ringlog-storage-bench args...]
#
# Defaults: DIR /tmp/ringlog-storage-bench (must not be tmpfs), 2 GiB, 5000 latency ops, 3 rounds,
# every fio job and the bench bounded by --timeout (300 s) seconds. Each round runs, in order:
#  1. fio sequential write: O_DIRECT, 1 MiB blocks, file preallocated (--fallocate=native),
#     --end_fsync=1 (the log's figure also ends with everything durable). iodepth=2: the log keeps
#     at most write_buffers_in_flight_max (8) x write_buffer_bytes (256 KiB) = 2 MiB in flight,
#     and two 1 MiB writes are the same number of bytes in flight. Engine: io_uring (what the log
#     uses), else libaio, else psync.
#     Extra fio jobs (skip with --no-extra), recorded but not used in the targets:
#       - bs=256k iodepth=8: the log's exact write shape;
#       - bs=1M iodepth=1 --fdatasync=1: a sync after every MiB, the durability work the log does.
#  2. fio fdatasync latency: 16 KiB O_DIRECT writes each followed by fdatasync, LATENCY_OPS of
#     them at the start of a fresh file preallocated to 1 GiB (the size of the log's segment in
#     its latency phase: ext4's fdatasync is slower in a larger preallocated file), same engine,
#     iodepth=1 (glommio issues its fdatasync through io_uring too); p99 is read from fio's JSON
#     `sync` section.
#  3. ringlog-storage-bench (release build): append throughput with 1 MiB flush groups (20 of
#     them outstanding, as the broker's write workload has produce requests in flight), then
#     append+flush latency of 16 KiB batches in a fresh segment (a new log's first life); then
#     fio's 16 KiB O_DSYNC write on a fresh file: the device operation a flush is (one
#     write-through write), so its p99 is the floor of the log's, reported beside the target.
#  4. The steady state, once retention deletes segments and rolls reuse them (recycle.rs):
#     fio writes a 1 GiB file in full (so its blocks are written, as a recycled segment's are),
#     then runs the sequential write, fdatasync and O_DSYNC jobs again on that file; each is
#     paired with the log's phase run with --recycled (before the clock starts, the log fills a
#     segment, retention pools it and a roll reuses its file).
# Targets: append bandwidth >= 90% of fio's; log p99 append+flush <= 1.5 x fio's p99 fdatasync.
# Each is judged in both states against fio on the same kind of file: a fresh log against a
# fresh file (a new log's first segments), a recycled segment against the written file.
# The ratios are computed per round (fio and log measured minutes apart at most); the headline
# figure of each is the median over rounds. Writes perf/results/storage-<UTC time>-<git rev>.json
# and .md; raw fio and bench outputs go to perf/tmp/<same name>/.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
DIR=/tmp/ringlog-storage-bench
# 2 GiB per throughput run: a 1 GiB run lasts ~0.7 s here, so one 200 ms stall of the virtual
# disk moved its figure by a quarter (session 9: per-round ratios 0.60-1.12 with 1 GiB runs).
# Not more: a segment's byte positions are u32, and the throughput phase's one segment holds
# the whole run.
TOTAL=2G
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
mkdir -p "$DIR/fio" "$DIR/log" "$DIR/fio-written"
FSTYPE=$(findmnt -no FSTYPE --target "$DIR" 2>/dev/null || stat -f -c %T "$DIR")
case "$FSTYPE" in
    tmpfs|ramfs) die "$DIR is on $FSTYPE: O_DIRECT and fdatasync would measure memory" ;;
esac
[[ $(stat -c %d "$DIR/fio") == $(stat -c %d "$DIR/log") ]] || die "fio and log dirs on different filesystems"
AVAIL=$(df -P -B1 "$DIR" | awk 'NR == 2 { print $4 }')
NEED=$((TOTAL_BYTES * 3 + (4 << 30)))
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

# fio_run NAME [--file=PATH] ARGS...: one job, JSON to $RAW/fio-NAME.json, bounded by fio's runtime and timeout.
# A first argument --file=PATH runs the job on PATH instead of a fresh file under $DIR/fio.
fio_run() {
    local name=$1 file="$DIR/fio/$1.dat"
    shift
    if [[ ${1:-} == --file=* ]]; then
        file=${1#--file=}
        shift
    fi
    settle
    log "fio $name"
    timeout $((STEP_TIMEOUT + 60)) fio --name="$name" --filename="$file" \
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
    fio_run "dsync16k-r$r" --rw=write --bs=16k --iodepth=1 --sync=dsync --lat_percentiles=1 --size=1G \
        --io_size=$((LAT_OPS * 16384))
    # The steady state: fio on a file it wrote in full first (kept out of settle's way), the
    # log in a recycled segment.
    W="$DIR/fio-written/written.dat"
    rm -f "$W"
    fio_run "layout-r$r" --file="$W" --rw=write --bs=1M --iodepth=2 \
        --size=$((TOTAL_BYTES > (1 << 30) ? TOTAL_BYTES : (1 << 30))) --end_fsync=1
    fio_run "seqwrite-written-r$r" --file="$W" --rw=write --bs=1M --iodepth=2 \
        --size="$TOTAL_BYTES" --end_fsync=1
    bench "log-throughput-recycled-r$r" --total-bytes "$TOTAL_BYTES" --latency-ops 0 --recycled
    fio_run "fdatasync-written-r$r" --file="$W" --rw=write --bs=16k --iodepth=1 \
        --fdatasync=1 --size=1G --io_size=$((LAT_OPS * 16384))
    bench "log-latency-recycled-r$r" --total-bytes 0 --latency-ops "$LAT_OPS" --recycled
    fio_run "dsync16k-written-r$r" --file="$W" --rw=write --bs=16k --iodepth=1 --sync=dsync --lat_percentiles=1 \
        --size=1G --io_size=$((LAT_OPS * 16384))
    rm -f "$W"
    if [[ $EXTRA == 1 ]]; then
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

def sync_of(job):
    sync = job["sync"]["lat_ns"]
    return {
        "bs": "16k", "iodepth": 1, "ops": sync["N"],
        "sync_us": {"min": sync["min"] / 1000, "mean": sync["mean"] / 1000,
                    "p50": pct(sync, "50.000000"), "p90": pct(sync, "90.000000"),
                    "p99": pct(sync, "99.000000"), "p99_9": pct(sync, "99.900000"),
                    "max": sync["max"] / 1000},
        "write_clat_us": {"p50": pct(job["write"]["clat_ns"], "50.000000"),
                          "p99": pct(job["write"]["clat_ns"], "99.000000")},
    }

def bench(name, phase):
    with open(f"{raw}/{name}.json") as f:
        return json.load(f)

# Two states: "fresh" (a new log's first segments against a fresh preallocated file) and
# "recycled" (a reused segment against a file fio wrote in full first).
STATES = {"fresh": ("seqwrite", "fdatasync", "log-throughput", "log-latency", "dsync16k"),
          "recycled": ("seqwrite-written", "fdatasync-written", "log-throughput-recycled",
                       "log-latency-recycled", "dsync16k-written")}

def one_round(r):
    out = {"round": r, "extra": {}}
    limits = None
    for state, (seq_n, sync_n, tp_n, lat_n, dsync_n) in STATES.items():
        tp_run = bench(f"{tp_n}-r{r}", "throughput")
        limits = tp_run["limits"]
        tp = tp_run["throughput"]
        lat = bench(f"{lat_n}-r{r}", "latency")["latency"]
        seq, sync = bw(fio(f"{seq_n}-r{r}")), sync_of(fio(f"{sync_n}-r{r}"))
        out[state] = {
            "fio_seqwrite": {"bs": "1M", "iodepth": 2, "end_fsync": True, **seq},
            "fio_fdatasync": sync,
            "log_throughput": tp,
            "log_latency": lat,
            "ratios": {
                "append_bw_over_fio_bw": tp["bytes_per_sec"] / seq["bytes_per_sec"],
                "log_p99_over_fio_fdatasync_p99": lat["append_flush_us"]["p99"] / sync["sync_us"]["p99"],
            },
        }
        # O_DSYNC write latency: fio's clat plus slat (a write may complete inside submission).
        dsync = fio(f"{dsync_n}-r{r}")["write"]
        lat_ns = dsync["lat_ns"]
        out[state]["fio_dsync_write"] = {
            "bs": "16k", "iodepth": 1, "sync": "dsync",
            "write_us": {"p50": pct(lat_ns, "50.000000"), "p99": pct(lat_ns, "99.000000"),
                         "p99_9": pct(lat_ns, "99.900000")}}
        out[state]["ratios"]["log_p99_over_fio_dsync_write_p99"] = (
            lat["append_flush_us"]["p99"] / out[state]["fio_dsync_write"]["write_us"]["p99"])
    for name, desc in [("seqwrite-256k-qd8", "bs=256k iodepth=8 (the log's write shape)"),
                       ("seqwrite-1m-fdatasync", "bs=1M iodepth=1, fdatasync after every write")]:
        job = fio(f"{name}-r{r}")
        if job is not None:
            e = {"desc": desc, **bw(job)}
            if job.get("sync", {}).get("lat_ns", {}).get("N"):
                e["sync_p99_us"] = pct(job["sync"]["lat_ns"], "99.000000")
            out["extra"][name] = e
    out["limits"] = limits
    return out

rs = [one_round(r) for r in range(1, rounds + 1)]
med = statistics.median
col = lambda f: [f(x) for x in rs]
summary = {}
for st in STATES:
    summary[st] = {
        "fio_bw_mib_per_sec": med(col(lambda x: x[st]["fio_seqwrite"]["mib_per_sec"])),
        "log_append_bw_mib_per_sec": med(col(lambda x: x[st]["log_throughput"]["mib_per_sec"])),
        "fio_fdatasync_p50_us": med(col(lambda x: x[st]["fio_fdatasync"]["sync_us"]["p50"])),
        "fio_fdatasync_p99_us": med(col(lambda x: x[st]["fio_fdatasync"]["sync_us"]["p99"])),
        "log_p50_us": med(col(lambda x: x[st]["log_latency"]["append_flush_us"]["p50"])),
        "log_p99_us": med(col(lambda x: x[st]["log_latency"]["append_flush_us"]["p99"])),
        "log_p99_9_us": med(col(lambda x: x[st]["log_latency"]["append_flush_us"]["p99_9"])),
        "append_bw_over_fio_bw": med(col(lambda x: x[st]["ratios"]["append_bw_over_fio_bw"])),
        "log_p99_over_fio_fdatasync_p99": med(col(lambda x: x[st]["ratios"]["log_p99_over_fio_fdatasync_p99"])),
        "fio_dsync_write_p50_us": med(col(lambda x: x[st]["fio_dsync_write"]["write_us"]["p50"])),
        "fio_dsync_write_p99_us": med(col(lambda x: x[st]["fio_dsync_write"]["write_us"]["p99"])),
        "log_p99_over_fio_dsync_write_p99": med(col(lambda x: x[st]["ratios"]["log_p99_over_fio_dsync_write_p99"])),
    }
# The spec's fio jobs (a fresh preallocated file) against the log in its steady state.
summary["recycled_log_over_fresh_fio"] = {
    "append_bw_over_fio_bw": med(col(lambda x: x["recycled"]["log_throughput"]["bytes_per_sec"]
                                     / x["fresh"]["fio_seqwrite"]["bytes_per_sec"])),
    "log_p99_over_fio_fdatasync_p99": med(col(lambda x: x["recycled"]["log_latency"]["append_flush_us"]["p99"]
                                              / x["fresh"]["fio_fdatasync"]["sync_us"]["p99"])),
}
limits = rs[0]["limits"]
targets = {"append_bw_over_fio_bw_min": BW_MIN, "log_p99_over_fio_fdatasync_p99_max": P99_MAX}
for st in STATES:
    targets[f"{st}_append_bw_met"] = summary[st]["append_bw_over_fio_bw"] >= BW_MIN
    targets[f"{st}_p99_met"] = summary[st]["log_p99_over_fio_fdatasync_p99"] <= P99_MAX
result = {
    "name": env["NAME"],
    "format": 2,
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
    "targets": targets,
    "per_round": rs,
    "raw": raw,
}
with open(f"{env['RESULTS']}/{env['NAME']}.json", "w") as f:
    json.dump(result, f, indent=2)
    f.write("\n")

ok = lambda b: "met" if b else "**missed**"
m = result["machine"]
md = [
    f"# Storage benchmark {env['NAME']}",
    "",
    f"{m['cpus']} CPUs ({m['cpu']}), kernel {m['kernel']}, {env['FSTYPE']} on {env['DEVICE']} "
    f"({env['MOUNT_OPTS']}), dir `{env['DIR']}`. {env['FIO_VERSION']}, engine {env['ENGINE']}. "
    f"{int(env['TOTAL_BYTES']) >> 20} MiB per throughput run, {env['LAT_OPS']} latency ops, "
    f"{rounds} rounds (fio then the log in each step); headline = median of the per-round figures. "
    f"Log limits: write_buffer_bytes={limits['write_buffer_bytes']}, "
    f"write_buffers_in_flight_max={limits['write_buffers_in_flight_max']}"
    + (" (defaults)" if limits["default"] else " (**not the defaults**)")
    + (f"; bench args `{env['BENCH_ARGS_STR']}`" if env["BENCH_ARGS_STR"] else "") + ".",
    "",
    "Two states, each against fio on the same kind of file. **Fresh**: a new log's first "
    "segments (preallocated, blocks unwritten) against a fresh preallocated file. **Recycled**: "
    "the steady state once retention deletes, a segment reused from the pool (blocks written) "
    "against a file fio wrote in full first.",
    "",
    "| | fresh | recycled | target |",
    "|---|---|---|---|",
]
F, R = summary["fresh"], summary["recycled"]
row = lambda label, f, unit="": md.append(f"| {label} | {f(F)}{unit} | {f(R)}{unit} | |")
row("fio seq write, 1 MiB O_DIRECT, iodepth 2", lambda s: f"{s['fio_bw_mib_per_sec']:.0f}", " MiB/s")
row("log append, 16 KiB batches, flush every 1 MiB", lambda s: f"{s['log_append_bw_mib_per_sec']:.0f}", " MiB/s")
md.append(f"| **ratio log / fio bandwidth** | {F['append_bw_over_fio_bw']:.2f} {ok(targets['fresh_append_bw_met'])} "
          f"| {R['append_bw_over_fio_bw']:.2f} {ok(targets['recycled_append_bw_met'])} | >= {BW_MIN} |")
row("fio fdatasync after a 16 KiB write, p50 / p99", lambda s: f"{s['fio_fdatasync_p50_us']:.0f} / {s['fio_fdatasync_p99_us']:.0f}", " us")
row("log append+flush 16 KiB, p50 / p99 / p99.9", lambda s: f"{s['log_p50_us']:.0f} / {s['log_p99_us']:.0f} / {s['log_p99_9_us']:.0f}", " us")
md.append(f"| **ratio log p99 / fio fdatasync p99** | {F['log_p99_over_fio_fdatasync_p99']:.2f} {ok(targets['fresh_p99_met'])} "
          f"| {R['log_p99_over_fio_fdatasync_p99']:.2f} {ok(targets['recycled_p99_met'])} | <= {P99_MAX} |")
row("fio O_DSYNC 16 KiB write (the operation a flush is), p50 / p99", lambda s: f"{s['fio_dsync_write_p50_us']:.0f} / {s['fio_dsync_write_p99_us']:.0f}", " us")
md.append(f"| ratio log p99 / fio O_DSYNC write p99 (the log's own overhead) | {F['log_p99_over_fio_dsync_write_p99']:.2f} "
          f"| {R['log_p99_over_fio_dsync_write_p99']:.2f} | not a target |")
X = summary["recycled_log_over_fresh_fio"]
md += ["", f"The log in its steady state (recycled) against the fio jobs on a fresh file: bandwidth ratio "
       f"{X['append_bw_over_fio_bw']:.2f}, p99 ratio {X['log_p99_over_fio_fdatasync_p99']:.2f} (medians of per-round ratios)."]
md += [
    "",
    "Per round (fio / log; bandwidth in MiB/s, latency in us):",
    "",
    "| round | state | seq write fio / log | bw ratio | fio sync p50/p99 | fio write p50/p99 | log p50/p99/p99.9 | p99 ratio | log flushes p50/p99 (throughput run) |",
    "|---|---|---|---|---|---|---|---|---|",
]
for x in rs:
    for st in STATES:
        y = x[st]
        s, w = y["fio_fdatasync"]["sync_us"], y["fio_fdatasync"]["write_clat_us"]
        a, tp = y["log_latency"]["append_flush_us"], y["log_throughput"]
        md.append(
            f"| {x['round']} | {st} | {y['fio_seqwrite']['mib_per_sec']:.0f} / {tp['mib_per_sec']:.0f} | "
            f"{y['ratios']['append_bw_over_fio_bw']:.2f} | {s['p50']:.0f}/{s['p99']:.0f} | {w['p50']:.0f}/{w['p99']:.0f} | "
            f"{a['p50']}/{a['p99']}/{a['p99_9']} | {y['ratios']['log_p99_over_fio_fdatasync_p99']:.2f} | "
            f"{tp['flush_latency_us']['p50']}/{tp['flush_latency_us']['p99']} |")
md += ["", "O_DSYNC 16 KiB writes (p50/p99 us) and the extra fio jobs (fresh files, not targets):", "",
       "| round | O_DSYNC fresh | O_DSYNC written | log p99 / O_DSYNC p99, fresh / recycled | 256k qd8 MiB/s | 1M + fdatasync MiB/s |",
       "|---|---|---|---|---|---|"]
for x in rs:
    ex = lambda k: f"{x['extra'][k]['mib_per_sec']:.0f}" if k in x["extra"] else "-"
    ds = lambda st: f"{x[st]['fio_dsync_write']['write_us']['p50']:.0f}/{x[st]['fio_dsync_write']['write_us']['p99']:.0f}"
    md.append(f"| {x['round']} | {ds('fresh')} | {ds('recycled')} | "
              f"{x['fresh']['ratios']['log_p99_over_fio_dsync_write_p99']:.2f} / "
              f"{x['recycled']['ratios']['log_p99_over_fio_dsync_write_p99']:.2f} | "
              f"{ex('seqwrite-256k-qd8')} | {ex('seqwrite-1m-fdatasync')} |")
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
