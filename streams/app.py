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
import os
import threading
import time
import weakref
from collections import Counter
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import faust
from faust.streams import _current_event

from streams import metrics
from streams.config import EXIT_STALLED, HEARTBEAT_INTERVAL_S, Settings
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
    canonical_url=settings.web_url,  # where the other workers reach this one (request routing by user)
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
        active = self.store.current_version()
        if active != self.model_version:
            log.warning("this worker serves model %s but the store's active version is %s: recall reads %s until "
                        "`mind-stream rollout --artifact %s` switches it", self.model_version, active, active,
                        settings.artifact_dir)
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
# Both agents read a user's table entries, write vectors, then save: one at a time, or one could write
# vectors from a history the other has already replaced (a stale overwrite). Profile changes are rare.
user_state_lock = asyncio.Lock()


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
    async with user_state_lock:
        await apply_interactions(svc, parsed)


async def apply_interactions(svc: Services, parsed: list[_Parsed]) -> None:
    """Histories from the table + the batch → vectors written → histories saved (under `user_state_lock`)."""
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
        # The update message first: a crash before the table save replays the events (re-sending it); the
        # other order would let the replay find them applied and never send it.
        await updates_topic.send(key=user_id, value=result)
        with acting_for(last_event_of[user_id]):
            histories[user_id] = plan.histories[user_id]  # re-assign: this is what the changelog records
        recent_users.touch(user_id, now_ms())  # interests inspector (/ui)
        for interaction in plan.applied[user_id]:
            metrics.FRESHNESS_SECONDS.observe(max(0.0, now - interaction.ts_ms / 1000))
        metrics.EVENTS_APPLIED.inc(len(plan.applied[user_id]))


async def process_profiles(events: Sequence[Any]) -> None:
    """One batch of `user-profiles` messages: key = user id, value = JSON object of fields (null deletes)."""
    metrics.PROFILES_IN.inc(len(events))
    changed: dict[str, Any] = {}
    last_event_of: dict[str, Any] = {}
    accepted: dict[str, list] = {}  # user id -> its profile events in this batch (dead-lettered if it fails)
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
            accepted.setdefault(user_id, []).append(event)
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
        accepted.setdefault(user_id, []).append(event)
    if not changed:
        return
    svc = await wait_for_services()
    async with user_state_lock:  # the interactions agent must not save a history between our read and write
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
        if not refresh:
            return
        written = await write_with_retry(svc, refresh, {u: changed[u] for u in refresh}, accepted)
        for user_id, result in written.items():
            await updates_topic.send(key=user_id, value=result)
            recent_users.touch(user_id, now_ms())  # interests inspector (/ui)


async def write_with_retry(svc: Services, users: dict[str, dict], user_profiles: dict[str, Any],
                           events_of: dict[str, list]) -> dict[str, dict]:
    """Recompute and write `users` (with their profiles); retry with backoff; users that keep failing are
    dead-lettered. Returns user id → its `interest-updates` message, for the users whose vectors are written.
    A store outage is never a failure here: `write_through_outages` waits it out, whatever the attempt.
    """
    delay = 0.5
    for attempt in range(1, settings.max_attempts + 1):
        try:
            result = await write_through_outages(svc, users, user_profiles)
            metrics.USERS_RECOMPUTED.inc(len(users))
            metrics.BATCH_USERS.observe(len(users))
            return {update["user_id"]: update for update in result.updates}
        except Exception as exc:
            log.warning("batch of %d users failed (attempt %d/%d): %r", len(users), attempt, settings.max_attempts, exc)
            if attempt == settings.max_attempts:
                break
            metrics.BATCH_RETRIES.inc()
            await asyncio.sleep(delay)
            delay *= 2
    # The whole batch kept failing: try each user alone, so one bad user does not take the others down.
    written: dict[str, dict] = {}
    for user_id, history in users.items():
        try:
            result = await write_through_outages(svc, {user_id: history}, user_profiles)
            written[user_id] = result.updates[0]
        except Exception as exc:  # noqa: PERF203 - per-user isolation is the point
            for event in events_of.get(user_id, []):
                await dead_letter(event, f"processing failed after {settings.max_attempts} attempts: {exc!r}")
    return written


