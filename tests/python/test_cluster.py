"""A 3-broker cluster on 127.0.0.1: replicated partitions (Raft), a replicated controller,
failover under kill -9 and SIGSTOP, and a network partition.

Each broker is a separate process with its own data dir, started as
`ringlog --node-id N --data-dir DIR --kafka-addr 127.0.0.1:P --rpc-addr 127.0.0.1:R
--peers 1@...,2@...,3@... --cores 1`, the same command `deploy/cluster.sh` runs.
"""

from __future__ import annotations

import os
import signal
import struct
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from conftest import REPO_ROOT, free_port, probe_metadata, raw_call

pytestmark = pytest.mark.ringlog_flags

NOT_LEADER_OR_FOLLOWER = 6


def free_ports(k: int) -> int:
    """A port p such that p .. p+k-1 were all free a moment ago (a broker with k cores
    listens for brokers on k consecutive ports)."""
    import socket

    for _ in range(200):
        base = free_port()
        socks = []
        try:
            for i in range(k):
                s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                socks.append(s)
                s.bind(("127.0.0.1", base + i))
            return base
        except OSError:
            continue
        finally:
            for s in socks:
                s.close()
    raise RuntimeError(f"no run of {k} free ports")


class Cluster:
    """Three brokers started together (each waits for the controller quorum)."""

    def __init__(self, broker, tmp_path: Path, n: int = 3, tick_ms: int = 50, extra=(),
                 cores: int = 1):
        self.brokers = [broker(cores=cores, start=False) for _ in range(n)]
        rpc = [free_ports(cores) for _ in range(n)]
        peers = ",".join(f"{i + 1}@127.0.0.1:{rpc[i]}" for i in range(n))
        self.fault_files = []
        for i, b in enumerate(self.brokers):
            f = tmp_path / f"isolate-{i + 1}"
            f.write_text("")
            self.fault_files.append(f)
            b.extra_env["RINGLOG_FAULT_ISOLATE_FILE"] = str(f)
            b.extra_args = [
                "--node-id", str(i + 1),
                "--rpc-addr", f"127.0.0.1:{rpc[i]}",
                "--peers", peers,
                "--raft-tick-ms", str(tick_ms),
                *extra,
            ]
        for b in self.brokers:
            b.launch()
        for b in self.brokers:
            b.wait_ready(60)
        # Every broker is registered with the controller before it serves, but a broker may
        # serve before the others have registered: wait until each lists all of them.
        deadline = time.monotonic() + 30
        for b in self.brokers:
            while len(probe_metadata("127.0.0.1", b.port)) < n:
                assert time.monotonic() < deadline, f"{b} does not list {n} brokers"
                time.sleep(0.1)

    @property
    def bootstrap(self) -> str:
        return ",".join(b.bootstrap for b in self.brokers)

    def node(self, node_id: int):
        return self.brokers[node_id - 1]

    def config(self, extra: dict | None = None) -> dict:
        out = {"bootstrap.servers": self.bootstrap, "broker.address.family": "v4"}
        out.update(extra or {})
        return out

    def admin(self, via=None):
        """An admin client bootstrapped on every broker, or on the nodes `via`."""
        from confluent_kafka.admin import AdminClient

        conf = self.config()
        if via:
            conf["bootstrap.servers"] = ",".join(self.node(n).bootstrap for n in via)
        return AdminClient(conf)

    def create_topic(self, name: str, partitions: int, rf: int = 3, config=None):
        from confluent_kafka.admin import NewTopic

        admin = self.admin()  # kept alive until the result is in
        fs = admin.create_topics(
            [NewTopic(name, num_partitions=partitions, replication_factor=rf, config=config or {})],
            operation_timeout=30, request_timeout=30,
        )
        fs[name].result(timeout=40)
        return self.wait_leaders(name, partitions)

    def wait_leaders(self, name: str, partitions: int, timeout: float = 30, avoid=(), via=None):
        """{partition: leader node} once every partition has a leader (not in `avoid`), as
        seen from every broker or from the nodes `via`."""
        admin = self.admin(via)
        deadline = time.monotonic() + timeout
        last = None
        while time.monotonic() < deadline:
            md = admin.list_topics(topic=name, timeout=10)
            t = md.topics.get(name)
            if t is not None and t.error is None and len(t.partitions) == partitions:
                leaders = {p.id: p.leader for p in t.partitions.values()}
                if all(l > 0 and l not in avoid for l in leaders.values()):
                    return leaders
                last = leaders
            time.sleep(0.1)
        raise AssertionError(f"{name}: no leaders within {timeout} s: {last}")

    def isolate(self, node_id: int):
        """Cuts `node_id` off from the others, both ways (the transport's fault hook)."""
        others = [str(i + 1) for i in range(len(self.brokers)) if i + 1 != node_id]
        self.fault_files[node_id - 1].write_text(",".join(others))
        for o in others:
            self.fault_files[int(o) - 1].write_text(str(node_id))

    def heal(self):
        for f in self.fault_files:
            f.write_text("")


