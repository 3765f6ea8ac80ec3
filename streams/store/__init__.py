"""The vector store: the only package that talks to Milvus. `VectorStore` is its one entry point.

One pair of collections per model version, so a rollout never mixes two embedding spaces, and a pointer
naming the active version (docs/ARCHITECTURE.md):

    store.ensure_collections(dim, "v2")          # new physical pair; the active version is untouched
    index_items(artifact_v2, store)              # fill items__v2
    ... replay the history table with the v2 tower into user_interests__v2 ...
    store.activate_version("v2")                 # one single-row insert: readers switch atomically
    store.rollback()                             # back to v1 (its collections were never touched)

Readers resolve the pointer once per request (`current_version`) and pass that version to every call of
the request, so one recall never searches v1 items with v2 user vectors.

    client.py     the connection: URI, names, every call with its timeout and error translation
    versions.py   the version registry (meta collection, the `current` pointer)
    items.py      items: upsert, index, search; `index_items` from an artifact
    interests.py  user interests: generations, reads, the clean-up of replaced generations
    lite.py       every Milvus Lite / pymilvus workaround
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np

from streams.ids import USER_ID_PATTERN, validate_user_id, validate_version
from streams.store import lite
from streams.store.client import Connection, StoreError, is_lite_uri
from streams.store.interests import (
    READ_USERS_PER_QUERY,
    CleanupQueue,
    Interests,
    StoredInterest,
)
from streams.store.items import ItemHit, Items, index_items
from streams.store.versions import VersionRegistry

__all__ = [
    "READ_USERS_PER_QUERY",
    "USER_ID_PATTERN",
    "ItemHit",
    "StoreError",
    "StoredInterest",
    "VectorStore",
    "index_items",
    "is_lite_uri",
    "validate_user_id",
]


class VectorStore:
    """Items and user interest vectors in Milvus, versioned by model version (see the package docstring).

    `uri`: Milvus Lite file path (default ``./mindstream.db``) or a server URI. `token`: ``"user:password"``
    or an API key for a server. `collection_prefix` lets several stores share one Milvus (tests, tenants).
    `timeout_s` bounds every call, retries included; `build_timeout_s` bounds building and loading an index.
    The older generations that interest writes replace are deleted once `cleanup_batch_rows` of them wait,
    or `cleanup_interval_s` after the last cleanup (0 = within every write), in one call by primary key.
    """

    def __init__(self, uri: str = "./mindstream.db", *, token: str | None = None, collection_prefix: str = "",
                 timeout_s: float = 30.0, build_timeout_s: float = 1800.0, cleanup_interval_s: float = 1.0,
                 cleanup_batch_rows: int = 1024) -> None:
        self._db = Connection(uri, token=token, prefix=collection_prefix, timeout_s=timeout_s,
                              build_timeout_s=build_timeout_s)
        self._registry = VersionRegistry(self._db)
        self._items = Items(self._db, self._registry)
        cleanup = CleanupQueue(batch_rows=cleanup_batch_rows, interval_s=cleanup_interval_s)
        self._interests = Interests(self._db, self._registry, cleanup)

    uri = property(lambda self: self._db.uri)
    is_lite = property(lambda self: self._db.is_lite)
    prefix = property(lambda self: self._db.prefix)
    timeout_s = property(lambda self: self._db.timeout_s)
    build_timeout_s = property(lambda self: self._db.build_timeout_s)

    @property
    def _client(self) -> Any:
        """The pymilvus client (tests read raw rows through it)."""
        return self._db.client

    def close(self) -> None:
        self.flush_cleanup()
        self._db.close()

    def reconnect(self) -> None:
        """Drop the connection and open a new one after a failure (the worker's outage retry); a dead Milvus
        Lite server is replaced. Raises StoreError while the store still cannot be reached."""
        self._db.reopen()

    def __enter__(self) -> VectorStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- names and collections -----------------------------------------------------------------------

    def items_collection(self, version: str) -> str:
        return self._db.items_name(version)

    def interests_collection(self, version: str) -> str:
        return self._db.interests_name(version)

    @property
    def versions_collection(self) -> str:
        return self._db.versions_name

    def ensure_collections(self, dim: int, model_version: str,
                           merge: Mapping[str, Any] | None = None) -> None:
        """Create (if absent) the items and user_interests collections of `model_version`, dimension `dim`,
        and record how recall merges its interests (`merge`, the artifact manifest's; default max).

        Idempotent; a collection that exists with another dimension is an error. The first version ever
        created in this store becomes the active one.
        """
        validate_version(model_version)
        if not isinstance(dim, int) or dim < 1:
            raise ValueError(f"embedding dimension must be a positive int, got {dim!r}")
        self._registry.ensure_collection()
        names = (self._items.ensure_collection(model_version, dim),
                 self._interests.ensure_collection(model_version, dim))
        if self.is_lite:
            for name in names:  # both see deletes: item upserts, interest cleanups
                lite.index_primary_keys(self.uri, name)
        self._registry.register(model_version, dim, merge)

    def merge_rule(self, model_version: str | None = None) -> dict[str, Any]:
        """How recall merges this version's interests: {"rule": "max"} or {"rule": "mixture",
        "temperature": T} (`export.merge`)."""
        return self._registry.merge(self._registry.resolve(model_version))

    def drop_all(self) -> None:
        """Drop every collection of this store (its prefix): for tests and `rebuild` into an empty store."""
        for name in self._db.call("list collections", self._db.client.list_collections):
            if self._db.is_ours(name):
                self._db.drop(name)
        self._db.forget_schemas()
        self._registry.reset()
        self._interests.cleanup.forget()

    # --- versions ------------------------------------------------------------------------------------

    def current_version(self) -> str:
        """The active model version. Resolve once per request and pass it to every call of that request."""
        return self._registry.current()

    def versions(self) -> list[str]:
        """Every model version with collections in this store, oldest first."""
        return self._registry.versions()

    def replaced_versions(self) -> list[str]:
        """The versions the active one replaced, newest last: what `rollback` goes back to."""
        return self._registry.replaced()

    def activate_version(self, version: str) -> None:
        """Point readers at `version` (one single-row write, atomic for every reader); its items must be
        in."""
        self._registry.activate(version, self._items.count)

    def rollback(self) -> str:
        """Re-activate the version the current one replaced (its collections were kept); returns it."""
        return self._registry.rollback()

    def drop_version(self, version: str) -> None:
        """Drop a version's collections (an old model after a rollout has settled); not the active one."""
        self._registry.drop(version)
        self._interests.cleanup.forget(version)

    # --- items ---------------------------------------------------------------------------------------

    def upsert_items(self, item_ids: Sequence[str], vectors: np.ndarray, *, model_version: str,
                     side: Sequence[Mapping[str, Any]] | None = None, first_index: int = 1,
                     batch_size: int = 5000, progress: bool = True) -> int:
        """Write items (vectors float32 (N, d)); item j gets item_index `first_index + j`. Returns N.

        `side`: per item a JSON-able mapping of side-feature values. Batched, with a tqdm progress bar.
        """
        return self._items.upsert(item_ids, vectors, version=model_version, side=side,
                                  first_index=first_index, batch_size=batch_size, progress=progress)

    def create_item_index(self, index_type: str = "FLAT", params: Mapping[str, Any] | None = None, *,
                          model_version: str, search_params: Mapping[str, Any] | None = None) -> None:
        """(Re)build the items vector index of `model_version` and load it.

        FLAT is exact. IVF_FLAT: `params` {"nlist": …} (default ≈ 4·√N), `search_params` {"nprobe": …}
        (default nlist/32, at least 8), used by every later search of this version. HNSW needs a server.
        On Milvus Lite prefer FLAT (see streams/store/items.py).
        """
        self._items.create_index(index_type, params, version=model_version, search_params=search_params)

    def count_items(self, model_version: str | None = None) -> int:
        return self._items.count(self._registry.resolve(model_version))

    def get_items(self, item_indices: Sequence[int], *, model_version: str | None = None,
                  vectors: bool = False) -> list[dict[str, Any]]:
        """Rows (item_index, item_id, side as a dict[, vector float32 (d,)]) of the given item indices, in
        the order asked; absent ones left out."""
        return self._items.get(item_indices, version=self._registry.resolve(model_version), vectors=vectors)

    def search_items(self, vectors: np.ndarray, top_n: int, *, model_version: str | None = None,
                     filter: str = "", search_params: Mapping[str, Any] | None = None,
                     titles: bool = False) -> list[list[ItemHit]]:
        """Top-`top_n` items by inner product for each query; ONE batched search call.

        vectors float32 (Q, d) -> Q lists of ItemHit, best first. `filter` is a Milvus boolean expression
        over the items' scalar fields (e.g. ``'item_index > 10'``), written by code, never by a request.
        `titles`: also read each hit's title from its side data (None where it has none).
        """
        version = self._registry.resolve(model_version)
        queries = np.ascontiguousarray(vectors, dtype=np.float32)
        if queries.ndim != 2:
            raise ValueError(f"expected query vectors (Q, d), got shape {queries.shape}")
        if queries.shape[0] == 0:
            return []
        return self._items.search(queries, top_n, version=version, filter=filter, search_params=search_params,
                                  titles=titles)

    # --- user interests ------------------------------------------------------------------------------

    def write_user_interests(self, rows: Sequence[Mapping[str, Any]], delete_keys: Iterable[str] = (), *,
                             model_version: str | None = None) -> None:
        """Replace the stored interests of every user in `rows`, and delete the slots in `delete_keys`.

        Each row: user_id, slot, vector (d,), event_ts_ms, and optionally model_version (must equal the
        target version), updated_at_ms (default now) and key/pk (must equal ``"{user_id}#{slot}"``). The
        target version is `model_version`, else the rows' version, else the active one. A user's rows must
        all be in one call (they become the user's whole set), each (user, slot) once; `delete_keys` are
        ``"{user_id}#{slot}"`` keys, never also written in the same call. The rows become the users' new
        generation; readers see the old set or the new one. Writing the same rows again leaves the same
        content.
        """
        self._interests.write(rows, delete_keys, model_version=model_version)

    def flush_cleanup(self, full: bool = True) -> None:
        """Delete the generations that writes replaced since the last cleanup (`close` and
        `count_user_interests` call it; writes call it when it is due, unless `cleanup_in_writes` is off).
        `full=False` (the worker, between writes): rows of users an earlier process wrote, which cost a scan,
        wait until many of those users are due at once."""
        self._interests.flush_cleanup(full)

    def cleanup_due(self) -> bool:
        """Enough replaced rows wait, or enough time passed since the last cleanup (see the class doc)."""
        return self._interests.cleanup.due()

    @property
    def cleanup_in_writes(self) -> bool:
        """Whether a write runs the cleanup when it is due (default). The worker turns it off and calls
        `flush_cleanup` between writes, so a fresh write never waits for a delete."""
        return self._interests.cleanup_in_writes

    @cleanup_in_writes.setter
    def cleanup_in_writes(self, value: bool) -> None:
        self._interests.cleanup_in_writes = value

    def get_user_interests(self, user_ids: str | Sequence[str], *,
                           model_version: str | None = None) -> dict[str, list[StoredInterest]]:
        """Stored interests per user id (the user's newest generation), sorted by slot; no vectors -> []."""
        wanted = [validate_user_id(u) for u in ([user_ids] if isinstance(user_ids, str) else user_ids)]
        version = self._registry.resolve(model_version)
        if not wanted:
            return {}
        return self._interests.get(wanted, version=version)

    def count_user_interests(self, model_version: str | None = None) -> int:
        """Stored interest rows of a version (pending cleanups run first, so older generations are gone)."""
        return self._interests.count(self._registry.resolve(model_version))
