"""MIND: Multi-Interest Network with Dynamic routing (Li et al., CIKM 2019).

The user tower turns a history of items (plus a profile) into up to K interest vectors; the item tower is
the pooled item embedding. Recall scores an item by the paper's f_score = max over the valid interests of
v_k . e_i, or by a mixture of the interests weighted by their routing mass (config.interest_merge,
`RetrievalModel.recall_scores`); training scores each candidate by the max by default, or through
label-aware attention (the paper; config.candidate_scoring).
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

    def interest_log_prior(self, coupling: Tensor, history_mask: Tensor,
                           valid_interest_mask: Tensor) -> Tensor:
        """log pi_k: each valid interest's share of the routing coupling, behaviour i counting
        config.interest_prior_decay ** age_i (age 0 = the most recent behaviour).

        Shape:
            coupling (B, L, K) float, history_mask (B, L) bool left-aligned, valid_interest_mask (B, K) bool.
        Returns:
            (B, K) float: log pi over the valid interests (they sum to 1); invalid interests are 0.
        """
        lengths = history_mask.to(torch.long).sum(-1, keepdim=True)                       # (B, 1)
        positions = torch.arange(history_mask.shape[1], device=history_mask.device).unsqueeze(0)
        age = (lengths - 1 - positions).clamp(min=0).to(coupling.dtype)                   # (B, L)
        weight = torch.pow(torch.full_like(age, self.config.interest_prior_decay), age)
        weight = weight * history_mask.to(coupling.dtype)
        valid = valid_interest_mask.to(coupling.dtype)
        mass = (coupling * weight.unsqueeze(-1)).sum(1) * valid                              # (B, K)
        share = mass / mass.sum(-1, keepdim=True).clamp(min=1e-30)
        return torch.log(share.clamp(min=1e-9)) * valid

    def merge_bias(self, output: InterestOutput, history_mask: Tensor) -> Tensor:
        """Each interest's additive logit in the recall merge: w log pi_k for 'mixture', zeros for 'max'.
        (B, L) bool -> (B, K) float."""
        if self.config.interest_merge == "max":
            return torch.zeros_like(output.valid_interest_mask, dtype=output.interest_vectors.dtype)
        return self.config.interest_prior_weight * self.interest_log_prior(
            output.coupling, history_mask, output.valid_interest_mask)

    def recall_scores(self, output: InterestOutput, history_mask: Tensor, item_embeddings: Tensor) -> Tensor:
        """Every item's recall score under config.interest_merge.

        'max': f_score = max_k v_k . e_i (the paper). 'mixture': T log sum_k exp(v_k . e_i / T + b_k), with
        T = config.logit_temperature and b = `merge_bias` (w log pi_k): a soft max in which an interest counts
        by the share of the user's recent behaviours routed to it.

        Shape:
            output: of `interests` (B, K, d); history_mask (B, L) bool; item_embeddings (N, d).
        Returns:
            (B, N) float.
        """
        scores = torch.einsum("bkd,nd->bkn", output.interest_vectors, item_embeddings)
        blocked = ~output.valid_interest_mask.unsqueeze(-1)
        if self.config.interest_merge == "max":
            return scores.masked_fill(blocked, -torch.inf).max(dim=1).values
        temperature = self.config.logit_temperature
        logits = scores / temperature + self.merge_bias(output, history_mask).unsqueeze(-1)
        return temperature * torch.logsumexp(logits.masked_fill(blocked, -torch.inf), dim=1)

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
