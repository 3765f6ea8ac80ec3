"""Kafka topics for tests and benchmarks: create, delete, produce to, read from the start."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

CLIENT_ID = "mindstream-tests"


def create_topics(bootstrap: str, partitions_by_topic: dict[str, int], compact: Iterable[str] = ()) -> None:
    """Create topics (replication factor 1; those in `compact` log-compacted) and wait for their metadata.

    Waiting spares the first producer a round of LEADER_NOT_AVAILABLE retries.
    """
    from kafka import KafkaAdminClient

    compact = set(compact)
    admin = KafkaAdminClient(bootstrap_servers=bootstrap, client_id=CLIENT_ID)
    try:
        admin.create_topics(
            {
                name: {
                    "num_partitions": count,
                    "replication_factor": 1,
                    "configs": {"cleanup.policy": "compact"} if name in compact else {},
                }
                for name, count in partitions_by_topic.items()
            },
            wait_for_metadata=True,
        )
    finally:
        admin.close()


def delete_topics(bootstrap: str, topics: Iterable[str]) -> None:
    """Delete topics; ones already gone are fine (best effort cleanup on a shared broker)."""
    from kafka import KafkaAdminClient
    from kafka.errors import UnknownTopicOrPartitionError

    topics = list(topics)
    if not topics:
        return
    admin = KafkaAdminClient(bootstrap_servers=bootstrap, client_id=CLIENT_ID)
    try:
        admin.delete_topics(topics)
    except UnknownTopicOrPartitionError:
        pass
    finally:
        admin.close()


def produce(bootstrap: str, topic: str, messages: Sequence[tuple[bytes | None, bytes]],
            **options: Any) -> None:
    """Send (key, value) pairs to `topic` with acks=all and wait until all are written.

    `options` go to KafkaProducer (e.g. linger_ms, batch_size for large streams).
    """
    from kafka import KafkaProducer

    producer = KafkaProducer(bootstrap_servers=bootstrap, acks="all", **options)
    try:
        for key, value in messages:
            producer.send(topic, key=key, value=value)
        producer.flush(timeout=120)
    finally:
        producer.close()


def read_topic(bootstrap: str, topic: str, idle_ms: int = 2000) -> list:
    """Every message of `topic` from the start (kafka-python ConsumerRecords), ending after `idle_ms` of
    quiet."""
    from kafka import KafkaConsumer

    consumer = KafkaConsumer(topic, bootstrap_servers=bootstrap, auto_offset_reset="earliest",
                             consumer_timeout_ms=idle_ms, enable_auto_commit=False)
    try:
        return list(consumer)
    finally:
        consumer.close()
