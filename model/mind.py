"""MIND: Multi-Interest Network with Dynamic routing (Li et al., CIKM 2019).

The user tower turns a history of items (plus a profile) into up to K interest vectors; the item tower is
the pooled item embedding. Serving scores an item by f_score = max over the valid interests of v_k . e_i;
training scores each candidate the same way by default, or through label-aware attention (the paper;
config.candidate_scoring).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from model.config import FeatureSpec, MindConfig
from model.layers import (
    EmbeddingPooling,
    InterestMLP,
    InterestRouting,
    LabelAwareAttention,
    ProfileEmbedding,
    interest_mask_from_lengths,
)


class InterestOutput(NamedTuple):
    """What a user tower returns. A NamedTuple so it traces to ONNX as three outputs."""

    interest_vectors: Tensor      # (B, K, d) float; rows of invalid interests are zeros
    valid_interest_mask: Tensor   # (B, K) bool; the first K'u are True
    coupling: Tensor              # (B, L, K) float; w_ij of the last routing round (0 for padding)


class RetrievalModel(nn.Module):
    """What MIND and its baselines share: the item tower, the profile embedding, the training forward.

    Subclasses implement `interests_from_embeddings`; everything else (training, evaluation, export) goes
    through the methods here, so the baselines run in exactly the same code path.
    """

    model_kind = ""

    def __init__(self, config: MindConfig, spec: FeatureSpec,
                 item_feature_matrix: Mapping[str, np.ndarray | Tensor]) -> None:
        super().__init__()
        self.config = config
        self.spec = spec
        self.item_pooling = EmbeddingPooling(spec.num_items, config.embedding_dim, item_feature_matrix,
                                             spec.item_feature_vocab_sizes)
        self.profile_embedding = ProfileEmbedding(spec.profile_vocab_sizes, config.profile_embedding_dim)
        self.label_aware_attention = LabelAwareAttention(config.attention_power)

    @property
    def num_interests(self) -> int:
        """Interest slots the tower outputs: K, plus one with config.global_interest."""
        return self.config.num_interests + int(self.config.global_interest)

    def item_embeddings(self, item_index: Tensor) -> Tensor:
        """item_index (...) int64 -> (..., d): pooled id + side-feature embeddings (0 -> zeros)."""
        return self.item_pooling(item_index)

    def all_item_embeddings(self) -> Tensor:
        """(num_items + 1, d); row 0 (padding) is zeros."""
        index = torch.arange(self.spec.num_items + 1, device=self.item_pooling.id_embedding.weight.device)
        return self.item_pooling(index)

    def interests_from_embeddings(self, behaviour_embeddings: Tensor, history_mask: Tensor,
                                  profile: Tensor, history: Tensor | None = None) -> InterestOutput:
        """`history` (B, L) int64 item ids: needed only by an item-keyed routing init."""
        raise NotImplementedError

    def interests(self, history: Tensor, history_mask: Tensor, profile: Tensor) -> InterestOutput:
        """history (B, L) int64 left-aligned, history_mask (B, L) bool, profile (B, P) int64
        -> InterestOutput."""
        return self.interests_from_embeddings(self.item_embeddings(history), history_mask, profile, history)

    def finish_interests(self, interest_vectors: Tensor, valid_interest_mask: Tensor) -> Tensor:
        """Zero the invalid interests; with config.normalize == "interests" scale the rest to unit length."""
        if self.config.normalize == "interests":
            interest_vectors = F.normalize(interest_vectors, dim=-1)
        return interest_vectors * valid_interest_mask.unsqueeze(-1).to(interest_vectors.dtype)

    def forward(self, history: Tensor, history_mask: Tensor, profile: Tensor, target: Tensor) -> Tensor:
        """Training view: the user vector label-aware attention picks for each target. -> (B, d)."""
        output = self.interests(history, history_mask, profile)
        return self.label_aware_attention(output.interest_vectors, output.valid_interest_mask,
                                          self.item_embeddings(target))


class MIND(RetrievalModel):
    """Embedding pooling -> B2I dynamic routing -> (capsule ; profile) MLP -> K'u interest vectors.

    With config.num_interests = 1 this is the paper's MIND-1 baseline.
    """

    model_kind = "mind"

    def __init__(self, config: MindConfig, spec: FeatureSpec,
                 item_feature_matrix: Mapping[str, np.ndarray | Tensor]) -> None:
        super().__init__(config, spec, item_feature_matrix)
        self.routing = InterestRouting(
            dim=config.embedding_dim,
            num_interests=config.num_interests,
            max_history_length=config.max_history_length,
            iterations=config.routing_iterations,
            logit_std=config.routing_logit_std,
            seed=config.seed,
            stop_gradient=config.routing_stop_gradient,
            init=config.routing_init,
            num_items=spec.num_items,
            update_scale=config.routing_update_scale,
            normalize=config.routing_normalize,
            per_interest_bilinear=config.per_interest_bilinear,
        )
        self.interest_mlp = InterestMLP(config.embedding_dim, self.profile_embedding.output_dim,
                                        config.hidden_dim, config.interest_output_relu)

    def valid_interests(self, history_mask: Tensor) -> Tensor:
        """(B, L) bool -> (B, K) bool. K'u counts the behaviours the tower sees (at most
        max_history_length)."""
        lengths = history_mask.to(torch.long).sum(-1)
        if self.config.adaptive_interests:
            return interest_mask_from_lengths(lengths, self.config.num_interests)
        return torch.ones_like(lengths, dtype=torch.bool).unsqueeze(-1).expand(-1, self.config.num_interests)

    def interests_from_embeddings(self, behaviour_embeddings: Tensor, history_mask: Tensor,
                                  profile: Tensor, history: Tensor | None = None) -> InterestOutput:
        """behaviour_embeddings (B, L, d), history_mask (B, L) bool, profile (B, P) int64,
        history (B, L) int64 item ids (required when config.routing_init is "item" or "learned")
        -> InterestOutput.

        L must not exceed config.max_history_length (a position-keyed routing-logit table has that many rows).
        """
        valid_interest_mask = self.valid_interests(history_mask)
        capsules, coupling = self.routing(behaviour_embeddings, history_mask, valid_interest_mask, history)
        if self.config.global_interest:  # slot 0: every behaviour with coupling 1; always valid
            pooled = self.routing.pooled_capsule(behaviour_embeddings, history_mask)
            capsules = torch.cat([pooled.unsqueeze(1), capsules], dim=1)
            coupling = torch.cat([history_mask.unsqueeze(-1).to(coupling.dtype), coupling], dim=-1)
            always = torch.ones_like(valid_interest_mask[:, :1])
            valid_interest_mask = torch.cat([always, valid_interest_mask], dim=1)
        interest_vectors = self.interest_mlp(capsules, self.profile_embedding(profile))
        return InterestOutput(
            self.finish_interests(interest_vectors, valid_interest_mask), valid_interest_mask, coupling
        )
