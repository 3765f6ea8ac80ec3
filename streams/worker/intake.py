"""Natural batching: an agent takes whatever its stream has buffered, at once, without acking.

`natural_batches(stream, max_events, linger_s)` replaces faust's `noack_take(max_, within)`, which waits
`within` seconds for a batch to fill even when the stream is idle (every event of an idle worker waited for
the whole window). Here a background processor moves each event into a buffer as faust delivers it; the
agent's loop takes the whole buffer as soon as it holds one event (after `linger_s`, if set, unless the
buffer fills first). While the agent processes a batch the buffer keeps filling, so batches grow by
themselves under load, up to `max_events` (then the processor waits for the agent, as faust's does).

The events are yielded unacked: the caller acks each one when its work is done (streams/worker/batches.py).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any


class Intake:
    """The buffer between faust's stream and the agent (pure asyncio; the unit tests drive it directly)."""

    def __init__(self, max_events: int, linger_s: float = 0.0) -> None:
        if max_events < 1:
            raise ValueError(f"max_events must be at least 1, got {max_events}")
        self.max_events = max_events
        self.linger_s = linger_s
        self._buffer: list[Any] = []
        self._nonempty = asyncio.Event()
        self._full = asyncio.Event()
        self._room = asyncio.Event()
        self._room.set()

    async def put(self, event: Any) -> None:
        """Add one event; waits while the buffer holds `max_events` (the agent has not taken them yet)."""
        while len(self._buffer) >= self.max_events:
            self._room.clear()
            await self._room.wait()
        self._buffer.append(event)
        self._nonempty.set()
        if len(self._buffer) >= self.max_events:
            self._full.set()

    async def take(self) -> list[Any]:
        """Every buffered event (at least one), waiting for the first; with a linger, up to `linger_s` more
        for the buffer to fill."""
        await self._nonempty.wait()
        if self.linger_s > 0 and len(self._buffer) < self.max_events:
            try:
                await asyncio.wait_for(self._full.wait(), timeout=self.linger_s)
            except TimeoutError:
                pass
        batch, self._buffer = self._buffer, []
        self._nonempty.clear()
        self._full.clear()
        self._room.set()
        return batch


async def natural_batches(stream: Any, max_events: int, linger_s: float = 0.0) -> AsyncIterator[list[Any]]:
    """Batches of a faust stream's events (unacked), as `Intake` describes.

    Built like faust's own `noack_take` (faust/streams.py): a stream processor feeds the buffer, and the
    stream is consumed passively in the background.
    """
    intake = Intake(max_events, linger_s)

    async def add_to_buffer(value: Any) -> Any:
        event = stream.current_event
        if event is None:
            raise RuntimeError("natural_batches: faust gave a value without its event")
        await intake.put(event)
        return value

    enable_acks = stream.enable_acks
    stream.enable_acks = False  # the caller acks each event once its work is done
    stream.add_processor(add_to_buffer)
    stream._enable_passive(aiter(stream.channel))  # noqa: SLF001 - what noack_take does
    try:
        while not stream.should_stop:
            take = asyncio.ensure_future(intake.take())
            outcome = await stream.wait(take)  # or the stream stops (the worker stops or rebalances)
            if outcome.stopped:
                take.cancel()
                break
            yield outcome.result
    finally:
        stream.enable_acks = enable_acks
        stream._processors.remove(add_to_buffer)  # noqa: SLF001 - undo add_processor, as noack_take does
