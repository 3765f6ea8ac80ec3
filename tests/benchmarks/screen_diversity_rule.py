"""Choose the recall diversity λ of a trained MIND by a rule on VALIDATION users, then (optionally) score it.

    .venv/bin/python tests/benchmarks/screen_diversity_rule.py runs/bench-quality/ml-100k/seed-0/mind \
        --data ml-100k --split-seed 0 --out runs/diversity-rule.jsonl [--test]

No training. The checkpoint's own merge rule, with each item credited to its nearest interest (the served
merge, `export.merge.merge_interests` over the whole catalogue, the history excluded), at each λ of
`export.evaluate.DIVERSITIES`. Two rules pick λ from the validation users' split Recall@50 alone:
- `best`: the λ with the highest mean (today's `export.evaluate.choose_diversity`);
- `one-se`: the largest λ whose mean is within one standard error of the best's, the standard error being
  that of the per-user difference between the two lists (paired: both are scored on the same users).
With `--test` the test users are scored too, after both choices are fixed and written to the row.
Coverage is reported for all users and for users with every interest valid (K'u = K).
"""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import numpy as np
import torch
from common import checkpoint_parser, emit_row, screening_summary

from export.evaluate import DIVERSITIES
from export.merge import InterestList, Mixture, merge_interests
from model.checkpoint import load_checkpoint
from model.cli import _split, load_data
from model.evaluate import model_interests, next_item_cases, user_split_cases

N = 50


def per_user(model: Any, data: Any, users: np.ndarray) -> dict[str, dict[str, np.ndarray]]:
    """{λ: {metric: (users,) array}}: split recall, next hit, interests contributing, dominant share, K'u."""
    window, temperature = model.config.max_history_length, model.config.logit_temperature
    mixture_rule = model.config.interest_merge == "mixture"
    with torch.no_grad():
        items = model.all_item_embeddings().numpy().astype(np.float64)
    every_item = np.arange(1, len(items))
    out: dict[str, dict[str, list[float]]] = {f"{d:g}": {} for d in DIVERSITIES}
    for kind, cases in (("split", user_split_cases(data.sequences, users, model.config.holdout_fraction)),
                        ("next", next_item_cases(data.sequences, users))):
        interests = model_interests(model, [case.history for case in cases],
                                    data.user_profile[[case.user for case in cases]], window)
        for row, case in enumerate(cases):
            valid = interests.mask[row]
            vectors = interests.vectors[row][valid].astype(np.float64)
            everything = vectors @ items.T                                             # (K'u, I)
            candidates = np.setdiff1d(every_item, case.history)
            lists = [InterestList(candidates[np.argsort(-s, kind="stable")], np.sort(s)[::-1], complete=True)
                     for s in everything[:, candidates]]
            mixture = None
            if mixture_rule:
                mixture = Mixture(interests.bias[row][valid], temperature,
                                  lambda index, v=vectors: v @ items[index].T)
            for diversity in DIVERSITIES:
                merged = merge_interests(lists, N, diversity=diversity, mixture=mixture)
                values = out[f"{diversity:g}"]
                found = np.isin(case.targets, merged.item_index).sum()
                if kind == "next":
                    values.setdefault("next_hit", []).append(float(found > 0))
                    continue
                counts = np.bincount(merged.slot, minlength=len(vectors))
                values.setdefault("split_recall", []).append(found / len(case.targets))
                values.setdefault("contributing", []).append(float((counts > 0).sum()))
                values.setdefault("dominant", []).append(float(counts.max() / len(merged.slot)))
                values.setdefault("valid_interests", []).append(float(valid.sum()))
    return {key: {metric: np.asarray(v) for metric, v in values.items()} for key, values in out.items()}


def choose(values: dict[str, dict[str, np.ndarray]]) -> dict[str, Any]:
    """The `best` and `one-se` λ from per-user split recall, with each λ's paired standard error."""
    means = {key: float(v["split_recall"].mean()) for key, v in values.items()}
    best = min(means, key=lambda key: (-means[key], float(key)))
    base = values[best]["split_recall"]
    se = {}
    for key, v in values.items():
        diff = v["split_recall"] - base
        se[key] = float(diff.std(ddof=1) / np.sqrt(len(diff))) if len(diff) > 1 else 0.0
    within = [key for key in values if means[key] >= means[best] - se[key]]
    return {"best": float(best), "one-se": max(float(key) for key in within), "paired_se": se}


def main() -> None:
    parser = checkpoint_parser(__doc__.split("\n\n")[0])
    parser.add_argument("--test", action="store_true", help="also score the test users at every λ")
    args = parser.parse_args()
    model = load_checkpoint(args.checkpoint).model
    data = load_data(args.data, args.cache_dir)
    split = _split(data, SimpleNamespace(valid_fraction=0.1, test_fraction=0.1, split_seed=args.split_seed))
    validation = per_user(model, data, split.valid_users)
    row: dict[str, Any] = {"checkpoint": str(args.checkpoint), "data": args.data,
                           "split_seed": args.split_seed, "merge": model.config.interest_merge,
                           "chosen": choose(validation),
                           "validation": screening_summary(validation, model.num_interests)}
    if args.test:
        row["test"] = screening_summary(per_user(model, data, split.test_users), model.num_interests)
    emit_row(row, args.out)


if __name__ == "__main__":
    main()
