"""kafka-python (pure Python client, 2.3.x) against the broker.

Admin: CreateTopics with a topic config, Metadata (list_topics / describe_topics; kafka-python
2.3 asks Metadata v8 with include_*_authorized_operations=true and decodes the returned bit
fields into ACL operations, so the broker must answer them as Kafka does: the set of operations
allowed, not -2147483648), DescribeConfigs, AlterConfigs (legacy, non-incremental) of
retention.ms read back with DescribeConfigs, DeleteTopics, and re-creating a deleted name gives
an empty topic.

Data: KafkaProducer (acks=all, gzip and uncompressed) with keys, headers and timestamps to
explicit partitions; KafkaConsumer with assign() and no group reads everything back in order.
"""

from __future__ import annotations

import time

from kafka import KafkaConsumer, KafkaProducer, TopicPartition
from kafka.admin import ConfigResource, ConfigResourceType, KafkaAdminClient, NewTopic

BASE_TS = 1_710_000_000_000


def admin_client(b) -> KafkaAdminClient:
    return KafkaAdminClient(
        bootstrap_servers=b.bootstrap, client_id="ringlog-it-admin", request_timeout_ms=30_000
    )


def topic_configs(admin: KafkaAdminClient, topic: str, keys=None) -> dict[str, str | None]:
    """DescribeConfigs of one topic: {name: value}. `keys` None asks for all configs."""
    res = ConfigResource(
        ConfigResourceType.TOPIC, topic, configs=None if keys is None else {k: None for k in keys}
    )
    responses = admin.describe_configs([res])
    assert len(responses) == 1, responses
    resources = responses[0].resources
    assert len(resources) == 1, resources
    # (error_code, error_message, resource_type, resource_name, config_entries);
    # config entry: (name, value, read_only, is_default | config_source, is_sensitive, ...)
    error_code, error_message, resource_type, resource_name, entries = resources[0][:5]
    assert error_code == 0, (error_code, error_message)
    assert resource_type == ConfigResourceType.TOPIC.value, resource_type
    assert resource_name == topic, resource_name
    return {e[0]: e[1] for e in entries}


def wait_for(pred, what: str, timeout: float = 15):
    deadline = time.monotonic() + timeout
    while True:
        v = pred()
        if v:
            return v
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.2)


def test_admin_topics_and_configs(broker):
    b = broker(cores=2)
    admin = admin_client(b)
    try:
        name = "kp-admin"
        admin.create_topics(
            [
                NewTopic(
                    name,
                    num_partitions=3,
                    replication_factor=1,
                    topic_configs={"retention.ms": "3600000"},
                )
            ],
            timeout_ms=30_000,
        )  # raises on a non-zero topic error code

        wait_for(lambda: name in admin.list_topics(), f"{name} in list_topics")
        [desc] = admin.describe_topics([name])
        assert desc["error_code"] == 0, desc
        assert desc["topic"] == name and not desc["is_internal"], desc
        parts = sorted(desc["partitions"], key=lambda p: p["partition"])
        assert [p["partition"] for p in parts] == [0, 1, 2], desc
        cluster = admin.describe_cluster()
        assert [(x["host"], x["port"]) for x in cluster["brokers"]] == [(b.host, b.port)], cluster
        node_id = cluster["brokers"][0]["node_id"]
        assert cluster["controller_id"] == node_id, cluster
        for p in parts:
            assert p["error_code"] == 0, p
            assert p["leader"] == node_id and p["replicas"] == [node_id], p
            assert p["isr"] == [node_id], p

        # The config given at creation is there.
        assert topic_configs(admin, name).get("retention.ms") == "3600000"
        assert topic_configs(admin, name, keys=["retention.ms"]) == {"retention.ms": "3600000"}

        # AlterConfigs (legacy) sets retention.ms; DescribeConfigs reads it back.
        resp = admin.alter_configs(
            [ConfigResource(ConfigResourceType.TOPIC, name, configs={"retention.ms": "7200000"})]
        )
        # resources: (error_code, error_message, resource_type, resource_name)
        assert [(r[0], r[3]) for r in resp.resources] == [(0, name)], resp
        assert topic_configs(admin, name, keys=["retention.ms"]) == {"retention.ms": "7200000"}
        assert topic_configs(admin, name)["retention.ms"] == "7200000"

        # Another topic is unaffected.
        other = "kp-other"
        admin.create_topics([NewTopic(other, num_partitions=1, replication_factor=1)])
        assert topic_configs(admin, other, keys=["retention.ms"]).get("retention.ms") != "7200000"

        # DeleteTopics: gone from Metadata.
        admin.delete_topics([name], timeout_ms=30_000)
        wait_for(lambda: name not in admin.list_topics(), f"{name} gone from list_topics")
        assert other in admin.list_topics()
    finally:
        admin.close()


