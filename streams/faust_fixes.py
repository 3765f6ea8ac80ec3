"""Adapters around faust-streaming 0.15, installed by one call, `install()`, before the app is built
(streams/worker/app.py): a workaround for its consumer losing track of offsets across a seek or a rebalance
(faust-streaming issue 221), changelog offsets for its memory store (recovery reads only what is new), and
producer settings that faust has no option for. Each names what it fixes.
"""

from __future__ import annotations

import asyncio
from typing import Any

# --- faust-streaming issue 221: records dropped as already read after a seek or a rebalance ---------------

_SEEKS = "_mindstream_seeks"
_SEEK_LOCK = "_mindstream_seek_lock"


def _install_stale_batch_fix() -> None:
    """Keep faust's read offsets true across a seek and a rebalance (faust-streaming issue 221).

    faust drops every record at or below a partition's read offset as already read. Two paths move that offset
    past records that were never delivered, and those records then never reach the agent again, so their
    offsets are never acked and the committed offset stops short while the partition is read to its end:
    - `Consumer.getmany` yields a fetched batch record by record to `_drain_messages`, which awaits each
      delivery. Recovery calls `perform_seek` (back to the committed offsets) after it has resumed the flow,
      so the rest of a batch fetched before the seek is still delivered: the read offset jumps ahead again and
      the re-fetched records are dropped (or booked as a `_add_gap` gap next to their own acks, which makes
      `_new_offset` creep by one offset per commit).
    - A revoke pops the read offsets, then stops the flow; the record whose delivery that cut short still sets
      its read offset, which survives into the next assignment.
    Here the drain loop takes no record of a batch once a seek has begun and seeks back to the commit itself
    (nothing is delivered while it runs; a partition without a commit goes back to its first undelivered
    record), and a revoke forgets the read offsets set after its pop. Records delivered before a seek come
    again (at-least-once: the worker drops duplicate events by id; faust books each offset's ack once).
    """
    from faust.transport import consumer as consumer_module

    Consumer = consumer_module.Consumer
    original_perform_seek = Consumer.perform_seek
    original_getmany = Consumer.getmany

    def seek_lock(consumer: Any) -> asyncio.Lock:
        lock = getattr(consumer, _SEEK_LOCK, None)
        if lock is None:
            lock = asyncio.Lock()
            setattr(consumer, _SEEK_LOCK, lock)
        return lock

    async def perform_seek(self: Any) -> None:
        async with seek_lock(self):  # one seek at a time, so the last read offsets match the last positions
            # Counted before and after: a batch fetched or delivered while the seek runs is stale either way.
            setattr(self, _SEEKS, getattr(self, _SEEKS, 0) + 1)
            try:
                await original_perform_seek(self)
            finally:
                setattr(self, _SEEKS, getattr(self, _SEEKS, 0) + 1)

    async def getmany(self: Any, timeout: float) -> Any:
        seeks = getattr(self, _SEEKS, 0)
        records = original_getmany(self, timeout)
        undelivered: dict = {}  # tp -> first offset not delivered, once a seek has made the batch stale
        try:
            async for tp, message in records:
                if getattr(self, _SEEKS, 0) == seeks:
                    yield tp, message
                    continue
                undelivered.setdefault(tp, message.offset)
        finally:
            await records.aclose()
        if undelivered:
            try:
                await perform_seek(self)
                for tp, first in undelivered.items():
                    read = self._read_offset[tp]
                    if read is None or read > first:  # not moved by the seek (no commit yet): skip no record
                        await self.seek(tp, first)
            except Exception as exc:  # noqa: BLE001 - as faust's own getmany: a rebalance began; it seeks anew
                self.log.warning("seek after a stale batch failed (a rebalance will seek again): %r", exc)

    Consumer.perform_seek = perform_seek
    Consumer.getmany = getmany


