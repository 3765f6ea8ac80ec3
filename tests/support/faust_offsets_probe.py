"""A minimal faust worker for tests/test_faust_fixes.py: one slow agent on a pre-filled 1-partition topic, and
one disturbance while a fetched batch is still being delivered (the small agent buffer keeps a delivery
waiting most of the time):

- `PROBE_SCENARIO=seek`: a seek back to the committed offsets (what faust's recovery does after a rebalance:
  `perform_seek` with the flow already resumed);
- `PROBE_SCENARIO=rebalance`: a real rebalance on the broker (the consumer asks its group coordinator to
  rejoin: revoke, JoinGroup, SyncGroup, the partition assigned again, recovery, seek to the commit);
- `PROBE_SCENARIO=table`: every event is written to a table (memory store), then a rebalance: how many
  changelog records its recovery reads again.

Run as `python -m faust -A support.faust_offsets_probe worker` (PYTHONPATH: tests/ and the repository) with
PROBE_BOOTSTRAP, PROBE_TOPIC, PROBE_GROUP, PROBE_SCENARIO, PROBE_OUT (a file: one processed offset per line,
`seeked` / `rebalanced` after the disturbance, `gap:A-B` for every gap faust books, `late:P=O` for a read
offset set on a partition after the revoke popped it, `left:P=O` for a read offset of a revoked partition
still there when the revoke returns, `recovered:R:N` in the table scenario) and PROBE_FIX: `1`
streams.faust_fixes installed, `0` none, or a comma list of its steps (`stale_batch_fix` alone: to check that
the rebalance scenario needs the revoke fix).
"""

from __future__ import annotations

import asyncio
import os
from collections import defaultdict

import faust
from faust.transport.consumer import Consumer as BaseConsumer

FIX = os.environ.get("PROBE_FIX", "1")
SCENARIO = os.environ.get("PROBE_SCENARIO", "seek")
out = open(os.environ["PROBE_OUT"], "a", buffering=1)  # noqa: SIM115 - lives as long as the worker
popped: set = set()  # partitions whose read offsets a revoke popped, until they are assigned again


class TracedReadOffsets(defaultdict):
    """faust's `_read_offset`, writing `late:` for a read offset set after a revoke popped it."""

    def pop(self, tp, *default):  # noqa: ANN001, ANN201 - dict's signature
        popped.add(tp)
        return super().pop(tp, *default)

    def __setitem__(self, tp, offset) -> None:  # noqa: ANN001 - dict's signature
        if tp in popped and offset is not None:
            out.write(f"late:{tp.partition}={offset}\n")
        super().__setitem__(tp, offset)


_original_init = BaseConsumer.__init__


def _init(self, *args, **kwargs) -> None:  # noqa: ANN001, ANN002, ANN003 - faust's signature
    _original_init(self, *args, **kwargs)
    self._read_offset = TracedReadOffsets(lambda: None)


BaseConsumer.__init__ = _init

if FIX == "1":
    from streams import faust_fixes

    faust_fixes.install()
elif FIX != "0":  # some of the fixes only: a comma list of streams.faust_fixes._install_<name> steps
    from streams import faust_fixes

    for name in FIX.split(","):
        getattr(faust_fixes, f"_install_{name}")()

# Outermost, so it sees what the revoke (fixed or not) leaves behind.
_revoked = BaseConsumer.on_partitions_revoked
_assigned = BaseConsumer.on_partitions_assigned


async def _on_partitions_revoked(self, revoked) -> None:  # noqa: ANN001 - faust's signature
    await _revoked(self, revoked)
    for tp in revoked:
        if dict.get(self._read_offset, tp) is not None:
            out.write(f"left:{tp.partition}={self._read_offset[tp]}\n")


async def _on_partitions_assigned(self, assigned, generation_id: int = 0) -> None:  # noqa: ANN001
    popped.difference_update(assigned)
    await _assigned(self, assigned, generation_id)


BaseConsumer.on_partitions_revoked = _on_partitions_revoked
BaseConsumer.on_partitions_assigned = _on_partitions_assigned

