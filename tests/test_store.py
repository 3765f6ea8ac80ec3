"""streams.store against a real Milvus Lite file: schemas, idempotent writes, slot deletion, exact search,
index types, and versioned collections with activate / rollback. Budget: ~30 s on a quiet 2-core machine.

One Lite file per module (starting Milvus Lite costs seconds); every test gets its own collection prefix.
"""

from __future__ import annotations

import itertools
import threading

import numpy as np
import pytest

from streams.ids import interest_key
from streams.store import StoreError, VectorStore, validate_user_id
from streams.updater import interest_rows

_prefixes = itertools.count()


@pytest.fixture(scope="module")
def lite_uri(tmp_path_factory: pytest.TempPathFactory) -> str:
    return str(tmp_path_factory.mktemp("milvus") / "store.db")


@pytest.fixture
def store(lite_uri: str):
    vector_store = VectorStore(lite_uri, collection_prefix=f"t{next(_prefixes)}_")
    yield vector_store
    vector_store.drop_all()


def random_unit_vectors(rng: np.random.Generator, count: int, dim: int) -> np.ndarray:
    vectors = rng.standard_normal((count, dim)).astype(np.float32)
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


def numpy_top_n(items: np.ndarray, queries: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-n by inner product: (indices (Q, n) 0-based into items, scores (Q, n)), best first."""
    scores = queries @ items.T
    order = np.argsort(-scores, axis=1, kind="stable")[:, :n]
    return order, np.take_along_axis(scores, order, axis=1)


def fill_items(store: VectorStore, version: str, vectors: np.ndarray, id_prefix: str = "i") -> list[str]:
    item_ids = [f"{id_prefix}{j + 1}" for j in range(len(vectors))]
    store.upsert_items(item_ids, vectors, model_version=version, progress=False)
    return item_ids


def test_items_round_trip_with_side_features(store: VectorStore) -> None:
    rng = np.random.default_rng(0)
    store.ensure_collections(8, "v1")
    vectors = random_unit_vectors(rng, 5, 8)
    side = [{"genres": ["Action", "Comedy"]}, {"genres": []}, {"genres": ["Drama"]}, {}, {"title": "Amélie"}]
    store.upsert_items(["10", "11", "12", "13", "14"], vectors, model_version="v1", side=side, progress=False)

    assert store.count_items("v1") == 5
    assert store.get_items([3, 1, 5, 99], model_version="v1") == [
        {"item_index": 3, "item_id": "12", "side": {"genres": ["Drama"]}},
        {"item_index": 1, "item_id": "10", "side": {"genres": ["Action", "Comedy"]}},
        {"item_index": 5, "item_id": "14", "side": {"title": "Amélie"}},
    ]


def test_first_version_becomes_active_and_ensure_is_idempotent(store: VectorStore) -> None:
    store.ensure_collections(8, "v1")
    store.ensure_collections(8, "v1")
    store.ensure_collections(8, "v2")
    assert store.current_version() == "v1"
    assert store.versions() == ["v1", "v2"]


def test_a_write_is_visible_to_the_next_read(store: VectorStore) -> None:
    rng = np.random.default_rng(1)
    store.ensure_collections(8, "v1")
    vectors = random_unit_vectors(rng, 2, 8)
    rows, deletes = interest_rows("u1", vectors, np.array([True, True]), model_version="v1", event_ts_ms=1234)
    store.write_user_interests(rows, deletes)

    stored = store.get_user_interests("u1")["u1"]
    assert [s.slot for s in stored] == [0, 1]
    np.testing.assert_array_equal(np.stack([s.vector for s in stored]), vectors)
    assert {(s.model_version, s.event_ts_ms) for s in stored} == {("v1", 1234)}


def test_writing_the_same_rows_twice_leaves_the_same_state(store: VectorStore) -> None:
    rng = np.random.default_rng(2)
    store.ensure_collections(8, "v1")
    rows = []
    deletes = []
    for user in ("a", "b", "c"):
        user_rows, user_deletes = interest_rows(
            user, random_unit_vectors(rng, 4, 8), np.array([True, True, True, False]),
            model_version="v1", event_ts_ms=7, updated_at_ms=100,
        )  # fmt: skip
        rows += user_rows
        deletes += user_deletes

    store.write_user_interests(rows, deletes)
    first = store.get_user_interests(["a", "b", "c"])
    store.write_user_interests(rows, deletes)
    second = store.get_user_interests(["a", "b", "c"])

    assert store.count_user_interests() == 9
    for user in ("a", "b", "c"):
        assert [(s.slot, s.event_ts_ms, s.updated_at_ms) for s in second[user]] == [
            (0, 7, 100), (1, 7, 100), (2, 7, 100)]
        np.testing.assert_array_equal(
            np.stack([s.vector for s in first[user]]), np.stack([s.vector for s in second[user]])
        )


def test_slots_that_became_invalid_are_deleted(store: VectorStore) -> None:
    rng = np.random.default_rng(3)
    store.ensure_collections(8, "v1")
    rows, deletes = interest_rows("u", random_unit_vectors(rng, 6, 8), np.ones(6, bool), model_version="v1",
                                  event_ts_ms=1)
    store.write_user_interests(rows, deletes)
    assert [s.slot for s in store.get_user_interests("u")["u"]] == [0, 1, 2, 3, 4, 5]

    # The mask now keeps two of four slots; slots 4 and 5 (a larger K before) are deleted explicitly.
    newer = random_unit_vectors(rng, 4, 8)
    rows, deletes = interest_rows("u", newer, np.array([True, False, True, False]), model_version="v1",
                                  event_ts_ms=2)
    store.write_user_interests(rows, [*deletes, interest_key("u", 4), interest_key("u", 5)])

    stored = store.get_user_interests("u")["u"]
    assert [(s.slot, s.event_ts_ms) for s in stored] == [(0, 2), (2, 2)]
    np.testing.assert_array_equal(np.stack([s.vector for s in stored]), newer[[0, 2]])


def test_one_write_rejects_a_key_twice_or_written_and_deleted(store: VectorStore) -> None:
    store.ensure_collections(4, "v1")
    row = {"user_id": "u", "slot": 0, "vector": np.ones(4, np.float32), "event_ts_ms": 1}
    with pytest.raises(ValueError, match="appears twice"):
        store.write_user_interests([row, dict(row)])
    with pytest.raises(ValueError, match="both written and deleted"):
        store.write_user_interests([row], ["u#0"])
    assert store.count_user_interests() == 0


def test_a_user_without_vectors_reads_as_empty(store: VectorStore) -> None:
    store.ensure_collections(4, "v1")
    assert store.get_user_interests(["nobody", "x"]) == {"nobody": [], "x": []}


def test_flat_search_equals_numpy_brute_force(store: VectorStore) -> None:
    rng = np.random.default_rng(4)
    items = random_unit_vectors(rng, 3000, 16)
    queries = rng.standard_normal((5, 16)).astype(np.float32)
    store.ensure_collections(16, "v1")
    item_ids = fill_items(store, "v1", items)
    store.create_item_index("FLAT", model_version="v1")

    hits = store.search_items(queries, 40)
    expected_order, expected_scores = numpy_top_n(items, queries, 40)

    for q in range(len(queries)):
        assert [h.item_index for h in hits[q]] == list(expected_order[q] + 1)
        assert [h.item_id for h in hits[q]] == [item_ids[j] for j in expected_order[q]]
        np.testing.assert_allclose([h.score for h in hits[q]], expected_scores[q], rtol=1e-5, atol=1e-5)


def test_an_ivf_flat_index_on_lite_still_gives_the_exact_top_n_and_a_filter_applies(
        store: VectorStore) -> None:
    """The IVF_FLAT path (index creation, search params) on Milvus Lite, which ignores nlist / nprobe and
    searches these 2000 rows exhaustively (streams/store/items.py): the answer must be numpy's exact top-n.
    This does not test IVF probing itself, which only a Milvus server does."""
    rng = np.random.default_rng(5)
    items = random_unit_vectors(rng, 2000, 8)
    queries = rng.standard_normal((3, 8)).astype(np.float32)
    store.ensure_collections(8, "v1")
    fill_items(store, "v1", items)
    store.create_item_index("IVF_FLAT", {"nlist": 16}, model_version="v1", search_params={"nprobe": 16})

    hits = store.search_items(queries, 10)
    expected_order, _ = numpy_top_n(items, queries, 10)
    assert [[h.item_index for h in q] for q in hits] == (expected_order + 1).tolist()

    filtered = store.search_items(queries, 10, filter="item_index > 1000")
    assert all(h.item_index > 1000 for q in filtered for h in q)
    assert all(len(q) == 10 for q in filtered)


def test_hnsw_on_milvus_lite_is_refused_with_a_clear_message(store: VectorStore) -> None:
    store.ensure_collections(4, "v1")
    with pytest.raises(StoreError, match="HNSW is not supported by Milvus Lite.*server URI"):
        store.create_item_index("HNSW", model_version="v1")


def test_another_dimension_for_an_existing_version_is_an_error(store: VectorStore) -> None:
    store.ensure_collections(8, "v1")
    with pytest.raises(StoreError, match="dimension 8, not 16"):
        store.ensure_collections(16, "v1")


def test_an_empty_store_says_what_to_run(store: VectorStore) -> None:
    with pytest.raises(StoreError, match="no model version is active.*index-items"):
        store.current_version()


@pytest.mark.parametrize("bad", ["", "a#1", 'x"y', "a b", "ü", "x" * 129, None, 1.5, True])
def test_user_ids_outside_the_format_are_rejected(bad: object) -> None:
    with pytest.raises(ValueError, match="user id"):
        validate_user_id(bad)


def test_integer_user_ids_become_their_decimal_string() -> None:
    assert validate_user_id(42) == "42"
    assert validate_user_id("user-7@site.org") == "user-7@site.org"


def test_a_version_without_items_cannot_be_activated(store: VectorStore) -> None:
    store.ensure_collections(4, "v1")
    store.ensure_collections(4, "v2")
    with pytest.raises(StoreError, match="v2 has no items"):
        store.activate_version("v2")
    with pytest.raises(StoreError, match="no earlier model version"):
        store.rollback()
    assert store.current_version() == "v1"


def test_activate_and_rollback_switch_items_and_interests_together(store: VectorStore) -> None:
    rng = np.random.default_rng(6)
    for version, id_prefix in (("v1", "a"), ("v2", "b")):
        store.ensure_collections(8, version)
        fill_items(store, version, random_unit_vectors(rng, 200, 8), id_prefix)
        rows, deletes = interest_rows(
            "u", random_unit_vectors(rng, 2, 8), np.ones(2, bool), model_version=version, event_ts_ms=1
        )
        store.write_user_interests(rows, deletes)

    assert store.current_version() == "v1"
    store.activate_version("v2")
    assert store.current_version() == "v2"
    assert store.get_user_interests("u")["u"][0].model_version == "v2"
    assert store.search_items(np.ones((1, 8), np.float32), 3)[0][0].item_id.startswith("b")
    assert store.rollback() == "v1"
    assert store.current_version() == "v1"
    assert store.search_items(np.ones((1, 8), np.float32), 3)[0][0].item_id.startswith("a")

    store.drop_version("v2")
    assert store.versions() == ["v1"]
    with pytest.raises(StoreError, match="v1 is active"):
        store.drop_version("v1")


def test_readers_never_see_mixed_versions_while_versions_switch(store: VectorStore) -> None:
    from streams.recall import recall

    rng = np.random.default_rng(7)
    for version, id_prefix in (("v1", "a"), ("v2", "b")):
        store.ensure_collections(8, version)
        fill_items(store, version, random_unit_vectors(rng, 100, 8), id_prefix)
        rows, deletes = interest_rows(
            "u", random_unit_vectors(rng, 3, 8), np.ones(3, bool), model_version=version, event_ts_ms=1
        )
        store.write_user_interests(rows, deletes)

    answers = []
    stop = threading.Event()

    def reader() -> None:
        while not stop.is_set():
            answers.append(recall(store, "u", 10))

    def reader_catching() -> None:
        try:
            reader()
        except Exception as exc:  # surfaced below: an exception in the thread must fail the test
            errors.append(exc)

    errors: list[Exception] = []
    thread = threading.Thread(target=reader_catching)
    thread.start()
    try:
        for _ in range(6):
            store.activate_version("v2")
            store.rollback()
    finally:
        stop.set()
        thread.join(timeout=30)

    assert not errors, f"a reader failed while versions switched: {errors[0]!r}"
    assert answers, "the reader thread never completed a recall"
    for answer in answers:
        assert len(answer.items) == 10 and not answer.cold_start
        expected_prefix = {"v1": "a", "v2": "b"}[answer.model_version]
        assert {item.item_id[0] for item in answer.items} == {expected_prefix}


def test_readers_never_see_a_user_without_vectors_while_the_user_is_rewritten(store: VectorStore) -> None:
    rng = np.random.default_rng(8)
    store.ensure_collections(4, "v1")
    vectors = random_unit_vectors(rng, 3, 4)
    seen_slots: list[list[int]] = []
    errors: list[Exception] = []
    stop = threading.Event()

    def reader() -> None:
        try:
            while not stop.is_set():
                seen_slots.append([s.slot for s in store.get_user_interests("u")["u"]])
        except Exception as exc:
            errors.append(exc)

    store.write_user_interests(interest_rows("u", vectors, np.ones(3, bool), model_version="v1",
                                             event_ts_ms=0)[0])
    thread = threading.Thread(target=reader)
    thread.start()
    try:
        for event_ts_ms in range(1, 16):
            store.write_user_interests(
                *interest_rows("u", vectors, np.ones(3, bool), model_version="v1", event_ts_ms=event_ts_ms)
            )
    finally:
        stop.set()
        thread.join(timeout=30)

    assert not errors, f"a reader failed: {errors[0]!r}"
    assert seen_slots and all(slots == [0, 1, 2] for slots in seen_slots), sorted(set(map(tuple, seen_slots)))
    assert store.count_user_interests() == 3


def test_rows_in_the_updater_format_and_deletes_of_unwritten_users_apply(store: VectorStore) -> None:
    store.ensure_collections(4, "v1")
    rows = [
        {"pk": f"{user}#{slot}", "user_id": user, "slot": slot, "vector": [1.0, 0.0, 0.0, float(slot)],
         "model_version": "v1", "event_ts_ms": 5, "updated_at_ms": 6}
        for user in ("a", "b") for slot in (0, 1)
    ]  # fmt: skip
    store.write_user_interests(rows, ["a#2", "b#3"])
    store.write_user_interests([], ["b#1"])

    stored = store.get_user_interests(["a", "b"])
    slots = {user: [s.slot for s in interests] for user, interests in stored.items()}
    assert slots == {"a": [0, 1], "b": [0]}
    with pytest.raises(ValueError, match="does not match"):
        store.write_user_interests([{**rows[0], "pk": "a#9"}])
    with pytest.raises(ValueError, match="written to version v1"):
        store.write_user_interests([{**rows[0], "model_version": "v2"}], model_version="v1")


def test_reading_more_users_than_one_query_carries_returns_every_user(store: VectorStore) -> None:
    from streams import store as store_module

    store.ensure_collections(4, "v1")
    users = [f"user{u}" for u in range(store_module.READ_USERS_PER_QUERY + 44)]
    rows = [{"user_id": u, "slot": 0, "vector": np.ones(4, np.float32),
             "event_ts_ms": i} for i, u in enumerate(users)]
    store.write_user_interests(rows)

    stored = store.get_user_interests(users)
    assert [(interests[0].user_id, interests[0].event_ts_ms) for interests in stored.values()] == [
        (u, i) for i, u in enumerate(users)
    ]


def test_older_generations_are_cleaned_up_later_and_never_read(lite_uri: str) -> None:
    store = VectorStore(lite_uri, collection_prefix=f"t{next(_prefixes)}_", cleanup_interval_s=3600)
    try:
        store.ensure_collections(4, "v1")
        first, second = np.eye(4, dtype=np.float32)[:2], np.eye(4, dtype=np.float32)[2:]
        store.write_user_interests(interest_rows("u", first, np.ones(2, bool), model_version="v1",
                                                 event_ts_ms=1)[0])
        store.write_user_interests(interest_rows("u", second, np.ones(2, bool), model_version="v1",
                                                 event_ts_ms=2)[0])
        raw = store._client.query(store.interests_collection("v1"), filter='user_id == "u"',
                                  output_fields=["generation"])
        assert len(raw) == 4  # both generations are stored until the cleanup runs

        stored = store.get_user_interests("u")["u"]
        assert [s.event_ts_ms for s in stored] == [2, 2]
        np.testing.assert_array_equal(np.stack([s.vector for s in stored]), second)

        store.flush_cleanup()
        raw = store._client.query(store.interests_collection("v1"), filter='user_id == "u"',
                                  output_fields=["generation"])
        assert len(raw) == 2
    finally:
        store.drop_all()


def test_a_write_cleans_up_once_enough_replaced_rows_wait_and_rows_of_an_earlier_store_go_too(
        lite_uri: str) -> None:
    prefix = f"t{next(_prefixes)}_"
    earlier = VectorStore(lite_uri, collection_prefix=prefix, cleanup_interval_s=3600,
                          cleanup_batch_rows=10**9)
    earlier.ensure_collections(4, "v1")
    vectors = np.eye(4, dtype=np.float32)[:2]
    for event_ts_ms in (1, 2):  # the earlier process leaves two generations of "old" (it never cleaned up)
        earlier.write_user_interests(interest_rows("old", vectors, np.ones(2, bool), model_version="v1",
                                                   event_ts_ms=event_ts_ms)[0])
    store = VectorStore(lite_uri, collection_prefix=prefix, cleanup_interval_s=3600, cleanup_batch_rows=7)
    try:
        def stored_generations(user: str) -> int:
            rows = store._client.query(store.interests_collection("v1"), filter=f'user_id == "{user}"',
                                       output_fields=["generation"])
            return len({row["generation"] for row in rows})

        for event_ts_ms in (3, 4):
            store.write_user_interests(interest_rows("new", vectors, np.ones(2, bool), model_version="v1",
                                                     event_ts_ms=event_ts_ms)[0])
        store.write_user_interests(interest_rows("old", vectors, np.ones(2, bool), model_version="v1",
                                                 event_ts_ms=5)[0])
        # 2 + 2 + 2 rows wait (a user new to this store counts its new rows): below 7
        assert (stored_generations("new"), stored_generations("old")) == (2, 3)
        store.write_user_interests(interest_rows("new", vectors, np.ones(2, bool), model_version="v1",
                                                 event_ts_ms=6)[0])
        # 8 waited: that write cleaned up
        assert (stored_generations("new"), stored_generations("old")) == (1, 1)
        assert [s.event_ts_ms for s in store.get_user_interests("old")["old"]] == [5, 5]
        assert store.count_user_interests() == 4
    finally:
        store.drop_all()


def test_an_interests_collection_from_before_the_bias_field_is_written_and_read_with_bias_0(store) -> None:
    # the schema this store wrote before merge biases were stored: the same fields without "bias"
    old_fields = [("key", "VARCHAR", {"is_primary": True, "max_length": 160}),
                  ("user_id", "VARCHAR", {"max_length": 128}), ("slot", "INT32", {}),
                  ("generation", "INT64", {}),
                  ("vector", "FLOAT_VECTOR", {"dim": 4}), ("model_version", "VARCHAR", {"max_length": 64}),
                  ("event_ts_ms", "INT64", {}), ("updated_at_ms", "INT64", {})]
    store._db.ensure_collection(store.interests_collection("old"), old_fields, 4)  # noqa: SLF001
    store.ensure_collections(4, "old")
    rows, deletes = interest_rows("u", np.eye(4, dtype=np.float32)[:2], np.ones(2, bool), model_version="old",
                                  event_ts_ms=5, interest_bias=np.array([-0.5, -1.0]))
    store.write_user_interests(rows, deletes)
    stored = store.get_user_interests("u", model_version="old")["u"]
    assert [(i.slot, i.bias) for i in stored] == [(0, 0.0), (1, 0.0)]
    assert store.merge_rule("old") == {"rule": "max"}
