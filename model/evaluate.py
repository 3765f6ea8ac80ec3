"""Offline evaluation: exact retrieval over the whole item corpus, HitRate / Recall / NDCG at N.

Two protocols, both on users the model never trained on:

- next-item (the paper's HitRate@N): history = all of a user's behaviours but the last, target = the last.
- user-split: history = the first 80% (config.holdout_fraction) of the user's time-ordered behaviours,
  targets = the rest (the ComiRec-style protocol for held-out users).

Scoring is recall's: `RetrievalModel.recall_scores` under config.interest_merge (the paper's f_score, the max
over the user's valid interests of v_k . e_i, or the interests' mixture), computed for every item (no
sampled negatives, no approximate index). Items already in the history are
never recommended (MovieLens users do not rate a movie twice; a target that repeats a history item could
then never be hit, so such targets are dropped and a next-item user whose target repeats is skipped).
The model sees the most recent config.max_history_length items of the history; exclusion uses all of it.

Beside the metrics, `diagnose_interests` measures whether a model's interests are really several (see
model/diagnostics.py) on the same users' user-split histories, and their stability under one new event.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np
import torch

from model import diagnostics
from model.baselines import MostPopular
from model.mind import RetrievalModel

CUTOFFS = (20, 50)
PROTOCOLS = ("next_item", "user_split")

# (histories: list of int64 arrays, profiles (B, P)) -> scores (B, num_items + 1), higher is better
Scorer = Callable[[Sequence[np.ndarray], np.ndarray], np.ndarray]


@dataclass
class EvaluationCase:
    """One user's query: the history the model sees, the items it must find, and who it is."""

    user: int
    history: np.ndarray   # time-ordered item indices
    targets: np.ndarray   # item indices to retrieve (not in history)


def next_item_cases(sequences: Sequence[np.ndarray], users: np.ndarray) -> list[EvaluationCase]:
    """History = all but the last behaviour, target = the last one (users with < 2 behaviours skipped)."""
    cases = []
    for user in users:
        sequence = sequences[int(user)]
        if len(sequence) < 2 or sequence[-1] in sequence[:-1]:
            continue
        cases.append(EvaluationCase(int(user), sequence[:-1], sequence[-1:]))
    return cases


def user_split_cases(sequences: Sequence[np.ndarray], users: np.ndarray,
                     holdout_fraction: float = 0.2) -> list[EvaluationCase]:
    """History = the first (1 - holdout_fraction) of the behaviours (at least one), targets = the rest."""
    cases = []
    for user in users:
        sequence = sequences[int(user)]
        if len(sequence) < 2:
            continue
        cut = min(max(1, int(np.floor(len(sequence) * (1 - holdout_fraction)))), len(sequence) - 1)
        history = sequence[:cut]
        targets = np.setdiff1d(np.unique(sequence[cut:]), history)
        if len(targets):
            cases.append(EvaluationCase(int(user), history, targets))
    return cases


def top_n_excluding_history(scores: np.ndarray, histories: Sequence[np.ndarray], n: int) -> np.ndarray:
    """(B, num_items + 1) scores -> (B, n) item indices, best first; padding and history items excluded."""
    scores = np.array(scores, dtype=np.float64, copy=True)
    scores[:, 0] = -np.inf
    for row, history in enumerate(histories):
        scores[row, history] = -np.inf
    n = min(n, scores.shape[1] - 1)
    top = np.argpartition(-scores, n - 1, axis=1)[:, :n]
    order = np.argsort(-np.take_along_axis(scores, top, axis=1), axis=1, kind="stable")
    return np.take_along_axis(top, order, axis=1)


def ranking_metrics(top: np.ndarray, targets: Sequence[np.ndarray],
                    cutoffs: Sequence[int] = CUTOFFS) -> dict[str, float]:
    """Mean HitRate@N (any target in the top N), Recall@N (share of targets found) and NDCG@N."""
    discounts = 1.0 / np.log2(np.arange(2, top.shape[1] + 2))
    totals = {f"{name}@{n}": 0.0 for n in cutoffs for name in ("HitRate", "Recall", "NDCG")}
    for row, target in enumerate(targets):
        relevant = np.isin(top[row], target)
        for n in cutoffs:
            hits = relevant[:n]
            found = int(hits.sum())
            ideal = discounts[: min(len(target), n)].sum()
            totals[f"HitRate@{n}"] += float(found > 0)
            totals[f"Recall@{n}"] += found / len(target)
            totals[f"NDCG@{n}"] += float(discounts[:n][hits].sum() / ideal)
    count = max(len(targets), 1)
    return {key: value / count for key, value in totals.items()}


def evaluate_cases(scorer: Scorer, cases: Sequence[EvaluationCase], user_profile: np.ndarray,
                   cutoffs: Sequence[int] = CUTOFFS, batch_size: int = 512) -> dict[str, float]:
    """Score every item for each case, take the top max(cutoffs), return the mean metrics (+ "users")."""
    tops = []
    for start in range(0, len(cases), batch_size):
        chunk = cases[start:start + batch_size]
        histories = [case.history for case in chunk]
        scores = scorer(histories, user_profile[[case.user for case in chunk]])
        tops.append(top_n_excluding_history(scores, histories, max(cutoffs)))
    if not tops:
        return {"users": 0}
    metrics = ranking_metrics(np.concatenate(tops), [case.targets for case in cases], cutoffs)
    metrics["users"] = len(cases)
    return metrics


