"""A Kafka broker restart while events are produced and consumed loses nothing (issue 7).

The session's shared broker cannot be restarted under other tests, so this test starts its own broker
(deploy/kafka/kafka.sh, free ports, a temporary dir), runs `mind-stream worker` against it, and stops /
starts that broker on the same dir and ports in the middle of a paced stream. The producer is an ordinary
at-least-once client (acks=all, retries; a send that still fails is sent again): the worker's event-id
de-duplication makes re-sends harmless. Then every user's vectors must equal the offline recompute.
Budget: about 90 s on 2 cores (two broker start-ups).
"""

from __future__ import annotations

import os
import subprocess
import threading
import time
from pathlib import Path

import pytest
from support.artifact import build_tiny_artifact
from support.basics import free_port, wait_until
from support.synthetic_stream import (
    check_histories,
    count_mismatches,
    expected_vectors,
    make_stream,
    stored_vectors_of,
)
from support.worker import Worker, committed_lag, index_items, worker_env

pytestmark = pytest.mark.timeout(600)
WAIT_S = 240  # ceiling against hanging (2 shared cores), not a performance assertion
REPO_ROOT = Path(__file__).resolve().parent.parent
KAFKA_SCRIPT = REPO_ROOT / "deploy" / "kafka" / "kafka.sh"


class Broker:
    """One broker of our own: same state dir and ports across stop / start."""

    def __init__(self, state_dir: Path) -> None:
        self.dir = state_dir
        self.port, self.controller_port = free_port(), free_port()
        while self.controller_port == self.port:
            self.controller_port = free_port()

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    def _script(self, *args: str) -> subprocess.CompletedProcess[str]:
        # "use mine" would start nothing
        env = {k: v for k, v in os.environ.items() if k != "KAFKA_BOOTSTRAP"}
        return subprocess.run(["bash", str(KAFKA_SCRIPT), *args], capture_output=True, text=True, env=env,
                              timeout=240)

    def start(self) -> None:
        fetched = self._script("fetch")
        assert fetched.returncode == 0, fetched.stderr
        started = self._script("start", "--port", str(self.port), "--controller-port",
                               str(self.controller_port),
                               "--dir", str(self.dir), "--exit-with", str(os.getpid()))
        assert started.returncode == 0, started.stderr
        assert started.stdout.strip().splitlines()[-1] == self.bootstrap

    def stop(self) -> None:
        stopped = self._script("stop", "--dir", str(self.dir))
        assert stopped.returncode == 0, stopped.stderr


@pytest.fixture
def own_broker(tmp_path: Path):
    broker = Broker(tmp_path / "kafka")
    broker.start()
    try:
        yield broker
    finally:
        broker.stop()


def test_a_broker_restart_while_producing_and_consuming_loses_nothing(own_broker, tmp_path):
    from kafka import KafkaProducer

    from export.runtime import UserTowerRuntime

    artifact_dir = build_tiny_artifact(tmp_path / "artifact", num_items=40)
    runtime = UserTowerRuntime.load(artifact_dir)
    env = worker_env(own_broker.bootstrap, tmp_path)
    index_items(env, artifact_dir)
    n_users, n_events = 300, 3000
    stream = make_stream(list(runtime.item_ids()), n_users, n_events, seed_=5, user_prefix="k")
    w = Worker(env=env, artifact_dir=artifact_dir, log_path=tmp_path / "worker.log", own_session=True)
    w.start()
    topic = env["MINDSTREAM_TOPIC_INTERACTIONS"]
    producer = KafkaProducer(bootstrap_servers=own_broker.bootstrap, acks="all", retries=1_000_000,
                             linger_ms=5,
                             delivery_timeout_ms=240_000, request_timeout_ms=10_000,
                             reconnect_backoff_max_ms=2000)
    failed: list[tuple[bytes, bytes]] = []
    sent = threading.Event()

    def paced_producer() -> None:
        for i, (key, value) in enumerate(stream.messages):
            producer.send(topic, key=key,
                          value=value).add_errback(lambda _exc, m=(key, value): failed.append(m))
            if i % 50 == 0:
                time.sleep(0.25)  # ~200 events/s: the stream spans the broker's outage
        sent.set()

    thread = threading.Thread(target=paced_producer)
    try:
        thread.start()
        third = len(stream.messages) // 3
        wait_until(lambda: w.metric_or_zero("mindstream_events_in_total") >= third, WAIT_S,
                   what="a third consumed")
        outage_started = time.monotonic()
        own_broker.stop()
        time.sleep(3)
        own_broker.start()
        outage_s = time.monotonic() - outage_started
        back = time.monotonic()
        thread.join()
        producer.flush(timeout=240)
        resent = list(failed)
        if resent:  # at-least-once producer: what the client gave up on goes again (duplicates are dropped)
            for key, value in resent:
                producer.send(topic, key=key, value=value)
            producer.flush(timeout=120)
        wait_until(lambda: committed_lag(w) == 0, WAIT_S, interval=1.0, what="lag 0 after the broker restart")
        catch_up_s = time.monotonic() - back
        worker_alive = w.proc.poll() is None
        w.stop()
    finally:
        producer.close(timeout=10)
        if w.proc is not None and w.proc.poll() is None:
            w.kill9()
    repeated, wrong_history = check_histories(env, stream, runtime.manifest.max_history_length)
    users = sorted(stream.events_of)
    wrong = count_mismatches(stored_vectors_of(env, users), expected_vectors(runtime, stream, users))
    print(f"\nbroker restart: {len(stream.messages)} messages over {n_users} users, "
          f"broker down {outage_s:.1f}s "
          f"(stop + 3 s + start), producer re-sent {len(resent)}, lag 0 {catch_up_s:.1f}s after it was back, "
          f"worker survived {worker_alive}; wrong vectors {len(wrong)}, wrong histories {wrong_history}, "
          f"repeated events {repeated}")
    assert worker_alive, w.log_tail()
    assert repeated == 0 and wrong_history == 0
    assert wrong == []
