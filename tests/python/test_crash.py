"""kill -9 while producing: no acknowledged write is lost.

A confluent-kafka producer (acks=all, idempotence off, one request in flight so retries cannot
reorder) writes numbered messages to a 2-partition topic on a 2-core broker. Several times, at
a random moment, the broker is killed with SIGKILL while the producer keeps going; after a
moment it is started again on the same data dir and port, and the producer's queued and
retried messages go through. Then everything is read back and:

- each partition's offsets are dense from 0 to the high watermark;
- every acknowledged message is present, and at the very offset its delivery report gave;
- acknowledged messages the client sent exactly once (librdkafka's retry counter did not move
  between their production and their acknowledgement) are stored exactly once; others may be
  duplicated (an unacknowledged attempt that did reach the disk, then its retry): duplicates
  are reported, and so are client retries while the broker was up;
- first occurrences are in produce order within each partition;
- nothing appears that was never produced.

CRASH_SEED fixes the random moments (the seed is printed); CRASH_ROUNDS sets the number of
kills (default 3).
"""

from __future__ import annotations

import json
import os
import random
import time
import warnings

import pytest
from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, Producer, TopicPartition

PARTITIONS = 2


def read_partitions(b, topic: str, highs: dict[int, int], timeout: float = 120):
    """{partition: [(offset, value)]} for offsets [0, high)."""
    c = Consumer(
        b.client_config(
            {
                "group.id": f"it-crash-read-{topic}",
                "enable.auto.commit": False,
                "enable.partition.eof": True,
            }
        )
    )
    got: dict[int, list] = {p: [] for p in highs}
    deadline = time.monotonic() + timeout
    errors = []
    try:
        c.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in highs])
        while time.monotonic() < deadline:
            if all((got[p][-1][0] if got[p] else -1) >= highs[p] - 1 for p in highs):
                break
            for m in c.consume(num_messages=10_000, timeout=0.5):
                if m.error():
                    if m.error().code() != KafkaError._PARTITION_EOF:
                        errors.append(str(m.error()))
                    continue
                got[m.partition()].append((m.offset(), m.value()))
    finally:
        c.close()
    for p, high in highs.items():
        got[p] = [(o, v) for o, v in got[p] if o < high]
        last = got[p][-1][0] if got[p] else -1
        assert last >= high - 1, (
            f"partition {p}: read up to {last}, high watermark {high}; errors: {errors[:5]}"
        )
    return got


def verify_log(got, highs, n, acked, sent_once):
    """The checks of the crash test on what was read back.

    got: {partition: [(offset, value bytes)]}; highs: {partition: high watermark}; n: messages
    produced (values are 0..n-1, message i went to partition i % PARTITIONS); acked:
    {i: (partition, offset)} from successful delivery reports; sent_once: acknowledged message
    numbers the client never retried (sent exactly once). Returns ({value: count} of duplicated
    messages, sorted unacknowledged message numbers that are absent)."""
    duplicates = {}
    present = set()
    for q in sorted(got):
        log = got[q]
        assert [o for o, _ in log] == list(range(highs[q])), (
            f"partition {q}: offsets not dense from 0 to the high watermark {highs[q]}"
        )
        values = [int(v) for _, v in log]
        strangers = [v for v in values if not (0 <= v < n and v % PARTITIONS == q)]
        assert not strangers, f"partition {q}: values never produced here: {strangers[:10]}"
        seen, first = {}, []
        for v in values:
            seen[v] = seen.get(v, 0) + 1
            if seen[v] == 1:
                first.append(v)
        bad = next((j for j in range(1, len(first)) if first[j] <= first[j - 1]), None)
        assert bad is None, (
            f"partition {q}: out of produce order at first occurrence #{bad}: "
            f"{first[max(0, bad - 3) : bad + 3]}"
        )
        duplicates.update({v: c for v, c in seen.items() if c > 1})
        present.update(seen)

    for i, (q, off) in sorted(acked.items()):
        assert off < len(got[q]), (
            f"acknowledged message {i} at {q}/{off} is missing: the log ends at {len(got[q])}"
        )
        assert int(got[q][off][1]) == i, (
            f"acknowledged message {i} at {q}/{off}: that offset holds {got[q][off][1]!r}"
        )
    dup_sent_once = sorted(v for v in duplicates if v in sent_once)
    assert not dup_sent_once, (
        f"messages the client sent once (acknowledged, never retried) are stored more than "
        f"once: {dup_sent_once[:20]}"
    )
    absent_unacked = sorted(set(range(n)) - set(acked) - present)
    return duplicates, absent_unacked


