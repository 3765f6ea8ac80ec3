"""What lives as long as the worker: the tower runtime, the vector store, the outage state, the retries.

`WorkerService` is a faust Service started with the app. It opens its `Resources` in the background, and
while the store cannot be opened (StoreError: server down, Lite file locked by another process) it waits
and retries like any outage, so no batch is dead-lettered for it; any other error (a bad artifact) crashes
the worker. Every wait between tries comes from one `backoff` helper: 0.5 s doubling to a 5 s cap.

A batch's tower call (`compute`) and its store write (`write_computed`) are separate steps, so the
tower call of the next batch runs while the store writes this one (streams/worker/batches.py pipelines
them). A store outage (StoreError) while writing is retried for as long as it takes with a fresh connection,
the batch unacked and /healthz "degraded": good events are never dead-lettered for an outage. Any other
failing tower/store step is retried `max_attempts` times; then each user is tried alone and the events of
users that still fail go to the DLQ with the reason.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
from typing import Any

import faust

from streams import metrics
from streams.config import Settings
from streams.store import StoreError
from streams.updater import Recompute, TowerRuntime, recompute

log = logging.getLogger(__name__)

FIRST_DELAY_S = 0.5
MAX_DELAY_S = 5.0

DeadLetter = Callable[[Any, str], Awaitable[None]]


def backoff(first_s: float = FIRST_DELAY_S, cap_s: float | None = MAX_DELAY_S) -> Iterator[float]:
    """Delays between tries: `first_s`, doubling, never above `cap_s` (None: no cap)."""
    delay = first_s
    while True:
        yield delay
        delay = delay * 2 if cap_s is None else min(delay * 2, cap_s)


def now_ms() -> int:
    return int(time.time() * 1000)


class StoreOutage:
    """Since when the store has been unreachable (None: it is up) and its last error; /healthz reports it."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self.down_since: float | None = None
        self.last_error = ""

    @property
    def is_down(self) -> bool:
        return self.down_since is not None

    def down_for_s(self) -> float:
        return 0.0 if self.down_since is None else self._clock() - self.down_since

    def failed(self, exc: BaseException) -> None:
        if self.down_since is None:
            self.down_since = self._clock()
            metrics.STORE_DOWN.set(1)
        self.last_error = str(exc)[:300]

    def recovered(self) -> None:
        if self.down_since is not None:
            log.warning("vector store back after %.1f s; catching up", self.down_for_s())
            self.down_since = None
            metrics.STORE_DOWN.set(0)


