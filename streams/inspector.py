"""The interests inspector's data: what `/ui/users/{user}` shows, built from what the worker already has.

    history entry (table) ──┐
    stored interests ───────┼──► build_user_view ──► JSON: history (newest first, titled), each interest with
    per-interest top items ─┤                          its own top items and its share of the merged list,
    served recall (merged) ─┘                          the merged list with the interest of each item

`inspect_user` is the only function here that does I/O (through `streams.store` and `streams.recall`): it
asks `recall` for exactly what `/recall` serves (same merge, same diversity λ), then reads the same model
version's interest vectors and searches each one alone for its own top items. Everything else is pure.
`RecentUsers` is the worker's small, bounded, in-memory list of users it wrote last (for `/ui`).
"""

from __future__ import annotations

import html
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from export.artifact import Vocabularies
from streams.recall import RecallResult, recall
from streams.store import ItemHit, StoredInterest, VectorStore

__all__ = [
    "ItemCatalogue",
    "RecentUsers",
    "build_user_view",
    "error_page",
    "inspect_user",
]

DEFAULT_MERGED_N = 20
DEFAULT_PER_INTEREST_N = 8
DEFAULT_HISTORY_SHOWN = 50
MAX_RECENT_USERS = 100


class RecentUsers:
    """The users this worker wrote vectors for most recently, newest first, at most `capacity` of them.

    Not shared between workers: each lists the users of its own partitions. Call it from the event loop.
    """

    def __init__(self, capacity: int = MAX_RECENT_USERS) -> None:
        if capacity < 1:
            raise ValueError(f"capacity must be at least 1, got {capacity}")
        self.capacity = capacity
        self._users: OrderedDict[str, dict[str, int]] = OrderedDict()

    def touch(self, user_id: str, at_ms: int) -> None:
        """Record a write of `user_id`'s vectors at `at_ms` (epoch ms); when full, the oldest drops out."""
        entry = self._users.pop(user_id, {"writes": 0})
        self._users[user_id] = {"updated_at_ms": int(at_ms), "writes": entry["writes"] + 1}
        while len(self._users) > self.capacity:
            self._users.popitem(last=False)

    def latest(self, n: int | None = None) -> list[dict[str, Any]]:
        """Up to n users, the most recently written first: `{user_id, updated_at_ms, writes}`."""
        newest = reversed(self._users.items())
        rows = [{"user_id": user_id, **entry} for user_id, entry in newest]
        return rows if n is None else rows[:n]


@dataclass(frozen=True)
class ItemCatalogue:
    """What the artifact says about each raw item id: its title (when the artifact carries titles) and its
    side features (e.g. genres). Items the artifact does not know are shown by their id alone."""

    index_of: Mapping[str, int]
    titles: Sequence[str] | None
    features: Mapping[str, Sequence[Sequence[str]]]  # name -> per item index, the raw values

    @classmethod
    def from_vocabularies(cls, vocab: Vocabularies) -> ItemCatalogue:
        """From an artifact's vocabularies (`item_titles` is None when the training data had no titles)."""
        index_of = {raw: index for index, raw in enumerate(vocab.item_ids) if index > 0}
        features = {name: [[values[v] for v in row if v] for row in vocab.item_feature_matrix[name]]
                    for name, values in vocab.item_features.items() if name in vocab.item_feature_matrix}
        return cls(index_of, vocab.item_titles, features)

    def describe(self, item_id: str) -> dict[str, Any]:
        """`{item_id, title, features}`: title None and features {} for an item the artifact lacks."""
        index = self.index_of.get(item_id)
        if index is None:
            return {"item_id": item_id, "title": None, "features": {}}
        title = self.titles[index] if self.titles is not None and self.titles[index] else None
        features = {name: list(rows[index]) for name, rows in self.features.items() if rows[index]}
        return {"item_id": item_id, "title": title, "features": features}


