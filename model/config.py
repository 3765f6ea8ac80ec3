"""Every MIND hyperparameter in one dataclass, and the feature sizes a model is built for.

Defaults follow the paper (Li et al., CIKM 2019) where it gives a value (routing logits drawn from
N(0, sigma^2) with sigma = 1, 3 routing iterations, Adam) except where a departure won on validation users
(docs/MODEL.md has the measurements): the initial routing logits from K learned content directions
instead of a random draw,
every training candidate scored as recall ranks it (the interests' mixture) instead of by label-aware
attention's one vector, the mixture merge at recall instead of the max, unit-length interest vectors with a
logit temperature, and a full softmax over the catalogue.
Each departure is a field whose help names the paper's choice; LEGACY_VALUES holds the values that
reproduce the paper. The rest are sized for MovieLens on a small CPU.
Each field carries its help text (shown by `mind-model train --help`).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

NEGATIVE_SAMPLERS = ("uniform", "popularity")
ROUTING_INITS = ("position", "item", "sample", "learned", "prototype")
SAMPLE_MODES = ("every_position", "random_target")
NORMALIZE_CHOICES = ("none", "interests")
CANDIDATE_SCORINGS = ("attention", "max", "logsumexp", "mixture")
INTEREST_MERGES = ("max", "mixture")
# Departures from the paper added later: a stored config without the key was trained with this value.
LEGACY_VALUES: dict[str, Any] = {
    "routing_init": "position",
    "attention_power": math.inf,
    "routing_update_scale": 1.0,
    "routing_normalize": False,
    "attention_soft_epochs": 0,
    "sample_mode": "every_position",
    "full_softmax": False,
    "interest_cosine_penalty": 0.0,
    "normalize": "none",
    "logit_temperature": 1.0,
    "per_interest_bilinear": False,
    "candidate_scoring": "attention",
    "global_interest": False,
    "interest_merge": "max",
    "choose_merge": False,
}


class ConfigError(ValueError):
    """A hyperparameter or a feature spec that cannot build a model."""


def _option(default: Any, help_text: str) -> Any:
    """A dataclass field whose help text the CLI shows for its --flag."""
    return field(default=default, metadata={"help": help_text})


@dataclass
class MindConfig:
    """Hyperparameters of MIND, its baselines, training and evaluation (each field's help says what it is)."""

    # model
    embedding_dim: int = _option(64, "d: size of item embeddings, capsules and interest vectors")
    num_interests: int = _option(4, "K: the most interest vectors a user gets (1 = MIND-1)")
    adaptive_interests: bool = _option(
        True, "give a user K'u = max(1, min(K, floor(log2 n))) interests, n = behaviours the tower sees "
              "(paper 3.3); off: always K")
    routing_iterations: int = _option(3, "rounds of behaviour-to-interest dynamic routing (paper: 3)")
    routing_logit_std: float = _option(
        1.0, "sigma of the N(0, sigma^2) draw of the frozen initial routing logits (paper: 1); with "
             "'prototype' the logits' spread at initialisation")
    routing_init: str = _option(
        "prototype",
        "where the initial routing logits come from (paper: N(0, sigma^2), place unspecified): "
        "'prototype' (sigma sqrt(d) cos(S e_i, p_j) with K learned directions p_j: keyed by content), "
        "'position' (one frozen draw per history position, shared by all users), 'item' (one draw per "
        "item id and interest, so an item keeps its pull toward the same slot as the window slides), "
        "'sample' (a fresh draw per training sample, the position draw at serving), 'learned' (the "
        "'item' table, trained with the model)",
    )
    routing_update_scale: float = _option(
        1.0, "factor on the routing update u_j . S e_i relative to the initial logits (paper: 1)")
    routing_normalize: bool = _option(
        False, "routing update on unit vectors: b_ij += scale * cos(u_j, S e_i), so the update's size does "
               "not depend on the embeddings' scale (paper: raw inner product)")
    per_interest_bilinear: bool = _option(
        False, "one bilinear matrix S_j per interest (ComiRec-DR) instead of the paper's one shared S")
    global_interest: bool = _option(
        False, "one more interest vector, always valid, in slot 0: the capsule of all behaviours with "
               "weight 1 (MIND-1's capsule), next to the K routed ones (beyond the paper: off)")
    routing_stop_gradient: bool = _option(
        True, "no gradient through the routing-logit updates, only through the last round's weighted sum "
              "(as the reference implementations do)")
    profile_embedding_dim: int = _option(16, "size of each profile field's embedding (p_u concatenates them)")
    hidden_dim: int = _option(128, "width of the interest MLP's first ReLU layer (the second outputs d)")
    # The paper's "two ReLU layers" could also put a ReLU on the output; that clamps every interest vector
    # into the positive orthant and cost ~12% validation Recall@50 on ml-100k (0.255 vs 0.29), so it is off.
    interest_output_relu: bool = _option(
        False, "ReLU on the interest MLP's output layer too (a literal reading of the paper's 'two ReLU "
               "layers'; measured worse)")
    attention_power: float = _option(
        0.0, "p of label-aware attention (candidate_scoring 'attention'), training only: 0 averages the "
             "interests, larger p sharpens toward the one most similar to the target, inf = hard argmax "
             "(paper: hard is best)")
    candidate_scoring: str = _option(
        "mixture",
        "how training scores the target and every negative: 'attention' (paper 3.4: label-aware attention "
        "builds one user vector from the target, and the negatives are scored with it), 'max' (each "
        "candidate by its best valid interest, the paper's serving f_score; attention_power is then "
        "unused), 'logsumexp' (a smooth max: temperature * logsumexp over the valid interests of "
        "v_k . e / temperature), 'mixture' (the 'mixture' merge's score: logsumexp with each interest's "
        "w log pi_k added, pi_k held constant, so training ranks as the default recall does; docs/MODEL.md, "
        "Round 11)")
    attention_soft_epochs: int = _option(
        0, "train with p = 0 (the average of the interests) for this many epochs, then with attention_power")
    normalize: str = _option(
        "interests", "'interests': every interest vector is scaled to unit length (training and serving), so "
                "max-merge compares directions, not norms; 'none': the paper's raw vectors")
    logit_temperature: float = _option(
        0.1, "training logits are (user vector . item) / temperature; also the T of the 'mixture' merge")
    interest_merge: str = _option(
        "mixture",
        "how recall merges a user's interests into one ranking (training scores by candidate_scoring): "
        "'max' (paper: "
        "f_score = max_k v_k . e_i) or 'mixture' (temperature * log sum_k pi_k^w exp(v_k . e_i / "
        "temperature), pi_k = interest k's share of the last routing round's coupling; docs/MODEL.md, "
        "Round 9)")
    choose_merge: bool = _option(
        True, "each epoch, also rank the validation users by the paper's 'max' and keep the (epoch, merge) "
              "with the best validation split Recall@50; the chosen merge is written into the checkpoint "
              "(so the data set decides; docs/MODEL.md, Round 9)")
    interest_prior_weight: float = _option(
        1.0, "w: the exponent of pi_k in the 'mixture' merge (0 = every interest weighs the same)")
    interest_prior_decay: float = _option(
        0.5, "in pi_k each behaviour's coupling counts decay ** age (age 0 = the most recent; 1 = all alike)")
    max_history_length: int = _option(
        20, "the most recent behaviours the user tower sees (chosen on validation users: docs/MODEL.md, "
            "Round 7)")
    # training
    num_negatives: int = _option(1000, "items sampled per batch (shared by all rows) for the sampled softmax")
    full_softmax: bool = _option(
        True, "score each target against every item instead of sampled negatives (cheap on catalogues of "
               "a few thousand items)")
    interest_cosine_penalty: float = _option(
        0.0, "weight of a loss term on the mean pairwise cosine of a user's valid interest vectors "
             "(anti-collapse; 0 = off, the paper)")
    sample_mode: str = _option(
        "every_position", "training samples per epoch: 'every_position' (one per user and position t >= 1) "
                          "or 'random_target' (ComiRec's reference code: as many samples, each a uniformly "
                          "drawn user and a random target position in that user's sequence)")
    target_window: int = _option(
        1, "W: a sample's target is drawn from the user's next W items instead of the next one (1 = the "
           "next item, as in the paper); the history is the same")
    negative_sampler: str = _option(
        "uniform", "negatives drawn 'uniform' over the corpus or by 'popularity' (train count ** 0.75); "
                   "both logQ-corrected")
    learning_rate: float = _option(3e-3,
                                   "Adam learning rate (3e-3 reached 1e-3's best validation recall "
                                   "in a third of the epochs)")
    weight_decay: float = _option(0.0, "Adam weight decay")
    batch_size: int = _option(256, "training samples per step")
    epochs: int = _option(10, "the most passes over the training samples")
    patience: int = _option(3,
                            "stop after this many epochs without a better validation Recall@50 (0 = never)")
    seed: int = _option(42, "seeds the routing-logit draw, initialisation, sample order and negatives")
    # evaluation
    holdout_fraction: float = _option(
        0.2, "user-split protocol: the last share of each held-out user's behaviours that are targets")

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):  # "inf" from JSON (to_dict writes it so) and ints become floats
            if f.type in ("float", float) and isinstance(getattr(self, f.name), int | float | str):
                try:
                    setattr(self, f.name, float(getattr(self, f.name)))
                except ValueError:
                    raise ConfigError(
                        f"MindConfig.{f.name} must be a number, got {getattr(self, f.name)!r}") from None
        positive_ints = ("embedding_dim", "num_interests", "routing_iterations", "profile_embedding_dim",
                         "hidden_dim", "max_history_length", "num_negatives", "batch_size", "epochs",
                         "target_window")
        for name in positive_ints:
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ConfigError(f"MindConfig.{name} must be a positive integer, got {value!r}")
        if not self.routing_logit_std > 0:
            raise ConfigError(f"MindConfig.routing_logit_std must be > 0, got {self.routing_logit_std!r}")
        if not (self.attention_power >= 0):  # also rejects NaN
            raise ConfigError("MindConfig.attention_power must be >= 0 (inf = hard), got "
                              f"{self.attention_power!r}")
        if self.negative_sampler not in NEGATIVE_SAMPLERS:
            raise ConfigError(f"MindConfig.negative_sampler must be one of {NEGATIVE_SAMPLERS}, "
                              f"got {self.negative_sampler!r}")
        for name, allowed in (("routing_init", ROUTING_INITS), ("sample_mode", SAMPLE_MODES),
                              ("normalize", NORMALIZE_CHOICES), ("candidate_scoring", CANDIDATE_SCORINGS),
                              ("interest_merge", INTEREST_MERGES)):
            if getattr(self, name) not in allowed:
                raise ConfigError(f"MindConfig.{name} must be one of {allowed}, got {getattr(self, name)!r}")
        for name, on in (("global_interest", self.global_interest),
                         ("routing_init 'prototype'", self.routing_init == "prototype")):
            if on and self.per_interest_bilinear:
                raise ConfigError(f"MindConfig.{name} needs the shared bilinear map "
                                  "(per_interest_bilinear off)")
        if not (
            self.routing_update_scale >= 0
            and self.logit_temperature > 0
            and self.interest_cosine_penalty >= 0
        ):
            raise ConfigError("MindConfig: routing_update_scale and interest_cosine_penalty must be >= 0, "
                              "logit_temperature > 0")
        if not (0 <= self.interest_prior_weight < math.inf and 0 < self.interest_prior_decay <= 1):
            raise ConfigError("MindConfig: interest_prior_weight must be a finite number >= 0, "
                              "interest_prior_decay in (0, 1]")
        if not isinstance(self.attention_soft_epochs, int) or self.attention_soft_epochs < 0:
            raise ConfigError(f"MindConfig.attention_soft_epochs must be an integer >= 0, "
                              f"got {self.attention_soft_epochs!r}")
        if not 0 < self.holdout_fraction < 1:
            raise ConfigError(f"MindConfig.holdout_fraction must be in (0, 1), got {self.holdout_fraction!r}")
        if self.learning_rate <= 0 or self.weight_decay < 0 or self.patience < 0:
            raise ConfigError("MindConfig: learning_rate must be > 0, weight_decay and patience >= 0")

    def to_dict(self) -> dict[str, Any]:
        """Plain values, strict-JSON safe: an infinite attention_power is written as the string "inf"."""
        values = dataclasses.asdict(self)
        return {k: str(v) if isinstance(v, float) and not math.isfinite(v) else v for k, v in values.items()}

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> MindConfig:
        """Rebuild from `to_dict()`; unknown keys are an error (a checkpoint from another version).

        A key missing from `values` that names a later departure from the paper takes its LEGACY_VALUES
        value, the one such a config was trained with, not today's default.
        """
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ConfigError(
                f"unknown MindConfig keys {unknown}; was this written by another mindstream version?"
            )
        return cls(**{**LEGACY_VALUES, **dict(values)})

    def replace(self, **changes: Any) -> MindConfig:
        return dataclasses.replace(self, **changes)


