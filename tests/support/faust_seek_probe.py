"""A minimal faust worker for tests/test_faust_fixes.py: one slow agent on a pre-filled topic, and one seek
back to the committed offsets while the fetched batch is still being delivered (what faust's recovery does
after a rebalance: `perform_seek` with the flow already resumed).

Run as `python -m faust -A support.faust_seek_probe worker` (PYTHONPATH: tests/ and the repository) with
PROBE_BOOTSTRAP, PROBE_TOPIC, PROBE_GROUP, PROBE_FIX (1: streams.faust_fixes installed) and PROBE_OUT (a
file: one processed offset per line, `seeked` after the seek, `gap:A-B` for every gap faust books).
"""

from __future__ import annotations

import asyncio
import os

import faust
from faust.transport.consumer import Consumer as BaseConsumer

if os.environ.get("PROBE_FIX") == "1":
    from streams import faust_fixes

    faust_fixes.install()

app = faust.App(
    os.environ["PROBE_GROUP"],
    broker=f"kafka://{os.environ['PROBE_BOOTSTRAP']}",
    value_serializer="raw",
    web_enabled=False,
    consumer_auto_offset_reset="earliest",
    # A small agent buffer: the fetcher blocks mid-batch, so the seek lands while a batch is being delivered.
    stream_buffer_maxsize=20,
    broker_max_poll_records=500,
    broker_commit_interval=3600,  # commits come from seek_back_once, so the seek always goes back a known way
)
topic = app.topic(os.environ["PROBE_TOPIC"], value_serializer="raw")
out = open(os.environ["PROBE_OUT"], "a", buffering=1)  # noqa: SIM115 - lives as long as the worker
processed = 0
seeked = asyncio.Event()


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
        await asyncio.sleep(0.002)


@app.task
async def seek_back_once() -> None:
    """Commit at ~1000, seek back there when ~1250 are processed (mid-batch), then commit every 0.2 s."""
    while processed < 1000:
        await asyncio.sleep(0.01)
    await app.consumer.commit()
    while processed < 1250:
        await asyncio.sleep(0.01)
    await app.consumer.perform_seek()
    out.write("seeked\n")
    while True:
        await asyncio.sleep(0.2)
        await app.consumer.commit()
