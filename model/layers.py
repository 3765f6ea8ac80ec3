"""The building blocks of MIND: embedding pooling, B2I dynamic routing, interest MLP, label-aware attention.

Shapes: B = batch, L = history length (padded), K = interests, d = embedding dim, P = profile fields.
Histories are left-aligned: real behaviours sit at positions 0..n-1 (oldest first), padding after them
(history_mask False). The routing logits are per position, so appending padding changes nothing while
prepending it would.

Everything that the user tower runs (pooling, routing, MLP) avoids Python branches on tensor values,
data-dependent shapes and in-place ops so it traces to ONNX with dynamic B and L.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from model.config import ConfigError

# A logit that softmax turns into an exact 0 without the NaNs -inf can produce when a whole row is masked.
BLOCKED_LOGIT = -1e9


def _init_embedding(embedding: nn.Embedding, dim: int) -> None:
    # N(0, 1/d): the inner product of two random embeddings starts at unit scale, not d.
    nn.init.normal_(embedding.weight, std=dim**-0.5)
    if embedding.padding_idx is not None:
        with torch.no_grad():
            embedding.weight[embedding.padding_idx].zero_()


class EmbeddingPooling(nn.Module):
    """Item embedding e_i = mean of the id embedding and each side feature's embedding.

    A multi-valued feature (genres) is first averaged over its non-zero values; a feature with no value
    for an item is left out of the mean, and item 0 (padding) pools to zeros. The same module embeds
    behaviours and target items. item_feature_matrix[name] is (num_items + 1, max_values) int64, 0 = none,
    stored as a buffer so a checkpoint carries it.

    item_index (...) int64 -> (..., d)
    """

    def __init__(self, num_items: int, dim: int, item_feature_matrix: Mapping[str, np.ndarray | Tensor],
                 feature_vocab_sizes: Mapping[str, int]) -> None:
        super().__init__()
        self.num_items = num_items
        self.id_embedding = nn.Embedding(num_items + 1, dim, padding_idx=0)
        _init_embedding(self.id_embedding, dim)
        self.feature_names = list(item_feature_matrix)
        self.feature_embeddings = nn.ModuleDict()
        for name in self.feature_names:
            if not name.isidentifier():
                raise ConfigError(f"item feature name {name!r} must be a Python "
                                  "identifier (it names a buffer)")
            if name not in feature_vocab_sizes:
                raise ConfigError(f"item feature {name!r} has a matrix but no vocabulary size")
            matrix = torch.as_tensor(np.asarray(item_feature_matrix[name]), dtype=torch.long)
            if matrix.dim() == 1:
                matrix = matrix.unsqueeze(1)
            if matrix.dim() != 2 or matrix.shape[0] != num_items + 1:
                raise ConfigError(f"item feature {name!r}: matrix shape {tuple(matrix.shape)} is not "
                                  f"(num_items + 1 = {num_items + 1}, max_values)")
            vocab_size = int(feature_vocab_sizes[name])
            if matrix.numel() and (int(matrix.min()) < 0 or int(matrix.max()) >= vocab_size):
                raise ConfigError(f"item feature {name!r}: values must lie in 0..{vocab_size - 1}")
            self.register_buffer(f"feature_matrix_{name}", matrix)
            self.feature_embeddings[name] = nn.Embedding(vocab_size, dim, padding_idx=0)
            _init_embedding(self.feature_embeddings[name], dim)

    def feature_matrix(self, name: str) -> Tensor:
        return getattr(self, f"feature_matrix_{name}")

    def forward(self, item_index: Tensor) -> Tensor:
        total = self.id_embedding(item_index)                               # (..., d)
        parts = (item_index > 0).to(total.dtype).unsqueeze(-1)             # (..., 1) the id counts once
        for name in self.feature_names:
            values = self.feature_matrix(name)[item_index]                  # (..., m)
            present = (values > 0).to(total.dtype).sum(-1, keepdim=True)   # (..., 1)
            # padding rows are zero, so a plain sum over the m slots is the sum over present values
            summed = self.feature_embeddings[name](values).sum(-2)          # (..., d)
            total = total + summed / present.clamp(min=1.0)
            parts = parts + (present > 0).to(total.dtype)
        return total / parts.clamp(min=1.0)


class ProfileEmbedding(nn.Module):
    """p_u: the concatenated embeddings of the profile fields; index 0 (unknown) embeds to zeros.

    profile (B, P) int64 -> (B, P * profile_dim)
    """

    def __init__(self, vocab_sizes: Mapping[str, int], profile_dim: int) -> None:
        super().__init__()
        self.field_names = list(vocab_sizes)
        self.output_dim = profile_dim * len(self.field_names)
        self.fields = nn.ModuleList(nn.Embedding(int(v), profile_dim, padding_idx=0)
                                    for v in vocab_sizes.values())
        for embedding in self.fields:
            _init_embedding(embedding, profile_dim)

    def forward(self, profile: Tensor) -> Tensor:
        if not self.fields:
            return profile.new_zeros((profile.shape[0], 0), dtype=torch.float32)
        return torch.cat([embedding(profile[:, i]) for i, embedding in enumerate(self.fields)], dim=-1)


def squash(z: Tensor, eps: float = 1e-9) -> Tensor:
    """Capsule squash along the last axis: (|z|^2 / (1 + |z|^2)) * z / |z|; norms land in [0, 1)."""
    squared_norm = (z * z).sum(-1, keepdim=True)
    # clamp, not "+ eps": the ONNX exporter folded "+ 1e-9" away and a zero capsule became 0/0 = NaN
    norm = torch.sqrt(squared_norm.clamp(min=eps))
    return z * (squared_norm / ((1.0 + squared_norm) * norm))


def adaptive_interest_count(history_lengths: Tensor, max_interests: int) -> Tensor:
    """K'u = max(1, min(K, floor(log2 |Iu|))), in exact integer arithmetic. (B,) int -> (B,) int64."""
    return interest_mask_from_lengths(history_lengths, max_interests).sum(-1)