class Resources:
    """The tower runtime and the vector store of one worker (one Lite process), used from worker threads."""

    def __init__(self, runtime: TowerRuntime, store: Any, *, max_len: int) -> None:
        self.runtime = runtime
        self.store = store
        self.model_version = str(runtime.manifest.model_version)
        self.max_len = max_len
        # The tower call of one batch runs while the store write of the previous one does (another thread).
        self.tower_lock = threading.Lock()
        self.store_lock = threading.Lock()

    @classmethod
    def open(cls, settings: Settings) -> Resources:
        """Blocking: load the artifact, open the store, create this version's collections if needed."""
        from export.runtime import UserTowerRuntime

        runtime = UserTowerRuntime.load(settings.artifact_dir)
        store = settings.open_store()
        store.cleanup_in_writes = False  # the worker cleans up after a batch is saved: `cleanup_if_due`
        store.ensure_collections(runtime.manifest.embedding_dim, runtime.manifest.model_version,
                                 runtime.manifest.merge)
        active = store.current_version()
        if active != runtime.manifest.model_version:
            log.warning("this worker serves model %s but the store's active version is %s: recall reads %s "
                        "until `mind-stream rollout --artifact %s` switches it",
                        runtime.manifest.model_version, active, active, settings.artifact_dir)
        max_len = settings.max_history or runtime.manifest.max_history_length
        metrics.MODEL_INFO.labels(runtime.manifest.model_version).set(1)
        return cls(runtime, store, max_len=max_len)

    def compute(self, users: Mapping[str, dict], user_profiles: Mapping[str, Any]) -> Recompute:
        """Blocking (runs in a thread): one tower call for `users` → the store rows and update messages."""
        with self.tower_lock:
            started = time.perf_counter()
            result = recompute(self.runtime, users, user_profiles, updated_at_ms=now_ms())
            metrics.TOWER_SECONDS.observe(time.perf_counter() - started)
            return result

    def write(self, result: Recompute) -> None:
        """Blocking (runs in a thread): one store write of a computed batch."""
        with self.store_lock:
            started = time.perf_counter()
            # Its own version, never the store's default (the active one): a batch of cold users has no row
            # to name the version by, and its deletes belong to this model's collection.
            self.store.write_user_interests(result.rows, result.delete_keys, model_version=self.model_version)
            metrics.UPSERT_SECONDS.observe(time.perf_counter() - started)

    def recompute_and_write(self, users: Mapping[str, dict], user_profiles: Mapping[str, Any]) -> Recompute:
        """Blocking (runs in a thread): one tower call for `users`, then one store write."""
        result = self.compute(users, user_profiles)
        self.write(result)
        return result

    def cleanup_if_due(self) -> None:
        """Blocking: delete replaced generations if the store's clean-up is due (between writes)."""
        with self.store_lock:
            if self.store.cleanup_due():
                started = time.perf_counter()
                self.store.flush_cleanup(full=False)
                metrics.CLEANUP_SECONDS.observe(time.perf_counter() - started)

    def close(self) -> None:
        """Blocking: run the store's pending clean-up and close it, after any write in progress."""
        with self.store_lock:
            self.store.close()

    def reconnect_store(self) -> None:
        """Blocking: a fresh store connection (a dead Lite server is replaced); StoreError if still down."""
        with self.store_lock:
            self.store.reconnect()


