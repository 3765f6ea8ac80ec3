"""The user_interests collection of each model version: generations, reads, and their clean-up.

``{prefix}user_interests__{version}``: ``key`` varchar pk ``"{user_id}#{slot}#{generation}"``, ``user_id``
varchar, ``slot`` int32, ``generation`` int64, ``vector`` float (d,), ``bias`` float (the interest's logit in
the 'mixture' merge, `export.merge`), ``model_version`` varchar, ``event_ts_ms`` int64 (event time the vector
reflects), ``updated_at_ms`` int64. Only valid slots are stored. A collection created before ``bias`` existed
is read with bias 0.

A write inserts each user's new set as a new generation and removes the slots it deletes; the users'
older generations are deleted later, by primary key, in batches (`CleanupQueue`). Readers keep each
user's newest generation, so they see the old set or the new one, never a user without vectors (a Milvus
Lite upsert is a delete then an insert; docs/ARCHITECTURE.md, "Decisions").

Newest is by `(event_ts_ms, generation)`: the newest event time a set reflects never decreases for a user
(events are only added to a history), and does not depend on the writing host's clock; the generation (the
writer's clock, microseconds) only orders sets that reflect the same newest event time.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from streams.ids import MAX_USER_ID_LENGTH, interest_key, split_interest_key, validate_user_id
from streams.store.client import Connection, StoreError, now_ms
from streams.store.versions import VersionRegistry, latest_by

KEY_COLUMN_LENGTH = MAX_USER_ID_LENGTH + 32  # "{user_id}#{slot}#{generation}"
MAX_QUERY_ROWS = 16384  # Milvus' query result window
READ_USERS_PER_QUERY = 256  # ≤ K rows each, x2 mid-write: well inside one query's window
DELETE_KEYS_PER_CALL = 4096  # a cleanup's keys per delete call (one expression `key in [...]`)
DELETE_USERS_PER_FILTER = 1024
_log = logging.getLogger(__name__)
# Which of a user's generations is the newest: event time first, so a writer's clock skew cannot make an
# older set win (issue 16); the generation (writer clock) breaks ties of equal event time.
NEWEST_ORDER = ("event_ts_ms", "generation")


@dataclass(frozen=True)
class StoredInterest:
    """One stored interest vector of a user. `vector` is float32 (d,); `bias` its logit in the 'mixture'
    merge (0 under max)."""

    user_id: str
    slot: int
    vector: np.ndarray
    model_version: str
    event_ts_ms: int
    updated_at_ms: int
    bias: float = 0.0


@dataclass
class PlannedWrite:
    """One write as columns (row i at index i of each list), and the slots it deletes of users it does not
    write."""

    columns: dict[str, list] = field(default_factory=dict)
    deleted_slots: dict[str, set[int]] = field(default_factory=dict)

    @property
    def event_ts_of(self) -> dict[str, int]:
        """Written user -> the newest event time its new generation reflects."""
        return dict(zip(self.columns.get("user_id", []), self.columns.get("event_ts_ms", []), strict=True))

    @property
    def slots_of(self) -> dict[str, list[int]]:
        """Written user -> the slots of its new generation, in row order."""
        slots: dict[str, list[int]] = {}
        for user_id, slot in zip(self.columns.get("user_id", []), self.columns.get("slot", []), strict=True):
            slots.setdefault(user_id, []).append(slot)
        return slots


def plan_write(rows: Sequence[Mapping[str, Any]], delete_keys: Sequence[str], *, version: str,
               generation: int, now: int) -> PlannedWrite:
    """Validate a write and lay it out column-wise (pure); ValueError names a bad row or key."""
    keys: set[str] = set()
    row_keys, user_ids, slots, vectors, biases, event_ts_ms, updated_at_ms = [], [], [], [], [], [], []
    for row in rows:
        user_id = validate_user_id(row["user_id"])
        key = interest_key(user_id, row["slot"])
        given = row.get("key", row.get("pk"))
        if given is not None and given != key:
            raise ValueError(f"row key {given!r} does not match user {user_id!r} slot {row['slot']}; "
                             f"expected {key!r}")
        if key in keys:
            raise ValueError(f"interest key {key} appears twice in one write; "
                             f"collapse a user's updates first")
        keys.add(key)
        row_keys.append(f"{key}#{generation}")
        user_ids.append(user_id)
        slots.append(int(row["slot"]))
        vectors.append(row["vector"])
        biases.append(float(row.get("bias", 0.0)))
        event_ts_ms.append(int(row["event_ts_ms"]))
        updated_at_ms.append(int(row.get("updated_at_ms") or now))
    both = keys.intersection(delete_keys)
    if both:
        raise ValueError(f"interest keys {sorted(both)[:3]} are both written and deleted in one call")
    plan = PlannedWrite()
    written_users = set(user_ids)
    for key in delete_keys:
        user_id, slot = split_interest_key(key)
        if user_id not in written_users:  # a written user's older generations all go anyway
            plan.deleted_slots.setdefault(user_id, set()).add(slot)
    if row_keys:
        count = len(row_keys)
        plan.columns = {"key": row_keys, "user_id": user_ids, "slot": slots,
                        "generation": [generation] * count,
                        "vector": np.asarray(vectors, dtype=np.float32).reshape(count, -1).tolist(),
                        "bias": biases,
                        "model_version": [version] * count, "event_ts_ms": event_ts_ms,
                        "updated_at_ms": updated_at_ms}
    return plan


class CleanupQueue:
    """The replaced generations waiting for deletion, per version; thread-safe (its own lock).

    It remembers the generation this store last wrote for each user (so the generation replacing it is
    deleted by primary key), the keys waiting, and the users whose older rows this store did not write (an
    earlier process): those are deleted once, by ``generation < the first one this store wrote``.
    A cleanup is due once `batch_rows` rows wait or `interval_s` after the last one (0 = every write). The
    users of an earlier process cost a filter delete, a scan of every row, so a partial cleanup (`take(
    full=False)`) leaves them until `DELETE_USERS_PER_FILTER` wait or `users_interval_s` passed.
    """

    def __init__(self, *, batch_rows: int, interval_s: float, clock: Callable[[], float] = time.monotonic,
                 users_interval_s: float = 30.0):
        self.batch_rows = batch_rows
        self.interval_s = interval_s
        self.users_interval_s = users_interval_s
        self._clock = clock
        self._last_users_cleanup = clock()
        self._lock = threading.Lock()
        self._live: dict[str, dict[str, tuple[int, tuple[int, ...]]]] = {}  # version -> user -> (gen, slots)
        self._obsolete: dict[str, list[str]] = {}  # version -> primary keys of replaced generations
        self._unknown: dict[str, dict[str, int]] = {}  # version -> user -> first generation this store wrote
        self._first_event_ts: dict[str, dict[str, int]] = {}  # version -> user -> event time of that write
        self._pending_rows = 0  # rows waiting (a user new to this store counts its new rows)
        self._last_cleanup = clock()

    def record(self, version: str, generation: int, slots_of: Mapping[str, Sequence[int]],
               deleted_slots: Mapping[str, set[int]], event_ts_of: Mapping[str, int] | None = None) -> None:
        """A write of `generation` landed: queue what it replaced."""
        with self._lock:
            live = self._live.setdefault(version, {})
            obsolete = self._obsolete.setdefault(version, [])
            unknown = self._unknown.setdefault(version, {})
            first_event_ts = self._first_event_ts.setdefault(version, {})
            for user_id, slots in slots_of.items():
                previous = live.get(user_id)
                live[user_id] = (generation, tuple(slots))
                if previous is None:
                    unknown.setdefault(user_id, generation)
                    first_event_ts.setdefault(user_id, (event_ts_of or {}).get(user_id, 0))
                    self._pending_rows += len(slots)
                else:
                    obsolete.extend(f"{user_id}#{slot}#{previous[0]}" for slot in previous[1])
                    self._pending_rows += len(previous[1])
            for user_id, slots in deleted_slots.items():
                if user_id in live:
                    kept_generation, kept = live[user_id]
                    live[user_id] = (kept_generation, tuple(s for s in kept if s not in slots))

    def requeue_keys(self, version: str, keys: Iterable[str]) -> None:
        """Keys to delete at the next cleanup (a failed delete, or rows an insert may have left)."""
        with self._lock:
            self._obsolete.setdefault(version, []).extend(keys)

    def requeue_users(self, version: str, users: Iterable[tuple[str, int]]) -> None:
        with self._lock:
            again = self._unknown.setdefault(version, {})
            for user_id, generation in users:
                again[user_id] = min(generation, again.get(user_id, generation))

    def first_event_ts(self, version: str, users: Iterable[str]) -> int:
        """The oldest event time of these users' first writes by this store (0 if unknown): any row of theirs
        reflecting an older event time is stale, whatever its writer's clock said."""
        with self._lock:
            known = self._first_event_ts.get(version, {})
            return min((known.get(user_id, 0) for user_id in users), default=0)

    def due(self) -> bool:
        return self._pending_rows >= self.batch_rows or self._clock() - self._last_cleanup >= self.interval_s

    def take(self, full: bool = True) -> tuple[dict[str, list[str]], dict[str, dict[str, int]]]:
        """(keys, users of an earlier process) per version, emptied here; the clock restarts. `full=False`:
        the users only once enough of them wait or `users_interval_s` passed (else {})."""
        with self._lock:
            now = self._clock()
            obsolete, self._obsolete = self._obsolete, {}
            waiting = sum(len(users) for users in self._unknown.values())
            users_due = (waiting >= DELETE_USERS_PER_FILTER
                         or now - self._last_users_cleanup >= self.users_interval_s)
            unknown: dict[str, dict[str, int]] = {}
            if full or users_due:
                unknown, self._unknown = self._unknown, {}
                self._last_users_cleanup = now
            self._pending_rows = 0
            self._last_cleanup = now
        return obsolete, unknown

    def forget(self, version: str | None = None) -> None:
        """Drop the bookkeeping of one version (dropped) or of all (collections dropped)."""
        with self._lock:
            for bookkeeping in (self._live, self._obsolete, self._unknown, self._first_event_ts):
                if version is None:
                    bookkeeping.clear()
                else:
                    bookkeeping.pop(version, None)


