"""What the demo prints about a user's interests: each interest's own top items and share of the merged
list, the merged list labelled by interest, and where a burst's new interest landed (streams/demo.py)."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Any

import numpy as np


def step(title: str) -> None:
    print(f"\n== {title}", flush=True)


@dataclass(frozen=True)
class Catalogue:
    """What the demo says about items, all read from the artifact: titles, genres and item vectors."""

    item_ids: list[str]
    titles: dict[str, str]
    genres: dict[str, list[str]]
    vectors: np.ndarray  # (N, d), row j = item_ids[j]
    has_titles: bool

    @classmethod
    def of(cls, runtime: Any) -> Catalogue:
        """From an `export.runtime.UserTowerRuntime` (titles from `item_titles()`, genres a side feature)."""
        ids = list(runtime.item_ids())
        titles = runtime.item_titles()
        side = runtime.item_side_features()
        genres = side.get("genre") or side.get("class") or [[] for _ in ids]
        return cls(ids, dict(zip(ids, titles or ids, strict=True)),
                   {item: [g for g in values if g != "unknown"]
                    for item, values in zip(ids, genres, strict=True)},
                   np.asarray(runtime.item_vectors(), dtype=np.float32), titles is not None)

    def title(self, item_id: str) -> str:
        return self.titles.get(item_id) or item_id


def interest_shares(answer: dict) -> dict[int, float]:
    """Share of a recall answer's items that each interest (slot) supplied, by slot."""
    slots = Counter(item["slot"] for item in answer["items"] if item["slot"] is not None)
    return {slot: count / len(answer["items"]) for slot, count in sorted(slots.items())}


def shares_text(answer: dict) -> str:
    return ", ".join(f"interest {slot} {share:.0%}" for slot, share in interest_shares(answer).items()) or "-"


def genre_count(vector: list[float], catalogue: Catalogue, genre: str,
                top: int = 20) -> tuple[int, np.ndarray]:
    """(how many of the interest's own top items are of `genre`, those items' rows best first)."""
    best = np.argsort(-(catalogue.vectors @ np.asarray(vector, dtype=np.float32)), kind="stable")[:top]
    return sum(genre in catalogue.genres[catalogue.item_ids[j]] for j in best), best


def show_interests(label: str, answer: dict, wide: dict, catalogue: Catalogue, genre: str) -> None:
    """Each stored interest: its own top items (nearest by inner product), how many of its top 20 are of
    `genre`, and its share of the merged top 50 (`wide`)."""
    step(f"Interests {label}: K'u = {len(answer['interests'])}, history {answer['history_length']}")
    shares = interest_shares(wide)
    for row in sorted(answer["interests"], key=lambda r: r["slot"]):
        in_genre, best = genre_count(row["vector"], catalogue, genre)
        print(f"  interest {row['slot']}: {shares.get(row['slot'], 0.0):4.0%} of the merged top "
              f"{len(wide['items'])}; {in_genre:2d} of its own top 20 are {genre}; its top 5:")
        for j in best[:5]:
            item = catalogue.item_ids[j]
            print(f"      {catalogue.title(item)[:50]:50}  [{' '.join(catalogue.genres[item])[:36]}]")


def show_recall(label: str, answer: dict, catalogue: Catalogue, genre: str) -> None:
    """The merged list, each item labelled with the interest (slot) that gave it its score."""
    step(f"Merged recall {label} (top {len(answer['items'])}, diversity {answer.get('diversity', 0):g}), "
         f"each item with the interest it came from")
    for rank, item in enumerate(answer["items"], start=1):
        item_genres = catalogue.genres.get(item["item_id"], [])
        mark = "*" if genre in item_genres else " "
        title = item.get("title") or catalogue.title(item["item_id"])
        print(f"  {rank:2d}.{mark} {title[:44]:44}  [{' '.join(item_genres)[:30]:30}]  "
              f"score {item['score']:6.3f}  interest {item['slot']}")
    print(f"  (* = {genre}) from: {shares_text(answer)}")


def show_new_interest(before: dict, wide_before: dict, after: dict, wide_after: dict, catalogue: Catalogue,
                      genre: str) -> None:
    """Which interest holds the burst's genre now, and what the other interests keep of the top 50."""
    counts = {row["slot"]: genre_count(row["vector"], catalogue, genre)[0] for row in after["interests"]}
    slot = max(counts, key=lambda s: (counts[s], -s))
    shares = interest_shares(wide_after)
    others = {s: share for s, share in shares.items() if s != slot}
    print(f"  the {genre} interest: interest {slot} ({counts[slot]} of its own top 20 are {genre}) supplies "
          f"{shares.get(slot, 0.0):.0%} of the top 50")
    print(f"  the other interests keep {sum(others.values()):.0%} of the top 50 "
          f"({', '.join(f'interest {s} {v:.0%}' for s, v in others.items()) or 'none'})")
    print(f"  top 50 by interest: before {shares_text(wide_before)}; after {shares_text(wide_after)}")
