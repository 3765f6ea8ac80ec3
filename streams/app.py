"""The faust app: interactions → per-user history table → ONNX user tower → Milvus → recall, on one screen.

    interactions (raw bytes, key = user id) ──► update_interests ──► histories table (changelog)
        │ bad event: interactions-dlq           │ one tower call per micro-batch, valid slots only
        ▼                                       ▼
    user-profiles (compacted) ──► update_profiles ──► profiles table; both write user_interests in Milvus
                                                └──► interest-updates (user, model version, K'u, event time)

Run with `mind-stream worker --artifact DIR` (settings: streams/config.py). The work inside each agent is
plain functions of streams/events.py and streams/updater.py; this module only moves bytes and acks.

Delivery: at-least-once. A batch is read with `noack_take`, so nothing is acked before its vectors are
written and its history is in the table. A store that is down (StoreError) is retried with capped backoff
and a fresh connection for as long as it takes, the batch unacked and /healthz "degraded": good events are
never dead-lettered for an outage. Any other failing tower/store step is retried `max_attempts` times and
then its events go to the DLQ with the reason (then acked), so no event is lost silently. Duplicate deliveries are dropped by event id, and upserts are idempotent
(primary key user#slot), so a replay after a crash is harmless.

Tables are co-partitioned with the input topics (faust's rule: a table key lives in the partition of the
event that wrote it; the changelog has the source topic's partition count). Inside a micro-batch faust has
no single "current event", so each user's table entry is read and written under one of that user's own
events (`acting_for`): the changelog partition and the RocksDB partition file are then that event's
partition. This is why producers must key `interactions` and `user-profiles` by user id.
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
import time
import weakref
from collections import Counter
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import faust
from faust.streams import _current_event

from streams import metrics
from streams.config import HEARTBEAT_INTERVAL_S, Settings
from streams.events import USER_ID_PATTERN, Interaction, Rejection, parse_event
from streams.store import StoreError
from streams.updater import Recompute, plan_batch, recompute

log = logging.getLogger(__name__)
settings = Settings.from_env()

app = faust.App(
    settings.app_id,
    broker=[f"kafka://{server}" for server in settings.bootstrap_servers],
    broker_credentials=settings.faust_broker_credentials(),
    store=settings.table_store,
    datadir=settings.data_dir,
    key_serializer="raw",
    value_serializer="json",
    topic_partitions=settings.partitions,
    topic_replication_factor=settings.replication,
    web_bind=settings.web_host,
    web_host=settings.web_host,
    web_port=settings.web_port,
    consumer_auto_offset_reset="earliest",
    # faust's 60 s default left a killed worker's partitions unread for a minute after its restart (measured
    # in the kill -9 test: 57 s of the 67 s catch-up); heartbeats run on the consumer's own thread, so a long
    # batch does not starve them.
    broker_session_timeout=settings.session_timeout_s,
    broker_heartbeat_interval=HEARTBEAT_INTERVAL_S,
)

# value_serializer="raw": the agent decodes, so a value that is not JSON goes to the DLQ instead of crashing it.
interactions_topic = app.topic(settings.topic_interactions, value_serializer="raw", partitions=settings.partitions)
profiles_topic = app.topic(settings.topic_profiles, value_serializer="raw", partitions=settings.partitions)
updates_topic = app.topic(settings.topic_updates, value_serializer="json")
dlq_topic = app.topic(settings.topic_dlq, value_serializer="raw")

# Values are re-assigned (never mutated in place): only `table[key] = value` reaches the changelog.
histories = app.Table("histories", default=None, partitions=settings.partitions,
                      help="user id -> {items: [[item_id, ts_ms, event_id], ...], seen: [event_id, ...]}")
profiles = app.Table("profiles", default=None, partitions=settings.partitions, help="user id -> profile fields")


@app.agent(interactions_topic)
async def update_interests(stream: faust.StreamT) -> None:
    """Micro-batches of interactions: parse, append to histories, recompute touched users, then ack."""
    async for events in stream.noack_take(settings.batch_size, within=settings.batch_window_s):
        await never_crash(process_interactions, events)
        for event in events:
            await stream.ack(event)


@app.agent(profiles_topic)
async def update_profiles(stream: faust.StreamT) -> None:
    """Profile changes (compacted topic, key = user id): store them and refresh that user's vectors."""
    async for events in stream.noack_take(settings.batch_size, within=settings.batch_window_s):
        await never_crash(process_profiles, events)
        for event in events:
            await stream.ack(event)


# --- the work of the agents ---------------------------------------------------------------------------


