"""Screen MIND config overrides on VALIDATION users: recall, collapse and stability, one line of JSON each.

    .venv/bin/python tests/benchmarks/screen_interests.py --data ml-100k --split-seed 7 \
        --name item_p0 --overrides '{"routing_init": "item", "attention_power": 0}' --out runs/screen.jsonl

Trains `model.train.train_model` with `MindConfig(**overrides)` on the split's training users, early-stopped
on its validation users, and reports the best epoch's validation metrics with `model.evaluate.
diagnose_interests` on the same validation users (docs/MODEL.md's screening method). Test users are never
read. `{"num_interests": 1}` screens MIND-1 with the same settings.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from types import SimpleNamespace

from common import emit_row, screening_arguments

from model.cli import _split, load_data
from model.config import MindConfig
from model.evaluate import diagnose_interests
from model.train import train_model


def screen(data_name: str, split_seed: int, overrides: dict, cache_dir: Path, threads: int) -> dict:
    """Validation Recall/HitRate@50, best epoch, training and interest diagnostics of one config."""
    config = MindConfig(**overrides)
    data = load_data(data_name, cache_dir)
    split = _split(data, SimpleNamespace(valid_fraction=0.1, test_fraction=0.1, split_seed=split_seed))
    started = time.perf_counter()
    result = train_model("mind", config, data, split.train_users, split.valid_users, progress=False,
                         threads=threads, log=lambda message: None)
    best = result.best_validation
    row = {
        "data": data_name, "split_seed": split_seed, "overrides": overrides,
        "valid_split_recall@50": best["user_split"]["Recall@50"],
        "valid_next_hitrate@50": best["next_item"]["HitRate@50"],
        "best_epoch": result.best_epoch, "seconds": round(time.perf_counter() - started, 1),
        "training": result.epochs[result.best_epoch - 1].get("training"),
    }
    if config.num_interests > 1:
        row["diagnostics"] = diagnose_interests(result.model, config.max_history_length, data.sequences,
                                                data.user_profile, split.valid_users, config.holdout_fraction)
    return row


def main() -> None:
    args = screening_arguments(__doc__.split("\n\n")[0])
    row = {"name": args.name, **screen(args.data, args.split_seed, json.loads(args.overrides), args.cache_dir,
                                       args.threads)}
    emit_row(row, args.out)


if __name__ == "__main__":
    main()
