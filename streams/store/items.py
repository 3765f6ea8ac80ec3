"""The items collection of each model version: upsert, index, search.

``{prefix}items__{version}``: ``item_index`` int64 pk (1..num_items), ``item_id`` varchar (raw id), ``side``
varchar (JSON of the item's side-feature values and, when the artifact has titles, its ``title``, e.g.
``{"genre": ["Action"], "title": "Heat (1995)"}``), ``vector`` float (d,),
metric IP. Index types: FLAT (exact; the default), IVF_FLAT and AUTOINDEX on Lite, HNSW too on a server.
On Milvus Lite use FLAT: Lite searches its growing segments with an interim index that ignores IVF
parameters (docs/ARCHITECTURE.md, "Decisions").
"""

from __future__ import annotations

import dataclasses
import json
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from streams.store.client import Connection, StoreError
from streams.store.versions import VersionRegistry

if TYPE_CHECKING:
    from streams.store import VectorStore

LITE_INDEX_TYPES = ("FLAT", "IVF_FLAT", "AUTOINDEX")
SERVER_INDEX_TYPES = ("FLAT", "IVF_FLAT", "HNSW", "AUTOINDEX")
# Column widths: room above the event rule (streams.ids.MAX_ITEM_ID_LENGTH) for artifacts' own ids.
ITEM_ID_COLUMN_LENGTH = 512
SIDE_COLUMN_LENGTH = 8192
_INDEX_INFO_KEYS = {"index_type", "metric_type", "dim", "field_name", "index_name", "total_rows",
                    "indexed_rows", "pending_index_rows", "state"}
_log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class ItemHit:
    """One search result: the item, its inner product with the query vector and, when asked, its title."""

    item_index: int
    item_id: str
    score: float
    title: str | None = None


