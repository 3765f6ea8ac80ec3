"""Two workers on a 3-broker Kafka cluster (replication factor 3, min.insync.replicas 2, acks=all and
idempotent producers) while brokers fail: (a) the leader of a busy partition is killed -9 mid-stream, (b) a
broker is killed and started again later, (c) all three are restarted one after another. Each ends with 0
events lost, 0 wrong vectors (against an offline recompute) and 0 behaviours applied twice.

(a) runs in `make test`; (b) and (c) carry the `cluster` marker (`make test-cluster`).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import pytest
from support.basics import free_port, unique_name, wait_until
from support.cluster import (
    PARTITIONS,
    PRODUCTION,
    RateProducer,
    check_every_user,
    create_production_topics,
    describe,
    fully_replicated,
    lag_or_none,
    only_with_more_time,
    scenario_env,
    topic_config,
)
from support.milvus import MilvusTcpServer
from support.synthetic_stream import make_stream
from support.worker import Worker, cleanup_topics

from streams.kafka import changelog_topic

pytestmark = pytest.mark.timeout(900)
WAIT_S = 300  # ceiling against hanging (2 shared cores, 3 brokers), not a performance assertion
EVENTS, USERS = 12_000, 1_000
RATE = 600  # events per second: the stream lasts ~20 s, so every disruption lands mid-stream


def run_scenario(
    cluster, artifact_dir: Path, runtime, tmp_path: Path, name: str, disrupt: Callable[[dict[str, str]], dict]
) -> dict:
    """Two workers, a rate-limited stream, `disrupt(env)` once the workers have read 2,000 events; then lag 0
    and the checks. Returns the figures (printed too)."""
    bootstrap = cluster.bootstrap
    server = MilvusTcpServer(tmp_path / "server.db", free_port())
    server.start()
    base = scenario_env(bootstrap, tmp_path, server.uri, MINDSTREAM_APP_ID=unique_name(f"cl{name}"),
                        **PRODUCTION)
    app_id = base["MINDSTREAM_APP_ID"]
    for key, topic in (
        ("INTERACTIONS", "interactions"),
        ("PROFILES", "profiles"),
        ("UPDATES", "updates"),
        ("DLQ", "dlq"),
    ):
        base[f"MINDSTREAM_TOPIC_{key}"] = f"{app_id}-{topic}"
    create_production_topics(bootstrap, base)
    workers = []
    for w in ("a", "b"):
        env = dict(
            base, MINDSTREAM_WEB_PORT=str(free_port()), MINDSTREAM_DATA_DIR=str(tmp_path / f"faust-{w}")
        )
        workers.append(
            Worker(
                env=env, artifact_dir=artifact_dir, log_path=tmp_path / f"worker-{w}.log", own_session=True
            )
        )
    stream = make_stream(list(runtime.item_ids()), USERS, EVENTS, seed_=31, user_prefix=f"c{name}")
    figures: dict = {"scenario": name, "events": EVENTS, "messages": len(stream.messages), "brokers": 3}
    try:
        try:
            for w in workers:
                w.start()
            workers[0].wait_for(
                lambda: all(w.metric_or_zero("mindstream_assigned_partitions") > 0 for w in workers),
                WAIT_S,
                "both workers assigned partitions",
                interval=0.3,
            )
            changelog = changelog_topic(app_id, "histories")
            # The production settings reached the topics faust declares itself, not only those created here.
            figures["changelog_replicas"] = len(describe(bootstrap, changelog)[0]["replicas"])
            figures["changelog_min_isr"] = topic_config(bootstrap, changelog, "min.insync.replicas")
            producer = RateProducer(bootstrap, base["MINDSTREAM_TOPIC_INTERACTIONS"], stream.messages, RATE)
            producer.start()

            def read_total() -> float:
                return sum(w.metric_or_zero("mindstream_events_in_total") for w in workers)

            workers[0].wait_for(
                lambda: read_total() >= 2000, WAIT_S, "the workers read 2,000 events", interval=0.1
            )
            figures["read_at_disruption"] = int(read_total())
            started = time.monotonic()
            figures.update(disrupt(base))
            figures["disruption_s"] = round(time.monotonic() - started, 1)
            producer.join(WAIT_S)
            assert producer.error is None, f"the producer failed: {producer.error!r}"
            figures["produced_s_after_disruption_start"] = round(time.monotonic() - started, 1)
            workers[0].wait_for(lambda: lag_or_none(workers[0]) == 0, WAIT_S, "lag 0", interval=0.5)
            figures["lag_0_after_disruption_start_s"] = round(time.monotonic() - started, 1)
            figures["stall_seeks"] = [
                int(w.metric_or_zero("mindstream_stall_recoveries_total")) for w in workers
            ]
            assert all(w.proc.poll() is None for w in workers), "a worker exited"
        finally:
            for w in workers:
                w.stop()
        check_every_user(base, stream, runtime, figures, "cluster scenario")
        assert figures["changelog_replicas"] == 3 and figures["changelog_min_isr"] == "2"
        return figures
    finally:
        server.kill()
        cleanup_topics(bootstrap, base)


def busiest_leader(bootstrap: str, topic: str) -> tuple[int, int]:
    """(partition, leader broker id) of the partition of `topic` with the most messages."""
    from kafka import KafkaConsumer, TopicPartition

    consumer = KafkaConsumer(bootstrap_servers=bootstrap)
    try:
        ends = consumer.end_offsets([TopicPartition(topic, p) for p in range(PARTITIONS)])
    finally:
        consumer.close()
    partition = max(ends, key=lambda tp: ends[tp]).partition
    return partition, describe(bootstrap, topic)[partition]["leader"]


def test_the_leader_of_a_busy_partition_is_killed_mid_stream_and_nothing_is_lost_or_applied_twice(
    kafka_cluster, artifact_dir, runtime, tmp_path
):
    killed: list[int] = []

    def kill_the_leader(env: dict[str, str]) -> dict:
        topic = env["MINDSTREAM_TOPIC_INTERACTIONS"]
        partition, leader = busiest_leader(kafka_cluster.bootstrap, topic)
        kafka_cluster.kill(leader)
        killed.append(leader)
        started = time.monotonic()
        new_leader = wait_until(
            lambda: _leader_other_than(kafka_cluster.bootstrap, topic, partition, leader),
            60,
            interval=0.2,
            what=f"a new leader for {topic}[{partition}]",
        )
        return {
            "killed_broker": leader,
            "partition": partition,
            "new_leader": new_leader,
            "new_leader_after_s": round(time.monotonic() - started, 1),
        }

    try:
        run_scenario(kafka_cluster, artifact_dir, runtime, tmp_path, "a", kill_the_leader)
    finally:
        for node in killed:  # back, in sync, for the next test
            kafka_cluster.start(node)
            wait_until(
                lambda: fully_replicated(kafka_cluster.bootstrap, ["__consumer_offsets"]),
                WAIT_S,
                interval=1,
                what=f"broker {node} back in sync",
            )


def _leader_other_than(bootstrap: str, topic: str, partition: int, old: int) -> int | None:
    try:
        leader = describe(bootstrap, topic)[partition]["leader"]
    except Exception:  # noqa: BLE001 - metadata from the broker just killed: ask again
        return None
    return leader if leader not in (old, -1) else None


@pytest.mark.cluster
@only_with_more_time
def test_a_broker_killed_and_restarted_later_loses_nothing(kafka_cluster, artifact_dir, runtime, tmp_path):
    def kill_then_restart(env: dict[str, str]) -> dict:
        kafka_cluster.kill(2)
        time.sleep(15)  # the stream goes on with 2 of 3 brokers (min.insync.replicas 2 still met)
        restarted = time.monotonic()
        kafka_cluster.start(2)
        topics = [env["MINDSTREAM_TOPIC_INTERACTIONS"],
                  changelog_topic(env["MINDSTREAM_APP_ID"], "histories")]
        wait_until(
            lambda: fully_replicated(kafka_cluster.bootstrap, topics),
            WAIT_S,
            interval=1,
            what="broker 2 back in every ISR",
        )
        return {
            "killed_broker": 2,
            "down_s": 15,
            "back_in_sync_after_restart_s": round(time.monotonic() - restarted, 1),
        }

    run_scenario(kafka_cluster, artifact_dir, runtime, tmp_path, "b", kill_then_restart)


@pytest.mark.cluster
@only_with_more_time
def test_a_rolling_restart_of_all_three_brokers_loses_nothing(kafka_cluster, artifact_dir, runtime, tmp_path):
    def rolling_restart(env: dict[str, str]) -> dict:
        topics = [env["MINDSTREAM_TOPIC_INTERACTIONS"],
                  changelog_topic(env["MINDSTREAM_APP_ID"], "histories")]
        each = []
        for node in (1, 2, 3):
            started = time.monotonic()
            kafka_cluster.stop(node)  # controlled shutdown: leadership moves first
            kafka_cluster.start(node)
            # The next broker goes only once this one is back in every ISR, as an operator would do it.
            wait_until(
                lambda: fully_replicated(kafka_cluster.bootstrap, topics),
                WAIT_S,
                interval=1,
                what=f"broker {node} back in every ISR",
            )
            each.append(round(time.monotonic() - started, 1))
        return {"restart_s_per_broker": each}

    run_scenario(kafka_cluster, artifact_dir, runtime, tmp_path, "c", rolling_restart)


def test_cluster_settings_reach_the_topic_configs_and_an_impossible_min_isr_is_refused():
    from streams.config import ConfigError, Settings

    settings = Settings.from_env({"KAFKA_BOOTSTRAP": "b1:9092,b2:9092,b3:9092", **PRODUCTION})
    assert settings.replication == 3 and settings.topic_configs == {"min.insync.replicas": "2"}
    assert Settings.from_env({}).topic_configs == {"min.insync.replicas": "1"}  # what one dev broker accepts
    with pytest.raises(
        ConfigError, match="MINDSTREAM_MIN_INSYNC_REPLICAS=3 is above MINDSTREAM_REPLICATION=2"
    ):
        Settings.from_env({"MINDSTREAM_REPLICATION": "2", "MINDSTREAM_MIN_INSYNC_REPLICAS": "3"})
