"""The stall watchdog: partitions with a lag on the broker that nothing reads are seeked back to the commit.

After a rebalance faust can leave a partition's messages read but never delivered (its read offset moved
past messages the agent never saw; most likely faust-streaming issue 221). The cure is faust's own recovery
step: seek every partition back to the offset the broker has committed (the replay is harmless: event-id
de-duplication, whole-user writes). The check reads the broker's offsets, not faust's memory of them, since
that memory is what may be wrong. If `SEEKS_BEFORE_EXIT` seeks do not help, the worker exits with
`EXIT_STALLED` for its supervisor to restart it with a fresh consumer (nothing is lost: the lagging events
were never committed). The history behind this is in docs/ARCHITECTURE.md, "Decisions".

`StallWatchdog.decide` is the whole judgement, a pure function of its state, the clock and the lag.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import os
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from streams import metrics
from streams.config import EXIT_STALLED

log = logging.getLogger(__name__)

CHECK_INTERVAL_S = 5.0
SEEKS_BEFORE_EXIT = 2


class Action(enum.Enum):
    WAIT = "wait"
    SEEK = "seek"
    EXIT = "exit"


class StallWatchdog:
    """Progress is events read (counted by the agent through `note_read`), not the lag: in a stalled run the
    commit crept on by an offset every few seconds while nothing at all was read."""

    def __init__(self, stall_timeout_s: float, *, seeks_before_exit: int = SEEKS_BEFORE_EXIT,
                 clock: Callable[[], float] = time.monotonic,
                 exit_process: Callable[[int], Any] = os._exit) -> None:
        self.stall_timeout_s = stall_timeout_s
        self.seeks_before_exit = seeks_before_exit
        self._clock = clock
        self._exit = exit_process
        self.events_read = 0
        self.mark: int | None = None  # events_read when progress was last seen
        self.since = 0.0  # when progress was last seen (clock seconds)
        self.seeks = 0  # seeks back to the commit since the partitions last had no lag

    def note_read(self, count: int) -> None:
        self.events_read += count

    def pause(self) -> None:
        """A rebalance or a store outage explains a standstill: start judging afresh afterwards."""
        self.mark = None

    def decide(self, lag: Mapping[int, int]) -> Action:
        """WAIT, SEEK back to the commit, or EXIT; updates the state as the decision implies."""
        now = self._clock()
        if not any(lag.values()):
            self.mark, self.since, self.seeks = self.events_read, now, 0
            return Action.WAIT
        if self.events_read != self.mark:
            self.mark, self.since = self.events_read, now
            return Action.WAIT
        if now - self.since < self.stall_timeout_s:
            return Action.WAIT
        if self.seeks >= self.seeks_before_exit:
            return Action.EXIT
        self.seeks += 1
        self.mark, self.since = None, now
        return Action.SEEK

    async def check(self, partitions: list[int], committed_lag: Callable[[list[int]], Mapping[int, int]],
                    seek: Callable[[], Awaitable[Any]]) -> Action:
        """One timer tick: ask the broker for the lag of `partitions` (in a thread), then act on `decide`.
        Events read since the last tick are progress whatever the lag: then the broker is not asked (its
        client in a thread held the GIL that the event loop needs for fresh events)."""
        if self.mark is not None and self.events_read != self.mark and not self.seeks:
            self.mark, self.since = self.events_read, self._clock()
            return Action.WAIT
        try:
            lag = await asyncio.to_thread(committed_lag, partitions) if partitions else {}
        except Exception as exc:  # noqa: BLE001 - the broker is unreachable: faust reconnects, nothing to judge
            log.info("stall check skipped: %r", exc)
            return Action.WAIT
        idle_s = self._clock() - self.since
        action = self.decide(lag)
        lagging = [p for p, n in lag.items() if n]
        if action is Action.WAIT:
            return action
        log.warning("partitions %s have a lag of %d but nothing was read for %.0f s: seeking back to the "
                    "committed offsets (replayed events are de-duplicated)", lagging, sum(lag.values()),
                    idle_s)
        if action is Action.EXIT:
            log.error("partitions %s still lag after %d seeks back to the commit: exiting (code %d) so that "
                      "the supervisor restarts this worker with a fresh consumer", lagging, self.seeks,
                      EXIT_STALLED)
            self._exit(EXIT_STALLED)
            return action
        metrics.STALL_RECOVERIES.inc()
        await seek()
        return action
