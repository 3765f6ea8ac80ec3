"""Training: next-item samples from the training users, sampled softmax, early stopping on validation users.

A sample is (user u, position t >= 1): the target is u's item t, the history the previous
config.max_history_length items. With config.target_window W > 1 the target is drawn afresh each epoch
from u's items t .. t + W - 1 (the history stays the items before t). Batches are cut straight out of one
flat array of all training sequences with numpy (no DataLoader, no per-sample Python). Each batch shares
config.num_negatives items sampled from the corpus (uniform or popularity ** 0.75) and applies the logQ
correction so the loss is an estimate of the full softmax over the corpus (config.full_softmax: every item
instead); a negative that equals a row's target is masked out. Each candidate is scored against the user's
interests as config.candidate_scoring says (`batch_loss`). After every epoch the model is scored on the
validation users (user-split Recall@50), under the configured recall merge and, with config.choose_merge,
under the paper's max too; the best (epoch, merge)'s weights and merge are kept. Test users are never looked
at here.
"""

from __future__ import annotations

import copy
import json
import math
import platform
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from model.baselines import MostPopular, build_model
from model.checkpoint import save_checkpoint
from model.config import FeatureSpec, MindConfig, vocabularies_of
from model.evaluate import evaluate_scorer, model_scorer, popularity_scorer
from model.mind import RetrievalModel

VALIDATION_METRIC = ("user_split", "Recall@50")
POPULARITY_EXPONENT = 0.75


@dataclass
class SampleIndex:
    """All training samples as positions in one flat array of the training users' sequences."""

    flat_items: np.ndarray      # (T,) every training user's sequence, concatenated
    sequence_start: np.ndarray  # (S,) where the sample's user sequence starts in flat_items
    target_offset: np.ndarray   # (S,) position t of the target inside that sequence (>= 1)
    sample_user: np.ndarray     # (S,) user index of the sample
    sequence_length: np.ndarray  # (S,) length of the sample's user sequence

    def __len__(self) -> int:
        return len(self.target_offset)


def build_samples(sequences: Sequence[np.ndarray], users: np.ndarray) -> SampleIndex:
    """One sample per (training user, position t >= 1)."""
    chosen = [np.asarray(sequences[int(u)], dtype=np.int64) for u in users]
    lengths = np.array([len(s) for s in chosen], dtype=np.int64)
    starts = np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64)
    per_user = np.maximum(lengths - 1, 0)
    sample_user_position = np.repeat(np.arange(len(chosen)), per_user)
    # target offsets 1..len-1 for each user, vectorised
    first_sample = np.concatenate([[0], np.cumsum(per_user)[:-1]])
    offsets = np.arange(int(per_user.sum())) - np.repeat(first_sample, per_user) + 1
    return SampleIndex(
        flat_items=np.concatenate(chosen) if chosen else np.zeros(0, np.int64),
        sequence_start=starts[sample_user_position],
        target_offset=offsets.astype(np.int64),
        sample_user=np.asarray(users, dtype=np.int64)[sample_user_position],
        sequence_length=lengths[sample_user_position],
    )


def random_target_rows(samples: SampleIndex, count: int, rng: np.random.Generator) -> np.ndarray:
    """ComiRec's sampling: `count` sample rows, each a uniformly drawn user and one of its positions.

    Unlike every-position sampling, a user with a long history weighs no more than one with a short one.
    """
    users, first_row, per_user = np.unique(samples.sample_user, return_index=True, return_counts=True)
    chosen = rng.integers(0, len(users), count)
    return first_row[chosen] + (rng.random(count) * per_user[chosen]).astype(np.int64)


