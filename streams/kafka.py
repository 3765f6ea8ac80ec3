"""Every kafka-python client of the project: topic admin, reading a topic to its end, committed lag.

The worker itself reads and writes through faust (aiokafka); these are the side paths: the CLI creating
topics and producing, `streams.ops` replaying topics, the stall watchdog asking the broker for offsets.
Problems the user can fix (no broker, a missing topic) raise `UserError` with one line.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

from streams.config import Settings, UserError

READ_TIMEOUT_S = 120.0  # ceiling for reading a topic to its end offsets (a broker that stops answering)


def changelog_topic(app_id: str, table: str) -> str:
    """The changelog topic faust keeps for table `table` of app `app_id` (its keys are JSON strings)."""
    return f"{app_id}-{table}-changelog"


def key_text(key: bytes | str | None) -> str:
    """A message key as text (user ids are UTF-8)."""
    return key.decode("utf-8", "replace") if isinstance(key, bytes) else str(key or "")


def ensure_topics(settings: Settings) -> None:
    """Create the project's topics if missing: inputs with `partitions` partitions, user-profiles compacted.

    Raises UserError when no broker answers, or when an input topic has another partition count than
    MINDSTREAM_PARTITIONS (faust refuses inputs whose count differs from the tables' changelogs).
    """
    from kafka.admin import NewTopic
    from kafka.errors import KafkaError, TopicAlreadyExistsError

    admin = _admin(settings)
    try:
        existing = set(admin.list_topics())
        wanted = [
            NewTopic(settings.topic_interactions, settings.partitions, settings.replication,
                     topic_configs=settings.topic_configs),
            NewTopic(settings.topic_profiles, settings.partitions, settings.replication,
                     topic_configs={"cleanup.policy": "compact", **settings.topic_configs}),
            NewTopic(settings.topic_updates, settings.partitions, settings.replication,
                     topic_configs=settings.topic_configs),
            NewTopic(settings.topic_dlq, 1, settings.replication, topic_configs=settings.topic_configs),
        ]
        missing = [t for t in wanted if t.name not in existing]
        if missing:
            try:
                admin.create_topics(missing)
            except TopicAlreadyExistsError:
                pass  # another process won the race
    except KafkaError as exc:
        raise UserError(f"creating topics on {settings.kafka_bootstrap} failed: {exc}") from None
    finally:
        admin.close()
    _check_partitions(settings, [t.name for t in wanted[:2] if t.name in existing])


def _check_partitions(settings: Settings, topics: list[str]) -> None:
    if not topics:
        return
    from kafka import KafkaConsumer

    consumer = KafkaConsumer(**settings.kafka_python_kwargs())
    try:
        for topic in topics:
            count = len(consumer.partitions_for_topic(topic) or ())
            if count and count != settings.partitions:
                raise UserError(f"topic {topic} has {count} partitions but MINDSTREAM_PARTITIONS is "
                                f"{settings.partitions}; pass --partitions {count} "
                                f"(the table changelogs must match the input topics)")
    finally:
        consumer.close()


def producer(settings: Settings) -> Any:
    """A kafka-python producer (acks=all) for the CLI; UserError when no broker answers."""
    from kafka import KafkaProducer
    from kafka.errors import KafkaError

    try:
        return KafkaProducer(acks="all", enable_idempotence=True, linger_ms=5,
                             **settings.kafka_python_kwargs())
    except KafkaError:
        raise UserError(f"no Kafka broker answers at {settings.kafka_bootstrap}") from None


def topic_exists(settings: Settings, topic: str) -> bool:
    from kafka import KafkaConsumer

    consumer = KafkaConsumer(**settings.kafka_python_kwargs())
    try:
        return topic in consumer.topics()
    finally:
        consumer.close()


def read_to_end(settings: Settings, topic: str, timeout_s: float = READ_TIMEOUT_S) -> Iterator[Any]:
    """Every record of `topic` from its first offset up to the end offsets seen at the start, each partition
    in offset order. No consumer group: nothing is committed, the worker's group is untouched."""
    from kafka import KafkaConsumer, TopicPartition
    from kafka.errors import KafkaError

    try:
        consumer = KafkaConsumer(enable_auto_commit=False, group_id=None, **settings.kafka_python_kwargs())
    except KafkaError:
        raise UserError(f"no Kafka broker answers at {settings.kafka_bootstrap}; "
                        f"set KAFKA_BOOTSTRAP / --bootstrap") from None
    try:
        if topic not in consumer.topics():
            raise UserError(f"topic {topic} does not exist at {settings.kafka_bootstrap}; "
                            f"check the topic / app id")
        partitions = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic) or ())]
        consumer.assign(partitions)
        consumer.seek_to_beginning(*partitions)
        end = consumer.end_offsets(partitions)
        deadline = time.monotonic() + timeout_s
        remaining = {tp for tp in partitions if consumer.position(tp) < end[tp]}
        while remaining:
            if time.monotonic() > deadline:
                raise UserError(f"reading {topic} did not reach its end offsets within {timeout_s:g} s")
            for tp, records in consumer.poll(timeout_ms=500, max_records=5000).items():
                for record in records:
                    if record.offset < end[tp]:
                        yield record
            remaining = {tp for tp in remaining if consumer.position(tp) < end[tp]}
    finally:
        consumer.close()