def _install_revoked_read_offsets_fix() -> None:
    """A revoke leaves no read offset of a revoked partition behind (faust-streaming issue 221, second path
    in `_install_stale_batch_fix`): faust pops them, then stops the flow, which wakes the delivery the revoke
    cut short, and that delivery sets its partition's read offset after the pop."""
    from faust.transport import consumer as consumer_module

    Consumer = consumer_module.Consumer
    original_revoked = Consumer.on_partitions_revoked

    async def on_partitions_revoked(self: Any, revoked: Any) -> None:
        await original_revoked(self, revoked)
        for tp in revoked:
            self._read_offset.pop(tp, None)

    Consumer.on_partitions_revoked = on_partitions_revoked


# --- faust's memory store: every rebalance re-read every changelog from its start -------------------------


def _install_memory_store_offsets() -> None:
    """faust's memory store keeps no changelog offsets (`persisted_offset` is always None, as documented), so
    every rebalance re-reads each active changelog partition from its first record: those this worker kept
    and holds in memory, and those its standby copy already holds (faust's memory store also drops a standby
    copy's keys at the end of each recovery while faust goes on reading it from where it was, so that copy
    could not be trusted). Here the store keeps the keys of its active and standby partitions and remembers,
    in memory as faust's RocksDB store does on disk, the changelog offset up to which each one's keys are
    complete: where recovery left it, then each record applied and each write this worker's sends
    acknowledge. Recovery then reads only what is newer: a standby copy taken over is ready at once. The
    keys and offset of a partition neither active nor standby here are dropped: it is read from its start
    when it comes back."""
    from faust.stores import memory

    Store = memory.Store
    original_post_init = Store.__post_init__
    original_apply = Store.apply_changelog_batch
    original_recovered = Store.on_recovery_completed

    def __post_init__(self: Any) -> None:
        original_post_init(self)
        self._mindstream_offsets = {}

    def persisted_offset(self: Any, tp: Any) -> int | None:
        return self._mindstream_offsets.get(tp)

    def set_persisted_offset(self: Any, tp: Any, offset: int) -> None:
        if tp in self._mindstream_offsets:  # kept since the last recovery: its keys are complete
            self._mindstream_offsets[tp] = max(offset, self._mindstream_offsets[tp])

    def apply_changelog_batch(self: Any, batch: Any, to_key: Any, to_value: Any) -> None:
        batch = list(batch)
        original_apply(self, batch, to_key, to_value)
        for event in batch:
            set_persisted_offset(self, event.message.tp, event.message.offset)

    async def on_recovery_completed(self: Any, active_tps: Any, standby_tps: Any) -> None:
        # faust's memory store drops the keys of every partition not in its first argument.
        await original_recovered(self, set(active_tps) | set(standby_tps), standby_tps)
        # The last changelog offset recovery read, per partition (-1: none yet; read from 0).
        recovery = self.app.tables.recovery
        read = ((active_tps, recovery.active_offsets), (standby_tps, recovery.standby_offsets))
        self._mindstream_offsets = {tp: -1 if offsets.get(tp) is None else max(offsets[tp], -1)
                                    for tps, offsets in read for tp in tps}

    Store.__post_init__ = __post_init__
    Store.persisted_offset = persisted_offset
    Store.set_persisted_offset = set_persisted_offset
    Store.apply_changelog_batch = apply_changelog_batch
    Store.on_recovery_completed = on_recovery_completed


# --- producer settings ------------------------------------------------------------------------------------


def _install_idempotent_producer() -> None:
    """faust's producer: acks=all (faust's default) and idempotence, which faust turns on only in exactly-once
    mode; a retried send after a broker failover is then written once, not twice."""
    from faust.transport.drivers import aiokafka as driver

    original = driver.Producer._settings_extra

    def _settings_extra(self: Any) -> Any:
        return {**original(self), "acks": "all", "enable_idempotence": True}

    driver.Producer._settings_extra = _settings_extra


def install() -> None:
    """Install the adapters (once per process; before the faust app creates its consumer and producer)."""
    if getattr(install, "done", False):
        return
    install.done = True  # type: ignore[attr-defined]
    _install_stale_batch_fix()
    _install_revoked_read_offsets_fix()
    _install_memory_store_offsets()
    _install_idempotent_producer()
