"""The work inside the two agents, as plain methods: parse, read the tables, recompute, write, save, send.

`BatchProcessor` gets everything it touches as parameters (the tables as mappings, the sends as
coroutines, the `WorkerService`), so a unit test drives it with dicts, lists and a fake store.

Delivery is at-least-once: an event is acked only after its batch's vectors are written and its
histories re-assigned in the table (the interactions' write stage acks them; the profiles agent acks after
`profile_changes` returns). Duplicate deliveries are dropped by event
id, and a user's vectors are rewritten whole as a new generation (store keys ``user#slot#generation``), so
a replay after a crash is harmless.

Tables are co-partitioned with the input topics (a table key lives in the partition of the event that wrote
it). Inside a micro-batch faust has no single "current event", so each user's table entry is read and
written under one of that user's own events (`acting_for`): the changelog partition and the RocksDB
partition file are then that event's partition. This is why producers must key the topics by user id.
"""

from __future__ import annotations

import asyncio
import logging
import time
import weakref
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable, Iterator, MutableMapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from faust.streams import _current_event

from streams import metrics
from streams.config import Settings
from streams.events import Interaction, Rejection, parse_event, parse_profile
from streams.updater import BatchPlan, Recompute, plan_batch
from streams.worker.service import WorkerService, now_ms

log = logging.getLogger(__name__)

Send = Callable[..., Awaitable[Any]]  # a topic's `send(key=..., value=..., headers=...)`
Ack = Callable[[Any], Awaitable[Any]]  # the stream's `ack(event)`


@contextmanager
def acting_for(event: Any) -> Iterator[None]:
    """Make `event` faust's current event while a table entry of its user is read or written.

    faust picks a table key's partition (changelog partition, RocksDB partition file) from the current
    event, a context variable its stream iterator sets per event; a micro-batch has none of its own.
    """
    token = _current_event.set(weakref.ref(event))
    try:
        yield
    finally:
        _current_event.reset(token)


def dlq_headers(message: Any, reason: str, failed_at_ms: int) -> list[tuple[str, bytes]]:
    """The DLQ headers of `message` (the original key and value travel untouched)."""
    return [("mindstream-reason", reason.encode()),
            ("mindstream-source", f"{message.topic}/{message.partition}/{message.offset}".encode()),
            ("mindstream-failed-at-ms", str(failed_at_ms).encode())]


class Popularity:
    """Cold-start answer for a user without vectors: the items most seen in this worker's stream. Seeded
    once from the (changelog-restored) histories table, so a restarted worker does not start from nothing.
    Use it on the event loop only (the agent updates it there)."""

    def __init__(self) -> None:
        self._counts: Counter[str] = Counter()
        self._seeded = False

    def add(self, item_ids: Iterable[str]) -> None:
        self._counts.update(item_ids)

    def top(self, n: int, table_values: Callable[[], Iterable[Any]]) -> list[tuple[str, float]]:
        """The n items seen most; the first call counts from `table_values()` alone (it holds every event
        applied so far), not twice."""
        if not self._seeded:
            self._seeded = True
            self._counts.clear()
            for value in list(table_values()):
                self._counts.update(item[0] for item in (value or {}).get("items", []))
        return [(item, float(count)) for item, count in self._counts.most_common(n)]


@dataclass
class _Parsed:
    event: Any  # faust EventT
    interaction: Interaction


class Progress:
    """Which events of one batch are done (dead-lettered, duplicates, or their user's work saved): if the
    batch fails later, only the others are dead-lettered."""

    def __init__(self) -> None:
        self._done: set[int] = set()

    def finish(self, events: Iterable[Any]) -> None:
        self._done.update(id(event) for event in events)

    def pending(self, events: Iterable[Any]) -> list[Any]:
        return [event for event in events if id(event) not in self._done]


@dataclass
class _Write:
    """A batch between its tower call and its save: what the write stage needs."""

    plan: BatchPlan
    user_profiles: dict[str, Any]
    events_of: dict[str, list[Any]]  # user id -> that user's events in the batch
    last_event_of: dict[str, Any]  # user id -> the event whose partition holds the user's table entry
    computed: Recompute | None  # None: the tower call failed, the write stage retries it