def build_user_view(
    user_id: str,
    history: Mapping[str, Any] | None,
    interests: Sequence[StoredInterest],
    per_interest_hits: Sequence[Sequence[ItemHit]],
    recalled: RecallResult,
    catalogue: ItemCatalogue,
    *,
    diversity: float,
    history_shown: int = DEFAULT_HISTORY_SHOWN,
) -> dict[str, Any]:
    """The page's JSON for one user.

    Args:
        history: the user's history-table entry (`{"items": [[item_id, ts_ms, event_id], ...]}`, oldest
            first) or None.
        interests: the user's stored interests (K'u of them, any slots), as read with the model version of
            `recalled`.
        per_interest_hits: one hit list per entry of `interests`, that interest's own top items, best first.
        recalled: the served recall for the same user and `diversity`; each item names its slot (the
            interest nearest to it).
        history_shown: the newest this many history entries are listed (the length is always given).
    Returns:
        `{user_id, model_version, diversity, state ("interests" | "no_interests"), history_length, history,
        interests: [{slot, label, norm, bias, event_ts_ms, updated_at_ms, top_items, merged_count, share}],
        merged: [{rank, item_id, title, features, score, slot, label}], cold_start}`. `share` is the
        interest's fraction of the merged list (0 when the list is empty), `bias` its logit in the mixture
        merge (0 under max); slots of the merged list that are not among `interests` (a write landed
        between the two reads) are labelled all the same.
    """
    if len(per_interest_hits) != len(interests):
        raise ValueError(f"got {len(interests)} interests but {len(per_interest_hits)} hit lists")
    entries = list((history or {}).get("items", []))
    shown = [{**catalogue.describe(str(item_id)), "ts_ms": int(ts_ms), "event_id": str(event_id)}
             for item_id, ts_ms, event_id, *_ in reversed(entries[-history_shown:] if history_shown else [])]
    merged = [{"rank": rank, **catalogue.describe(item.item_id), "score": float(item.score),
               "slot": item.slot, "label": interest_label(item.slot)}
              for rank, item in enumerate(recalled.items, start=1)]
    counts: dict[int, int] = {}
    for item in recalled.items:
        if item.slot is not None:
            counts[item.slot] = counts.get(item.slot, 0) + 1
    views = []
    for interest, hits in zip(interests, per_interest_hits, strict=True):
        merged_count = counts.get(interest.slot, 0)
        views.append({
            "slot": interest.slot, "label": interest_label(interest.slot),
            "norm": float(np.linalg.norm(interest.vector)), "bias": float(interest.bias),
            "event_ts_ms": interest.event_ts_ms, "updated_at_ms": interest.updated_at_ms,
            "top_items": [{**catalogue.describe(hit.item_id), "score": float(hit.score)} for hit in hits],
            "merged_count": merged_count, "share": merged_count / len(merged) if merged else 0.0,
        })  # fmt: skip
    return {
        "user_id": user_id,
        "model_version": recalled.model_version,
        "diversity": float(diversity),
        "state": "interests" if interests else "no_interests",
        "history_length": len(entries),
        "history": shown,
        "interests": views,
        "merged": merged,
        "cold_start": recalled.cold_start,
    }


def interest_label(slot: int | None) -> str:
    """How the page names an interest: by its stored slot; a cold-start item has none."""
    return "popular (no interests yet)" if slot is None else f"interest {slot}"


def inspect_user(
    store: VectorStore,
    user_id: str,
    history: Mapping[str, Any] | None,
    catalogue: ItemCatalogue,
    *,
    diversity: float = 0.0,
    n: int = DEFAULT_MERGED_N,
    per_interest_n: int = DEFAULT_PER_INTEREST_N,
    fallback: Sequence[Any] | Callable[[int], Sequence[Any]] | None = None,
) -> dict[str, Any]:
    """Blocking: the page's JSON for a valid user id (`build_user_view`), from the store's active version.

    The merged list is `recall(...)`'s answer, so the page shows what `/recall?diversity=λ` serves; the
    interests are then read for that answer's model version. Raises StoreError when the store cannot answer.
    """
    recalled = recall(store, user_id, n, fallback=fallback, diversity=diversity)
    interests = store.get_user_interests(user_id, model_version=recalled.model_version)[user_id]
    hits: list[list[ItemHit]] = []
    if interests:
        vectors = np.stack([interest.vector for interest in interests])  # (K'u, d)
        hits = store.search_items(vectors, per_interest_n, model_version=recalled.model_version)
    return build_user_view(user_id, history, interests, hits, recalled, catalogue, diversity=diversity)


def error_page(status: int, message: str) -> str:
    """A small self-contained HTML page for an error (a bad user id: 400), the message escaped."""
    text = html.escape(message)
    return (f'<!doctype html><html lang="en"><head><meta charset="utf-8">'
            f'<title>{status} · mindstream inspector</title>'
            f'<link rel="stylesheet" href="/ui/static/inspector.css"></head><body><main class="error">'
            f'<h1>{status}</h1><p id="error">{text}</p><p><a href="/ui">Back to the inspector</a></p>'
            f'</main></body></html>')