def raw_leaders(b, topic: str) -> dict[int, int]:
    """{partition: leader} as broker `b` itself answers Metadata v1 for `topic` (a client
    library would also ask other brokers it learned of)."""
    import socket

    t = topic.encode()
    host, port = b.bootstrap.split(":")
    with socket.create_connection((host, int(port)), timeout=10) as s:
        s.settimeout(10)
        body = raw_call(s, 3, 1, 1, struct.pack(">ih", 1, len(t)) + t)
    at = 0
    (n,) = struct.unpack_from(">i", body, at)
    at += 4
    for _ in range(n):
        _id, hl = struct.unpack_from(">ih", body, at)
        at += 6 + hl
        _port, rl = struct.unpack_from(">ih", body, at)
        at += 6 + max(rl, 0)
    at += 4  # controller id
    (nt,) = struct.unpack_from(">i", body, at)
    at += 4
    out = {}
    for _ in range(nt):
        _err, nl = struct.unpack_from(">hh", body, at)
        at += 4 + nl + 1  # name, is_internal
        (np_,) = struct.unpack_from(">i", body, at)
        at += 4
        for _ in range(np_):
            _perr, part, leader = struct.unpack_from(">hii", body, at)
            at += 10
            for _ in range(2):  # replicas, isr
                (k,) = struct.unpack_from(">i", body, at)
                at += 4 + 4 * k
            out[part] = leader
    return out


def log_batches(partition_dir: Path) -> list[bytes]:
    """Every record batch of a partition's segments, in order, as stored (parsed from the
    `.log` files: baseOffset int64, batchLength int32, ..., lastOffsetDelta int32 at 23).
    Zeros end a segment, and so does a batch whose offsets go back: the rest of a recycled
    segment's previous life (storage/src/recycle.rs)."""
    out = []
    for seg in sorted(partition_dir.glob("*.log")):
        data = seg.read_bytes()
        at = 0
        expect = int(seg.stem)
        while at + 27 <= len(data):
            base, length = struct.unpack_from(">qi", data, at)
            if length <= 0 or at + 12 + length > len(data) or base < expect:
                break
            (last_delta,) = struct.unpack_from(">i", data, at + 23)
            out.append(data[at : at + 12 + length])
            expect = base + last_delta + 1
            at += 12 + length
    return out


class NumberedProducer:
    """An idempotent acks=all producer writing `p:seq` to each partition in turn, in a thread,
    recording what was acknowledged and when."""

    def __init__(self, cluster: Cluster, topic: str, partitions: int, rate: int = 400):
        from confluent_kafka import Producer

        self.p = Producer(cluster.config({
            "enable.idempotence": True, "acks": "all", "linger.ms": 5,
            "message.timeout.ms": 120000, "topic.metadata.refresh.interval.ms": 1000,
        }))
        self.topic, self.partitions, self.rate = topic, partitions, rate
        self.acked: dict[int, list[tuple[int, int, float]]] = {p: [] for p in range(partitions)}
        self.failed: list[tuple[int, int, str]] = []
        self.sent = {p: 0 for p in range(partitions)}
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _cb(self, part, seq):
        def cb(err, msg):
            if err is not None:
                self.failed.append((part, seq, str(err)))
            else:
                self.acked[part].append((seq, msg.offset(), time.monotonic()))
        return cb

    def _run(self):
        i = 0
        while not self.stop.is_set():
            part = i % self.partitions
            seq = self.sent[part]
            self.sent[part] += 1
            self.p.produce(self.topic, value=f"{part}:{seq}".encode(), partition=part,
                           on_delivery=self._cb(part, seq))
            self.p.poll(0)
            i += 1
            time.sleep(1.0 / self.rate)
        self.p.flush(120)

    def start(self):
        self.thread.start()
        return self

    def finish(self):
        self.stop.set()
        self.thread.join(150)
        assert not self.thread.is_alive(), "producer did not finish"


