"""The idempotent producer: InitProducerId, per-partition sequence checks, retries answered with
their original offsets, and producer state that survives a restart.

confluent-kafka produces with enable.idempotence=true; raw tests build idempotent batches with
kafka-python's record builder and send them over a socket, replaying the exact bytes of an
acknowledged request to check nothing is written twice.
"""

from __future__ import annotations

import socket
import struct

import pytest

from conftest import raw_call

OUT_OF_ORDER_SEQUENCE_NUMBER = 45
INVALID_PRODUCER_EPOCH = 47


def connect(b) -> socket.socket:
    host, port = b.bootstrap.split(":")
    s = socket.create_connection((host, int(port)), timeout=20)
    s.settimeout(20)
    return s


def init_producer_id(sock, corr=1) -> tuple[int, int]:
    # InitProducerId v0: transactional_id null, transaction_timeout_ms.
    body = struct.pack(">hi", -1, 60000)
    resp = raw_call(sock, 22, 0, corr, body)
    _throttle, err, pid, epoch = struct.unpack(">ihqh", resp)
    assert err == 0, err
    return pid, epoch


def batch(pid, epoch, seq, values) -> bytes:
    from kafka.record.default_records import DefaultRecordBatchBuilder

    b = DefaultRecordBatchBuilder(
        magic=2, compression_type=0, is_transactional=0, producer_id=pid,
        producer_epoch=epoch, base_sequence=seq, batch_size=1 << 20,
    )
    for i, v in enumerate(values):
        b.append(i, timestamp=None, key=None, value=v, headers=[])
    return bytes(b.build())


def produce_body(topic: str, partition: int, records: bytes, acks: int = -1) -> bytes:
    t = topic.encode()
    return (
        struct.pack(">hhi", -1, acks, 30000)  # transactional_id null, acks, timeout
        + struct.pack(">i", 1) + struct.pack(">h", len(t)) + t
        + struct.pack(">i", 1) + struct.pack(">i", partition)
        + struct.pack(">i", len(records)) + records
    )


def parse_produce_v3(resp: bytes) -> tuple[int, int]:
    """(error_code, base_offset) of the single partition."""
    at = 0
    (n_topics,) = struct.unpack_from(">i", resp, at)
    at += 4
    assert n_topics == 1
    (tlen,) = struct.unpack_from(">h", resp, at)
    at += 2 + tlen
    (n_parts,) = struct.unpack_from(">i", resp, at)
    at += 4
    assert n_parts == 1
    _p, err, base, _ts = struct.unpack_from(">ihqq", resp, at)
    return err, base


def produce(sock, corr, topic, records) -> tuple[int, int]:
    return parse_produce_v3(raw_call(sock, 0, 3, corr, produce_body(topic, 0, records)))


def consume_all(b, topic: str, partitions: int, expect: int, timeout_s: float = 60) -> list:
    from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition
    import time

    c = Consumer(b.client_config({"group.id": "idem-check", "enable.auto.commit": False}))
    out = []
    try:
        c.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in range(partitions)])
        deadline = time.monotonic() + timeout_s
        idle = 0
        while time.monotonic() < deadline and idle < 5:
            msgs = c.consume(10000, timeout=1)
            if not msgs:
                idle += 1 if len(out) >= expect else 0
                continue
            idle = 0
            for m in msgs:
                assert m.error() is None, m.error()
                out.append((m.partition(), m.offset(), m.key(), m.value()))
    finally:
        c.close()
    return out


def test_confluent_idempotent_producer_100k(broker):
    from confluent_kafka import Producer

    b = broker()
    b.create_topic("idem", partitions=3)
    p = Producer(b.client_config({
        "enable.idempotence": True, "linger.ms": 5, "batch.num.messages": 2000,
    }))
    errors = []
    n = 100_000
    for i in range(n):
        while True:
            try:
                p.produce("idem", key=str(i % 1000).encode(), value=str(i).encode(),
                          on_delivery=lambda err, msg: err and errors.append(err))
                break
            except BufferError:
                p.poll(0.05)
        if i % 10_000 == 0:
            p.poll(0)
    assert p.flush(120) == 0
    assert not errors, errors[:5]
    got = consume_all(b, "idem", 3, n)
    values = [int(v) for (_, _, _, v) in got]
    assert len(values) == n, len(values)
    assert len(set(values)) == n  # no duplicates
    # Per key, values come in the order they were produced.
    last = {}
    for (_, _, k, v) in got:
        v = int(v)
        assert last.get(k, -1) < v
        last[k] = v


