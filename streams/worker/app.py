"""The faust app: the stream graph on one screen.

    interactions (raw bytes, key = user id) ──► update_interests ──► histories table (changelog)
        │ bad event: interactions-dlq           │ one tower call per micro-batch, valid slots only
        ▼                                       ▼
    user-profiles (compacted) ──► update_profiles ──► profiles table; both write user_interests in Milvus
                                                └──► interest-updates (user, model version, K'u, event time)

Run with `mind-stream worker --artifact DIR` (`faust -A streams.worker.app worker`; settings:
streams/config.py). The agents take whatever their stream has buffered, without acking
(`natural_batches`, streams/worker/intake.py), and hand it to the `BatchProcessor`
(streams/worker/batches.py), which acks each event once its work is done. What lives as long as the worker
is the `WorkerService` (streams/worker/service.py); the views are in streams/worker/web.py.
"""

from __future__ import annotations

import faust

from streams import faust_fixes, metrics
from streams.config import COMMIT_INTERVAL_S, HEARTBEAT_INTERVAL_S, Settings
from streams.inspector import RecentUsers
from streams.kafka import CommittedLag
from streams.worker import watchdog as stall
from streams.worker.batches import BatchProcessor, Popularity
from streams.worker.intake import natural_batches
from streams.worker.service import WorkerService, now_ms
from streams.worker.web import register_views

settings = Settings.from_env()
faust_fixes.install()  # faust-streaming consumer workarounds (streams/faust_fixes.py)

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
    # faust's 60 s default left a killed worker's partitions unread for a minute after its restart;
    # heartbeats run on the consumer's own thread, so a long batch does not starve them.
    broker_session_timeout=settings.session_timeout_s,
    broker_heartbeat_interval=HEARTBEAT_INTERVAL_S,
    broker_commit_interval=COMMIT_INTERVAL_S,  # a producer flush and one commit request a second
)

# value_serializer="raw": the agent decodes, so a value that is not JSON goes to the DLQ, not crashing it.
# Every topic and changelog: MINDSTREAM_REPLICATION replicas, min.insync.replicas from settings.topic_configs.
interactions_topic = app.topic(settings.topic_interactions, value_serializer="raw",
                               partitions=settings.partitions, config=settings.topic_configs)
profiles_topic = app.topic(settings.topic_profiles, value_serializer="raw", partitions=settings.partitions,
                           config=settings.topic_configs)
updates_topic = app.topic(settings.topic_updates, value_serializer="json", config=settings.topic_configs)
dlq_topic = app.topic(settings.topic_dlq, value_serializer="raw", config=settings.topic_configs)

# Values are re-assigned (never mutated in place): only `table[key] = value` reaches the changelog.
histories = app.Table("histories", default=None, partitions=settings.partitions,
                      extra_topic_configs=settings.topic_configs,
                      help="user id -> {items: [[item_id, ts_ms, event_id], ...], seen: [event_id, ...]}")
profiles = app.Table("profiles", default=None, partitions=settings.partitions,
                     extra_topic_configs=settings.topic_configs, help="user id -> profile fields")

service = app.service(WorkerService(settings, on_fatal=app.crash))
popularity = Popularity()
recent_users = RecentUsers()  # the users written last, listed by the interests inspector (/ui)


async def send_update(key: str, value: dict) -> None:
    """A user's vectors are written: announce it on `interest-updates`, and list the user on /ui."""
    await updates_topic.send(key=key, value=value)
    recent_users.touch(key, now_ms())


processor = BatchProcessor(settings, service, histories=histories, profiles=profiles,
                           send_update=send_update, send_dlq=dlq_topic.send, popularity=popularity)
watchdog = stall.StallWatchdog(settings.stall_timeout_s)
committed_lag = CommittedLag(settings, settings.topic_interactions)


@app.agent(interactions_topic)
async def update_interests(stream: faust.StreamT) -> None:
    """Micro-batches of interactions: parse, append to histories, recompute touched users; each batch's
    store write overlaps the next batch's parse and tower call, and acks its events when saved."""
    try:
        async for events in natural_batches(stream, settings.batch_size, settings.batch_window_s):
            watchdog.note_read(len(events))
            # Returns once the batch's tower call is done; its write stage acks the events (pipelined).
            await processor.submit_interactions(events, ack=stream.ack)
    finally:
        processor.abandon()  # stopping: an unfinished write stage leaves its events unacked (replayed)


@app.agent(profiles_topic)
async def update_profiles(stream: faust.StreamT) -> None:
    """Profile changes (compacted topic, key = user id): store them and refresh that user's vectors."""
    async for events in natural_batches(stream, settings.batch_size, settings.batch_window_s):
        await processor.never_crash(processor.profile_changes, events)
        for event in events:
            await stream.ack(event)


def assigned_input_partitions() -> list[int]:
    """Partitions of `interactions` this worker owns now ([] before the first assignment, or stopping)."""
    try:
        assignment = app.consumer.assignment()
        return sorted(tp.partition for tp in assignment if tp.topic == settings.topic_interactions)
    except Exception:  # noqa: BLE001 - no consumer yet (starting) or stopping: it owns nothing
        return []


@app.timer(interval=stall.CHECK_INTERVAL_S)
async def watch_for_stalled_partitions() -> None:
    """Seek back to the committed offsets when partitions lag on the broker but nothing was read for
    MINDSTREAM_STALL_TIMEOUT_S, while nothing explains it (no rebalance, no store outage)."""
    if app.rebalancing or service.outage.is_down or service.resources is None:
        watchdog.pause()
        return
    await watchdog.check(assigned_input_partitions(), committed_lag, app.consumer.perform_seek)


def partition_owners() -> dict[int, str]:
    """Partition of the histories changelog (= of `interactions`) -> base URL of the worker owning it."""
    changelog = histories.changelog_topic.get_topic_name()
    return {partition: url for url, topics in app.router.table_metadata(histories.name).items()
            for partition in topics.get(changelog, ())}


metrics.ASSIGNED_PARTITIONS.set_function(lambda: len(assigned_input_partitions()))
register_views(app, settings=settings, service=service, histories=histories, popularity=popularity,
               owners=partition_owners, recent_users=recent_users)