def consume_all(cluster: Cluster, topic: str, partitions: int) -> dict[int, list[tuple[int, int]]]:
    """(seq, offset) of every message of each partition, up to its high watermark."""
    from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition

    c = Consumer(cluster.config({"group.id": f"verify-{time.time()}", "enable.auto.commit": False}))
    out = {p: [] for p in range(partitions)}
    try:
        ends = {}
        for p in range(partitions):
            _lo, hi = c.get_watermark_offsets(TopicPartition(topic, p), timeout=20)
            ends[p] = hi
        c.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in range(partitions)])
        done = {p for p in range(partitions) if ends[p] == 0}
        deadline = time.monotonic() + 90
        while len(done) < partitions and time.monotonic() < deadline:
            for m in c.consume(5000, timeout=1):
                assert m.error() is None, m.error()
                part, seq = m.value().decode().split(":")
                assert int(part) == m.partition()
                out[m.partition()].append((int(seq), m.offset()))
                if m.offset() >= ends[m.partition()] - 2:
                    # The last offset may be a Raft no-op (a control batch clients skip).
                    done.add(m.partition())
        assert len(done) == partitions, f"consumed only {done} of {partitions} partitions"
    finally:
        c.close()
    return out


@pytest.mark.persistence
@pytest.mark.timeout(300, method="signal")
def test_failover_kill9_sigstop_no_acknowledged_write_lost(broker, tmp_path):
    c = Cluster(broker, tmp_path)
    topic, parts = "failover", 3
    leaders = c.create_topic(topic, parts)
    prod = NumberedProducer(c, topic, parts).start()
    time.sleep(3)

    # kill -9 the leader of partition 0; measure the time to its next acknowledged write.
    victim = leaders[0]
    c.node(victim).kill9()
    killed_at = time.monotonic()
    new_leaders = c.wait_leaders(topic, parts, avoid=(victim,))
    deadline = time.monotonic() + 30
    first_ack = None
    while time.monotonic() < deadline and first_ack is None:
        after = [t for (_s, _o, t) in prod.acked[0] if t > killed_at]
        first_ack = min(after) if after else None
        time.sleep(0.05)
    assert first_ack is not None, "partition 0 took no write within 30 s of its leader's kill -9"
    failover_ms = (first_ack - killed_at) * 1000
    print(f"\nfailover: kill -9 of leader {victim} to first acknowledged produce on its "
          f"partition: {failover_ms:.0f} ms (new leaders {new_leaders})", file=sys.__stderr__)
    # The active controller fences the dead broker: Metadata stops listing it.
    live = next(n for n in (1, 2, 3) if n != victim)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        listed = [n for (n, _h, _p) in probe_metadata("127.0.0.1", c.node(live).port)]
        if victim not in listed:
            break
        time.sleep(0.2)
    assert victim not in listed, f"broker {victim} still listed 20 s after kill -9: {listed}"
    c.node(victim).start(60)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        listed = [n for (n, _h, _p) in probe_metadata("127.0.0.1", c.node(live).port)]
        if victim in listed:
            break
        time.sleep(0.2)
    assert victim in listed, f"restarted broker {victim} not listed again: {listed}"

    # SIGSTOP another broker for a while (a long GC pause, a hung disk), then let it go on.
    paused = next(n for n in (1, 2, 3) if n != victim)
    os.kill(c.node(paused).pid, signal.SIGSTOP)
    time.sleep(4)
    os.kill(c.node(paused).pid, signal.SIGCONT)
    time.sleep(3)
    prod.finish()
    assert not prod.failed, f"deliveries failed: {prod.failed[:5]}"

    # Every acknowledged message is present exactly once, in order, with no gap.
    got = consume_all(c, topic, parts)
    total = 0
    for p in range(parts):
        seqs = [s for (s, _o) in got[p]]
        acked = sorted(s for (s, _o, _t) in prod.acked[p])
        assert len(seqs) == len(set(seqs)), f"partition {p}: duplicates"
        assert seqs == sorted(seqs), f"partition {p}: out of order"
        assert set(acked) <= set(seqs), f"partition {p}: lost {sorted(set(acked) - set(seqs))[:10]}"
        assert seqs == list(range(len(seqs))), f"partition {p}: gap in {seqs[:20]}..."
        offsets = {s: o for (s, o) in got[p]}
        for (s, o, _t) in prod.acked[p]:
            # librdkafka reports no offset for a batch it learned was written only from the
            # success of a later one (a retry across the failover).
            assert o is None or offsets[s] == o, f"partition {p}: seq {s} acknowledged at {o}, read at {offsets[s]}"
        total += len(seqs)
    assert total > 1000, total

    # The replicas converge: after a quiet moment every replica holds the same batches,
    # byte for byte (each is a prefix of the longest, and all reach the high watermark).
    time.sleep(3)
    for b in c.brokers:
        b.stop()
    for p in range(parts):
        logs = [log_batches(b.data_dir / f"{topic}-{p}") for b in c.brokers]
        longest = max(logs, key=len)
        for i, log in enumerate(logs):
            assert log == longest[: len(log)], f"partition {p}: replica {i + 1} diverges"
        need = max(o for (_s, o) in got[p]) + 1
        for i, log in enumerate(logs):
            end = 0
            if log:
                base, = struct.unpack_from(">q", log[-1], 0)
                delta, = struct.unpack_from(">i", log[-1], 23)
                end = base + delta + 1
            assert end >= need, f"partition {p}: replica {i + 1} ends at {end} < {need}"


