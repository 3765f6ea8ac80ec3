"""Multi-interest recall: the paper's f_score over the vector store.

    f_score(V_u, e_i) = max_k  e_iᵀ v_u^k

Each of the user's K'u interest vectors searches `items` (one batched search), the K'u hit lists are merged
by max inner product, deduplicated and cut to the top N; every result says which interest (slot) found it.
A user without vectors gets a cold-start answer from a fallback (e.g. popular items), never an error.

`merge_by_max` is pure; `recall` is the only function here that does I/O (through `streams.store`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Collection, Sequence
from typing import Any

import numpy as np

from streams.ids import validate_user_id
from streams.store import ItemHit, VectorStore

__all__ = [
    "MAX_N",
    "RecallResult",
    "RecalledItem",
    "merge_by_max",
    "recall",
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
    """One recalled item: its best inner product over the user's interests and the slot that gave it.

    Cold-start items have slot None and the fallback's score (0.0 when it gives none)."""

    item_id: str
    score: float
    slot: int | None
    item_index: int | None = None


@dataclasses.dataclass(frozen=True)
class RecallResult:
    """The answer to one recall request. `interests_used` = number of interest vectors searched."""

    user_id: str
    items: list[RecalledItem]
    model_version: str
    cold_start: bool
    interests_used: int

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


def merge_by_max(
    per_interest_hits: Sequence[Sequence[ItemHit]], n: int, slots: Sequence[int] | None = None
) -> list[RecalledItem]:
    """Merge K hit lists into the top-n items by max score over interests.

    per_interest_hits[k] are the hits of interest k (any order); `slots[k]` is that interest's stored slot
    (default k). Each item appears once, with its best score and the slot that gave it. Ties are broken
    deterministically: for one item, the lowest slot wins an equal score; between items, the smaller
    item_index (then item_id) comes first.
    """
    if slots is None:
        slots = list(range(len(per_interest_hits)))
    if len(slots) != len(per_interest_hits):
        raise ValueError(f"got {len(per_interest_hits)} hit lists but {len(slots)} slots")
    best: dict[str, tuple[float, int, ItemHit]] = {}
    for slot, hits in zip(slots, per_interest_hits, strict=True):
        for hit in hits:
            seen = best.get(hit.item_id)
            if seen is None or hit.score > seen[0] or (hit.score == seen[0] and slot < seen[1]):
                best[hit.item_id] = (hit.score, slot, hit)
    ranked = sorted(best.values(), key=lambda entry: (-entry[0], entry[2].item_index, entry[2].item_id))
    return [RecalledItem(hit.item_id, score, slot, hit.item_index) for score, slot, hit in ranked[:n]]


def recall(
    store: VectorStore,
    user_id: object,
    n: object = 50,
    *,
    fallback: Fallback | None = None,
    model_version: str | None = None,
    exclude: Collection[str] = (),
) -> RecallResult:
    """Top-n items for a user by f_score, from the active model version (resolved once for the request).

    Searching n items per interest is enough for an exact merged top-n: an item whose max score comes from
    interest k and that is not in k's top-n is beaten by n distinct items, so it is not in the top-n either.
    `exclude` (item ids, e.g. the user's history) are left out of the answer, still exactly: each interest
    then searches n + len(exclude) items, of which at least n are not excluded.
    A user with no stored vectors gets `fallback` (cold_start=True), or an empty list without a fallback.
    Raises ValueError for a bad user id or n, StoreError when the store cannot answer.
    """
    user_id = validate_user_id(user_id)
    n = validate_n(n)
    excluded = frozenset(exclude)
    version = model_version or store.current_version()
    interests = store.get_user_interests(user_id, model_version=version)[user_id]
    if not interests:
        return RecallResult(user_id, cold_start_items(fallback, n, excluded), version, cold_start=True,
                            interests_used=0)
    vectors = np.stack([interest.vector for interest in interests])  # (K'u, d)
    limit = min(n + len(excluded), MAX_SEARCH_LIMIT)
    per_interest_hits = store.search_items(vectors, limit, model_version=version)
    if excluded:
        per_interest_hits = [[hit for hit in hits if hit.item_id not in excluded] for hits in per_interest_hits]
    items = merge_by_max(per_interest_hits, n, [interest.slot for interest in interests])
    return RecallResult(user_id, items, version, cold_start=False, interests_used=len(interests))


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
