"""The Kafka error codes clients get for requests the broker must refuse.

CreateTopics: an invalid name (INVALID_TOPIC_EXCEPTION), a bad config value (INVALID_CONFIG),
an impossible replication factor (INVALID_REPLICATION_FACTOR), a zero partition count
(INVALID_PARTITIONS), an existing name (TOPIC_ALREADY_EXISTS). Produce: a batch larger than the
topic's max.message.bytes (MESSAGE_TOO_LARGE), with the broker serving the next message fine.
AlterConfigs with an unknown config name (INVALID_CONFIG), and a placement report for every
partition in DescribeConfigs.
"""

from __future__ import annotations

import pytest
from confluent_kafka import KafkaError, KafkaException, Producer
from confluent_kafka.admin import AdminClient, ConfigResource, NewTopic


def create_error(admin: AdminClient, topic: NewTopic) -> int | None:
    fut = admin.create_topics([topic], request_timeout=20)[topic.topic]
    try:
        fut.result(timeout=30)
        return None
    except KafkaException as e:
        return e.args[0].code()


def test_create_topics_errors(broker):
    b = broker(cores=2)
    admin = AdminClient({"bootstrap.servers": b.bootstrap})
    assert create_error(admin, NewTopic("bad/name", 1, 1)) == KafkaError.TOPIC_EXCEPTION
    assert create_error(admin, NewTopic("x" * 250, 1, 1)) == KafkaError.TOPIC_EXCEPTION
    assert (
        create_error(admin, NewTopic("badcfg", 1, 1, config={"retention.ms": "soon"}))
        == KafkaError.INVALID_CONFIG
    )
    assert (
        create_error(admin, NewTopic("badcfg2", 1, 1, config={"no.such.config": "1"}))
        == KafkaError.INVALID_CONFIG
    )
    assert create_error(admin, NewTopic("rf3", 1, 3)) == KafkaError.INVALID_REPLICATION_FACTOR
    assert create_error(admin, NewTopic("ok", 3, 1)) is None
    assert create_error(admin, NewTopic("ok", 3, 1)) == KafkaError.TOPIC_ALREADY_EXISTS
    md = admin.list_topics(timeout=10)
    assert "ok" in md.topics and len(md.topics["ok"].partitions) == 3
    assert not {"bad/name", "badcfg", "badcfg2", "rf3"} & set(md.topics)


def test_message_too_large_and_then_fine(broker):
    b = broker(cores=1)
    admin = AdminClient({"bootstrap.servers": b.bootstrap})
    assert create_error(admin, NewTopic("small", 1, 1, config={"max.message.bytes": "10000"})) is None
    p = Producer({"bootstrap.servers": b.bootstrap, "acks": "all", "enable.idempotence": False,
                  "linger.ms": 0, "batch.size": 1_000_000, "message.send.max.retries": 0})
    results = []

    def cb(err, msg):
        results.append((err.code() if err else None, msg.offset()))

    p.produce("small", value=b"x" * 50_000, on_delivery=cb)
    p.flush(30)
    p.produce("small", value=b"fits", on_delivery=cb)
    p.flush(30)
    assert results[0][0] == KafkaError.MSG_SIZE_TOO_LARGE, results
    assert results[1] == (None, 0), results


def test_alter_unknown_config_and_placement(broker):
    b = broker(cores=2)
    admin = AdminClient({"bootstrap.servers": b.bootstrap})
    assert create_error(admin, NewTopic("placed", 4, 1)) == None  # noqa: E711
    res = ConfigResource("topic", "placed", set_config={"no.such.config": "1"})
    fut = admin.alter_configs([res], request_timeout=20)[res]
    with pytest.raises(KafkaException) as e:
        fut.result(timeout=30)
    assert e.value.args[0].code() == KafkaError.INVALID_CONFIG
    desc = admin.describe_configs([ConfigResource("topic", "placed")])[ConfigResource("topic", "placed")]
    configs = desc.result(timeout=30)
    placement = configs["ringlog.partition.cores"].value
    cores = dict(p.split(":") for p in placement.split(","))
    assert sorted(cores) == ["0", "1", "2", "3"], placement
    # Balanced over the 2 cores.
    assert sorted(cores.values()) == ["0", "0", "1", "1"], placement
