"""confluent-kafka (librdkafka 2.16) against the broker.

- 100,000 messages per compression codec (none, gzip, snappy, lz4, zstd), one topic each, with
  keys (some null), values (some empty, some null), headers (one with a null value) and explicit
  create-time timestamps (some going backwards): every delivery report succeeds with offsets
  0..N-1 in produce order (Kafka handles one connection's pipelined requests in order; the
  failure message says whether librdkafka retried anything, which alone could reorder);
  a Consumer on assign() from OFFSET_BEGINNING reads back exactly the same records; after a
  clean restart (SIGTERM, same data dir) it reads them again, identical.
- A topic with 8 partitions on a 2-core broker (so partitions are spread over both cores):
  keyed messages to all partitions, each read back in order; same after a restart; appends
  after the restart continue each partition's offsets.
- With --auto-create-topics false, producing to an unknown topic fails and creates nothing.

The consumers set group.id (librdkafka requires one) but never subscribe or commit.
"""

from __future__ import annotations

import json
import time
import warnings

import pytest
from confluent_kafka import (
    OFFSET_BEGINNING,
    TIMESTAMP_CREATE_TIME,
    Consumer,
    KafkaError,
    Producer,
    TopicPartition,
)

CODECS = ["none", "gzip", "snappy", "lz4", "zstd"]
N_PER_CODEC = 100_000
BASE_TS = 1_700_000_000_000  # ms; explicit create-time timestamps start here

_PAD = "abcdefghijklmnopqrstuvwxyz0123456789" * 8


def codec_record(tag: str, i: int):
    """(key, value, headers, timestamp) of message i of topic `tag`; deterministic."""
    key = None if i % 997 == 0 else f"{tag}-key-{i:06d}".encode()
    if i % 2003 == 1:
        value = None  # a tombstone-style null value
    elif i % 1013 == 2:
        value = b""
    else:
        value = f"{tag}|{i}|".encode() + _PAD[: i % 200].encode()
    headers = [("seq", str(i).encode()), ("codec", tag.encode())]
    if i % 1000 == 3:
        headers.append(("nullvalue", None))
    if i % 7 == 0:
        headers.append(("bin", bytes(range(i % 11))))
    ts = BASE_TS + i * 3
    if i % 500 == 7:
        ts -= 10_000  # an older timestamp inside a batch (negative timestampDelta)
    return key, value, headers, ts


def producer_config(b, codec: str, extra: dict | None = None) -> dict:
    conf = {
        "enable.idempotence": False,
        "acks": "all",
        "linger.ms": 5,
        "compression.type": codec,
        "message.timeout.ms": 120_000,
        "queue.buffering.max.messages": 200_000,
    }
    conf.update(extra or {})
    return b.client_config(conf)


def producer_with_stats(b, codec: str, extra: dict | None = None):
    """A Producer whose librdkafka statistics are kept, to tell client-side retries (which may
    legitimately reorder without idempotence) from broker-side reordering."""
    holder: list[str] = []
    conf = producer_config(b, codec, extra)
    conf["statistics.interval.ms"] = 500
    conf["stats_cb"] = lambda js: holder.append(js) if not holder else holder.__setitem__(0, js)
    return Producer(conf), holder


def client_retries(producer: Producer, holder: list[str]) -> dict:
    """Retries, transmit errors and request timeouts librdkafka counted, summed over brokers."""
    holder.clear()
    deadline = time.monotonic() + 3
    while not holder and time.monotonic() < deadline:
        producer.poll(0.1)
    if not holder:
        return {"stats": "none received"}
    brokers = json.loads(holder[0]).get("brokers", {}).values()
    return {k: sum(br.get(k, 0) for br in brokers) for k in ("txretries", "txerrs", "req_timeouts")}


