"""Is a multi-interest user really multi? Diagnostics over interest vectors, in plain numpy.

Inputs are what a user tower returns and what serving searches:

- interest_vectors (B, K, d) float, valid_interest_mask (B, K) bool (the first K'u slots of each row valid);
- item_vectors (I, d) float, the item table with row 0 the padding item (as `all_item_embeddings()`):
  row 0 is never recommended;
- histories: B int arrays of item indices a user has seen, never recommended (as model/evaluate.py does).

Per user (arrays of shape (B,)):

- `mean_pairwise_cosine`: mean cosine over the pairs of a user's valid interests (NaN when K'u < 2);
- `merged_top_n`: recall's merge (the paper's max-merge f_score = max_k e_iᵀ v_k, or the interests' mixture)
  with each item's interest, the one nearest to it;
  `contribution`: how many interests supply the merged top-n and the dominant interest's share of it;
- `norm_ratio`: largest / smallest valid interest norm;
- `stability`: interests before and after one new event: the same-slot cosine, the cosine of the best
  one-to-one matching of slots, and the share of the merged top-n that survives.

`summarize` averages per-user values over all users and separately per K'u (the issue's targets are for
users with K'u = 4).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

__all__ = [
    "best_matching_cosine",
    "contribution",
    "interest_diagnostics",
    "mean_pairwise_cosine",
    "merged_top_n",
    "norm_ratio",
    "planted_recovery",
    "same_slot_cosine",
    "stability",
    "summarize",
    "top_n_survival",
]


def _unit(vectors: np.ndarray) -> np.ndarray:
    """Rows scaled to unit norm; zero rows stay zero (their cosine with anything is 0)."""
    norms = np.linalg.norm(vectors, axis=-1, keepdims=True)
    return np.divide(vectors, norms, out=np.zeros_like(vectors, dtype=np.float64), where=norms > 0)


def mean_pairwise_cosine(interest_vectors: np.ndarray, valid_interest_mask: np.ndarray) -> np.ndarray:
    """Mean cosine similarity over the unordered pairs of each user's valid interests.

    Args:
        interest_vectors: (B, K, d) float.
        valid_interest_mask: (B, K) bool.
    Returns:
        (B,) float64; NaN for a user with fewer than 2 valid interests.
    """
    unit = _unit(np.asarray(interest_vectors, dtype=np.float64))
    mask = np.asarray(valid_interest_mask, dtype=bool)
    cosine = np.einsum("bkd,bjd->bkj", unit, unit)                       # (B, K, K)
    pair = mask[:, :, None] & mask[:, None, :] & np.triu(np.ones(mask.shape[1:] * 2, dtype=bool), k=1)
    pairs = pair.sum(axis=(1, 2))
    total = np.where(pair, cosine, 0.0).sum(axis=(1, 2))
    return np.divide(total, pairs, out=np.full(len(mask), np.nan), where=pairs > 0)


def merged_top_n(interest_vectors: np.ndarray, valid_interest_mask: np.ndarray, item_vectors: np.ndarray,
                 histories: Sequence[np.ndarray], n: int = 50, interest_bias: np.ndarray | None = None,
                 temperature: float = 1.0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The merged top-n of each user and each listed item's interest.

    Without `interest_bias` an item's score is the max over the valid interests k of
    s_ik = item_vectors[i] . interest_vectors[k] (the paper's max-merge); with it, recall's mixture
    T log sum_k exp(s_ik / T + b_k). Under both, an item's interest is the valid one nearest to it
    (argmax_k s_ik, the max-merge's winner), as recall labels it. The padding item 0 and the user's history
    items are excluded. Ties: between items the smaller index ranks first; for one item the lowest slot wins
    (as streams' merge).

    Args:
        interest_vectors: (B, K, d) float.
        valid_interest_mask: (B, K) bool, at least one True per row.
        item_vectors: (I, d) float, row 0 = padding.
        histories: B int arrays of item indices to exclude.
        n: list length; at most I - 1.
        interest_bias: (B, K) float, b = `RetrievalModel.merge_bias`; None = the max-merge.
        temperature: T of the mixture.
    Returns:
        top_items (B, n) int64 best first, winning_interest (B, n) int64 slot, scores (B, n) float64.
    """
    vectors = np.asarray(interest_vectors, dtype=np.float64)
    mask = np.asarray(valid_interest_mask, dtype=bool)
    items = np.asarray(item_vectors, dtype=np.float64)
    if not 1 <= n <= len(items) - 1:
        raise ValueError(f"merged_top_n: n={n} must be in 1..{len(items) - 1} (the number of real items)")
    per_interest = np.einsum("bkd,id->bki", vectors, items)               # (B, K, I)
    per_interest[~mask] = -np.inf
    winner = per_interest.argmax(axis=1)                                  # (B, I): first max = lowest slot
    if interest_bias is None:
        scores = per_interest.max(axis=1)                                 # (B, I)
    else:
        terms = per_interest / temperature + np.asarray(interest_bias, dtype=np.float64)[:, :, None]
        scores = temperature * np.logaddexp.reduce(terms, axis=1)
    scores[:, 0] = -np.inf
    for row, history in enumerate(histories):
        scores[row, np.asarray(history, dtype=np.int64)] = -np.inf
    top = np.argsort(-scores, axis=1, kind="stable")[:, :n]              # stable: smaller index first on ties
    return top, np.take_along_axis(winner, top, axis=1), np.take_along_axis(scores, top, axis=1)


