"""index_items: a real exported artifact (tiny random-weight MIND, real ONNX export) into Milvus Lite.
Budget: ~15 s (the export dominates)."""

from __future__ import annotations

import numpy as np

from export.runtime import UserTowerRuntime
from streams.store import VectorStore, index_items


def test_index_items_writes_every_item_with_its_id_side_features_and_vector(artifact_dir, tmp_path) -> None:
    runtime = UserTowerRuntime.load(artifact_dir)
    store = VectorStore(str(tmp_path / "items.db"))

    version = index_items(artifact_dir, store, "IVF_FLAT", batch_size=16, progress=False)

    assert version == runtime.manifest.model_version == store.current_version()
    assert store.count_items() == 40
    item_ids = runtime.item_ids()
    rows = store.get_items(range(1, 41))
    assert [row["item_id"] for row in rows] == item_ids
    side = runtime.item_side_features()
    assert [row["side"] for row in rows] == [{name: values[j] for name, values in side.items()}
                                             for j in range(40)]
    # Searching with an item's own vector finds the item's exact inner product at the top of an IP search
    # over the artifact's vectors (numpy reference).
    vectors = runtime.item_vectors()
    queries = vectors[[0, 17, 39]]
    hits = store.search_items(queries, 5, search_params={"nprobe": 64})
    expected = np.argsort(-(queries @ vectors.T), axis=1, kind="stable")[:, :5] + 1
    assert [[h.item_index for h in q] for q in hits] == expected.tolist()
    assert [hits[q][0].item_id for q in range(3)] == [item_ids[j - 1] for j in expected[:, 0]]


def test_indexing_the_same_artifact_twice_leaves_the_same_items(artifact_dir, tmp_path) -> None:
    store = VectorStore(str(tmp_path / "twice.db"))
    index_items(artifact_dir, store, progress=False)
    first = store.get_items(range(1, 41))
    index_items(artifact_dir, store, progress=False)
    assert store.count_items() == 40 and store.get_items(range(1, 41)) == first
