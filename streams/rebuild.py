"""Recreate user vectors without the worker: rebuild from the Kafka log, roll a new model out, roll back.

    mind-stream rebuild --artifact DIR [--drop]        interactions log (from offset 0) → histories → vectors
    mind-stream rollout --artifact NEW_DIR             histories table (its changelog) → NEW version's
                                                       collections, then one pointer switch
    mind-stream rollback [--artifact OLD_DIR]          pointer back to the version the current one replaced
                                                       (refreshed from the table first when OLD_DIR is given)

Everything goes through the worker's own logic: `streams.events.parse_event` and `streams.updater`
(`plan_batch` for the history rule, `recompute` for the tower call, ONE tower call per batch of users) and
`streams.store` (versioned collections, `activate_version`). So a rebuild from the log ends with the same
vectors the live worker wrote, and a rollout writes the whole new version before readers are switched to
it: they see the old version or the new one, never an empty or mixed answer (the pointer is one row).

Where histories come from:
- `log`: the `interactions` topic read from the beginning with kafka-python (no consumer group, nothing
  committed), per partition in offset order, in batches through `plan_batch` exactly as the worker does.
  The future-timestamp check uses each record's Kafka timestamp as "now" (the worker used its clock when it
  read the event), so an event the worker rejected as too far ahead is rejected here too. Profiles: the
  `user-profiles` topic (compacted), last value per user. Needs the topic's retention to cover all of it.
- `changelog`: the worker's table changelogs (`{app_id}-histories-changelog`, `{app_id}-profiles-changelog`),
  last value per user: the history table itself, with its max_len window and `seen` ids.

A Milvus Lite file is one process's at a time: run these while the worker is stopped (or against a Milvus
server). After a rollout, restart the worker with the new artifact; after a rollback, with the old one.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from streams.config import Settings
from streams.events import Rejection, parse_event
from streams.updater import History, plan_batch, recompute

READ_TIMEOUT_S = 120.0  # ceiling for reading a topic to its end offsets (a broker that stops answering)


class RebuildError(Exception):
    """A rebuild/rollout cannot go on; the message names what is wrong and what to do."""


@dataclass
class ReplayStats:
    """What reading a source produced (printed by the CLI, asserted by the reliability tests)."""

    messages: int = 0
    applied: int = 0
    duplicates: int = 0
    rejected: int = 0
    users: int = 0
    users_written: int = 0
    rows_written: int = 0
    tower_calls: int = 0
    seconds: float = 0.0
    rejected_reasons: dict[str, int] = field(default_factory=dict)


# --- reading Kafka -------------------------------------------------------------------------------------


def read_to_end(settings: Settings, topic: str, timeout_s: float = READ_TIMEOUT_S) -> Iterator[Any]:
    """Every record of `topic` from its first offset up to the end offsets seen at the start, each partition
    in offset order. No consumer group: nothing is committed, the worker's group is untouched."""
    from kafka import KafkaConsumer, TopicPartition
    from kafka.errors import KafkaError

    try:
        consumer = KafkaConsumer(enable_auto_commit=False, group_id=None, **settings.kafka_python_kwargs())
    except KafkaError:
        raise RebuildError(f"no Kafka broker answers at {settings.kafka_bootstrap}; set KAFKA_BOOTSTRAP / --bootstrap") from None
    try:
        if topic not in consumer.topics():
            raise RebuildError(f"topic {topic} does not exist at {settings.kafka_bootstrap}; check the topic / app id")
        partitions = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic) or ())]
        consumer.assign(partitions)
        consumer.seek_to_beginning(*partitions)
        end = consumer.end_offsets(partitions)
        deadline = time.monotonic() + timeout_s
        remaining = {tp for tp in partitions if consumer.position(tp) < end[tp]}
        while remaining:
            if time.monotonic() > deadline:
                raise RebuildError(f"reading {topic} did not reach its end offsets within {timeout_s:g} s")
            for tp, records in consumer.poll(timeout_ms=500, max_records=5000).items():
                for record in records:
                    if record.offset < end[tp]:
                        yield record
            remaining = {tp for tp in remaining if consumer.position(tp) < end[tp]}
    finally:
        consumer.close()


def _key_text(key: bytes | str | None) -> str:
    return key.decode("utf-8", "replace") if isinstance(key, bytes) else str(key or "")