def pad_histories(histories: Sequence[np.ndarray], max_length: int) -> tuple[np.ndarray, np.ndarray]:
    """Keep the most recent max_length items of each history; left-aligned, padded with 0 after them.

    -> history (B, L) int64, history_mask (B, L) bool, L = longest kept history (at least 1).
    """
    kept = [np.asarray(h[-max_length:], dtype=np.int64) if max_length else np.zeros(0, np.int64)
            for h in histories]
    width = max([len(h) for h in kept] + [1])
    history = np.zeros((len(kept), width), dtype=np.int64)
    for row, items in enumerate(kept):
        history[row, : len(items)] = items
    return history, history > 0


def model_scorer(model: RetrievalModel, max_history_length: int) -> Scorer:
    """A Scorer from a trained model: interests of each history, every item's `recall_scores`."""
    model.eval()
    with torch.no_grad():
        item_table = model.all_item_embeddings()

    def score(histories: Sequence[np.ndarray], profiles: np.ndarray) -> np.ndarray:
        history, mask = pad_histories(histories, max_history_length)
        mask_t = torch.from_numpy(mask)
        with torch.no_grad():
            output = model.interests(torch.from_numpy(history), mask_t,
                                     torch.from_numpy(np.asarray(profiles, dtype=np.int64)))
            return model.recall_scores(output, mask_t, item_table).numpy()

    return score


class UserInterests(NamedTuple):
    """A batch of users' interests as recall merges them."""

    vectors: np.ndarray   # (B, K, d) float32
    mask: np.ndarray      # (B, K) bool
    bias: np.ndarray      # (B, K) float32: each interest's merge logit (`RetrievalModel.merge_bias`)


def model_interests(model: RetrievalModel, histories: Sequence[np.ndarray], profiles: np.ndarray,
                    max_history_length: int, batch_size: int = 512) -> UserInterests:
    """Interest vectors of histories (each time-ordered item indices; the most recent max_history_length
    seen).

    Args:
        histories: B int arrays; profiles: (B, P) int64.
    Returns:
        UserInterests with B rows.
    """
    model.eval()
    vectors, masks, biases = [], [], []
    for start in range(0, len(histories), batch_size):
        history, mask = pad_histories(histories[start:start + batch_size], max_history_length)
        mask_t = torch.from_numpy(mask)
        with torch.no_grad():
            output = model.interests(torch.from_numpy(history), mask_t,
                                     torch.from_numpy(np.asarray(profiles[start:start + batch_size],
                                                                 dtype=np.int64)))
            biases.append(model.merge_bias(output, mask_t).numpy())
        vectors.append(output.interest_vectors.numpy())
        masks.append(output.valid_interest_mask.numpy())
    if not vectors:
        k = model.num_interests
        return UserInterests(np.zeros((0, k, model.config.embedding_dim), np.float32), np.zeros((0, k), bool),
                             np.zeros((0, k), np.float32))
    return UserInterests(np.concatenate(vectors), np.concatenate(masks), np.concatenate(biases))


def diagnose_interests(model: RetrievalModel, max_history_length: int, sequences: Sequence[np.ndarray],
                       user_profile: np.ndarray, users: np.ndarray, holdout_fraction: float = 0.2,
                       n: int = 50, batch_size: int = 256) -> dict[str, Any]:
    """Are the interests really several, and do they hold still? On the user-split histories of `users`.

    `per_user_diagnostics` summarised over all users and per K'u (`diagnostics.summarize`):
    {"top_n", "interests", "stability"}.
    """
    n = min(n, model.spec.num_items)  # the catalogue without padding
    interests, stable = per_user_diagnostics(model, max_history_length, sequences, user_profile, users,
                                             holdout_fraction, n, batch_size)
    return {"top_n": n,
            "interests": diagnostics.summarize(interests) if interests else {},
            "stability": diagnostics.summarize(stable) if stable else {}}


