"""The worker end to end: real Kafka broker, `mind-stream worker` as a subprocess, real Milvus Lite, real
onnxruntime tower from a real exported artifact (random weights). Budget: about 90 s on 2 cores.

Every expected vector is recomputed offline here with `UserTowerRuntime.infer` on the same history, so the
tests prove that what the stream wrote is what the model says — not a number copied from a previous run.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from support.basics import wait_until
from support.topics import read_topic
from support.worker import (
    Worker,
    cleanup_topics,
    committed_lag,
    dlq_messages,
    event,
    get_json,
    worker_env,
)

from export.runtime import UserTowerRuntime

pytestmark = pytest.mark.timeout(240)
REPO_ROOT = Path(__file__).resolve().parent.parent
WAIT_S = 60  # ceiling against hanging, not a performance assertion


# --- helpers: produce, expected vectors ----------------------------------------------------------------


def cli_recall(worker: Worker, user: str, n: int, *flags: str) -> dict:
    result = subprocess.run([sys.executable, "-m", "streams.cli", "recall", user, "--n", str(n), "--json",
                             *flags],
                            env=worker.env, cwd=REPO_ROOT, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def expected_interests(runtime: UserTowerRuntime, history: list[tuple[str, float]],
                       profile: dict | None = None) -> np.ndarray:
    """Offline recompute: (item, ts) pairs → the valid interest vectors (K'u, d), as the worker must store."""
    items = [item for item, _ in sorted(history, key=lambda p: p[1])][-runtime.manifest.max_history_length:]
    hist, mask = runtime.encode_histories([items])
    out = runtime.infer(hist, mask, runtime.encode_profiles([profile]))
    return out.interest_vectors[0][out.valid_interest_mask[0]]


def stored_vectors(answer: dict) -> np.ndarray:
    return np.array([row["vector"] for row in sorted(answer["interests"],
                                                     key=lambda r: r["slot"])], dtype=np.float32)


def wait_for_user(worker: Worker, user: str, latest_ts_s: float, history_length: int) -> dict:
    """The user's stored interests once they reflect the event at `latest_ts_s` and the expected history."""
    latest_ms = int(round(latest_ts_s * 1000))

    def reflected() -> dict | None:
        answer = worker.interests(user)
        rows = answer["interests"]
        if (rows and all(r["event_ts_ms"] == latest_ms for r in rows)
                and answer["history_length"] == history_length):
            return answer
        return None

    try:
        return wait_until(reflected, WAIT_S, interval=0.2,
                          what=f"vectors of {user} reflecting ts {latest_ms}")
    except TimeoutError:
        print(worker.log_tail())
        raise


def items_of(runtime: UserTowerRuntime) -> list[str]:
    return list(runtime.item_ids())


# --- the tests -------------------------------------------------------------------------------------------


def test_events_of_several_users_become_the_vectors_an_offline_recompute_gives(worker, runtime):
    items = items_of(runtime)
    now = time.time()
    lengths = {"alice": 1, "bob": 3, "carol": 8, "dave": 20}
    histories = {u: [(items[(7 * k + 3 * j) % len(items)], now - 100 + j) for j in range(n)]
                 for k, (u, n) in enumerate(lengths.items())}
    messages = [event(u, item, ts) for u, h in histories.items() for item, ts in h]
    worker.produce(messages)
    max_len = runtime.manifest.max_history_length
    counts = {}
    for user, history in histories.items():
        answer = wait_for_user(worker, user, history[-1][1], min(len(history), max_len))
        expected = expected_interests(runtime, history)
        np.testing.assert_allclose(stored_vectors(answer), expected, rtol=1e-5, atol=1e-6)
        assert all(row["model_version"] == runtime.manifest.model_version for row in answer["interests"])
        counts[user] = len(answer["interests"])
    # K'u grows with the history: max(1, min(K, floor(log2 n))) on the kept history.
    assert counts["alice"] == 1 and counts["bob"] == 1
    assert counts["alice"] <= counts["bob"] <= counts["carol"] <= counts["dave"]
    assert counts["dave"] > counts["alice"]


def test_the_worker_runs_on_uvloop_by_default(worker):
    health = get_json(f"{worker.url}/healthz")
    assert health["status"] == "ok" and health["event_loop"] == "uvloop"


def test_interest_count_grows_as_one_users_history_grows(worker, runtime):
    items = items_of(runtime)
    now = time.time()
    history: list[tuple[str, float]] = []
    seen_counts = []
    for n_new in (1, 1, 2, 4):
        new = [(items[(5 * len(history) + j) % len(items)],
                now - 50 + len(history) + j) for j in range(n_new)]
        history += new
        worker.produce([event("grower", item, ts) for item, ts in new])
        answer = wait_for_user(worker, "grower", history[-1][1], len(history))
        np.testing.assert_allclose(stored_vectors(answer), expected_interests(runtime, history), rtol=1e-5,
                                   atol=1e-6)
        seen_counts.append(len(answer["interests"]))
    # 1, 1, 2, 3 for 1, 2, 4, 8 items
    assert seen_counts == sorted(seen_counts) and seen_counts[-1] > seen_counts[0]


def test_a_duplicate_delivery_changes_nothing(worker, runtime):
    items = items_of(runtime)
    now = time.time()
    history = [(items[j], now - 30 + j) for j in range(5)]
    messages = [event("dup", item, ts, event_id=f"dup-{j}") for j, (item, ts) in enumerate(history)]
    worker.produce(messages)
    before = wait_for_user(worker, "dup", history[-1][1], 5)
    duplicates_before = worker.metric("mindstream_events_duplicate_total")
    # The same five events delivered twice more.
    worker.produce(messages + messages)
    wait_until(lambda: worker.metric("mindstream_events_duplicate_total") >= duplicates_before + 10, WAIT_S,
               what="10 duplicates counted")
    after = worker.interests("dup")
    assert after == before  # same vectors, same updated_at_ms: nothing was rewritten
    assert after["history_length"] == 5


def test_an_event_without_id_sent_twice_is_applied_once(worker, runtime):
    item, ts = items_of(runtime)[3], time.time() - 20
    worker.produce([event("noid", item, ts)])
    first = wait_for_user(worker, "noid", ts, 1)
    dup_before = worker.metric("mindstream_events_duplicate_total")
    worker.produce([event("noid", item, ts)])
    wait_until(lambda: worker.metric("mindstream_events_duplicate_total") >= dup_before + 1, WAIT_S,
               what="duplicate")
    assert worker.interests("noid") == first  # both deliveries derive the same event id


def test_a_burst_for_one_user_ends_in_one_consistent_state(worker, runtime, kafka_bootstrap):
    items = items_of(runtime)
    now = time.time()
    # 40 events, timestamps deliberately out of order: the history is ordered by ts, not arrival.
    history = [(items[(11 * j) % len(items)], now - 60 + ((j * 17) % 40)) for j in range(40)]
    applied_before = worker.metric("mindstream_events_applied_total")
    worker.produce([event("burst", item, ts) for item, ts in history])
    # The newest ts is the 8th event sent: a batch that ends after it already looks final by ts and length,
    # so wait for all 40 to be applied (the counter moves after the store write) before reading.
    wait_until(lambda: worker.metric("mindstream_events_applied_total") >= applied_before + len(history),
               WAIT_S, what="the 40 burst events applied")
    latest = max(ts for _, ts in history)
    answer = wait_for_user(worker, "burst", latest, runtime.manifest.max_history_length)
    expected = expected_interests(runtime, history)
    np.testing.assert_allclose(stored_vectors(answer), expected, rtol=1e-5, atol=1e-6)
    assert [row["slot"] for row in answer["interests"]] == list(range(len(expected)))  # no stale slot left

    # The last interest-update for the user reflects the final state.
    updates = [json.loads(m.value) for m in read_topic(kafka_bootstrap,
                                                       worker.env["MINDSTREAM_TOPIC_UPDATES"], 3000)
               if m.key == b"burst"]
    assert updates, "no interest-updates message for the burst user"
    assert updates[-1]["event_ts_ms"] == int(round(latest * 1000))
    assert updates[-1]["num_interests"] == len(expected)
    assert updates[-1]["model_version"] == runtime.manifest.model_version


def test_malformed_events_go_to_the_dlq_with_reasons_and_good_ones_around_them_are_processed(worker, runtime,
                                                                                             kafka_bootstrap):
    items = items_of(runtime)
    now = time.time()
    bad = [
        (b"badjson", b"{not json", "bad JSON"),
        (b"x", b"\xff\xfe", "bad JSON"),
        (b"x", b"[1,2,3]", "not an object"),
        (b"x", json.dumps({"item_id": items[0], "ts": now}).encode(), "missing field user_id"),
        (b"x", json.dumps({"user_id": "x", "ts": now}).encode(), "missing field item_id"),
        (b"x", json.dumps({"user_id": "x", "item_id": items[0]}).encode(), "missing field ts"),
        (b"x", json.dumps({"user_id": "x", "item_id": items[0], "ts": "yesterday"}).encode(),
         "wrong type for ts"),
        (b"x", json.dumps({"user_id": {"id": 1}, "item_id": items[0], "ts": now}).encode(),
         "wrong type for user_id"),
        (b"x", json.dumps({"user_id": "bad user!", "item_id": items[0], "ts": now}).encode(),
         "user_id format"),
        (b"x", json.dumps({"user_id": "x", "item_id": "i" * 500, "ts": now}).encode(), "item_id too long"),
        (b"x", json.dumps({"user_id": "x", "item_id": items[0], "ts": -5}).encode(), "ts negative"),
        (b"x", json.dumps({"user_id": "x", "item_id": items[0], "ts": now + 10 * 86400}).encode(),
         "ts too far"),
        (None, b"", "bad JSON"),
    ]
    good_before = [(items[1], now - 10), (items[2], now - 9)]
    good_after = [(items[4], now - 8), (items[5], now - 7)]
    messages = [event("mixed", i, t) for i, t in good_before] + [(k, v) for k, v, _ in bad]
    messages += [event("mixed", i, t) for i, t in good_after]
    worker.produce(messages)
    history = good_before + good_after
    answer = wait_for_user(worker, "mixed", history[-1][1], 4)
    np.testing.assert_allclose(stored_vectors(answer), expected_interests(runtime, history), rtol=1e-5,
                               atol=1e-6)

    dead = wait_until(lambda: len(found := dlq_messages(worker.env)) >= len(bad) and found, WAIT_S,
                      what=f"{len(bad)} messages in the DLQ")
    by_value = {m.value: dict(m.headers) for m in dead}
    for _key, value, reason in bad:
        assert value in by_value, f"{value[:40]!r} ({reason}) not in the DLQ"
        assert by_value[value]["mindstream-reason"].decode().startswith(reason), by_value[value]
        source_topic = worker.env["MINDSTREAM_TOPIC_INTERACTIONS"].encode()
        assert by_value[value]["mindstream-source"].startswith(source_topic)
    assert worker.proc.poll() is None  # the agent (and the worker) survived all of it


def test_a_profile_change_refreshes_that_users_vectors(worker, runtime):
    items = items_of(runtime)
    now = time.time()
    history = [(items[(13 * j) % len(items)], now - 15 + j) for j in range(6)]
    worker.produce([event("profiled", item, ts) for item, ts in history])
    before = wait_for_user(worker, "profiled", history[-1][1], 6)
    np.testing.assert_allclose(stored_vectors(before), expected_interests(runtime, history), rtol=1e-5,
                               atol=1e-6)
    profile = {"cohort": runtime.vocab.profile["cohort"][2]}
    expected = expected_interests(runtime, history, profile)
    assert not np.allclose(stored_vectors(before), expected, atol=1e-4)  # the profile matters to this tower
    worker.produce([(b"profiled", json.dumps(profile).encode()), (b"bad key!", b"{}"), (b"profiled2", b"[]")],
            topic_env="MINDSTREAM_TOPIC_PROFILES")

    def refreshed() -> bool:
        vectors = stored_vectors(worker.interests("profiled"))
        return vectors.shape == expected.shape and np.allclose(vectors, expected, rtol=1e-5, atol=1e-6)

    wait_until(refreshed, WAIT_S, interval=0.2, what="vectors recomputed with the new profile")
    # The two bad profile messages are dead-lettered with their reasons, not fatal.
    wait_until(lambda: worker.metric("mindstream_profiles_in_total") == 3, WAIT_S,
               what="3 profile messages read")
    profiles_topic = worker.env["MINDSTREAM_TOPIC_PROFILES"].encode()

    def dead_profiles() -> dict[bytes, str]:
        return {m.key: dict(m.headers)["mindstream-reason"].decode() for m in dlq_messages(worker.env)
                if dict(m.headers)["mindstream-source"].startswith(profiles_topic + b"/")}

    dead = wait_until(lambda: len(found := dead_profiles()) >= 2 and found, WAIT_S,
                      what="2 profiles dead-lettered")
    assert sorted(dead) == [b"bad key!", b"profiled2"]
    assert dead[b"bad key!"].startswith("user_id format: profile key 'bad key!'")
    assert dead[b"profiled2"].startswith("not an object")
    assert worker.proc.poll() is None


def test_recall_over_http_equals_the_python_function_and_restart_resumes_from_committed_offsets(
        worker, runtime, kafka_bootstrap):
    """Last in this module: it restarts the module's worker with its local state wiped and a recall
    diversity of 1 by default (MINDSTREAM_RECALL_DIVERSITY), then stops it."""
    from streams.config import Settings
    from streams.recall import recall

    items = items_of(runtime)
    now = time.time()
    first = [(items[(3 * j) % len(items)], now - 40 + j) for j in range(6)]
    worker.produce([event("restart", item, ts) for item, ts in first])
    wait_for_user(worker, "restart", first[-1][1], 6)
    cold = get_json(f"{worker.url}/recall/nobody-yet?n=3")
    assert cold["cold_start"] and len(cold["items"]) == 3  # popular items, not an error
    bad_n = urllib.request.Request(f"{worker.url}/recall/restart?n=0")
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(bad_n, timeout=5)
    assert refused.value.code == 400
    with pytest.raises(urllib.error.HTTPError) as refused_user:
        urllib.request.urlopen(f"{worker.url}/recall/bad%20user?n=5", timeout=5)
    assert refused_user.value.code == 400
    # Without ?diversity the worker's MINDSTREAM_RECALL_DIVERSITY applies: 0 by default, 1 after the restart.
    by_default = get_json(f"{worker.url}/recall/restart?n=10")
    assert by_default == get_json(f"{worker.url}/recall/restart?n=10&diversity=0")

    # Everything read so far is committed (faust commits every few seconds); then stop and wipe the
    # worker's local state: the table must come back from its changelog topic.
    wait_until(lambda: committed_lag(worker) == 0, WAIT_S, interval=0.5, what="offsets committed")
    worker.stop()
    shutil.rmtree(worker.env["MINDSTREAM_DATA_DIR"], ignore_errors=True)
    worker.env["MINDSTREAM_RECALL_DIVERSITY"] = "1"
    worker.start()
    second = [(items[(3 * j + 1) % len(items)], now - 20 + j) for j in range(3)]
    worker.produce([event("restart", item, ts) for item, ts in second])
    history = first + second
    answer = wait_for_user(worker, "restart", second[-1][1], len(history))
    np.testing.assert_allclose(stored_vectors(answer), expected_interests(runtime, history), rtol=1e-5,
                               atol=1e-6)
    # Resumed from committed offsets: this worker read only the 3 new events, none of the earlier ones.
    assert worker.metric("mindstream_events_in_total") == 3

    over_http = get_json(f"{worker.url}/recall/restart?n=10&diversity=0")
    # the CLI asks the running worker
    assert cli_recall(worker, "restart", 10, "--diversity", "0") == over_http
    # exclude_seen: the same max-merge ranking with the user's history items left out, still 10 items.
    seen = {item for item, _ in history}
    deeper = get_json(f"{worker.url}/recall/restart?n={10 + len(seen)}&diversity=0")
    excluding = get_json(f"{worker.url}/recall/restart?n=10&exclude_seen=true&diversity=0")
    assert excluding["items"] == [i for i in deeper["items"] if i["item_id"] not in seen][:10]
    # something to leave out
    assert len(excluding["items"]) == 10 and seen & {i["item_id"] for i in deeper["items"]}
    assert cli_recall(worker, "restart", 10, "--exclude-seen", "--diversity", "0") == excluding
    with pytest.raises(urllib.error.HTTPError) as refused_flag:
        urllib.request.urlopen(f"{worker.url}/recall/restart?n=5&exclude_seen=maybe", timeout=5)
    assert refused_flag.value.code == 400
    # The diversity λ: ?diversity=1 over HTTP, --diversity 1 on the CLI; a bad λ is refused with a 400.
    diverse = get_json(f"{worker.url}/recall/restart?n=10&diversity=1")
    assert get_json(f"{worker.url}/recall/restart?n=10") == diverse  # the configured default
    assert cli_recall(worker, "restart", 10) == diverse  # the CLI leaves λ to the worker
    for bad in ("-0.5", "abc", "nan", "1e9", ""):
        with pytest.raises(urllib.error.HTTPError) as refused_diversity:
            urllib.request.urlopen(f"{worker.url}/recall/restart?n=5&diversity={bad}", timeout=5)
        assert refused_diversity.value.code == 400, bad
        error = json.loads(refused_diversity.value.read())["error"]
        assert "diversity must be a number between 0 and" in error, bad
    worker.stop()
    # No worker up: the CLI opens the Milvus Lite file itself (a Lite file is one process's at a time),
    # with the λ of its settings (MINDSTREAM_RECALL_DIVERSITY=1 here).
    from_cli_store = cli_recall(worker, "restart", 10)
    # Free again: the Python function over the same file gives the same answer.
    store = Settings.from_env(worker.env).open_store()
    try:
        in_process = recall(store, "restart", 10).to_dict()
        in_process_diverse = recall(store, "restart", 10, diversity=1).to_dict()
    finally:
        store.close()
    assert over_http == in_process and over_http["diversity"] == 0.0
    # the configured λ reached the merge (whether λ = 1 reorders this user's list depends on the scores;
    # test_recall checks the λ merge against the whole catalogue)
    assert diverse == in_process_diverse and diverse["diversity"] == 1.0
    assert from_cli_store == in_process_diverse
    assert len(over_http["items"]) == 10 and not over_http["cold_start"]
    assert {item["slot"] for item in over_http["items"]} <= {row["slot"] for row in answer["interests"]}


def test_rocksdb_table_store_is_restored_from_the_changelog_after_its_files_are_deleted(
        kafka_bootstrap, artifact_dir, runtime, tmp_path):
    """With RocksDB the table lives in local files: delete them, and the restarted worker rebuilds it."""
    env = worker_env(kafka_bootstrap, tmp_path, MINDSTREAM_TABLE_STORE="rocksdb://")
    w = Worker(env=env, artifact_dir=artifact_dir, log_path=tmp_path / "worker.log")
    items = items_of(runtime)
    now = time.time()
    first = [(items[(7 * j) % len(items)], now - 40 + j) for j in range(5)]
    second = [(items[(7 * j + 2) % len(items)], now - 20 + j) for j in range(4)]
    try:
        w.start()
        w.produce([event("rocky", item, ts) for item, ts in first])
        wait_for_user(w, "rocky", first[-1][1], 5)
        wait_until(lambda: committed_lag(w) == 0, WAIT_S, interval=0.5, what="offsets committed")
        w.stop()
        tables = list(Path(env["MINDSTREAM_DATA_DIR"]).rglob("*histories*"))
        assert tables, "RocksDB wrote no table files under the data dir"
        shutil.rmtree(env["MINDSTREAM_DATA_DIR"])
        w.start()
        w.produce([event("rocky", item, ts) for item, ts in second])
        answer = wait_for_user(w, "rocky", second[-1][1], 9)
        np.testing.assert_allclose(stored_vectors(answer), expected_interests(runtime, first + second),
                                   rtol=1e-5, atol=1e-6)
        assert w.metric("mindstream_events_in_total") == 4
    finally:
        w.stop()
        cleanup_topics(kafka_bootstrap, env)


def test_worker_refuses_an_input_topic_whose_partition_count_its_changelogs_would_not_match(
        kafka_bootstrap, artifact_dir, new_topic, tmp_path):
    topic = new_topic(partitions=2, prefix="interactions")
    env = worker_env(kafka_bootstrap, tmp_path, MINDSTREAM_TOPIC_INTERACTIONS=topic,
                     MINDSTREAM_PARTITIONS="3")
    result = subprocess.run([sys.executable, "-m", "streams.cli", "worker", "--artifact", str(artifact_dir)],
                            env=env, cwd=REPO_ROOT, capture_output=True, text=True, timeout=60)
    try:
        assert result.returncode == 2
        assert result.stderr.strip().splitlines()[-1] == (
            f"mind-stream worker: topic {topic} has 2 partitions but MINDSTREAM_PARTITIONS is "
            "3; pass --partitions 2 "
            "(the table changelogs must match the input topics)")
    finally:
        cleanup_topics(kafka_bootstrap, env)


def test_when_the_vector_stores_server_dies_the_batch_is_retried_on_a_new_connection_not_dead_lettered(
        kafka_bootstrap, artifact_dir, runtime, tmp_path):
    """Kill the worker's Milvus Lite server: the write fails with a StoreError. A store outage is not the
    events' fault, so the batch is retried (unacked) on a fresh connection with a new Lite server, and the
    events end up applied, none dead-lettered; the worker keeps running (tests/test_reliability_worker.py
    holds the longer outage)."""
    env = worker_env(kafka_bootstrap, tmp_path, MINDSTREAM_MAX_ATTEMPTS="2")
    w = Worker(env=env, artifact_dir=artifact_dir, log_path=tmp_path / "worker.log")
    items = items_of(runtime)
    now = time.time()
    messages = [event("lost1", items[0], now - 3), event("lost1", items[1], now - 2),
                event("lost2", items[2], now - 1)]
    try:
        w.start()
        children = subprocess.run(["pgrep", "-P", str(w.proc.pid)], capture_output=True,
                                  text=True).stdout.split()
        assert children, "no Milvus Lite server process under the worker"
        for pid in children:
            os.kill(int(pid), signal.SIGKILL)
        w.produce(messages)

        def written() -> bool:  # the HTTP read answers 503 until the store is reconnected
            try:
                return bool(w.interests("lost2")["interests"])
            except urllib.error.HTTPError as exc:
                assert exc.code == 503
                return False

        wait_until(written, WAIT_S, interval=0.3, what="vectors written after the store came back")
        lost1 = wait_for_user(w, "lost1", now - 2, 2)
        np.testing.assert_allclose(stored_vectors(lost1),
                                   expected_interests(runtime, [(items[0], now - 3), (items[1], now - 2)]),
                                   rtol=1e-5, atol=1e-6)
        wait_for_user(w, "lost2", now - 1, 1)
        assert w.metric("mindstream_batch_retries_total") >= 1
        assert w.metric("mindstream_events_dlq_total") == 0
        assert w.proc.poll() is None
    finally:
        w.stop()
        cleanup_topics(kafka_bootstrap, env)