async def never_crash(process: Any, events: Sequence[Any]) -> None:
    """A crashed faust agent is restarted past its unacked events (faust-streaming issue 315): so an
    unexpected error dead-letters the batch with the reason instead, and the partition moves on."""
    try:
        await process(events)
    except Exception as exc:
        log.exception("batch of %d events failed; dead-lettering it", len(events))
        for event in events:
            await dead_letter(event, f"internal error: {exc!r}")


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


class Services:
    """What the worker owns for its lifetime: the tower runtime and the vector store (one Lite process)."""

    def __init__(self, settings: Settings) -> None:
        from export.runtime import UserTowerRuntime

        self.runtime = UserTowerRuntime.load(settings.artifact_dir)
        self.model_version = self.runtime.manifest.model_version
        self.store = settings.open_store()
        self.store.ensure_collections(self.runtime.manifest.embedding_dim, self.model_version)
        self.max_len = settings.max_history or self.runtime.manifest.max_history_length
        self.write_lock = threading.Lock()  # one recompute+write at a time: the two agents share users
        metrics.MODEL_INFO.labels(self.model_version).set(1)

    def recompute_and_write(self, users: dict[str, dict], user_profiles: dict[str, Any]) -> Recompute:
        """Blocking (runs in a thread): one tower call for `users`, then one store write."""
        with self.write_lock:
            started = time.perf_counter()
            result = recompute(self.runtime, users, user_profiles, updated_at_ms=now_ms())
            metrics.TOWER_SECONDS.observe(time.perf_counter() - started)
            started = time.perf_counter()
            self.store.write_user_interests(result.rows, result.delete_keys)
            metrics.UPSERT_SECONDS.observe(time.perf_counter() - started)
            return result

    def reconnect_store(self) -> None:
        """Blocking: a fresh store connection (a dead Milvus Lite server is replaced); StoreError if still down."""
        with self.write_lock:
            self.store.reconnect()


_services: Services | None = None
_services_lock = threading.Lock()


def services() -> Services:
    global _services
    with _services_lock:
        if _services is None:
            _services = Services(settings)
        return _services


@app.task
async def load_services() -> None:
    """Load the artifact and open the store at start, so a bad artifact stops the worker at once."""
    try:
        await wait_for_services()
        store_recovered()  # opened: whatever kept it down at start is over
    except Exception as exc:
        log.error("mindstream worker cannot start: %s", exc)
        await app.crash(exc)


async def wait_for_services() -> Services:
    """The services; while the store cannot be opened (StoreError: server down, Lite file locked by another
    process) wait and retry like any outage, so a batch is never dead-lettered for it (issue 7). Any other
    error (a bad artifact) is raised."""
    delay = 0.5
    while True:
        try:
            return await asyncio.to_thread(services)
        except StoreError as exc:
            store_failed(exc)
            log.warning("vector store unavailable at start, retrying in %.1f s: %s", delay, exc)
            await asyncio.sleep(delay)
            delay = min(delay * 2, STORE_RETRY_MAX_DELAY_S)


def now_ms() -> int:
    return int(time.time() * 1000)


@dataclass
class _Parsed:
    event: Any  # faust EventT
    interaction: Interaction


async def process_interactions(events: Sequence[Any]) -> None:
    """One micro-batch of raw `interactions` messages. Never raises for a bad event."""
    metrics.EVENTS_IN.inc(len(events))
    metrics.BATCH_EVENTS.observe(len(events))
    parsed: list[_Parsed] = []
    for event in events:
        result = parse_event(event.message.value, max_future_s=settings.max_future_s)
        if isinstance(result, Rejection):
            await dead_letter(event, result.reason)
        else:
            parsed.append(_Parsed(event, result))
    if not parsed:
        return
    svc = await wait_for_services()
    last_event_of = {p.interaction.user_id: p.event for p in parsed}  # the user's table partition
    current, user_profiles = {}, {}
    for user_id, event in last_event_of.items():
        with acting_for(event):
            current[user_id] = histories.get(user_id)
            user_profiles[user_id] = profiles.get(user_id)
    plan = plan_batch(current, [p.interaction for p in parsed], max_len=svc.max_len, max_seen=settings.max_seen)
    metrics.EVENTS_DUPLICATE.inc(len(plan.duplicates))
    if not plan.histories:
        return
    for applied in plan.applied.values():
        _item_counts.update(e.item_id for e in applied)
    events_of = {}
    for p in parsed:
        events_of.setdefault(p.interaction.user_id, []).append(p.event)
    written = await write_with_retry(svc, plan.histories, user_profiles, events_of)
    now = time.time()
    for user_id, result in written.items():
        with acting_for(last_event_of[user_id]):
            histories[user_id] = plan.histories[user_id]  # re-assign: this is what the changelog records
        for interaction in plan.applied[user_id]:
            metrics.FRESHNESS_SECONDS.observe(max(0.0, now - interaction.ts_ms / 1000))
        metrics.EVENTS_APPLIED.inc(len(plan.applied[user_id]))
        await updates_topic.send(key=user_id, value=result)


