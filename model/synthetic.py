"""Synthetic interaction data with planted interests: the ground truth a multi-interest model should find."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from model.data import PAD, UNKNOWN, DataError, InteractionData


@dataclass(frozen=True)
class PlantedInterests:
    """Ground truth of `synthetic_planted`.

    `user_clusters[u]`: sorted cluster ids (0-based) user u drew behaviours from — every one occurs in u's
    sequence; the clusters of `noise` events are not among them. `item_cluster`: (num_items + 1,) int64
    cluster of each item index, -1 for padding. The item's `category` feature index is `cluster + 1`.
    """

    user_clusters: list[np.ndarray]
    item_cluster: np.ndarray


def synthetic_planted(
    num_users: int = 1000,
    num_clusters: int = 8,
    items_per_cluster: int = 50,
    *,
    min_interests: int = 1,
    max_interests: int = 4,
    min_length: int = 8,
    max_length: int = 60,
    noise: float = 0.0,
    tie_probability: float = 0.2,
    seed: int = 0,
) -> tuple[InteractionData, PlantedInterests]:
    """Users with planted interests: items come in clusters, each user draws from 1–4 of them.

    Item side feature `category` = the item's cluster; each user picks `k` clusters uniformly in
    [min_interests, max_interests] and a history length in [min_length, max_length]; every picked cluster
    gets at least 2 behaviours, the rest are spread uniformly over the picked clusters, and the order is
    shuffled (interests interleave in time). Within a cluster items are drawn without repetition while
    possible. A `noise` fraction of behaviours is replaced by uniformly random items. Timestamps increase
    with gaps of 0 (a tie) with `tie_probability`, else 1–3600 s. Profile: one uninformative field
    `cohort` (a/b/c), so consumers always see P ≥ 1.
    """
    if not 1 <= min_interests <= max_interests <= num_clusters:
        raise DataError("synthetic_planted: need 1 ≤ min_interests ≤ max_interests ≤ num_clusters "
                        f"({num_clusters})")
    if min_length < 2 * max_interests or max_length < min_length:
        raise DataError(f"synthetic_planted: need 2·max_interests ({2 * max_interests}) ≤ min_length ≤ "
                        "max_length")
    if items_per_cluster < 1 or num_users < 1 or not 0 <= noise < 1:
        raise DataError("synthetic_planted: need items_per_cluster ≥ 1, num_users ≥ 1 and 0 ≤ noise < 1")
    rng = np.random.default_rng(seed)
    num_items = num_clusters * items_per_cluster
    # Item index i (1-based) belongs to cluster (i - 1) // items_per_cluster.
    item_cluster = np.concatenate([[-1], np.repeat(np.arange(num_clusters),
                                                   items_per_cluster)]).astype(np.int64)
    item_ids = [PAD] + [f"c{c}_{j}" for c in range(num_clusters) for j in range(items_per_cluster)]
    category = (item_cluster + 1).reshape(-1, 1).astype(np.int64)

    sequences, timestamps, user_clusters = [], [], []
    start = 1_700_000_000
    for _ in range(num_users):
        k = int(rng.integers(min_interests, max_interests + 1))
        clusters = np.sort(rng.choice(num_clusters, size=k, replace=False))
        length = int(rng.integers(min_length, max_length + 1))
        counts = np.full(k, 2) + np.bincount(rng.integers(0, k, size=length - 2 * k), minlength=k)
        items = []
        for cluster, count in zip(clusters, counts, strict=True):
            picks = rng.choice(items_per_cluster, size=count, replace=count > items_per_cluster)
            items.append(1 + cluster * items_per_cluster + picks)
        sequence = rng.permutation(np.concatenate(items)).astype(np.int64)
        if noise > 0:
            noisy = rng.random(length) < noise
            sequence[noisy] = rng.integers(1, num_items + 1, size=int(noisy.sum()))
        gaps = np.where(rng.random(length) < tie_probability, 0, rng.integers(1, 3601, size=length))
        gaps[0] = int(rng.integers(0, 86_400))
        sequences.append(sequence)
        timestamps.append((start + np.cumsum(gaps)).astype(np.int64))
        # The picked clusters still present (noise may replace a cluster's events, and is not planted).
        present = np.intersect1d(clusters, item_cluster[sequence])
        user_clusters.append(present.astype(np.int64))

    data = InteractionData(
        name="synthetic",
        item_ids=item_ids,
        item_features={"category": category},
        item_feature_vocabs={"category": [UNKNOWN] + [f"c{c}" for c in range(num_clusters)]},
        user_ids=[f"u{u}" for u in range(num_users)],
        user_profile=rng.integers(1, 4, size=(num_users, 1)).astype(np.int64),
        profile_vocabs={"cohort": [UNKNOWN, "a", "b", "c"]},
        sequences=sequences,
        timestamps=timestamps,
    )
    return data, PlantedInterests(user_clusters=user_clusters, item_cluster=item_cluster)
