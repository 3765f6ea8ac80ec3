"""streams.recall: input validation, and recall over a real Milvus Lite store against a numpy f_score and
against export.merge over the whole catalogue (the merge itself is tested in tests/test_merge.py). ~10 s."""

from __future__ import annotations

import numpy as np
import pytest

from export.merge import InterestList, Mixture, merge_interests
from streams.recall import MAX_N, RecalledItem, recall, validate_n
from streams.store import StoreError, VectorStore
from streams.updater import interest_rows


@pytest.mark.parametrize(("given", "expected"),
                         [(1, 1), ("50", 50), (" 7 ", 7), (MAX_N, MAX_N), (np.int64(3), 3)])
def test_n_in_range_is_accepted(given: object, expected: int) -> None:
    assert validate_n(given) == expected


@pytest.mark.parametrize("bad", [0, -1, MAX_N + 1, "abc", "", "1.5", 2.0, None, True, "-3"])
def test_n_out_of_range_or_not_an_integer_is_rejected(bad: object) -> None:
    with pytest.raises(ValueError, match=f"between 1 and {MAX_N}"):
        validate_n(bad)


# --- recall over Milvus Lite ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory):
    rng = np.random.default_rng(0)
    vector_store = VectorStore(str(tmp_path_factory.mktemp("milvus") / "recall.db"), collection_prefix="r_")
    item_vectors = rng.standard_normal((4000, 16)).astype(np.float32)
    vector_store.ensure_collections(16, "v1")
    vector_store.upsert_items([f"m{j + 1}" for j in range(4000)], item_vectors, model_version="v1",
                              progress=False)
    vector_store.create_item_index("FLAT", model_version="v1")
    vector_store.item_vectors = item_vectors  # for the numpy reference below
    yield vector_store
    vector_store.drop_all()


def numpy_f_score_top_n(items: np.ndarray, user_vectors: np.ndarray, slots: list[int],
                        n: int) -> list[tuple[str, int]]:
    scores = user_vectors @ items.T  # (K'u, N)
    best = scores.max(axis=0)
    order = np.argsort(-best, kind="stable")[:n]
    return [(f"m{j + 1}", slots[int(scores[:, j].argmax())]) for j in order]


def test_recall_equals_a_numpy_f_score_over_the_users_valid_interests(store: VectorStore) -> None:
    rng = np.random.default_rng(1)
    interest_vectors = rng.standard_normal((4, 16)).astype(np.float32)
    valid = np.array([True, True, False, True])
    store.write_user_interests(*interest_rows("u1", interest_vectors, valid, model_version="v1",
                                              event_ts_ms=10))

    result = recall(store, "u1", 60)

    expected = numpy_f_score_top_n(store.item_vectors, interest_vectors[valid], [0, 1, 3], 60)
    assert [(item.item_id, item.slot) for item in result.items] == expected
    assert (result.user_id, result.model_version, result.cold_start,
            result.interests_used) == ("u1", "v1", False, 3)
    scores = [item.score for item in result.items]
    assert scores == sorted(scores, reverse=True)
    assert {item.slot for item in result.items} <= {0, 1, 3}


def test_recall_excluding_items_equals_the_numpy_f_score_top_n_of_the_items_left(store: VectorStore) -> None:
    rng = np.random.default_rng(3)
    interest_vectors = rng.standard_normal((3, 16)).astype(np.float32)
    store.write_user_interests(*interest_rows("ex", interest_vectors, np.ones(3, bool), model_version="v1",
                                              event_ts_ms=10))
    unfiltered = numpy_f_score_top_n(store.item_vectors, interest_vectors, [0, 1, 2], 200)
    # The hardest case for the search depth: the excluded items are exactly the best ones of every interest.
    excluded = {item_id for item_id, _ in unfiltered[:40]} | {"not-an-item"}

    result = recall(store, "ex", 30, exclude=excluded)

    assert [(item.item_id, item.slot) for item in result.items] == unfiltered[40:70]
    assert not excluded & {item.item_id for item in result.items}
    # default: nothing left out
    assert [(i.item_id, i.slot) for i in recall(store, "ex", 30).items] == unfiltered[:30]