def interest_mask_from_lengths(history_lengths: Tensor, max_interests: int) -> Tensor:
    """valid_interest_mask (B, K) bool: interest j (0-based) is valid iff j < K'u.

    floor(log2 n) >= j  <=>  n >= 2**j, so interest j is valid iff j == 0 or n >= 2**(j + 1): a
    comparison against constant thresholds, with no float log that could round 2**k - 1 up.
    """
    thresholds = [0] + [2 ** (j + 1) for j in range(1, max_interests)]
    thresholds_t = torch.tensor(thresholds, dtype=torch.long, device=history_lengths.device)
    return history_lengths.to(torch.long).unsqueeze(-1) >= thresholds_t


ITEM_KEYED_INITS = ("item", "learned")  # routing inits whose table is indexed by item id


class InterestRouting(nn.Module):
    """Behaviour-to-Interest dynamic routing (paper section 3.2) with one shared bilinear matrix S.

    The initial routing logits b are drawn once from N(0, sigma^2) with a generator seeded from the config.
    Except with "learned", they are a buffer, never updated, so the same history always gives the same
    capsules. Where they live is `init` (config.routing_init):
    - "position": a (max_history_length, K) table, b_ij = table[position of i, j] (PaddleRec's choice);
    - "item": a (num_items + 1, K) table, b_ij = table[item id of i, j], so an item pulls toward the same
      slot wherever it sits in the window (a sliding window then barely moves the capsules);
    - "learned": the "item" table as a parameter that the optimizer trains, so the loss decides which slot
      each item pulls toward (fixed once trained, so serving stays deterministic);
    - "sample": a fresh N(0, sigma^2) draw per training call, the "position" table in eval mode;
    - "prototype": b_ij = sigma sqrt(d) cos(S e_i, p_j) with K learned directions p_j (K, d): routing
      starts from a soft assignment of each behaviour to the nearest prototype, keyed by content.
    Each round, for every behaviour, a softmax over the (valid) interests gives the coupling w;
    z_j = sum_i w_ij S e_i; u_j = squash(z_j); b_ij += scale * u_j . S e_i (with `normalize`, the cosine
    of u_j and S e_i instead). Padded behaviours get w = 0; invalid interests get w = 0 and a zero capsule.
    With `per_interest_bilinear` (ComiRec-DR's variant) each interest j has its own S_j (K, d, d) and
    S_j e_i replaces S e_i throughout: learned maps, not only the initial logits, then tell capsules apart.

    With stop_gradient (the reference implementations' choice), the rounds that only update b see a
    detached S e_i, so the loss shapes S and the embeddings through the last round's z with w constant.

    In training mode `last_logit_shift` holds, after each call, the RMS over valid (behaviour, interest)
    pairs of how far the routing rounds moved the logits (centred over the interests, the part the softmax
    sees), divided by the same RMS of the initial logits: a detached scalar for the training diagnostics.

    behaviour_embeddings (B, L, d), history_mask (B, L) bool, valid_interest_mask (B, K) bool,
    history (B, L) int64 item ids (needed by init "item")
        -> capsules (B, K, d), coupling (B, L, K)
    """

    def __init__(self, dim: int, num_interests: int, max_history_length: int, iterations: int,
                 logit_std: float, seed: int, stop_gradient: bool = True, init: str = "position",
                 num_items: int = 0, update_scale: float = 1.0, normalize: bool = False,
                 per_interest_bilinear: bool = False) -> None:
        super().__init__()
        self.per_interest_bilinear = per_interest_bilinear
        self.iterations = iterations
        self.stop_gradient = stop_gradient
        self.init = init
        self.logit_std = logit_std
        self.update_scale = update_scale
        self.normalize = normalize
        self.last_logit_shift: Tensor | None = None
        self.bilinear = nn.Parameter(torch.empty(num_interests, dim, dim) if per_interest_bilinear
                                     else torch.empty(dim, dim))
        for matrix in self.bilinear.view(-1, dim, dim):
            nn.init.xavier_uniform_(matrix)
        generator = torch.Generator().manual_seed(seed)
        keyed_by_item = init in ITEM_KEYED_INITS
        rows = num_items + 1 if keyed_by_item else max_history_length
        if keyed_by_item and num_items < 1:
            raise ConfigError(f"routing init {init!r} needs num_items >= 1")
        table = torch.randn(rows, num_interests, generator=generator) * logit_std
        self.prototypes = (nn.Parameter(torch.randn(num_interests, dim, generator=generator))
                           if init == "prototype" else None)
        if init == "learned":
            self.routing_logits = nn.Parameter(table)
        else:
            self.register_buffer("routing_logits", table)

    def pooled_capsule(self, behaviour_embeddings: Tensor, history_mask: Tensor) -> Tensor:
        """squash(sum_i S e_i) over the valid behaviours: one capsule with every coupling 1 (MIND-1's).

        behaviour_embeddings (B, L, d), history_mask (B, L) bool -> (B, d). Needs the shared S.
        """
        mapped = torch.matmul(behaviour_embeddings, self.bilinear.t())      # (B, L, d)
        weight = history_mask.unsqueeze(-1).to(mapped.dtype)
        return squash((mapped * weight).sum(1))

    def initial_logits(self, history: Tensor | None, length: int, like: Tensor,
                       keys: Tensor | None = None) -> Tensor:
        """(B, L, K): a fresh tensor per call; the table is never written here. `like` is (B, L, 1);
        `keys` (B, L, d) are the S e_i that "prototype" compares with its learned directions."""
        if self.prototypes is not None:  # sigma * sqrt(d) * cos(S e_i, p_j)
            if keys is None:
                raise ConfigError("routing init 'prototype' needs the shared bilinear map's S e_i")
            scale = self.logit_std * keys.shape[-1] ** 0.5  # random directions: spread sigma, as the draws
            return scale * torch.matmul(F.normalize(keys, dim=-1), F.normalize(self.prototypes, dim=-1).t())
        if self.init in ITEM_KEYED_INITS:
            if history is None:
                raise ConfigError(f"routing init {self.init!r} needs the history's item ids")
            return F.embedding(history, self.routing_logits)
        if self.init == "sample" and self.training:
            shape = (like.shape[0], length, self.routing_logits.shape[1])
            return torch.randn(shape, dtype=like.dtype, device=like.device) * self.logit_std
        return self.routing_logits[:length].unsqueeze(0) + torch.zeros_like(like)  # (1, L, K) + (B, L, 1)

    def forward(self, behaviour_embeddings: Tensor, history_mask: Tensor,
                valid_interest_mask: Tensor, history: Tensor | None = None) -> tuple[Tensor, Tensor]:
        length = behaviour_embeddings.shape[1]
        if self.per_interest_bilinear:  # (B, L, K, d): S_j e_i for every interest j
            mapped = torch.einsum("bld,ked->blke", behaviour_embeddings, self.bilinear)
        else:
            mapped = torch.matmul(behaviour_embeddings, self.bilinear.t())  # (B, L, d) rows are S e_i
        mapped_for_updates = mapped.detach() if self.stop_gradient else mapped
        update_keys = F.normalize(mapped_for_updates, dim=-1) if self.normalize else mapped_for_updates
        behaviour_weight = history_mask.unsqueeze(-1).to(mapped.dtype)     # (B, L, 1)
        interest_blocked = ~valid_interest_mask.unsqueeze(1)                # (B, 1, K)
        initial = self.initial_logits(history, length, behaviour_weight,
                                      None if self.per_interest_bilinear else mapped_for_updates)
        logits = initial
        coupling = capsules = logits  # rebound in the first round (iterations >= 1)
        for round_index in range(self.iterations):
            last_round = round_index == self.iterations - 1
            coupling = torch.softmax(logits.masked_fill(interest_blocked, BLOCKED_LOGIT), dim=-1)  # over K
            coupling = coupling * behaviour_weight                          # padded behaviours: w = 0
            source = mapped if last_round else mapped_for_updates
            if self.per_interest_bilinear:
                capsules = squash(torch.einsum("blk,blkd->bkd", coupling, source))
            else:
                capsules = squash(torch.matmul(coupling.transpose(1, 2), source))  # (B, K, d)
            if not last_round:
                directions = F.normalize(capsules, dim=-1) if self.normalize else capsules
                if self.per_interest_bilinear:
                    update = torch.einsum("blkd,bkd->blk", update_keys, directions)
                else:
                    update = torch.matmul(update_keys, directions.transpose(1, 2))  # u_j . S e_i (B, L, K)
                logits = logits + self.update_scale * update
        if self.training:
            self.last_logit_shift = _relative_shift(initial, logits, history_mask, valid_interest_mask)
        capsules = capsules * valid_interest_mask.unsqueeze(-1).to(capsules.dtype)
        return capsules, coupling


