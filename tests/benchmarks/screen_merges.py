"""Screen rules for merging a user's interests into one ranking, on VALIDATION users, one line of JSON each.

    .venv/bin/python tests/benchmarks/screen_merges.py --data ml-100k --split-seed 7 \
        --name prototype --overrides '{"routing_init": "prototype"}' --out runs/merges.jsonl

Trains MIND once (`model.train.train_model`, `MindConfig(**overrides)`, early-stopped on the validation
users) and scores the same validation users with each merge rule (docs/MODEL.md, Rounds 8 and 9). Test users
are never read. Each rule is `RetrievalModel.recall_scores` under a config.interest_merge setting:
- `max`: the paper's max-merge;
- `lse`: the mixture with equal weights (interest_prior_weight 0), so an item close to two interests ranks
  higher;
- `mix W gG`: the mixture with interest_prior_weight W and interest_prior_decay G.
"""

from __future__ import annotations

import copy
import json
import time
from types import SimpleNamespace

from common import emit_row, screening_arguments

from model.cli import _split, load_data
from model.config import MindConfig
from model.evaluate import evaluate_scorer, model_scorer
from model.mind import RetrievalModel
from model.train import train_model

RULES: dict[str, dict[str, object]] = {"max": {"interest_merge": "max"},
                                       "lse": {"interest_merge": "mixture", "interest_prior_weight": 0.0}}
RULES.update({f"mix {weight:g} g{decay:g}": {"interest_merge": "mixture", "interest_prior_weight": weight,
                                             "interest_prior_decay": decay}
              for decay in (1.0, 0.9, 0.8, 0.7, 0.5) for weight in (0.5, 1.0, 2.0)})


def ruled(model: RetrievalModel, rule: dict[str, object]) -> RetrievalModel:
    """The trained `model` with its merge settings replaced by `rule` (it shares the weights)."""
    copied = copy.copy(model)
    copied.config = model.config.replace(**rule)
    return copied


def rule_scorer(model: RetrievalModel, rule: dict[str, object]):
    """A `model.evaluate` Scorer of the trained `model` with its merge settings replaced by `rule`."""
    return model_scorer(ruled(model, rule), model.config.max_history_length)


def main() -> None:
    args = screening_arguments(__doc__.split("\n\n")[0])
    overrides = json.loads(args.overrides)
    config = MindConfig(**overrides)
    data = load_data(args.data, args.cache_dir)
    split = _split(data, SimpleNamespace(valid_fraction=0.1, test_fraction=0.1, split_seed=args.split_seed))
    started = time.perf_counter()
    result = train_model("mind", config, data, split.train_users, split.valid_users, progress=False,
                         threads=args.threads, log=lambda message: None)
    result.model.eval()
    rules = {}
    for name, rule in RULES.items():
        metrics = evaluate_scorer(rule_scorer(result.model, rule), data.sequences,
                                  data.user_profile, split.valid_users, config.holdout_fraction)
        rules[name] = {"valid_split_recall@50": round(metrics["user_split"]["Recall@50"], 4),
                       "valid_next_hitrate@50": round(metrics["next_item"]["HitRate@50"], 4)}
    row = {"name": args.name, "data": args.data, "split_seed": args.split_seed, "overrides": overrides,
           "best_epoch": result.best_epoch, "seconds": round(time.perf_counter() - started, 1),
           "rules": rules}
    emit_row(row, args.out)


if __name__ == "__main__":
    main()
