"""The work inside the two agents, as plain methods: parse, read the tables, recompute, write, save, send.

`BatchProcessor` gets everything it touches as parameters (the tables as mappings, the sends as
coroutines, the `WorkerService`), so a unit test drives it with dicts, lists and a fake store.

Delivery is at-least-once: the agents ack a micro-batch only after these methods return, i.e. after its
vectors are written and its histories re-assigned in the table. Duplicate deliveries are dropped by event
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
from streams.updater import plan_batch
from streams.worker.service import WorkerService, now_ms

log = logging.getLogger(__name__)

Send = Callable[..., Awaitable[Any]]  # a topic's `send(key=..., value=..., headers=...)`


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


class BatchProcessor:
    """One micro-batch at a time from either agent; never raises for a bad event (it is dead-lettered)."""

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

    async def never_crash(self, process: Callable[[Sequence[Any]], Awaitable[None]],
                          events: Sequence[Any]) -> None:
        """Run `process(events)`; an unexpected error dead-letters the batch with the reason instead of
        crashing the agent (a crashed faust agent restarts past its unacked events: faust-streaming issue
        315)."""
        try:
            await process(events)
        except Exception as exc:
            log.exception("batch of %d events failed; dead-lettering it", len(events))
            for event in events:
                await self.dead_letter(event, f"internal error: {exc!r}")

    async def dead_letter(self, event: Any, reason: str) -> None:
        """Send the original bytes (key and value untouched) to the DLQ; the reason travels in headers."""
        message = event.message
        metrics.EVENTS_DLQ.labels(metrics.dlq_kind(reason)).inc()
        log.info("DLQ %s[%s]@%s: %s", message.topic, message.partition, message.offset, reason)
        await self._send_dlq(key=message.key, value=message.value if message.value is not None else b"",
                             headers=dlq_headers(message, reason, now_ms()))

    async def interactions(self, events: Sequence[Any]) -> None:
        """One micro-batch of raw `interactions` messages."""
        metrics.EVENTS_IN.inc(len(events))
        metrics.BATCH_EVENTS.observe(len(events))
        parsed: list[_Parsed] = []
        for event in events:
            result = parse_event(event.message.value, key=event.message.key,
                                 max_future_s=self.settings.max_future_s)
            if isinstance(result, Rejection):
                await self.dead_letter(event, result.reason)
            else:
                parsed.append(_Parsed(event, result))
        if not parsed:
            return
        await self.service.ready()
        async with self.user_state_lock:
            await self._apply_interactions(parsed)

    async def _apply_interactions(self, parsed: list[_Parsed]) -> None:
        """Histories from the table + the batch → vectors written → histories saved."""
        resources = await self.service.ready()
        last_event_of = {p.interaction.user_id: p.event for p in parsed}  # the user's table partition
        current, user_profiles = {}, {}
        for user_id, event in last_event_of.items():
            with acting_for(event):
                current[user_id] = self.histories.get(user_id)
                user_profiles[user_id] = self.profiles.get(user_id)
        plan = plan_batch(current, [p.interaction for p in parsed], max_len=resources.max_len,
                          max_seen=self.settings.max_seen)
        metrics.EVENTS_DUPLICATE.inc(len(plan.duplicates))
        if not plan.histories:
            return
        for applied in plan.applied.values():
            self.popularity.add(e.item_id for e in applied)
        events_of: dict[str, list[Any]] = {}
        for p in parsed:
            events_of.setdefault(p.interaction.user_id, []).append(p.event)
        written = await self.service.write_with_retry(plan.histories, user_profiles, events_of,
                                                      self.dead_letter)
        now = time.time()
        for user_id, result in written.items():
            # The update message first: a crash before the table save replays the events (re-sending it); the
            # other order would let the replay find them applied and never send it.
            await self._send_update(key=user_id, value=result)
            with acting_for(last_event_of[user_id]):
                self.histories[user_id] = plan.histories[user_id]  # re-assign: what the changelog records
            for interaction in plan.applied[user_id]:
                metrics.FRESHNESS_SECONDS.observe(max(0.0, now - interaction.ts_ms / 1000))
            metrics.EVENTS_APPLIED.inc(len(plan.applied[user_id]))

    async def profile_changes(self, events: Sequence[Any]) -> None:
        """One batch of `user-profiles` messages: store each change and refresh that user's vectors."""
        metrics.PROFILES_IN.inc(len(events))
        changed: dict[str, Any] = {}
        last_event_of: dict[str, Any] = {}
        accepted: dict[str, list] = {}  # user id -> its profile events (dead-lettered if its write fails)
        for event in events:
            result = parse_profile(event.message.key, event.message.value)
            if isinstance(result, Rejection):
                await self.dead_letter(event, result.reason)
                continue
            changed[result.user_id] = result.fields
            last_event_of[result.user_id] = event
            accepted.setdefault(result.user_id, []).append(event)
        if not changed:
            return
        await self.service.ready()
        # The interactions agent must not save a history between our read and our write.
        async with self.user_state_lock:
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
            if not refresh:
                return
            written = await self.service.write_with_retry(refresh, {u: changed[u] for u in refresh}, accepted,
                                                          self.dead_letter)
            for user_id, result in written.items():
                await self._send_update(key=user_id, value=result)
