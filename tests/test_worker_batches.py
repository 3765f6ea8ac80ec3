"""The agents' work without a broker: de-duplication, dead-lettering bad events with their reason, profile
changes, and a batch that fails unexpectedly. Tables are dicts, topics are lists, the store is a fake."""

from __future__ import annotations

import asyncio
import json
from types import SimpleNamespace

from streams.config import Settings
from streams.events import encode_event
from streams.updater import Recompute
from streams.worker.batches import BatchProcessor, Popularity
from streams.worker.service import Resources, WorkerService


class RecordingResources(Resources):
    """Skips the tower and the store: each write is recorded as user -> history length."""

    def __init__(self) -> None:
        super().__init__(SimpleNamespace(manifest=SimpleNamespace(model_version="v1")), None, max_len=8)
        self.writes: list[dict[str, int]] = []

    def compute(self, users, user_profiles):
        updates = [{"user_id": user, "model_version": "v1", "num_interests": 1,
                    "history_length": len(history["items"])} for user, history in users.items()]
        return Recompute(rows=[], delete_keys=[], updates=updates, interests=[])

    def write(self, result):
        self.writes.append({u["user_id"]: u.pop("history_length") for u in result.updates})

    def cleanup_if_due(self):
        pass


class Event:
    """What the processor reads of a faust event (weak-referenceable, as faust's events are)."""

    def __init__(self, key: bytes | None, value: bytes | None, offset: int, topic: str) -> None:
        self.message = SimpleNamespace(key=key, value=value, topic=topic, partition=0, offset=offset)


def message(key: bytes | None, value: bytes | None, offset: int, topic: str = "interactions") -> Event:
    return Event(key, value, offset, topic)


def processor() -> tuple[BatchProcessor, dict, dict, RecordingResources]:
    store = RecordingResources()
    settings = Settings.from_env({})
    service = WorkerService(settings, open_resources=lambda: store)
    sent: dict[str, list] = {"updates": [], "dlq": []}

    async def send_update(**kwargs):
        sent["updates"].append(kwargs)

    async def send_dlq(**kwargs):
        sent["dlq"].append(kwargs)

    tables: dict[str, dict] = {"histories": {}, "profiles": {}}
    batch = BatchProcessor(settings, service, histories=tables["histories"], profiles=tables["profiles"],
                           send_update=send_update, send_dlq=send_dlq, popularity=Popularity())
    return batch, tables, sent, store


def test_a_duplicate_delivery_in_a_batch_and_across_batches_is_applied_once():
    batch, tables, sent, store = processor()
    first = encode_event("u1", "i1", 1_000, event_id="e1")
    asyncio.run(batch.interactions([message(b"u1", first, 0), message(b"u1", first, 1)]))
    asyncio.run(batch.interactions([message(b"u1", first, 2)]))

    assert [item[0] for item in tables["histories"]["u1"]["items"]] == ["i1"]
    assert store.writes == [{"u1": 1}] and [u["key"] for u in sent["updates"]] == ["u1"]
    assert sent["dlq"] == []


def test_bad_events_go_to_the_dlq_untouched_with_the_reason_and_good_ones_around_them_are_applied():
    batch, tables, sent, store = processor()
    events = [message(b"u1", encode_event("u1", "i1", 1_000), 0), message(b"u2", b"{not json", 1),
              message(b"u2", json.dumps({"user_id": "u2", "ts": 5}).encode(), 2),
              message(b"u3", encode_event("u3", "i3", 2_000), 3)]
    asyncio.run(batch.interactions(events))

    assert sorted(tables["histories"]) == ["u1", "u3"]
    assert [(d["key"], d["value"]) for d in sent["dlq"]] == [(b"u2", b"{not json"),
                                                            (b"u2", events[2].message.value)]
    reasons = [dict(d["headers"])["mindstream-reason"].decode() for d in sent["dlq"]]
    assert reasons[0].startswith("bad JSON") and reasons[1] == "missing field item_id"
    assert dict(sent["dlq"][0]["headers"])["mindstream-source"] == b"interactions/0/1"


def test_a_profile_change_is_stored_and_refreshes_a_user_with_a_history_and_a_tombstone_deletes_it():
    batch, tables, sent, store = processor()
    asyncio.run(batch.interactions([message(b"u1", encode_event("u1", "i1", 1_000), 0)]))
    profile = json.dumps({"cohort": "a"}).encode()
    asyncio.run(batch.profile_changes([message(b"u1", profile, 0, "user-profiles"),
                                       message(b"nobody", profile, 1, "user-profiles"),
                                       message(b"bad key!", profile, 2, "user-profiles")]))

    assert tables["profiles"] == {"u1": {"cohort": "a"}, "nobody": {"cohort": "a"}}
    assert store.writes == [{"u1": 1}, {"u1": 1}]  # nobody: no history, nothing to recompute
    assert [u["key"] for u in sent["updates"]] == ["u1", "u1"]
    assert [dict(d["headers"])["mindstream-reason"].decode()[:15] for d in sent["dlq"]] == ["user_id format:"]

    asyncio.run(batch.profile_changes([message(b"u1", None, 3, "user-profiles")]))
    assert "u1" not in tables["profiles"]


def test_an_unexpected_error_dead_letters_the_whole_batch_instead_of_crashing_the_agent():
    batch, tables, sent, store = processor()

    async def broken(events, progress):
        raise RuntimeError("boom")

    events = [message(b"u1", b"x", 0), message(b"u2", b"y", 1)]
    asyncio.run(batch.never_crash(broken, events))
    assert [d["value"] for d in sent["dlq"]] == [b"x", b"y"]
    reasons = {dict(d["headers"])["mindstream-reason"] for d in sent["dlq"]}
    assert reasons == {b"internal error: RuntimeError('boom')"}


def test_popular_items_are_counted_from_the_table_once_then_from_the_stream():
    popularity = Popularity()
    table = {"u1": {"items": [["a", 1, "e1"], ["b", 2, "e2"]]}, "u2": {"items": [["a", 3, "e3"]]}}
    popularity.add(["z"])  # counted before the first answer: the table already holds it
    assert popularity.top(2, table.values) == [("a", 2.0), ("b", 1.0)]
    popularity.add(["b", "b"])
    assert popularity.top(1, table.values) == [("b", 3.0)]
