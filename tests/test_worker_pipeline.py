"""Natural batching and pipelining without a broker.

`Intake`: an idle stream's first event is taken at once, events that arrive while a batch is processed form
the next batch, the cap holds, and a linger waits. `BatchProcessor`: batch N+1's plan and tower call overlap
batch N's store write, writes stay in order, acks come after the write, de-duplication sees batch N's events
before its save, and a failure after some users were saved dead-letters only the others' events. (Losing
nothing when the worker is killed at any point: tests/test_reliability_crash.py, against the real thing.)
"""

from __future__ import annotations

import asyncio
import threading
from types import SimpleNamespace

import pytest

from streams.config import ConfigError, Settings
from streams.events import encode_event
from streams.updater import Recompute
from streams.worker.batches import BatchProcessor, Popularity
from streams.worker.intake import Intake
from streams.worker.service import Resources, WorkerService


def test_an_idle_streams_first_event_is_taken_without_waiting_for_more():
    async def scenario() -> tuple[list, bool]:
        intake = Intake(max_events=256)
        taker = asyncio.ensure_future(intake.take())
        await asyncio.sleep(0)
        waiting = not taker.done()  # nothing buffered: take waits
        await intake.put("e1")
        return await asyncio.wait_for(taker, timeout=60), waiting

    batch, waited_while_empty = asyncio.run(scenario())
    assert batch == ["e1"] and waited_while_empty


def test_events_buffered_while_a_batch_is_processed_form_the_next_batch_up_to_the_cap():
    async def scenario() -> list[list[str]]:
        intake = Intake(max_events=3)
        for name in ("a", "b"):
            await intake.put(name)
        first = await intake.take()
        producer = asyncio.ensure_future(_put_all(intake, ["c", "d", "e", "f", "g"]))
        await asyncio.sleep(0.01)  # "processing" the first batch; the producer fills the buffer to the cap
        blocked = not producer.done()
        second = await intake.take()
        await asyncio.sleep(0.01)
        third = await intake.take()
        await asyncio.wait_for(producer, timeout=60)
        return [first, second, third, ["blocked" if blocked else "not blocked"]]

    assert asyncio.run(scenario()) == [["a", "b"], ["c", "d", "e"], ["f", "g"], ["blocked"]]


def test_a_linger_waits_for_more_events_and_a_full_buffer_ends_it_early():
    async def scenario() -> tuple[list, list]:
        lingering = Intake(max_events=10, linger_s=0.05)
        await lingering.put("a")
        taker = asyncio.ensure_future(lingering.take())
        await asyncio.sleep(0.01)
        await lingering.put("b")  # arrives within the linger: same batch
        first = await asyncio.wait_for(taker, timeout=60)
        capped = Intake(max_events=2, linger_s=60)
        await capped.put("x")
        taker = asyncio.ensure_future(capped.take())
        await capped.put("y")  # full: the 60 s linger ends now
        return first, await asyncio.wait_for(taker, timeout=30)

    assert asyncio.run(scenario()) == (["a", "b"], ["x", "y"])


def test_the_linger_defaults_to_none_and_a_bad_one_is_refused_with_its_name():
    assert Settings.from_env({}).batch_window_s == 0
    with pytest.raises(ConfigError, match="MINDSTREAM_BATCH_WINDOW_S"):
        Settings.from_env({"MINDSTREAM_BATCH_WINDOW_S": "-1"})


async def _put_all(intake: Intake, names: list[str]) -> None:
    for name in names:
        await intake.put(name)


# --- pipelining: the next batch's tower call overlaps this batch's store write ---------------------------


class GatedResources(Resources):
    """A fake tower and store whose writes wait for `release` (a threading.Event per write): the test
    decides when batch N's write finishes, and sees what happened meanwhile."""

    def __init__(self) -> None:
        super().__init__(SimpleNamespace(manifest=SimpleNamespace(model_version="v1")), None, max_len=8)
        self.log: list[tuple[str, dict[str, int]]] = []  # (tower | write start | write end, user -> len)
        self.gates: list[threading.Event] = []

    def compute(self, users, user_profiles):
        lengths = {user: len(history["items"]) for user, history in users.items()}
        self.log.append(("tower", lengths))
        updates = [{"user_id": user, "model_version": "v1", "num_interests": 1} for user in users]
        return Recompute(rows=[], delete_keys=[], updates=updates,
                         interests=[SimpleNamespace(lengths=lengths)])

    def write(self, result):
        lengths = result.interests[0].lengths
        gate = threading.Event()
        self.gates.append(gate)
        self.log.append(("write start", lengths))
        assert gate.wait(timeout=60), "the test never released this write"
        self.log.append(("write end", lengths))

    def cleanup_if_due(self):
        pass