async def write_through_outages(svc: Services, users: dict[str, dict], user_profiles: dict[str, Any]) -> Recompute:
    """One recompute+write; while the store is down (StoreError: server died, file locked, network) retry with
    capped backoff and a fresh connection, for as long as it takes, without acking: not these events' fault,
    so they are never dead-lettered for it. The partition waits and catches up when the store is back
    (issue 7); /healthz says "degraded" meanwhile. Any other error is raised."""
    delay = 0.5
    while True:
        try:
            result = await asyncio.to_thread(svc.recompute_and_write, users, user_profiles)
            store_recovered()
            return result
        except StoreError as exc:
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
    """The n items most seen in this worker's stream. Call it on the event loop (the agent updates the
    counts there; a worker thread iterating them could meet a dict changing size)."""
    global _item_counts_seeded
    if not _item_counts_seeded:
        _item_counts_seeded = True
        # The restored table already holds every event applied so far: count from it alone, not twice.
        _item_counts.clear()
        for value in list(histories.values()):
            _item_counts.update(item[0] for item in (value or {}).get("items", []))
    return [(item, float(count)) for item, count in _item_counts.most_common(n)]


# --- web views on the worker (it owns the Milvus Lite file, so recall is served here) -----------------


# A recall or an interests request is answered where the user's history lives: the worker that owns the
# user's partition (from faust's assignor metadata, each worker announcing MINDSTREAM_WEB_URL) answers, and
# any other worker passes the request there, once (the header stops a ping-pong while a rebalance settles).
ROUTED_HEADER = "X-Mindstream-Routed"


def owner_of(user_id: str) -> str | None:
    """Base URL of the worker that owns `user_id`'s history; None before the first assignment.

    Not faust's `table_route`: it hashes the changelog key, which faust JSON-encodes, while a user's events
    (and so its table entry) sit in the partition Kafka's default partitioner gives the raw user-id key
    (measured: 4 of 6 users routed to the wrong worker). Producers must use that partitioner (murmur2: the
    Java and kafka-python default; librdkafka clients set partitioner=murmur2_random), as keyed joins do.
    """
    from aiokafka.partitioner import murmur2

    changelog = histories.changelog_topic.get_topic_name()
    owners = {partition: url for url, topics in app.router.table_metadata(histories.name).items()
              for partition in topics.get(changelog, ())}
    partition = (murmur2(user_id.encode("utf-8")) & 0x7FFFFFFF) % settings.partitions
    return owners.get(partition)


async def answer_from_the_owner(view: Any, request: Any, user_id: str) -> Any | None:
    """The owning worker's reply when another worker owns `user_id`'s history; None to answer here."""
    if request.headers.get(ROUTED_HEADER):
        return None
    owner = owner_of(user_id)
    if owner is None or urlsplit(owner)[:2] == urlsplit(settings.web_url)[:2]:
        return None
    import aiohttp

    url = owner.rstrip("/") + request.path_qs
    try:
        async with app.http_client.get(url, headers={ROUTED_HEADER: "1"},
                                       timeout=aiohttp.ClientTimeout(total=30)) as response:
            return view.bytes(await response.read(), content_type=response.content_type, status=response.status)
    except (TimeoutError, aiohttp.ClientError) as exc:
        return view.json({"error": f"the worker that owns user {user_id} ({owner}) did not answer: {exc!r}"},
                         status=503)


def parse_flag(name: str, raw: str) -> bool:
    """A query-string switch: true/false, 1/0, yes/no."""
    value = raw.strip().lower()
    if value in ("true", "1", "yes"):
        return True
    if value in ("false", "0", "no"):
        return False
    raise ValueError(f"{name} must be true or false, got {raw[:40]!r}")


@app.page("/recall/{user}")
async def recall_view(self: Any, request: Any, user: str) -> Any:
    """GET /recall/{user}?n=50&exclude_seen=false: the user's top-N items by max inner product over their
    interests; with exclude_seen=true, the items in the user's history are left out (still an exact top-N)."""
    from streams.recall import recall, validate_n, validate_user_id

    try:
        user_id = validate_user_id(user)
        n = validate_n(request.query.get("n", "50"))
        exclude_seen = parse_flag("exclude_seen", request.query.get("exclude_seen", "false"))
    except ValueError as exc:
        return self.json({"error": str(exc)}, status=400)
    routed = await answer_from_the_owner(self, request, user_id)
    if routed is not None:
        return routed
    started = time.perf_counter()
    seen = {item[0] for item in (histories.get(user_id) or {}).get("items", [])} if exclude_seen else set()
    popular = popular_items(n + len(seen))  # here, on the event loop (see popular_items)
    try:
        svc = await asyncio.to_thread(services)
        result = await asyncio.to_thread(recall, svc.store, user_id, n, fallback=popular, exclude=seen)
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
    routed = await answer_from_the_owner(self, request, user_id)
    if routed is not None:
        return routed
    try:
        svc = await asyncio.to_thread(services)
        rows = (await asyncio.to_thread(svc.store.get_user_interests, user_id))[user_id]
    except StoreError as exc:  # an outage: the writer reconnects; say so instead of a 500
        return self.json({"error": str(exc)}, status=503)
    history = histories.get(user_id) or {"items": []}
    return self.json({"user_id": user_id, "interests": _jsonable(rows), "history_length": len(history["items"])})