def test_delete_then_recreate_is_empty(broker):
    b = broker(cores=1)
    admin = admin_client(b)
    name = "kp-recreate"
    try:
        admin.create_topics([NewTopic(name, num_partitions=1, replication_factor=1)])
        producer = KafkaProducer(bootstrap_servers=b.bootstrap, acks="all")
        for i in range(10):
            producer.send(name, value=f"old-{i}".encode(), partition=0).get(timeout=30)
        producer.close(timeout=10)

        admin.delete_topics([name], timeout_ms=30_000)
        wait_for(lambda: name not in admin.list_topics(), f"{name} deleted")
        admin.create_topics([NewTopic(name, num_partitions=1, replication_factor=1)])
        wait_for(lambda: name in admin.list_topics(), f"{name} re-created")

        consumer = KafkaConsumer(
            bootstrap_servers=b.bootstrap, group_id=None, enable_auto_commit=False
        )
        try:
            tp = TopicPartition(name, 0)
            assert consumer.beginning_offsets([tp]) == {tp: 0}
            assert consumer.end_offsets([tp]) == {tp: 0}, "re-created topic must be empty"
        finally:
            consumer.close()
    finally:
        admin.close()


def test_produce_consume(broker):
    b = broker(cores=2)
    admin = admin_client(b)
    topic = "kp-data"
    partitions = 3
    try:
        admin.create_topics([NewTopic(topic, num_partitions=partitions, replication_factor=1)])
    finally:
        admin.close()

    expected: dict[int, list] = {p: [] for p in range(partitions)}
    for codec in (None, "gzip"):
        producer = KafkaProducer(
            bootstrap_servers=b.bootstrap,
            acks="all",
            linger_ms=5,
            compression_type=codec,
            client_id=f"ringlog-it-{codec}",
        )
        futures = []
        for i in range(600):
            p = i % partitions
            rec = (
                f"{codec}-k{i}".encode(),
                f"{codec} value {i} ".encode() * (1 + i % 5),
                [("i", str(i).encode()), ("codec", str(codec).encode())],
                BASE_TS + i,
            )
            fut = producer.send(
                topic, key=rec[0], value=rec[1], headers=rec[2], timestamp_ms=rec[3], partition=p
            )
            futures.append((p, rec, fut))
        producer.flush(timeout=60)
        for p, rec, fut in futures:
            md = fut.get(timeout=30)
            assert md.partition == p, md
            assert md.offset == len(expected[p]), (md, len(expected[p]))
            expected[p].append(rec)
        producer.close(timeout=10)

    consumer = KafkaConsumer(
        bootstrap_servers=b.bootstrap,
        group_id=None,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        client_id="ringlog-it-consumer",
    )
    try:
        tps = [TopicPartition(topic, p) for p in range(partitions)]
        consumer.assign(tps)
        consumer.seek_to_beginning()
        assert consumer.end_offsets(tps) == {tp: len(expected[tp.partition]) for tp in tps}
        got: dict[int, list] = {p: [] for p in range(partitions)}
        total = sum(len(v) for v in expected.values())
        deadline = time.monotonic() + 60
        while sum(len(v) for v in got.values()) < total and time.monotonic() < deadline:
            for tp, records in consumer.poll(timeout_ms=500, max_records=1000).items():
                for r in records:
                    got[tp.partition].append(
                        (r.offset, r.key, r.value, list(r.headers), r.timestamp, r.timestamp_type)
                    )
        for p in range(partitions):
            want = [
                (o, k, v, h, ts, 0)  # timestamp_type 0 = CreateTime
                for o, (k, v, h, ts) in enumerate(expected[p])
            ]
            assert len(got[p]) == len(want), (p, len(got[p]), len(want))
            for g, w in zip(got[p], want, strict=True):
                assert g == w, (p, g, w)
    finally:
        consumer.close()
