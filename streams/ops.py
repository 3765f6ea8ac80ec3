"""Recreate user vectors without the worker: rebuild from the Kafka log, roll a new model out, roll back.

Typed functions; `streams.cli` wires them to `mind-stream rebuild / rollout / rollback`:

    rebuild(settings, artifact, store=...)    interactions log (from offset 0) → histories → vectors
    rollout(settings, new_artifact, store=...) histories table (its changelog) → the new version's
                                              collections, then one pointer switch, then catch-up passes
    rollback(settings, store=...)             pointer back to the version the current one replaced
                                              (refreshed from the table first when given its artifact)

Everything goes through the worker's own logic: `streams.events.parse_event` and `streams.updater`
(`plan_batch` for the history rule, `recompute` for the tower call, ONE tower call per batch of users) and
`streams.store` (versioned collections, `activate_version`). So a rebuild from the log ends with the same
vectors the live worker wrote, and a rollout writes the whole new version before readers are switched to
it: they see the old version or the new one, never an empty or mixed answer (the pointer is one row).

Where histories come from:
- `log`: the `interactions` topic read from the beginning (no consumer group, nothing committed), per
  partition in offset order, in batches through `plan_batch` exactly as the worker does. The
  future-timestamp check uses each record's Kafka timestamp as "now" (the worker used its clock when it read
  the event), so an event the worker rejected as too far ahead is rejected here too. Profiles: the
  `user-profiles` topic (compacted), last value per user. Needs the topic's retention to cover all of it.
- `changelog`: the worker's table changelogs (`streams.kafka.changelog_topic`), last value per user: the
  history table itself, with its max_len window and `seen` ids.

A rollout next to running workers (a Milvus server): they keep applying events with the old model while the
new version is written from a snapshot of the table, so after the pointer switch the rollout re-reads its
source and rewrites every user whose table entry (history or profile) changed since it was written, pass
after pass, until a pass finds none changed while the workers' consumer group has nothing left to apply
(with no worker in the group, the first unchanged pass ends it; `catch_up_s` bounds the wait).

A Milvus Lite file is one process's at a time: run these while the worker is stopped (or against a Milvus
server). Problems the user can fix raise `UserError`; the store's own failures raise `StoreError`.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from streams.config import Settings, UserError
from streams.events import Rejection, parse_event
from streams.ids import validate_user_id
from streams.kafka import (
    CommittedLag,
    changelog_topic,
    group_is_active,
    last_values,
    read_to_end,
    topic_exists,
)
from streams.store import StoreError, VectorStore, index_items
from streams.updater import History, TowerRuntime, plan_batch, recompute

SOURCES = ("log", "changelog")
CATCH_UP_S = 120.0  # the longest a rollout waits for running workers to apply what was produced before it
CATCH_UP_POLL_S = 0.5


@dataclass
class ReplayStats:
    """What reading a source and writing vectors produced (printed by the CLI, asserted by the tests)."""

    messages: int = 0
    applied: int = 0
    duplicates: int = 0
    rejected: int = 0
    users: int = 0
    users_written: int = 0
    rows_written: int = 0
    tower_calls: int = 0
    catch_up_passes: int = 0
    users_caught_up: int = 0
    caught_up: bool = True  # False: the workers still had events to apply when `catch_up_s` ran out
    seconds: float = 0.0
    rejected_reasons: dict[str, int] = field(default_factory=dict)


def load_runtime(artifact_dir: str | Path) -> Any:
    """The artifact's `UserTowerRuntime`; UserError with one line for a bad or missing artifact."""
    from export.artifact import ArtifactError
    from export.runtime import UserTowerRuntime

    try:
        return UserTowerRuntime.load(artifact_dir)
    except ArtifactError as exc:
        raise UserError(str(exc)) from None
    except FileNotFoundError as exc:
        raise UserError(f"{exc.filename}: not found; "
                        f"point --artifact at a directory written by mind-export") from None


# --- reading histories ---------------------------------------------------------------------------------


