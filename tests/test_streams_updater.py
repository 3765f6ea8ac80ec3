"""updater.py: pure batch logic (histories, de-duplication, one tower call, store rows) without Kafka.

A tiny fake tower is used here ONLY to check the bookkeeping around the tower (which user gets which
slots, which keys are deleted, how many calls); the real onnxruntime tower is exercised end to end in
tests/test_streams_worker.py.
"""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np

from streams.events import Interaction
from streams.updater import (
    apply_events,
    compute_interests,
    empty_history,
    interest_key,
    plan_batch,
    recompute,
    store_operations,
)

K = 4


# Valid slots the fake tower reports for n known items (a table, so no test re-derives it from a formula).
VALID_SLOTS_BY_LENGTH = {0: 1, 1: 1, 2: 1, 3: 1, 4: 2, 5: 2, 6: 2}


class FakeTower:
    """Knows items i1..i50; valid slots from VALID_SLOTS_BY_LENGTH; vectors encode (row sum, slot,
    profile)."""

    def __init__(self) -> None:
        self.manifest = SimpleNamespace(model_version="v1", num_interests=K, max_history_length=6)
        self.infer_calls = 0
        self.batch_sizes: list[int] = []

    def encode_histories(self, histories):
        rows = [[int(x[1:]) for x in h if x.startswith("i") and x[1:].isdigit() and int(x[1:]) <= 50][-6:]
                for h in histories]
        length = max([len(r) for r in rows], default=0) or 1
        hist = np.zeros((len(rows), length), np.int64)
        mask = np.zeros((len(rows), length), bool)
        for b, r in enumerate(rows):
            hist[b, : len(r)] = r
            mask[b, : len(r)] = True
        return hist, mask

    def encode_profiles(self, profiles):
        return np.array([[1 if p else 0] for p in profiles], np.int64).reshape(len(profiles), 1)

    def infer(self, history, history_mask, profile):
        self.infer_calls += 1
        self.batch_sizes.append(history.shape[0])
        k = np.array([VALID_SLOTS_BY_LENGTH[int(n)] for n in history_mask.sum(axis=1)])
        valid = np.arange(K)[None, :] < k[:, None]
        vectors = np.zeros((history.shape[0], K, 3), np.float32)
        vectors[:, :, 0] = history.sum(axis=1)[:, None]
        vectors[:, :, 1] = np.arange(K)[None, :]
        vectors[:, :, 2] = profile[:, 0][:, None]
        bias = -np.arange(K, dtype=np.float32)[None, :].repeat(history.shape[0], axis=0)  # slot s: -s
        return SimpleNamespace(interest_vectors=vectors, valid_interest_mask=valid, interest_bias=bias)


def ev(user: str, item: str, ts: int, eid: str | None = None) -> Interaction:
    return Interaction(user, item, ts, eid or f"{user}-{item}-{ts}")


def test_events_are_kept_in_ts_order_ties_in_arrival_order_and_trimmed_to_max_len():
    history, applied = apply_events(None,
                                    [ev("u", "a", 30), ev("u", "b", 10), ev("u", "c", 30), ev("u", "d", 20)],
                                    max_len=3, max_seen=10)
    assert [it[0] for it in history["items"]] == ["d", "a", "c"]
    assert len(applied) == 4 and len(history["seen"]) == 4


def test_duplicate_event_id_is_appended_once_across_and_within_batches():
    first, _ = apply_events(None, [ev("u", "a", 1, "e1")], max_len=10, max_seen=10)
    second, applied = apply_events(first,
                                   [ev("u", "a", 1, "e1"), ev("u", "b", 2, "e2"), ev("u", "b", 2, "e2")],
                                   max_len=10, max_seen=10)
    assert [it[0] for it in second["items"]] == ["a", "b"]
    assert [e.event_id for e in applied] == ["e2"]
    assert first == {"items": [["a", 1, "e1"]], "seen": ["e1"]}  # input not modified


def test_seen_ids_outlive_the_item_window_but_are_bounded():
    history, _ = apply_events(None, [ev("u", f"i{j}", j) for j in range(8)], max_len=2, max_seen=5)
    assert len(history["items"]) == 2 and len(history["seen"]) == 5
    again, applied = apply_events(history, [ev("u", "i6", 6)], max_len=2, max_seen=5)  # item still in seen
    assert applied == [] and again == history


