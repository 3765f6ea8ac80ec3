"""A synthetic interaction stream and its offline truth, for the reliability tests.

Every expected vector is an offline recompute (`UserTowerRuntime.infer` on the user's full event list, last
max_len), never a number from an earlier run.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass

import numpy as np

from support.milvus import release_lite
from support.topics import produce
from support.worker import Worker


@dataclass
class Stream:
    """Messages in send order, and per user the distinct events in arrival order (item, ts_ms, event_id)."""

    messages: list[tuple[bytes, bytes]]
    events_of: dict[str, list[tuple[str, int, str]]]
    duplicates: int


def make_stream(items: list[str], n_users: int, n_events: int, *, seed_: int, user_prefix: str,
                dup_rate: float = 0.02, unknown_rate: float = 0.01, late_rate: float = 0.1) -> Stream:
    """Every user gets at least one event; 2 % re-sends of earlier events (same event id), 1 % items the
    model does not know (kept in the history, no effect on vectors), 10 % events stamped out of order."""
    rng = np.random.default_rng(seed_)
    base_ms = int(time.time() * 1000) - 3_600_000
    users = [f"{user_prefix}{u}" for u in range(n_users)]
    order = list(range(n_users)) + rng.integers(0, n_users, n_events - n_users).tolist()
    messages: list[tuple[bytes, bytes]] = []
    sent: list[tuple[bytes, bytes]] = []
    events_of: dict[str, list[tuple[str, int, str]]] = {u: [] for u in users}
    duplicates = 0
    for i, u in enumerate(order):
        if sent and rng.random() < dup_rate:
            messages.append(sent[int(rng.integers(0, len(sent)))])
            duplicates += 1
        user = users[u]
        item = "unknown-item" if rng.random() < unknown_rate else items[int(rng.integers(0, len(items)))]
        ts_ms = base_ms + 10 * i - (int(rng.integers(0, 200_000)) if rng.random() < late_rate else 0)
        event_id = f"{user_prefix}e{i}"
        value = json.dumps({"user_id": user, "item_id": item, "ts": ts_ms, "event_id": event_id}).encode()
        messages.append((user.encode(), value))
        sent.append(messages[-1])
        events_of[user].append((item, ts_ms, event_id))
    return Stream(messages, events_of, duplicates)


def expected_history(events: list[tuple[str, int, str]], max_len: int) -> list[list]:
    """The table rule: ordered by ts, equal ts in arrival order (a stable sort), last max_len kept."""
    return [list(e) for e in sorted(events, key=lambda e: e[1])][-max_len:]


def expected_vectors(runtime, stream: Stream, users: list[str]) -> dict[str, np.ndarray]:
    """Offline recompute of every user (batched through the same runtime, one user per row).

    Returns:
        {user: (K'u, d) float32}: the valid interest vectors of each user, slot order.
    """
    max_len = runtime.manifest.max_history_length
    out: dict[str, np.ndarray] = {}
    for start in range(0, len(users), 512):
        chunk = users[start : start + 512]
        histories = [[e[0] for e in expected_history(stream.events_of[u], max_len)] for u in chunk]
        hist, mask = runtime.encode_histories(histories)
        tower = runtime.infer(hist, mask, runtime.encode_profiles([None] * len(chunk)))
        for b, user in enumerate(chunk):
            valid = tower.valid_interest_mask[b] & mask[b].any()
            out[user] = tower.interest_vectors[b][valid]
    return out


def stored_vectors_of(env: dict[str, str], users: list[str],
                      version: str | None = None) -> dict[str, np.ndarray]:
    """Every user's stored vectors, read in this process (the worker must be stopped: a Lite file is one
    process's)."""
    from streams.config import Settings

    store = Settings.from_env(env).open_store()
    try:
        found = store.get_user_interests(users, model_version=version)
    finally:
        release_lite(store)
    return {u: np.array([r.vector for r in rows], dtype=np.float32).reshape(len(rows), -1)
            for u, rows in found.items()}


def count_mismatches(stored: dict[str, np.ndarray], expected: dict[str, np.ndarray]) -> list[str]:
    """Users whose stored vectors are missing or differ from `expected`."""
    wrong = []
    for user, want in expected.items():
        got = stored.get(user)
        if got is None or got.shape != want.shape or not np.allclose(got, want, rtol=1e-5, atol=1e-5):
            wrong.append(user)
    return wrong


def wrong_over_http(worker: Worker, expected: dict[str, np.ndarray]) -> list[str]:
    """Users whose vectors, read from the running worker over HTTP, differ from `expected`."""
    stored = {}
    for user in expected:
        rows = sorted(worker.interests(user)["interests"], key=lambda r: r["slot"])
        stored[user] = np.array([r["vector"] for r in rows], dtype=np.float32).reshape(len(rows), -1)
    return count_mismatches(stored, expected)


def check_histories(env: dict[str, str], stream: Stream, max_len: int) -> tuple[int, int]:
    """The table from its changelog: (users with a repeated event, users whose history is not the
    expected one)."""
    from streams.config import Settings
    from streams.ops import histories_from_changelog

    table = histories_from_changelog(Settings.from_env(env))
    repeated = wrong = 0
    for user, events in stream.events_of.items():
        items = table.get(user, {}).get("items", [])
        ids = [item[2] for item in items]
        repeated += len(ids) != len(set(ids))
        wrong += [list(item) for item in items] != expected_history(events, max_len)
    return repeated, wrong


def produce_stream(bootstrap: str, topic: str, messages: list[tuple[bytes, bytes]]) -> None:
    """Send a large stream's messages, batched (linger 20 ms, 256 KiB batches)."""
    produce(bootstrap, topic, messages, linger_ms=20, batch_size=256 * 1024)