@pytest.mark.parametrize("diversity", [0.25, 1.0])
def test_diverse_recall_equals_the_served_merge_over_the_whole_catalogue(store: VectorStore,
                                                                         diversity: float) -> None:
    rng = np.random.default_rng(5)
    interest_vectors = rng.standard_normal((3, 16)).astype(np.float32)
    store.write_user_interests(*interest_rows("dv", interest_vectors, np.ones(3, bool), model_version="v1",
                                              event_ts_ms=10))
    excluded = {"m5", "m77"}
    scores = interest_vectors.astype(np.float64) @ store.item_vectors.T.astype(np.float64)   # (3, 4000)
    keep = np.array([f"m{j + 1}" not in excluded for j in range(scores.shape[1])])
    full = [InterestList(np.flatnonzero(keep)[np.argsort(-row[keep], kind="stable")],
                         np.sort(row[keep])[::-1], complete=True) for row in scores]
    expected = merge_interests(full, n=40, diversity=diversity)

    result = recall(store, "dv", 40, exclude=excluded, diversity=str(diversity))

    assert [(item.item_id, item.slot) for item in result.items] == \
        [(f"m{j + 1}", int(slot)) for j, slot in zip(expected.item_index, expected.slot, strict=True)]
    plain = recall(store, "dv", 40, exclude=excluded)
    assert len({item.slot for item in result.items}) >= len({item.slot for item in plain.items})
    assert [item.item_id for item in result.items] != [item.item_id for item in plain.items]


@pytest.mark.parametrize("diversity", [0.0, 0.5])
def test_a_mixture_version_recalls_the_mixture_top_n_over_the_whole_catalogue(tmp_path,
                                                                             diversity: float) -> None:
    rng = np.random.default_rng(11)
    items = rng.standard_normal((3000, 16)).astype(np.float32)
    mixture_store = VectorStore(str(tmp_path / "mixture.db"), collection_prefix="mx_")
    mixture_store.ensure_collections(16, "v1", {"rule": "mixture", "temperature": 0.5})
    mixture_store.upsert_items([f"m{j + 1}" for j in range(3000)], items, model_version="v1", progress=False)
    mixture_store.create_item_index("FLAT", model_version="v1")
    vectors = rng.standard_normal((4, 16)).astype(np.float32)
    valid = np.array([True, False, True, True])
    bias = np.log(np.array([0.6, 0.0, 0.3, 0.1], dtype=np.float32).clip(1e-9))
    mixture_store.write_user_interests(*interest_rows("mx", vectors, valid, model_version="v1", event_ts_ms=1,
                                                      interest_bias=bias))
    stored = mixture_store.get_user_interests("mx")["mx"]
    assert [i.bias for i in stored] == pytest.approx(bias[valid].tolist())
    excluded = {"m1", "m2", "m3"}
    terms = vectors[valid].astype(np.float64) @ items.T.astype(np.float64) / 0.5 + bias[valid, None]
    scores = 0.5 * np.logaddexp.reduce(terms, axis=0)                   # (3000,), item index = column + 1
    keep = np.array([f"m{j + 1}" not in excluded for j in range(3000)])
    full = [InterestList(np.flatnonzero(keep) + 1, np.full(int(keep.sum()), 0.0), complete=True)]
    users = vectors[valid].astype(np.float64)
    mixture = Mixture(bias[valid], 0.5, lambda index: users @ items[index - 1].T.astype(np.float64))
    expected = merge_interests(full * 3, n=40, diversity=diversity, slots=[0, 2, 3], mixture=mixture)
    if diversity == 0:
        assert expected.item_index.tolist() == (np.argsort(-np.where(keep, scores, -np.inf),
                                                           kind="stable")[:40] + 1).tolist()

    result = recall(mixture_store, "mx", 40, exclude=excluded, diversity=diversity)

    assert [(item.item_id, item.slot) for item in result.items] == \
        [(f"m{j}", int(slot)) for j, slot in zip(expected.item_index, expected.slot, strict=True)]
    np.testing.assert_allclose([item.score for item in result.items], expected.score, rtol=1e-5)
    mixture_store.drop_all()