def per_user_diagnostics(model: RetrievalModel, max_history_length: int, sequences: Sequence[np.ndarray],
                         user_profile: np.ndarray, users: np.ndarray, holdout_fraction: float = 0.2,
                         n: int = 50, batch_size: int = 256
                         ) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """Each user's interest and stability diagnostics, on the user-split histories of `users`.

    Interests: model/diagnostics.interest_diagnostics of each history (merged top-n without its items), one
    value per user of `users` with a history. Stability: for the users whose history fills the tower's
    window (len >= max_history_length), their real next event is appended (the window slides by one); both
    merged lists exclude the longer history (`diagnostics.stability`), one value per such user.

    Returns:
        (interests, stability): {name: (users,) array} each; empty dicts when there are no such users.
    """
    cases = user_split_cases(sequences, users, holdout_fraction)
    histories = [case.history for case in cases]
    profiles = user_profile[[case.user for case in cases]] if cases else user_profile[:0]
    now = model_interests(model, histories, profiles, max_history_length)
    temperature = model.config.logit_temperature
    mixture = model.config.interest_merge == "mixture"  # else the diagnostics' max-merge (no bias)
    with torch.no_grad():
        item_vectors = model.all_item_embeddings().numpy()
    n = min(n, len(item_vectors) - 1)
    per_user: dict[str, list[np.ndarray]] = {}
    full = [row for row, history in enumerate(histories) if len(history) >= max_history_length]
    after_histories = [sequences[cases[row].user][: len(histories[row]) + 1] for row in full]
    after = model_interests(model, after_histories, profiles[full], max_history_length)
    stable: dict[str, list[np.ndarray]] = {}
    for start in range(0, max(len(cases), len(full)), batch_size):
        rows = slice(start, start + batch_size)
        if start < len(cases):
            chunk = diagnostics.interest_diagnostics(now.vectors[rows], now.mask[rows], item_vectors,
                                                     histories[rows], n, now.bias[rows] if mixture else None,
                                                     temperature)
            for name, values in chunk.items():
                per_user.setdefault(name, []).append(values)
        if start < len(full):
            before = full[rows]
            chunk = diagnostics.stability(now.vectors[before], now.mask[before], after.vectors[rows],
                                          after.mask[rows], item_vectors, after_histories[rows], n,
                                          (now.bias[before], after.bias[rows]) if mixture else None,
                                          temperature)
            for name, values in chunk.items():
                stable.setdefault(name, []).append(values)
    return ({k: np.concatenate(v) for k, v in per_user.items()},
            {k: np.concatenate(v) for k, v in stable.items()})


def popularity_scorer(popular: MostPopular) -> Scorer:
    def score(histories: Sequence[np.ndarray], profiles: np.ndarray) -> np.ndarray:
        return popular.scores(len(histories))

    return score


def evaluate_scorer(scorer: Scorer, sequences: Sequence[np.ndarray], user_profile: np.ndarray,
                    users: np.ndarray, holdout_fraction: float = 0.2,
                    cutoffs: Sequence[int] = CUTOFFS) -> dict[str, dict[str, float]]:
    """Both protocols on `users` -> {"next_item": {...}, "user_split": {...}}."""
    return {
        "next_item": evaluate_cases(scorer, next_item_cases(sequences, users), user_profile, cutoffs),
        "user_split": evaluate_cases(scorer, user_split_cases(sequences, users, holdout_fraction),
                                     user_profile, cutoffs),
    }


def format_table(results: dict[str, dict[str, dict[str, float]]], cutoffs: Sequence[int] = CUTOFFS) -> str:
    """One row per model: next-item HitRate@N, then user-split HitRate/Recall/NDCG@N."""
    columns = [("next_item", f"HitRate@{n}") for n in cutoffs]
    columns += [("user_split", f"{m}@{n}") for n in cutoffs for m in ("HitRate", "Recall", "NDCG")]
    headers = ["model"] + [("next " if p == "next_item" else "split ") + m for p, m in columns]
    rows = [[name] + [f"{metrics[p].get(m, float('nan')):.4f}" for p, m in columns]
            for name, metrics in results.items()]
    return text_table(headers, rows)


def text_table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """Left-aligned columns under a dashed header rule."""
    widths = [max(len(str(r[i])) for r in [headers, *rows]) for i in range(len(headers))]
    lines = ["  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True))]
    lines.append("  ".join("-" * w for w in widths))
    lines += ["  ".join(str(c).ljust(w) for c, w in zip(row, widths, strict=True)) for row in rows]
    return "\n".join(lines)


DIAGNOSTIC_COLUMNS = (
    ("interests", "users", "users", "{:d}"),
    ("interests", "mean_pairwise_cosine", "pair cos", "{:.3f}"),
    ("interests", "interests_contributing", "interests in top-N", "{:.2f}"),
    ("interests", "dominant_share", "dominant share", "{:.3f}"),
    ("interests", "norm_ratio", "norm max/min", "{:.2f}"),
    ("stability", "users", "full-window users", "{:d}"),
    ("stability", "same_slot_cosine", "same-slot cos", "{:.3f}"),
    ("stability", "matched_slot_cosine", "matched cos", "{:.3f}"),
    ("stability", "top_n_survival", "top-N kept", "{:.3f}"),
)


def format_diagnostics(diagnosed: dict[str, dict[str, Any]]) -> str:
    """One row per (model, K'u group: all users, then each K'u) of `diagnose_interests` results."""
    headers = ["model", "K'u"] + [label for _, _, label, _ in DIAGNOSTIC_COLUMNS]
    rows = []
    for name, result in diagnosed.items():
        groups = sorted(result["interests"], key=lambda g: (g != "all", int(g[2:]) if g != "all" else 0))
        for group in groups:
            row = [name, group.removeprefix("K=")]
            for part, key, _, pattern in DIAGNOSTIC_COLUMNS:
                value = result[part].get(group, {}).get(key)
                row.append("-" if value is None else pattern.format(value))
            rows.append(row)
    return text_table(headers, rows)