def last_values(settings: Settings, topic: str, *, json_keys: bool = False) -> dict[str, Any]:
    """A compacted topic as a dict: user id → its last JSON value; a null value (tombstone) deletes.

    Values that are not JSON objects are skipped (the worker dead-letters them too). `json_keys`: the keys
    are JSON strings, as faust writes table changelogs (`b'"u42"'`).
    """
    table: dict[str, Any] = {}
    for record in read_to_end(settings, topic):
        key = key_text(record.key)
        if json_keys:
            try:
                key = str(json.loads(key))
            except json.JSONDecodeError:
                pass
        if record.value is None:
            table.pop(key, None)
            continue
        try:
            value = json.loads(record.value)
        except (UnicodeDecodeError, json.JSONDecodeError, RecursionError):
            continue
        if isinstance(value, dict):
            table[key] = value
    return table


def _admin(settings: Settings) -> Any:
    """A kafka-python admin client; UserError with one line when no broker answers."""
    from kafka import KafkaAdminClient
    from kafka.errors import KafkaError

    try:
        return KafkaAdminClient(client_id="mind-stream", request_timeout_ms=15000,
                                **settings.kafka_python_kwargs())
    except KafkaError:
        raise UserError(f"no Kafka broker answers at {settings.kafka_bootstrap}; start one (make kafka-up) "
                        f"or set KAFKA_BOOTSTRAP / --bootstrap") from None


def group_is_active(settings: Settings) -> bool:
    """Whether the workers' consumer group (the app id) has members now, i.e. workers are running."""
    admin = _admin(settings)
    try:
        groups = admin.list_groups()
    finally:
        admin.close()
    return any(g.get("group_id") == settings.app_id and g.get("group_state") not in ("Empty", "Dead")
               for g in groups)


class CommittedLag:
    """Per partition of a topic: end offset minus the consumer group's committed offset, as the broker has
    them. One kafka-python consumer that never joins the group (it only reads offsets), opened lazily."""

    def __init__(self, settings: Settings, topic: str) -> None:
        self._settings = settings
        self._topic = topic
        self._reader: Any = None

    def __call__(self, partitions: list[int]) -> dict[int, int]:
        """Blocking; raises kafka-python's errors when the broker does not answer."""
        from kafka import KafkaConsumer, TopicPartition

        if self._reader is None:
            self._reader = KafkaConsumer(group_id=self._settings.app_id, enable_auto_commit=False,
                                         **self._settings.kafka_python_kwargs())
        tps = [TopicPartition(self._topic, p) for p in partitions]
        ends = self._reader.end_offsets(tps)
        return {tp.partition: max(0, end - (self._reader.committed(tp) or 0)) for tp, end in ends.items()}

    def close(self) -> None:
        if self._reader is not None:
            self._reader.close()
            self._reader = None
