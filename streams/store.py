"""The vector store: the only module that talks to Milvus.

A URI decides where the vectors live (pymilvus `MilvusClient` semantics): a file path such as the default
``./mindstream.db`` is a Milvus Lite file owned by this process; ``http://host:19530`` is a Milvus server
(standalone or cluster). Credentials (``token`` = ``"user:password"`` or an API key) come from configuration
or the environment (`VectorStore.from_env`), never from code.

Collections (docs/ARCHITECTURE.md), one pair per model version so a rollout never mixes two embedding spaces:

``{prefix}items__{version}``
    ``item_index`` int64 pk (1..num_items), ``item_id`` varchar (raw id), ``side`` varchar (JSON of the
    item's side-feature values, e.g. ``{"genres": ["Action"]}``), ``vector`` float (d,), metric IP.
``{prefix}user_interests__{version}``
    ``key`` varchar pk ``"{user_id}#{slot}#{generation}"``, ``user_id`` varchar, ``slot`` int32,
    ``generation`` int64, ``vector`` float (d,), ``model_version`` varchar, ``event_ts_ms`` int64 (event
    time the vector reflects), ``updated_at_ms`` int64. Only valid slots are stored; slots that became
    invalid are deleted. A write inserts the user's new set as a new generation; the older ones are deleted
    by key in a later write's cleanup (`cleanup_batch_rows` / `cleanup_interval_s`); readers keep each user's
    newest generation. Why not an upsert on ``"{user_id}#{slot}"``: Milvus
    Lite 2.5 runs an upsert as a delete then an insert, and a concurrent reader sees the gap (measured:
    20-45 % of reads racing a stream of upserts found the user with no vectors at all).
``{prefix}mindstream_versions``
    a tiny append-only key/value collection: per version its dim and index, and the ``current`` pointer;
    every write inserts a row with a higher sequence number and readers take the highest.

Model rollout (issue 7). The pointer ``current`` names the active version and keeps the versions it
replaced, newest last::

    store.ensure_collections(dim, "v2")          # new physical pair; the active version is untouched
    index_items(artifact_v2, store)              # fill items__v2
    ... replay the history table with the v2 tower into user_interests__v2 ...
    store.activate_version("v2")                 # one single-row insert: readers switch atomically
    store.rollback()                             # back to v1 (its collections were never touched)

Readers resolve the pointer once per request (`current_version`) and pass that version to every call of
the request, so one recall never searches v1 items with v2 user vectors. Why a pointer row and not a
Milvus alias: Milvus Lite 2.5 answers `create_alias` / `alter_alias` with gRPC UNIMPLEMENTED (measured),
and even on a server two aliases (items, user_interests) switch one after the other, so a reader between
the two switches would mix versions; one pointer row switches both at once, on Lite and server alike.
The first version ever created in a store becomes active by itself, so a single-model deployment never
calls `activate_version`.

Consistency: every collection is created with ``consistency_level="Strong"``, so a write is visible to the
very next read (measured on Lite 2.5.1: a read right after an insert returns the row). Readers only ever
see whole states: meta rows (the pointer) are append-only, interests are replaced by generation. Every
call passes ``timeout=`` because pymilvus otherwise retries some failures (e.g. a bad filter expression
on Lite) up to 75 times, for minutes.

Index types: FLAT (exact; the default), IVF_FLAT and AUTOINDEX on Lite, HNSW too on a server. On Lite 2.5
IVF_FLAT's nlist/nprobe have no effect (rows stay in growing segments, searched by Lite's interim index;
recall@50 was 0.235-0.285 on random 64-d items for every setting), so use FLAT there.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import re
import threading
import time
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

ITEMS = "items"
USER_INTERESTS = "user_interests"
VERSIONS = "mindstream_versions"
CURRENT_KEY = "current"

LITE_INDEX_TYPES = ("FLAT", "IVF_FLAT", "AUTOINDEX")
SERVER_INDEX_TYPES = ("FLAT", "IVF_FLAT", "HNSW", "AUTOINDEX")

# "#" separates user id and slot in the primary key, quotes and backslashes would need escaping inside
# filter expressions: a user id is a short token of safe characters (ints arrive as their decimal string).
USER_ID_PATTERN = re.compile(r"[A-Za-z0-9_.:@\-]{1,128}")
MAX_USER_ID_LENGTH = 128
# Versions become part of collection names (letters, digits, underscores only in Milvus).
VERSION_PATTERN = re.compile(r"[A-Za-z0-9_]{1,64}")
PREFIX_PATTERN = re.compile(r"(|[A-Za-z_][A-Za-z0-9_]{0,63})")

ITEM_ID_MAX_LENGTH = 512
SIDE_MAX_LENGTH = 8192
KEY_MAX_LENGTH = MAX_USER_ID_LENGTH + 32  # "{user_id}#{slot}#{generation}"
VERSION_VALUE_MAX_LENGTH = 8192
_log = logging.getLogger(__name__)
MAX_QUERY_ROWS = 16384  # Milvus' query result window
READ_USERS_PER_QUERY = 256
DELETE_KEYS_PER_CALL = 4096  # a cleanup's keys per delete call (one expression `key in [...]`)
DELETE_USERS_PER_FILTER = 1024
_DUMMY_DIM = 2  # Milvus requires a vector field in every collection, even the key/value one.


class StoreError(Exception):
    """The vector store cannot do what was asked; the message says what is wrong and what to do."""


@dataclasses.dataclass(frozen=True)
class ItemHit:
    """One search result: the item and its inner product with the query vector."""

    item_index: int
    item_id: str
    score: float


@dataclasses.dataclass(frozen=True)
class StoredInterest:
    """One stored interest vector of a user. `vector` is float32 (d,)."""

    user_id: str
    slot: int
    vector: np.ndarray
    model_version: str
    event_ts_ms: int
    updated_at_ms: int


def validate_user_id(user_id: object) -> str:
    """The canonical user id (ints become their decimal string); ValueError names what is wrong."""
    if isinstance(user_id, bool) or not isinstance(user_id, (str, int)):
        raise ValueError(f"user id must be a string or an integer, got {type(user_id).__name__}")
    text = str(user_id)
    if not USER_ID_PATTERN.fullmatch(text):
        shown = text if len(text) <= 40 else text[:40] + "…"
        raise ValueError(
            f"user id {shown!r} is not valid: use 1-{MAX_USER_ID_LENGTH} characters from letters, digits and _ . : @ -"
        )
    return text


def validate_version(version: object) -> str:
    if not isinstance(version, str) or not VERSION_PATTERN.fullmatch(version):
        raise ValueError(f"model version {version!r} is not valid: use 1-64 letters, digits or underscores")
    return version


def interest_key(user_id: str, slot: int) -> str:
    """Primary key of one user interest row: ``"{user_id}#{slot}"``."""
    return f"{user_id}#{int(slot)}"


def interest_rows(
    user_id: str,
    interest_vectors: np.ndarray,
    valid_interest_mask: np.ndarray,
    *,
    model_version: str,
    event_ts_ms: int,
    updated_at_ms: int | None = None,
) -> tuple[list[dict[str, Any]], list[str]]:
    """One user's tower output → (rows to upsert, keys to delete).

    interest_vectors (K, d), valid_interest_mask (K,) bool. Valid slots become rows; invalid slots become
    delete keys (deleting a key that is not stored is a no-op), so a masked, all-zero capsule is never stored.
    """
    vectors = np.asarray(interest_vectors, dtype=np.float32)
    mask = np.asarray(valid_interest_mask, dtype=bool)
    if vectors.ndim != 2 or mask.shape != (vectors.shape[0],):
        raise ValueError(f"expected interest_vectors (K, d) and valid_interest_mask (K,), got {vectors.shape} and {mask.shape}")
    updated = int(updated_at_ms if updated_at_ms is not None else time.time() * 1000)
    rows, delete_keys = [], []
    for slot in range(vectors.shape[0]):
        if mask[slot]:
            rows.append(
                {
                    "user_id": user_id,
                    "slot": slot,
                    "vector": vectors[slot],
                    "model_version": model_version,
                    "event_ts_ms": int(event_ts_ms),
                    "updated_at_ms": updated,
                }
            )
        else:
            delete_keys.append(interest_key(user_id, slot))
    return rows, delete_keys


def is_lite_uri(uri: str) -> bool:
    """A URI without a network scheme is a Milvus Lite file."""
    return not uri.startswith(("http://", "https://", "tcp://", "grpc://", "unix:"))


def _quoted_list(values: Iterable[str]) -> str:
    # Only validated ids reach here (no quotes or backslashes), so JSON quoting is exact Milvus syntax.
    return json.dumps(list(values))


class VectorStore:
    """Items and user interest vectors in Milvus, versioned by model version (see the module docstring).

    `uri`: Milvus Lite file path (default ``./mindstream.db``) or a server URI. `token`: ``"user:password"``
    or an API key for a server. `collection_prefix` lets several stores share one Milvus (tests, tenants).
    `timeout_s` bounds every call, retries included; `build_timeout_s` bounds building and loading an index
    (1M items take minutes on Lite). The older generations that interest writes replace are deleted by a
    write once `cleanup_batch_rows` of them wait, or `cleanup_interval_s` after the last cleanup (0 = within
    every write), in one call by primary key. A write's new vectors are readable as soon as its insert
    returns; on Lite the delete is the slow part: ~2 ms a call plus ~15-20 µs a row once the keys are
    indexed (`_index_lite_keys`; before: 71 ms for one user at 100k users), so rows are deleted in batches
    large enough to share the per-call cost and small enough that no write waits long (1,024 rows: ~20-35 ms;
    a whole second of a draining worker: 150-250 ms, the worker's freshness p99 before, issue 6).
    """

    def __init__(
        self,
        uri: str = "./mindstream.db",
        *,
        token: str | None = None,
        collection_prefix: str = "",
        timeout_s: float = 30.0,
        build_timeout_s: float = 1800.0,
        cleanup_interval_s: float = 1.0,
        cleanup_batch_rows: int = 1024,
    ) -> None:
        if not PREFIX_PATTERN.fullmatch(collection_prefix):
            raise ValueError(
                f"collection prefix {collection_prefix!r} is not valid: start with a letter or _, then letters, digits, _"
            )
        self.uri = str(uri)
        self.is_lite = is_lite_uri(self.uri)
        self.prefix = collection_prefix
        self.timeout_s = timeout_s
        self.build_timeout_s = build_timeout_s
        if self.is_lite:
            if not self.uri.endswith(".db"):
                raise StoreError(f"Milvus Lite file {self.uri!r} must end with .db (or pass a server URI http://host:19530)")
            Path(self.uri).expanduser().resolve().parent.mkdir(parents=True, exist_ok=True)
        # Imported here so that `validate_user_id` & co. stay importable without pymilvus' start-up cost.
        from pymilvus import MilvusClient

        self._token = token or ""  # kept for `reconnect`, never logged
        if self.is_lite:
            _refuse_if_locked_elsewhere(self.uri)
        try:
            self._client = MilvusClient(uri=self.uri, token=token or "", timeout=timeout_s)
        except Exception as exc:
            raise StoreError(f"cannot open the vector store at {self.uri}: {_first_line(exc)}") from None
        self._search_params: dict[str, dict[str, Any]] = {}  # version -> search params of its items index
        self._schemas: dict[str, dict[str, Any]] = {}  # collection -> described schema, for column-wise inserts
        self._versions_ready = False
        self._last_sequence = 0
        self._sequence_lock = threading.Lock()
        self.cleanup_interval_s = cleanup_interval_s
        self.cleanup_batch_rows = cleanup_batch_rows
        self._pending_rows = 0  # replaced rows waiting for the cleanup (users of an earlier process: their new count)
        # Cleanup bookkeeping per version: the keys of the generation this store last wrote for each user (so the
        # generation that replaces it is deleted by primary key), keys waiting for the next cleanup, and users
        # whose older rows this store did not write (an earlier process): those are deleted by a filter, once.
        self._live: dict[str, dict[str, tuple[int, tuple[int, ...]]]] = {}  # version -> user -> (generation, slots)
        self._obsolete: dict[str, list[str]] = {}  # version -> primary keys of replaced generations
        self._unknown: dict[str, dict[str, int]] = {}  # version -> user -> first generation this store wrote
        self._last_cleanup = time.monotonic()
        self._cleanup_lock = threading.Lock()

    @classmethod
    def from_env(cls, **overrides: Any) -> VectorStore:
        """Build from ``MINDSTREAM_MILVUS_URI`` (default ``./mindstream.db``), ``MINDSTREAM_MILVUS_TOKEN`` and
        ``MINDSTREAM_MILVUS_PREFIX``; keyword arguments override them."""
        kwargs: dict[str, Any] = {
            "uri": os.environ.get("MINDSTREAM_MILVUS_URI", "./mindstream.db"),
            "token": os.environ.get("MINDSTREAM_MILVUS_TOKEN") or None,
            "collection_prefix": os.environ.get("MINDSTREAM_MILVUS_PREFIX", ""),
        }
        kwargs.update(overrides)
        return cls(**kwargs)

    def close(self) -> None:
        self.flush_cleanup()
        self._client.close()

    def reconnect(self) -> None:
        """Drop the connection and open a new one after a failure (the worker's outage retry, issue 7).

        pymilvus does not restart a Milvus Lite server that died (killed, crashed): its server manager keeps
        the dead process per file, so it is released first and the new client starts a fresh server. Raises
        StoreError while the store still cannot be reached; the caller retries with backoff.
        """
        from pymilvus import MilvusClient

        try:
            self._client.close()
        except Exception:  # noqa: BLE001 - the broken connection is being thrown away
            pass
        if self.is_lite:
            from milvus_lite.server_manager import server_manager_instance

            server_manager_instance.release_server(self.uri)
            _refuse_if_locked_elsewhere(self.uri)
        try:
            self._client = MilvusClient(uri=self.uri, token=self._token, timeout=self.timeout_s)
        except Exception as exc:
            raise StoreError(f"cannot reopen the vector store at {self.uri}: {_first_line(exc)}") from None

    def __enter__(self) -> VectorStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- names ---------------------------------------------------------------------------------------

    def items_collection(self, version: str) -> str:
        return f"{self.prefix}{ITEMS}__{validate_version(version)}"

    def interests_collection(self, version: str) -> str:
        return f"{self.prefix}{USER_INTERESTS}__{validate_version(version)}"

    @property
    def versions_collection(self) -> str:
        return f"{self.prefix}{VERSIONS}"

    # --- schema --------------------------------------------------------------------------------------

    def ensure_collections(self, dim: int, model_version: str) -> None:
        """Create (if absent) the items and user_interests collections of `model_version`, with dimension `dim`.

        Idempotent; a collection that exists with another dimension is an error. The first version ever
        created in this store becomes the active one.
        """
        from pymilvus import DataType, MilvusClient

        validate_version(model_version)
        if not isinstance(dim, int) or dim < 1:
            raise ValueError(f"embedding dimension must be a positive int, got {dim!r}")
        self._ensure_versions_collection()

        items = self.items_collection(model_version)
        if not self._has(items):
            schema = MilvusClient.create_schema(auto_id=False, enable_dynamic_field=False)
            schema.add_field("item_index", DataType.INT64, is_primary=True)
            schema.add_field("item_id", DataType.VARCHAR, max_length=ITEM_ID_MAX_LENGTH)
            schema.add_field("side", DataType.VARCHAR, max_length=SIDE_MAX_LENGTH)
            schema.add_field("vector", DataType.FLOAT_VECTOR, dim=dim)
            # FLAT until create_item_index says otherwise: the collection is searchable (exactly) at once.
            self._create(items, schema, self._vector_index("FLAT", {}))
        else:
            self._check_dim(items, dim)

        interests = self.interests_collection(model_version)
        if not self._has(interests):
            schema = MilvusClient.create_schema(auto_id=False, enable_dynamic_field=False)
            schema.add_field("key", DataType.VARCHAR, is_primary=True, max_length=KEY_MAX_LENGTH)
            schema.add_field("user_id", DataType.VARCHAR, max_length=MAX_USER_ID_LENGTH)
            schema.add_field("slot", DataType.INT32)
            schema.add_field("generation", DataType.INT64)
            schema.add_field("vector", DataType.FLOAT_VECTOR, dim=dim)
            schema.add_field("model_version", DataType.VARCHAR, max_length=64)
            schema.add_field("event_ts_ms", DataType.INT64)
            schema.add_field("updated_at_ms", DataType.INT64)
            # Users are read by key, never searched; Milvus still wants a vector index to load a collection.
            self._create(interests, schema, self._vector_index("FLAT", {}))
        else:
            self._check_dim(interests, dim)
        for name in (items, interests):  # both see deletes: item upserts, interest cleanups
            self._index_lite_keys(name)

        meta = self._get_meta(f"version:{model_version}")
        if meta is None:
            meta = {"dim": dim, "created_at_ms": _now_ms(), "index_type": "FLAT", "index_params": {}, "search_params": {}}
            self._put_meta(f"version:{model_version}", meta)
        self._search_params[model_version] = dict(meta.get("search_params", {}))
        if self._get_meta(CURRENT_KEY) is None:
            self._put_meta(CURRENT_KEY, {"version": model_version, "history": [], "activated_at_ms": _now_ms()})

    def _index_lite_keys(self, name: str) -> None:
        """On Milvus Lite, index the primary keys of the collection's table in the Lite file (idempotent).

        Why: Milvus Lite 2.5.1 keeps a collection's rows in a SQLite table ``"{name}"(id, milvus_id, data)`` of the
        .db file and runs every delete (an upsert's too) as ``DELETE FROM "{name}" WHERE milvus_id IN (...)``
        with no index on ``milvus_id``: a scan of the whole table per call, however few keys (measured at 20k
        users x 3 slots: 17 ms to delete 225 keys, 36 ms for 2,100; the docstring above: 71 ms for one user at
        100k). With the index: 1.3 ms and 5 ms. The running server picks the index up by itself (SQLite
        re-prepares statements after a schema change); dropping the collection drops it. A file of another
        layout (another Lite version) is left as it is, and a failure only costs speed, so it is logged.
        """
        if not self.is_lite:
            return
        import sqlite3

        db = Path(self.uri).expanduser().absolute().resolve()
        try:
            connection = sqlite3.connect(db, timeout=10)
            try:
                columns = [row[1] for row in connection.execute(f'PRAGMA table_info("{name}")')]
                if "milvus_id" in columns:
                    connection.execute(f'CREATE INDEX IF NOT EXISTS "{name}__milvus_id" ON "{name}"(milvus_id)')
                    connection.commit()
            finally:
                connection.close()
        except sqlite3.Error as exc:
            _log.warning("could not index the keys of %s in %s (deletes stay slow): %s", name, db, exc)

    def _ensure_versions_collection(self) -> None:
        if self._versions_ready:
            return
        from pymilvus import DataType, MilvusClient

        name = self.versions_collection
        if not self._has(name):
            schema = MilvusClient.create_schema(auto_id=False, enable_dynamic_field=False)
            schema.add_field("key", DataType.VARCHAR, is_primary=True, max_length=160)
            schema.add_field("name", DataType.VARCHAR, max_length=128)
            schema.add_field("seq", DataType.INT64)
            schema.add_field("value", DataType.VARCHAR, max_length=VERSION_VALUE_MAX_LENGTH)
            schema.add_field("vector", DataType.FLOAT_VECTOR, dim=_DUMMY_DIM)
            self._create(name, schema, self._vector_index("FLAT", {}))
        self._versions_ready = True

    def _vector_index(self, index_type: str, params: Mapping[str, Any]) -> Any:
        index_params = self._client.prepare_index_params()
        index_params.add_index(
            field_name="vector", index_name="vector", index_type=index_type, metric_type="IP", params=dict(params)
        )
        return index_params

    def _create(self, name: str, schema: Any, index_params: Any) -> None:
        self._schemas.pop(name, None)
        self._call(
            "create collection " + name,
            self._client.create_collection,
            name,
            schema=schema,
            index_params=index_params,
            consistency_level="Strong",
        )
        self._call("load " + name, self._client.load_collection, name)

    def _has(self, name: str) -> bool:
        return bool(self._call("look up " + name, self._client.has_collection, name))

    def _check_dim(self, name: str, dim: int) -> None:
        description = self._call("describe " + name, self._client.describe_collection, name)
        for field in description["fields"]:
            if field["name"] == "vector" and int(field["params"]["dim"]) != dim:
                raise StoreError(
                    f"collection {name} has vectors of dimension {field['params']['dim']}, not {dim}; "
                    f"a model with another dimension needs another model version"
                )

    # --- versions ------------------------------------------------------------------------------------

    def current_version(self) -> str:
        """The active model version. Resolve once per request and pass it to every call of that request."""
        if not self._versions_ready and not self._has(self.versions_collection):
            current = None
        else:
            self._versions_ready = True
            current = self._get_meta(CURRENT_KEY)
        if current is None:
            raise StoreError(
                f"no model version is active in the vector store at {self.uri}; run mind-stream index-items ARTIFACT_DIR"
            )
        return str(current["version"])

    def versions(self) -> list[str]:
        """Every model version with collections in this store, oldest first."""
        if not self._has(self.versions_collection):
            return []
        rows = self._call(
            "list versions",
            self._client.query,
            self.versions_collection,
            filter='name like "version:%"',
            output_fields=["name", "seq", "value"],
        )
        latest = _latest_by(rows, "name", "seq")
        metas = {name.split(":", 1)[1]: json.loads(row["value"]) for name, row in latest.items()}
        alive = [(meta["created_at_ms"], version) for version, meta in metas.items() if not meta.get("dropped")]
        return [version for _, version in sorted(alive)]

    def activate_version(self, version: str) -> None:
        """Point readers at `version` (one single-row write: atomic for every reader). Its items must be in."""
        validate_version(version)
        if self._get_meta(f"version:{version}") is None:
            raise StoreError(f"model version {version} has no collections here; run ensure_collections / index-items first")
        if self.count_items(version) == 0:
            raise StoreError(f"model version {version} has no items; run mind-stream index-items on its artifact first")
        current = self._get_meta(CURRENT_KEY)
        history: list[str] = []
        if current is not None:
            if current["version"] == version:
                return
            history = [*current.get("history", []), current["version"]]
        self._put_meta(CURRENT_KEY, {"version": version, "history": history, "activated_at_ms": _now_ms()})

    def rollback(self) -> str:
        """Re-activate the version the current one replaced; returns it. Its collections were kept as they were."""
        current = self._get_meta(CURRENT_KEY)
        if current is None or not current.get("history"):
            raise StoreError("there is no earlier model version to roll back to in this vector store")
        previous = current["history"][-1]
        self._put_meta(
            CURRENT_KEY, {"version": previous, "history": current["history"][:-1], "activated_at_ms": _now_ms()}
        )
        return str(previous)

    def drop_version(self, version: str) -> None:
        """Drop a version's collections (e.g. an old model after a rollout has settled). Not the active one."""
        validate_version(version)
        current = self._get_meta(CURRENT_KEY)
        if current is not None and current["version"] == version:
            raise StoreError(f"model version {version} is active; activate another version before dropping it")
        for name in (self.items_collection(version), self.interests_collection(version)):
            if self._has(name):
                self._call("drop " + name, self._client.drop_collection, name)
            self._schemas.pop(name, None)
        self._put_meta(f"version:{version}", {"dropped": True, "created_at_ms": 0})
        if current is not None and version in current.get("history", []):
            history = [v for v in current["history"] if v != version]
            self._put_meta(CURRENT_KEY, {**current, "history": history})
        self._search_params.pop(version, None)
        with self._cleanup_lock:
            for bookkeeping in (self._live, self._obsolete, self._unknown):
                bookkeeping.pop(version, None)

    # Meta values are append-only: each write inserts a row (name, seq) and a read takes the highest seq.
    # Milvus Lite's upsert is a delete then an insert that a concurrent reader can see between (measured:
    # 20-45 % of reads in a tight loop found nothing), so an upserted pointer could vanish mid-rollout.

    def _get_meta(self, name: str) -> dict[str, Any] | None:
        rows = self._call(
            "read " + name,
            self._client.query,
            self.versions_collection,
            filter=f"name == {json.dumps(name)}",
            output_fields=["seq", "value"],
        )
        if not rows:
            return None
        value = json.loads(max(rows, key=lambda row: row["seq"])["value"])
        return None if value.get("dropped") else value

    def _put_meta(self, name: str, value: Mapping[str, Any]) -> None:
        seq = self._next_sequence()
        row = {
            "key": f"{name}@{seq}",
            "name": name,
            "seq": seq,
            "value": json.dumps(value, sort_keys=True),
            "vector": [0.0] * _DUMMY_DIM,
        }
        self._call("write " + name, self._client.insert, self.versions_collection, [row])

    def _next_sequence(self) -> int:
        """Microseconds since the epoch, strictly increasing within this process (generations and meta rows)."""
        with self._sequence_lock:  # the worker writes from a thread while HTTP recall runs in another
            self._last_sequence = max(time.time_ns() // 1000, self._last_sequence + 1)
            return self._last_sequence

    def _version(self, version: str | None) -> str:
        return validate_version(version) if version is not None else self.current_version()

    # --- items ---------------------------------------------------------------------------------------

    def upsert_items(
        self,
        item_ids: Sequence[str],
        vectors: np.ndarray,
        *,
        model_version: str,
        side: Sequence[Mapping[str, Any]] | None = None,
        first_index: int = 1,
        batch_size: int = 5000,
        progress: bool = True,
    ) -> int:
        """Write items (vectors float32 (N, d)); item j gets item_index `first_index + j`. Returns N.

        `side`: per item a JSON-able mapping of side-feature values. Batched, with a tqdm progress bar.
        """
        from tqdm import tqdm

        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        if vectors.ndim != 2 or vectors.shape[0] != len(item_ids):
            raise ValueError(f"expected vectors (N={len(item_ids)}, d), got {vectors.shape}")
        if side is not None and len(side) != len(item_ids):
            raise ValueError(f"expected {len(item_ids)} side-feature entries, got {len(side)}")
        name = self.items_collection(model_version)
        total = len(item_ids)
        with tqdm(total=total, desc=f"items {model_version}", unit="item", disable=not progress) as bar:
            for start in range(0, total, batch_size):
                stop = min(start + batch_size, total)
                rows = [
                    {
                        "item_index": first_index + j,
                        "item_id": str(item_ids[j]),
                        "side": json.dumps(side[j], ensure_ascii=False) if side is not None else "{}",
                        "vector": vectors[j],
                    }
                    for j in range(start, stop)
                ]
                self._call("write items", self._client.upsert, name, rows)
                bar.update(stop - start)
        return total

    def create_item_index(
        self,
        index_type: str = "FLAT",
        params: Mapping[str, Any] | None = None,
        *,
        model_version: str,
        search_params: Mapping[str, Any] | None = None,
    ) -> None:
        """(Re)build the items vector index of `model_version` and load it.

        FLAT is exact. IVF_FLAT: `params` {"nlist": …} (default ≈ 4·√N), `search_params` {"nprobe": …}
        (default nlist/32, at least 8) — used by every later search of this version. HNSW needs a server.

        On Milvus Lite 2.5 prefer FLAT: Lite keeps every row in growing segments, which it searches through
        its own interim IVF index whatever nlist/nprobe say (measured: recall@50 0.285 on 100k random 64-d
        items for every nlist 32..1264 and nprobe 1..nlist), and FLAT is exact at similar latency.
        """
        index_type = index_type.upper()
        allowed = LITE_INDEX_TYPES if self.is_lite else SERVER_INDEX_TYPES
        if index_type not in allowed:
            where = "Milvus Lite" if self.is_lite else "this store"
            hint = "; use a Milvus server URI (http://host:19530) for HNSW" if index_type == "HNSW" else ""
            raise StoreError(f"index type {index_type} is not supported by {where} (use {', '.join(allowed)}){hint}")
        if self.is_lite and index_type != "FLAT":
            _log.warning(
                "Milvus Lite searches its growing segments with an interim index that ignores %s parameters "
                "(recall@50 was 0.285 on random vectors); FLAT is exact at similar latency", index_type
            )
        name = self.items_collection(model_version)
        params = dict(params or {})
        search = dict(search_params or {})
        if index_type == "IVF_FLAT":
            params.setdefault("nlist", int(np.clip(4 * np.sqrt(max(self.count_items(model_version), 1)), 16, 65536)))
            search.setdefault("nprobe", max(8, params["nlist"] // 32))
        elif index_type == "HNSW":
            params.setdefault("M", 16)
            params.setdefault("efConstruction", 200)
            search.setdefault("ef", 128)
        if self._vector_index_of(name) != (index_type, {k: str(v) for k, v in params.items()}):
            self._call("release " + name, self._client.release_collection, name)
            for index_name in self._call("list indexes", self._client.list_indexes, name):
                self._call("drop index", self._client.drop_index, name, index_name)
            self._call(
                "build index on " + name,
                self._client.create_index,
                name,
                self._vector_index(index_type, params),
                timeout_s=self.build_timeout_s,
            )
        self._call("load " + name, self._client.load_collection, name, timeout_s=self.build_timeout_s)
        key = f"version:{model_version}"
        meta = self._get_meta(key) or {}
        meta.update(index_type=index_type, index_params=params, search_params=search)
        self._put_meta(key, meta)
        self._search_params[model_version] = search

    def _vector_index_of(self, name: str) -> tuple[str, dict[str, str]] | None:
        """(index type, build params as strings) of a collection's vector index, None if it has none."""
        if "vector" not in self._call("list indexes", self._client.list_indexes, name):
            return None
        described = self._call("describe index", self._client.describe_index, name, "vector")
        known = {"index_type", "metric_type", "dim", "field_name", "index_name", "total_rows", "indexed_rows",
                 "pending_index_rows", "state"}  # fmt: skip
        return str(described.get("index_type")), {k: str(v) for k, v in described.items() if k not in known}

    def count_items(self, model_version: str | None = None) -> int:
        name = self.items_collection(self._version(model_version))
        rows = self._call("count items", self._client.query, name, filter="", output_fields=["count(*)"])
        return int(rows[0]["count(*)"])

    def get_items(self, item_indices: Sequence[int], *, model_version: str | None = None) -> list[dict[str, Any]]:
        """Rows (item_index, item_id, side as a dict) of the given item indices, in the order asked; absent ones left out."""
        name = self.items_collection(self._version(model_version))
        rows = self._call(
            "read items", self._client.get, name, ids=[int(i) for i in item_indices], output_fields=["item_id", "side"]
        )
        by_index = {int(r["item_index"]): r for r in rows}
        return [
            {"item_index": i, "item_id": by_index[i]["item_id"], "side": json.loads(by_index[i]["side"])}
            for i in (int(i) for i in item_indices)
            if i in by_index
        ]

    def search_items(
        self,
        vectors: np.ndarray,
        top_n: int,
        *,
        model_version: str | None = None,
        filter: str = "",
        search_params: Mapping[str, Any] | None = None,
    ) -> list[list[ItemHit]]:
        """Top-`top_n` items by inner product for each query; ONE batched search call.

        vectors float32 (Q, d) -> Q lists of ItemHit, best first. `filter` is a Milvus boolean expression
        over the items' scalar fields (e.g. ``'item_index > 10'``), written by code, never by a request.
        """
        version = self._version(model_version)
        queries = np.ascontiguousarray(vectors, dtype=np.float32)
        if queries.ndim != 2:
            raise ValueError(f"expected query vectors (Q, d), got shape {queries.shape}")
        if queries.shape[0] == 0:
            return []
        params = {"metric_type": "IP", "params": dict(search_params or self._search_params_of(version))}
        results = self._call(
            "search items",
            self._client.search,
            self.items_collection(version),
            data=queries,
            limit=int(top_n),
            filter=filter,
            output_fields=["item_id"],
            search_params=params,
        )
        return [
            [ItemHit(int(hit["id"]), str(hit["entity"]["item_id"]), float(hit["distance"])) for hit in hits]
            for hits in results
        ]

    def _search_params_of(self, version: str) -> dict[str, Any]:
        if version not in self._search_params:
            meta = self._get_meta(f"version:{version}") or {}
            self._search_params[version] = dict(meta.get("search_params", {}))
        return self._search_params[version]

    # --- user interests ------------------------------------------------------------------------------

    def write_user_interests(
        self,
        rows: Sequence[Mapping[str, Any]],
        delete_keys: Iterable[str] = (),
        *,
        model_version: str | None = None,
    ) -> None:
        """Replace the stored interests of every user in `rows`, and delete the slots in `delete_keys`.

        Each row: user_id, slot, vector (d,), event_ts_ms, and optionally model_version (must equal the
        target version), updated_at_ms (default now) and key/pk (must equal ``"{user_id}#{slot}"``). The
        target version is `model_version`, else the rows' version, else the active one. A user's rows must
        all be in one call (they become the user's whole set), each (user, slot) once; `delete_keys` are
        ``"{user_id}#{slot}"`` keys, never also written in the same call.

        How: the rows are inserted as a new generation (pk ``"{user_id}#{slot}#{generation}"``) and deleted
        slots are removed; the users' older generations are deleted by a later cleanup (`flush_cleanup`). Readers keep only each user's newest generation, so they see
        the old set or the new set, never a user without vectors — which a Milvus Lite upsert (delete, then
        insert) would show to a concurrent reader. Idempotent: writing the same rows again leaves the same
        content.
        """
        delete_keys = list(delete_keys)
        if not rows and not delete_keys:
            return
        row_versions = {str(r["model_version"]) for r in rows if r.get("model_version") is not None}
        if model_version is None and len(row_versions) == 1:
            model_version = row_versions.pop()
        version = self._version(model_version)
        if row_versions - {version}:
            raise ValueError(f"rows carry model versions {sorted(row_versions)} but are written to version {version}")
        now = _now_ms()
        generation = self._next_sequence()
        keys: set[str] = set()
        # Column-wise (see `_insert_columns`): one list per field, row i of the write at index i of each.
        row_keys, user_ids, slots, vectors, event_ts_ms, updated_at_ms = [], [], [], [], [], []
        for row in rows:
            user_id = validate_user_id(row["user_id"])
            key = interest_key(user_id, row["slot"])
            given = row.get("key", row.get("pk"))
            if given is not None and given != key:
                raise ValueError(f"row key {given!r} does not match user {user_id!r} slot {row['slot']}; expected {key!r}")
            if key in keys:
                raise ValueError(f"interest key {key} appears twice in one write; collapse a user's updates first")
            keys.add(key)
            row_keys.append(f"{key}#{generation}")
            user_ids.append(user_id)
            slots.append(int(row["slot"]))
            vectors.append(row["vector"])
            event_ts_ms.append(int(row["event_ts_ms"]))
            updated_at_ms.append(int(row.get("updated_at_ms") or now))
        both = keys.intersection(delete_keys)
        if both:
            raise ValueError(f"interest keys {sorted(both)[:3]} are both written and deleted in one call")
        written_users = set(user_ids)
        deleted_slots: dict[str, set[int]] = {}
        for key in delete_keys:
            user_id, slot = _split_interest_key(key)
            if user_id not in written_users:  # a written user's older generations all go anyway
                deleted_slots.setdefault(user_id, set()).add(slot)

        name = self.interests_collection(version)
        if row_keys:
            count = len(row_keys)
            columns = {"key": row_keys, "user_id": user_ids, "slot": slots, "generation": [generation] * count,
                       "vector": np.asarray(vectors, dtype=np.float32).reshape(count, -1).tolist(),
                       "model_version": [version] * count, "event_ts_ms": event_ts_ms, "updated_at_ms": updated_at_ms}
            try:
                self._insert_columns("write user interests", name, columns)
            except StoreError:
                # The rows may have landed before the error (a timeout): their keys are this generation's
                # alone, so they are queued for deletion and the users' previous generation stays live.
                with self._cleanup_lock:
                    self._obsolete.setdefault(version, []).extend(row_keys)
                raise
        if deleted_slots:
            clauses = [
                f"(user_id == {json.dumps(user_id)} and slot in {sorted(slots)})"
                for user_id, slots in sorted(deleted_slots.items())
            ]
            self._call("delete user interests", self._client.delete, name, filter=" or ".join(clauses))
        slots_of: dict[str, list[int]] = {}
        for user_id, slot in zip(user_ids, slots, strict=True):
            slots_of.setdefault(user_id, []).append(slot)
        with self._cleanup_lock:
            live = self._live.setdefault(version, {})
            obsolete = self._obsolete.setdefault(version, [])
            unknown = self._unknown.setdefault(version, {})
            for user_id, slots in slots_of.items():
                previous = live.get(user_id)
                live[user_id] = (generation, tuple(slots))
                if previous is None:
                    unknown.setdefault(user_id, generation)
                    self._pending_rows += len(slots)
                else:
                    obsolete.extend(f"{user_id}#{slot}#{previous[0]}" for slot in previous[1])
                    self._pending_rows += len(previous[1])
            for user_id, slots in deleted_slots.items():
                if user_id in live:
                    kept_generation, kept = live[user_id]
                    live[user_id] = (kept_generation, tuple(s for s in kept if s not in slots))
        if (self._pending_rows >= self.cleanup_batch_rows
                or time.monotonic() - self._last_cleanup >= self.cleanup_interval_s):
            self.flush_cleanup()

    def flush_cleanup(self) -> None:
        """Delete the generations that writes replaced since the last cleanup (the writes call it every
        `cleanup_interval_s`; `close` and `count_user_interests` call it too).

        By primary key: this store wrote the replaced generations, so it knows their keys. A user's rows that
        an earlier process wrote are deleted once, by ``user_id in [...] and generation < g`` with g the
        oldest generation this store wrote for them (every later one is at least that). Why keys: a Lite
        delete by filter first evaluates the filter over every row (issue 6: 150 ms p99 per write at 20k
        users, the worker's freshness p99), by key it looks the keys up (see `_index_lite_keys`).

        A failure is logged and retried at the next cleanup: readers only ever use each user's newest
        generation, so a late cleanup costs storage, never correctness."""
        with self._cleanup_lock:
            obsolete, self._obsolete = self._obsolete, {}
            unknown, self._unknown = self._unknown, {}
            self._pending_rows = 0
            self._last_cleanup = time.monotonic()
        for version in sorted(set(obsolete) | set(unknown)):
            name = self.interests_collection(version)
            keys = obsolete.get(version, [])
            for start in range(0, len(keys), DELETE_KEYS_PER_CALL):
                try:
                    self._call("delete replaced user interests", self._client.delete, name,
                               ids=keys[start : start + DELETE_KEYS_PER_CALL])
                except StoreError as exc:
                    _log.warning("%s; retrying at the next cleanup", exc)
                    with self._cleanup_lock:
                        self._obsolete.setdefault(version, []).extend(keys[start:])
                    break
            users = sorted(unknown.get(version, {}).items())
            for start in range(0, len(users), DELETE_USERS_PER_FILTER):
                chunk = dict(users[start : start + DELETE_USERS_PER_FILTER])
                try:
                    self._call("delete user interests written before", self._client.delete, name,
                               filter=f"user_id in {_quoted_list(chunk)} and generation < {min(chunk.values())}")
                except StoreError as exc:
                    _log.warning("%s; retrying at the next cleanup", exc)
                    with self._cleanup_lock:
                        again = self._unknown.setdefault(version, {})
                        for user_id, generation in users[start:]:
                            again[user_id] = min(generation, again.get(user_id, generation))
                    break

    def get_user_interests(
        self, user_ids: str | Sequence[str], *, model_version: str | None = None
    ) -> dict[str, list[StoredInterest]]:
        """Stored interests per user id (the user's newest generation), sorted by slot; no vectors -> []."""
        single = isinstance(user_ids, str)
        wanted = [validate_user_id(u) for u in ([user_ids] if single else user_ids)]
        version = self._version(model_version)
        found: dict[str, list[StoredInterest]] = {u: [] for u in wanted}
        if not wanted:
            return found
        rows: list[Mapping[str, Any]] = []
        distinct = sorted(set(wanted))
        # A query returns at most 16384 rows: ask for a few hundred users (≤ K rows each, x2 mid-write) at a time.
        for start in range(0, len(distinct), READ_USERS_PER_QUERY):
            chunk = distinct[start : start + READ_USERS_PER_QUERY]
            # On Lite `user_id == "u"` took 3.6 ms where `user_id in ["u"]` took 8 ms (400k rows): recall reads one.
            condition = f"user_id == {json.dumps(chunk[0])}" if len(chunk) == 1 else f"user_id in {_quoted_list(chunk)}"
            rows += self._call(
                "read user interests",
                self._client.query,
                self.interests_collection(version),
                filter=condition,
                output_fields=["user_id", "slot", "generation", "vector", "model_version", "event_ts_ms", "updated_at_ms"],
                limit=MAX_QUERY_ROWS,
            )
        # Between a write's insert and its delete, a user has two generations: keep the newest only.
        newest = {user_id: row["generation"] for user_id, row in _latest_by(rows, "user_id", "generation").items()}
        by_slot: dict[tuple[str, int], StoredInterest] = {}
        for row in rows:
            if row["generation"] != newest[row["user_id"]]:
                continue
            by_slot[(row["user_id"], int(row["slot"]))] = StoredInterest(
                user_id=row["user_id"],
                slot=int(row["slot"]),
                vector=np.asarray(row["vector"], dtype=np.float32),
                model_version=row["model_version"],
                event_ts_ms=int(row["event_ts_ms"]),
                updated_at_ms=int(row["updated_at_ms"]),
            )
        for (user_id, _), interest in sorted(by_slot.items()):
            found[user_id].append(interest)
        return found

    def count_user_interests(self, model_version: str | None = None) -> int:
        """Stored interest rows of a version (pending cleanups run first, so older generations are gone)."""
        self.flush_cleanup()
        name = self.interests_collection(self._version(model_version))
        rows = self._call("count user interests", self._client.query, name, filter="", output_fields=["count(*)"])
        return int(rows[0]["count(*)"])

    # --- housekeeping --------------------------------------------------------------------------------

    def drop_all(self) -> None:
        """Drop every collection of this store (its prefix): for tests and `rebuild` into an empty store."""
        names = self._call("list collections", self._client.list_collections)
        ours = [
            n
            for n in names
            if n == self.versions_collection
            or n.startswith(f"{self.prefix}{ITEMS}__")
            or n.startswith(f"{self.prefix}{USER_INTERESTS}__")
        ]
        for name in ours:
            self._call("drop " + name, self._client.drop_collection, name)
        self._search_params.clear()
        self._schemas.clear()
        self._versions_ready = False
        with self._cleanup_lock:
            for bookkeeping in (self._live, self._obsolete, self._unknown):
                bookkeeping.clear()

    def _insert_columns(self, what: str, name: str, columns: Mapping[str, list]) -> None:
        """Insert rows given as one list per field (every field of the collection; vectors as lists of floats).

        Why not `MilvusClient.insert(rows)`: pymilvus packs row dicts field by field in Python, ~17 µs a row
        (cProfile: ~70 % of the worker's inserts). Its column path, the one the ORM's `Collection.insert`
        takes, packs each field in one call: measured for 225 rows x 8 fields (d=64): packing 3.9 -> 0.4 ms,
        the whole insert 7-9 -> 3.9 ms. It needs the collection's schema, described once per collection.
        """
        schema = self._schemas.get(name)
        if schema is None:
            schema = self._schemas[name] = self._call("describe " + name, self._client.describe_collection, name)
        entities = [{"name": field["name"], "type": field["type"], "values": columns[field["name"]]}
                    for field in schema["fields"]]
        # Looked up inside _call: on a dead or closed connection `_get_connection()` itself raises, and that
        # must reach the worker as a StoreError (retry + reconnect), not as a generic failure to dead-letter.
        def batch_insert(*args: Any, **kwargs: Any) -> Any:
            return self._client._get_connection().batch_insert(*args, **kwargs)

        self._call(what, batch_insert, name, entities, schema=schema)

    def _call(self, what: str, method: Any, *args: Any, timeout_s: float | None = None, **kwargs: Any) -> Any:
        """Every Milvus call goes through here: bounded by timeout_s, errors become one-line StoreErrors."""
        from pymilvus.exceptions import MilvusException

        try:
            return method(*args, timeout=timeout_s or self.timeout_s, **kwargs)
        except MilvusException as exc:
            raise StoreError(f"vector store at {self.uri}: {what} failed: {_first_line(exc)}") from exc
        except Exception as exc:
            if type(exc).__module__.startswith(("grpc", "pymilvus")):
                raise StoreError(f"vector store at {self.uri}: {what} failed: {_first_line(exc)}") from exc
            raise


def index_items(
    artifact_dir: str | Path,
    store: VectorStore,
    index_type: str = "FLAT",
    batch_size: int = 5000,
    *,
    index_params: Mapping[str, Any] | None = None,
    search_params: Mapping[str, Any] | None = None,
    progress: bool = True,
) -> str:
    """Fill the `items` collection of the artifact's model version from the artifact, build its index.

    Loads item ids, vectors and side features through `export.runtime`, creates the version's collections
    if needed (the first version in a store becomes active), writes item index 1..N and builds the index.
    Returns the model version. Raises `export.artifact.ArtifactError` for a bad artifact.
    """
    from export.runtime import UserTowerRuntime

    runtime = UserTowerRuntime.load(artifact_dir)
    version = str(runtime.manifest.model_version)
    item_ids = list(runtime.item_ids())
    vectors = np.asarray(runtime.item_vectors(), dtype=np.float32)
    if vectors.shape[0] == len(item_ids) + 1:  # a runtime that keeps the padding row 0
        vectors = vectors[1:]
    side_by_name = runtime.item_side_features() if hasattr(runtime, "item_side_features") else {}
    side = [{name: values[j] for name, values in side_by_name.items()} for j in range(len(item_ids))]
    store.ensure_collections(int(vectors.shape[1]), version)
    store.upsert_items(item_ids, vectors, model_version=version, side=side, batch_size=batch_size, progress=progress)
    store.create_item_index(index_type, index_params, model_version=version, search_params=search_params)
    return version


def _latest_by(rows: Iterable[Mapping[str, Any]], group: str, order: str) -> dict[Any, Mapping[str, Any]]:
    """For each value of `group`, the row with the highest `order`."""
    latest: dict[Any, Mapping[str, Any]] = {}
    for row in rows:
        seen = latest.get(row[group])
        if seen is None or row[order] > seen[order]:
            latest[row[group]] = row
    return latest


def _split_interest_key(key: str) -> tuple[str, int]:
    user_id, _, slot = str(key).rpartition("#")
    if not slot.isdigit():
        raise ValueError(f"interest key {key!r} is not of the form '{{user_id}}#{{slot}}'")
    return validate_user_id(user_id), int(slot)


def _now_ms() -> int:
    return int(time.time() * 1000)


def _refuse_if_locked_elsewhere(uri: str) -> None:
    """StoreError when another process holds the Milvus Lite file's lock, checked WITHOUT starting a server.

    Why not just try: milvus-lite 2.5.1's failed open leaves a `Server` whose `__del__` unlinks the lock file
    the other process holds, so the next try creates a fresh lock file and starts a second server on the
    same .db (found by the reliability tests, issue 7: a worker retrying a locked file got in after 2 tries).
    """
    import fcntl

    from milvus_lite.server_manager import server_manager_instance

    db = Path(uri).expanduser().absolute().resolve()
    if str(db) in getattr(server_manager_instance, "_servers", {}):
        return  # this process owns it (and closing a second fd here would drop its POSIX lock)
    lock = db.parent / f".{db.name}.lock"
    if not lock.exists():
        return
    with open(lock, "a") as handle:
        try:
            fcntl.lockf(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            raise StoreError(
                f"Milvus Lite file {uri} is open in another process (lock {lock} is held); a Lite file is one "
                f"process's at a time: stop that process, or use a Milvus server URI"
            ) from None
        fcntl.lockf(handle, fcntl.LOCK_UN)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