class Event:
    """What the processor reads of a faust event (weak-referenceable, as faust's events are)."""

    def __init__(self, key: bytes, value: bytes, offset: int) -> None:
        self.message = SimpleNamespace(key=key, value=value, topic="interactions", partition=0, offset=offset)


def pipeline(fail_update_for: str | None = None) -> SimpleNamespace:
    resources = GatedResources()
    settings = Settings.from_env({})
    service = WorkerService(settings, open_resources=lambda: resources)
    world = SimpleNamespace(resources=resources, histories={}, updates=[], dlq=[], acked=[])

    async def send_update(**kwargs):
        if kwargs["key"] == fail_update_for:
            raise RuntimeError("broker gone")
        world.updates.append(kwargs["key"])

    async def send_dlq(**kwargs):
        world.dlq.append(kwargs)

    async def ack(event):
        world.acked.append(event.message.offset)

    world.ack = ack
    world.processor = BatchProcessor(settings, service, histories=world.histories, profiles={},
                                     send_update=send_update, send_dlq=send_dlq, popularity=Popularity())
    return world


def interaction(user: str, item: str, offset: int, event_id: str | None = None) -> Event:
    return Event(user.encode(), encode_event(user, item, 1_000 + offset, event_id=event_id or f"e{offset}"),
                 offset)


async def until(predicate, what: str) -> None:
    for _ in range(6000):
        if predicate():
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"never happened: {what}")


def test_the_next_batch_is_planned_and_its_tower_called_while_this_write_runs_and_writes_stay_in_order():
    world = pipeline()

    async def scenario() -> tuple[list, list, list]:
        p = world.processor
        await p.submit_interactions([interaction("u1", "a", 0)], ack=world.ack)
        await until(lambda: world.resources.gates, "batch 1's write started")
        # Batch 2 of the same user: its tower call runs now, while batch 1's write is held.
        second = asyncio.ensure_future(p.submit_interactions([interaction("u1", "b", 1)], ack=world.ack))
        await until(lambda: len([e for e in world.resources.log if e[0] == "tower"]) == 2, "batch 2's tower")
        during = list(world.resources.log)
        acked_during = list(world.acked)
        world.resources.gates[0].set()
        await second
        await until(lambda: len(world.resources.gates) == 2, "batch 2's write started")
        world.resources.gates[1].set()
        await p.drain()
        return during, acked_during, world.resources.log

    during, acked_during, log = asyncio.run(scenario())
    # Batch 2 planned from batch 1's history before batch 1 was saved (2 items), its tower call overlapping.
    assert during == [("tower", {"u1": 1}), ("write start", {"u1": 1}), ("tower", {"u1": 2})]
    assert acked_during == []  # nothing acked before its write
    assert log[3:] == [("write end", {"u1": 1}), ("write start", {"u1": 2}), ("write end", {"u1": 2})]
    assert [item[0] for item in world.histories["u1"]["items"]] == ["a", "b"]
    assert world.acked == [0, 1] and world.updates == ["u1", "u1"]


def test_a_duplicate_of_an_event_whose_batch_is_still_being_written_is_dropped():
    world = pipeline()

    async def scenario() -> None:
        p = world.processor
        await p.submit_interactions([interaction("u1", "a", 0, event_id="x")], ack=world.ack)
        await until(lambda: world.resources.gates, "batch 1's write started")
        second = asyncio.ensure_future(
            p.submit_interactions([interaction("u1", "a", 1, event_id="x")], ack=world.ack))
        await asyncio.sleep(0.05)
        world.resources.gates[0].set()
        await second
        await p.drain()

    asyncio.run(scenario())
    assert [e for e in world.resources.log if e[0] == "tower"] == [("tower", {"u1": 1})]  # one recompute
    assert [item[0] for item in world.histories["u1"]["items"]] == ["a"]
    assert world.acked == [0, 1] and world.dlq == []


def test_a_failure_after_some_users_were_saved_dead_letters_only_the_others_events():
    world = pipeline(fail_update_for="u2")

    async def scenario() -> None:
        p = world.processor
        batch = [interaction("u1", "a", 0), interaction("u2", "b", 1), interaction("u1", "c", 2),
                 interaction("u3", "d", 3)]
        await p.submit_interactions(batch, ack=world.ack)
        await until(lambda: world.resources.gates, "the write started")
        world.resources.gates[0].set()
        await p.drain()

    asyncio.run(scenario())
    assert world.updates == ["u1"] and sorted(world.histories) == ["u1"]  # u1 saved before u2 failed
    assert [d["key"] for d in world.dlq] == [b"u2", b"u3"]  # u1's events are not dead-lettered
    assert world.acked == [0, 1, 2, 3]