def make_batch(samples: SampleIndex, rows: np.ndarray, max_history_length: int,
               user_profile: np.ndarray, target_window: int = 1,
               rng: np.random.Generator | None = None) -> dict[str, torch.Tensor]:
    """Left-aligned histories of the previous <= max_history_length items, targets and profiles.

    Args:
        target_window: W; the target is a uniform draw (from `rng`) among the sample's items t .. t + W - 1
            that exist, instead of item t. The history is the items before t either way.

    Shape:
        history, history_mask (B, L) with L <= max_history_length; profile (B, P); target (B,), B = len(rows).
    """
    offsets = samples.target_offset[rows]
    history_end = samples.sequence_start[rows] + offsets
    target_position = history_end
    if target_window > 1:
        ahead = np.minimum(target_window, samples.sequence_length[rows] - offsets)  # >= 1
        target_position = history_end + (rng.random(len(rows)) * ahead).astype(np.int64)
    lengths = np.minimum(offsets, max_history_length)
    width = int(lengths.max())
    columns = np.arange(width)
    mask = columns[None, :] < lengths[:, None]
    positions = (history_end - lengths)[:, None] + columns[None, :]
    history = np.where(mask, samples.flat_items[np.where(mask, positions, 0)], 0)
    return {
        "history": torch.from_numpy(history),
        "history_mask": torch.from_numpy(mask),
        "profile": torch.from_numpy(user_profile[samples.sample_user[rows]]),
        "target": torch.from_numpy(samples.flat_items[target_position]),
    }


class NegativeSampler:
    """Draws the batch's shared negatives and knows log Q(i) for the logQ correction."""

    def __init__(self, kind: str, item_counts: np.ndarray, seed: int) -> None:
        num_items = len(item_counts) - 1
        if kind == "popularity":
            weights = (np.asarray(item_counts[1:], dtype=np.float64) + 1.0) ** POPULARITY_EXPONENT
        else:
            weights = np.ones(num_items)
        self.probabilities = weights / weights.sum()
        self.cumulative = np.cumsum(self.probabilities)
        self.log_q = torch.from_numpy(np.concatenate([[0.0], np.log(self.probabilities)])).float()
        self.uniform = kind == "uniform"
        self.rng = np.random.default_rng(seed)

    def sample(self, count: int) -> torch.Tensor:
        draws = np.searchsorted(self.cumulative, self.rng.random(count) * self.cumulative[-1], side="right")
        return torch.from_numpy(np.minimum(draws, len(self.cumulative) - 1) + 1)


def softmax_loss_from_scores(positive: torch.Tensor, negative: torch.Tensor, targets: torch.Tensor,
                             negative_items: torch.Tensor, log_q: torch.Tensor | None,
                             temperature: float = 1.0) -> torch.Tensor:
    """-log softmax of the target among (target + shared negatives), logQ-corrected, from raw scores.

    positive (B,) the target's score, negative (B, M) each shared negative's, targets (B,), negative_items
    (M,), log_q (num_items + 1,) or None for uniform sampling or the full corpus (a constant correction
    cancels). Scores are divided by `temperature`; a negative equal to the row's target is masked out.
    """
    positive = positive.unsqueeze(-1) / temperature   # (B, 1)
    negative = negative / temperature                  # (B, M)
    if log_q is not None:
        positive = positive - log_q[targets].unsqueeze(-1)
        negative = negative - log_q[negative_items].unsqueeze(0)
    negative = negative.masked_fill(negative_items.unsqueeze(0) == targets.unsqueeze(-1), -torch.inf)
    logits = torch.cat([positive, negative], dim=-1)
    return F.cross_entropy(logits, torch.zeros(len(targets), dtype=torch.long))


def sampled_softmax_loss(user_vectors: torch.Tensor, target_embeddings: torch.Tensor, targets: torch.Tensor,
                         negative_items: torch.Tensor, negative_embeddings: torch.Tensor,
                         log_q: torch.Tensor | None, temperature: float = 1.0) -> torch.Tensor:
    """`softmax_loss_from_scores` with one user vector per row scoring every candidate.

    user_vectors (B, d), target_embeddings (B, d), negative_embeddings (M, d); the rest as there.
    """
    positive = (user_vectors * target_embeddings).sum(-1)   # (B,)
    negative = user_vectors @ negative_embeddings.T          # (B, M)
    return softmax_loss_from_scores(positive, negative, targets, negative_items, log_q, temperature)


