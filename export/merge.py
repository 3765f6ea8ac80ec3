"""The served merge of a user's K'u per-interest result lists into one top-n (numpy only).

An item's score s_i is one of two rules (the artifact's manifest `merge`):

    max (the paper):  s_i = f_score(V_u, e_i) = max_k e_iᵀ v_u^k;
    mixture:          s_i = T log Σ_k exp(e_iᵀ v_u^k / T + b_k), with b_k the tower's interest bias
                      (w log π_k, π_k the interest's share of the user's recent routing mass). Every
                      interest's e_iᵀ v_u^k counts, so items found in one list are rescored with every
                      interest (`Mixture.inner_products`).

Under both rules an item's interest w(i) is the slot nearest to it, argmax_k e_iᵀ v_u^k (under max, the
slot that gives the max): what the item is about, whatever weight the user's history gives that interest.

    diversity = 0:  the items by s_i, best first.
    diversity = λ > 0:  a greedy pick that trades score for coverage of the user's interests (ComiRec's
    controllable aggregation, with w(i) as the item's category).

Ties: the lowest slot wins an item on equal terms. The greedy takes n items one at a time, each time the one
maximising

    s_i − penalty · c_{w(i)},    penalty = λ · (s_(1) − s_(n)) / n,

where c_k counts the items already taken from slot k and s_(1), s_(n) are the first and n-th scores of the
plain max-merged top-n: λ is relative to the user's own score range, so it means the same for every user (at
λ = 1 an interest that supplied all n items has its next item pushed down by the whole range). Equal values
go to the smaller item index, so the answer is deterministic. At λ = 0 this is the plain max-merge.

Exactness. A list is a true top-m of one interest (every item it leaves out has e_iᵀ v_u^k ≤ its last score
t_k) or `complete` (it holds every candidate, t_k = −∞). An item in no list therefore scores at most the
bound u = max_k t_k (max) or T log Σ_k exp(t_k / T + b_k) (mixture), and the merge equals the same greedy over
the whole catalogue when

    u ≤ floor = s_(n) − λ · (s_(1) − s_(n)).

Why: while fewer than n items are taken, some item of the plain top-n is still free, with a value of at least
s_(n) − penalty · (n − 1) > floor; an item scoring at most the floor is worth at most the floor, so it is
never taken, and every listed item has its true score (under max an item above the floor is in its winning
interest's list; under mixture listed items are rescored). At λ = 0 under max the floor is s_(n), which
n-deep lists always reach. Ties with the bound are broken by the search.
`merge_interests` reports whether the condition held (`exact`); `merge_with_search` deepens the search until
it does.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence

import numpy as np

__all__ = [
    "InterestList",
    "MergedList",
    "Mixture",
    "merge_interests",
    "merge_with_search",
    "validate_diversity",
]

MAX_DIVERSITY = 100.0


@dataclasses.dataclass(frozen=True)
class InterestList:
    """One interest's search result: item indices and their inner products with the interest, best first.

    `complete` = the list holds every candidate item (the search ran out of items before its limit).
    """

    item_index: np.ndarray   # (m,) int64
    score: np.ndarray        # (m,) float

    complete: bool = False


@dataclasses.dataclass(frozen=True)
class Mixture:
    """The 'mixture' rule for one user: the interests' biases, T, and exact inner products on demand.

    `bias` (K'u,) float is b_k of each list, in list order; `inner_products(items)` maps item indices
    (m,) int64 to (K'u, m) float, e_iᵀ v_u^k of every listed interest (from the item vectors: the
    artifact's, or the vector store's).
    """

    bias: np.ndarray
    temperature: float
    inner_products: Callable[[np.ndarray], np.ndarray]

    def scores(self, inner: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(K'u, m) inner products -> the items' scores (m,) and each item's nearest list (m,)."""
        inner = np.asarray(inner, dtype=np.float64)
        terms = inner / self.temperature + np.asarray(self.bias, dtype=np.float64)[:, None]
        return self.temperature * np.logaddexp.reduce(terms, axis=0), inner.argmax(axis=0)


@dataclasses.dataclass(frozen=True)
class MergedList:
    """The merged answer in pick order (score order at λ = 0).

    `score` is each item's score s_i (the max over interests, or the mixture), `slot` its interest w(i), the
    one nearest to it; `exact` says whether the lists were deep enough for the answer to equal the merge over
    the whole catalogue.
    """

    item_index: np.ndarray   # (n',) int64, n' = min(n, number of distinct candidates)
    score: np.ndarray        # (n',) float64
    slot: np.ndarray         # (n',) int64
    exact: bool


def validate_diversity(diversity: object) -> float:
    """λ as a float in [0, MAX_DIVERSITY]: a number, or a decimal string (as from a query string)."""
    message = f"diversity must be a number between 0 and {MAX_DIVERSITY:g}, got {diversity!r}"
    if isinstance(diversity, bool):
        raise ValueError(message)
    try:
        value = float(diversity.strip()) if isinstance(diversity, str) else float(diversity)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise ValueError(message) from None
    if not (math.isfinite(value) and 0.0 <= value <= MAX_DIVERSITY):
        raise ValueError(message)
    return value


def _best_per_item(lists: Sequence[InterestList], slots: Sequence[int],
                   mixture: Mixture | None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Distinct items with their score and slot (`MergedList.slot`), best first (score desc, index asc)."""
    items = np.concatenate([np.asarray(lst.item_index, dtype=np.int64) for lst in lists])
    scores = np.concatenate([np.asarray(lst.score, dtype=np.float64) for lst in lists])
    owner = np.concatenate([np.full(len(lst.item_index), slot, dtype=np.int64)
                            for lst, slot in zip(lists, slots, strict=True)])
    if mixture is not None:
        items = np.unique(items)
        scores, winner = mixture.scores(mixture.inner_products(items))
        owner = np.asarray(slots, dtype=np.int64)[winner]
    else:
        order = np.lexsort((owner, -scores, items))         # per item: best score, then lowest slot first
        items, scores, owner = items[order], scores[order], owner[order]
        first = np.ones(len(items), dtype=bool)
        first[1:] = items[1:] != items[:-1]
        items, scores, owner = items[first], scores[first], owner[first]
    ranked = np.lexsort((items, -scores))
    return items[ranked], scores[ranked], owner[ranked]


def _unlisted_bound(lists: Sequence[InterestList], mixture: Mixture | None) -> float:
    """The most an item in no list can score (−inf when every list is complete)."""
    last = np.array([-np.inf if lst.complete or len(lst.score) == 0 else float(lst.score[-1])
                     for lst in lists])
    if mixture is None or not np.isfinite(last).any():
        return float(last.max())
    return float(mixture.scores(last[:, None])[0][0])


def _greedy(items: np.ndarray, scores: np.ndarray, owner: np.ndarray, n: int, penalty: float) -> np.ndarray:
    """Positions (into the max-merge-ordered candidates) of the n greedy picks, in pick order."""
    queues = {int(slot): np.flatnonzero(owner == slot) for slot in np.unique(owner)}  # each in merge order
    head = dict.fromkeys(queues, 0)      # per slot: items taken so far = position of its next candidate
    picks: list[int] = []
    while len(picks) < n and queues:
        best_slot, best_key = -1, (math.inf, math.inf)
        for slot, queue in queues.items():
            position = queue[head[slot]]
            key = (-(scores[position] - penalty * head[slot]), int(items[position]))
            if key < best_key:
                best_slot, best_key = slot, key
        picks.append(int(queues[best_slot][head[best_slot]]))
        head[best_slot] += 1
        if head[best_slot] == len(queues[best_slot]):
            del queues[best_slot]
    return np.asarray(picks, dtype=np.int64)


def merge_interests(lists: Sequence[InterestList], n: int, *, diversity: float = 0.0,
                    slots: Sequence[int] | None = None, mixture: Mixture | None = None) -> MergedList:
    """Merge K'u per-interest lists into the top-n (module docstring: the rules and when it is exact).

    Args:
        lists: one InterestList per valid interest (items may repeat across lists).
        n: how many items to return (fewer when the lists hold fewer distinct items).
        diversity: λ >= 0; 0 is the plain ranking by score.
        slots: the stored slot of each list (default 0..K'u-1); results name these.
        mixture: the 'mixture' rule's biases and inner products; None = the paper's max.
    Returns:
        MergedList in pick order, with `exact` = the lists reach the floor (or are complete).
    """
    diversity = validate_diversity(diversity)
    slots = list(range(len(lists))) if slots is None else [int(s) for s in slots]
    if len(slots) != len(lists):
        raise ValueError(f"got {len(lists)} interest lists but {len(slots)} slots")
    if n < 1:
        raise ValueError(f"n must be at least 1, got {n}")
    all_complete = all(lst.complete for lst in lists)
    if not lists or sum(len(lst.item_index) for lst in lists) == 0:
        empty = np.zeros(0, dtype=np.int64)
        return MergedList(empty, np.zeros(0), empty, exact=all_complete)
    if mixture is not None and len(mixture.bias) != len(lists):
        raise ValueError(f"got {len(lists)} interest lists but {len(mixture.bias)} mixture biases")
    items, scores, owner = _best_per_item(lists, slots, mixture)
    cut = min(n, len(items))
    spread = float(scores[0] - scores[cut - 1])
    floor = float(scores[cut - 1]) - diversity * spread
    # fewer candidates than asked is exact only when no list could hold more
    exact = (len(items) >= n or all_complete) and _unlisted_bound(lists, mixture) <= floor
    penalty = diversity * spread / n
    picks = _greedy(items, scores, owner, n, penalty) if penalty > 0 else np.arange(cut)
    return MergedList(items[picks], scores[picks], owner[picks], exact=exact)


# search(depth) -> one InterestList per valid interest, each the top-`depth` of that interest
Search = Callable[[int], Sequence[InterestList]]


def merge_with_search(search: Search, n: int, *, diversity: float = 0.0, slots: Sequence[int] | None = None,
                      depth: int | None = None, max_depth: int = 16384,
                      mixture: Mixture | None = None) -> MergedList:
    """Search `depth` items per interest (default n), merge, and double the depth until the merge is exact.

    Stops at `max_depth` (the search engine's top-k ceiling): past it the answer is the greedy over the
    max_depth best items of each interest, with `exact` False.
    """
    depth = min(max(n, depth or n), max_depth)
    while True:
        merged = merge_interests(search(depth), n, diversity=diversity, slots=slots, mixture=mixture)
        if merged.exact or depth >= max_depth:
            return merged
        depth = min(2 * depth, max_depth)
