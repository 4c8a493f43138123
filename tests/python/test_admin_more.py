"""CreatePartitions, IncrementalAlterConfigs and ListOffsets by timestamp, with confluent-kafka.

CreatePartitions grows a topic (new partitions take data, are placed over both cores) and
refuses to shrink it (INVALID_PARTITIONS). IncrementalAlterConfigs SETs and DELETEs a topic
override, read back with DescribeConfigs. ListOffsets by timestamp (offsets_for_times) gives the
first offset whose timestamp is at or after the one asked, and the end for a later time.
"""

from __future__ import annotations

from confluent_kafka import Consumer, KafkaError, KafkaException, Producer, TopicPartition
from confluent_kafka.admin import (
    AdminClient,
    AlterConfigOpType,
    ConfigEntry,
    ConfigResource,
    NewPartitions,
    NewTopic,
)

T0 = 1_720_000_000_000


def wait(futs: dict):
    for f in futs.values():
        f.result(timeout=30)


def test_create_partitions(broker):
    b = broker(cores=2)
    admin = AdminClient({"bootstrap.servers": b.bootstrap})
    wait(admin.create_topics([NewTopic("grow", 2, 1)], request_timeout=20))
    wait(admin.create_partitions([NewPartitions("grow", 6)], request_timeout=20))
    md = admin.list_topics(timeout=10)
    assert len(md.topics["grow"].partitions) == 6
    p = Producer({"bootstrap.servers": b.bootstrap, "acks": "all", "enable.idempotence": False})
    got = []
    p.produce("grow", value=b"to-5", partition=5, on_delivery=lambda e, m: got.append((e, m.offset())))
    p.flush(30)
    assert got == [(None, 0)], got
    f = admin.create_partitions([NewPartitions("grow", 3)], request_timeout=20)["grow"]
    try:
        f.result(timeout=30)
        raise AssertionError("shrinking a topic must fail")
    except KafkaException as e:
        assert e.args[0].code() == KafkaError.INVALID_PARTITIONS
    res = ConfigResource("topic", "grow")
    placement = admin.describe_configs([res])[res].result(timeout=30)["ringlog.partition.cores"].value
    cores = [c.split(":")[1] for c in placement.split(",")]
    assert len(cores) == 6 and set(cores) == {"0", "1"}, placement


def test_incremental_alter_configs(broker):
    b = broker(cores=1)
    admin = AdminClient({"bootstrap.servers": b.bootstrap})
    wait(admin.create_topics([NewTopic("inc", 1, 1)], request_timeout=20))
    res = ConfigResource("topic", "inc")

    def value(name):
        return admin.describe_configs([res])[res].result(timeout=30)[name].value

    default_retention = value("retention.ms")
    set_res = ConfigResource(
        "topic",
        "inc",
        incremental_configs=[
            ConfigEntry("retention.ms", "12345", incremental_operation=AlterConfigOpType.SET),
            ConfigEntry("cleanup.policy", "compact", incremental_operation=AlterConfigOpType.SET),
        ],
    )
    wait(admin.incremental_alter_configs([set_res]))
    assert value("retention.ms") == "12345"
    assert value("cleanup.policy") == "compact"
    del_res = ConfigResource(
        "topic",
        "inc",
        incremental_configs=[
            ConfigEntry("retention.ms", None, incremental_operation=AlterConfigOpType.DELETE)
        ],
    )
    wait(admin.incremental_alter_configs([del_res]))
    assert value("retention.ms") == default_retention
    assert value("cleanup.policy") == "compact", "other overrides stay"


def test_list_offsets_by_timestamp(broker):
    b = broker(cores=2)
    p = Producer({"bootstrap.servers": b.bootstrap, "acks": "all", "enable.idempotence": False,
                  "linger.ms": 20})
    for i in range(100):
        p.produce("times", value=b"%d" % i, partition=0, timestamp=T0 + i * 10)
    assert p.flush(30) == 0
    c = Consumer({"bootstrap.servers": b.bootstrap, "group.id": "lo", "enable.auto.commit": False})
    try:
        # One partition per call: a request names each partition once.
        got = [
            c.offsets_for_times([TopicPartition("times", 0, ts)], timeout=20)[0].offset
            for ts in (T0 + 500, T0 + 505, T0 - 1, T0 + 10_000)
        ]
        assert got == [50, 51, 0, -1], got
        lo, hi = c.get_watermark_offsets(TopicPartition("times", 0), timeout=20)
        assert (lo, hi) == (0, 100)
    finally:
        c.close()
