"""Offline evaluation: exact retrieval over the whole item corpus, HitRate / Recall / NDCG at N.

Two protocols, both on users the model never trained on:

- next-item (the paper's HitRate@N): history = all of a user's behaviours but the last, target = the last.
- user-split: history = the first 80% (config.holdout_fraction) of the user's time-ordered behaviours,
  targets = the rest (the ComiRec-style protocol for held-out users).

Scoring is the paper's f_score: an item's score is the max over the user's valid interests of v_k . e_i,
computed for every item (no sampled negatives, no approximate index). Items already in the history are
never recommended (MovieLens users do not rate a movie twice; a target that repeats a history item could
then never be hit, so such targets are dropped and a next-item user whose target repeats is skipped).
The model sees the most recent config.max_history_length items of the history; exclusion uses all of it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch

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


def f_scores(interest_vectors: torch.Tensor, valid_interest_mask: torch.Tensor,
             item_embeddings: torch.Tensor) -> torch.Tensor:
    """f_score(V_u, e_i) = max over valid k of v_k . e_i. (B, K, d), (B, K), (N, d) -> (B, N)."""
    scores = torch.einsum("bkd,nd->bkn", interest_vectors, item_embeddings)
    scores = scores.masked_fill(~valid_interest_mask.unsqueeze(-1), -torch.inf)
    return scores.max(dim=1).values


def model_scorer(model: RetrievalModel, max_history_length: int) -> Scorer:
    """A Scorer from a trained model: interests of each history, f_score against every item."""
    model.eval()
    with torch.no_grad():
        item_table = model.all_item_embeddings()

    def score(histories: Sequence[np.ndarray], profiles: np.ndarray) -> np.ndarray:
        history, mask = pad_histories(histories, max_history_length)
        with torch.no_grad():
            output = model.interests(torch.from_numpy(history), torch.from_numpy(mask),
                                     torch.from_numpy(np.asarray(profiles, dtype=np.int64)))
            return f_scores(output.interest_vectors, output.valid_interest_mask, item_table).numpy()

    return score


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
    widths = [max(len(str(r[i])) for r in [headers, *rows]) for i in range(len(headers))]
    lines = ["  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True))]
    lines.append("  ".join("-" * w for w in widths))
    lines += ["  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) for row in rows]
    return "\n".join(lines)