class Items:
    """Item vectors per model version, on one `Connection`; search parameters come from the registry."""

    def __init__(self, connection: Connection, registry: VersionRegistry) -> None:
        self._db = connection
        self._registry = registry

    def ensure_collection(self, version: str, dim: int) -> str:
        """Create `version`'s items collection if absent (FLAT until `create_index` says otherwise)."""
        name = self._db.items_name(version)
        fields = [("item_index", "INT64", {"is_primary": True}),
                  ("item_id", "VARCHAR", {"max_length": ITEM_ID_COLUMN_LENGTH}),
                  ("side", "VARCHAR", {"max_length": SIDE_COLUMN_LENGTH}),
                  ("vector", "FLOAT_VECTOR", {"dim": dim})]
        self._db.ensure_collection(name, fields, dim)
        return name

    def upsert(self, item_ids: Sequence[str], vectors: np.ndarray, *, version: str,
               side: Sequence[Mapping[str, Any]] | None, first_index: int, batch_size: int,
               progress: bool) -> int:
        """Write items (vectors float32 (N, d)); item j gets item_index `first_index + j`. Returns N."""
        from tqdm import tqdm

        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        if vectors.ndim != 2 or vectors.shape[0] != len(item_ids):
            raise ValueError(f"expected vectors (N={len(item_ids)}, d), got {vectors.shape}")
        if side is not None and len(side) != len(item_ids):
            raise ValueError(f"expected {len(item_ids)} side-feature entries, got {len(side)}")
        name = self._db.items_name(version)
        total = len(item_ids)
        with tqdm(total=total, desc=f"items {version}", unit="item", disable=not progress) as bar:
            for start in range(0, total, batch_size):
                stop = min(start + batch_size, total)
                rows = [{"item_index": first_index + j, "item_id": str(item_ids[j]),
                         "side": json.dumps(side[j], ensure_ascii=False) if side is not None else "{}",
                         "vector": vectors[j]} for j in range(start, stop)]
                self._db.call("write items", self._db.client.upsert, name, rows)
                bar.update(stop - start)
        return total

    def create_index(self, index_type: str, params: Mapping[str, Any] | None, *, version: str,
                     search_params: Mapping[str, Any] | None) -> None:
        """(Re)build the vector index of `version`'s items and load it (`VectorStore.create_item_index`)."""
        index_type = index_type.upper()
        allowed = LITE_INDEX_TYPES if self._db.is_lite else SERVER_INDEX_TYPES
        if index_type not in allowed:
            where = "Milvus Lite" if self._db.is_lite else "this store"
            hint = "; use a Milvus server URI (http://host:19530) for HNSW" if index_type == "HNSW" else ""
            raise StoreError(f"index type {index_type} is not supported by {where} "
                             f"(use {', '.join(allowed)}){hint}")
        if self._db.is_lite and index_type != "FLAT":
            _log.warning("Milvus Lite searches its growing segments with an interim index that ignores %s "
                         "parameters (recall@50 was 0.285 on random vectors); FLAT is exact at similar "
                         "latency", index_type)
        name = self._db.items_name(version)
        params = dict(params or {})
        search = dict(search_params or {})
        if index_type == "IVF_FLAT":
            params.setdefault("nlist", int(np.clip(4 * np.sqrt(max(self.count(version), 1)), 16, 65536)))
            search.setdefault("nprobe", max(8, params["nlist"] // 32))
        elif index_type == "HNSW":
            params.setdefault("M", 16)
            params.setdefault("efConstruction", 200)
            search.setdefault("ef", 128)
        call, client, build_s = self._db.call, self._db.client, self._db.build_timeout_s
        if self._vector_index_of(name) != (index_type, {k: str(v) for k, v in params.items()}):
            call("release " + name, client.release_collection, name)
            for index_name in call("list indexes", client.list_indexes, name):
                call("drop index", client.drop_index, name, index_name)
            call("build index on " + name, client.create_index, name,
                 self._db.vector_index(index_type, params), timeout_s=build_s)
        call("load " + name, client.load_collection, name, timeout_s=build_s)
        self._registry.set_index(version, index_type, params, search)

    def _vector_index_of(self, name: str) -> tuple[str, dict[str, str]] | None:
        """(index type, build params as strings) of a collection's vector index, None if it has none."""
        if "vector" not in self._db.call("list indexes", self._db.client.list_indexes, name):
            return None
        described = self._db.call("describe index", self._db.client.describe_index, name, "vector")
        return (str(described.get("index_type")),
                {k: str(v) for k, v in described.items() if k not in _INDEX_INFO_KEYS})

    def count(self, version: str) -> int:
        rows = self._db.call("count items", self._db.client.query, self._db.items_name(version), filter="",
                             output_fields=["count(*)"])
        return int(rows[0]["count(*)"])

    def get(self, item_indices: Sequence[int], *, version: str,
            vectors: bool = False) -> list[dict[str, Any]]:
        """Rows (item_index, item_id, side as a dict[, vector]) in the order asked; absent ones left out."""
        fields = ["item_id", "side"] + (["vector"] if vectors else [])
        rows = self._db.call("read items", self._db.client.get, self._db.items_name(version),
                             ids=[int(i) for i in item_indices], output_fields=fields)
        by_index = {int(r["item_index"]): r for r in rows}
        return [{"item_index": i, "item_id": by_index[i]["item_id"], "side": json.loads(by_index[i]["side"]),
                 **({"vector": np.asarray(by_index[i]["vector"], dtype=np.float32)} if vectors else {})}
                for i in (int(i) for i in item_indices) if i in by_index]

    def search(self, queries: np.ndarray, top_n: int, *, version: str, filter: str,
               search_params: Mapping[str, Any] | None, titles: bool = False) -> list[list[ItemHit]]:
        """Top-`top_n` items per query (float32 (Q, d)), best first; ONE batched search call.

        `titles`: the side data comes back with each hit (cheaper than a second read of the winners)."""
        params = {"metric_type": "IP", "params": dict(search_params or self._registry.search_params(version))}
        fields = ["item_id", "side"] if titles else ["item_id"]
        results = self._db.call("search items", self._db.client.search, self._db.items_name(version),
                                data=queries, limit=int(top_n), filter=filter, output_fields=fields,
                                search_params=params)
        return [[ItemHit(int(hit["id"]), str(hit["entity"]["item_id"]), float(hit["distance"]),
                         json.loads(hit["entity"]["side"]).get("title") if titles else None)
                 for hit in hits] for hits in results]


def index_items(artifact_dir: str | Path, store: VectorStore, index_type: str = "FLAT",
                batch_size: int = 5000, *, index_params: Mapping[str, Any] | None = None,
                search_params: Mapping[str, Any] | None = None, progress: bool = True) -> str:
    """Fill the `items` collection of the artifact's model version from the artifact, build its index.

    Loads item ids, vectors, side features and titles through `export.runtime`, creates the version's
    collections if needed (the first version in a store becomes active), writes item index 1..N and builds
    the index. A title goes into the item's side data as "title" (a side feature of that name wins).
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
    titles = runtime.item_titles() if hasattr(runtime, "item_titles") else None
    for entry, title in zip(side, titles or (), strict=False):
        if title:
            entry.setdefault("title", title)
    store.ensure_collections(int(vectors.shape[1]), version, getattr(runtime.manifest, "merge", None))
    store.upsert_items(item_ids, vectors, model_version=version, side=side, batch_size=batch_size,
                       progress=progress)
    store.create_item_index(index_type, index_params, model_version=version, search_params=search_params)
    return version