def test_plan_batch_collapses_users_and_reports_duplicates():
    current = {"u1": apply_events(None, [ev("u1", "i1", 1, "x")], max_len=5, max_seen=5)[0]}
    plan = plan_batch(current,
                      [ev("u1", "i1", 1, "x"), ev("u2", "i2", 2), ev("u1", "i3", 3), ev("u2", "i4", 4)],
                      max_len=5, max_seen=5)
    assert list(plan.histories) == ["u1", "u2"]
    assert [it[0] for it in plan.histories["u1"]["items"]] == ["i1", "i3"]
    assert [e.item_id for e in plan.applied["u2"]] == ["i2", "i4"]
    assert [e.event_id for e in plan.duplicates] == ["x"]


def test_user_with_only_duplicates_is_not_recomputed():
    current = {"u1": apply_events(None, [ev("u1", "i1", 1, "x")], max_len=5, max_seen=5)[0]}
    plan = plan_batch(current, [ev("u1", "i1", 1, "x")], max_len=5, max_seen=5)
    assert plan.histories == {} and len(plan.duplicates) == 1


def test_one_tower_call_per_batch_and_only_valid_slots_become_rows():
    tower = FakeTower()
    histories = {
        "short": apply_events(None, [ev("short", "i1", 1)], max_len=6, max_seen=9)[0],  # K'u = 1
        # 5 → 2
        "long": apply_events(None, [ev("long", f"i{j}", j) for j in range(1, 6)], max_len=6, max_seen=9)[0],
    }
    result = recompute(tower, histories, {"long": {"cohort": "a"}}, updated_at_ms=99)
    assert tower.infer_calls == 1 and tower.batch_sizes == [2]
    assert [r["pk"] for r in result.rows] == ["short#0", "long#0", "long#1"]
    assert sorted(result.delete_keys) == sorted(["short#1", "short#2", "short#3", "long#2", "long#3"])
    assert all(r["model_version"] == "v1" and r["updated_at_ms"] == 99 for r in result.rows)
    assert {r["user_id"]: r["event_ts_ms"] for r in result.rows} == {"short": 1, "long": 5}
    long_rows = [r for r in result.rows if r["user_id"] == "long"]
    assert long_rows[1]["vector"] == [15.0, 1.0, 1.0]  # sum of i1..i5, slot 1, profile known
    assert [r["bias"] for r in long_rows] == [0.0, -1.0]  # each slot's own merge bias travels with it
    assert result.updates == [
        {"user_id": "short", "model_version": "v1", "num_interests": 1, "event_ts_ms": 1,
         "updated_at_ms": 99},
        {"user_id": "long", "model_version": "v1", "num_interests": 2, "event_ts_ms": 5, "updated_at_ms": 99},
    ]


def test_user_whose_items_are_all_unknown_gets_no_vector_and_all_slots_deleted():
    tower = FakeTower()
    histories = {"cold": apply_events(None, [ev("cold", "zzz", 1)], max_len=6, max_seen=9)[0]}
    (ui,) = compute_interests(tower, histories)
    assert ui.slots == [] and ui.interest_vectors.shape == (0, 3) and ui.known_items == 0
    rows, deletes = store_operations([ui], num_interests=K, model_version="v1", updated_at_ms=0)
    assert rows == [] and deletes == [interest_key("cold", s) for s in range(K)]


def test_a_growing_history_keeps_exactly_the_slots_the_tower_marks_valid():
    tower = FakeTower()
    slots = []
    for n in (1, 2, 4, 6):
        history, _ = apply_events(empty_history(), [ev("u", f"i{j}", j) for j in range(1, n + 1)], max_len=6,
                                  max_seen=9)
        (ui,) = compute_interests(tower, {"u": history})
        slots.append(ui.slots)
    assert slots == [[0], [0], [0, 1], [0, 1]]


def test_primary_keys_are_unique_within_a_call():
    tower = FakeTower()
    events = [ev(f"u{j % 7}", f"i{j % 50 + 1}", j) for j in range(200)]
    plan = plan_batch({}, events, max_len=6, max_seen=50)
    result = recompute(tower, plan.histories, None, updated_at_ms=1)
    pks = [r["pk"] for r in result.rows]
    assert len(pks) == len(set(pks)) and not set(pks) & set(result.delete_keys)
    assert tower.infer_calls == 1