@pytest.mark.timeout(240, method="signal")
def test_network_partition_majority_serves_minority_refuses(broker, tmp_path):
    c = Cluster(broker, tmp_path)
    topic = "split"
    leaders = c.create_topic(topic, 1)
    cut = leaders[0]  # cut off the leader itself: the majority must elect a new one
    majority = [n for n in (1, 2, 3) if n != cut]
    c.isolate(cut)
    # Asked on the majority side: the cut-off broker knows no leader (or still itself).
    deadline = time.monotonic() + 30
    new = {}
    while time.monotonic() < deadline:
        new = raw_leaders(c.node(majority[0]), topic)
        if new.get(0, -1) in majority:
            break
        time.sleep(0.2)
    assert new.get(0) in majority, f"the majority elected no leader: {new}"

    from confluent_kafka import Producer

    p = Producer({
        "bootstrap.servers": ",".join(c.node(n).bootstrap for n in majority),
        "broker.address.family": "v4", "acks": "all", "message.timeout.ms": 30000,
    })
    errors = []
    for i in range(100):
        p.produce(topic, value=f"m{i}".encode(), partition=0,
                  on_delivery=lambda e, m: errors.append(e) if e else None)
    assert p.flush(60) == 0 and not errors, errors

    # The minority broker refuses writes with NOT_LEADER_OR_FOLLOWER (its replica stepped
    # down: it lost contact with a quorum).
    from kafka.record.default_records import DefaultRecordBatchBuilder

    b = DefaultRecordBatchBuilder(magic=2, compression_type=0, is_transactional=0,
                                  producer_id=-1, producer_epoch=-1, base_sequence=-1,
                                  batch_size=1 << 20)
    b.append(0, timestamp=None, key=None, value=b"lost?", headers=[])
    records = bytes(b.build())
    t = topic.encode()
    body = (struct.pack(">hhi", -1, -1, 5000) + struct.pack(">i", 1) + struct.pack(">h", len(t))
            + t + struct.pack(">i", 1) + struct.pack(">i", 0) + struct.pack(">i", len(records))
            + records)
    import socket

    deadline = time.monotonic() + 20
    err = None
    while time.monotonic() < deadline:
        host, port = c.node(cut).bootstrap.split(":")
        with socket.create_connection((host, int(port)), timeout=20) as s:
            s.settimeout(20)
            resp = raw_call(s, 0, 3, 7, body)
        at = 4 + 2 + len(t) + 4
        _p, err = struct.unpack_from(">ih", resp, at)
        if err == NOT_LEADER_OR_FOLLOWER:
            break
        time.sleep(0.5)
    assert err == NOT_LEADER_OR_FOLLOWER, f"minority answered error {err}"

    # Healed, the cut-off broker catches up and the partition has every write.
    c.heal()
    time.sleep(2)
    from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition

    cons = Consumer(c.config({"group.id": "split-check", "enable.auto.commit": False}))
    cons.assign([TopicPartition(topic, 0, OFFSET_BEGINNING)])
    values = []
    deadline = time.monotonic() + 30
    while len(values) < 100 and time.monotonic() < deadline:
        for m in cons.consume(1000, timeout=1):
            assert m.error() is None, m.error()
            values.append(m.value())
    cons.close()
    assert sorted(values) == sorted(f"m{i}".encode() for i in range(100)), len(values)


