"""export/merge.py: the served merge on hand-checked lists, its exactness against the whole catalogue."""

from __future__ import annotations

import math

import numpy as np
import pytest

from export.merge import InterestList, Mixture, merge_interests, merge_with_search, validate_diversity


def listed(*pairs: tuple[int, float], complete: bool = False) -> InterestList:
    return InterestList(np.array([p[0] for p in pairs], dtype=np.int64), np.array([p[1] for p in pairs]),
                        complete)


# Interest 0 finds items 1..5 and 8, interest 1 (complete) items 6 and 7. Plain top-4: 1, 2, 3, 6, scores
# 10 .. 7.5, so the spread is 2.5 and the penalty per item already taken from a slot is λ * 2.5 / 4.
HAND = [listed((1, 10.0), (2, 9.0), (3, 8.0), (4, 7.0), (5, 6.0), (8, 2.0)),
        listed((6, 7.5), (7, 7.0), complete=True)]


def test_zero_diversity_is_the_max_merge_with_best_score_and_slot_per_item() -> None:
    merged = merge_interests([listed((1, 0.5), (2, 0.4), complete=True),
                              listed((1, 0.9), (3, 0.1), complete=True)], n=10)
    assert merged.item_index.tolist() == [1, 2, 3]
    assert merged.score.tolist() == [0.9, 0.4, 0.1]
    assert merged.slot.tolist() == [1, 0, 1]
    assert merged.exact


def test_max_merge_ties_go_to_the_lowest_slot_then_the_smallest_item_in_any_list_order() -> None:
    lists = [listed((5, 0.5), (2, 0.5)), listed((5, 0.5), (1, 0.5))]
    merged = merge_interests(lists, n=3, slots=[2, 1])
    assert list(zip(merged.item_index.tolist(), merged.slot.tolist(), strict=True)) == [(1, 1), (2, 2),
                                                                                        (5, 1)]
    again = merge_interests(lists[::-1], n=3, slots=[1, 2])
    assert again.item_index.tolist() == [1, 2, 5] and again.slot.tolist() == [1, 2, 1]


def test_fewer_candidates_than_n_is_exact_only_when_every_list_is_complete() -> None:
    assert not merge_interests([listed((1, 0.3))], n=2).exact
    assert merge_interests([listed((1, 0.3), complete=True)], n=2).exact


@pytest.mark.parametrize(("diversity", "items", "slots", "exact"), [
    (0.0, [1, 2, 3, 6], [0, 0, 0, 1], True),      # floor 7.5
    # penalty .625: 1 (10), 2 (9 - .625 > 7.5), 6 (7.5 > 8 - 1.25), 3 (6.75 > 7 - .625); floor 5
    (1.0, [1, 2, 6, 3], [0, 0, 1, 0], True),
    # penalty 1.25: 1, 2 (7.75 > 7.5), 6 (7.5 > 5.5), 7 (7 - 1.25 = 5.75 > 5.5); floor 2.5 and item 8 scores 2
    (2.0, [1, 2, 6, 7], [0, 0, 1, 1], True),
    # penalty 1.875: 1, 6 (7.5 > 9 - 1.875), 2 (7.125 > 7 - 1.875), 7 (5.125 > 8 - 3.75); floor 0: interest
    # 0's list (down to 2) is too short to prove it
    (3.0, [1, 6, 2, 7], [0, 1, 0, 1], False),
])
def test_diversity_penalises_items_from_an_interest_already_represented(diversity, items, slots,
                                                                         exact) -> None:
    merged = merge_interests(HAND, n=4, diversity=diversity)
    assert merged.item_index.tolist() == items
    assert merged.slot.tolist() == slots
    assert merged.exact is exact
    assert merged.score.tolist() == [{1: 10.0, 2: 9.0, 3: 8.0, 6: 7.5, 7: 7.0}[i] for i in items]


def test_equal_penalised_values_go_to_the_smaller_item_whatever_the_list_order() -> None:
    # top-2 spread 1, λ = 1: penalty .5; second pick: item 5 at 2 - .5 = 1.5 ties item 4 at 1.5
    lists = [listed((1, 3.0), (5, 2.0), complete=True), listed((4, 1.5), complete=True)]
    assert merge_interests(lists, n=2, diversity=1.0).item_index.tolist() == [1, 4]
    assert merge_interests(lists[::-1], n=2, diversity=1.0, slots=[1, 0]).item_index.tolist() == [1, 4]


def test_a_slot_list_of_another_length_is_an_error() -> None:
    with pytest.raises(ValueError, match="2 interest lists but 1 slots"):
        merge_interests(HAND, n=1, slots=[0])


def test_no_lists_merge_to_nothing() -> None:
    assert merge_interests([], n=5).item_index.tolist() == []
    assert merge_interests([listed(), listed()], n=5).item_index.tolist() == []


@pytest.mark.parametrize("value", [0, 0.25, "0.5", " 1 ", 100])
def test_diversity_in_range_is_accepted(value: object) -> None:
    assert validate_diversity(value) == float(str(value).strip())


@pytest.mark.parametrize("bad", [-0.1, math.nan, math.inf, "abc", "", None, True, 100.5])
def test_diversity_out_of_range_or_not_a_number_is_rejected(bad: object) -> None:
    with pytest.raises(ValueError, match="diversity must be a number between 0 and 100"):
        validate_diversity(bad)