def contribution(winning_interest: np.ndarray,
                 valid_interest_mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """How many interests supply a merged list, and the share of the list from the one that supplies most.

    Args:
        winning_interest: (B, n) int slot of each listed item (from `merged_top_n`).
        valid_interest_mask: (B, K) bool.
    Returns:
        interests_contributing (B,) int64 in 1..K'u, dominant_share (B,) float64 in [1/K'u, 1].
    """
    winning = np.asarray(winning_interest, dtype=np.int64)
    num_slots = np.asarray(valid_interest_mask).shape[1]
    counts = np.stack([(winning == slot).sum(axis=1) for slot in range(num_slots)], axis=1)   # (B, K)
    return (counts > 0).sum(axis=1), counts.max(axis=1) / winning.shape[1]


def norm_ratio(interest_vectors: np.ndarray, valid_interest_mask: np.ndarray) -> np.ndarray:
    """Largest / smallest norm of a user's valid interests.

    Args:
        interest_vectors: (B, K, d) float.
        valid_interest_mask: (B, K) bool.
    Returns:
        (B,) float64 >= 1; inf when a valid interest is the zero vector (and another is not), 1 for K'u = 1.
    """
    norms = np.linalg.norm(np.asarray(interest_vectors, dtype=np.float64), axis=-1)
    mask = np.asarray(valid_interest_mask, dtype=bool)
    largest = np.where(mask, norms, -np.inf).max(axis=1)
    smallest = np.where(mask, norms, np.inf).min(axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(largest == smallest, 1.0, largest / smallest)


def same_slot_cosine(before: np.ndarray, after: np.ndarray, before_mask: np.ndarray,
                     after_mask: np.ndarray) -> np.ndarray:
    """Mean over the slots valid both times of cos(before[j], after[j]).

    Args:
        before, after: (B, K, d) float interest vectors of the same users.
        before_mask, after_mask: (B, K) bool.
    Returns:
        (B,) float64; NaN where no slot is valid both times.
    """
    cosine = np.einsum("bkd,bkd->bk", _unit(np.asarray(before, np.float64)),
                       _unit(np.asarray(after, np.float64)))
    both = np.asarray(before_mask, bool) & np.asarray(after_mask, bool)
    count = both.sum(axis=1)
    return np.divide(np.where(both, cosine, 0.0).sum(axis=1), count, out=np.full(len(both), np.nan),
                     where=count > 0)


def _best_assignment(cosine: np.ndarray) -> float:
    """Max over one-to-one matchings of the rows of (r, c), r <= c, into columns of the summed entries.

    Exact: dynamic programming over subsets of columns, O(r * 2^c) (K <= ~10 in practice).
    """
    rows, cols = cosine.shape
    best = np.full(1 << cols, -np.inf)
    best[0] = 0.0
    for used in range(1 << cols):
        row = bin(used).count("1")
        if row >= rows or best[used] == -np.inf:
            continue
        for col in range(cols):
            if not used >> col & 1:
                candidate = best[used] + cosine[row, col]
                if candidate > best[used | 1 << col]:
                    best[used | 1 << col] = candidate
    return float(max(best[m] for m in range(1 << cols) if bin(m).count("1") == rows))


def best_matching_cosine(before: np.ndarray, after: np.ndarray, before_mask: np.ndarray,
                         after_mask: np.ndarray) -> np.ndarray:
    """Mean cosine under the one-to-one matching of valid slots (before -> after) that maximises it.

    Where K'u differs before and after, the min(K'u before, K'u after) slots of the smaller side are matched.
    Equals `same_slot_cosine` when no two interests swapped slots.

    Args:
        before, after: (B, K, d) float interest vectors of the same users.
        before_mask, after_mask: (B, K) bool.
    Returns:
        (B,) float64; NaN for a user with no valid slot on one side.
    """
    unit_before, unit_after = _unit(np.asarray(before, np.float64)), _unit(np.asarray(after, np.float64))
    result = np.full(len(unit_before), np.nan)
    for row in range(len(unit_before)):
        a = unit_before[row, np.asarray(before_mask[row], bool)]
        b = unit_after[row, np.asarray(after_mask[row], bool)]
        if len(a) and len(b):
            cosine = a @ b.T if len(a) <= len(b) else b @ a.T
            result[row] = _best_assignment(cosine) / min(len(a), len(b))
    return result


def top_n_survival(top_before: np.ndarray, top_after: np.ndarray) -> np.ndarray:
    """Share of each user's list before that is still in the list after (order ignored).

    Args:
        top_before, top_after: (B, n) int item indices.
    Returns:
        (B,) float64 in [0, 1].
    """
    before, after = np.asarray(top_before), np.asarray(top_after)
    return np.array([np.isin(b, a).mean() for b, a in zip(before, after, strict=True)], dtype=np.float64)


def interest_diagnostics(interest_vectors: np.ndarray, valid_interest_mask: np.ndarray,
                         item_vectors: np.ndarray, histories: Sequence[np.ndarray], n: int = 50,
                         interest_bias: np.ndarray | None = None,
                         temperature: float = 1.0) -> dict[str, np.ndarray]:
    """All per-user collapse diagnostics of one set of interests.

    Args: as `merged_top_n`.
    Returns:
        {"num_interests", "mean_pairwise_cosine", "interests_contributing", "dominant_share", "norm_ratio"},
        each (B,).
    """
    _, winning, _ = merged_top_n(interest_vectors, valid_interest_mask, item_vectors, histories, n,
                                 interest_bias, temperature)
    contributing, dominant = contribution(winning, valid_interest_mask)
    return {
        "num_interests": np.asarray(valid_interest_mask, bool).sum(axis=1),
        "mean_pairwise_cosine": mean_pairwise_cosine(interest_vectors, valid_interest_mask),
        "interests_contributing": contributing,
        "dominant_share": dominant,
        "norm_ratio": norm_ratio(interest_vectors, valid_interest_mask),
    }


def stability(before: np.ndarray, before_mask: np.ndarray, after: np.ndarray, after_mask: np.ndarray,
              item_vectors: np.ndarray, histories: Sequence[np.ndarray], n: int = 50,
              interest_bias: tuple[np.ndarray, np.ndarray] | None = None,
              temperature: float = 1.0) -> dict[str, np.ndarray]:
    """How much one new event moves a user's interests and merged list.

    Both merged lists exclude the same `histories` (pass the history after the event, which includes the
    new item), so the survival measures what the new vectors changed, not the exclusion of the clicked item.

    Args:
        before, before_mask: interests (B, K, d) and mask (B, K) from the history without the new event.
        after, after_mask: the same with the new event appended.
        item_vectors: (I, d), row 0 = padding.
        histories: B int arrays excluded from both lists.
        n: list length.
        interest_bias, temperature: the merge (as `merged_top_n`): the biases before and after.
    Returns:
        {"num_interests" (K'u after), "same_slot_cosine", "matched_slot_cosine", "top_n_survival"}, each (B,).
    """
    bias_before, bias_after = interest_bias if interest_bias is not None else (None, None)
    top_before, _, _ = merged_top_n(before, before_mask, item_vectors, histories, n, bias_before, temperature)
    top_after, _, _ = merged_top_n(after, after_mask, item_vectors, histories, n, bias_after, temperature)
    return {
        "num_interests": np.asarray(after_mask, bool).sum(axis=1),
        "same_slot_cosine": same_slot_cosine(before, after, before_mask, after_mask),
        "matched_slot_cosine": best_matching_cosine(before, after, before_mask, after_mask),
        "top_n_survival": top_n_survival(top_before, top_after),
    }


def planted_recovery(interest_vectors: np.ndarray, valid_interest_mask: np.ndarray, item_vectors: np.ndarray,
                     histories: Sequence[np.ndarray], item_cluster: np.ndarray,
                     user_clusters: Sequence[np.ndarray], n: int = 10) -> dict[str, np.ndarray]:
    """Did the interests find the clusters a user was planted with (model/synthetic.py)?

    Each valid interest's own top-n items (history excluded) are labelled by their most common cluster;
    its purity is that cluster's share of the n items.

    Args:
        interest_vectors, valid_interest_mask, item_vectors, histories: as `merged_top_n`.
        item_cluster: (I,) int cluster of each item index (-1 for padding).
        user_clusters: B int arrays, the clusters each user drew from (empty: NaN for that user).
        n: items per interest.
    Returns:
        {"num_interests", "interest_purity" (mean over the valid interests), "clusters_found" (distinct
        planted clusters that label an interest, over min(K'u, planted clusters)), "clusters_in_top"
        (planted clusters with an item in the merged top-5n, over the planted clusters)}, each (B,).
    """
    vectors = np.asarray(interest_vectors, dtype=np.float64)
    mask = np.asarray(valid_interest_mask, dtype=bool)
    items = np.asarray(item_vectors, dtype=np.float64)
    clusters = np.asarray(item_cluster, dtype=np.int64)
    top_merged, _, top_scores = merged_top_n(vectors, mask, items, histories, min(5 * n, len(items) - 1))
    purity, found, in_top = [], [], []
    for row, history in enumerate(histories):
        scores = vectors[row] @ items.T                                   # (K, I)
        scores[:, 0] = -np.inf
        scores[:, np.asarray(history, dtype=np.int64)] = -np.inf
        planted = set(np.asarray(user_clusters[row]).tolist())
        labels, shares = [], []
        for slot in np.flatnonzero(mask[row]):
            top = np.argsort(-scores[slot], kind="stable")[:n]
            values, counts = np.unique(clusters[top], return_counts=True)
            labels.append(int(values[counts.argmax()]))
            shares.append(counts.max() / n)
        purity.append(float(np.mean(shares)))
        if not planted:  # undefined: `summarize` leaves NaN out of its means
            found.append(np.nan)
            in_top.append(np.nan)
            continue
        found.append(len(set(labels) & planted) / min(len(labels), len(planted)))
        listed = top_merged[row][np.isfinite(top_scores[row])]            # never an excluded item
        in_top.append(len(set(clusters[listed].tolist()) & planted) / len(planted))
    return {"num_interests": mask.sum(axis=1), "interest_purity": np.asarray(purity),
            "clusters_found": np.asarray(found), "clusters_in_top": np.asarray(in_top)}


def _means(values: Mapping[str, np.ndarray], rows: np.ndarray) -> dict[str, float | int]:
    summary: dict[str, float | int] = {"users": int(rows.sum())}
    for name, column in values.items():
        if name == "num_interests":
            continue
        kept = np.asarray(column, dtype=np.float64)[rows]
        kept = kept[np.isfinite(kept)]   # NaN (undefined for this user) and inf (a zero-norm interest)
        summary[name] = round(float(kept.mean()), 4) if len(kept) else None  # type: ignore[assignment]
    return summary


def summarize(per_user: Mapping[str, np.ndarray]) -> dict[str, dict[str, float | int]]:
    """Mean of each per-user diagnostic over all users and per K'u.

    Users whose value is undefined (NaN, e.g. a pairwise cosine with K'u = 1) or infinite are left out of that
    mean; "users" counts the users of the group.

    Args:
        per_user: {name: (B,)} with a "num_interests" entry (K'u of each user).
    Returns:
        {"all": {"users": B, name: mean, ...}, "K=1": {...}, "K=4": {...}, ...} (K'u groups present only).
    """
    counts = np.asarray(per_user["num_interests"], dtype=np.int64)
    result = {"all": _means(per_user, np.ones(len(counts), dtype=bool))}
    for k in np.unique(counts):
        result[f"K={int(k)}"] = _means(per_user, counts == k)
    return result