@pytest.mark.timeout(240, method="signal")
def test_deploy_script_starts_a_cluster_that_serves_groups(tmp_path):
    """deploy/cluster.sh brings up 3 brokers; a consumer group commits offsets on the
    replicated __consumer_offsets and idempotent producer ids come from the controller."""
    script = REPO_ROOT / "deploy" / "cluster.sh"
    binary = os.environ.get("RINGLOG_BIN", str(REPO_ROOT / "target" / "debug" / "ringlog"))
    kafka = [free_port() for _ in range(3)]
    rpc = [free_port() for _ in range(3)]
    env = dict(os.environ, RINGLOG_BIN=binary, KAFKA_PORTS=",".join(map(str, kafka)),
               RPC_PORTS=",".join(map(str, rpc)))
    d = tmp_path / "cluster"
    subprocess.run([str(script), "start", str(d)], check=True, env=env, timeout=90)
    try:
        bootstrap = ",".join(f"127.0.0.1:{p}" for p in kafka)
        from confluent_kafka import Consumer, Producer
        from confluent_kafka.admin import AdminClient, NewTopic

        a = AdminClient({"bootstrap.servers": bootstrap, "broker.address.family": "v4"})
        a.create_topics([NewTopic("dep", num_partitions=2, replication_factor=3)])["dep"].result(40)
        p = Producer({"bootstrap.servers": bootstrap, "enable.idempotence": True,
                      "broker.address.family": "v4"})
        for i in range(200):
            p.produce("dep", value=f"v{i}".encode(), key=str(i).encode())
        assert p.flush(60) == 0
        cons = Consumer({"bootstrap.servers": bootstrap, "group.id": "dep-group",
                         "auto.offset.reset": "earliest", "broker.address.family": "v4"})
        cons.subscribe(["dep"])
        got = 0
        deadline = time.monotonic() + 60
        while got < 200 and time.monotonic() < deadline:
            m = cons.poll(1)
            if m is not None and m.error() is None:
                got += 1
        assert got == 200, got
        cons.commit(asynchronous=False)
        cons.close()
        from confluent_kafka import ConsumerGroupTopicPartitions, TopicPartition

        res = a.list_consumer_group_offsets(
            [ConsumerGroupTopicPartitions("dep-group", [TopicPartition("dep", 0), TopicPartition("dep", 1)])]
        )["dep-group"].result(30)
        assert sum(tp.offset for tp in res.topic_partitions) >= 200
    finally:
        subprocess.run([str(script), "stop", str(d)], env=env, timeout=60)
    for i in range(3):
        lines = (d / f"node{i + 1}.log").read_text(errors="replace").splitlines()
        bad = [ln for ln in lines if " ERROR " in ln and "iopoll" not in ln]
        assert not bad, bad[:5]


@pytest.mark.timeout(180, method="signal")
def test_replication_factor_1_partitions_reachable_from_any_broker(broker, tmp_path):
    """Partitions with one replica live on one broker; the others name its leader in Metadata
    (from the leaders' announcements), so a client bootstrapped anywhere produces and reads."""
    c = Cluster(broker, tmp_path)
    leaders = c.create_topic("single", 3, rf=1)
    assert sorted(set(leaders.values())) == [1, 2, 3], leaders  # spread over the brokers
    for n in (1, 2, 3):
        deadline = time.monotonic() + 10
        while raw_leaders(c.node(n), "single") != leaders and time.monotonic() < deadline:
            time.sleep(0.2)
        assert raw_leaders(c.node(n), "single") == leaders, n
    from confluent_kafka import Producer

    p = Producer({"bootstrap.servers": c.node(1).bootstrap, "broker.address.family": "v4",
                  "acks": "all"})
    for i in range(300):
        p.produce("single", value=f"{i % 3}:{i // 3}".encode(), partition=i % 3)
    assert p.flush(60) == 0
    got = consume_all(c, "single", 3)
    for part in range(3):
        assert [s for (s, _o) in got[part]] == list(range(100)), part