def last_values(settings: Settings, topic: str, *, json_keys: bool = False) -> dict[str, Any]:
    """A compacted topic as a dict: user id → its last JSON value; a null value (tombstone) deletes.
    Values that are not JSON objects are skipped (the worker dead-letters them too). `json_keys`: the keys
    are JSON strings, as faust writes table changelogs (`b'"u42"'`)."""
    table: dict[str, Any] = {}
    for record in read_to_end(settings, topic):
        key = _key_text(record.key)
        if json_keys:
            try:
                key = str(json.loads(key))
            except json.JSONDecodeError:
                pass
        if record.value is None:
            table.pop(key, None)
            continue
        try:
            value = json.loads(record.value)
        except (UnicodeDecodeError, json.JSONDecodeError, RecursionError):
            continue
        if isinstance(value, dict):
            table[key] = value
    return table


def histories_from_log(settings: Settings, *, max_len: int, batch_size: int | None = None) -> tuple[dict[str, History], ReplayStats]:
    """Replay the interactions topic through the worker's history rule (parse_event + plan_batch)."""
    stats = ReplayStats()
    histories: dict[str, History] = {}
    batch: list[Any] = []
    batch_size = batch_size or settings.batch_size

    def apply(batch: list[Any]) -> None:
        plan = plan_batch(histories, batch, max_len=max_len, max_seen=settings.max_seen)
        histories.update(plan.histories)
        stats.duplicates += len(plan.duplicates)
        stats.applied += sum(len(events) for events in plan.applied.values())

    for record in read_to_end(settings, settings.topic_interactions):
        stats.messages += 1
        result = parse_event(record.value, now_ms=record.timestamp, max_future_s=settings.max_future_s)
        if isinstance(result, Rejection):
            stats.rejected += 1
            kind = result.reason.split(":", 1)[0][:48]
            stats.rejected_reasons[kind] = stats.rejected_reasons.get(kind, 0) + 1
            continue
        batch.append(result)
        if len(batch) >= batch_size:
            apply(batch)
            batch = []
    if batch:
        apply(batch)
    stats.users = len(histories)
    return histories, stats


def histories_from_changelog(settings: Settings) -> dict[str, History]:
    """The worker's `histories` table, from its changelog topic (last value per user)."""
    return last_values(settings, f"{settings.app_id}-histories-changelog", json_keys=True)


def read_sources(settings: Settings, source: str, max_len: int) -> tuple[dict[str, History], dict[str, Any], ReplayStats]:
    """(histories, profiles, stats) from `log` or `changelog` (see the module docstring)."""
    if source == "log":
        histories, stats = histories_from_log(settings, max_len=max_len)
        profiles = last_values(settings, settings.topic_profiles) if _topic_exists(settings, settings.topic_profiles) else {}
    elif source == "changelog":
        histories = histories_from_changelog(settings)
        stats = ReplayStats(messages=len(histories), users=len(histories))
        profiles_topic = f"{settings.app_id}-profiles-changelog"
        profiles = last_values(settings, profiles_topic, json_keys=True) if _topic_exists(settings, profiles_topic) else {}
    else:
        raise RebuildError(f"--source {source!r}: use log or changelog")
    return histories, profiles, stats


def _topic_exists(settings: Settings, topic: str) -> bool:
    from kafka import KafkaConsumer

    consumer = KafkaConsumer(**settings.kafka_python_kwargs())
    try:
        return topic in consumer.topics()
    finally:
        consumer.close()


# --- writing vectors -----------------------------------------------------------------------------------


def write_vectors(store: Any, runtime: Any, histories: Mapping[str, History], profiles: Mapping[str, Any], *,
                  batch_users: int = 256, stats: ReplayStats | None = None,
                  progress: Callable[[int], None] | None = None) -> ReplayStats:
    """Recompute every user's interests (one tower call per `batch_users` users) into the runtime's version."""
    stats = stats or ReplayStats()
    version = str(runtime.manifest.model_version)
    users = sorted(u for u, h in histories.items() if h and h.get("items"))
    now_ms = int(time.time() * 1000)
    for start in range(0, len(users), batch_users):
        chunk = {u: histories[u] for u in users[start : start + batch_users]}
        result = recompute(runtime, chunk, {u: profiles.get(u) for u in chunk}, updated_at_ms=now_ms)
        stats.tower_calls += 1
        store.write_user_interests(result.rows, result.delete_keys, model_version=version)
        stats.users_written += len(chunk)
        stats.rows_written += len(result.rows)
        if progress:
            progress(len(chunk))
    store.flush_cleanup()
    return stats


