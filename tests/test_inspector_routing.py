"""The inspector's JSON with two workers in one consumer group (one Milvus server): whichever worker the page
asks, the answer comes from the worker that owns the user's partition (the routing `/recall` uses), so both
give the same history and interests, while each worker's recent-users list names only its own users."""

from __future__ import annotations

import json
import time

import pytest
from support.basics import free_port
from support.milvus import MilvusTcpServer
from support.worker import Worker, cleanup_topics, committed_lag, event, get_json, index_items, worker_env

pytestmark = pytest.mark.timeout(300)
WAIT_S = 90  # ceiling against hanging, not a performance assertion


def test_either_worker_answers_a_users_page_json_from_the_owner(kafka_bootstrap, artifact_dir, runtime,
                                                                 tmp_path):
    server = MilvusTcpServer(tmp_path / "server.db", free_port())
    server.start()
    base = worker_env(kafka_bootstrap, tmp_path, MINDSTREAM_MILVUS_URI=server.uri, MINDSTREAM_PARTITIONS="4")
    workers = [Worker(env=dict(base, MINDSTREAM_WEB_PORT=str(free_port()),
                               MINDSTREAM_DATA_DIR=str(tmp_path / f"faust-{name}")),
                      artifact_dir=artifact_dir, log_path=tmp_path / f"worker-{name}.log")
               for name in ("a", "b")]
    try:
        index_items(base, artifact_dir)
        for worker in workers:
            worker.start()
        assigned = "mindstream_assigned_partitions"
        workers[0].wait_for(lambda: all(w.metric_or_zero(assigned) > 0 for w in workers),
                            WAIT_S, "both workers assigned partitions", interval=0.3)
        items, now = list(runtime.item_ids()), time.time()
        users = [f"routed-{k}" for k in range(12)]
        workers[0].produce([event(user, items[(3 * k + j) % len(items)], now - 30 + j)
                             for k, user in enumerate(users) for j in range(2)])
        workers[0].wait_for(lambda: committed_lag(workers[0]) == 0, WAIT_S,
                            "every event applied and committed")

        owned = [{row["user_id"] for row in get_json(f"{w.url}/ui/api/recent")["users"]} for w in workers]
        assert owned[0] and owned[1], f"one worker wrote every user ({owned}): the routing was not exercised"
        assert owned[0] | owned[1] == set(users) and not owned[0] & owned[1]
        for user in users:
            answers = [get_json(f"{w.url}/ui/api/users/{user}?diversity=0.5") for w in workers]
            # equal as JSON text: the non-owner passed the request on, not answering from its empty table
            assert json.dumps(answers[0], sort_keys=True) == json.dumps(answers[1], sort_keys=True), user
            assert answers[0]["history_length"] == 2 and answers[0]["state"] == "interests", user
            assert answers[0]["diversity"] == 0.5
    finally:
        for worker in workers:
            worker.stop()
        server.kill()
        cleanup_topics(kafka_bootstrap, base)
