"""Audit findings on the store (issue 16): which version a worker's write lands in, and which of two writes
of a user wins. A real Milvus Lite file and real exported artifacts (onnxruntime)."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest

with warnings.catch_warnings():  # milvus-lite 2.5 imports pkg_resources, which warns on import
    warnings.simplefilter("ignore")
    from streams.store import VectorStore
    from streams.updater import interest_rows
    from streams.worker.service import Resources


@pytest.fixture(scope="module")
def other_runtime(tmp_path_factory: pytest.TempPathFactory):
    """A second model (other weights, same items): the worker's version while another one is active."""
    from support.artifact import build_tiny_artifact

    from export.runtime import UserTowerRuntime

    return UserTowerRuntime.load(build_tiny_artifact(tmp_path_factory.mktemp("v2") / "artifact", seed=7))


@pytest.fixture
def store(tmp_path: Path):
    vector_store = VectorStore(str(tmp_path / "store.db"), cleanup_interval_s=0.0)
    yield vector_store
    vector_store.close()


def test_a_batch_of_cold_users_deletes_from_the_workers_own_version_not_the_active_one(
        store, runtime, other_runtime):
    active, own = runtime.manifest.model_version, other_runtime.manifest.model_version
    dim, k = runtime.manifest.embedding_dim, other_runtime.manifest.num_interests
    store.ensure_collections(dim, active)  # the first version registered is the active one
    store.ensure_collections(dim, own)
    assert store.current_version() == active
    vectors = np.eye(k, dim, dtype=np.float32)
    for version in (active, own):
        rows, deletes = interest_rows("u", vectors, np.ones(k, bool), model_version=version, event_ts_ms=1)
        store.write_user_interests(rows, deletes, model_version=version)
    worker = Resources(other_runtime, store, max_len=other_runtime.manifest.max_history_length)
    # Only items the model does not know: no valid slot in the whole batch, so the write is deletes only.
    cold = {"items": [["never-seen-item", 2, "e1"]], "seen": ["e1"]}
    result = worker.recompute_and_write({"u": cold}, {})
    assert result.rows == [] and len(result.delete_keys) == k
    assert store.get_user_interests("u", model_version=own)["u"] == []
    assert len(store.get_user_interests("u", model_version=active)["u"]) == k  # not this worker's version


def test_of_two_writers_with_skewed_clocks_the_set_of_the_newer_event_wins_and_the_stale_one_is_deleted(
        tmp_path: Path):
    uri, version, dim = str(tmp_path / "skew.db"), "vskew", 4
    ahead = VectorStore(uri, cleanup_interval_s=3600.0)  # no cleanup unless asked
    behind = VectorStore(uri, cleanup_interval_s=3600.0)
    try:
        clock = ahead._db.next_sequence
        ahead._db.next_sequence = lambda: clock() + 3600 * 10**6  # this host's clock runs an hour ahead
        ahead.ensure_collections(dim, version)
        behind.ensure_collections(dim, version)
        old = np.eye(2, dim, dtype=np.float32)
        rows, deletes = interest_rows("u", old, np.ones(2, bool), model_version=version, event_ts_ms=1_000)
        ahead.write_user_interests(rows, deletes, model_version=version)
        # The user's partition moves to a host with a right clock, which applies a newer event.
        new = np.full((2, dim), 0.5, dtype=np.float32)
        rows, deletes = interest_rows("u", new, np.array([True, False]), model_version=version,
                                      event_ts_ms=2_000)
        behind.write_user_interests(rows, deletes, model_version=version)
        for reader in (ahead, behind):
            got = reader.get_user_interests("u", model_version=version)["u"]
            assert [(r.slot, r.event_ts_ms) for r in got] == [(0, 2_000)]
            np.testing.assert_array_equal(got[0].vector, new[0])
        behind.flush_cleanup()  # the older set is deleted although its generation number is higher
        assert behind.count_user_interests(version) == 1
    finally:
        ahead.close()
        behind.close()