class WorkerService(faust.Service):
    """Owns the worker's `Resources` and the store outage state; started and stopped with the faust app.

    `open_resources` (default `Resources.open(settings)`) and `sleep` are parameters so that the retry logic
    runs in unit tests with a fake store and no broker.
    """

    def __init__(self, settings: Settings, *, open_resources: Callable[[], Resources] | None = None,
                 sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
                 on_fatal: Callable[[BaseException], Awaitable[None]] | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.settings = settings
        self.resources: Resources | None = None
        self.outage = StoreOutage()
        self.on_fatal = on_fatal
        self._open_resources = open_resources or (lambda: Resources.open(settings))
        self._sleep = sleep
        self._opening: asyncio.Lock | None = None

    @faust.Service.task
    async def _open_at_start(self) -> None:
        """Load the artifact and open the store at start, so a bad artifact stops the worker at once."""
        try:
            await self.ready()
        except Exception as exc:
            log.error("mindstream worker cannot start: %s", exc)
            if self.on_fatal is not None:
                await self.on_fatal(exc)

    async def on_stop(self) -> None:
        if self.resources is not None and not self.outage.is_down:
            try:
                await asyncio.to_thread(self.resources.close)
            except StoreError as exc:
                log.warning("closing the vector store: %s", exc)

    async def ready(self) -> Resources:
        """The resources, opened once; while the store cannot be opened, wait and retry (an outage)."""
        if self.resources is not None:
            return self.resources
        if self._opening is None:
            self._opening = asyncio.Lock()
        async with self._opening:
            delays = backoff()
            while self.resources is None:
                try:
                    self.resources = await asyncio.to_thread(self._open_resources)
                except StoreError as exc:
                    self.outage.failed(exc)
                    delay = next(delays)
                    log.warning("vector store unavailable at start, retrying in %.1f s: %s", delay, exc)
                    await self._sleep(delay)
            self.outage.recovered()  # opened: whatever kept it down at start is over
        return self.resources

    async def compute(self, users: Mapping[str, dict], user_profiles: Mapping[str, Any]) -> Recompute | None:
        """One tower call in a thread; None if it failed (`write_computed` then retries it with the write)."""
        resources = await self.ready()
        try:
            return await asyncio.to_thread(resources.compute, users, user_profiles)
        except Exception as exc:
            log.warning("tower call for %d users failed, retried with the write: %r", len(users), exc)
            return None

    async def write_computed(self, users: Mapping[str, dict], user_profiles: Mapping[str, Any],
                             computed: Recompute | None, events_of: Mapping[str, Sequence[Any]],
                             dead_letter: DeadLetter) -> dict[str, dict]:
        """Write a batch whose tower call is done (`compute`); if that or the write fails, the batch goes
        through `write_with_retry`. Returns user id → its `interest-updates` message for each user written."""
        if computed is not None:
            resources = await self.ready()
            try:
                await asyncio.to_thread(resources.write, computed)
                self.outage.recovered()
                metrics.USERS_RECOMPUTED.inc(len(users))
                metrics.BATCH_USERS.observe(len(users))
                return {update["user_id"]: update for update in computed.updates}
            except StoreError as exc:
                self.outage.failed(exc)
                log.warning("vector store unavailable, retrying %d users: %s", len(users), exc)
            except Exception as exc:
                log.warning("batch of %d users failed, retrying: %r", len(users), exc)
            metrics.BATCH_RETRIES.inc()
        return await self.write_with_retry(users, user_profiles, events_of, dead_letter)

    async def cleanup_if_due(self) -> None:
        """The store's clean-up of replaced generations, if due; after a batch is saved, never within a
        write. A failure is logged: the next cleanup retries (a late cleanup costs storage, not
        correctness)."""
        if self.resources is None or self.outage.is_down:
            return
        try:
            await asyncio.to_thread(self.resources.cleanup_if_due)
        except StoreError as exc:
            log.warning("cleanup of replaced user interests: %s", exc)

    async def write_through_outages(self, users: Mapping[str, dict],
                                    user_profiles: Mapping[str, Any]) -> Recompute:
        """One recompute+write; while the store is down (StoreError) retry with backoff and a fresh
        connection, for as long as it takes, without acking: not these events' fault. Others raise."""
        resources = await self.ready()
        delays = backoff()
        while True:
            try:
                result = await asyncio.to_thread(resources.recompute_and_write, users, user_profiles)
                self.outage.recovered()
                return result
            except StoreError as exc:
                self.outage.failed(exc)
                metrics.BATCH_RETRIES.inc()
                delay = next(delays)
                log.warning("vector store unavailable for %.0f s, retrying %d users in %.1f s: %s",
                            self.outage.down_for_s(), len(users), delay, exc)
                await self._sleep(delay)
                try:
                    await asyncio.to_thread(resources.reconnect_store)
                except StoreError as reopen_error:
                    log.warning("%s", reopen_error)

    async def write_with_retry(self, users: Mapping[str, dict], user_profiles: Mapping[str, Any],
                               events_of: Mapping[str, Sequence[Any]],
                               dead_letter: DeadLetter) -> dict[str, dict]:
        """Recompute and write `users`; returns user id → its `interest-updates` message for every user whose
        vectors are written. A failing batch is retried `max_attempts` times (backoff without a cap), then
        each user alone; the events of a user that still fails are dead-lettered."""
        attempts = self.settings.max_attempts
        delays = backoff(cap_s=None)
        for attempt in range(1, attempts + 1):
            try:
                result = await self.write_through_outages(users, user_profiles)
                metrics.USERS_RECOMPUTED.inc(len(users))
                metrics.BATCH_USERS.observe(len(users))
                return {update["user_id"]: update for update in result.updates}
            except Exception as exc:
                log.warning("batch of %d users failed (attempt %d/%d): %r", len(users), attempt, attempts,
                            exc)
                if attempt == attempts:
                    break
                metrics.BATCH_RETRIES.inc()
                await self._sleep(next(delays))
        # The whole batch kept failing: try each user alone, so one bad user does not take the others down.
        written: dict[str, dict] = {}
        for user_id, history in users.items():
            try:
                result = await self.write_through_outages({user_id: history}, user_profiles)
                written[user_id] = result.updates[0]
            except Exception as exc:  # noqa: PERF203 - per-user isolation is the point
                for event in events_of.get(user_id, []):
                    await dead_letter(event, f"processing failed after {attempts} attempts: {exc!r}")
        return written
