"""Choose the mixture merge's `interest_prior_decay` for trained MIND models by a rule on VALIDATION users.

    # 1. per model (no training): every decay of DECAYS on the validation users, per-user values to an .npz
    .venv/bin/python tests/benchmarks/screen_prior_decay.py RUN/mind --data ml-100k --split-seed 0 \
        --save runs/r12/decay-100k-0.npz --out runs/r12/decay.jsonl
    # 2. the rule over the models of one data set (their validation users pooled)
    .venv/bin/python tests/benchmarks/screen_prior_decay.py --choose runs/r12/decay-100k-*.npz
    # 3. only after the choice is written down: the same on the test users
    .venv/bin/python tests/benchmarks/screen_prior_decay.py RUN/mind --data ml-100k --split-seed 0 --test ...

The mixture weighs interest k by pi_k, its share of the last routing round's coupling, each behaviour counting
decay ** age (age 0 = the newest). Each model was trained with one decay (its config); here only the decay
recall serves with changes, which moves the merged list and not the interest vectors. Per user: split
Recall@50, next-item HitRate@50 and, for users whose history fills the window, the share of the merged top
50 kept after one real new event (model/evaluate.per_user_diagnostics), plus the coverage of the top 50.

The rule (`choose`), fixed before its first run: pool the validation users of one data set's models; a decay
is admissible when its mean split Recall@50 and its mean next-item HitRate@50 each lie within one paired
standard error of the trained decay's (paired: the same users, the same model); the choice is the admissible
decay with the highest mean share of the top 50 kept.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
from common import checkpoint_parser, emit_row, screening_summary

from model.checkpoint import load_checkpoint
from model.cli import _split, load_data
from model.evaluate import (
    model_scorer,
    next_item_cases,
    per_user_diagnostics,
    top_n_excluding_history,
    user_split_cases,
)

N = 50
DECAYS = (0.5, 0.7, 0.85, 1.0)
METRICS = ("split_recall", "next_hit", "kept", "contributing", "dominant", "valid_interests")


def recall_per_user(model: Any, data: Any, cases: list, batch_size: int = 512) -> np.ndarray:
    """(cases,) Recall@N of each case under the model's own merge."""
    scorer = model_scorer(model, model.config.max_history_length)
    values = []
    for start in range(0, len(cases), batch_size):
        chunk = cases[start:start + batch_size]
        histories = [case.history for case in chunk]
        top = top_n_excluding_history(scorer(histories, data.user_profile[[case.user for case in chunk]]),
                                      histories, N)
        values += [np.isin(case.targets, row).sum() / len(case.targets)
                   for case, row in zip(chunk, top, strict=True)]
    return np.asarray(values, dtype=np.float64)


def per_user(model: Any, data: Any, users: np.ndarray) -> dict[str, dict[str, np.ndarray]]:
    """{decay: {metric: per-user array}} for every decay of DECAYS (the model's config restored after)."""
    trained = model.config
    out = {}
    try:
        for decay in DECAYS:
            model.config = replace(trained, interest_prior_decay=decay)
            interests, stable = per_user_diagnostics(model, trained.max_history_length, data.sequences,
                                                     data.user_profile, users, trained.holdout_fraction, N)
            out[f"{decay:g}"] = {
                "split_recall": recall_per_user(
                    model, data, user_split_cases(data.sequences, users, trained.holdout_fraction)),
                "next_hit": recall_per_user(model, data, next_item_cases(data.sequences, users)),
                "kept": stable["top_n_survival"],
                "contributing": interests["interests_contributing"].astype(np.float64),
                "dominant": interests["dominant_share"],
                "valid_interests": interests["num_interests"].astype(np.float64),
            }
    finally:
        model.config = trained
    return out


def choose(pooled: dict[str, dict[str, np.ndarray]], trained: str) -> dict[str, Any]:
    """The module docstring's rule on pooled per-user values; the means and paired errors it used."""
    base = {metric: float(pooled[trained][metric].mean()) for metric in ("split_recall", "next_hit")}
    table: dict[str, dict[str, float]] = {}
    for key, v in pooled.items():
        row = {"kept": float(v["kept"].mean())}
        for metric in base:
            diff = v[metric] - pooled[trained][metric]
            row[metric] = float(v[metric].mean())
            row[f"{metric}_paired_se"] = (float(diff.std(ddof=1) / np.sqrt(len(diff)))
                                          if len(diff) > 1 else 0.0)
        row["admissible"] = all(row[m] >= base[m] - row[f"{m}_paired_se"] for m in base)
        table[key] = row
    admissible = [key for key, row in table.items() if row["admissible"]]
    chosen = max(admissible, key=lambda key: (table[key]["kept"], -float(key)))
    return {"chosen": float(chosen), "trained": float(trained), "table": table}


def pool(paths: list[Path]) -> tuple[dict[str, dict[str, np.ndarray]], str]:
    """Concatenate the per-user values saved by several models; the decay they were trained with."""
    pooled: dict[str, dict[str, list[np.ndarray]]] = {}
    trained = set()
    for path in paths:
        with np.load(path) as saved:
            trained.add(f"{float(saved['trained_decay']):g}")
            for name in saved.files:
                if "/" in name:
                    decay, metric = name.split("/")
                    pooled.setdefault(decay, {}).setdefault(metric, []).append(saved[name])
    if len(trained) != 1:
        sys.exit(f"screen_prior_decay: the models were trained with different decays {sorted(trained)}")
    values = {d: {m: np.concatenate(v) for m, v in metrics.items()} for d, metrics in pooled.items()}
    return values, trained.pop()


def main() -> None:
    if "--choose" in sys.argv:
        parser = argparse.ArgumentParser(description="apply the rule to saved validation values")
        parser.add_argument("--choose", type=Path, nargs="+", required=True)
        parser.add_argument("--out", type=Path, default=None)
        args = parser.parse_args()
        pooled, trained = pool(args.choose)
        emit_row({"files": [str(p) for p in args.choose], **choose(pooled, trained)}, args.out)
        return
    parser = checkpoint_parser(__doc__.split("\n\n")[0])
    parser.add_argument("--save", type=Path, default=None, help="write the per-user values to this .npz")
    parser.add_argument("--test", action="store_true", help="score the test users, not the validation users")
    args = parser.parse_args()
    model = load_checkpoint(args.checkpoint).model
    data = load_data(args.data, args.cache_dir)
    split = _split(data, SimpleNamespace(valid_fraction=0.1, test_fraction=0.1, split_seed=args.split_seed))
    users = split.test_users if args.test else split.valid_users
    values = per_user(model, data, users)
    if args.save:
        args.save.parent.mkdir(parents=True, exist_ok=True)
        np.savez(args.save, trained_decay=model.config.interest_prior_decay,
                 **{f"{d}/{m}": v for d, metrics in values.items() for m, v in metrics.items()})
    emit_row({"checkpoint": str(args.checkpoint), "data": args.data, "split_seed": args.split_seed,
              "users": "test" if args.test else "validation", "merge": model.config.interest_merge,
              "trained_decay": model.config.interest_prior_decay,
              "summary": screening_summary(values, model.num_interests)}, args.out)


if __name__ == "__main__":
    main()
