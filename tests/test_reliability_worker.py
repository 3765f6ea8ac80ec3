"""Reliability of the running worker (issue 7): bad input over HTTP, fuzzed payloads among good events, and a
vector store that is down for a while (its Lite server killed, its file locked by another process).

Everything is real: the broker of the session (`kafka_bootstrap`), `mind-stream worker` as a subprocess,
Milvus Lite files, onnxruntime on a tiny exported artifact. Every expected vector is an offline recompute
(support/synthetic_stream.py). Figures are printed: run with `-s` to see them.

CI sizes: outage 3k events over 300 users; fuzz 150 payloads.
"""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from support.basics import wait_until
from support.child_killer import ChildKiller
from support.milvus import release_lite
from support.payloads import examples, labelled_payloads
from support.synthetic_stream import expected_vectors, make_stream, produce_stream, wrong_over_http
from support.worker import (
    Worker,
    cleanup_topics,
    committed_lag,
    dlq_messages,
    get_json,
    index_items,
    lags_across_commits,
    running_worker,
    worker_env,
)

from streams.config import Settings

pytestmark = pytest.mark.timeout(600)
WAIT_S = 240  # ceiling against hanging (2 shared cores), not a performance assertion


# --- a worker for the outage and fuzz tests ------------------------------------------------------------


@pytest.fixture(scope="module")
def live(kafka_bootstrap, artifact_dir, tmp_path_factory):
    with running_worker(kafka_bootstrap, artifact_dir, tmp_path_factory.mktemp("live"), own_session=True,
                        MINDSTREAM_BATCH_SIZE="128") as w:
        yield w


def test_http_endpoints_bind_to_localhost_and_refuse_bad_input(live, runtime):
    port = int(live.env["MINDSTREAM_WEB_PORT"])
    listening = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            local, state = line.split()[1], line.split()[3]
            if state == "0A" and int(local.split(":")[1], 16) == port:
                listening.add(local.split(":")[0])
    assert listening == {"0100007F"}, f"web port {port} listens on {listening}, expected 127.0.0.1 only"
    for path in ("/recall/u1?n=0", "/recall/u1?n=-3", "/recall/u1?n=abc", "/recall/u1?n=1001",
                 f"/recall/u1?n={10**12}", "/recall/bad%20user", "/recall/" + "x" * 129,
                 "/recall/%F0%9F%98%80",
                 "/recall/a%22%29%20or%20%28true", "/users/bad%23user/interests"):
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(live.url + path, timeout=10)
        assert refused.value.code == 400, path
        assert "error" in json.loads(refused.value.read()), path
    # n at its maximum is accepted: with fewer items than that in the catalogue, every item comes back once.
    items = list(runtime.item_ids())
    value = json.dumps({"user_id": "http-max", "item_id": items[0], "ts": time.time()}).encode()
    live.produce([(b"http-max", value)])
    wait_until(lambda: live.interests("http-max")["interests"], WAIT_S, what="vectors of http-max")
    answer = get_json(f"{live.url}/recall/http-max?n=1000")
    assert not answer["cold_start"]
    assert sorted(i["item_id"] for i in answer["items"]) == sorted(items)


# --- 4. fuzzed payloads through the real worker -----------------------------------------------------------

