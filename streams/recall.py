"""Multi-interest recall over the vector store, by the model version's merge, with an optional diversity term.

    max (the paper):  s_i = f_score(V_u, e_i) = max_k  e_iᵀ v_u^k
    mixture:          s_i = T log Σ_k exp(e_iᵀ v_u^k / T + b_k)   (b_k: the stored interest's bias)

Each of the user's K'u interest vectors searches `items` (one batched search), and the K'u hit lists are
merged by `export.merge` (the one served merge; under mixture the listed items are rescored with every
interest from their stored vectors, one `get`): at diversity 0 the top N by score; at diversity λ > 0 a
greedy pick that trades score for coverage of the user's interests. Every result says which interest (slot)
gave it its score. A user without vectors gets a cold-start answer from a
fallback (e.g. popular items), never an error.

`recall` is the only function here that does I/O (through `streams.store`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Collection, Sequence
from typing import Any

import numpy as np

from export.merge import InterestList, Mixture, merge_with_search, validate_diversity
from streams.ids import validate_user_id
from streams.store import VectorStore

__all__ = [
    "MAX_N",
    "RecallResult",
    "RecalledItem",
    "recall",
    "validate_diversity",
    "validate_n",
    "validate_user_id",
]

MAX_N = 1000
MAX_SEARCH_LIMIT = 16384  # Milvus' top-k ceiling: n + excluded items are searched per interest, at most this

# A fallback gives popular items for a user with no vectors yet: a list, or a callable n -> list. Entries
# are raw item ids, (item_id, score) pairs, or RecalledItem.
Fallback = Sequence[Any] | Callable[[int], Sequence[Any]]


@dataclasses.dataclass(frozen=True)
class RecalledItem:
    """One recalled item: its score s_i (the version's merge) and the slot that gave it, and
    its title when the artifact had titles (`mind-stream index-items` stores them with the item).

    Cold-start items have slot None and the fallback's score (0.0 when it gives none)."""

    item_id: str
    score: float
    slot: int | None
    item_index: int | None = None
    title: str | None = None


@dataclasses.dataclass(frozen=True)
class RecallResult:
    """The answer to one recall request. `interests_used` = number of interest vectors searched;
    `diversity` = the λ of the merge."""

    user_id: str
    items: list[RecalledItem]
    model_version: str
    cold_start: bool
    interests_used: int
    diversity: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form (the HTTP body)."""
        return dataclasses.asdict(self)


def validate_n(n: object) -> int:
    """The number of items to recall: an int (or a decimal string, as from a query string) in 1..MAX_N."""
    if isinstance(n, bool):
        raise ValueError(f"n must be an integer between 1 and {MAX_N}, got {n!r}")
    if isinstance(n, str):
        text = n.strip()
        if not text.isdigit():
            raise ValueError(f"n must be an integer between 1 and {MAX_N}, got {n!r}")
        n = int(text)
    if not isinstance(n, (int, np.integer)) or not 1 <= int(n) <= MAX_N:
        raise ValueError(f"n must be an integer between 1 and {MAX_N}, got {n!r}")
    return int(n)


def recall(
    store: VectorStore,
    user_id: object,
    n: object = 50,
    *,
    fallback: Fallback | None = None,
    model_version: str | None = None,
    exclude: Collection[str] = (),
    diversity: object = 0.0,
) -> RecallResult:
    """Top-n items for a user, from the active model version (resolved once for the request).

    The merge is the version's (`VectorStore.merge_rule`). diversity = 0 (default): by score, best first.
    Under max, searching n items per interest is enough for an exact merged top-n: an item whose max score
    comes from interest k and that is not in k's top-n is beaten by n distinct items. diversity = λ > 0, or
    the mixture: the search deepens (doubling) until no unlisted item can reach the merge's floor, so the
    answer equals the merge over the whole catalogue (up to Milvus' top-k ceiling, MAX_SEARCH_LIMIT).
    `exclude` (item ids, e.g. the user's history) are left out of the answer, still exactly: each interest
    then searches len(exclude) more items, of which the ones not excluded make the list.
    A user with no stored vectors gets `fallback` (cold_start=True), or an empty list without a fallback.
    Raises ValueError for a bad user id, n or diversity, StoreError when the store cannot answer.
    """
    user_id = validate_user_id(user_id)
    n = validate_n(n)
    diversity = validate_diversity(diversity)
    excluded = frozenset(exclude)
    version = model_version or store.current_version()
    interests = store.get_user_interests(user_id, model_version=version)[user_id]
    if not interests:
        return RecallResult(user_id, cold_start_items(fallback, n, excluded), version, cold_start=True,
                            interests_used=0, diversity=diversity)
    vectors = np.stack([interest.vector for interest in interests])  # (K'u, d)
    rule = store.merge_rule(version)
    mixture = None
    if rule["rule"] == "mixture":
        item_vectors: dict[int, np.ndarray] = {}  # a deeper search re-lists the items it already read

        def inner_products(items: np.ndarray) -> np.ndarray:
            unread = [int(i) for i in items if int(i) not in item_vectors]
            if unread:
                rows = store.get_items(unread, model_version=version, vectors=True)
                item_vectors.update((row["item_index"], row["vector"]) for row in rows)
            table = np.stack([item_vectors[int(i)] for i in items]).astype(np.float64)
            return vectors.astype(np.float64) @ table.T

        mixture = Mixture(np.array([interest.bias for interest in interests]), float(rule["temperature"]),
                          inner_products)
    item_ids: dict[int, str] = {}
    titles: dict[int, str | None] = {}

    def search(depth: int) -> list[InterestList]:
        limit = min(depth + len(excluded), MAX_SEARCH_LIMIT)
        lists = []
        for hits in store.search_items(vectors, limit, model_version=version, titles=True):
            kept = [hit for hit in hits if hit.item_id not in excluded]
            item_ids.update((hit.item_index, hit.item_id) for hit in kept)
            titles.update((hit.item_index, hit.title) for hit in kept)
            lists.append(InterestList(np.array([hit.item_index for hit in kept], dtype=np.int64),
                                      np.array([hit.score for hit in kept], dtype=np.float64),
                                      complete=len(hits) < limit))
        return lists

    slots = [interest.slot for interest in interests]
    merged = merge_with_search(search, n, diversity=diversity, slots=slots, max_depth=MAX_SEARCH_LIMIT,
                               mixture=mixture)
    items = [RecalledItem(item_ids[int(index)], float(score), int(slot), int(index), titles.get(int(index)))
             for index, score, slot in zip(merged.item_index, merged.score, merged.slot, strict=True)]
    return RecallResult(user_id, items, version, cold_start=False, interests_used=len(interests),
                        diversity=diversity)


def cold_start_items(fallback: Fallback | None, n: int, exclude: Collection[str] = ()) -> list[RecalledItem]:
    """The fallback's first n entries not in `exclude` as RecalledItems (slot None), duplicates dropped."""
    if fallback is None:
        return []
    entries = fallback(n + len(exclude)) if callable(fallback) else fallback
    items: list[RecalledItem] = []
    seen: set[str] = set(exclude)
    for entry in entries:
        if isinstance(entry, RecalledItem):
            item = dataclasses.replace(entry, slot=None)
        elif isinstance(entry, (tuple, list)):
            item = RecalledItem(str(entry[0]), float(entry[1]), None)
        else:
            item = RecalledItem(str(entry), 0.0, None)
        if item.item_id not in seen:
            seen.add(item.item_id)
            items.append(item)
        if len(items) == n:
            break
    return items