def produce_records(producer: Producer, topic: str, records, partition=None, timeout=150):
    """Produce (key, value, headers, ts) records in order; returns per record the
    (partition, offset) of its delivery report. Every report must be a success."""
    reports = [None] * len(records)
    errors = []

    def on_delivery(i, err, msg):
        if err is not None:
            errors.append((i, err))
        else:
            reports[i] = (msg.partition(), msg.offset())

    kwargs = {} if partition is None else {"partition": partition}
    for i, (key, value, headers, ts) in enumerate(records):
        while True:
            try:
                producer.produce(
                    topic,
                    key=key,
                    value=value,
                    headers=headers,
                    timestamp=ts,
                    on_delivery=lambda err, msg, i=i: on_delivery(i, err, msg),
                    **kwargs,
                )
                break
            except BufferError:
                producer.poll(0.05)
        if i % 1000 == 0:
            producer.poll(0)
    left = producer.flush(timeout)
    assert left == 0, f"{topic}: {left} messages still undelivered after {timeout} s"
    assert not errors, f"{topic}: {len(errors)} failed deliveries, first: {errors[:5]}"
    missing = [i for i, r in enumerate(reports) if r is None]
    assert not missing, f"{topic}: no delivery report for {len(missing)} messages: {missing[:5]}"
    return reports


def consume_partitions(b, topic: str, counts: dict[int, int], timeout: float = 120):
    """Read partitions {partition: expected_count} from the beginning with assign(); returns
    {partition: [(offset, key, value, headers, timestamp)]}. Stops once every partition hit
    end-of-partition with at least its count, 5 s after the last EOF with no new data, or
    after 30 s without progress."""
    c = Consumer(
        b.client_config(
            {
                "group.id": f"it-read-{topic}",
                "enable.auto.commit": False,
                "enable.auto.offset.store": False,
                "enable.partition.eof": True,
                "auto.offset.reset": "error",
            }
        )
    )
    got: dict[int, list] = {p: [] for p in counts}
    eof: set[int] = set()
    soft_errors = []
    last_progress = time.monotonic()
    deadline = time.monotonic() + timeout
    try:
        c.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in counts])
        while time.monotonic() < deadline:
            msgs = c.consume(num_messages=10_000, timeout=0.5)
            for m in msgs:
                err = m.error()
                if err is not None:
                    if err.code() == KafkaError._PARTITION_EOF:
                        eof.add(m.partition())
                        continue
                    if err.fatal():
                        raise AssertionError(f"fatal consumer error: {err}")
                    soft_errors.append(str(err))
                    continue
                eof.discard(m.partition())
                got[m.partition()].append(
                    (m.offset(), m.key(), m.value(), m.headers(), m.timestamp())
                )
                last_progress = time.monotonic()
            done = all(len(got[p]) >= n for p, n in counts.items())
            if done and eof >= set(counts):
                break
            idle = time.monotonic() - last_progress
            if (eof >= set(counts) and idle > 5) or idle > 30:
                break
    finally:
        c.close()
    short = {p: (len(got[p]), n) for p, n in counts.items() if len(got[p]) < n}
    assert not short, (
        f"{topic}: partitions read short {{partition: (got, expected)}}: {short}; "
        f"consumer errors: {soft_errors[:10]}"
    )
    if soft_errors:
        warnings.warn(f"{topic}: non-fatal consumer errors: {soft_errors[:5]}", stacklevel=2)
    return got


def assert_records(topic, partition, got, expected):
    """got: [(offset, key, value, headers, (ts_type, ts))]; expected: [(key, value, headers,
    ts)] whose offsets are 0..len-1."""
    exp = [
        (o, k, v, h or None, (TIMESTAMP_CREATE_TIME, ts))
        for o, (k, v, h, ts) in enumerate(expected)
    ]
    if got == exp:
        return
    for idx, (g, e) in enumerate(zip(got, exp, strict=False)):
        if g != e:
            raise AssertionError(
                f"{topic}[{partition}] record #{idx} differs:\n  got      {g!r}\n  expected {e!r}"
            )
    raise AssertionError(
        f"{topic}[{partition}]: got {len(got)} records, expected {len(exp)}; last got: {got[-1:]!r}"
    )


