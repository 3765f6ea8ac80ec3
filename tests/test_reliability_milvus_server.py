"""Reliability with a Milvus server (an `http://` store URI, support/milvus.py): the server down when the
worker starts and killed mid-stream; two workers sharing it, one killed, the other taking its partitions.

Everything is real: the broker of the session, `mind-stream worker` subprocesses, the Milvus engine that
milvus-lite ships serving on TCP, onnxruntime on a tiny exported artifact. Every expected vector is an
offline recompute (support/synthetic_stream.py). Figures are printed: run with `-s` to see them.
"""

from __future__ import annotations

import threading
import time

import pytest
from support.basics import free_port
from support.milvus import MilvusTcpServer
from support.synthetic_stream import (
    check_histories,
    count_mismatches,
    expected_vectors,
    make_stream,
    produce_stream,
    stored_vectors_of,
    wrong_over_http,
)
from support.worker import (
    LagWatch,
    Worker,
    cleanup_topics,
    committed_lag,
    dlq_messages,
    get_json,
    lags_across_commits,
    rebalance_phases,
    worker_env,
)

from streams.config import EXIT_STALLED

pytestmark = pytest.mark.timeout(600)
WAIT_S = 240  # ceiling against hanging (2 shared cores), not a performance assertion


# --- 3b. a Milvus server (http:// URI) down at start, then killed mid-stream --------------------------------

def test_a_milvus_server_down_at_start_then_killed_mid_stream_is_waited_for_and_nothing_is_lost(
        kafka_bootstrap, artifact_dir, runtime, tmp_path):
    """The worker's store is a Milvus server (http:// URI). It is down when the worker starts: the worker
    stays up, says so, commits nothing. It comes up: everything is applied. It is killed (SIGKILL) while
    events stream in and stays down a while: nothing is dead-lettered, and once it is back every user is
    right."""
    from kafka import KafkaProducer

    server = MilvusTcpServer(tmp_path / "server.db", free_port())
    env = worker_env(kafka_bootstrap, tmp_path, MINDSTREAM_MILVUS_URI=server.uri, MINDSTREAM_BATCH_SIZE="64")
    stream = make_stream(list(runtime.item_ids()), 200, 3000, seed_=11, user_prefix="srv")
    first, second = stream.messages[:1000], stream.messages[1000:]
    topic = env["MINDSTREAM_TOPIC_INTERACTIONS"]
    w = Worker(env=env, artifact_dir=artifact_dir, log_path=tmp_path / "worker.log", own_session=True)
    figures: dict = {"messages": len(stream.messages), "users": 200}
    try:
        w.spawn()
        down_at_start = w.wait_for(lambda: (h := w.health()) and h[1].get("status") == "degraded" and h,
                                   WAIT_S, "worker reporting the server down", interval=0.3)
        produce_stream(kafka_bootstrap, topic, first)
        w.wait_for(lambda: committed_lag(w) == len(first), 30, "the first events on the topic")
        w.wait_for(lambda: w.metric("mindstream_events_in_total") > 0, WAIT_S, "the worker read events")
        # It holds them, unacked, and keeps retrying the server.
        figures["lags_while_down_at_start"] = sorted(set(lags_across_commits(w)))
        assert w.proc.poll() is None
        server.start()
        up = time.monotonic()
        w.wait_for(lambda: committed_lag(w) == 0, WAIT_S, "caught up once the server is up")
        figures["catch_up_after_start_s"] = round(time.monotonic() - up, 1)
        w.wait_for(lambda: (h := w.health()) and h[1].get("status") == "ok", 30,
                   "healthy once the server is up")

        # Mid-stream: a paced producer, and the server killed once the worker has read part of it.
        read_before = w.metric("mindstream_events_in_total")
        producer = KafkaProducer(bootstrap_servers=kafka_bootstrap, acks="all", linger_ms=5)

        def paced() -> None:
            for j, (key, value) in enumerate(second):
                producer.send(topic, key=key, value=value)
                if j % 50 == 49:
                    time.sleep(0.05)  # about 1,000 messages/s
            producer.flush(timeout=60)

        sender = threading.Thread(target=paced)
        sender.start()
        try:
            w.wait_for(lambda: w.metric("mindstream_events_in_total") >= read_before + 300, WAIT_S,
                       "part of the second stream read", interval=0.05)
            server.kill()
            figures["read_of_second_at_kill"] = int(w.metric("mindstream_events_in_total") - read_before)
            statuses = set()
            for _ in range(16):  # 8 s down
                statuses.add(get_json(f"{w.url}/healthz")["status"])
                time.sleep(0.5)
        finally:
            sender.join()
            producer.close()
        figures["lag_at_end_of_outage"] = committed_lag(w)
        assert w.proc.poll() is None
        server.start()
        back = time.monotonic()
        w.wait_for(lambda: committed_lag(w) == 0, WAIT_S, "caught up once the server is back")
        figures["catch_up_after_restart_s"] = round(time.monotonic() - back, 1)
        figures["retries"] = w.metric("mindstream_batch_retries_total")
        expected = expected_vectors(runtime, stream, sorted(stream.events_of))
        wrong = wrong_over_http(w, expected)
        figures.update(users_with_wrong_vectors=len(wrong), dlq=len(dlq_messages(env)),
                       health_seen=sorted(statuses))
        print(f"\nMilvus server outages: {figures}; health at start {down_at_start}")
        assert down_at_start[0] == 503 and server.uri in down_at_start[1]["error"]
        # nothing committed while the server was down
        assert figures["lags_while_down_at_start"] == [len(first)]
        assert "degraded" in statuses and figures["lag_at_end_of_outage"] > 0
        assert figures["retries"] >= 1
        assert wrong == [] and figures["dlq"] == 0
    finally:
        w.stop()
        server.kill()
        cleanup_topics(kafka_bootstrap, env)


