"""The version registry: which model versions have collections, and which one readers use.

``{prefix}mindstream_versions`` is a small append-only key/value collection. Each value (``version:{v}``:
dim, index and search parameters, and how recall merges its interests (the artifact's `merge`);
``current``: the active version and the versions it replaced, newest last) is written as a new row
``(name, seq)`` and a read takes the highest ``seq``, so a reader never sees a value vanish (a Milvus Lite
upsert is a delete then an insert). Switching versions is one row: readers move from one version's pair of
collections to the other's at once. The first version ever registered becomes active by itself.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from streams.ids import validate_version
from streams.store.client import Connection, StoreError, now_ms

CURRENT_KEY = "current"
DEFAULT_MERGE = {"rule": "max"}  # a version registered before merges were recorded was served by max
VALUE_MAX_LENGTH = 8192
_DUMMY_DIM = 2  # Milvus requires a vector field in every collection, even a key/value one.


def latest_by(rows: Iterable[Mapping[str, Any]], group: str,
              order: str | tuple[str, ...]) -> dict[Any, Mapping[str, Any]]:
    """For each value of `group`, the row with the highest `order` (a field, or fields compared in turn)."""
    fields = (order,) if isinstance(order, str) else order
    latest: dict[Any, Mapping[str, Any]] = {}
    for row in rows:
        seen = latest.get(row[group])
        if seen is None or tuple(row[f] for f in fields) > tuple(seen[f] for f in fields):
            latest[row[group]] = row
    return latest


class VersionRegistry:
    """current / activate / rollback / drop over the meta collection of one `Connection`."""

    def __init__(self, connection: Connection) -> None:
        self._db = connection
        self._ready = False
        self._search_params: dict[str, dict[str, Any]] = {}  # version -> search params of its items index
        self._merges: dict[str, dict[str, Any]] = {}  # version -> its merge rule (export.artifact.Manifest)

    def reset(self) -> None:
        """Forget cached state (after the store's collections were dropped)."""
        self._ready = False
        self._search_params.clear()
        self._merges.clear()

    def ensure_collection(self) -> None:
        if self._ready:
            return
        self._db.ensure_collection(self._db.versions_name, [
            ("key", "VARCHAR", {"is_primary": True, "max_length": 160}),
            ("name", "VARCHAR", {"max_length": 128}),
            ("seq", "INT64", {}),
            ("value", "VARCHAR", {"max_length": VALUE_MAX_LENGTH}),
            ("vector", "FLOAT_VECTOR", {"dim": _DUMMY_DIM}),
        ])
        self._ready = True

    def register(self, version: str, dim: int, merge: Mapping[str, Any] | None = None) -> None:
        """Record a version's collections (once) and its merge rule (default the paper's max); the first
        version of the store becomes the active one."""
        meta = self.get(f"version:{version}")
        merge = dict(merge or DEFAULT_MERGE)
        if meta is None:
            meta = {"dim": dim, "created_at_ms": now_ms(), "index_type": "FLAT", "index_params": {},
                    "search_params": {}, "merge": merge}
            self.put(f"version:{version}", meta)
        elif meta.get("merge", DEFAULT_MERGE) != merge:
            meta["merge"] = merge
            self.put(f"version:{version}", meta)
        self._search_params[version] = dict(meta.get("search_params", {}))
        self._merges[version] = merge
        if self.get(CURRENT_KEY) is None:
            self.put(CURRENT_KEY, {"version": version, "history": [], "activated_at_ms": now_ms()})

    def set_index(self, version: str, index_type: str, params: Mapping[str, Any],
                  search_params: Mapping[str, Any]) -> None:
        key = f"version:{version}"
        meta = self.get(key) or {}
        meta.update(index_type=index_type, index_params=dict(params), search_params=dict(search_params))
        self.put(key, meta)
        self._search_params[version] = dict(search_params)

    def merge(self, version: str) -> dict[str, Any]:
        """How recall merges `version`'s interests: {"rule": "max"} or {"rule": "mixture",
        "temperature": T}."""
        if version not in self._merges:
            meta = self.get(f"version:{version}") or {}
            self._merges[version] = dict(meta.get("merge", DEFAULT_MERGE))
        return self._merges[version]

    def search_params(self, version: str) -> dict[str, Any]:
        if version not in self._search_params:
            meta = self.get(f"version:{version}") or {}
            self._search_params[version] = dict(meta.get("search_params", {}))
        return self._search_params[version]

    # --- the pointer -----------------------------------------------------------------------------------

    def current(self) -> str:
        """The active model version. Resolve once per request and pass it to every call of that request."""
        if not self._ready and not self._db.has(self._db.versions_name):
            pointer = None
        else:
            self._ready = True
            pointer = self.get(CURRENT_KEY)
        if pointer is None:
            raise StoreError(f"no model version is active in the vector store at {self._db.uri}; "
                             f"run mind-stream index-items ARTIFACT_DIR")
        return str(pointer["version"])

    def resolve(self, version: str | None) -> str:
        """`version` validated, or the active one when None."""
        return validate_version(version) if version is not None else self.current()

    def replaced(self) -> list[str]:
        """The versions the active one replaced, newest last ([] without a pointer)."""
        pointer = self.get(CURRENT_KEY) or {}
        return list(pointer.get("history", []))

    def versions(self) -> list[str]:
        """Every model version with collections in this store, oldest first."""
        if not self._db.has(self._db.versions_name):
            return []
        rows = self._db.call("list versions", self._db.client.query, self._db.versions_name,
                             filter='name like "version:%"', output_fields=["name", "seq", "value"])
        metas = {name.split(":", 1)[1]: json.loads(row["value"])
                 for name, row in latest_by(rows, "name", "seq").items()}
        alive = sorted((meta["created_at_ms"], version) for version, meta in metas.items()
                       if not meta.get("dropped"))
        return [version for _, version in alive]

    def activate(self, version: str, count_items: Callable[[str], int]) -> None:
        """Point readers at `version` (one single-row write, atomic for every reader); its items must be
        in."""
        validate_version(version)
        if self.get(f"version:{version}") is None:
            raise StoreError(f"model version {version} has no collections here; "
                             f"run ensure_collections / index-items first")
        if count_items(version) == 0:
            raise StoreError(f"model version {version} has no items; "
                             f"run mind-stream index-items on its artifact first")
        pointer = self.get(CURRENT_KEY)
        history: list[str] = []
        if pointer is not None:
            if pointer["version"] == version:
                return
            history = [*pointer.get("history", []), pointer["version"]]
        self.put(CURRENT_KEY, {"version": version, "history": history, "activated_at_ms": now_ms()})

    def rollback(self) -> str:
        """Re-activate the version the current one replaced; returns it."""
        pointer = self.get(CURRENT_KEY)
        if pointer is None or not pointer.get("history"):
            raise StoreError("there is no earlier model version to roll back to in this vector store")
        previous = pointer["history"][-1]
        self.put(CURRENT_KEY, {"version": previous, "history": pointer["history"][:-1],
                               "activated_at_ms": now_ms()})
        return str(previous)

    def drop(self, version: str) -> None:
        """Mark a version dropped and take it out of the pointer's history. Not the active one."""
        validate_version(version)
        pointer = self.get(CURRENT_KEY)
        if pointer is not None and pointer["version"] == version:
            raise StoreError(f"model version {version} is active; "
                             f"activate another version before dropping it")
        for name in (self._db.items_name(version), self._db.interests_name(version)):
            if self._db.has(name):
                self._db.drop(name)
        self.put(f"version:{version}", {"dropped": True, "created_at_ms": 0})
        if pointer is not None and version in pointer.get("history", []):
            self.put(CURRENT_KEY, {**pointer, "history": [v for v in pointer["history"] if v != version]})
        self._search_params.pop(version, None)

    # --- rows --------------------------------------------------------------------------------------------

    def get(self, name: str) -> dict[str, Any] | None:
        rows = self._db.call("read " + name, self._db.client.query, self._db.versions_name,
                             filter=f"name == {json.dumps(name)}", output_fields=["seq", "value"])
        if not rows:
            return None
        value = json.loads(max(rows, key=lambda row: row["seq"])["value"])
        return None if value.get("dropped") else value

    def put(self, name: str, value: Mapping[str, Any]) -> None:
        seq = self._db.next_sequence()
        row = {"key": f"{name}@{seq}", "name": name, "seq": seq, "value": json.dumps(value, sort_keys=True),
               "vector": [0.0] * _DUMMY_DIM}
        self._db.call("write " + name, self._db.client.insert, self._db.versions_name, [row])
