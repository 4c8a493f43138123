"""Consumer groups: confluent-kafka consumers in separate processes sharing a 12-partition
topic through a kill and a join, kafka-python manual commits across a broker restart, kcat's
balanced consumer, the group admin APIs, and the errors a stale or unknown member gets.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import struct
import subprocess
import sys
import textwrap
import threading
import time
from collections import Counter
from pathlib import Path

import pytest

from conftest import raw_call

# Fast first rebalances in tests (Kafka's default is 3 s); everything else is the default.
GROUP_ARGS = ("--group-initial-rebalance-delay-ms", "300")

UNKNOWN_MEMBER_ID = 25
ILLEGAL_GENERATION = 22
REBALANCE_IN_PROGRESS = 27

CONSUMER_SCRIPT = textwrap.dedent(
    """
    import sys, time
    from confluent_kafka import Consumer, KafkaError
    bootstrap, group, topic, out, strategy = sys.argv[1:6]
    log = open(out, "a", buffering=1)
    c = Consumer({
        "bootstrap.servers": bootstrap, "broker.address.family": "v4",
        "group.id": group, "enable.auto.commit": False, "auto.offset.reset": "earliest",
        "session.timeout.ms": 6000, "heartbeat.interval.ms": 500,
        "partition.assignment.strategy": strategy,
    })
    def revoked(consumer, parts):
        try:
            consumer.commit(asynchronous=False)
        except Exception:
            pass
    c.subscribe([topic], on_revoke=revoked)
    log.write("started\\n")
    while True:
        msgs = c.consume(200, timeout=0.5)
        done = []
        for m in msgs:
            if m.error():
                continue
            log.write(f"p {m.partition()} {m.offset()} {m.value().decode()}\\n")
            done.append(m)
        if done:
            try:
                c.commit(asynchronous=False)
                for m in done:
                    log.write(f"c {m.partition()} {m.offset()}\\n")
            except Exception as e:
                log.write(f"commit-failed {e}\\n")
    """
)


def parse_log(path: Path):
    processed, committed = [], set()
    if not path.exists():
        return processed, committed
    for line in path.read_text().splitlines():
        f = line.split()
        if f and f[0] == "p" and len(f) == 4:
            processed.append((int(f[1]), int(f[2]), int(f[3])))
        elif f and f[0] == "c" and len(f) == 3:
            committed.add((int(f[1]), int(f[2])))
    return processed, committed


@pytest.mark.parametrize("strategy", ["range", "roundrobin", "cooperative-sticky"])
def test_three_consumers_kill_and_join(broker, tmp_path, strategy):
    from confluent_kafka import Producer

    b = broker(extra_args=GROUP_ARGS)
    b.create_topic("work", partitions=12)
    script = tmp_path / "consumer.py"
    script.write_text(CONSUMER_SCRIPT)
    procs = {}

    def start(name):
        log = tmp_path / f"{name}.log"
        procs[name] = (subprocess.Popen(
            [sys.executable, str(script), b.bootstrap, "g-work", "work", str(log), strategy],
            stdout=subprocess.DEVNULL, stderr=open(tmp_path / f"{name}.err", "wb"),
        ), log)

    n = 60_000
    try:
        for name in ("c1", "c2", "c3"):
            start(name)
        p = Producer(b.client_config({"linger.ms": 5}))
        produced = threading.Event()

        def produce():
            for i in range(n):
                while True:
                    try:
                        p.produce("work", key=str(i % 997).encode(), value=str(i).encode())
                        break
                    except BufferError:
                        p.poll(0.05)
                if i % 100 == 0:
                    p.poll(0)
                    time.sleep(0.002)
            assert p.flush(60) == 0
            produced.set()

        t = threading.Thread(target=produce, daemon=True)
        t.start()
        # Kill c2 once it has processed something, then start c4.
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and len(parse_log(procs["c2"][1])[0]) < 2000:
            time.sleep(0.2)
        procs["c2"][0].send_signal(signal.SIGKILL)
        procs["c2"][0].wait(10)
        start("c4")
        t.join(120)
        assert produced.is_set()
        # Wait until every message was processed by someone.
        deadline = time.monotonic() + 120
        seen = set()
        while time.monotonic() < deadline:
            seen = {v for name in procs for (_, _, v) in parse_log(procs[name][1])[0]}
            if len(seen) >= n:
                break
            time.sleep(0.5)
        assert len(seen) == n, f"{n - len(seen)} messages never processed"
    finally:
        for proc, _ in procs.values():
            if proc.poll() is None:
                proc.kill()
            proc.wait(10)
    counts = Counter()
    for name in procs:
        for (_, _, v) in parse_log(procs[name][1])[0]:
            counts[v] += 1
    dups = {v for v, c in counts.items() if c > 1}
    # In flight at the kill: what c2 processed but did not get to commit.
    processed, committed = parse_log(procs["c2"][1])
    in_flight = {v for (part, off, v) in processed if (part, off) not in committed}
    print(f"{strategy}: {len(dups)} messages processed twice; {len(in_flight)} were in flight at the kill")
    assert dups <= in_flight, f"duplicates outside the killed consumer's in-flight set: {sorted(dups - in_flight)[:10]}"


@pytest.mark.persistence
def test_kafka_python_manual_commit_survives_restart(broker):
    from kafka import KafkaConsumer, KafkaProducer, TopicPartition

    b = broker(extra_args=GROUP_ARGS)
    b.create_topic("kp", partitions=2)
    prod = KafkaProducer(bootstrap_servers=b.bootstrap, acks="all")
    for i in range(100):
        prod.send("kp", key=str(i).encode(), value=str(i).encode(), partition=i % 2)
    prod.flush(30)
    prod.close()

    def consumer():
        return KafkaConsumer(
            "kp", bootstrap_servers=b.bootstrap, group_id="kp-g", enable_auto_commit=False,
            auto_offset_reset="earliest", consumer_timeout_ms=15000,
        )

    c = consumer()
    first = []
    for m in c:
        first.append((m.partition, m.offset, int(m.value)))
        if len(first) == 40:
            break
    c.commit()
    committed = {p: c.committed(TopicPartition("kp", p)) for p in (0, 1)}
    c.close()
    assert sum(committed.values()) == 40, committed
    b.restart()
    c = consumer()
    rest = []
    for m in c:
        rest.append((m.partition, m.offset, int(m.value)))
        if len(rest) == 60:
            break
    c.close()
    # Exactly from the committed offsets: nothing lost, nothing read twice.
    for p in (0, 1):
        offs = sorted(o for (q, o, _) in rest if q == p)
        assert offs and offs[0] == committed[p], (p, offs[:3], committed)
    assert sorted(v for (_, _, v) in first + rest) == list(range(100))


@pytest.mark.parametrize("cores", [1, 2])
def test_kcat_balanced_consumer(broker, cores):
    from confluent_kafka import Producer

    kcat = shutil.which("kcat") or shutil.which("kafkacat")
    if kcat is None:
        pytest.skip("kcat not installed")
    # With 2 cores, groups and their __consumer_offsets partitions spread over both.
    b = broker(cores=cores, extra_args=GROUP_ARGS)
    b.create_topic("kc", partitions=3)
    p = Producer(b.client_config())
    for i in range(30):
        p.produce("kc", value=f"v{i}".encode(), partition=i % 3)
    assert p.flush(30) == 0
    r = subprocess.run(
        [kcat, "-b", b.bootstrap, "-G", "kc-g", "-c", "30", "-f", "%s\\n",
         "-X", "auto.offset.reset=earliest", "kc"],
        capture_output=True, text=True, timeout=90,
    )
    assert r.returncode == 0, r.stderr
    assert sorted(r.stdout.split()) == sorted(f"v{i}" for i in range(30)), r.stdout
    # The group committed its position: listed, described, offsets at the end.
    from confluent_kafka import ConsumerGroupTopicPartitions, TopicPartition

    admin = b.admin()
    deadline = time.monotonic() + 20
    total = 0
    while time.monotonic() < deadline:
        f = admin.list_consumer_group_offsets([ConsumerGroupTopicPartitions("kc-g", [TopicPartition("kc", i) for i in range(3)])])
        res = f["kc-g"].result(timeout=20)
        total = sum(tp.offset for tp in res.topic_partitions if tp.offset >= 0)
        if total == 30:
            break
        time.sleep(0.5)
    assert total == 30
    groups = admin.list_consumer_groups().result(timeout=20)
    assert "kc-g" in {g.group_id for g in groups.valid}
    desc = admin.describe_consumer_groups(["kc-g"])["kc-g"].result(timeout=20)
    assert desc.group_id == "kc-g"
    # An empty group can be deleted, and its offsets go with it.
    admin.delete_consumer_groups(["kc-g"])["kc-g"].result(timeout=20)
    groups = admin.list_consumer_groups().result(timeout=20)
    assert "kc-g" not in {g.group_id for g in groups.valid}


def _conn(b):
    host, port = b.bootstrap.split(":")
    s = socket.create_connection((host, int(port)), timeout=30)
    s.settimeout(30)
    return s


def _call(sock, req, corr):
    body = raw_call(sock, req.API_KEY, req.API_VERSION, corr, req.encode())
    return req.RESPONSE_TYPE.decode(body)


def _commit(sock, corr, group, gen, member, topic="errs"):
    from kafka.protocol.commit import OffsetCommitRequest

    req = OffsetCommitRequest[2](group, gen, member, -1, [(topic, [(0, 5, "")])])
    resp = _call(sock, req, corr)
    return resp.topics[0][1][0][1]


@pytest.mark.parametrize("cores", [1, 2])
def test_commit_and_heartbeat_errors(broker, cores):
    from kafka.protocol.group import HeartbeatRequest, JoinGroupRequest, SyncGroupRequest

    b = broker(cores=cores, extra_args=GROUP_ARGS)
    b.create_topic("errs", partitions=1)
    s = _conn(b)
    try:
        # An unknown group: a member id it never had.
        assert _commit(s, 1, "nope", 1, "m-unknown") == UNKNOWN_MEMBER_ID
        # A one-member group, formed by hand (JoinGroup v0 hands out the member id at once).
        join = JoinGroupRequest[0]("eg", 6000, "", "consumer", [("range", b"\x00\x00")])
        j = _call(s, join, 2)
        assert j.error_code == 0, j
        member, gen = j.member_id, j.generation_id
        sync = SyncGroupRequest[0]("eg", gen, member, [(member, b"assignment")])
        assert _call(s, sync, 3).error_code == 0
        assert _commit(s, 4, "eg", gen, member) == 0
        assert _commit(s, 5, "eg", gen - 1, member) == ILLEGAL_GENERATION
        assert _commit(s, 6, "eg", gen, "someone-else") == UNKNOWN_MEMBER_ID
        assert _call(s, HeartbeatRequest[0]("eg", gen, "someone-else"), 7).error_code == UNKNOWN_MEMBER_ID
        assert _call(s, HeartbeatRequest[0]("eg", gen, member), 8).error_code == 0
        # A second member joins: the first learns of the rebalance from its heartbeat, and a
        # commit after both rejoined but before the leader's SyncGroup is refused.
        s2 = _conn(b)
        try:
            out = {}
            t = threading.Thread(target=lambda: out.setdefault("j2", _call(s2, JoinGroupRequest[0]("eg", 6000, "", "consumer", [("range", b"\x00\x00")]), 1)))
            t.start()
            deadline = time.monotonic() + 10
            hb = None
            while time.monotonic() < deadline:
                hb = _call(s, HeartbeatRequest[0]("eg", gen, member), 9).error_code
                if hb == REBALANCE_IN_PROGRESS:
                    break
                time.sleep(0.1)
            assert hb == REBALANCE_IN_PROGRESS
            j1 = _call(s, JoinGroupRequest[0]("eg", 6000, member, "consumer", [("range", b"\x00\x00")]), 10)
            t.join(20)
            assert j1.error_code == 0 and out["j2"].error_code == 0
            gen2 = j1.generation_id
            assert gen2 == gen + 1
            follower = out["j2"].member_id
            committer = follower if j1.leader_id == member else member
            assert _commit(s, 11, "eg", gen2, committer) == REBALANCE_IN_PROGRESS
            # The old generation is gone.
            assert _commit(s, 12, "eg", gen, member) == ILLEGAL_GENERATION
        finally:
            s2.close()
    finally:
        s.close()


def test_static_member_restart_does_not_rebalance(broker):
    """A static member (group.instance.id) that restarts within its session takes its old
    partitions back; the other member is not asked to give anything up."""
    from confluent_kafka import Consumer

    b = broker(extra_args=GROUP_ARGS)
    b.create_topic("st", partitions=4)
    events = {"s1": [], "s2": []}

    def consumer(instance):
        c = Consumer(b.client_config({
            "group.id": "st-g", "group.instance.id": instance, "session.timeout.ms": 10000,
            "heartbeat.interval.ms": 500, "partition.assignment.strategy": "range",
            "auto.offset.reset": "earliest",
        }))
        c.subscribe(
            ["st"],
            on_assign=lambda _c, ps: events[instance].append(("assign", sorted(p.partition for p in ps))),
            on_revoke=lambda _c, ps: events[instance].append(("revoke", sorted(p.partition for p in ps))),
        )
        return c

    def poll_until(cs, cond, timeout=30):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for c in cs:
                c.poll(0.1)
            if cond():
                return
        raise AssertionError(f"timed out: {events}")

    c1, c2 = consumer("s1"), consumer("s2")
    try:
        poll_until([c1, c2], lambda: any(e[0] == "assign" and e[1] for e in events["s1"])
                   and any(e[0] == "assign" and e[1] for e in events["s2"])
                   and sum(len(e[1]) for k in events for e in events[k][-1:] if e[0] == "assign") == 4)
        before_s1 = [e for e in events["s1"] if e[0] == "assign"][-1][1]
        s2_before = list(events["s2"])
        c1.close()  # a static member leaves no LeaveGroup behind
        events["s1"].clear()
        c1 = consumer("s1")
        poll_until([c1, c2], lambda: any(e[0] == "assign" and e[1] for e in events["s1"]))
        for _ in range(20):
            c2.poll(0.1)
            c1.poll(0.1)
        assert [e for e in events["s1"] if e[0] == "assign"][-1][1] == before_s1
        assert events["s2"] == s2_before, events["s2"]
    finally:
        c1.close()
        c2.close()


def _offset_delete(sock, corr, group, topic, partitions):
    g, t = group.encode(), topic.encode()
    body = (struct.pack(">h", len(g)) + g + struct.pack(">i", 1) + struct.pack(">h", len(t)) + t
            + struct.pack(">i", len(partitions)) + b"".join(struct.pack(">i", p) for p in partitions))
    resp = raw_call(sock, 47, 0, corr, body)
    err, _throttle = struct.unpack_from(">hi", resp, 0)
    codes = []
    if err == 0:
        at = 6
        (nt,) = struct.unpack_from(">i", resp, at)
        at += 4
        for _ in range(nt):
            (tl,) = struct.unpack_from(">h", resp, at)
            at += 2 + tl
            (np_,) = struct.unpack_from(">i", resp, at)
            at += 4
            for _ in range(np_):
                p, e = struct.unpack_from(">ih", resp, at)
                at += 6
                codes.append((p, e))
    return err, codes


def test_offset_delete(broker):
    from confluent_kafka import Consumer, ConsumerGroupTopicPartitions, TopicPartition

    b = broker(extra_args=GROUP_ARGS)
    b.create_topic("od", partitions=2)
    # Offsets committed outside the group protocol (assign, not subscribe).
    c = Consumer(b.client_config({"group.id": "od-g", "enable.auto.commit": False}))
    c.assign([TopicPartition("od", 0), TopicPartition("od", 1)])
    c.commit(offsets=[TopicPartition("od", 0, 7), TopicPartition("od", 1, 9)], asynchronous=False)
    c.close()
    s = _conn(b)
    try:
        assert _offset_delete(s, 1, "nobody", "od", [0]) == (69, [])  # GROUP_ID_NOT_FOUND
        assert _offset_delete(s, 2, "od-g", "od", [0]) == (0, [(0, 0)])
    finally:
        s.close()
    admin = b.admin()
    res = admin.list_consumer_group_offsets(
        [ConsumerGroupTopicPartitions("od-g", [TopicPartition("od", 0), TopicPartition("od", 1)])]
    )["od-g"].result(timeout=20)
    got = {tp.partition: tp.offset for tp in res.topic_partitions}
    assert got[1] == 9 and got[0] < 0, got


def test_offsets_of_an_empty_group_expire(broker):
    """offsets.retention.minutes (here 1): a group that stays empty that long loses its
    committed offsets and disappears; the test takes a little over a minute."""
    from confluent_kafka import Consumer, ConsumerGroupTopicPartitions, TopicPartition

    b = broker(extra_args=GROUP_ARGS + ("--offsets-retention-minutes", "1"))
    b.create_topic("ret", partitions=1)
    c = Consumer(b.client_config({"group.id": "ret-g", "enable.auto.commit": False}))
    c.assign([TopicPartition("ret", 0)])
    c.commit(offsets=[TopicPartition("ret", 0, 3)], asynchronous=False)
    c.close()
    admin = b.admin()

    def committed():
        res = admin.list_consumer_group_offsets(
            [ConsumerGroupTopicPartitions("ret-g", [TopicPartition("ret", 0)])]
        )["ret-g"].result(timeout=20)
        return res.topic_partitions[0].offset

    assert committed() == 3
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and committed() == 3:
        time.sleep(2)
    assert committed() < 0
    groups = admin.list_consumer_groups().result(timeout=20)
    assert "ret-g" not in {g.group_id for g in groups.valid}