@pytest.mark.parametrize("cores", [1, 2])
def test_replayed_request_is_not_written_twice(broker, cores):
    b = broker(cores=cores)
    b.create_topic("replay", partitions=1)
    s = connect(b)
    try:
        pid, epoch = init_producer_id(s)
        assert pid >= 0 and epoch == 0
        frame = produce_body("replay", 0, batch(pid, epoch, 0, [b"a", b"b", b"c"]))
        first = parse_produce_v3(raw_call(s, 0, 3, 2, frame))
        assert first == (0, 0), first
        # The exact same bytes again, on this and on a new connection: acknowledged with the
        # original offset, and nothing appended.
        assert parse_produce_v3(raw_call(s, 0, 3, 3, frame)) == (0, 0)
        s2 = connect(b)
        try:
            assert parse_produce_v3(raw_call(s2, 0, 3, 1, frame)) == (0, 0)
        finally:
            s2.close()
        # The next batch in sequence gets the next offsets.
        assert produce(s, 4, "replay", batch(pid, epoch, 3, [b"d"])) == (0, 3)
    finally:
        s.close()
    got = consume_all(b, "replay", 1, 4)
    assert [v for (_, _, _, v) in got] == [b"a", b"b", b"c", b"d"], got


def test_sequence_gap_and_old_epoch_are_rejected(broker):
    b = broker()
    b.create_topic("seq", partitions=1)
    s = connect(b)
    try:
        pid, epoch = init_producer_id(s)
        assert produce(s, 2, "seq", batch(pid, epoch, 0, [b"x", b"y"]))[0] == 0
        # A gap: sequence 5 after 0..1.
        err, _ = produce(s, 3, "seq", batch(pid, epoch, 5, [b"gap"]))
        assert err == OUT_OF_ORDER_SEQUENCE_NUMBER, err
        # An unknown producer must start at 0.
        err, _ = produce(s, 4, "seq", batch(pid + 1_000_000, 0, 7, [b"new"]))
        assert err == OUT_OF_ORDER_SEQUENCE_NUMBER, err
        # A bumped epoch starts at 0 and fences the old one.
        assert produce(s, 5, "seq", batch(pid, epoch + 1, 0, [b"e1"]))[0] == 0
        err, _ = produce(s, 6, "seq", batch(pid, epoch, 2, [b"old"]))
        assert err == INVALID_PRODUCER_EPOCH, err
    finally:
        s.close()
    got = consume_all(b, "seq", 1, 3)
    assert [v for (_, _, _, v) in got] == [b"x", b"y", b"e1"], got


@pytest.mark.persistence
def test_producer_state_and_ids_survive_restart(broker):
    b = broker()
    b.create_topic("restart", partitions=1)
    s = connect(b)
    try:
        pid, epoch = init_producer_id(s)
        frame = produce_body("restart", 0, batch(pid, epoch, 0, [b"1", b"2"]))
        assert parse_produce_v3(raw_call(s, 0, 3, 2, frame)) == (0, 0)
    finally:
        s.close()
    b.restart()
    # A clean shutdown left a producer-state snapshot, so the reopen did not read the log.
    assert (b.data_dir / "restart-0" / "producer_state").exists()
    s = connect(b)
    try:
        # The retry after the restart is still recognised...
        assert parse_produce_v3(raw_call(s, 0, 3, 1, frame)) == (0, 0)
        # ...a gap is still a gap...
        err, _ = produce(s, 2, "restart", batch(pid, epoch, 9, [b"9"]))
        assert err == OUT_OF_ORDER_SEQUENCE_NUMBER
        # ...and a new producer id is never one handed out before.
        pid2, _ = init_producer_id(s, corr=3)
        assert pid2 > pid
    finally:
        s.close()
    b.kill9()
    b.start()
    s = connect(b)
    try:
        assert parse_produce_v3(raw_call(s, 0, 3, 1, frame)) == (0, 0)
        pid3, _ = init_producer_id(s, corr=2)
        assert pid3 > pid2
    finally:
        s.close()
    got = consume_all(b, "restart", 1, 2)
    assert [v for (_, _, _, v) in got] == [b"1", b"2"]
