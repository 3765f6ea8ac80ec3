"""Adapters around faust-streaming 0.15, installed by one call, `install()`, before the app is built
(streams/worker/app.py): a workaround for its consumer losing track of offsets across a seek or a rebalance
(faust-streaming issue 221), and producer settings that faust has no option for. Each names what it fixes.
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
    _install_idempotent_producer()