def _load_runtime(artifact_dir: Any) -> Any:
    from export.artifact import ArtifactError
    from export.runtime import UserTowerRuntime

    try:
        return UserTowerRuntime.load(artifact_dir)
    except ArtifactError as exc:
        raise RebuildError(str(exc)) from None
    except FileNotFoundError as exc:
        raise RebuildError(f"{exc.filename}: not found; point --artifact at a directory written by mind-export") from None


def _max_len(settings: Settings, runtime: Any) -> int:
    return settings.max_history or int(runtime.manifest.max_history_length)


def rebuild(settings: Settings, artifact_dir: Any, *, store: Any, source: str = "log", drop: bool = False) -> ReplayStats:
    """Recreate every user's vectors of the artifact's version in `store` from Kafka.

    The store must hold no interests of that version (an empty store, or `drop=True` to drop every
    collection of the store first): a rebuild never merges into a live state.
    """
    from streams.store import index_items

    started = time.perf_counter()
    runtime = _load_runtime(artifact_dir)
    version = str(runtime.manifest.model_version)
    if drop:
        store.drop_all()
    elif version in store.versions() and store.count_user_interests(version) > 0:
        raise RebuildError(f"the vector store at {store.uri} already holds user vectors of model {version}; "
                           f"rebuild into an empty store, or pass --drop to drop its collections first")
    histories, profiles, stats = read_sources(settings, source, _max_len(settings, runtime))
    index_items(artifact_dir, store, progress=False)
    write_vectors(store, runtime, histories, profiles, stats=stats)
    stats.seconds = time.perf_counter() - started
    return stats


def rollout(settings: Settings, artifact_dir: Any, *, store: Any, source: str = "changelog") -> tuple[str, str, ReplayStats]:
    """Write the new artifact's version completely (items, every user's vectors), then switch readers to it.

    Returns (previous version, new version, stats). Readers keep using the previous version until the one
    pointer row is written; the previous version's collections are left as they are, for `rollback`.
    """
    from streams.store import StoreError, index_items

    started = time.perf_counter()
    runtime = _load_runtime(artifact_dir)
    version = str(runtime.manifest.model_version)
    try:
        previous = store.current_version()
    except StoreError:
        previous = ""
    if previous == version:
        raise RebuildError(f"model {version} is already the active version in {store.uri}; nothing to roll out")
    histories, profiles, stats = read_sources(settings, source, _max_len(settings, runtime))
    index_items(artifact_dir, store, progress=False)  # a store with an active version keeps it active
    write_vectors(store, runtime, histories, profiles, stats=stats)
    store.activate_version(version)
    stats.seconds = time.perf_counter() - started
    return previous, version, stats


def rollback(settings: Settings, *, store: Any, artifact_dir: Any = None, source: str = "changelog") -> tuple[str, str]:
    """Point readers back at the version the current one replaced; returns (from, to).

    With `artifact_dir` (the previous model's artifact) that version's vectors are first recomputed from the
    table, so users whose behaviour changed since the rollout are current when readers switch back.
    """
    from streams.store import StoreError

    current = store.current_version()
    if artifact_dir is not None:
        runtime = _load_runtime(artifact_dir)
        target = str(runtime.manifest.model_version)
        try:
            history = store._get_meta("current") or {}  # the pointer's replaced versions, newest last
        except StoreError:
            history = {}
        if not history.get("history") or history["history"][-1] != target:
            raise RebuildError(f"{artifact_dir} is model {target}, but the version to roll back to is "
                               f"{(history.get('history') or ['none'])[-1]}; give that version's artifact")
        histories, profiles, _ = read_sources(settings, source, _max_len(settings, runtime))
        write_vectors(store, runtime, histories, profiles)
    return current, store.rollback()


# --- CLI (wired into streams/cli.py) -------------------------------------------------------------------

_REBUILD_FLAGS = {"--bootstrap": "kafka_bootstrap", "--milvus-uri": "milvus_uri", "--milvus-prefix": "milvus_prefix",
                  "--app-id": "app_id", "--topic-interactions": "topic_interactions",
                  "--topic-profiles": "topic_profiles", "--max-history": "max_history", "--max-seen": "max_seen"}