def _relative_shift(
    initial: Tensor, final: Tensor, history_mask: Tensor, valid_interest_mask: Tensor
) -> Tensor:
    """RMS of the interest-centred logit change over RMS of the interest-centred initial logits. -> ()."""
    with torch.no_grad():
        valid = (history_mask.unsqueeze(-1) & valid_interest_mask.unsqueeze(1)).to(initial.dtype)  # (B, L, K)
        counts = valid.sum(-1, keepdim=True).clamp(min=1.0)

        def centred_power(logits: Tensor) -> Tensor:
            centred = (logits - (logits * valid).sum(-1, keepdim=True) / counts) * valid
            return (centred * centred).sum()

        return torch.sqrt(centred_power(final - initial) / centred_power(initial).clamp(min=1e-12))


class InterestMLP(nn.Module):
    """v_u^j = ReLU(W2 ReLU(W1 [u_j ; p_u])): each capsule concatenated with the profile, two ReLU layers.

    capsules (B, K, d), profile_embedding (B, Pp) -> (B, K, d)
    """

    def __init__(self, dim: int, profile_dim: int, hidden_dim: int, output_relu: bool = True) -> None:
        super().__init__()
        self.hidden = nn.Linear(dim + profile_dim, hidden_dim)
        self.output = nn.Linear(hidden_dim, dim)
        self.output_relu = output_relu

    def forward(self, capsules: Tensor, profile_embedding: Tensor) -> Tensor:
        profile = profile_embedding.unsqueeze(1).expand(-1, capsules.shape[1], -1)  # (B, K, Pp)
        hidden = F.relu(self.hidden(torch.cat([capsules, profile], dim=-1)))
        out = self.output(hidden)
        return F.relu(out) if self.output_relu else out


