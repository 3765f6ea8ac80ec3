"""Workers coming and going during a stream: 3 workers on 8 partitions, then one added, one stopped cleanly,
one killed -9. Nothing lost, nothing wrong, nothing applied twice; recall is asked all along on a worker that
stays, and the figures count its non-2xx answers and the longest time without a 2xx one.

Runs on the session's broker (the membership changes are the point here, not the brokers); `cluster` marker,
`make test-cluster`.
"""

from __future__ import annotations

import threading
import time
import urllib.error
import urllib.request
from collections import Counter

import pytest
from support.basics import free_port
from support.cluster import RateProducer, check_every_user, lag_or_none, only_with_more_time, scenario_env
from support.milvus import MilvusTcpServer
from support.synthetic_stream import make_stream
from support.topics import create_topics
from support.worker import Worker, cleanup_topics

pytestmark = [pytest.mark.timeout(900), pytest.mark.cluster, only_with_more_time]
WAIT_S = 300  # ceiling against hanging, not a performance assertion
EVENTS, USERS, PARTITIONS, RATE = 12_000, 1_000, 8, 300


class RecallProber(threading.Thread):
    """Asks one worker `GET /recall/{user}` every 50 ms (users in turn) until stopped; counts the answers."""

    def __init__(self, url: str, users: list[str]) -> None:
        super().__init__(daemon=True)
        self.url, self.users = url, users
        self.ok = self.not_ok = 0
        self.not_ok_by_status: Counter[str] = Counter()  # HTTP status, or the connection error's name
        self.longest_gap_s = 0.0
        self.halt = threading.Event()

    def run(self) -> None:
        last_ok = time.monotonic()
        i = 0
        while not self.halt.is_set():
            user = self.users[i % len(self.users)]
            i += 1
            try:
                with urllib.request.urlopen(f"{self.url}/recall/{user}?n=5", timeout=30) as response:
                    good = 200 <= response.status < 300
            except urllib.error.HTTPError as exc:
                good = False
                self.not_ok_by_status[str(exc.code)] += 1
            except (urllib.error.URLError, ConnectionError, TimeoutError) as exc:
                good = False
                self.not_ok_by_status[type(exc).__name__] += 1
            now = time.monotonic()
            if good:
                self.ok += 1
                last_ok = now
            else:
                self.not_ok += 1
            self.longest_gap_s = max(self.longest_gap_s, now - last_ok)
            time.sleep(0.05)


def test_workers_added_stopped_and_killed_mid_stream_lose_nothing_and_recall_keeps_answering(
    kafka_bootstrap, artifact_dir, runtime, tmp_path
):
    server = MilvusTcpServer(tmp_path / "server.db", free_port())
    server.start()
    base = scenario_env(kafka_bootstrap, tmp_path, server.uri, partitions=PARTITIONS)
    create_topics(
        kafka_bootstrap,
        {base["MINDSTREAM_TOPIC_INTERACTIONS"]: PARTITIONS, base["MINDSTREAM_TOPIC_PROFILES"]: PARTITIONS},
    )

    def new_worker(name: str) -> Worker:
        env = dict(
            base, MINDSTREAM_WEB_PORT=str(free_port()), MINDSTREAM_DATA_DIR=str(tmp_path / f"faust-{name}")
        )
        return Worker(
            env=env, artifact_dir=artifact_dir, log_path=tmp_path / f"worker-{name}.log", own_session=True
        )

    a, b, c, d = (new_worker(n) for n in "abcd")
    stream = make_stream(list(runtime.item_ids()), USERS, EVENTS, seed_=41, user_prefix="wc")
    figures: dict = {"events": EVENTS, "partitions": PARTITIONS}
    prober = RecallProber(a.url, sorted(stream.events_of)[:200])
    try:
        try:
            for w in (a, b, c):
                w.start()
            a.wait_for(
                lambda: all(w.metric_or_zero("mindstream_assigned_partitions") > 0 for w in (a, b, c)),
                WAIT_S,
                "3 workers assigned partitions",
                interval=0.3,
            )
            prober.start()
            producer = RateProducer(
                kafka_bootstrap, base["MINDSTREAM_TOPIC_INTERACTIONS"], stream.messages, RATE
            )
            producer.start()
            started = time.monotonic()

            def read() -> float:
                return sum(w.metric_or_zero("mindstream_events_in_total") for w in (a, b, c, d))

            a.wait_for(lambda: read() >= 1500, WAIT_S, "1,500 events read", interval=0.1)
            d.start()  # joins: a rebalance hands it partitions
            a.wait_for(
                lambda: d.metric_or_zero("mindstream_assigned_partitions") > 0,
                WAIT_S,
                "d assigned",
                interval=0.3,
            )
            figures["added_at_s"] = round(time.monotonic() - started, 1)
            b.stop()  # SIGTERM: faust commits and leaves the group
            figures["stopped_at_s"] = round(time.monotonic() - started, 1)
            c.kill9()  # its partitions move after the session timeout
            figures["killed_at_s"] = round(time.monotonic() - started, 1)
            producer.join(WAIT_S)
            assert producer.error is None, f"the producer failed: {producer.error!r}"
            a.wait_for(lambda: lag_or_none(a) == 0, WAIT_S, "lag 0", interval=0.5)
            figures["lag_0_at_s"] = round(time.monotonic() - started, 1)
            figures["partitions_at_end"] = [int(w.metric("mindstream_assigned_partitions")) for w in (a, d)]
            assert sum(figures["partitions_at_end"]) == PARTITIONS
        finally:
            prober.halt.set()
            for w in (a, b, c, d):
                w.stop()
        prober.join(60)
        figures.update(
            recall_2xx=prober.ok,
            recall_not_2xx=prober.not_ok,
            recall_not_2xx_by_status=dict(prober.not_ok_by_status),
            recall_longest_gap_s=round(prober.longest_gap_s, 1),
        )
        check_every_user(base, stream, runtime, figures, "workers coming and going")
        assert prober.ok > 0
    finally:
        server.kill()
        cleanup_topics(kafka_bootstrap, base)
