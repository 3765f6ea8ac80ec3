"""The stall watchdog's judgement: wait while events are read or nothing lags, seek back after the
timeout, exit after repeated seeks that did not help. A fake clock; no broker."""

from __future__ import annotations

import asyncio

from streams.config import EXIT_STALLED
from streams.worker.watchdog import Action, StallWatchdog


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def watchdog(clock: Clock, exits: list[int] | None = None) -> StallWatchdog:
    return StallWatchdog(30.0, clock=clock, exit_process=(exits if exits is not None else []).append)


def test_no_lag_or_events_being_read_is_never_a_stall():
    clock = Clock()
    dog = watchdog(clock)
    assert dog.decide({0: 0, 1: 0}) is Action.WAIT
    for _ in range(10):
        clock.now += 60
        dog.note_read(5)
        assert dog.decide({0: 100}) is Action.WAIT  # lagging, but progress was made since the last check
    clock.now += 600
    assert dog.decide({0: 0}) is Action.WAIT  # no lag: nothing to catch up


def test_a_lag_that_nothing_reads_is_seeked_back_after_the_timeout_and_then_the_worker_exits():
    clock = Clock()
    dog = watchdog(clock)
    assert dog.decide({0: 7}) is Action.WAIT  # first sight: the mark is set
    clock.now += 29
    assert dog.decide({0: 7}) is Action.WAIT  # not yet the timeout
    clock.now += 2
    assert dog.decide({0: 7}) is Action.SEEK
    assert dog.decide({0: 7}) is Action.WAIT  # after a seek the mark is set afresh
    clock.now += 31
    assert dog.decide({0: 7}) is Action.SEEK
    dog.decide({0: 7})
    clock.now += 31
    assert dog.decide({0: 7}) is Action.EXIT


def test_a_lag_that_clears_resets_the_seek_count_and_a_pause_restarts_the_judgement():
    clock = Clock()
    dog = watchdog(clock)
    dog.decide({0: 7})
    clock.now += 31
    assert dog.decide({0: 7}) is Action.SEEK and dog.seeks == 1
    assert dog.decide({0: 0}) is Action.WAIT and dog.seeks == 0
    dog.decide({0: 3})
    dog.pause()  # a rebalance: the next check only sets the mark
    clock.now += 31
    assert dog.decide({0: 3}) is Action.WAIT


def test_check_seeks_through_the_consumer_and_exits_with_exit_stalled():
    clock = Clock()
    exits: list[int] = []
    dog = watchdog(clock, exits)
    seeks: list[int] = []

    async def seek() -> None:
        seeks.append(1)

    def lag(partitions: list[int]) -> dict[int, int]:
        return {p: 5 for p in partitions}

    actions = []
    for _ in range(6):
        actions.append(asyncio.run(dog.check([0, 1], lag, seek)))
        clock.now += 31
    assert actions[:5] == [Action.WAIT, Action.SEEK, Action.WAIT, Action.SEEK, Action.WAIT]
    assert actions[5] is Action.EXIT and exits == [EXIT_STALLED] and len(seeks) == 2


def test_a_broker_that_does_not_answer_is_not_a_stall():
    dog = watchdog(Clock())

    def unreachable(partitions: list[int]) -> dict[int, int]:
        raise ConnectionError("no broker")

    async def seek() -> None:
        raise AssertionError("must not seek")

    assert asyncio.run(dog.check([0], unreachable, seek)) is Action.WAIT


def test_events_read_since_the_last_tick_skip_the_broker_query_and_a_standstill_asks_it_again():
    clock = Clock()
    dog = watchdog(clock)
    asked: list[list[int]] = []

    def lag(partitions: list[int]) -> dict[int, int]:
        asked.append(partitions)
        return {p: 5 for p in partitions}

    async def seek() -> None:
        raise AssertionError("must not seek")

    assert asyncio.run(dog.check([0], lag, seek)) is Action.WAIT and len(asked) == 1  # sets the mark
    for _ in range(3):
        dog.note_read(2)
        clock.now += 31
        assert asyncio.run(dog.check([0], lag, seek)) is Action.WAIT
    assert len(asked) == 1  # progress at every tick: the broker was not asked
    clock.now += 10
    assert asyncio.run(dog.check([0], lag, seek)) is Action.WAIT and len(asked) == 2  # nothing read: asked