class BatchProcessor:
    """The agents' micro-batches; never raises for a bad event (it is dead-lettered).

    Interactions are pipelined: `submit_interactions` parses a batch, plans it and runs its tower call while
    the previous batch's store write is still running, then starts its own write stage (write, send the
    updates, save the histories, ack) as a task once the previous one is done. So there is one store write
    at a time, in batch order (a user's write N+1 never lands before write N), and an event is acked only
    after its write. A planned history waits in `_in_flight` until it is saved in the table: the next
    batch's plan starts from it, so its events and their ids (de-duplication) are never missed.
    """

    def __init__(self, settings: Settings, service: WorkerService, *, histories: MutableMapping[str, Any],
                 profiles: MutableMapping[str, Any], send_update: Send, send_dlq: Send,
                 popularity: Popularity) -> None:
        self.settings = settings
        self.service = service
        self.histories = histories
        self.profiles = profiles
        self._send_update = send_update
        self._send_dlq = send_dlq
        self.popularity = popularity
        # Both agents read a user's table entries, write vectors, then save: one at a time, or one could write
        # vectors from a history the other has already replaced (a stale overwrite).
        self.user_state_lock = asyncio.Lock()
        self._in_flight: dict[str, Any] = {}  # user id -> planned history not yet saved in the table
        self._writing: asyncio.Task | None = None  # the write stage of the last submitted batch

    async def never_crash(self, process: Callable[[Sequence[Any], Progress], Awaitable[None]],
                          events: Sequence[Any], progress: Progress | None = None) -> None:
        """Run `process(events, progress)`; an unexpected error dead-letters the events not done yet with
        the reason instead of crashing the agent (a crashed faust agent restarts past its unacked events:
        faust-streaming issue 315)."""
        progress = progress or Progress()
        try:
            await process(events, progress)
        except Exception as exc:
            pending = progress.pending(events)
            log.exception("batch of %d events failed; dead-lettering its %d pending events", len(events),
                          len(pending))
            for event in pending:
                await self.dead_letter(event, f"internal error: {exc!r}")

    async def dead_letter(self, event: Any, reason: str, progress: Progress | None = None) -> None:
        """Send the original bytes (key and value untouched) to the DLQ; the reason travels in headers."""
        message = event.message
        metrics.EVENTS_DLQ.labels(metrics.dlq_kind(reason)).inc()
        log.info("DLQ %s[%s]@%s: %s", message.topic, message.partition, message.offset, reason)
        await self._send_dlq(key=message.key, value=message.value if message.value is not None else b"",
                             headers=dlq_headers(message, reason, now_ms()))
        if progress is not None:
            progress.finish([event])

    async def interactions(self, events: Sequence[Any], progress: Progress | None = None) -> None:
        """One micro-batch of raw `interactions` messages, written and saved when this returns (no acks)."""
        await self.submit_interactions(events, ack=None, progress=progress)
        await self.drain()

    async def submit_interactions(self, events: Sequence[Any], ack: Ack | None,
                                  progress: Progress | None = None) -> None:
        """Parse, plan and run the tower call of a micro-batch, then start its write stage as a task (after
        the previous batch's write stage); returns without waiting for the write. `ack(event)` is called for
        every event once its work is done or dead-lettered."""
        progress = progress or Progress()
        write: _Write | None = None
        try:
            write = await self._prepare(events, progress)
        except Exception as exc:
            await self._dead_letter_pending(events, progress, exc)
        await self.drain()
        self._writing = asyncio.ensure_future(self._write_stage(write, events, progress, ack))

    async def drain(self) -> None:
        """Wait for the write stage in progress (it never raises: it dead-letters what fails)."""
        if self._writing is not None:
            await self._writing

    def abandon(self) -> None:
        """The worker stops: cancel the write stage in progress; its events stay unacked (replayed)."""
        if self._writing is not None and not self._writing.done():
            self._writing.cancel()

    async def _dead_letter_pending(self, events: Sequence[Any], progress: Progress, exc: Exception) -> None:
        pending = progress.pending(events)
        log.error("batch of %d events failed; dead-lettering its %d pending events", len(events),
                  len(pending), exc_info=exc)
        for event in pending:
            await self.dead_letter(event, f"internal error: {exc!r}", progress)

    async def _prepare(self, events: Sequence[Any], progress: Progress) -> _Write | None:
        """Parse (bad events to the DLQ), plan from the in-flight or saved histories, one tower call."""
        metrics.EVENTS_IN.inc(len(events))
        metrics.BATCH_EVENTS.observe(len(events))
        parsed: list[_Parsed] = []
        for event in events:
            result = parse_event(event.message.value, key=event.message.key,
                                 max_future_s=self.settings.max_future_s)
            if isinstance(result, Rejection):
                await self.dead_letter(event, result.reason, progress)
            else:
                parsed.append(_Parsed(event, result))
        if not parsed:
            return None
        resources = await self.service.ready()
        async with self.user_state_lock:
            last_event_of = {p.interaction.user_id: p.event for p in parsed}  # the user's table partition
            current, user_profiles = {}, {}
            for user_id, event in last_event_of.items():
                with acting_for(event):
                    current[user_id] = (self._in_flight[user_id] if user_id in self._in_flight
                                        else self.histories.get(user_id))
                    user_profiles[user_id] = self.profiles.get(user_id)
            plan = plan_batch(current, [p.interaction for p in parsed], max_len=resources.max_len,
                              max_seen=self.settings.max_seen)
            metrics.EVENTS_DUPLICATE.inc(len(plan.duplicates))
            events_of: dict[str, list[Any]] = {}
            for p in parsed:
                events_of.setdefault(p.interaction.user_id, []).append(p.event)
            for user_id, user_events in events_of.items():
                if user_id not in plan.histories:  # only duplicates: nothing to do
                    progress.finish(user_events)
            if not plan.histories:
                return None
            for applied in plan.applied.values():
                self.popularity.add(e.item_id for e in applied)
            self._in_flight.update(plan.histories)
            computed = await self.service.compute(plan.histories, user_profiles)
        return _Write(plan, user_profiles, events_of, last_event_of, computed)

    async def _write_stage(self, write: _Write | None, events: Sequence[Any], progress: Progress,
                           ack: Ack | None) -> None:
        """Write the vectors, send the updates, save the histories, then ack every event of the batch."""
        try:
            if write is not None:
                await self._write_and_save(write, progress)
        except Exception as exc:
            await self._dead_letter_pending(events, progress, exc)
        finally:
            if write is not None:
                for user_id, history in write.plan.histories.items():
                    if self._in_flight.get(user_id) is history:  # no later batch planned from it
                        del self._in_flight[user_id]
        if ack is not None:
            for event in events:
                await ack(event)
        try:
            await self.service.cleanup_if_due()  # after the acks: never in a fresh write's way
        except Exception:
            log.exception("cleanup of replaced user interests failed; retried at the next one")

    async def _write_and_save(self, write: _Write, progress: Progress) -> None:
        plan = write.plan

        async def dead_letter(event: Any, reason: str) -> None:
            await self.dead_letter(event, reason, progress)

        written = await self.service.write_computed(plan.histories, write.user_profiles, write.computed,
                                                    write.events_of, dead_letter)
        started = time.perf_counter()
        now = time.time()
        for user_id, result in written.items():
            # The update message first: a crash before the table save replays the events (re-sending it); the
            # other order would let the replay find them applied and never send it.
            await self._send_update(key=user_id, value=result)
            with acting_for(write.last_event_of[user_id]):
                self.histories[user_id] = plan.histories[user_id]  # re-assign: what the changelog records
            progress.finish(write.events_of[user_id])
            for interaction in plan.applied[user_id]:
                metrics.FRESHNESS_SECONDS.observe(max(0.0, now - interaction.ts_ms / 1000))
            metrics.EVENTS_APPLIED.inc(len(plan.applied[user_id]))
        metrics.SAVE_SECONDS.observe(time.perf_counter() - started)

    async def profile_changes(self, events: Sequence[Any], progress: Progress | None = None) -> None:
        """One batch of `user-profiles` messages: store each change and refresh that user's vectors."""
        progress = progress or Progress()
        metrics.PROFILES_IN.inc(len(events))
        changed: dict[str, Any] = {}
        last_event_of: dict[str, Any] = {}
        accepted: dict[str, list] = {}  # user id -> its profile events (dead-lettered if its write fails)
        for event in events:
            result = parse_profile(event.message.key, event.message.value)
            if isinstance(result, Rejection):
                await self.dead_letter(event, result.reason, progress)
                continue
            changed[result.user_id] = result.fields
            last_event_of[result.user_id] = event
            accepted.setdefault(result.user_id, []).append(event)
        if not changed:
            return
        await self.service.ready()
        # The interactions agent must not save a history between our read and our write.
        async with self.user_state_lock:
            await self.drain()  # every planned history saved: the table is current
            refresh = {}
            for user_id, fields in changed.items():
                with acting_for(last_event_of[user_id]):
                    if fields is None:
                        self.profiles.pop(user_id, None)
                    else:
                        self.profiles[user_id] = fields
                    history = self.histories.get(user_id)
                if history:
                    refresh[user_id] = history
                else:
                    progress.finish(accepted[user_id])
            if not refresh:
                return

            async def dead_letter(event: Any, reason: str) -> None:
                await self.dead_letter(event, reason, progress)

            written = await self.service.write_with_retry(refresh, {u: changed[u] for u in refresh}, accepted,
                                                          dead_letter)
            for user_id, result in written.items():
                await self._send_update(key=user_id, value=result)
                progress.finish(accepted[user_id])
