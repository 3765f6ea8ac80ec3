"""Screen recall against coverage of a trained MIND on VALIDATION users: merge rule × λ × attribution.

    .venv/bin/python tests/benchmarks/screen_coverage.py runs/bench-quality/ml-100k/seed-0/mind \
        --data ml-100k --split-seed 0 --out runs/coverage.jsonl

No training: the checkpoint's model is scored on its split's validation users (test users are never read)
with `export.merge.merge_interests` over the whole catalogue (every interest's list complete, the history
excluded), so the greedy and its ties are the served ones. For each merge rule (`RULES`, as
screen_merges.py), diversity λ and attribution of an item to an interest w(i):
- `nearest`: argmax_k e_iᵀ v_k, the served attribution (docs/MODEL.md, Round 10);
- `term`: the mixture's largest term, argmax_k e_iᵀ v_k / T + b_k (Round 9's), as the greedy's category.
Each row reports split Recall@50, next HitRate@50 and the merged lists' coverage (interests contributing,
dominant share) counted both ways, so a rule's list and its attribution are judged apart.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import torch
from common import checkpoint_parser, emit_row
from screen_merges import ruled

from export.merge import InterestList, Mixture, merge_interests
from model.checkpoint import load_checkpoint
from model.cli import _split, load_data
from model.evaluate import model_interests, next_item_cases, user_split_cases

RULES: dict[str, dict[str, object]] = {
    "max": {"interest_merge": "max"},
    "lse": {"interest_merge": "mixture", "interest_prior_weight": 0.0},
    **{f"mix {w:g} g0.5": {"interest_merge": "mixture", "interest_prior_weight": w,
                           "interest_prior_decay": 0.5} for w in (0.25, 0.5, 1.0)},
}
DIVERSITIES = (0.0, 0.5, 1.0, 2.0, 4.0)
N = 50


@dataclasses.dataclass(frozen=True)
class LargestTermMixture(Mixture):
    """The mixture rule, with each item credited to the interest of its largest term (Round 9's)."""

    def scores(self, inner: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        scores, _ = super().scores(inner)
        terms = np.asarray(inner, dtype=np.float64) / self.temperature + np.asarray(self.bias)[:, None]
        return scores, terms.argmax(axis=0)


def _coverage(owners: np.ndarray) -> tuple[int, float]:
    """(interests contributing, dominant share) of a merged list whose items have these owners."""
    counts = np.bincount(owners)
    return int((counts > 0).sum()), float(counts.max() / len(owners))


def screen(checkpoint: Path, data_name: str, split_seed: int, cache_dir: Path) -> dict[str, Any]:
    """Mean validation metrics per (rule, attribution, λ) of one trained MIND."""
    model = load_checkpoint(checkpoint).model
    data = load_data(data_name, cache_dir)
    split = _split(data, SimpleNamespace(valid_fraction=0.1, test_fraction=0.1, split_seed=split_seed))
    window, temperature = model.config.max_history_length, model.config.logit_temperature
    with torch.no_grad():
        items = model.all_item_embeddings().numpy().astype(np.float64)
    every_item = np.arange(1, len(items))
    sums: dict[str, dict[str, float]] = {}
    for kind, cases in (("split", user_split_cases(data.sequences, split.valid_users,
                                                   model.config.holdout_fraction)),
                        ("next", next_item_cases(data.sequences, split.valid_users))):
        histories = [case.history for case in cases]
        profiles = data.user_profile[[case.user for case in cases]]
        for name, rule in RULES.items():
            interests = model_interests(ruled(model, rule), histories, profiles, window)
            attributions = ("nearest",) if rule["interest_merge"] == "max" else ("nearest", "term")
            for row, case in enumerate(cases):
                vectors = interests.vectors[row][interests.mask[row]].astype(np.float64)
                everything = vectors @ items.T                                         # (K'u, I)
                nearest = everything.argmax(axis=0)                                    # (I,) by item index
                candidates = np.setdiff1d(every_item, case.history)
                lists = [InterestList(candidates[np.argsort(-s, kind="stable")], np.sort(s)[::-1],
                                      complete=True) for s in everything[:, candidates]]
                for attribution in attributions:
                    mixture = None
                    if rule["interest_merge"] == "mixture":
                        kind_of = LargestTermMixture if attribution == "term" else Mixture
                        mixture = kind_of(interests.bias[row][interests.mask[row]], temperature,
                                          lambda index, v=vectors: v @ items[index].T)
                    for diversity in DIVERSITIES:
                        merged = merge_interests(lists, N, diversity=diversity, mixture=mixture)
                        key = f"{name}|{attribution}|{diversity:g}"
                        total = sums.setdefault(key, {"split": 0.0, "next": 0.0, "split_users": 0,
                                                      "next_users": 0})
                        total[kind] += np.isin(case.targets, merged.item_index).sum() / len(case.targets)
                        total[f"{kind}_users"] += 1
                        if kind == "split":
                            for label, owners in (("listed", merged.slot),
                                                  ("nearest", nearest[merged.item_index])):
                                count, share = _coverage(owners)
                                for metric, value in ((f"contributing_{label}", count),
                                                      (f"dominant_{label}", share)):
                                    total[metric] = total.get(metric, 0.0) + value
    results = {}
    for key, total in sums.items():
        users = {"split": total.pop("split_users"), "next": total.pop("next_users")}
        results[key] = {metric: round(value / users["next" if metric == "next" else "split"], 4)
                        for metric, value in total.items()}
    return {"checkpoint": str(checkpoint), "data": data_name, "split_seed": split_seed, "results": results}


def main() -> None:
    args = checkpoint_parser(__doc__.split("\n\n")[0]).parse_args()
    emit_row(screen(args.checkpoint, args.data, args.split_seed, args.cache_dir), args.out)


if __name__ == "__main__":
    main()
