"""The 3-broker cluster scenarios' shared parts (tests/test_cluster_*.py): production topics, what the
cluster says about them, a rate-limited idempotent producer, and the end check of every user."""

from __future__ import annotations

import os
import threading
import time

import pytest

from support.synthetic_stream import (
    check_histories,
    count_mismatches,
    expected_vectors,
    stored_vectors_of,
)
from support.worker import Worker, committed_lag, dlq_messages, worker_env

PARTITIONS = 4
PRODUCTION = {"MINDSTREAM_REPLICATION": "3", "MINDSTREAM_MIN_INSYNC_REPLICAS": "2"}


def scenario_env(bootstrap: str, tmp_path, milvus_uri: str, partitions: int = PARTITIONS,
                 **extra: str) -> dict[str, str]:
    """The workers' settings shared by the cluster scenarios: a Milvus server, `partitions` partitions,
    batches of 128 and a 10 s stall timeout (plus `extra`)."""
    return worker_env(bootstrap, tmp_path, MINDSTREAM_MILVUS_URI=milvus_uri,
                      MINDSTREAM_PARTITIONS=str(partitions), MINDSTREAM_BATCH_SIZE="128",
                      MINDSTREAM_STALL_TIMEOUT_S="10", **extra)


only_with_more_time = pytest.mark.skipif(
    os.environ.get("MINDSTREAM_CLUSTER") != "1",
    reason="more cluster scenarios: make test-cluster (MINDSTREAM_CLUSTER=1)",
)


def create_production_topics(bootstrap: str, env: dict[str, str], partitions: int = PARTITIONS) -> None:
    """The worker's topics as `mind-stream` creates them on a cluster: 3 replicas, min.insync.replicas 2."""
    from kafka import KafkaAdminClient
    from kafka.admin import NewTopic

    configs = {"min.insync.replicas": env["MINDSTREAM_MIN_INSYNC_REPLICAS"]}
    rf = int(env["MINDSTREAM_REPLICATION"])
    admin = KafkaAdminClient(bootstrap_servers=bootstrap, client_id="mindstream-tests")
    try:
        admin.create_topics(
            [
                NewTopic(env["MINDSTREAM_TOPIC_INTERACTIONS"], partitions, rf, topic_configs=configs),
                NewTopic(
                    env["MINDSTREAM_TOPIC_PROFILES"],
                    partitions,
                    rf,
                    topic_configs={"cleanup.policy": "compact", **configs},
                ),
                NewTopic(env["MINDSTREAM_TOPIC_UPDATES"], partitions, rf, topic_configs=configs),
                NewTopic(env["MINDSTREAM_TOPIC_DLQ"], 1, rf, topic_configs=configs),
            ],
            wait_for_metadata=True,
        )
    finally:
        admin.close()


def describe(bootstrap: str, topic: str) -> dict[int, dict]:
    """partition -> {"leader": broker id, "replicas": [...], "isr": [...]} as the cluster has it now."""
    from kafka import KafkaAdminClient

    admin = KafkaAdminClient(bootstrap_servers=bootstrap, client_id="mindstream-tests")
    try:
        (found,) = admin.describe_topics([topic])
    finally:
        admin.close()
    return {
        p["partition_index"]: {
            "leader": p["leader_id"],
            "replicas": p["replica_nodes"],
            "isr": p["isr_nodes"],
        }
        for p in found["partitions"]
    }


def topic_config(bootstrap: str, topic: str, key: str) -> str:
    from kafka import KafkaAdminClient
    from kafka.admin import ConfigResource, ConfigResourceType

    admin = KafkaAdminClient(bootstrap_servers=bootstrap, client_id="mindstream-tests")
    try:
        found = admin.describe_configs([ConfigResource(ConfigResourceType.TOPIC, topic)])
    finally:
        admin.close()
    return found["topic"][topic][key]["value"]


def fully_replicated(bootstrap: str, topics: list[str]) -> bool:
    """Every partition of `topics` has all 3 replicas in sync again."""
    try:
        return all(len(p["isr"]) == 3 for t in topics for p in describe(bootstrap, t).values())
    except Exception:  # noqa: BLE001 - metadata while a broker restarts: not yet
        return False


def lag_or_none(worker: Worker) -> int | None:
    try:
        return committed_lag(worker)
    except Exception:  # noqa: BLE001 - the group coordinator is moving to another broker: ask again
        return None


class RateProducer(threading.Thread):
    """Sends `messages` at `rate` per second with acks=all and idempotence, riding out broker failures."""

    def __init__(self, bootstrap: str, topic: str, messages: list[tuple[bytes, bytes]], rate: int) -> None:
        super().__init__(daemon=True)
        self.bootstrap, self.topic, self.messages, self.rate = bootstrap, topic, messages, rate
        self.sent = 0
        self.error: BaseException | None = None

    def run(self) -> None:
        from kafka import KafkaProducer

        try:
            producer = KafkaProducer(
                bootstrap_servers=self.bootstrap,
                acks="all",
                enable_idempotence=True,
                linger_ms=20,
                retries=2_147_483_647,
                delivery_timeout_ms=300_000,
                request_timeout_ms=10_000,
            )
            started = time.monotonic()
            for i, (key, value) in enumerate(self.messages):
                producer.send(self.topic, key=key, value=value)
                self.sent = i + 1
                ahead = started + self.sent / self.rate - time.monotonic()
                if ahead > 0:
                    time.sleep(ahead)
            producer.flush(timeout=300)
            producer.close()
        except BaseException as exc:  # noqa: BLE001 - reported by the test
            self.error = exc


def check_every_user(env: dict[str, str], stream, runtime, figures: dict, title: str) -> None:
    """With the workers stopped: every history from the changelog and every user's stored vectors against the
    offline recompute of `stream`; nothing in the DLQ. Adds the counts to `figures` and prints them."""
    repeated, wrong_history = check_histories(env, stream, runtime.manifest.max_history_length)
    users = sorted(stream.events_of)
    wrong = count_mismatches(stored_vectors_of(env, users), expected_vectors(runtime, stream, users))
    figures.update(
        users_with_repeated_event=repeated,
        users_with_wrong_history=wrong_history,
        users_with_wrong_vectors=len(wrong),
        dlq=len(dlq_messages(env)),
    )
    print(f"\n{title}: {figures}")
    assert repeated == 0 and wrong_history == 0
    assert wrong == [], f"{len(wrong)} users' vectors differ from the offline recompute, e.g. {wrong[:5]}"
    assert figures["dlq"] == 0