async def process_profiles(events: Sequence[Any]) -> None:
    """One batch of `user-profiles` messages: key = user id, value = JSON object of fields (null deletes)."""
    metrics.PROFILES_IN.inc(len(events))
    changed: dict[str, Any] = {}
    last_event_of: dict[str, Any] = {}
    for event in events:
        key = event.message.key
        user_id = key.decode("utf-8", "replace") if isinstance(key, bytes) else str(key or "")
        if not USER_ID_PATTERN.fullmatch(user_id):
            await dead_letter(event, f"user_id format: profile key {user_id[:80]!r} is not a valid user id")
            continue
        value = event.message.value
        if value is None:
            changed[user_id] = None
            last_event_of[user_id] = event
            continue
        try:
            fields = json.loads(value)
        except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
            await dead_letter(event, f"bad JSON: {exc}")
            continue
        if not isinstance(fields, dict):
            await dead_letter(event, "not an object: a profile must be a JSON object of field -> value")
            continue
        changed[user_id] = fields
        last_event_of[user_id] = event
    refresh = {}
    for user_id, fields in changed.items():
        with acting_for(last_event_of[user_id]):
            if fields is None:
                profiles.pop(user_id, None)
            else:
                profiles[user_id] = fields
            history = histories.get(user_id)
        if history:
            refresh[user_id] = history
    if refresh:
        svc = await wait_for_services()
        written = await write_with_retry(svc, refresh, {u: changed[u] for u in refresh}, {u: [] for u in refresh})
        for user_id, result in written.items():
            await updates_topic.send(key=user_id, value=result)


async def write_with_retry(svc: Services, users: dict[str, dict], user_profiles: dict[str, Any],
                           events_of: dict[str, list]) -> dict[str, dict]:
    """Recompute and write `users` (with their profiles); retry with backoff; users that keep failing are
    dead-lettered. Returns user id → its `interest-updates` message, for the users whose vectors are written.
    """
    delay = 0.5
    attempt = 1
    while attempt <= settings.max_attempts:
        try:
            result = await asyncio.to_thread(svc.recompute_and_write, users, user_profiles)
            metrics.USERS_RECOMPUTED.inc(len(users))
            metrics.BATCH_USERS.observe(len(users))
            store_recovered()
            return {update["user_id"]: update for update in result.updates}
        except StoreError as exc:
            # The store is down (server died, file locked, network): not these events' fault, so they are never
            # dead-lettered for it. Retry with capped backoff and a fresh connection, without acking; the
            # partition waits and catches up when the store is back (issue 7). /healthz says "degraded".
            store_failed(exc)
            metrics.BATCH_RETRIES.inc()
            log.warning("vector store unavailable for %.0f s, retrying %d users in %.1f s: %s",
                        time.monotonic() - (_store_down_since or time.monotonic()), len(users), delay, exc)
            await asyncio.sleep(delay)
            delay = min(delay * 2, STORE_RETRY_MAX_DELAY_S)
            try:
                await asyncio.to_thread(svc.reconnect_store)
            except StoreError as reopen_error:
                log.warning("%s", reopen_error)
            continue
        except Exception as exc:
            log.warning("batch of %d users failed (attempt %d/%d): %r", len(users), attempt, settings.max_attempts, exc)
            if attempt == settings.max_attempts:
                error = exc
                break
            metrics.BATCH_RETRIES.inc()
            await asyncio.sleep(delay)
            delay *= 2
            attempt += 1
    # The whole batch kept failing: try each user alone, so one bad user does not take the others down.
    written: dict[str, dict] = {}
    for user_id, history in users.items():
        try:
            result = await asyncio.to_thread(svc.recompute_and_write, {user_id: history}, user_profiles)
            written[user_id] = result.updates[0]
        except Exception as exc:  # noqa: PERF203 - per-user isolation is the point
            error = exc
            for event in events_of.get(user_id, []):
                await dead_letter(event, f"processing failed after {settings.max_attempts} attempts: {error!r}")
    return written


async def dead_letter(event: Any, reason: str) -> None:
    """Send the original bytes (key and value untouched) to the DLQ; the reason travels in headers."""
    message = event.message
    metrics.EVENTS_DLQ.labels(metrics.dlq_kind(reason)).inc()
    log.info("DLQ %s[%s]@%s: %s", message.topic, message.partition, message.offset, reason)
    await dlq_topic.send(
        key=message.key, value=message.value if message.value is not None else b"",
        headers=[("mindstream-reason", reason.encode()),
                 ("mindstream-source", f"{message.topic}/{message.partition}/{message.offset}".encode()),
                 ("mindstream-failed-at-ms", str(now_ms()).encode())])


