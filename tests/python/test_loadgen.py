"""ringlog-loadgen end to end against the real broker: a tiny constant-rate workload with
consumers, its JSON result (OpenMessaging field names), HdrHistogram log and HTML report, the
messages really in the log (read back with confluent-kafka), and its exit codes for an
unreachable broker, a missing topic, bad flags and a rate it cannot sustain.

Performance is not judged here (that is perf/, not tests): only that the numbers are
consistent with what happened.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from conftest import REPO_ROOT, free_port

LOADGEN = Path(os.environ.get("LOADGEN_BIN", REPO_ROOT / "target" / "debug" / "ringlog-loadgen"))
RUN_TIMEOUT_S = 120

pytestmark = pytest.mark.skipif(
    not LOADGEN.exists(), reason=f"{LOADGEN} missing (cargo build -p ringlog-loadgen)"
)


def loadgen(*args, timeout: float = RUN_TIMEOUT_S) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(LOADGEN), *map(str, args)],
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def test_tiny_workload_end_to_end(broker, tmp_path):
    b = broker()
    out = tmp_path / "result.json"
    html = tmp_path / "report.html"
    hlog = tmp_path / "latency.hlog"
    r = loadgen(
        "produce", "--bootstrap", b.bootstrap, "--topic", "lg-tiny", "--partitions", 3,
        "--producers", 2, "--consumers", 2, "--rate", 200, "--duration", 3, "--warmup", 1,
        "--message-size", "uniform:100-300", "--key-count", 50, "--cores", 1,
        "--json", out, "--html", html, "--hdr-log", hlog, "--broker-label", "ringlog-test",
    )
    assert r.returncode == 0, f"exit {r.returncode}\nstdout:\n{r.stdout}\nstderr:\n{r.stderr}"
    assert "sustained" in r.stdout, r.stdout
    # A live line per second.
    assert r.stderr.count("pub ") >= 3, r.stderr
    res = json.loads(out.read_text())
    # OpenMessaging Benchmark's names.
    for key in [
        "workload", "driver", "messageSize", "topics", "partitions", "producersPerTopic",
        "consumersPerTopic", "publishRate", "consumeRate", "backlog", "publishLatency99pct",
        "aggregatedPublishLatency50pct", "aggregatedPublishLatency99pct",
        "aggregatedPublishLatency999pct", "aggregatedPublishLatency9999pct",
        "aggregatedPublishLatencyMax", "aggregatedPublishLatencyQuantiles",
        "aggregatedEndToEndLatency50pct", "aggregatedEndToEndLatency99pct",
        "aggregatedEndToEndLatency9999pct", "aggregatedEndToEndLatencyMax",
    ]:
        assert key in res, key
    assert res["partitions"] == 3 and res["producersPerTopic"] == 2
    assert res["consumersPerTopic"] == 2 and res["messageSize"] == 200
    rl = res["ringlog"]
    assert rl["broker"] == "ringlog-test"
    assert rl["hardware"]["onlineCpus"] >= 1
    assert rl["mode"] == "constant" and rl["targetRate"] == 200
    assert rl["sustained"] is True
    # 200 msg/s over the 3 measured seconds, every one acked and consumed; none failed.
    assert rl["messagesIntended"] == 600, rl
    assert rl["messagesAcked"] == 600, rl
    assert rl["messagesConsumed"] == 600, rl
    assert rl["errors"] == 0
    assert rl["runAcked"] == rl["runConsumed"] == 800, rl
    assert len(res["publishRate"]) == 3
    assert sum(res["publishRate"]) > 0
    lat = [res[f"aggregatedPublishLatency{s}"] for s in ("50pct", "75pct", "95pct", "99pct", "999pct", "9999pct", "Max")]
    assert all(x > 0 for x in lat) and lat == sorted(lat), lat
    assert rl["publishLatency"]["count"] == 600
    assert rl["endToEndLatency"]["count"] == 600
    e2e = [res[f"aggregatedEndToEndLatency{s}"] for s in ("50pct", "99pct", "Max")]
    assert all(x > 0 for x in e2e) and e2e == sorted(e2e), e2e
    assert len(rl["timeSeries"]) >= 4 and rl["timeSeries"][0]["warmup"] is True
    # The load CPUs' busy fractions over the window, and the load generator's own CPU use.
    cpus = rl["loadCpus"]
    assert len(cpus) == 1 and 0.0 <= cpus[0]["busyFraction"] <= 1.0, cpus
    assert 0.0 < rl["loadgenProcessCores"] < 2.0, rl["loadgenProcessCores"]
    assert rl["loadCpuSaturated"] == (cpus[0]["busyFraction"] > rl["loadCpuBusyWarnFraction"])
    assert "load CPUs over the window: CPU " in r.stdout, r.stdout
    # The report and the log.
    page = html.read_text()
    assert page.count("<svg") == 3 and "polyline" in page
    log_lines = hlog.read_text().splitlines()
    assert any(l.startswith("#[StartTime:") for l in log_lines)
    assert sum("publish" in l for l in log_lines if not l.startswith("#")) >= 4

    # The log holds exactly what loadgen says it produced, every value stamped.
    from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition

    c = Consumer(b.client_config({"group.id": "lg-check", "enable.auto.commit": False}))
    try:
        c.assign([TopicPartition("lg-tiny", p, OFFSET_BEGINNING) for p in range(3)])
        got = 0
        idle = 0
        while idle < 10 and got < 800:
            msgs = c.consume(500, timeout=1)
            if not msgs:
                idle += 1
                continue
            for m in msgs:
                assert m.error() is None, m.error()
                assert m.value()[:4] == b"RLG1" and 100 <= len(m.value()) <= 300
                assert m.key().startswith(b"key-")
                got += 1
        assert got == 800
    finally:
        c.close()


def test_max_rate_mode(broker, tmp_path):
    b = broker()
    out = tmp_path / "max.json"
    r = loadgen(
        "produce", "--bootstrap", b.bootstrap, "--topic", "lg-max", "--partitions", 2,
        "--rate", "max", "--duration", 2, "--message-size", 512, "--batch-size", 16384,
        "--json", out, "--quiet",
    )
    assert r.returncode == 0, r.stdout + r.stderr
    rl = json.loads(out.read_text())["ringlog"]
    assert rl["mode"] == "max" and rl["sustained"] is None
    assert rl["achievedPublishRate"] > 0 and rl["errors"] == 0


def test_workload_file_and_compare(broker, tmp_path):
    b = broker()
    wl = tmp_path / "w.toml"
    wl.write_text(
        'name = "file-test"\ntopic = "lg-file"\npartitions = 2\nproducers = 1\n'
        'message_size = 256\nrate = 100\nduration_s = 2\nacks = "1"\ncompression = "lz4"\n'
    )
    a, bb = tmp_path / "a.json", tmp_path / "b.json"
    for out in (a, bb):
        r = loadgen("run", "--workload", wl, "--bootstrap", b.bootstrap, "--json", out, "--quiet")
        assert r.returncode == 0, r.stdout + r.stderr
    res = json.loads(a.read_text())
    assert res["workload"] == "file-test"
    assert res["ringlog"]["parameters"]["compression"] == "lz4"
    assert res["ringlog"]["messagesAcked"] == 200
    r = loadgen("compare", a, bb, "--threshold", "100")
    assert r.returncode == 0 and "B/A" in r.stdout, r.stdout + r.stderr
    # A fabricated regression is caught.
    worse = json.loads(bb.read_text())
    worse["ringlog"]["achievedPublishRate"] /= 3
    bb.write_text(json.dumps(worse))
    r = loadgen("compare", a, bb, "--threshold", "0.5")
    assert r.returncode == 1 and "REGRESSION" in r.stdout, r.stdout


def test_unreachable_broker_exit_code():
    port = free_port()
    r = loadgen("produce", "--bootstrap", f"127.0.0.1:{port}", "--duration", 1, timeout=60)
    assert r.returncode == 3, r.stdout + r.stderr
    assert "unreachable" in r.stderr


def test_missing_topic_exit_code(broker):
    b = broker()
    r = loadgen(
        "produce", "--bootstrap", b.bootstrap, "--topic", "lg-nope", "--no-create-topic",
        "--duration", 1,
    )
    assert r.returncode == 4, r.stdout + r.stderr
    assert "lg-nope" in r.stderr and "does not exist" in r.stderr


def test_partition_mismatch_exit_code(broker):
    b = broker()
    b.create_topic("lg-shape", partitions=2)
    r = loadgen(
        "produce", "--bootstrap", b.bootstrap, "--topic", "lg-shape", "--partitions", 3,
        "--duration", 1,
    )
    assert r.returncode == 4, r.stdout + r.stderr
    assert "has 2 partitions" in r.stderr


@pytest.mark.parametrize(
    "args",
    [
        ["--rate", "fast"],
        ["--acks", "2"],
        ["--message-size", "uniform:9-1"],
        ["--max-in-flight", "0"],
        ["--compression", "brotli"],
        ["--consumers", "1", "--message-size", "4"],
    ],
)
def test_bad_flags_exit_code(args):
    r = loadgen("produce", "--bootstrap", "127.0.0.1:1", "--duration", 1, *args, timeout=30)
    assert r.returncode == 2, r.stdout + r.stderr
    assert "invalid workload" in r.stderr


def test_unsustainable_rate_is_reported(broker, tmp_path):
    """Ten million messages a second is beyond any broker here: loadgen must say the target
    was not kept (exit 6) rather than report a lower rate as if it were the target."""
    b = broker()
    out = tmp_path / "over.json"
    r = loadgen(
        "produce", "--bootstrap", b.bootstrap, "--topic", "lg-over", "--rate", 10_000_000,
        "--duration", 2, "--message-size", 100, "--json", out, "--quiet",
    )
    assert r.returncode == 6, r.stdout + r.stderr
    assert "not sustained" in r.stderr.lower()
    rl = json.loads(out.read_text())["ringlog"]
    assert rl["sustained"] is False and rl["notSustainedBecause"]