def histories_from_log(settings: Settings, *, max_len: int,
                       batch_size: int | None = None) -> tuple[dict[str, History], ReplayStats]:
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
        result = parse_event(record.value, key=record.key, now_ms=record.timestamp,
                             max_future_s=settings.max_future_s)
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
    """The worker's `histories` table, from its changelog topic (last value per user); UserError for a key
    that is not a valid user id."""
    topic = changelog_topic(settings.app_id, "histories")
    return checked_user_keys(topic, last_values(settings, topic, json_keys=True))


def checked_user_keys(topic: str, table: dict[str, Any]) -> dict[str, Any]:
    """`table` unchanged when every key is a valid user id (`streams.ids`); else UserError naming the first
    bad key, as one line: the worker keys its tables by validated user ids only."""
    for key in table:
        try:
            validate_user_id(key)
        except ValueError as exc:
            raise UserError(f"{topic}: {exc}; the worker writes no such key: delete it with a tombstone "
                            f"(a null value for that key) or use --source log") from None
    return table


def read_sources(settings: Settings, source: str,
                 max_len: int) -> tuple[dict[str, History], dict[str, Any], ReplayStats]:
    """(histories, profiles, stats) from `log` or `changelog` (see the module docstring)."""
    if source == "log":
        histories, stats = histories_from_log(settings, max_len=max_len)
        profiles_topic = settings.topic_profiles
        json_keys = False
    elif source == "changelog":
        histories = histories_from_changelog(settings)
        stats = ReplayStats(messages=len(histories), users=len(histories))
        profiles_topic = changelog_topic(settings.app_id, "profiles")
        json_keys = True
    else:
        raise UserError(f"--source {source!r}: use {' or '.join(SOURCES)}")
    profiles = (last_values(settings, profiles_topic, json_keys=json_keys)
                if topic_exists(settings, profiles_topic) else {})
    return histories, profiles, stats


# --- writing vectors -----------------------------------------------------------------------------------


def write_vectors(store: VectorStore, runtime: TowerRuntime, histories: Mapping[str, History],
                  profiles: Mapping[str, Any], *, batch_users: int = 256, stats: ReplayStats | None = None,
                  progress: Callable[[int], None] | None = None) -> ReplayStats:
    """Recompute every user's interests (one tower call per `batch_users` users) into the runtime's
    version, then run the store's pending clean-up."""
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


def _max_len(settings: Settings, runtime: Any) -> int:
    return settings.max_history or int(runtime.manifest.max_history_length)


def _write_with_progress(store: VectorStore, runtime: TowerRuntime, histories: Mapping[str, History],
                         profiles: Mapping[str, Any], stats: ReplayStats | None,
                         progress: bool) -> ReplayStats:
    """`write_vectors` under a progress bar over the users (off when `progress` is False)."""
    from tqdm import tqdm

    with tqdm(total=len(histories), desc="users", unit="user", disable=not progress) as bar:
        return write_vectors(store, runtime, histories, profiles, stats=stats, progress=bar.update)


def rebuild(settings: Settings, artifact_dir: str | Path, *, store: VectorStore, source: str = "log",
            drop: bool = False, progress: bool = False) -> ReplayStats:
    """Recreate every user's vectors of the artifact's version in `store` from Kafka.

    The store must hold no interests of that version (an empty store, or `drop=True` to drop every
    collection of the store first): a rebuild never merges into a live state. `progress`: bars for the
    items and the users on stderr.
    """
    started = time.perf_counter()
    runtime = load_runtime(artifact_dir)
    version = str(runtime.manifest.model_version)
    if drop:
        store.drop_all()
    elif version in store.versions() and store.count_user_interests(version) > 0:
        raise UserError(f"the vector store at {store.uri} already holds user vectors of model {version}; "
                        f"rebuild into an empty store, or pass --drop to drop its collections first")
    histories, profiles, stats = read_sources(settings, source, _max_len(settings, runtime))
    index_items(artifact_dir, store, progress=progress)
    _write_with_progress(store, runtime, histories, profiles, stats, progress)
    stats.seconds = time.perf_counter() - started
    return stats