@dataclass(frozen=True)
class FeatureSpec:
    """The vocabulary sizes a model's embedding tables are built for.

    num_items counts real items (indices 1..num_items; 0 is padding). Each vocabulary size includes
    index 0 ("<unk>"/padding). profile_vocab_sizes is ordered like the profile columns.
    """

    num_items: int
    item_feature_vocab_sizes: dict[str, int] = field(default_factory=dict)
    profile_vocab_sizes: dict[str, int] = field(default_factory=dict)

    @classmethod
    def from_vocabularies(cls, vocabularies: Mapping[str, Any]) -> FeatureSpec:
        """From the checkpoint's `vocabularies` dict (docs/ARCHITECTURE.md)."""
        return cls(
            num_items=len(vocabularies["item_ids"]) - 1,
            item_feature_vocab_sizes={k: len(v) for k, v in vocabularies["item_features"].items()},
            profile_vocab_sizes={k: len(v) for k, v in vocabularies["profile"].items()},
        )

    @classmethod
    def from_data(cls, data: Any) -> FeatureSpec:
        """From a `model.data.InteractionData`."""
        return cls.from_vocabularies(vocabularies_of(data))


def vocabularies_of(data: Any) -> dict[str, Any]:
    """The checkpoint's `vocabularies` dict for an `InteractionData` (plain lists, JSON-able)."""
    return {
        "item_ids": [str(i) for i in data.item_ids],
        "item_features": {k: [str(v) for v in vs] for k, vs in data.item_feature_vocabs.items()},
        "profile": {k: [str(v) for v in vs] for k, vs in data.profile_vocabs.items()},
        **({"item_titles": [str(t) for t in data.item_titles]} if getattr(data, "item_titles", None) else {}),
    }