# --- 1b. two workers sharing a Milvus server: one is killed, the other takes its partitions over ---------


def test_two_workers_share_the_partitions_and_when_one_is_killed_the_other_takes_over_losing_nothing(
        kafka_bootstrap, artifact_dir, runtime, tmp_path):
    """Scale-out as deployed: one consumer group of two workers on a 4-partition topic, one Milvus server.
    One worker is killed (-9) mid-stream and not restarted: after the session timeout its partitions and
    their history-table changelogs move to the survivor, which finishes the stream. Every user right."""
    server = MilvusTcpServer(tmp_path / "server.db", free_port())
    server.start()
    base = worker_env(kafka_bootstrap, tmp_path, MINDSTREAM_MILVUS_URI=server.uri, MINDSTREAM_PARTITIONS="4",
                      MINDSTREAM_BATCH_SIZE="128", MINDSTREAM_STALL_TIMEOUT_S="10")
    workers = []
    for name in ("a", "b"):
        env = dict(base, MINDSTREAM_WEB_PORT=str(free_port()),
                   MINDSTREAM_DATA_DIR=str(tmp_path / f"faust-{name}"))
        workers.append(Worker(env=env, artifact_dir=artifact_dir, log_path=tmp_path / f"worker-{name}.log",
                              own_session=True))
    victim, survivor = workers
    stream = make_stream(list(runtime.item_ids()), 1000, 12_000, seed_=13, user_prefix="fo")
    figures: dict = {"events": 12_000, "messages": len(stream.messages), "users": 1000, "partitions": 4}
    try:
        for w in workers:
            w.start()
        # Both members own partitions before the stream starts (the group settles after the second join).
        survivor.wait_for(
            lambda: all(w.metric_or_zero("mindstream_assigned_partitions") > 0 for w in workers),
            WAIT_S, "both workers assigned partitions", interval=0.3)
        # Any worker answers for any user: a request for a user whose history the other worker owns is
        # passed there (faust's table routing), so both give the same rows and the same history (not 0 on
        # one of them).
        warm = make_stream(list(runtime.item_ids()), 40, 120, seed_=14, user_prefix="fw", dup_rate=0,
                           late_rate=0)
        produce_stream(kafka_bootstrap, base["MINDSTREAM_TOPIC_INTERACTIONS"], warm.messages)
        survivor.wait_for(lambda: committed_lag(survivor) == 0, WAIT_S, "the warm-up stream committed")
        for user, events in warm.events_of.items():
            answers = [w.interests(user) for w in workers]
            assert answers[0] == answers[1] and answers[0]["history_length"] == len(events), user
            recalls = [get_json(f"{w.url}/recall/{user}?n=5&exclude_seen=true") for w in workers]
            assert recalls[0] == recalls[1]
            assert not {item for item, _, _ in events} & {r["item_id"] for r in recalls[0]["items"]}
        before_stream = (committed_lag(survivor),
                         {w.url: w.metric_or_zero("mindstream_events_in_total") for w in workers})
        produce_stream(kafka_bootstrap, base["MINDSTREAM_TOPIC_INTERACTIONS"], stream.messages)
        victim_read_before = before_stream[1][victim.url]
        victim.wait_for(
            lambda: victim.metric_or_zero("mindstream_events_in_total") >= victim_read_before + 1000,
            WAIT_S, "the victim read 1,000 events", interval=0.05)
        figures["victim_read_at_kill"] = int(victim.metric_or_zero("mindstream_events_in_total"))
        figures["survivor_read_at_kill"] = int(survivor.metric_or_zero("mindstream_events_in_total"))
        lag_watch = LagWatch(survivor)
        victim.kill9()
        killed, killed_at = time.monotonic(), time.time()
        figures["lag_right_after_kill"] = committed_lag(survivor)
        restarts = []

        def supervised_lag() -> int:
            # The test plays the supervisor a deployment has (compose `restart: on-failure`, Kubernetes): a
            # worker that exits EXIT_STALLED (its partitions stalled in faust, see
            # streams/worker/watchdog.py) is restarted.
            if survivor.proc.poll() == EXIT_STALLED:
                restarts.append(time.monotonic() - killed)
                survivor.start()
            return lag_watch.lag()

        try:  # polled every 0.1 s through one client: the figure is the catch-up, not the polling
            survivor.wait_for(lambda: supervised_lag() == 0, WAIT_S, "lag 0 on the survivor", interval=0.1)
        finally:
            lag_watch.close()
        figures["survivor_restarted_after_stall_s"] = [round(t, 1) for t in restarts]
        figures["lag_0_after_kill_s"] = round(time.monotonic() - killed, 1)
        # Where the catch-up went: seconds after the kill (faust's log; the rest is the backlog and a commit).
        figures["survivor_phases_s"] = rebalance_phases(survivor.started_logs[-1], killed_at)
        figures["survivor_partitions_at_end"] = int(survivor.metric("mindstream_assigned_partitions"))
        # faust-streaming issue 221 (see streams/worker/watchdog.py): the survivor may re-read from its
        # commit once.
        figures["survivor_stall_seeks"] = int(survivor.metric("mindstream_stall_recoveries_total"))
        assert survivor.proc.poll() is None
    finally:
        for w in workers:
            w.stop()
    try:
        repeated, wrong_history = check_histories(base, stream, runtime.manifest.max_history_length)
        users = sorted(stream.events_of)
        wrong = count_mismatches(stored_vectors_of(base, users), expected_vectors(runtime, stream, users))
        figures.update(users_with_repeated_event=repeated, users_with_wrong_history=wrong_history,
                       users_with_wrong_vectors=len(wrong), dlq=len(dlq_messages(base)))
        print(f"\ntwo workers, one killed: {figures}")
        assert figures["lag_right_after_kill"] > 0, "the stream was over before the kill: not mid-stream"
        assert figures["survivor_partitions_at_end"] == 4
        assert repeated == 0 and wrong_history == 0
        assert wrong == [], f"{len(wrong)} users' vectors differ from the offline recompute, e.g. {wrong[:5]}"
        assert figures["dlq"] == 0
    finally:
        server.kill()
        cleanup_topics(kafka_bootstrap, base)