# Cold-start answer for a user without vectors: the items most seen in this worker's stream. Seeded once
# from the (changelog-restored) histories table, so a restarted worker does not start from nothing.
_item_counts: Counter[str] = Counter()
_item_counts_seeded = False


def popular_items(n: int) -> list[tuple[str, float]]:
    global _item_counts_seeded
    if not _item_counts_seeded:
        _item_counts_seeded = True
        for value in list(histories.values()):
            _item_counts.update(item[0] for item in (value or {}).get("items", []))
    return [(item, float(count)) for item, count in _item_counts.most_common(n)]


# --- web views on the worker (it owns the Milvus Lite file, so recall is served here) -----------------


@app.page("/recall/{user}")
async def recall_view(self: Any, request: Any, user: str) -> Any:
    """GET /recall/{user}?n=50: the user's top-N items by max inner product over their interests."""
    from streams.recall import recall, validate_n, validate_user_id

    try:
        user_id = validate_user_id(user)
        n = validate_n(request.query.get("n", "50"))
    except ValueError as exc:
        return self.json({"error": str(exc)}, status=400)
    started = time.perf_counter()
    svc = await asyncio.to_thread(services)
    try:
        result = await asyncio.to_thread(recall, svc.store, user_id, n, fallback=popular_items)
    except StoreError as exc:  # an outage: the writer reconnects; say so instead of a 500
        return self.json({"error": str(exc)}, status=503)
    metrics.RECALL_SECONDS.observe(time.perf_counter() - started)
    return self.json(_jsonable(result))


@app.page("/users/{user}/interests")
async def interests_view(self: Any, request: Any, user: str) -> Any:
    """GET /users/{user}/interests: the user's stored interest rows (slot, model version, event time, vector)."""
    from streams.recall import validate_user_id

    try:
        user_id = validate_user_id(user)
    except ValueError as exc:
        return self.json({"error": str(exc)}, status=400)
    svc = await asyncio.to_thread(services)
    try:
        rows = (await asyncio.to_thread(svc.store.get_user_interests, user_id))[user_id]
    except StoreError as exc:  # an outage: the writer reconnects; say so instead of a 500
        return self.json({"error": str(exc)}, status=503)
    history = histories.get(user_id) or {"items": []}
    return self.json({"user_id": user_id, "interests": _jsonable(rows), "history_length": len(history["items"])})


def assigned_input_partitions() -> int:
    """Partitions of `interactions` this worker owns now (0 before the first assignment)."""
    try:
        return sum(1 for tp in app.consumer.assignment() if tp.topic == settings.topic_interactions)
    except Exception:  # noqa: BLE001 - no consumer yet (starting) or stopping: it owns nothing
        return 0


metrics.ASSIGNED_PARTITIONS.set_function(assigned_input_partitions)


@app.page("/metrics")
async def metrics_view(self: Any, request: Any) -> Any:
    body, content_type = metrics.render()
    return self.bytes(body, content_type=content_type.split(";")[0])


# Store outage state (issue 7): set by write_with_retry, reported by /healthz. Backoff doubles up to the cap.
STORE_RETRY_MAX_DELAY_S = 5.0
_store_down_since: float | None = None
_store_last_error = ""


def store_failed(exc: BaseException) -> None:
    global _store_down_since, _store_last_error
    if _store_down_since is None:
        _store_down_since = time.monotonic()
        metrics.STORE_DOWN.set(1)
    _store_last_error = str(exc)[:300]


def store_recovered() -> None:
    global _store_down_since
    if _store_down_since is not None:
        log.warning("vector store back after %.1f s; catching up", time.monotonic() - _store_down_since)
        _store_down_since = None
        metrics.STORE_DOWN.set(0)


@app.page("/healthz")
async def healthz_view(self: Any, request: Any) -> Any:
    ready = _services is not None
    if _store_down_since is not None:
        # Alive and retrying (a restart would not help): 200 once serving, so a liveness probe leaves it
        # running; 503 while the store could not be opened yet at start (not ready).
        return self.json({"status": "degraded", "model_version": _services.model_version if ready else None,
                          "store_down_s": round(time.monotonic() - _store_down_since, 1), "error": _store_last_error},
                         status=200 if ready else 503)
    return self.json({"status": "ok" if ready else "starting", "model_version": _services.model_version if ready else None},
                     status=200 if ready else 503)


def _jsonable(value: Any) -> Any:
    """Dataclasses, numpy scalars/arrays and lists of them → plain JSON values."""
    import dataclasses

    import numpy as np

    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _jsonable(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    return value