def add_subcommands(sub: Any, add_setting_flags: Callable[[argparse.ArgumentParser, dict[str, str]], None]) -> dict[str, Callable]:
    """Add `rebuild`, `rollout`, `rollback` to mind-stream's subparsers; returns name → command function."""
    from pathlib import Path

    rebuild_p = sub.add_parser("rebuild", help="recreate every user's vectors from the Kafka log into an empty store",
                               description="Read the interactions topic from the beginning, apply the worker's "
                                           "history rule and write every user's vectors (stop the worker first "
                                           "when the store is a Milvus Lite file).")
    rebuild_p.add_argument("--artifact", type=Path, required=True, help="artifact directory written by mind-export")
    rebuild_p.add_argument("--source", choices=["log", "changelog"], default="log",
                           help="the interactions log (default) or the worker's table changelog")
    rebuild_p.add_argument("--drop", action="store_true", help="drop every collection of the store first")
    add_setting_flags(rebuild_p, _REBUILD_FLAGS)

    rollout_p = sub.add_parser("rollout", help="write a new model version's vectors, then switch readers to it",
                               description="Index the new artifact's items, replay the histories table into its "
                                           "own collections, then activate it (one pointer row).")
    rollout_p.add_argument("--artifact", type=Path, required=True, help="the NEW artifact directory")
    rollout_p.add_argument("--source", choices=["log", "changelog"], default="changelog",
                           help="the worker's table changelog (default) or the interactions log")
    add_setting_flags(rollout_p, _REBUILD_FLAGS)

    rollback_p = sub.add_parser("rollback", help="switch readers back to the model version the current one replaced")
    rollback_p.add_argument("--artifact", type=Path, default=None,
                            help="the previous version's artifact: refresh its vectors from the table first")
    rollback_p.add_argument("--source", choices=["log", "changelog"], default="changelog",
                            help="where the refresh reads histories (default changelog)")
    add_setting_flags(rollback_p, _REBUILD_FLAGS)
    return {"rebuild": cmd_rebuild, "rollout": cmd_rollout, "rollback": cmd_rollback}


EXIT_BAD_INPUT = 2


def _command(name: str, step: Callable[[Settings, Any], str]) -> Callable[[argparse.Namespace], int]:
    """A CLI command: open the store, run `step`, print its line; a problem is one line on stderr, exit 2.

    (Errors are printed here, not raised as streams.cli.UserError: under `python -m streams.cli` that module
    is `__main__`, and an import of streams.cli would define a second, uncaught UserError class.)
    """
    import sys

    from streams.store import StoreError

    def run(args: argparse.Namespace) -> int:
        from streams.cli import _settings  # flags → Settings, exactly as the other commands

        settings = _settings(args)
        try:
            artifact = getattr(args, "artifact", None)
            if artifact is not None and not artifact.is_dir():
                raise RebuildError(f"{artifact}: not a directory; give an artifact directory written by mind-export")
            try:
                store = settings.open_store()
            except ValueError as exc:  # a setting the store refuses (e.g. the collection prefix)
                raise RebuildError(str(exc)) from None
            except StoreError as exc:
                raise RebuildError(f"{exc} (a Milvus Lite file is one process's: stop the worker first)") from None
            try:
                print(step(settings, store_args(args, store)))
            finally:
                store.close()
        except (RebuildError, StoreError) as exc:
            print(f"mind-stream {name}: {exc}", file=sys.stderr)
            return EXIT_BAD_INPUT
        return 0

    return run


def store_args(args: argparse.Namespace, store: Any) -> Any:
    args.store = store
    return args


def _rebuild_step(settings: Settings, args: Any) -> str:
    stats = rebuild(settings, args.artifact, store=args.store, source=args.source, drop=args.drop)
    return (f"rebuilt {stats.users_written} users ({stats.rows_written} vectors, {stats.tower_calls} tower calls) "
            f"from {stats.messages} messages of {settings.topic_interactions if args.source == 'log' else 'the changelog'}: "
            f"{stats.applied} applied, {stats.duplicates} duplicates, {stats.rejected} rejected, in {stats.seconds:.1f}s")


def _rollout_step(settings: Settings, args: Any) -> str:
    previous, version, stats = rollout(settings, args.artifact, store=args.store, source=args.source)
    return (f"rolled out model {version} (was {previous or 'none'}): {stats.users_written} users, "
            f"{stats.rows_written} vectors in {stats.seconds:.1f}s; restart the worker with --artifact {args.artifact}")


def _rollback_step(settings: Settings, args: Any) -> str:
    current, previous = rollback(settings, store=args.store, artifact_dir=args.artifact, source=args.source)
    return f"rolled back from model {current} to {previous}; restart the worker with that version's artifact"


cmd_rebuild = _command("rebuild", _rebuild_step)
cmd_rollout = _command("rollout", _rollout_step)
cmd_rollback = _command("rollback", _rollback_step)
