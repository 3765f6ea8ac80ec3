"""Screen rules for merging a user's interests into one ranking, on VALIDATION users, one line of JSON each.

    .venv/bin/python tests/benchmarks/screen_merges.py --data ml-100k --split-seed 7 \
        --name prototype --overrides '{"routing_init": "prototype"}' --out runs/merges.jsonl

Trains MIND once (`model.train.train_model`, `MindConfig(**overrides)`, early-stopped on the validation
users) and scores the same validation users with each rule (docs/MODEL.md, Round 8). Test users are never
read. A rule scores item i for interest k by the logit v_k . e_i / temperature, plus beta log pi_k, where
pi_k is interest k's share of the last routing round's coupling, each behaviour weighted gamma ** age (age
0 = the most recent), and reduces over the valid interests:
- `max`: the paper's max-merge (beta = 0), what serving does;
- `lse`: logsumexp over the interests (beta = 0), so an item close to two interests ranks higher;
- `prior B gG`: beta = B, gamma = G, then the max;
- `mix B gG`: beta = B, gamma = G, then the logsumexp.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from types import SimpleNamespace

import numpy as np
import torch
from common import emit_row, screening_arguments

from model.cli import _split, load_data
from model.config import MindConfig
from model.evaluate import evaluate_scorer, pad_histories
from model.mind import RetrievalModel
from model.train import train_model

RULES: list[tuple[str, str, float, float]] = [("max", "max", 0.0, 1.0), ("lse", "lse", 0.0, 1.0)] + [
    (f"{reduce} {beta:g} g{gamma:g}", "max" if reduce == "prior" else "lse", beta, gamma)
    for gamma in (1.0, 0.9, 0.8, 0.7, 0.5) for beta in (0.5, 1.0, 2.0) for reduce in ("prior", "mix")
]


def interest_prior(coupling: torch.Tensor, history_mask: torch.Tensor, gamma: float) -> torch.Tensor:
    """log pi: each interest's share of the coupling, behaviour i weighted gamma ** (age of i).

    coupling (B, L, K), history_mask (B, L) bool, left-aligned -> (B, K).
    """
    lengths = history_mask.sum(-1, keepdim=True)                            # (B, 1)
    age = (lengths - 1 - torch.arange(coupling.shape[1]).unsqueeze(0)).clamp(min=0)
    weight = gamma ** age.to(coupling.dtype) * history_mask.to(coupling.dtype)
    mass = (coupling * weight.unsqueeze(-1)).sum(1)                          # (B, K)
    return torch.log((mass / mass.sum(-1, keepdim=True)).clamp(min=1e-9))


def rule_scorer(model: RetrievalModel, reduce: str, beta: float, gamma: float):
    """A `model.evaluate` Scorer that ranks every item by one rule."""
    config = model.config
    with torch.no_grad():
        table = model.all_item_embeddings()

    def score(histories: Sequence[np.ndarray], profiles: np.ndarray) -> np.ndarray:
        history, mask = pad_histories(histories, config.max_history_length)
        mask_t = torch.from_numpy(mask)
        with torch.no_grad():
            out = model.interests(torch.from_numpy(history), mask_t,
                                  torch.from_numpy(np.asarray(profiles, dtype=np.int64)))
            logits = torch.einsum("bkd,nd->bkn", out.interest_vectors, table) / config.logit_temperature
            if beta:
                logits = logits + beta * interest_prior(out.coupling, mask_t, gamma).unsqueeze(-1)
            logits = logits.masked_fill(~out.valid_interest_mask.unsqueeze(-1), -torch.inf)
            reduced = torch.logsumexp(logits, dim=1) if reduce == "lse" else logits.max(dim=1).values
        return reduced.numpy()

    return score


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
    for name, reduce, beta, gamma in RULES:
        metrics = evaluate_scorer(rule_scorer(result.model, reduce, beta, gamma), data.sequences,
                                  data.user_profile, split.valid_users, config.holdout_fraction)
        rules[name] = {"valid_split_recall@50": round(metrics["user_split"]["Recall@50"], 4),
                       "valid_next_hitrate@50": round(metrics["next_item"]["HitRate@50"], 4)}
    row = {"name": args.name, "data": args.data, "split_seed": args.split_seed, "overrides": overrides,
           "best_epoch": result.best_epoch, "seconds": round(time.perf_counter() - started, 1),
           "rules": rules}
    emit_row(row, args.out)


if __name__ == "__main__":
    main()
