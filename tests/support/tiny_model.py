"""A tiny MIND (40 items, two item features, a two-field profile) and batches for it, for model unit tests."""

from __future__ import annotations

import numpy as np
import torch

from model.baselines import build_model
from model.config import FeatureSpec, MindConfig
from model.mind import MIND

NUM_ITEMS = 40


def tiny_features(seed: int = 0) -> tuple[FeatureSpec, dict[str, np.ndarray]]:
    """A 40-item corpus with a multi-valued genre and a year bucket, and a two-field profile."""
    rng = np.random.default_rng(seed)
    genre = rng.integers(0, 6, size=(NUM_ITEMS + 1, 3))
    year = rng.integers(1, 4, size=(NUM_ITEMS + 1, 1))
    genre[0] = 0
    year[0] = 0
    spec = FeatureSpec(NUM_ITEMS, {"genre": 6, "year_bucket": 4}, {"age_bucket": 5, "gender": 3})
    return spec, {"genre": genre, "year_bucket": year}


def tiny_model(kind: str = "mind", **config_changes) -> MIND:
    spec, matrices = tiny_features()
    config = MindConfig(embedding_dim=8, hidden_dim=16, profile_embedding_dim=4, max_history_length=20,
                        **config_changes)
    torch.manual_seed(0)
    return build_model(kind, config, spec, matrices).eval()


def batch(lengths: list[int], width: int | None = None, seed: int = 0):
    """Left-aligned histories of the given lengths padded to `width`, and profiles."""
    generator = torch.Generator().manual_seed(seed)
    width = width or max(lengths)
    history = torch.zeros(len(lengths), width, dtype=torch.long)
    for row, n in enumerate(lengths):
        history[row, :n] = torch.randint(1, NUM_ITEMS + 1, (n,), generator=generator)
    mask = history > 0
    profile = torch.randint(0, 3, (len(lengths), 2), generator=generator)
    return history, mask, profile
