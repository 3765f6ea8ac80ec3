"""The served merge of a user's K'u per-interest result lists into one top-n (numpy only).

    diversity = 0:  the paper's max-merge, f_score(V_u, e_i) = max_k e_iᵀ v_u^k, best first.
    diversity = λ > 0:  a greedy pick that trades score for coverage of the user's interests (ComiRec's
    controllable aggregation, with the interest that gives an item its f_score as the item's category).

Every candidate item has its f_score s_i and its winning slot w(i) (the lowest slot on equal scores). The
greedy takes n items one at a time, each time the one maximising

    s_i − penalty · c_{w(i)},    penalty = λ · (s_(1) − s_(n)) / n,

where c_k counts the items already taken from slot k and s_(1), s_(n) are the first and n-th scores of the
plain max-merged top-n: λ is relative to the user's own score range, so it means the same for every user (at
λ = 1 an interest that supplied all n items has its next item pushed down by the whole range). Equal values
go to the smaller item index, so the answer is deterministic. At λ = 0 this is the plain max-merge.

Exactness. A list is a true top-m of one interest (every item it leaves out scores at most its last score
t_k) or `complete` (it holds every candidate). The merge equals the same greedy over the whole catalogue when
every list is complete or reaches the floor

    t_k ≤ floor = s_(n) − λ · (s_(1) − s_(n)).

Why: while fewer than n items are taken, some item of the plain top-n is still free, with a value of at least
s_(n) − penalty · (n − 1) > floor; an item scoring at most the floor is worth at most the floor, so it is
never taken, and an item scoring above it is in its winning interest's list with its true score. At λ = 0 the
floor is s_(n), which n-deep lists always reach. Ties with the last listed score are broken by the search.
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
class MergedList:
    """The merged answer in pick order (score order at λ = 0).

    `score` is each item's f_score (the max over interests), `slot` the interest that gave it; `exact` says
    whether the lists were deep enough for the answer to equal the merge over the whole catalogue.
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


def _best_per_item(lists: Sequence[InterestList],
                   slots: Sequence[int]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Distinct items with their max score and winning slot, in max-merge order (score desc, index asc)."""
    items = np.concatenate([np.asarray(lst.item_index, dtype=np.int64) for lst in lists])
    scores = np.concatenate([np.asarray(lst.score, dtype=np.float64) for lst in lists])
    owner = np.concatenate([np.full(len(lst.item_index), slot, dtype=np.int64)
                            for lst, slot in zip(lists, slots, strict=True)])
    order = np.lexsort((owner, -scores, items))             # per item: best score, then lowest slot first
    items, scores, owner = items[order], scores[order], owner[order]
    first = np.ones(len(items), dtype=bool)
    first[1:] = items[1:] != items[:-1]
    items, scores, owner = items[first], scores[first], owner[first]
    ranked = np.lexsort((items, -scores))
    return items[ranked], scores[ranked], owner[ranked]


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
                    slots: Sequence[int] | None = None) -> MergedList:
    """Merge K'u per-interest lists into the top-n (module docstring: the rule and when it is exact).

    Args:
        lists: one InterestList per valid interest (items may repeat across lists).
        n: how many items to return (fewer when the lists hold fewer distinct items).
        diversity: λ >= 0; 0 is the plain max-merge.
        slots: the stored slot of each list (default 0..K'u-1); results name these.
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
    items, scores, owner = _best_per_item(lists, slots)
    cut = min(n, len(items))
    spread = float(scores[0] - scores[cut - 1])
    floor = float(scores[cut - 1]) - diversity * spread
    # fewer candidates than asked is exact only when no list could hold more
    exact = (len(items) >= n or all_complete) and all(
        lst.complete or len(lst.score) == 0 or float(lst.score[-1]) <= floor for lst in lists)
    penalty = diversity * spread / n
    picks = _greedy(items, scores, owner, n, penalty) if penalty > 0 else np.arange(cut)
    return MergedList(items[picks], scores[picks], owner[picks], exact=exact)


# search(depth) -> one InterestList per valid interest, each the top-`depth` of that interest
Search = Callable[[int], Sequence[InterestList]]


def merge_with_search(search: Search, n: int, *, diversity: float = 0.0, slots: Sequence[int] | None = None,
                      depth: int | None = None, max_depth: int = 16384) -> MergedList:
    """Search `depth` items per interest (default n), merge, and double the depth until the merge is exact.

    Stops at `max_depth` (the search engine's top-k ceiling): past it the answer is the greedy over the
    max_depth best items of each interest, with `exact` False.
    """
    depth = min(max(n, depth or n), max_depth)
    while True:
        merged = merge_interests(search(depth), n, diversity=diversity, slots=slots)
        if merged.exact or depth >= max_depth:
            return merged
        depth = min(2 * depth, max_depth)