@pytest.mark.persistence
@pytest.mark.timeout(240, method="signal")
def test_follower_behind_retention_catches_up_from_the_leaders_log_start(broker, tmp_path):
    """A follower that was down while retention deleted the segments it lacks gets a snapshot
    at the leader's log start (no data: what precedes it is gone everywhere) and catches up
    from there; its log then matches the leader's byte for byte."""
    c = Cluster(broker, tmp_path, extra=("--housekeeping-interval-ms", "300"))
    topic = "ret"
    leaders = c.create_topic(topic, 1, config={"segment.bytes": "65536",
                                                "retention.bytes": "131072"})
    leader = leaders[0]
    follower = next(n for n in (1, 2, 3) if n != leader)
    c.node(follower).stop()

    from confluent_kafka import Consumer, Producer, TopicPartition

    live = [n for n in (1, 2, 3) if n != follower]
    conf = {"bootstrap.servers": ",".join(c.node(n).bootstrap for n in live),
            "broker.address.family": "v4"}
    p = Producer(dict(conf, acks="all", **{"linger.ms": 5}))
    for i in range(3000):
        p.produce(topic, value=b"x" * 1000, partition=0)
        if i % 500 == 0:
            p.poll(0)
    assert p.flush(60) == 0
    cons = Consumer(dict(conf, **{"group.id": "ret-check"}))
    deadline = time.monotonic() + 30
    low = 0
    while time.monotonic() < deadline:
        low, high = cons.get_watermark_offsets(TopicPartition(topic, 0), timeout=10)
        if low > 0:
            break
        time.sleep(0.3)
    cons.close()
    assert low > 0, "retention deleted nothing on the leader"

    c.node(follower).start(60)
    for i in range(200):
        p.produce(topic, value=b"y" * 1000, partition=0)
    assert p.flush(60) == 0
    time.sleep(4)
    for b in c.brokers:
        b.stop()
    lead_log = log_batches(c.node(leader).data_dir / f"{topic}-0")
    fol_log = log_batches(c.node(follower).data_dir / f"{topic}-0")
    assert fol_log, "the follower holds nothing"
    first = struct.unpack_from(">q", fol_log[0], 0)[0]
    assert first >= low - 3000, first
    assert first > 0, "the follower did not restart at the leader's log start"
    by_base = {struct.unpack_from(">q", b, 0)[0]: b for b in lead_log}
    common = [b for b in fol_log if struct.unpack_from(">q", b, 0)[0] in by_base]
    assert len(common) >= len(fol_log) - 1, "the follower holds batches the leader does not"
    for b in common:
        assert by_base[struct.unpack_from(">q", b, 0)[0]] == b, "a batch differs"
    assert fol_log[-1] == lead_log[-1], "the follower did not reach the leader's end"


@pytest.mark.persistence
@pytest.mark.timeout(240, method="signal")
def test_controller_failover_and_full_cluster_restart(broker, tmp_path):
    """kill -9 of the active controller: another voter takes over and admin requests go on;
    then every broker stops and starts again, and all data, topics and committed offsets are
    back."""
    from confluent_kafka import Consumer, Producer

    c = Cluster(broker, tmp_path)
    c.create_topic("before", 2)
    controller = c.admin().list_topics(timeout=10).controller_id
    assert controller in (1, 2, 3)
    c.node(controller).kill9()
    live = [n for n in (1, 2, 3) if n != controller]
    from confluent_kafka.admin import NewTopic

    deadline = time.monotonic() + 60
    while True:
        # A fresh client each try: librdkafka keeps waiting for the controller it last knew.
        admin = c.admin(via=live)
        try:
            admin.create_topics([NewTopic("after", num_partitions=2, replication_factor=3)],
                                operation_timeout=5, request_timeout=5)["after"].result(10)
            break
        except Exception as e:  # noqa: BLE001 - retried until the new controller answers
            assert time.monotonic() < deadline, f"no controller took over: {e}"
            time.sleep(0.5)
    new_controller = admin.list_topics(timeout=10).controller_id
    assert new_controller in live, new_controller
    c.node(controller).start(60)

    conf = c.config()
    p = Producer(dict(conf, **{"enable.idempotence": True}))
    for t in ("before", "after"):
        for i in range(100):
            p.produce(t, value=f"{t}-{i}".encode(), partition=i % 2)
    assert p.flush(60) == 0
    cons = Consumer(dict(conf, **{"group.id": "restart-group", "auto.offset.reset": "earliest",
                                  "enable.auto.commit": False}))
    cons.subscribe(["before"])
    got = 0
    deadline = time.monotonic() + 60
    while got < 60 and time.monotonic() < deadline:
        for m in cons.consume(60 - got, timeout=1):
            assert m.error() is None, m.error()
            got += 1
    cons.commit(asynchronous=False)
    cons.close()

    for b in c.brokers:
        b.stop()
    for b in c.brokers:
        b.launch()
    for b in c.brokers:
        b.wait_ready(60)
    c.wait_leaders("before", 2)
    c.wait_leaders("after", 2)
    cons = Consumer(dict(c.config(), **{"group.id": "restart-group",
                                        "auto.offset.reset": "earliest"}))
    cons.subscribe(["before"])
    rest = []
    deadline = time.monotonic() + 60
    while len(rest) < 40 and time.monotonic() < deadline:
        for m in cons.consume(100, timeout=1):
            assert m.error() is None, m.error()
            rest.append(m.value())
    cons.close()
    assert len(rest) == 40, f"after the restart the group resumed with {len(rest)} of 40"
    from confluent_kafka import OFFSET_BEGINNING, TopicPartition

    cons = Consumer(dict(c.config(), **{"group.id": "restart-verify"}))
    cons.assign([TopicPartition("after", i, OFFSET_BEGINNING) for i in range(2)])
    vals = []
    deadline = time.monotonic() + 60
    while len(vals) < 100 and time.monotonic() < deadline:
        for m in cons.consume(200, timeout=1):
            assert m.error() is None, m.error()
            vals.append(m.value())
    cons.close()
    assert sorted(vals) == sorted(f"after-{i}".encode() for i in range(100))