# --- interests inspector: /ui pages and their JSON (streams/inspector_web.py) --- BEGIN inspector
from streams.inspector_web import register_inspector  # noqa: E402

recent_users = register_inspector(app, store=lambda: services().store, vocabulary=lambda: services().runtime.vocab,
                                  history_of=histories.get, popular=popular_items,
                                  answer_from_the_owner=answer_from_the_owner)
# --- END inspector


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


# --- a partition whose events were read but never delivered (faust) ----------------------------------------
#
# Seen in the two-worker kill test (1 run in 3 to 6): after the rebalance the survivor's faust consumer had
# read a partition to its end (read offset 2,805 of 2,806) while its committed offset stayed at 48, and no
# event of it reached the agent again: faust's `_drain_messages` drops every message at or below its read
# offset as "already read", so something moved that offset past messages never delivered; most likely a
# message prefetched before the rebalance, handed over after the seek back to the commit (faust-streaming
# issue 221). In another run nearly every event had been read and the broker's committed offsets still did
# not move. Either way the cure is faust's own recovery step: seek every partition back to the offset the
# broker has committed (the replay is harmless: event-id de-duplication, whole-user writes). The check reads
# the broker's offsets, not faust's memory of them, since that memory is what may be wrong.
STALL_CHECK_S = 5.0
STALL_SEEKS_BEFORE_EXIT = 2
_progress: dict[str, Any] = {"mark": None, "since": 0.0, "seeks": 0}
_offsets_reader: list[Any] = []  # one kafka-python consumer that never joins the group: it only reads offsets


def committed_lag(partitions: list[int]) -> dict[int, int]:
    """Blocking: per `interactions` partition, end offset minus the group's committed offset, as the broker
    has them (faust's in-memory view is what may be wrong)."""
    from kafka import KafkaConsumer, TopicPartition

    if not _offsets_reader:
        _offsets_reader.append(KafkaConsumer(group_id=settings.app_id, enable_auto_commit=False,
                                             **settings.kafka_python_kwargs()))
    reader = _offsets_reader[0]
    tps = [TopicPartition(settings.topic_interactions, p) for p in partitions]
    ends = reader.end_offsets(tps)
    return {tp.partition: max(0, end - (reader.committed(tp) or 0)) for tp, end in ends.items()}


@app.timer(interval=STALL_CHECK_S)
async def watch_for_stalled_partitions() -> None:
    """Seek back to the committed offsets when partitions have a lag on the broker but nothing was read for
    MINDSTREAM_STALL_TIMEOUT_S, while nothing explains it (no rebalance, no store outage)."""
    if app.rebalancing or _store_down_since is not None or _services is None:
        _progress["mark"] = None
        return
    mine = sorted(tp.partition for tp in app.consumer.assignment() if tp.topic == settings.topic_interactions)
    try:
        lag = await asyncio.to_thread(committed_lag, mine) if mine else {}
    except Exception as exc:  # noqa: BLE001 - the broker is unreachable: faust reconnects, nothing to judge
        log.info("stall check skipped: %r", exc)
        return
    # Progress = events read. Not the lag: in a stalled run the commit crept on by an offset every few
    # seconds while nothing at all was read.
    mark = int(metrics.EVENTS_IN._value.get())  # noqa: SLF001 - the counter's own value
    now = time.monotonic()
    if not any(lag.values()):
        _progress.update(mark=mark, since=now, seeks=0)
        return
    if mark != _progress["mark"]:
        _progress.update(mark=mark, since=now)
        return
    if now - _progress["since"] < settings.stall_timeout_s:
        return
    log.warning("partitions %s have a lag of %d but nothing was read for %.0f s: seeking back to "
                "the committed offsets (replayed events are de-duplicated)",
                [p for p, n in lag.items() if n], sum(lag.values()), now - _progress["since"])
    if _progress["seeks"] >= STALL_SEEKS_BEFORE_EXIT:
        # Seen too: the replay is read and processed, yet the commit stays behind one offset faust never
        # counts as acked. A fresh consumer (a restarted worker) resumes cleanly from the broker's commit, as
        # the kill -9 test shows; nothing is lost, the lagging events were never committed.
        log.error("partitions %s still lag after %d seeks back to the commit: exiting (code %d) so that the "
                  "supervisor restarts this worker with a fresh consumer", [p for p, n in lag.items() if n],
                  _progress["seeks"], EXIT_STALLED)
        os._exit(EXIT_STALLED)
    metrics.STALL_RECOVERIES.inc()
    _progress["seeks"] += 1
    await app.consumer.perform_seek()
    _progress.update(mark=None, since=now)


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

