"""Offline evaluation of what is served: the artifact's ONNX tower, its item vectors and `export.merge`.

`mind-model evaluate` scores the PyTorch model with its merge; this scores the artifact the way
`streams.recall` answers, for each diversity λ: raw-id histories and profiles through `UserTowerRuntime`, one
inner-product ranking per valid interest over the artifact's item vectors (history items left out, as
`exclude`), merged by `merge_with_search` (the served merge and its deepening search). The users and the two
protocols are model/evaluate.py's: the run's validation and test users (the split recorded in the manifest),
next-item HitRate@n and user-split HitRate/Recall/NDCG@n, plus the coverage of the merged lists per K'u
(interests contributing, dominant interest's share).

The serving default λ is chosen on validation users only: the λ with the best validation user-split
Recall@n (the smaller λ on equal values); test figures are reported beside it, never used to choose.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from export.artifact import ArtifactError
from export.merge import InterestList, MergedList, Mixture, merge_with_search, validate_diversity
from export.runtime import UserTowerRuntime

DIVERSITIES = (0.0, 0.25, 0.5, 1.0)
GROUPS = ("validation", "test")


def interest_rankings(interest_vectors: np.ndarray, item_vectors: np.ndarray,
                      excluded: np.ndarray) -> list[tuple[np.ndarray, np.ndarray]]:
    """Each interest's full ranking of the items not excluded, as a vector store would return it.

    Args:
        interest_vectors: (K'u, d) the user's valid interests.
        item_vectors: (N + 1, d) the artifact's item table (row 0 = padding, never ranked).
        excluded: item indices left out (the user's history).
    Returns:
        per interest (item indices (N',) best first, their inner products (N',) float64); equal scores by
        smaller item index.
    """
    keep = np.ones(len(item_vectors), dtype=bool)
    keep[0] = False
    keep[np.asarray(excluded, dtype=np.int64)] = False
    candidates = np.flatnonzero(keep)
    scores = interest_vectors.astype(np.float64) @ item_vectors[candidates].astype(np.float64).T   # (K'u, N')
    rankings = []
    for row in scores:
        order = np.argsort(-row, kind="stable")
        rankings.append((candidates[order], row[order]))
    return rankings


def served_merge(rankings: Sequence[tuple[np.ndarray, np.ndarray]], n: int, diversity: float,
                 mixture: Mixture | None = None) -> MergedList:
    """The served merge over full rankings, searched as `streams.recall` searches (top-depth, deepening)."""
    def search(depth: int) -> list[InterestList]:
        return [InterestList(items[:depth], scores[:depth], complete=len(items) <= depth)
                for items, scores in rankings]

    return merge_with_search(search, n, diversity=diversity, mixture=mixture)


def user_mixture(runtime: UserTowerRuntime, interest_vectors: np.ndarray, interest_bias: np.ndarray,
                 item_vectors: np.ndarray) -> Mixture | None:
    """The artifact's 'mixture' rule for one user's valid interests (K'u, d) and biases (K'u,); None = max."""
    merge = runtime.manifest.merge
    if merge["rule"] != "mixture":
        return None
    vectors = interest_vectors.astype(np.float64)
    return Mixture(interest_bias, float(merge["temperature"]),
                   lambda items: vectors @ item_vectors[items].astype(np.float64).T)


def _metrics(tops: list[np.ndarray], targets: Sequence[np.ndarray], n: int) -> dict[str, float]:
    from model.evaluate import ranking_metrics

    padded = np.zeros((len(tops), n), dtype=np.int64)   # item 0 (padding) is never a target
    for row, top in enumerate(tops):
        padded[row, : len(top)] = top
    metrics = ranking_metrics(padded, targets, (n,)) if tops else {}
    return {**{k: round(v, 6) for k, v in metrics.items()}, "users": len(tops)}


def _coverage(merged: Sequence[MergedList], num_interests: np.ndarray) -> dict[str, Any]:
    from model.diagnostics import contribution, summarize

    contributing = np.zeros(len(merged))
    dominant = np.zeros(len(merged))
    for row, result in enumerate(merged):
        if len(result.slot):
            counts, share = contribution(result.slot[None, :], np.ones((1, int(result.slot.max()) + 1), bool))
            contributing[row], dominant[row] = counts[0], share[0]
        else:
            contributing[row] = dominant[row] = np.nan
    return summarize({"num_interests": num_interests, "interests_contributing": contributing,
                      "dominant_share": dominant})


def evaluate_users(runtime: UserTowerRuntime, data: Any, users: np.ndarray, holdout_fraction: float,
                   diversities: Sequence[float], n: int) -> dict[str, dict[str, Any]]:
    """{λ as text: {"next_item": metrics, "user_split": metrics, "coverage": per-K'u summary}} on `users`."""
    from model.evaluate import next_item_cases, user_split_cases

    item_vectors = np.vstack([np.zeros((1, runtime.manifest.embedding_dim), np.float32),
                              runtime.item_vectors()])
    fields = list(data.profile_vocabs)
    results: dict[str, dict[str, Any]] = {f"{d:g}": {} for d in diversities}
    for protocol, cases in (("next_item", next_item_cases(data.sequences, users)),
                            ("user_split", user_split_cases(data.sequences, users, holdout_fraction))):
        histories = [[data.item_ids[int(i)] for i in case.history] for case in cases]
        profiles = [{name: data.profile_vocabs[name][int(data.user_profile[case.user, column])]
                     for column, name in enumerate(fields)} for case in cases]
        output = runtime.infer_raw(histories, profiles)
        rankings = [interest_rankings(vectors[mask], item_vectors, case.history)
                    for vectors, mask, case in zip(output.interest_vectors, output.valid_interest_mask, cases,
                                                   strict=True)]
        mixtures = [user_mixture(runtime, vectors[mask], bias[mask], item_vectors)
                    for vectors, mask, bias in zip(output.interest_vectors, output.valid_interest_mask,
                                                   output.interest_bias, strict=True)]
        for diversity in diversities:
            merged = [served_merge(r, n, diversity, m) for r, m in zip(rankings, mixtures, strict=True)]
            key = f"{diversity:g}"
            results[key][protocol] = _metrics([m.item_index for m in merged], [c.targets for c in cases], n)
            if protocol == "user_split":
                results[key]["coverage"] = _coverage(merged, output.valid_interest_mask.sum(axis=1))
    return results


def choose_diversity(validation: dict[str, dict[str, Any]], n: int) -> float:
    """The λ with the best validation user-split Recall@n; the smaller λ on equal values."""
    return min((-entry["user_split"].get(f"Recall@{n}", 0.0), float(key))
               for key, entry in validation.items())[1]


def evaluate_artifact(artifact_dir: str | Path, *, cache_dir: str | Path = "data",
                      diversities: Sequence[float] = DIVERSITIES, groups: Sequence[str] = GROUPS,
                      n: int = 50) -> dict[str, Any]:
    """Score the served artifact on the held-out users of the run it was exported from.

    Raises ArtifactError naming what is missing (the dataset record, the dataset, other items).
    """
    from model.cli import UsageError, load_data
    from model.data import DataError, user_split

    diversities = [validate_diversity(d) for d in diversities]
    unknown = sorted(set(groups) - set(GROUPS))
    if unknown or not groups:
        raise ArtifactError(f"users {unknown or 'none'}: choose from {', '.join(GROUPS)}")
    runtime = UserTowerRuntime.load(artifact_dir)
    record = runtime.manifest.dataset
    if "source" not in record or "split" not in record:
        raise ArtifactError(f"{artifact_dir}/manifest.json records no dataset source and split; export it "
                            "from a run written by `mind-model train` or `compare`")
    try:
        data = load_data(record["source"], Path(cache_dir))
    except (UsageError, DataError, OSError) as error:
        raise ArtifactError(f"{artifact_dir}: cannot load its dataset {record['source']!r}: "
                            f"{error}") from None
    if list(data.item_ids) != list(runtime.vocab.item_ids):
        raise ArtifactError(f"{artifact_dir}: dataset {record['source']} has other items than the artifact; "
                            "export the artifact again from a run on the current dataset")
    s = record["split"]
    split = user_split(data, valid_fraction=s["valid_fraction"], test_fraction=s["test_fraction"],
                       seed=s["seed"])
    holdout_fraction = _holdout_fraction(runtime)
    users = {"validation": split.valid_users, "test": split.test_users}
    results = {group: evaluate_users(runtime, data, users[group], holdout_fraction, diversities, n)
               for group in groups}
    summary: dict[str, Any] = {"artifact": str(artifact_dir), "model_version": runtime.manifest.model_version,
                               "dataset": record, "n": n, "holdout_fraction": holdout_fraction,
                               "diversities": list(diversities), **results}
    if "validation" in results:
        summary["chosen_diversity"] = choose_diversity(results["validation"], n)
    return summary


def _holdout_fraction(runtime: UserTowerRuntime, default: float = 0.2) -> float:
    """The run's config.holdout_fraction (metrics.json next to the recorded checkpoint), else the default."""
    checkpoint = runtime.manifest.source.get("checkpoint")
    metrics = Path(checkpoint).with_name("metrics.json") if checkpoint else None
    if metrics is not None and metrics.is_file():
        return float(json.loads(metrics.read_text()).get("config", {}).get("holdout_fraction", default))
    return default


def format_evaluation(summary: dict[str, Any]) -> str:
    """One row per (users, λ): next-item HitRate@n, split HitRate/Recall@n, coverage for all users and the
    largest K'u; the chosen λ marked."""
    from model.evaluate import text_table

    n = summary["n"]
    headers = ["users", "diversity", f"next HitRate@{n}", f"split HitRate@{n}", f"split Recall@{n}",
               "interests in top-N (all / max K'u)", "dominant share (all / max K'u)"]
    rows = []
    for group in GROUPS:
        for key, entry in summary.get(group, {}).items():
            coverage = entry["coverage"]
            largest = max((g for g in coverage if g != "all"), key=lambda g: int(g[2:]), default="all")
            mark = " *" if group == "validation" and float(key) == summary.get("chosen_diversity") else ""
            rows.append([group, key + mark, f"{entry['next_item'].get(f'HitRate@{n}', float('nan')):.4f}",
                         f"{entry['user_split'].get(f'HitRate@{n}', float('nan')):.4f}",
                         f"{entry['user_split'].get(f'Recall@{n}', float('nan')):.4f}",
                         f"{_fmt(coverage['all'].get('interests_contributing'))} / "
                         f"{_fmt(coverage[largest].get('interests_contributing'))} ({largest})",
                         f"{_fmt(coverage['all'].get('dominant_share'))} / "
                         f"{_fmt(coverage[largest].get('dominant_share'))}"])
    return text_table(headers, rows)


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"