@pytest.mark.timeout(180, method="signal")
def test_two_core_brokers_keep_core_0_for_the_controller(broker, tmp_path):
    """With two cores, core 0 runs the controller and takes connections; every partition
    (and its Raft group) lives on core 1, reached over the cross-core mesh."""
    if (os.cpu_count() or 1) < 2:
        pytest.skip("needs 2 CPUs")
    c = Cluster(broker, tmp_path, cores=2)
    c.create_topic("cores", 4)
    from confluent_kafka import Producer

    p = Producer(c.config({"acks": "all", "enable.idempotence": True}))
    for i in range(400):
        p.produce("cores", value=f"{i % 4}:{i // 4}".encode(), partition=i % 4)
    assert p.flush(60) == 0
    got = consume_all(c, "cores", 4)
    for part in range(4):
        assert [s for (s, _o) in got[part]] == list(range(100)), part
    for b in c.brokers:
        text = b.stderr_paths[-1].read_text(errors="replace")
        opened = [ln for ln in text.splitlines() if "opened partition" in ln and "cores-" in ln]
        assert opened, f"{b} opened no partition of the topic"
        assert all("shard=1" in ln for ln in opened), opened


@pytest.mark.persistence
@pytest.mark.timeout(240, method="signal")
def test_group_survives_the_loss_of_its_coordinator(broker, tmp_path):
    """A consumer group's coordinator is the leader of its __consumer_offsets partition: kill
    -9 that broker while the group consumes; the group finds the new leader, keeps its
    committed offsets and consumes the rest, and nothing committed is read twice."""
    from confluent_kafka import Consumer, Producer

    c = Cluster(broker, tmp_path)
    c.create_topic("work", 3)
    p = Producer(c.config({"acks": "all", "enable.idempotence": True}))
    for i in range(600):
        p.produce("work", value=str(i).encode(), partition=i % 3)
    assert p.flush(60) == 0

    def consumer():
        return Consumer(c.config({"group.id": "survivors", "auto.offset.reset": "earliest",
                                  "enable.auto.commit": False, "session.timeout.ms": 6000}))

    cons = consumer()
    cons.subscribe(["work"])
    first = []
    deadline = time.monotonic() + 60
    while len(first) < 300 and time.monotonic() < deadline:
        for m in cons.consume(300 - len(first), timeout=1):
            assert m.error() is None, m.error()
            first.append(int(m.value()))
    cons.commit(asynchronous=False)
    cons.close()
    assert len(first) == 300

    # Which broker coordinates the group: the one the FindCoordinator answer names.
    from confluent_kafka.admin import AdminClient
    a = AdminClient(c.config())
    desc = a.describe_consumer_groups(["survivors"])["survivors"].result(30)
    coordinator = desc.coordinator.id
    c.node(coordinator).kill9()

    live = [n for n in (1, 2, 3) if n != coordinator]
    rest = []
    deadline = time.monotonic() + 90
    cons = Consumer({"bootstrap.servers": ",".join(c.node(n).bootstrap for n in live),
                     "broker.address.family": "v4", "group.id": "survivors",
                     "auto.offset.reset": "earliest", "enable.auto.commit": False})
    cons.subscribe(["work"])
    while len(rest) < 300 and time.monotonic() < deadline:
        for m in cons.consume(300 - len(rest), timeout=1):
            assert m.error() is None, m.error()
            rest.append(int(m.value()))
    cons.commit(asynchronous=False)
    cons.close()
    assert sorted(first + rest) == list(range(600)), (
        f"{len(rest)} after the coordinator's loss; duplicates "
        f"{sorted(set(first) & set(rest))[:10]}"
    )


