"""Baselines that run through the same code path as MIND: MIND-1, YouTube-DNN and most-popular.

MIND-1 is `MIND` with num_interests = 1 (model kind "mind"). YouTube-DNN (Covington et al., 2016) mean-
pools the behaviours, concatenates the profile and maps them to one vector with the same two-layer MLP;
it shares the item tower, the loss and the evaluation with MIND. Most-popular scores items by training
interaction counts.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import numpy as np
import torch
from torch import Tensor

from model.config import ConfigError, FeatureSpec, MindConfig
from model.layers import InterestMLP
from model.mind import MIND, InterestOutput, RetrievalModel

MODEL_KINDS = ("mind", "youtube_dnn")
# CLI names: "mind1" is MIND with K = 1 (stored as kind "mind").
MODEL_CHOICES = ("mind", "mind1", "youtube_dnn")


class YouTubeDNN(RetrievalModel):
    """Mean of the behaviour embeddings ; profile -> two ReLU layers -> one interest vector.

    Its InterestOutput has K = 1, always valid; `coupling` is the pooling weight 1/n of each behaviour.
    """

    model_kind = "youtube_dnn"

    def __init__(self, config: MindConfig, spec: FeatureSpec,
                 item_feature_matrix: Mapping[str, np.ndarray | Tensor]) -> None:
        super().__init__(config, spec, item_feature_matrix)
        self.user_mlp = InterestMLP(config.embedding_dim, self.profile_embedding.output_dim,
                                    config.hidden_dim, config.interest_output_relu)

    @property
    def num_interests(self) -> int:
        return 1

    def interests_from_embeddings(self, behaviour_embeddings: Tensor, history_mask: Tensor,
                                  profile: Tensor, history: Tensor | None = None) -> InterestOutput:
        weights = history_mask.to(behaviour_embeddings.dtype)                       # (B, L)
        weights = weights / weights.sum(-1, keepdim=True).clamp(min=1.0)
        pooled = torch.matmul(weights.unsqueeze(1), behaviour_embeddings)            # (B, 1, d)
        interest_vectors = self.user_mlp(pooled, self.profile_embedding(profile))   # (B, 1, d)
        valid_interest_mask = torch.ones_like(weights[:, :1], dtype=torch.bool)      # (B, 1)
        return InterestOutput(
            self.finish_interests(interest_vectors, valid_interest_mask),
            valid_interest_mask,
            weights.unsqueeze(-1),
        )


def build_model(model_kind: str, config: MindConfig, spec: FeatureSpec,
                item_feature_matrix: Mapping[str, np.ndarray | Tensor]) -> RetrievalModel:
    """A fresh model of kind "mind" or "youtube_dnn" (MIND-1 = "mind" with num_interests = 1)."""
    if model_kind == "mind":
        return MIND(config, spec, item_feature_matrix)
    if model_kind == "youtube_dnn":
        return YouTubeDNN(config, spec, item_feature_matrix)
    raise ConfigError(f"unknown model kind {model_kind!r}; expected one of {MODEL_KINDS}")


def resolve_model_choice(choice: str, config: MindConfig) -> tuple[str, MindConfig]:
    """CLI model name -> (model kind, config): "mind1" is MIND with one interest."""
    if choice == "mind1":
        return "mind", config.replace(num_interests=1)
    if choice in MODEL_KINDS:
        return choice, config
    raise ConfigError(f"unknown model {choice!r}; expected one of {MODEL_CHOICES}")


class MostPopular:
    """Scores every item by how often it occurs in the training sequences (item 0 scores -inf)."""

    model_kind = "popular"

    def __init__(self, num_items: int, sequences: Iterable[np.ndarray]) -> None:
        counts = np.zeros(num_items + 1, dtype=np.float64)
        for sequence in sequences:
            np.add.at(counts, np.asarray(sequence, dtype=np.int64), 1.0)
        counts[0] = -np.inf
        self.item_counts = counts

    def scores(self, batch_size: int) -> np.ndarray:
        """(batch_size, num_items + 1): the same popularity row for every user."""
        return np.broadcast_to(self.item_counts, (batch_size, self.item_counts.shape[0]))