def label_aware_weights(scores: Tensor, valid_interest_mask: Tensor, power: float) -> Tensor:
    """Attention over interests from scores s_k = v_k . e_target, for power p >= 0. (B, K) -> (B, K).

    The paper writes softmax(pow(s, p)). Taken literally it breaks: pow of a negative score is NaN for
    fractional p and flips the order for even p (DeepMatch's p = 100 then picks the *least* similar
    interest), and s**100 overflows float32 once s > ~2.4. What the paper wants from p is a knob from
    "average the interests" (p = 0) to "take the most similar one" (p -> inf). softmax(p * s) is exactly
    that knob: monotone in s for every sign, uniform at p = 0, argmax as p -> inf. It is evaluated as
    softmax(p * (s - max_valid s)), whose logits are <= 0, so nothing overflows for any finite p; p = inf is
    a hard one-hot argmax. Invalid interests get weight 0. Every row needs at least one valid interest.
    """
    blocked = ~valid_interest_mask
    if math.isinf(power):
        best = scores.masked_fill(blocked, -math.inf).argmax(dim=-1)
        return F.one_hot(best, scores.shape[-1]).to(scores.dtype)
    top = scores.masked_fill(blocked, -math.inf).max(dim=-1, keepdim=True).values
    logits = (power * (scores - top)).masked_fill(blocked, -math.inf)
    return torch.softmax(logits, dim=-1)


class LabelAwareAttention(nn.Module):
    """Training-only attention of the target item over the interests (paper section 3.4).

    interest_vectors (B, K, d), valid_interest_mask (B, K) bool, target_embeddings (B, d) -> (B, d)
    """

    def __init__(self, power: float) -> None:
        super().__init__()
        self.power = float(power)

    def forward(self, interest_vectors: Tensor, valid_interest_mask: Tensor,
                target_embeddings: Tensor) -> Tensor:
        scores = torch.matmul(interest_vectors, target_embeddings.unsqueeze(-1)).squeeze(-1)  # (B, K)
        weights = label_aware_weights(scores, valid_interest_mask, self.power)
        return torch.matmul(weights.unsqueeze(1), interest_vectors).squeeze(1)
