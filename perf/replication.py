#!/usr/bin/env python3
"""Replication cost: the same acks=all workload on a replication-factor-1 topic and on a
replication-factor-3 topic of one 3-broker cluster on this machine, with the disk limits
measured in the same run.

    perf/replication.py [--quick] [--dir DIR] [--bin-dir DIR] [--out perf/results]

One run, in order:
 1. fio on the data disk (O_DIRECT write bandwidth, fdatasync latency), as perf/run.py does.
 2. Release binaries (`cargo build --release`, unless --bin-dir).
 3. A 3-broker cluster on 127.0.0.1 started with deploy/cluster.sh, every broker on CPU 0
    (`taskset`), ringlog-loadgen on CPU 1: the 2-core split of perf/run.py, with three brokers
    sharing the broker core.
 4. For RF=1 and RF=3 (1 KiB messages, 12 partitions, 2 producers, 2 consumers, acks=all): a
    closed-loop run at rate=max (the ceiling), then a constant 50% of the RF=3 ceiling on both
    (the latency comparison at the same offered load).
 5. perf/results/<UTC time>-<rev>-replication.json and .md: rates as ratios RF=3/RF=1 and to
    fio's bandwidth, latencies as multiples of fio's p99 fdatasync.

Every command is bounded in time; the cluster is stopped at the end.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import run as perf  # noqa: E402  (perf/run.py: fio, loadgen and build helpers)

ROOT = perf.ROOT


def write_workload(path: Path, rf: int, duration: int, warmup: int) -> None:
    path.write_text(
        f'name = "replication-rf{rf}"\n'
        "partitions = 12\nproducers = 2\nconsumers = 2\nmessage_size = 1024\n"
        "batch_size_bytes = 131072\nlinger_ms = 1\n"
        f'acks = "all"\nmax_in_flight = 5\nreplication_factor = {rf}\n'
        f"rate = 10000\nwarmup_s = {warmup}\nduration_s = {duration}\n"
    )


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--dir", default="/tmp/ringlog-perf-repl")
    ap.add_argument("--bin-dir")
    ap.add_argument("--out", default=str(ROOT / "perf" / "results"))
    ap.add_argument("--quick", action="store_true", help="8 s runs, 2 s warm-up")
    ap.add_argument("--fio-size", default="1G")
    args = ap.parse_args()

    work = Path(args.dir)
    work.mkdir(parents=True, exist_ok=True)
    if perf.fs_type(work) in ("tmpfs", "ramfs"):
        raise SystemExit(f"{work} is {perf.fs_type(work)}: O_DIRECT needs a disk file system")
    stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    rev = perf.git_rev()
    out_dir = Path(args.out) / f"{stamp}-{rev}-replication"
    out_dir.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix="repl-", dir=work))

    perf.log("measuring the disk")
    limits = perf.measure_disk(work, args.fio_size)
    if args.bin_dir:
        bins = Path(args.bin_dir)
    else:
        perf.log("building release binaries")
        perf.run(["cargo", "build", "--release", "--bin", "ringlog", "--bin", "ringlog-loadgen"],
                 1800, check=True, cwd=ROOT)
        bins = ROOT / "target" / "release"

    kafka = [perf.free_port() for _ in range(3)]
    rpc = [perf.free_port() for _ in range(3)]
    cluster_dir = tmp / "cluster"
    env = dict(os.environ, RINGLOG_BIN=str(bins / "ringlog"),
               KAFKA_PORTS=",".join(map(str, kafka)), RPC_PORTS=",".join(map(str, rpc)))
    script = ROOT / "deploy" / "cluster.sh"
    perf.log("starting a 3-broker cluster on CPU 0")
    perf.run(["taskset", "-c", "0", str(script), "start", str(cluster_dir)], 120, check=True,
             env=env)
    bootstrap = ",".join(f"127.0.0.1:{p}" for p in kafka)
    duration, warmup = (8, 2) if args.quick else (20, 5)
    runs = []
    try:
        wl = {}
        for rf in (1, 3):
            wl[rf] = tmp / f"rf{rf}.toml"
            write_workload(wl[rf], rf, duration, warmup)
        ceiling = {}
        for rf in (1, 3):
            r = perf.loadgen(bins, bootstrap, wl[rf], out_dir, tmp, f"rf{rf}-max", "1", "max",
                             duration, warmup, f"ringlog-cluster-rf{rf}")
            r["rf"] = rf
            runs.append(r)
            ceiling[rf] = r.get("achievedRate", 0)
        half = max(int(ceiling[3] * 0.5), 100)
        for rf in (1, 3):
            r = perf.loadgen(bins, bootstrap, wl[rf], out_dir, tmp, f"rf{rf}-at-{half}",
                             "1", str(half), duration, warmup, f"ringlog-cluster-rf{rf}")
            r["rf"] = rf
            runs.append(r)
    finally:
        subprocess.run([str(script), "stop", str(cluster_dir)], env=env, timeout=120)
        # The brokers' logs are tens of GB after the max runs; keep only the results.
        shutil.rmtree(tmp, ignore_errors=True)

    fio_mbps = limits["fioWriteMBps"]
    sync_p99 = limits["fdatasyncP99Ms"]
    for r in runs:
        if "achievedMBps" in r:
            r["bandwidthRatio"] = r["achievedMBps"] / fio_mbps
            r["p99OverFsyncP99"] = r["p99Ms"] / sync_p99
    by = {(r["rf"], r["name"].split("-", 1)[1]): r for r in runs if "achievedRate" in r}
    ratio = {
        "maxRateRf3OverRf1": by[(3, "max")]["achievedRate"] / max(by[(1, "max")]["achievedRate"], 1),
        "p99Rf3OverRf1AtSameRate": by[(3, f"at-{half}")]["p99Ms"] / max(by[(1, f"at-{half}")]["p99Ms"], 1e-9),
    }
    doc = {"time": stamp, "rev": rev, "machine": perf.machine(), "limits": limits,
           "split": "3 brokers on CPU 0 (taskset), loadgen on CPU 1", "runs": runs,
           "ratios": ratio}
    base = Path(args.out) / f"{stamp}-{rev}-replication"
    base.with_suffix(".json").write_text(json.dumps(doc, indent=2))
    lines = [
        f"# Replication cost, {stamp}, rev {rev}",
        "",
        f"3-broker cluster on 127.0.0.1, all three brokers on CPU 0, loadgen on CPU 1; 1 KiB "
        f"messages, 12 partitions, acks=all, fsync before ack on every replica. fio: "
        f"{fio_mbps:.0f} MB/s O_DIRECT write, p99 fdatasync {sync_p99:.2f} ms.",
        "",
        "| run | msgs/s | MB/s | /fio bw | p50 ms | p99 ms | p99 / fio p99 sync | p99.99 ms | errors |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in runs:
        if "achievedRate" not in r:
            lines.append(f"| {r['name']} | failed: {r.get('failed', '')[:80]} |")
            continue
        lines.append(
            f"| {r['name']} | {r['achievedRate']:.0f} | {r['achievedMBps']:.1f} | "
            f"{r['bandwidthRatio']:.3f} | {r['p50Ms']:.2f} | {r['p99Ms']:.2f} | "
            f"{r['p99OverFsyncP99']:.1f} | {r['p9999Ms']:.2f} | {r['errors']} |"
        )
    lines += ["", f"RF=3 / RF=1 ceiling: {ratio['maxRateRf3OverRf1']:.2f}; RF=3 / RF=1 p99 at "
              f"{half} msg/s: {ratio['p99Rf3OverRf1AtSameRate']:.2f}", ""]
    base.with_suffix(".md").write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
