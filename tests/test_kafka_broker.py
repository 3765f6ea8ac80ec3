"""The project's Kafka broker really carries messages: kafka-python round trip, and a faust agent relaying.

Budget: ~15 s after the broker is up (most of it the faust worker starting and joining its group).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from kafka import KafkaConsumer, KafkaProducer
from support.basics import die_with_parent, unique_name
from support.topics import delete_topics

# A ceiling against hanging forever, not a performance assertion.
RECEIVE_TIMEOUT_S = 60.0


def consume(bootstrap: str, topic: str, count: int, timeout_s: float = RECEIVE_TIMEOUT_S) -> list:
    """Read `count` records of `topic` from the beginning (fresh consumer group); fewer only on timeout."""
    consumer = KafkaConsumer(
        topic,
        bootstrap_servers=bootstrap,
        group_id=unique_name("test-reader"),
        auto_offset_reset="earliest",
        enable_auto_commit=False,
    )
    records: list = []
    deadline = time.monotonic() + timeout_s
    try:
        while len(records) < count and time.monotonic() < deadline:
            for batch in consumer.poll(timeout_ms=500).values():
                records.extend(batch)
    finally:
        consumer.close()
    return records


def test_keyed_messages_round_trip_through_a_two_partition_topic(kafka_bootstrap: str, new_topic) -> None:
    topic = new_topic(partitions=2, prefix="roundtrip")
    sent = [(f"user-{index % 10}", {"seq": index}) for index in range(200)]

    producer = KafkaProducer(bootstrap_servers=kafka_bootstrap, acks="all")
    for key, value in sent:
        producer.send(topic, key=key.encode(), value=json.dumps(value).encode())
    producer.flush()
    producer.close()

    records = consume(kafka_bootstrap, topic, len(sent))

    received = sorted(
        ((record.key.decode(), json.loads(record.value)) for record in records), key=lambda kv: kv[1]["seq"]
    )
    assert received == sent
    # The default partitioner hashes the key: one key, one partition, and with 10 keys both partitions are
    # used.
    partitions_by_key: dict[str, set[int]] = {}
    for record in records:
        partitions_by_key.setdefault(record.key.decode(), set()).add(record.partition)
    assert all(len(partitions) == 1 for partitions in partitions_by_key.values())
    assert {record.partition for record in records} == {0, 1}
    # Within a partition, order is kept: each key's sequence numbers arrive increasing.
    for key in partitions_by_key:
        seqs = [json.loads(record.value)["seq"] for record in records if record.key.decode() == key]
        assert seqs == sorted(seqs)


# A faust app in one file, written to a temporary folder and run as `faust -A relay_app worker`: the
# worker process is what production runs, so the test exercises faust's real consumer group on this broker.
RELAY_APP_SOURCE = """
import os

import faust

app = faust.App(
    os.environ["RELAY_APP_ID"],
    broker="kafka://" + os.environ["RELAY_BOOTSTRAP"],
    store="memory://",
    web_enabled=False,
    topic_partitions=2,
)
source = app.topic(os.environ["RELAY_SOURCE"], key_serializer="raw", value_serializer="raw")
sink = app.topic(os.environ["RELAY_SINK"], key_serializer="raw", value_serializer="raw")


@app.agent(source)
async def shout(stream):
    async for key, value in stream.items():
        await sink.send(key=key, value=value.upper())
"""


def test_faust_agent_consumes_one_topic_and_produces_to_another(
    kafka_bootstrap: str, new_topic, tmp_path: Path
) -> None:
    source = new_topic(partitions=2, prefix="relay-in")
    sink = new_topic(partitions=2, prefix="relay-out")
    (tmp_path / "relay_app.py").write_text(RELAY_APP_SOURCE)
    sent = [(f"user-{index % 5}", f"clicked item {index}") for index in range(20)]

    producer = KafkaProducer(bootstrap_servers=kafka_bootstrap, acks="all")
    for key, value in sent:
        producer.send(source, key=key.encode(), value=value.encode())
    producer.flush()
    producer.close()

    app_id = unique_name("relay")
    env = {
        **os.environ,
        "RELAY_APP_ID": app_id,
        "RELAY_BOOTSTRAP": kafka_bootstrap,
        "RELAY_SOURCE": source,
        "RELAY_SINK": sink,
    }
    log_path = tmp_path / "worker.log"
    with open(log_path, "w") as log:
        worker = subprocess.Popen(
            [sys.executable, "-m", "faust", "-A", "relay_app", "--datadir", str(tmp_path / "data"),
             "worker", "--without-web", "-l", "info"],
            cwd=tmp_path, env=env, stdout=log, stderr=subprocess.STDOUT, preexec_fn=die_with_parent,
        )  # fmt: skip
        try:
            records = consume(kafka_bootstrap, sink, len(sent))
        finally:
            worker.send_signal(signal.SIGTERM)
            try:
                worker.wait(timeout=30)
            except subprocess.TimeoutExpired:
                worker.kill()
                worker.wait()
            # faust's own leader-election topic; the test's topics are removed by `new_topic`.
            delete_topics(kafka_bootstrap, [f"{app_id}-__assignor-__leader"])

    worker_log = log_path.read_text()
    assert len(records) == len(sent), (
        f"faust relayed {len(records)}/{len(sent)}; worker log:\n{worker_log[-3000:]}"
    )
    assert sorted((r.key.decode(), r.value.decode()) for r in records) == sorted(
        (key, value.upper()) for key, value in sent
    )