def interest_candidate_scores(interest_vectors: torch.Tensor, valid_interest_mask: torch.Tensor,
                              target_embeddings: torch.Tensor, negative_embeddings: torch.Tensor,
                              reduce: str, temperature: float = 1.0,
                              interest_bias: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Each candidate scored by all of the user's valid interests, reduced over the interests.

    `reduce` "max" is the paper's f_score = max_k v_k . e; "logsumexp" its smooth form
    T logsumexp_k(v_k . e / T); "mixture" the mixture merge's T logsumexp_k(v_k . e / T + b_k), b_k =
    `interest_bias` (`RetrievalModel.recall_scores`).

    Shape:
        interest_vectors (B, K, d), valid_interest_mask (B, K) bool (>= 1 valid per row), target_embeddings
        (B, d), negative_embeddings (M, d), interest_bias (B, K) (only for "mixture").
    Returns:
        positive (B,), negative (B, M).
    """
    blocked = ~valid_interest_mask
    positive = torch.einsum("bkd,bd->bk", interest_vectors, target_embeddings)
    positive = positive.masked_fill(blocked, -torch.inf)
    negative = torch.einsum("bkd,md->bkm", interest_vectors, negative_embeddings).masked_fill(
        blocked.unsqueeze(-1), -torch.inf)
    if reduce == "max":
        return positive.max(dim=1).values, negative.max(dim=1).values
    if reduce in ("logsumexp", "mixture"):
        bias = torch.zeros_like(positive) if reduce == "logsumexp" else interest_bias
        if bias is None:
            raise ValueError("reduce 'mixture' needs the interests' bias")
        return (temperature * torch.logsumexp(positive / temperature + bias, dim=1),
                temperature * torch.logsumexp(negative / temperature + bias.unsqueeze(-1), dim=1))
    raise ValueError(f"unknown reduce {reduce!r}: 'max', 'logsumexp' or 'mixture'")


@dataclass
class BatchForward:
    """One training forward: what the loss needs, and what the training diagnostics count."""

    user_vectors: torch.Tensor | None  # (B, d) label-aware attention's pick (candidate_scoring "attention")
    interest_vectors: torch.Tensor     # (B, K, d)
    valid_interest_mask: torch.Tensor  # (B, K) bool
    target_embeddings: torch.Tensor    # (B, d)
    negative_embeddings: torch.Tensor  # (M, d)
    interest_cosine: torch.Tensor      # () mean pairwise cosine of the valid interests (0 with K'u = 1)
    slot_wins: torch.Tensor            # (K,) how many targets each slot scored best on (no gradient)
    interest_bias: torch.Tensor | None = None  # (B, K) w log pi_k, no gradient (candidate_scoring "mixture")


def mean_pairwise_cosine(interest_vectors: torch.Tensor, valid_interest_mask: torch.Tensor) -> torch.Tensor:
    """Mean cosine over pairs j < k of valid interests, over all users with >= 2. (B, K, d), (B, K) -> ()."""
    unit = torch.nn.functional.normalize(interest_vectors, dim=-1)
    cosine = unit @ unit.transpose(1, 2)                                           # (B, K, K)
    valid = valid_interest_mask.to(cosine.dtype)
    pairs = (valid.unsqueeze(-1) * valid.unsqueeze(1)).triu(diagonal=1)            # (B, K, K)
    return (cosine * pairs).sum() / pairs.sum().clamp(min=1.0)


def _embed_batch(
    model: RetrievalModel, batch: dict[str, torch.Tensor], negatives: torch.Tensor, attention: bool = True
) -> BatchForward:
    """Interest vectors (and with `attention` label-aware attention's pick), target and negative embeddings.

    Pooling an item costs a gather per side-feature value. When the batch touches more item slots than the
    corpus has items (MovieLens: 12,800 history slots vs 3,707 items) pooling the whole corpus once and
    indexing into it is the same computation, several times cheaper; otherwise pool only what is used.
    """
    history, target = batch["history"], batch["target"]
    if history.numel() + len(target) + len(negatives) > model.spec.num_items + 1:
        table = model.all_item_embeddings()
        behaviour_embeddings, target_embeddings, negative_embeddings = (
            table[history], table[target], table[negatives])
    else:
        behaviour_embeddings = model.item_embeddings(history)
        embedded = model.item_embeddings(torch.cat([target, negatives]))
        target_embeddings, negative_embeddings = embedded[: len(target)], embedded[len(target):]
    output = model.interests_from_embeddings(
        behaviour_embeddings, batch["history_mask"], batch["profile"], history
    )
    user_vectors = model.label_aware_attention(output.interest_vectors, output.valid_interest_mask,
                                               target_embeddings) if attention else None
    with torch.no_grad():
        scores = torch.matmul(output.interest_vectors, target_embeddings.unsqueeze(-1)).squeeze(-1)  # (B, K)
        best = scores.masked_fill(~output.valid_interest_mask, -torch.inf).argmax(-1)
        slot_wins = torch.bincount(best, minlength=output.valid_interest_mask.shape[1])
    cosine = mean_pairwise_cosine(output.interest_vectors, output.valid_interest_mask)
    bias = None
    if model.config.candidate_scoring == "mixture":
        with torch.no_grad():
            bias = model.config.interest_prior_weight * model.interest_log_prior(
                output.coupling, batch["history_mask"], output.valid_interest_mask)
    return BatchForward(user_vectors, output.interest_vectors, output.valid_interest_mask, target_embeddings,
                        negative_embeddings, cosine, slot_wins, bias)


def batch_loss(forward: BatchForward, targets: torch.Tensor, negatives: torch.Tensor,
               log_q: torch.Tensor | None, config: MindConfig) -> torch.Tensor:
    """The softmax loss of one batch, each candidate scored as config.candidate_scoring says."""
    if forward.user_vectors is not None:
        return sampled_softmax_loss(forward.user_vectors, forward.target_embeddings, targets, negatives,
                                    forward.negative_embeddings, log_q, config.logit_temperature)
    positive, negative = interest_candidate_scores(
        forward.interest_vectors, forward.valid_interest_mask, forward.target_embeddings,
        forward.negative_embeddings, config.candidate_scoring, config.logit_temperature,
        forward.interest_bias)
    return softmax_loss_from_scores(positive, negative, targets, negatives, log_q, config.logit_temperature)


class TrainingDiagnostics:
    """Per-epoch counters of what routing and label-aware attention do in training.

    slot_win_share: for each slot, the share of training targets whose best-scoring valid interest it is;
    routing_logit_shift: mean over batches of how far routing moved the logits relative to their initial
    spread (InterestRouting.last_logit_shift); interest_cosine: mean pairwise cosine of the valid interests.
    """

    def __init__(self, num_interests: int) -> None:
        self.slot_wins = torch.zeros(num_interests, dtype=torch.long)
        self.shift_total, self.cosine_total, self.batches = 0.0, 0.0, 0

    def add(self, forward: BatchForward, model: RetrievalModel) -> None:
        self.slot_wins += forward.slot_wins
        self.cosine_total += float(forward.interest_cosine.detach())
        routing = getattr(model, "routing", None)
        if routing is not None and routing.last_logit_shift is not None:
            self.shift_total += float(routing.last_logit_shift)
        self.batches += 1

    def summary(self) -> dict[str, Any]:
        wins = self.slot_wins.to(torch.float64)
        return {"slot_win_share": [round(float(w), 4) for w in wins / wins.sum().clamp(min=1.0)],
                "routing_logit_shift": round(self.shift_total / max(self.batches, 1), 4),
                "interest_cosine": round(self.cosine_total / max(self.batches, 1), 4)}


@dataclass
class TrainResult:
    model: RetrievalModel
    epochs: list[dict[str, Any]] = field(default_factory=list)
    best_epoch: int = 0
    best_validation: dict[str, Any] = field(default_factory=dict)
    train_seconds: float = 0.0
    num_samples: int = 0


def item_counts_of(data: Any, users: np.ndarray) -> np.ndarray:
    counts = np.zeros(data.num_items + 1, dtype=np.int64)
    for u in users:
        np.add.at(counts, data.sequences[int(u)], 1)
    return counts


def train_model(model_kind: str, config: MindConfig, data: Any, train_users: np.ndarray,
                valid_users: np.ndarray, *, progress: bool = True,
                log: Callable[[str], None] = print, threads: int | None = None) -> TrainResult:
    """Train a fresh model of `model_kind` on `train_users`; keep the epoch best on `valid_users`.

    Each epoch is validated under every merge of `merge_candidates`; the model keeps the best (epoch,
    merge), and its config names that merge (`result.model.config`).
    """
    if threads:
        torch.set_num_threads(threads)
    torch.manual_seed(config.seed)
    spec = FeatureSpec.from_data(data)
    model = build_model(model_kind, config, spec, data.item_features)
    samples = build_samples(data.sequences, train_users)
    if len(samples) == 0:
        raise ValueError("no training samples: every training user has fewer than 2 behaviours")
    sampler = NegativeSampler(config.negative_sampler, item_counts_of(data, train_users), config.seed)
    log_q = None if sampler.uniform or config.full_softmax else sampler.log_q
    num_negatives = min(config.num_negatives, data.num_items)
    every_item = torch.arange(1, data.num_items + 1)
    optimizer = torch.optim.Adam(
        model.parameters(), lr=config.learning_rate, weight_decay=config.weight_decay
    )
    order_rng = np.random.default_rng(config.seed)
    result = TrainResult(model=model, num_samples=len(samples))
    best_score, best_state, best_config, stale = -math.inf, None, config, 0
    merges = merge_candidates(config, model.num_interests)
    started = time.perf_counter()
    steps_per_epoch = math.ceil(len(samples) / config.batch_size)
    for epoch in range(1, config.epochs + 1):
        model.train()
        soft = epoch <= config.attention_soft_epochs
        model.label_aware_attention.power = 0.0 if soft else float(config.attention_power)
        if config.sample_mode == "random_target":
            order = random_target_rows(samples, len(samples), order_rng)
        else:
            order = order_rng.permutation(len(samples))
        diagnostics = TrainingDiagnostics(model.num_interests)
        epoch_started, running, seen = time.perf_counter(), 0.0, 0
        bar = tqdm(range(steps_per_epoch), desc=f"epoch {epoch}/{config.epochs}", disable=not progress,
                   unit="batch", leave=False, dynamic_ncols=True)
        for step in bar:
            rows = order[step * config.batch_size:(step + 1) * config.batch_size]
            batch = make_batch(samples, rows, config.max_history_length, data.user_profile,
                               config.target_window, order_rng)
            negatives = every_item if config.full_softmax else sampler.sample(num_negatives)
            forward = _embed_batch(model, batch, negatives, config.candidate_scoring == "attention")
            loss = batch_loss(forward, batch["target"], negatives, log_q, config)
            diagnostics.add(forward, model)
            if config.interest_cosine_penalty:
                loss = loss + config.interest_cosine_penalty * forward.interest_cosine
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            running += float(loss.detach()) * len(rows)
            seen += len(rows)
            if step % 20 == 0:
                bar.set_postfix(loss=f"{running / seen:.4f}")
        bar.close()
        epoch_seconds = time.perf_counter() - epoch_started
        by_merge = []
        for candidate in merges:  # the configured merge first: it wins ties
            model.config = candidate
            by_merge.append((evaluate_scorer(model_scorer(model, config.max_history_length), data.sequences,
                                             data.user_profile, valid_users, config.holdout_fraction),
                             candidate))
        model.config = config
        scores = [v[VALIDATION_METRIC[0]].get(VALIDATION_METRIC[1], 0.0) for v, _ in by_merge]
        chosen = int(np.argmax(scores))
        (validation, epoch_config), score = by_merge[chosen], scores[chosen]
        record = {
            "epoch": epoch,
            "loss": running / max(seen, 1),
            "seconds": round(epoch_seconds, 1),
            "attention_power": str(model.label_aware_attention.power),
            "training": diagnostics.summary(),
            "validation": validation,
            "merge": epoch_config.interest_merge,
            "validation_by_merge": {c.interest_merge: s for (_, c), s in zip(by_merge, scores, strict=True)},
        }
        result.epochs.append(record)
        log(f"epoch {epoch}: loss {record['loss']:.4f}, {epoch_seconds:.0f}s, validation "
            f"{VALIDATION_METRIC[0]} {VALIDATION_METRIC[1]} {score:.4f}, next-item HitRate@50 "
            f"{validation['next_item'].get('HitRate@50', 0.0):.4f}"
            + (f" ({epoch_config.interest_merge} merge; " + ", ".join(
                f"{c.interest_merge} {s:.4f}" for (_, c), s in zip(by_merge, scores, strict=True)) + ")"
               if len(merges) > 1 else ""))
        if score > best_score:
            best_score, best_state, stale = score, copy.deepcopy(model.state_dict()), 0
            result.best_epoch, result.best_validation, best_config = epoch, validation, epoch_config
        else:
            stale += 1
            if config.patience and stale >= config.patience:
                log(f"no better validation {VALIDATION_METRIC[1]} for {stale} epochs: stopping")
                break
    if best_state is not None:
        model.load_state_dict(best_state)
    model.config = best_config
    model.label_aware_attention.power = float(config.attention_power)
    model.eval()
    result.train_seconds = time.perf_counter() - started
    return result


def merge_candidates(config: MindConfig, num_interests: int) -> list[MindConfig]:
    """The merges an epoch is validated with: the configured one, then (config.choose_merge, several
    interests, a merge other than the paper's) the paper's 'max'."""
    if config.choose_merge and num_interests > 1 and config.interest_merge != "max":
        return [config, config.replace(interest_merge="max")]
    return [config]


def evaluate_popular(data: Any, train_users: np.ndarray, users: np.ndarray,
                     holdout_fraction: float) -> dict[str, dict[str, float]]:
    """Most-popular (counts over the training users) on `users`."""
    popular = MostPopular(data.num_items, [data.sequences[int(u)] for u in train_users])
    return evaluate_scorer(popularity_scorer(popular), data.sequences, data.user_profile, users,
                           holdout_fraction)


def environment() -> dict[str, Any]:
    """What a trained model's numbers depend on beyond code, flags and seeds: the same run on another CPU or
    torch build can stop at another epoch (docs/MODEL.md, Round 12), so every run records it."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as handle:
            names = [line.split(":", 1)[1].strip() for line in handle if line.startswith("model name")]
        cpu = names[0] if names else cpu
    except OSError:
        pass
    return {"python": platform.python_version(), "torch": torch.__version__, "numpy": np.__version__,
            "cpu": cpu, "torch_threads": torch.get_num_threads()}


def write_run(run_dir: Path, result: TrainResult, data: Any, dataset_record: dict[str, Any]) -> str:
    """checkpoint.pt + metrics.json in run_dir; returns the model version."""
    run_dir.mkdir(parents=True, exist_ok=True)
    version = save_checkpoint(run_dir, result.model, vocabularies=vocabularies_of(data),
                              item_feature_matrix=data.item_features, dataset=dataset_record)
    metrics = {
        "model_kind": result.model.model_kind,
        "model_version": version,
        "config": result.model.config.to_dict(),
        "dataset": dataset_record,
        "num_samples": result.num_samples,
        "train_seconds": round(result.train_seconds, 1),
        "best_epoch": result.best_epoch,
        "validation": result.best_validation,
        "epochs": result.epochs,
        "environment": environment(),
    }
    (run_dir / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    return version
