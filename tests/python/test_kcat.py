"""kcat (Debian's kcat 1.7.1 on librdkafka 2.0.2) against the broker: produce and consume with
keys and headers, consume from explicit and relative offsets, and metadata listings.

Every kcat run is bounded by a timeout. KCAT_EXTRA_ARGS (shlex-split) is appended to every kcat
command; it exists only to validate these tests against other brokers and is empty normally.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess

import pytest

KCAT = shutil.which("kcat") or shutil.which("kafkacat")
pytestmark = pytest.mark.skipif(KCAT is None, reason="kcat not installed (apt-get install kcat)")

KCAT_TIMEOUT_S = 60

# One consumed message per line. Fields are separated by a byte that never occurs in the data.
SEP = "\x1f"
CONSUME_FORMAT = SEP.join(["%p", "%o", "%k", "%s", "%h", "%K", "%S"]) + "\\n"


def kcat(b, *args, stdin: bytes | None = None, timeout: float = KCAT_TIMEOUT_S):
    cmd = [KCAT, "-b", b.bootstrap, *args, *shlex.split(os.environ.get("KCAT_EXTRA_ARGS", ""))]
    try:
        res = subprocess.run(cmd, input=stdin, capture_output=True, timeout=timeout)
    except subprocess.TimeoutExpired as e:
        raise AssertionError(
            f"kcat timed out after {timeout} s: {shlex.join(cmd)}\n"
            f"stderr: {(e.stderr or b'').decode(errors='replace')[-3000:]}"
        ) from None
    out, err = res.stdout.decode(errors="replace"), res.stderr.decode(errors="replace")
    assert res.returncode == 0, f"{shlex.join(cmd)} exited {res.returncode}\nstderr:\n{err[-3000:]}"
    return out, err


def produce(b, topic, lines, *extra):
    """kcat -P: one message per input line, key and value split at the first ':'."""
    data = "".join(f"{line}\n" for line in lines).encode()
    _, err = kcat(b, "-P", "-t", topic, "-K:", "-X", "acks=all", *extra, stdin=data)
    assert "ERROR" not in err and "Failed" not in err, err


def consume(b, topic, *extra):
    """kcat -C -e: everything from the given offset (default beginning) to the end, parsed as
    (partition, offset, key, value, headers, key_len, value_len) tuples."""
    out, _ = kcat(b, "-C", "-t", topic, "-e", "-f", CONSUME_FORMAT, *extra)
    rows = []
    for line in out.split("\n"):
        if not line:
            continue
        p, o, k, v, h, klen, vlen = line.split(SEP)
        rows.append((int(p), int(o), k, v, h, int(klen), int(vlen)))
    return rows


def test_produce_consume_keys_headers(broker):
    b = broker(cores=1)
    topic = "kcat-keys"  # auto-created by the producer's Metadata request

    # 100 messages with two headers on every message, then 20 with one other header, then
    # three edge cases: an empty key, a value containing the key delimiter, an empty value.
    produce(
        b,
        topic,
        [f"key-{i}:value {i} " + "x" * (i % 17) for i in range(100)],
        "-H",
        "source=kcat",
        "-H",
        "batch=first",
    )
    produce(b, topic, [f"second-{i}:v2-{i}" for i in range(20)], "-H", "batch=second")
    produce(b, topic, [":empty key", "colon:a:b:c", "emptyvalue:"], "-H", "batch=edge")

    rows = consume(b, topic, "-o", "beginning")
    expected = []
    for i in range(100):
        v = f"value {i} " + "x" * (i % 17)
        expected.append((f"key-{i}", v, "source=kcat,batch=first"))
    for i in range(20):
        expected.append((f"second-{i}", f"v2-{i}", "batch=second"))
    expected += [
        ("", "empty key", "batch=edge"),
        ("colon", "a:b:c", "batch=edge"),
        ("emptyvalue", "", "batch=edge"),
    ]

    assert len(rows) == len(expected), rows[-5:]
    assert [r[0] for r in rows] == [0] * len(expected), "auto-created topic has 1 partition"
    assert [r[1] for r in rows] == list(range(len(expected))), "dense offsets from 0, in order"
    assert [(r[2], r[3], r[4]) for r in rows] == expected
    for _, _, k, v, _, klen, vlen in rows:
        assert (klen, vlen) == (len(k.encode()), len(v.encode()))

    # From an absolute offset, and relative to the end (ListOffsets latest).
    mid = consume(b, topic, "-o", "50")
    assert [r[1] for r in mid] == list(range(50, len(expected)))
    assert [(r[2], r[3], r[4]) for r in mid] == expected[50:]
    last = consume(b, topic, "-o", "-5")
    assert [r[1] for r in last] == list(range(len(expected) - 5, len(expected)))
    assert [(r[2], r[3], r[4]) for r in last] == expected[-5:]

    # The JSON envelope carries the same key, payload, headers and offsets.
    out, _ = kcat(b, "-C", "-t", topic, "-e", "-J", "-o", "beginning", "-c", "3")
    env = [json.loads(line) for line in out.splitlines() if line.strip()]
    assert [(e["offset"], e["key"], e["payload"]) for e in env] == [
        (i, f"key-{i}", f"value {i} " + "x" * (i % 17)) for i in range(3)
    ]
    assert env[0]["headers"] == ["source", "kcat", "batch", "first"]
    assert all(e["ts"] > 0 for e in env), env


def test_metadata_listing(broker):
    b = broker(cores=2)
    b.create_topic("kcat-three", partitions=3)
    produce(b, "kcat-auto", ["k:v"])  # auto-created with the default partition count

    out, _ = kcat(b, "-L")
    m = re.search(rf"broker (-?\d+) at 127\.0\.0\.1:{b.port}\b", out)
    assert m, out
    broker_id = int(m.group(1))
    assert re.search(r"^\s*1 brokers:", out, re.M), out
    assert 'topic "kcat-three" with 3 partitions:' in out, out
    assert 'topic "kcat-auto" with 1 partitions:' in out, out
    for p in range(3):
        assert re.search(
            rf"partition {p}, leader {broker_id}, replicas: {broker_id}, "
            rf"isrs: {broker_id}\b",
            out,
        ), out

    # One topic, as JSON.
    out, _ = kcat(b, "-L", "-J", "-t", "kcat-three")
    md = json.loads(out)
    assert [(x["id"], x["name"]) for x in md["brokers"]] == [(broker_id, b.bootstrap)], md
    topics = {t["topic"]: t for t in md["topics"]}
    t = topics["kcat-three"]
    assert "error" not in t or not t["error"], t
    assert sorted(p["partition"] for p in t["partitions"]) == [0, 1, 2], t
    for p in t["partitions"]:
        assert p["leader"] == broker_id, p
        assert [r["id"] for r in p["replicas"]] == [broker_id], p
        assert [r["id"] for r in p["isrs"]] == [broker_id], p

    # The topics are usable: kcat reads back what it wrote to the auto-created one.
    assert [(r[2], r[3]) for r in consume(b, "kcat-auto", "-o", "beginning")] == [("k", "v")]