@pytest.mark.persistence
@pytest.mark.parametrize("codec", ["none", "lz4"])
def test_kill9_loses_no_acknowledged_write(broker, codec):
    seed = int(os.environ.get("CRASH_SEED", random.randrange(1 << 30)))
    rounds = int(os.environ.get("CRASH_ROUNDS", "3"))
    rng = random.Random(seed)
    print(f"CRASH_SEED={seed} CRASH_ROUNDS={rounds} codec={codec}")

    b = broker(cores=2)
    topic = f"crash-{codec}"
    b.create_topic(topic, partitions=PARTITIONS)

    acked: dict[int, tuple[int, int]] = {}  # message number -> (partition, offset)
    failed: dict[int, str] = {}
    # Messages acknowledged while the client had retried nothing since they were produced:
    # sent exactly once, so they must be stored exactly once.
    sent_once: set[int] = set()
    stats: list[dict] = []

    def on_delivery(i, err, msg):
        if err is None:
            acked[i] = (msg.partition(), msg.offset())
        else:
            failed[i] = str(err)

    p = Producer(
        b.client_config(
            {
                "enable.idempotence": False,
                "acks": "all",
                "linger.ms": 2,
                "compression.type": codec,
                # One request in flight per connection: a retried batch cannot overtake
                # another, so produce order is log order (except duplicates).
                "max.in.flight.requests.per.connection": 1,
                "message.timeout.ms": 60_000,
                "request.timeout.ms": 10_000,
                "retry.backoff.ms": 50,
                "retry.backoff.max.ms": 200,
                "reconnect.backoff.ms": 50,
                "reconnect.backoff.max.ms": 200,
                # librdkafka's counters tell whether any request was retried (txretries).
                "statistics.interval.ms": 100,
                "stats_cb": lambda js: stats.append(json.loads(js)),
            }
        )
    )

    n = 0

    def produce_for(seconds: float = 0.0, fresh_stats: bool = False):
        """Keep producing for `seconds`, and (fresh_stats) until two statistics reports came
        after the call started, so the last one was made after it started. Returns it."""
        nonlocal n
        stats.clear()
        end = time.monotonic() + seconds
        while time.monotonic() < end or (fresh_stats and len(stats) < 2):
            for _ in range(50):
                i = n
                try:
                    p.produce(
                        topic,
                        value=f"{i:09d}".encode(),
                        partition=i % PARTITIONS,
                        on_delivery=lambda err, msg, i=i: on_delivery(i, err, msg),
                    )
                except BufferError:
                    break
                n += 1
            p.poll(0.005)
        return stats[-1] if stats else None

    def retries(st) -> int:
        return sum(br.get("txretries", 0) for br in st["brokers"].values())

    for r in range(rounds):
        # Everything from before is settled, and the retry counter is read.
        assert p.flush(90) == 0, "messages neither delivered nor failed after 90 s"
        before_acked = set(acked)
        base = retries(produce_for(fresh_stats=True))
        # Produce for a random while, then note what is acknowledged, then make sure (with a
        # statistics report made after that) whether the client retried anything meanwhile.
        produce_for(rng.uniform(0.3, 2.0))
        p.poll(0)
        acked_now = set(acked)
        now = retries(produce_for(fresh_stats=True))
        if now == base:
            sent_once |= acked_now - before_acked
        else:
            msg = f"round {r}: the client retried {now - base} requests on a running broker"
            print(msg)
            warnings.warn(msg, stacklevel=1)
        print(f"round {r}: kill -9 after {n} produced, {len(acked)} acked, {len(failed)} failed")
        b.kill9()  # the producer has batches queued and in flight
        produce_for(rng.uniform(0.1, 1.0))  # and keeps going while the broker is down
        b.start()
    produce_for(0.5)
    left = p.flush(90)
    assert left == 0, f"{left} messages neither delivered nor failed after 90 s"
    print(f"produced {n}, acked {len(acked)}, failed {len(failed)}, sent once {len(sent_once)}")
    assert len(acked) + len(failed) == n
    assert acked, "nothing was acknowledged"
    assert len(acked) > n // 2, f"most messages should survive via retries: {len(acked)}/{n}"

    c = Consumer(b.client_config({"group.id": "it-crash-wm"}))
    try:
        highs = {
            q: c.get_watermark_offsets(TopicPartition(topic, q), timeout=10)[1]
            for q in range(PARTITIONS)
        }
        lows = {
            q: c.get_watermark_offsets(TopicPartition(topic, q), timeout=10)[0]
            for q in range(PARTITIONS)
        }
    finally:
        c.close()
    assert lows == {q: 0 for q in range(PARTITIONS)}, lows
    got = read_partitions(b, topic, highs)

    duplicates, absent_unacked = verify_log(got, highs, n, acked, sent_once)
    if duplicates:
        sample = sorted(duplicates.items())[:20]
        msg = (
            f"{len(duplicates)} messages duplicated by retries of unacknowledged attempts "
            f"(allowed without idempotence): {sample}"
        )
        print(msg)
        warnings.warn(msg, stacklevel=1)
    print(f"unacknowledged and absent: {len(absent_unacked)}; duplicated: {len(duplicates)}")

    b.assert_serves_clients()


def test_verifier_catches_bad_logs():
    """The verifier itself (no broker): accepts a log with retry duplicates, rejects loss,
    misplaced acknowledgements, reordering, strangers, gaps and duplicates of messages sent
    once."""

    def log(*vals):
        return [(o, f"{v:09d}".encode()) for o, v in enumerate(vals)]

    # Partition 0 holds even numbers, partition 1 odd ones. 4 was written, not acked, retried.
    good = {0: log(0, 2, 4, 4, 6), 1: log(1, 3, 5)}
    highs = {0: 5, 1: 3}
    acked = {0: (0, 0), 2: (0, 1), 4: (0, 3), 6: (0, 4), 1: (1, 0), 3: (1, 1), 5: (1, 2)}
    dups, absent = verify_log(good, highs, 8, acked, sent_once={0, 1, 2})
    assert dups == {4: 2} and absent == [7]

    def rejects(got, highs=highs, acked=acked, once=frozenset(), match=""):
        with pytest.raises(AssertionError, match=match):
            verify_log(got, highs, 8, acked, set(once))

    rejects({0: log(0, 2, 4, 4), 1: log(1, 3, 5)}, highs={0: 4, 1: 3}, match="missing")
    rejects({0: log(0, 4, 2, 4, 6), 1: log(1, 3, 5)}, match="order")
    rejects(good, acked={**acked, 6: (0, 3)}, match="holds")
    rejects({0: log(0, 2, 4, 4, 6), 1: log(1, 3, 9)}, match="never produced")
    rejects({0: log(0, 2, 4, 4, 6), 1: log(1, 3, 5)[:1] + log(1, 3, 5)[2:]}, match="dense")
    rejects(good, once={4}, match="sent once")
