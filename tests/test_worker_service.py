"""The worker's retries without a broker: one backoff, store outages waited out on a fresh connection,
other failures retried then dead-lettered per user. A fake store and a fake tower (pure logic only)."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

import numpy as np
import pytest

from streams.config import Settings
from streams.store import StoreError
from streams.worker.service import Resources, WorkerService, backoff


class TinyTower:
    """K = 2 slots, d = 2: slot 0 holds the history length, slot 1 is valid from two items on."""

    manifest = SimpleNamespace(model_version="v1", num_interests=2, max_history_length=8)

    def encode_histories(self, histories):
        length = max(1, *(len(h) for h in histories))
        mask = np.array([[j < len(h) for j in range(length)] for h in histories])
        return mask.astype(np.int64), mask

    def encode_profiles(self, profiles):
        return np.zeros((len(profiles), 1), np.int64)

    def infer(self, history, history_mask, profile):
        n = history_mask.sum(axis=1).astype(np.float32)
        vectors = np.stack([np.stack([n, n], 1), np.stack([n, -n], 1)], 1)
        return SimpleNamespace(interest_vectors=vectors, valid_interest_mask=np.stack([n >= 1, n >= 2], 1),
                               interest_bias=np.zeros((len(n), 2), np.float32))


class ScriptedStore:
    """Fails the next `outages` writes with StoreError, and every write that touches a user in `poison`."""

    def __init__(self, outages: int = 0, poison: frozenset[str] = frozenset()) -> None:
        self.outages = outages
        self.poison = poison
        self.written: dict[str, list[dict]] = {}
        self.reconnects = 0

    def write_user_interests(self, rows, delete_keys=(), *, model_version=None):
        if self.outages:
            self.outages -= 1
            raise StoreError("vector store at test.db: write user interests failed: server gone")
        users = {row["user_id"] for row in rows}
        if users & self.poison:
            raise ValueError(f"cannot write {sorted(users & self.poison)}")
        for user in users:
            self.written[user] = [row for row in rows if row["user_id"] == user]

    def reconnect(self):
        self.reconnects += 1


def history(*items: str) -> dict:
    return {"items": [[item, 1000 + i, f"e{i}"] for i, item in enumerate(items)], "seen": []}


def make_service(store: ScriptedStore, *, max_attempts: int = 3) -> tuple[WorkerService, list[float]]:
    slept: list[float] = []

    async def sleep(seconds: float) -> None:
        slept.append(seconds)

    settings = Settings.from_env({}, max_attempts=max_attempts)
    service = WorkerService(settings, open_resources=lambda: Resources(TinyTower(), store, max_len=8),
                            sleep=sleep)
    return service, slept


def test_backoff_doubles_from_half_a_second_up_to_its_cap():
    delays = backoff()
    assert [next(delays) for _ in range(6)] == [0.5, 1.0, 2.0, 4.0, 5.0, 5.0]
    uncapped = backoff(cap_s=None)
    assert [next(uncapped) for _ in range(5)] == [0.5, 1.0, 2.0, 4.0, 8.0]


def test_a_store_outage_is_waited_out_on_a_fresh_connection_and_nothing_is_dead_lettered():
    store = ScriptedStore(outages=3)
    service, slept = make_service(store, max_attempts=1)
    dead: list = []

    async def dead_letter(event, reason):
        dead.append((event, reason))

    written = asyncio.run(service.write_with_retry({"u1": history("a", "b")}, {}, {"u1": ["event"]},
                                                   dead_letter))

    assert list(written) == ["u1"] and written["u1"]["num_interests"] == 2
    assert [row["slot"] for row in store.written["u1"]] == [0, 1]
    assert slept == [0.5, 1.0, 2.0] and store.reconnects == 3
    assert dead == [] and not service.outage.is_down  # recovered once the write went through


def test_the_outage_state_says_down_with_the_last_error_until_a_write_succeeds():
    store = ScriptedStore(outages=1)
    service, _ = make_service(store)
    seen: list = []

    async def observing_sleep(seconds: float) -> None:
        seen.append((service.outage.is_down, service.outage.last_error))

    service._sleep = observing_sleep
    asyncio.run(service.write_through_outages({"u1": history("a")}, {}))
    assert seen == [(True, "vector store at test.db: write user interests failed: server gone")]
    assert not service.outage.is_down


def test_failing_batch_is_retried_then_each_user_alone_and_only_the_failing_users_events_are_dead_lettered():
    store = ScriptedStore(poison=frozenset({"bad"}))
    service, slept = make_service(store, max_attempts=3)
    dead: list = []

    async def dead_letter(event, reason):
        dead.append((event, reason))

    users = {"good": history("a"), "bad": history("b"), "also-good": history("c", "d")}
    events_of = {"good": ["g1"], "bad": ["b1", "b2"], "also-good": ["a1"]}
    written = asyncio.run(service.write_with_retry(users, {}, events_of, dead_letter))

    assert sorted(written) == ["also-good", "good"] and sorted(store.written) == ["also-good", "good"]
    assert slept == [0.5, 1.0]  # between the three tries of the whole batch
    assert [event for event, _ in dead] == ["b1", "b2"]
    assert all(reason.startswith("processing failed after 3 attempts: ValueError") for _, reason in dead)


def test_the_store_is_opened_once_retrying_while_it_cannot_be_opened():
    store = ScriptedStore()
    attempts = []

    def open_resources() -> Resources:
        attempts.append(1)
        if len(attempts) < 3:
            raise StoreError("Milvus Lite file x.db is open in another process")
        return Resources(TinyTower(), store, max_len=8)

    service, slept = make_service(store)
    service._open_resources = open_resources

    async def open_twice():
        return await asyncio.gather(service.ready(), service.ready())

    first, second = asyncio.run(open_twice())
    assert first is second is service.resources and len(attempts) == 3
    assert slept == [0.5, 1.0] and not service.outage.is_down


def test_an_error_other_than_an_outage_while_opening_is_raised():
    service, _ = make_service(ScriptedStore())

    def broken() -> Resources:
        raise FileNotFoundError("artifact/manifest.json")

    service._open_resources = broken
    with pytest.raises(FileNotFoundError):
        asyncio.run(service.ready())
    assert service.resources is None