app = faust.App(
    os.environ["PROBE_GROUP"],
    broker=f"kafka://{os.environ['PROBE_BOOTSTRAP']}",
    value_serializer="raw",
    web_enabled=False,
    consumer_auto_offset_reset="earliest",
    # A small agent buffer: the fetcher blocks mid-batch, so the disturbance lands while a batch is delivered.
    stream_buffer_maxsize=20,
    broker_max_poll_records=500,
    broker_commit_interval=3600,  # commits come from disturb_once, so the seek always goes back a known way
)
topic = app.topic(os.environ["PROBE_TOPIC"], value_serializer="raw")
table = app.Table("kv", default=None, partitions=1)  # written in the table scenario only
processed = 0
recovered_records = 0  # changelog records recovery applied to the table since the rejoin (table scenario)
rebalances_done = 0


@app.on_rebalance_complete.connect
async def _rebalance_complete(sender, **kwargs) -> None:  # noqa: ANN001, ANN003 - faust's signal
    """Sent when recovery has read the changelogs to their end and the streams resume."""
    global rebalances_done
    rebalances_done += 1


_apply_changelog_batch = faust.Table.apply_changelog_batch


def _count_recovered(self, batch) -> None:  # noqa: ANN001 - faust's signature
    global recovered_records
    batch = list(batch)
    recovered_records += len(batch)
    _apply_changelog_batch(self, batch)


faust.Table.apply_changelog_batch = _count_recovered


# A plain topic has consecutive offsets: any gap faust books on it is the bug this probe looks for.
_original_add_gap = BaseConsumer._add_gap


async def _add_gap(self, tp, offset_from: int, offset_to: int) -> None:  # noqa: ANN001 - faust's signature
    out.write(f"gap:{offset_from}-{offset_to}\n")
    await _original_add_gap(self, tp, offset_from, offset_to)


BaseConsumer._add_gap = _add_gap


@app.agent(topic)
async def slow(stream: faust.StreamT) -> None:
    global processed
    async for event in stream.events():
        out.write(f"{event.message.offset}\n")
        processed += 1
        if SCENARIO == "table":
            table[str(event.message.offset)] = event.message.offset
        else:
            await asyncio.sleep(0.002)


async def rejoin() -> None:
    """Ask the group coordinator for a rebalance (run on the consumer's own thread and event loop)."""
    app.consumer._thread._ensure_consumer()._coordinator.request_rejoin()


async def rebalance_when_all_in_the_table() -> None:
    """Once every event is in the table and its changelog: a rebalance; `recovered:R:N` once its recovery
    is over (R changelog records read, N keys in the table)."""
    global recovered_records
    while processed < int(os.environ["PROBE_EVENTS"]):
        await asyncio.sleep(0.01)
    await app.producer.flush()
    await asyncio.sleep(1.0)  # every changelog send acknowledged
    done, recovered_records = rebalances_done, 0
    await app.consumer._thread.call_thread(rejoin)
    while rebalances_done <= done:
        await asyncio.sleep(0.05)
    out.write(f"recovered:{recovered_records}:{len(table)}\n")


@app.task
async def disturb_once() -> None:
    """Commit at ~1000, seek back there or rebalance when ~1250 are processed (mid-batch), then commit
    every 0.2 s. The table scenario: a rebalance once every event is in the table."""
    if SCENARIO == "table":
        await rebalance_when_all_in_the_table()
        while True:
            await asyncio.sleep(0.2)
            await app.consumer.commit()
    while processed < 1000:
        await asyncio.sleep(0.01)
    await app.consumer.commit()
    while processed < 1250:
        await asyncio.sleep(0.01)
    if SCENARIO == "seek":
        await app.consumer.perform_seek()
        out.write("seeked\n")
    else:
        await app.consumer._thread.call_thread(rejoin)
        out.write("rebalanced\n")
    while True:
        await asyncio.sleep(0.2)
        await app.consumer.commit()