def test_codecs_roundtrip_and_restart(broker):
    b = broker(cores=2)
    expected = {}
    for codec in CODECS:
        topic = f"codec-{codec}"
        b.create_topic(topic, partitions=1)
        records = [codec_record(codec, i) for i in range(N_PER_CODEC)]
        p, stats = producer_with_stats(b, codec)
        t0 = time.monotonic()
        reports = produce_records(p, topic, records)
        elapsed = time.monotonic() - t0
        if reports != [(0, i) for i in range(N_PER_CODEC)]:
            i, r = next((i, r) for i, r in enumerate(reports) if r != (0, i))
            raise AssertionError(
                f"{topic}: delivery offsets are not 0..N-1 in produce order: message {i} got "
                f"{r}; client-side {client_retries(p, stats)} (no retries: the broker "
                f"appended pipelined produce requests out of order)"
            )
        print(f"{topic}: produced {N_PER_CODEC} in {elapsed:.1f} s")
        expected[topic] = records

    def read_all(when):
        for topic, records in expected.items():
            got = consume_partitions(b, topic, {0: len(records)})
            assert_records(f"{topic} ({when})", 0, got[0], records)

    read_all("before restart")
    c = Consumer(b.client_config({"group.id": "it-wm"}))
    try:
        for topic in expected:
            assert c.get_watermark_offsets(TopicPartition(topic, 0), timeout=10) == (
                0,
                N_PER_CODEC,
            ), topic
    finally:
        c.close()

    b.restart()
    read_all("after restart")
    b.assert_running()


def test_eight_partitions_two_cores(broker):
    b = broker(cores=2)
    topic = "parts8"
    b.create_topic(topic, partitions=8)
    n = 40_000
    records = []
    for i in range(n):
        key = f"user-{i % 199}".encode()
        records.append((key, f"value-{i}".encode(), [("i", str(i).encode())], BASE_TS + i))
    p, stats = producer_with_stats(b, "lz4")
    reports = produce_records(p, topic, records)

    per_partition: dict[int, list] = {q: [] for q in range(8)}
    key_partition = {}
    for rec, (part, off) in zip(records, reports, strict=True):
        per_partition[part].append((off, rec))
        assert key_partition.setdefault(rec[0], part) == part, f"key {rec[0]} in two partitions"
    assert all(per_partition[q] for q in range(8)), {q: len(v) for q, v in per_partition.items()}
    expected = {}
    for q, items in per_partition.items():
        offsets = [o for o, _ in items]
        assert offsets == list(range(len(items))), (
            f"partition {q}: delivery offsets not dense/in produce order; "
            f"client-side {client_retries(p, stats)}"
        )
        expected[q] = [rec for _, rec in items]

    def read_all(when):
        got = consume_partitions(b, topic, {q: len(v) for q, v in expected.items()})
        for q in range(8):
            assert_records(f"{topic} ({when})", q, got[q], expected[q])

    read_all("before restart")
    b.restart()
    read_all("after restart")

    # Appends after the restart continue every partition's offsets.
    more = {
        q: [(b"after", f"after-{q}".encode(), [("q", str(q).encode())], BASE_TS + n + q)]
        for q in range(8)
    }
    p = Producer(producer_config(b, "none"))
    for q in range(8):
        rep = produce_records(p, topic, more[q], partition=q)
        assert rep == [(q, len(expected[q]))], (q, rep)
        expected[q] += more[q]
    read_all("after restart and append")


@pytest.mark.ringlog_flags
def test_auto_create_disabled(broker):
    b = broker(cores=1, extra_args=["--auto-create-topics", "false"])
    p = Producer(
        producer_config(
            b, "none", {"message.timeout.ms": 5000, "topic.metadata.propagation.max.ms": 2000}
        )
    )
    errors = []
    p.produce("never-created", value=b"x", on_delivery=lambda err, msg: errors.append(err))
    assert p.flush(30) == 0
    assert len(errors) == 1 and errors[0] is not None, errors
    assert errors[0].code() in (
        KafkaError.UNKNOWN_TOPIC_OR_PART,
        KafkaError._UNKNOWN_TOPIC,
        KafkaError._MSG_TIMED_OUT,
    ), errors[0]

    admin = b.admin()
    md = admin.list_topics(topic="never-created", timeout=10)
    t = md.topics.get("never-created")
    assert t is not None and t.error is not None, t
    assert t.error.code() == KafkaError.UNKNOWN_TOPIC_OR_PART, t.error
    assert "never-created" not in admin.list_topics(timeout=10).topics

    # Explicit creation still works, and so does producing to the created topic.
    b.assert_serves_clients()