def rollout(settings: Settings, artifact_dir: str | Path, *, store: VectorStore, source: str = "changelog",
            catch_up_s: float = CATCH_UP_S, progress: bool = False,
            on_phase: Callable[[str], None] | None = None) -> tuple[str, str, ReplayStats]:
    """Write the new artifact's version completely (items, every user's vectors), switch readers to it, then
    catch up with what running workers applied meanwhile (`catch_up`).

    Returns (previous version, new version, stats). Readers keep using the previous version until the one
    pointer row is written; the previous version's collections are left as they are, for `rollback`.
    `on_phase` is told "snapshot" (the source is read), "activated" and "caught-up", in that order.
    `progress`: bars for the items and the users on stderr.
    """
    phase = on_phase or (lambda name: None)
    started = time.perf_counter()
    runtime = load_runtime(artifact_dir)
    version = str(runtime.manifest.model_version)
    try:
        previous = store.current_version()
    except StoreError:
        previous = ""
    if previous == version:
        raise UserError(f"model {version} is already the active version in {store.uri}; nothing to roll out")
    histories, profiles, stats = read_sources(settings, source, _max_len(settings, runtime))
    phase("snapshot")
    index_items(artifact_dir, store, progress=progress)  # a store with an active version keeps it active
    _write_with_progress(store, runtime, histories, profiles, stats, progress)
    store.activate_version(version)
    phase("activated")
    catch_up(settings, store, runtime, source, histories, profiles, stats=stats, timeout_s=catch_up_s)
    phase("caught-up")
    stats.seconds = time.perf_counter() - started
    return previous, version, stats


def catch_up(settings: Settings, store: VectorStore, runtime: Any, source: str, histories: dict[str, History],
             profiles: dict[str, Any], *, stats: ReplayStats, timeout_s: float) -> None:
    """Rewrite, into the runtime's version, every user whose table entry changed since `histories` and
    `profiles` were written; pass after pass until one finds nothing changed while the workers' consumer
    group has nothing left to apply (or no member). Updates `histories`, `profiles` and `stats`."""
    max_len = _max_len(settings, runtime)
    lag = CommittedLag(settings, settings.topic_interactions)
    deadline = time.monotonic() + timeout_s
    try:
        while True:
            now_histories, now_profiles, _ = read_sources(settings, source, max_len)
            stats.catch_up_passes += 1
            changed = {user: history for user, history in now_histories.items()
                       if history != histories.get(user) or now_profiles.get(user) != profiles.get(user)}
            if changed:
                write_vectors(store, runtime, changed, now_profiles)
                stats.users_caught_up += len(changed)
                histories.update(changed)
                profiles.clear()
                profiles.update(now_profiles)
            elif not group_is_active(settings) or sum(lag(list(range(settings.partitions))).values()) == 0:
                return
            if time.monotonic() > deadline:
                stats.caught_up = False
                return
            if not changed:
                time.sleep(CATCH_UP_POLL_S)  # the workers are applying: let them
    finally:
        lag.close()


def rollback(settings: Settings, *, store: VectorStore, artifact_dir: str | Path | None = None,
             source: str = "changelog") -> tuple[str, str]:
    """Point readers back at the version the current one replaced; returns (from, to).

    With `artifact_dir` (the previous model's artifact) that version's vectors are first recomputed from the
    table, so users whose behaviour changed since the rollout are current when readers switch back.
    """
    current = store.current_version()
    if artifact_dir is not None:
        runtime = load_runtime(artifact_dir)
        target = str(runtime.manifest.model_version)
        try:
            replaced = store.replaced_versions()
        except StoreError:
            replaced = []
        if not replaced or replaced[-1] != target:
            raise UserError(f"{artifact_dir} is model {target}, but the version to roll back to is "
                            f"{(replaced or ['none'])[-1]}; give that version's artifact")
        histories, profiles, _ = read_sources(settings, source, _max_len(settings, runtime))
        write_vectors(store, runtime, histories, profiles)
    return current, store.rollback()
