"""The store's pure bookkeeping, without Milvus: how a write is laid out and checked (`plan_write`), and which
replaced generations wait for the clean-up (`CleanupQueue`). The Milvus side is in tests/test_store.py."""

from __future__ import annotations

import numpy as np
import pytest

from streams.store.interests import DELETE_USERS_PER_FILTER, CleanupQueue, plan_write


def row(user: str, slot: int, **extra) -> dict:
    return {"user_id": user, "slot": slot, "vector": np.ones(2, np.float32), "event_ts_ms": 7, **extra}


def test_a_write_becomes_one_generation_of_keyed_columns_and_deleted_slots_of_other_users():
    plan = plan_write([row("a", 0), row("a", 2, updated_at_ms=5), row("b", 1)], ["a#1", "c#0", "c#3"],
                      version="v1", generation=42, now=99)
    assert plan.columns["key"] == ["a#0#42", "a#2#42", "b#1#42"]
    assert plan.columns["generation"] == [42, 42, 42] and plan.columns["model_version"] == ["v1"] * 3
    assert plan.columns["updated_at_ms"] == [99, 5, 99]
    assert plan.slots_of == {"a": [0, 2], "b": [1]}
    assert plan.deleted_slots == {"c": {0, 3}}  # a's older generation goes whole; no slot delete needed


@pytest.mark.parametrize(("rows", "deletes", "message"), [
    ([row("a", 0, pk="a#1")], [], "does not match"),
    ([row("a", 0), row("a", 0)], [], "appears twice"),
    ([row("a", 0)], ["a#0"], "both written and deleted"),
    ([row("bad id!", 0)], [], "is not valid"),
    ([], ["no-slot"], "is not of the form"),
])
def test_a_bad_write_is_refused_with_the_reason(rows, deletes, message):
    with pytest.raises(ValueError, match=message):
        plan_write(rows, deletes, version="v1", generation=1, now=0)


class Clock:
    now = 0.0

    def __call__(self) -> float:
        return self.now


def test_replaced_generations_are_queued_by_key_and_users_of_an_earlier_process_by_their_first_generation():
    queue = CleanupQueue(batch_rows=100, interval_s=60, clock=Clock())
    queue.record("v1", 10, {"u": [0, 1]}, {})
    queue.record("v1", 11, {"u": [0]}, {})
    queue.record("v1", 12, {"u": [2]}, {})
    keys, users = queue.take()
    assert keys == {"v1": ["u#0#10", "u#1#10", "u#0#11"]}
    assert users == {"v1": {"u": 10}}  # rows of u older than generation 10 were not written by this store
    assert queue.take() == ({}, {})


def test_a_slot_deleted_after_a_write_is_not_deleted_again_by_key():
    queue = CleanupQueue(batch_rows=100, interval_s=60, clock=Clock())
    queue.record("v1", 10, {"u": [0, 1]}, {})
    queue.record("v1", 11, {}, {"u": {1}})
    queue.record("v1", 12, {"u": [0]}, {})
    keys, _ = queue.take()
    assert keys == {"v1": ["u#0#10"]}


def test_a_cleanup_is_due_after_enough_rows_or_after_the_interval_and_failures_are_requeued():
    clock = Clock()
    queue = CleanupQueue(batch_rows=3, interval_s=60, clock=clock)
    queue.record("v1", 1, {"u": [0, 1]}, {})
    assert not queue.due()
    queue.record("v1", 2, {"w": [0]}, {})
    assert queue.due()
    queue.take()
    assert not queue.due()
    clock.now = 61
    assert queue.due()
    queue.requeue_keys("v1", ["u#0#1"])
    queue.requeue_users("v1", [("x", 5)])
    queue.requeue_users("v1", [("x", 3)])
    assert queue.take() == ({"v1": ["u#0#1"]}, {"v1": {"x": 3}})
    queue.record("v2", 3, {"u": [0]}, {})
    queue.forget("v2")
    assert queue.take() == ({}, {})


def test_a_partial_cleanup_leaves_users_of_an_earlier_process_until_enough_wait_or_their_interval_passed():
    clock = Clock()
    queue = CleanupQueue(batch_rows=100, interval_s=1, clock=clock, users_interval_s=30)
    queue.record("v1", 10, {"u": [0]}, {})
    queue.record("v1", 11, {"u": [0]}, {})
    assert queue.take(full=False) == ({"v1": ["u#0#10"]}, {})  # u's older rows: a scan, not yet
    clock.now = 31
    assert queue.take(full=False) == ({}, {"v1": {"u": 10}})
    queue.record("v1", 12, {f"n{i}": [0] for i in range(DELETE_USERS_PER_FILTER)}, {})
    keys, users = queue.take(full=False)  # enough users wait for one filter delete
    assert len(users["v1"]) == DELETE_USERS_PER_FILTER