def test_fuzzed_payloads_each_end_in_the_dlq_with_a_reason_or_are_applied_and_good_events_around_them_too(
        live, runtime):
    """Each fuzzed payload breaks at most one rule of the wire contract, and the generator knows which
    (support/payloads.py): the DLQ must hold exactly the broken ones, each with that rule's reason."""
    batch = examples(labelled_payloads(), 150)
    items = list(runtime.item_ids())
    now = time.time()
    good = [(f"fz-good{j % 5}", items[(3 * j) % len(items)], now - 100 + j) for j in range(25)]
    messages: list[tuple[bytes | None, bytes]] = []
    for j, payload in enumerate(batch):
        if j % 6 == 0:
            user, item, ts = good[j // 6]
            messages.append((user.encode(),
                             json.dumps({"user_id": user, "item_id": item, "ts": ts}).encode()))
        messages.append((payload.key, payload.raw))
    for user, item, ts in good[len(batch) // 6 + 1 :]:
        messages.append((user.encode(), json.dumps({"user_id": user, "item_id": item, "ts": ts}).encode()))
    sent_good = {(u, i, t) for u, i, t in good}
    broken = [p for p in batch if p.expected is not None]
    assert 0 < len(broken) < len(batch), "the batch must mix valid and broken payloads"
    before = {name: live.metric(name) for name in ("mindstream_events_in_total",
                                                   "mindstream_events_applied_total",
                                                   "mindstream_events_duplicate_total")}
    dlq_before = len(dlq_messages(live.env))
    produce_stream(live.env["KAFKA_BOOTSTRAP"], live.env["MINDSTREAM_TOPIC_INTERACTIONS"], messages)
    read_target = before["mindstream_events_in_total"] + len(messages)
    wait_until(lambda: live.metric("mindstream_events_in_total") >= read_target, WAIT_S,
               what="every fuzzed message read")
    live.wait_for(lambda: committed_lag(live) == 0, WAIT_S, interval=0.5, what="fuzz batch committed")
    dead = dlq_messages(live.env)[dlq_before:]
    reason_of = {m.value: dict(m.headers)["mindstream-reason"].decode() for m in dead}
    print(f"\nfuzz: {len(batch)} payloads + {len(sent_good)} good events; {len(broken)} break a rule, "
          f"{len(dead)} in the DLQ; rules: {sorted({p.expected for p in broken})}")
    # Exactly the broken payloads are in the DLQ, with their original bytes and the rule each one breaks.
    assert sorted(m.value for m in dead) == sorted(p.raw for p in broken)
    wrong_reason = [(p.expected, reason_of[p.raw]) for p in broken
                    if not reason_of[p.raw].startswith(p.expected)]
    assert wrong_reason == []
    # Every valid payload was applied or recognised as a duplicate (the documented event-id rule).
    accepted = len(batch) - len(broken)
    applied, duplicates = (live.metric(name) - before[name] for name in (
        "mindstream_events_applied_total", "mindstream_events_duplicate_total"))
    assert applied + duplicates == accepted + len(sent_good)
    # The good users' vectors are exactly what their events give.
    for user in sorted({u for u, _, _ in good}):
        history = sorted((t, i) for u, i, t in good if u == user)
        hist, mask = runtime.encode_histories([[i for _, i in history]])
        tower = runtime.infer(hist, mask, runtime.encode_profiles([None]))
        want = tower.interest_vectors[0][tower.valid_interest_mask[0]]
        got = live.interests(user)
        vectors = np.array([r["vector"] for r in sorted(got["interests"],
                                                        key=lambda r: r["slot"])], dtype=np.float32)
        np.testing.assert_allclose(vectors, want, rtol=1e-5, atol=1e-5)
    assert live.proc.poll() is None  # never crashed, never restarted
    assert "Traceback" not in live.started_logs[-1].read_text(errors="replace")


# --- 3. the vector store down for a while ----------------------------------------------------------------


def test_a_vector_store_outage_is_retried_without_acking_then_the_worker_catches_up(live, runtime, tmp_path):
    """Kill the worker's Milvus Lite server and every replacement it starts for OUTAGE_S seconds (the server
    is down, and stays down, however often the worker reconnects); events keep arriving. Then let it up."""
    outage_s = 12.0
    n_users = 300
    stream = make_stream(list(runtime.item_ids()), n_users, 3000, seed_=3, user_prefix="outg-")
    half = len(stream.messages) // 2
    topic = live.env["MINDSTREAM_TOPIC_INTERACTIONS"]
    produce_stream(live.env["KAFKA_BOOTSTRAP"], topic, stream.messages[:half])
    live.wait_for(lambda: committed_lag(live) == 0, WAIT_S, interval=0.5, what="first half committed")
    dlq_before = len(dlq_messages(live.env))
    retries_before = live.metric("mindstream_batch_retries_total")

    # The killer is a process of its own: a thread here starves for the GIL while the stream is produced.
    with ChildKiller(live.proc.pid, tmp_path / "lite-kills") as killer:
        wait_until(killer.kills, 10, what="the Lite server killed")
        produce_stream(live.env["KAFKA_BOOTSTRAP"], topic, stream.messages[half:])
        outage_end = time.monotonic() + outage_s
        statuses = set()
        while time.monotonic() < outage_end:
            statuses.add(get_json(f"{live.url}/healthz")["status"])
            time.sleep(0.5)
        lag_in_outage = committed_lag(live)
        assert live.proc.poll() is None
    kills = killer.kills()
    back = time.monotonic()
    live.wait_for(lambda: committed_lag(live) == 0, WAIT_S, interval=0.5, what="caught up after the outage")
    catch_up_s = time.monotonic() - back
    wait_until(lambda: get_json(f"{live.url}/healthz")["status"] == "ok", 30, what="healthy again")
    retries = live.metric("mindstream_batch_retries_total") - retries_before
    dead = dlq_messages(live.env)[dlq_before:]
    print(f"\nstore outage: {len(stream.messages)} messages over {n_users} users, {outage_s:.0f}s down "
          f"({len(set(kills))} server processes killed), {retries:.0f} retries, lag during "
          f"outage {lag_in_outage} "
          f"(second half {len(stream.messages) - half}), caught up {catch_up_s:.1f}s after, health "
          f"seen {sorted(statuses)}")
    assert "degraded" in statuses and live.proc.poll() is None  # alive and saying why
    assert lag_in_outage == len(stream.messages) - half  # nothing of the outage was committed
    assert dead == []  # not one good event dead-lettered for the outage
    assert retries >= 2
    # Every user's vectors: read over HTTP (the worker owns the Lite file).
    expected = expected_vectors(runtime, stream, sorted(stream.events_of))
    wrong = wrong_over_http(live, expected)
    print(f"store outage: users with wrong vectors {len(wrong)} of {len(expected)}")
    assert wrong == []


def test_a_worker_started_while_its_store_file_is_locked_waits_unacked_then_applies_everything(
        kafka_bootstrap, artifact_dir, runtime, tmp_path):
    """This test process holds the worker's Milvus Lite file (its lock) when the worker starts: the store
    cannot be opened. The worker must not crash nor dead-letter; it says so on /healthz, commits nothing,
    and applies every event once the file is free."""
    env = worker_env(kafka_bootstrap, tmp_path)
    index_items(env, artifact_dir)
    stream = make_stream(list(runtime.item_ids()), 60, 600, seed_=9, user_prefix="lock")
    holder = Settings.from_env(env).open_store()
    holder.current_version()  # this process's Lite server now owns the file
    w = Worker(env=env, artifact_dir=artifact_dir, log_path=tmp_path / "worker.log", own_session=True)
    try:
        w.spawn()
        seen = wait_until(lambda: (h := w.health()) and h[1].get("status") == "degraded" and h, WAIT_S,
                          interval=0.3,
                          what="worker reporting the locked store")
        produce_stream(kafka_bootstrap, env["MINDSTREAM_TOPIC_INTERACTIONS"], stream.messages)
        wait_until(lambda: committed_lag(w) == len(stream.messages), 30, what="all events on the topic")
        w.wait_for(lambda: w.metric("mindstream_events_in_total") > 0, WAIT_S, "the worker read events")
        lags_while_locked = lags_across_commits(w)  # it holds them, unacked, and keeps retrying the store
        read_while_locked = w.metric("mindstream_events_in_total")
        alive_while_locked = w.proc.poll() is None
        released = time.monotonic()
        release_lite(holder)
        w.wait_for(lambda: committed_lag(w) == 0, WAIT_S, interval=0.5,
                   what="caught up once the file is free")
        catch_up_s = time.monotonic() - released
        wait_until(lambda: (h := w.health()) and h[1].get("status") == "ok", 30, what="healthy again")
        expected = expected_vectors(runtime, stream, sorted(stream.events_of))
        wrong = wrong_over_http(w, expected)
        dead = dlq_messages(env)
        print(f"\nlocked store at start: {len(stream.messages)} messages over 60 users; "
              f"health while locked {seen}; "
              f"read {read_while_locked:.0f}, lag while locked {sorted(set(lags_while_locked))}; caught up "
              f"{catch_up_s:.1f}s after the lock was released; "
              f"wrong vectors {len(wrong)}, DLQ {len(dead)}")
        assert seen[0] == 503 and "is open in another process" in seen[1]["error"]
        assert seen[1]["event_loop"] == "uvloop"  # the same fields as a healthy answer
        assert alive_while_locked and set(lags_while_locked) == {len(stream.messages)}
        assert wrong == [] and dead == []
    finally:
        w.stop()
        cleanup_topics(kafka_bootstrap, env)