def truncating_search(lists: list[InterestList], depths: list[int]):
    """A search over full per-interest rankings that returns the top-depth of each, recording depths."""
    def search(depth: int) -> list[InterestList]:
        depths.append(depth)
        return [InterestList(lst.item_index[:depth], lst.score[:depth], complete=len(lst.item_index) <= depth)
                for lst in lists]
    return search


def test_merge_with_search_doubles_the_depth_until_the_floor_is_reached() -> None:
    depths: list[int] = []
    merged = merge_with_search(truncating_search(HAND, depths), n=4, diversity=2.0)
    # depth 4: interest 0 ends at 7 > floor 2.5; depth 8 holds all six of its items (complete)
    assert depths == [4, 8]
    assert merged.item_index.tolist() == [1, 2, 6, 7] and merged.exact


def test_merge_with_search_stops_at_the_ceiling_and_says_it_is_not_exact() -> None:
    depths: list[int] = []
    merged = merge_with_search(truncating_search(HAND, depths), n=4, diversity=2.0, max_depth=4)
    assert depths == [4] and not merged.exact


@pytest.mark.parametrize("diversity", [0.0, 0.25, 0.5, 1.0, 3.0])
def test_the_deepened_merge_equals_the_merge_over_the_whole_catalogue(diversity: float) -> None:
    rng = np.random.default_rng(int(diversity * 100))
    for _ in range(20):
        interests, items = rng.standard_normal((4, 8)), rng.standard_normal((300, 8))
        scores = interests @ items.T                                      # (K, 300); item index = column + 1
        full = [InterestList(np.argsort(-row, kind="stable") + 1, np.sort(row)[::-1], complete=True)
                for row in scores]
        whole = merge_interests(full, n=20, diversity=diversity)
        served = merge_with_search(truncating_search(full, []), n=20, diversity=diversity)
        assert served.exact
        assert served.item_index.tolist() == whole.item_index.tolist()
        assert served.slot.tolist() == whole.slot.tolist()


def mixture_of(interests: np.ndarray, items: np.ndarray, bias: np.ndarray, temperature: float) -> Mixture:
    """The mixture rule over an in-memory item table whose row i - 1 is item index i."""
    return Mixture(bias, temperature, lambda index: interests @ items[index - 1].T)


def test_the_mixture_scores_every_item_with_every_interest_and_names_the_nearest_interest() -> None:
    interests = np.array([[1.0, 0.0], [0.0, 1.0]])
    items = np.array([[2.0, 0.0], [0.0, 1.0], [1.0, 1.1]])               # item indices 1, 2, 3
    # item 3's largest term is interest 1's, and interest 1 is also nearer; item 4 = (1.2, 1.0): the
    # largest term is interest 1's (1.0 / 0.5 + log .75 > 1.2 / 0.5 + log .25), the nearest interest 0
    items = np.vstack([items, [1.2, 1.0]])
    bias = np.log(np.array([0.25, 0.75]))
    # item 1 is listed by interest 0 only, item 2 by interest 1 only: both are rescored with both
    lists = [InterestList(np.array([1, 4, 3]), np.array([2.0, 1.2, 1.0])),
             InterestList(np.array([2]), np.array([1.0]))]
    merged = merge_interests(lists, n=4, mixture=mixture_of(interests, items, bias, 0.5))
    by_hand = {i: 0.5 * math.log(0.25 * math.exp(a / 0.5) + 0.75 * math.exp(b / 0.5))
               for i, (a, b) in {1: (2, 0), 2: (0, 1), 3: (1, 1.1), 4: (1.2, 1.0)}.items()}
    assert merged.item_index.tolist() == sorted(by_hand, key=lambda i: -by_hand[i])
    assert merged.score.tolist() == pytest.approx([by_hand[i] for i in merged.item_index])
    slots = dict(zip(merged.item_index.tolist(), merged.slot.tolist(), strict=True))
    assert slots == {1: 0, 2: 1, 3: 1, 4: 0}
    assert not merged.exact  # unlisted items could score up to the bound of the lists' last scores


@pytest.mark.parametrize("diversity", [0.0, 0.5, 1.0])
def test_the_deepened_mixture_equals_the_mixture_over_the_whole_catalogue(diversity: float) -> None:
    rng = np.random.default_rng(7 + int(diversity * 10))
    for _ in range(20):
        interests, items = rng.standard_normal((3, 8)), rng.standard_normal((300, 8))
        bias = np.log(rng.dirichlet(np.ones(3)))
        mixture = mixture_of(interests, items, bias, 0.3)
        scores = interests @ items.T
        full = [InterestList(np.argsort(-row, kind="stable") + 1, np.sort(row)[::-1], complete=True)
                for row in scores]
        whole = merge_interests(full, n=20, diversity=diversity, mixture=mixture)
        depths: list[int] = []
        served = merge_with_search(truncating_search(full, depths), n=20, diversity=diversity,
                                   mixture=mixture)
        assert served.exact
        assert served.item_index.tolist() == whole.item_index.tolist()
        assert served.slot.tolist() == whole.slot.tolist()
        np.testing.assert_allclose(served.score, whole.score)