@pytest.mark.timeout(180, method="signal")
def test_retry_of_an_acknowledged_batch_after_failover_gets_its_original_offset(broker, tmp_path):
    """An idempotent batch acknowledged by a leader that then dies, retried byte for byte on
    the new leader: it was written in the old term, is recognised as a duplicate and answered
    with its original offset (not refused, not written twice)."""
    from test_idempotence import batch, connect, init_producer_id, parse_produce_v3, produce_body

    c = Cluster(broker, tmp_path)
    leader = c.create_topic("dup", 1)[0]
    s = connect(c.node(leader))
    pid, epoch = init_producer_id(s)
    frame = produce_body("dup", 0, batch(pid, epoch, 0, [b"a", b"b", b"c"]))
    err, base = parse_produce_v3(raw_call(s, 0, 3, 2, frame))
    s.close()
    assert err == 0, err
    c.node(leader).kill9()
    new = c.wait_leaders("dup", 1, avoid=(leader,))[0]
    deadline = time.monotonic() + 30
    corr = 10
    while True:
        s = connect(c.node(new))
        try:
            err, base2 = parse_produce_v3(raw_call(s, 0, 3, corr, frame))
        finally:
            s.close()
        corr += 1
        if err == 0 or time.monotonic() > deadline:
            break
        time.sleep(0.3)
    assert (err, base2) == (0, base), f"retry answered {err} at {base2}, original {base}"
    got = consume_all_values(c, "dup")
    assert got == [b"a", b"b", b"c"], got


def consume_all_values(cluster: Cluster, topic: str) -> list[bytes]:
    from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition

    cons = Consumer(cluster.config({"group.id": f"v-{time.time()}", "enable.auto.commit": False}))
    cons.assign([TopicPartition(topic, 0, OFFSET_BEGINNING)])
    out = []
    idle = 0
    while idle < 3:
        msgs = cons.consume(100, timeout=1)
        idle = 0 if msgs else idle + 1
        for m in msgs:
            assert m.error() is None, m.error()
            out.append(m.value())
    cons.close()
    return out


@pytest.mark.timeout(180, method="signal")
def test_acks_1_and_offset_for_leader_epoch_across_a_leader_change(broker, tmp_path):
    """acks=1 is answered after the leader's own flush and the data is readable once
    committed; OffsetForLeaderEpoch on the new leader ends the old epoch where the new one
    starts, and fences a client that names an older current epoch."""
    from confluent_kafka import Producer

    c = Cluster(broker, tmp_path)
    leader = c.create_topic("epochs", 1)[0]
    p = Producer(c.config({"acks": "1"}))
    for i in range(50):
        p.produce("epochs", value=f"one-{i}".encode(), partition=0)
    assert p.flush(30) == 0
    assert len(consume_all_values(c, "epochs")) == 50

    def epoch_end(node, current, requested):
        # OffsetForLeaderEpoch v2: topics [name, partitions [partition, current_leader_epoch,
        # leader_epoch]] -> throttle, topics [name, partitions [error, partition,
        # leader_epoch, end_offset]].
        import socket
        t = b"epochs"
        body = (struct.pack(">i", 1) + struct.pack(">h", len(t)) + t + struct.pack(">i", 1)
                + struct.pack(">iii", 0, current, requested))
        host, port = c.node(node).bootstrap.split(":")
        with socket.create_connection((host, int(port)), timeout=10) as s:
            s.settimeout(10)
            resp = raw_call(s, 23, 2, 5, body)
        at = 4 + 4 + 2 + len(t) + 4
        err, _part, epoch, end = struct.unpack_from(">hiiq", resp, at)
        return err, epoch, end

    err, epoch1, end1 = epoch_end(leader, -1, 1)
    assert err == 0 and epoch1 == 1, (err, epoch1)
    c.node(leader).kill9()
    new = c.wait_leaders("epochs", 1, avoid=(leader,))[0]
    deadline = time.monotonic() + 20
    while True:
        err, epoch, end = epoch_end(new, -1, 1)
        if err == 0 or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    # Epoch 1 ended where the new leader's epoch began: after everything written in it.
    assert err == 0 and epoch == 1 and end >= 50, (err, epoch, end)
    err, _e, _o = epoch_end(new, 1, 1)
    assert err == 74, f"an older current epoch should be FENCED_LEADER_EPOCH, got {err}"