def test_a_cold_start_answer_leaves_excluded_items_out_too(store: VectorStore) -> None:
    asked = []
    result = recall(store, "newcomer2", 2, exclude={"m1", "m3"},
                    fallback=lambda n: asked.append(n) or ["m1", "m2", "m3", "m4", "m5"])
    assert asked == [4] and [item.item_id for item in result.items] == ["m2", "m4"]


def test_one_interest_recall_is_the_numpy_top_n_of_that_interest(store: VectorStore) -> None:
    vector = np.random.default_rng(2).standard_normal((1, 16)).astype(np.float32)
    store.write_user_interests(*interest_rows("42", vector, np.array([True]), model_version="v1",
                                              event_ts_ms=1))
    result = recall(store, 42, 5)
    best = np.argsort(-(store.item_vectors @ vector[0]), kind="stable")[:5]
    assert [(item.item_id, item.slot) for item in result.items] == [(f"m{j + 1}", 0) for j in best]
    np.testing.assert_allclose([item.score for item in result.items], (store.item_vectors @ vector[0])[best],
                               rtol=1e-5, atol=1e-5)


def test_a_user_without_vectors_gets_the_fallback_as_a_cold_start(store: VectorStore) -> None:
    popular = ["m7", ("m3", 12.0), "m7", "m9"]
    result = recall(store, "newcomer", 2, fallback=popular)
    assert result.cold_start and result.interests_used == 0 and result.model_version == "v1"
    assert result.items == [RecalledItem("m7", 0.0, None), RecalledItem("m3", 12.0, None)]

    asked = []
    called = recall(store, "newcomer", 3, fallback=lambda n: asked.append(n) or ["m1", "m2", "m3", "m4"])
    assert asked == [3] and [item.item_id for item in called.items] == ["m1", "m2", "m3"]
    assert recall(store, "newcomer", 3).items == []


class UntouchableStore:
    """A store any use of which fails the test."""

    def __getattr__(self, name: str) -> None:
        raise AssertionError(f"recall used the store ({name}) before validating its input")


def test_recall_validates_user_and_n_before_touching_the_store() -> None:
    with pytest.raises(ValueError, match="user id"):
        recall(UntouchableStore(), "a#b", 5)
    with pytest.raises(ValueError, match="between 1 and"):
        recall(UntouchableStore(), "u1", 0)
    with pytest.raises(ValueError, match="diversity"):
        recall(UntouchableStore(), "u1", 5, diversity=-1)


def test_recall_on_a_store_without_a_model_says_what_to_run(tmp_path) -> None:
    empty = VectorStore(str(tmp_path / "empty.db"))
    with pytest.raises(StoreError, match="index-items"):
        recall(empty, "u1", 5)


def test_index_items_stores_each_items_title_and_recall_answers_carry_it(tmp_path) -> None:
    from support.artifact import build_tiny_artifact

    from export.runtime import UserTowerRuntime
    from streams.store import index_items

    artifact = build_tiny_artifact(tmp_path / "titled", num_items=40, item_titles=True)
    runtime = UserTowerRuntime.load(artifact)
    titles = dict(zip(runtime.item_ids(), runtime.item_titles(), strict=True))
    with VectorStore(str(tmp_path / "titled.db")) as titled:
        version = index_items(artifact, titled, progress=False)
        side = runtime.item_side_features()
        assert [row["side"] for row in titled.get_items(range(1, 41))] == [
            {**{name: values[j] for name, values in side.items()}, "title": title}
            for j, title in enumerate(runtime.item_titles())]
        vectors = runtime.item_vectors()[[3, 25]]  # two interests that point at two items
        titled.write_user_interests(*interest_rows("fan", vectors, np.ones(2, bool), model_version=version,
                                                   event_ts_ms=1))
        result = recall(titled, "fan", 10, diversity=0.5)
    assert len(result.items) == 10 and all(item.title == titles[item.item_id] for item in result.items)
    assert result.to_dict()["items"][0]["title"] == titles[result.items[0].item_id]