class Interests:
    """Writes, reads and clean-up of user interest vectors on one `Connection`."""

    def __init__(self, connection: Connection, registry: VersionRegistry, cleanup: CleanupQueue) -> None:
        self._db = connection
        self._registry = registry
        self.cleanup = cleanup
        self.cleanup_in_writes = True  # False: the caller runs `flush_cleanup` when `cleanup.due()`

    def ensure_collection(self, version: str, dim: int) -> str:
        """Create `version`'s user_interests collection if absent. Users are read by key, never searched;
        Milvus still wants a vector index to load a collection (FLAT)."""
        name = self._db.interests_name(version)
        fields = [("key", "VARCHAR", {"is_primary": True, "max_length": KEY_COLUMN_LENGTH}),
                  ("user_id", "VARCHAR", {"max_length": MAX_USER_ID_LENGTH}),
                  ("slot", "INT32", {}), ("generation", "INT64", {}),
                  ("vector", "FLOAT_VECTOR", {"dim": dim}), ("bias", "FLOAT", {}),
                  ("model_version", "VARCHAR", {"max_length": 64}),
                  ("event_ts_ms", "INT64", {}), ("updated_at_ms", "INT64", {})]
        self._db.ensure_collection(name, fields, dim)
        return name

    def write(self, rows: Sequence[Mapping[str, Any]], delete_keys: Iterable[str], *,
              model_version: str | None) -> None:
        """See `VectorStore.write_user_interests`."""
        delete_keys = list(delete_keys)
        if not rows and not delete_keys:
            return
        row_versions = {str(r["model_version"]) for r in rows if r.get("model_version") is not None}
        if model_version is None and len(row_versions) == 1:
            model_version = row_versions.pop()
        version = self._registry.resolve(model_version)
        if row_versions - {version}:
            raise ValueError(f"rows carry model versions {sorted(row_versions)} but are written to version "
                             f"{version}")
        generation = self._db.next_sequence()
        plan = plan_write(rows, delete_keys, version=version, generation=generation, now=now_ms())
        name = self._db.interests_name(version)
        if plan.columns:
            try:
                self._db.insert_columns("write user interests", name, plan.columns)
            except StoreError:
                # Rows may have landed before the error (a timeout): their keys are this generation's alone,
                # so they are queued for deletion and the users' previous generation stays live.
                self.cleanup.requeue_keys(version, plan.columns["key"])
                raise
        if plan.deleted_slots:
            clauses = [f"(user_id == {json.dumps(user_id)} and slot in {sorted(slots)})"
                       for user_id, slots in sorted(plan.deleted_slots.items())]
            self._db.call("delete user interests", self._db.client.delete, name, filter=" or ".join(clauses))
        self.cleanup.record(version, generation, plan.slots_of, plan.deleted_slots, plan.event_ts_of)
        if self.cleanup_in_writes and self.cleanup.due():
            self.flush_cleanup()

    def flush_cleanup(self, full: bool = True) -> None:
        """Delete the generations that writes replaced since the last cleanup (`full=False`: the users of an
        earlier process only when their filter delete is due, see `CleanupQueue`).

        By primary key (a Lite delete by filter evaluates the filter over every row; by key it looks the keys
        up, see `lite.index_primary_keys`); users an earlier process wrote are deleted once by filter. A
        failure is logged and retried at the next cleanup: readers only use each user's newest generation,
        so a late cleanup costs storage, never correctness.
        """
        obsolete, unknown = self.cleanup.take(full)
        for version in sorted(set(obsolete) | set(unknown)):
            name = self._db.interests_name(version)
            keys = obsolete.get(version, [])
            for start in range(0, len(keys), DELETE_KEYS_PER_CALL):
                try:
                    self._db.call("delete replaced user interests", self._db.client.delete, name,
                                  ids=keys[start : start + DELETE_KEYS_PER_CALL])
                except StoreError as exc:
                    _log.warning("%s; retrying at the next cleanup", exc)
                    self.cleanup.requeue_keys(version, keys[start:])
                    break
            users = sorted(unknown.get(version, {}).items())
            for start in range(0, len(users), DELETE_USERS_PER_FILTER):
                chunk = dict(users[start : start + DELETE_USERS_PER_FILTER])
                condition = f"user_id in {_quoted_list(chunk)} and generation < {min(chunk.values())}"
                older = self.cleanup.first_event_ts(version, chunk)
                if older > 0:  # a skewed-clock writer's stale set (see NEWEST_ORDER)
                    condition = (f"user_id in {_quoted_list(chunk)} and (generation < {min(chunk.values())} "
                                 f"or event_ts_ms < {older})")
                try:
                    self._db.call("delete user interests written before", self._db.client.delete, name,
                                  filter=condition)
                except StoreError as exc:
                    _log.warning("%s; retrying at the next cleanup", exc)
                    self.cleanup.requeue_users(version, users[start:])
                    break

    def get(self, user_ids: Sequence[str], *, version: str) -> dict[str, list[StoredInterest]]:
        """Stored interests per user id (the user's newest generation), sorted by slot; no vectors -> []."""
        found: dict[str, list[StoredInterest]] = {u: [] for u in user_ids}
        rows: list[Mapping[str, Any]] = []
        distinct = sorted(set(user_ids))
        fields = ["user_id", "slot", "generation", "vector", "model_version", "event_ts_ms", "updated_at_ms"]
        name = self._db.interests_name(version)
        if "bias" in self._db.field_names(name):
            fields.append("bias")
        for start in range(0, len(distinct), READ_USERS_PER_QUERY):
            chunk = distinct[start : start + READ_USERS_PER_QUERY]
            # `user_id == "u"` is about twice as fast as `user_id in ["u"]` on Lite; recall reads one user.
            condition = (f"user_id == {json.dumps(chunk[0])}" if len(chunk) == 1
                         else f"user_id in {_quoted_list(chunk)}")
            rows += self._db.call("read user interests", self._db.client.query,
                                  name, filter=condition, output_fields=fields,
                                  limit=MAX_QUERY_ROWS)
        # Between a write's insert and its cleanup a user has two generations: keep the newest only.
        newest = {user: row["generation"]
                  for user, row in latest_by(rows, "user_id", NEWEST_ORDER).items()}
        by_slot: dict[tuple[str, int], StoredInterest] = {}
        for row in rows:
            if row["generation"] != newest[row["user_id"]]:
                continue
            by_slot[(row["user_id"], int(row["slot"]))] = StoredInterest(
                user_id=row["user_id"], slot=int(row["slot"]),
                vector=np.asarray(row["vector"], dtype=np.float32),
                model_version=row["model_version"], event_ts_ms=int(row["event_ts_ms"]),
                updated_at_ms=int(row["updated_at_ms"]), bias=float(row.get("bias", 0.0)))
        for (user_id, _), interest in sorted(by_slot.items()):
            found[user_id].append(interest)
        return found

    def count(self, version: str) -> int:
        """Stored interest rows of a version (pending cleanups run first, so older generations are gone)."""
        self.flush_cleanup()
        rows = self._db.call("count user interests", self._db.client.query, self._db.interests_name(version),
                             filter="", output_fields=["count(*)"])
        return int(rows[0]["count(*)"])


def _quoted_list(values: Iterable[str]) -> str:
    # Only validated ids reach here (no quotes or backslashes), so JSON quoting is exact Milvus syntax.
    return json.dumps(list(values))
