"""The control experiment for multi-interest recall: data with planted interests, where K vectors should win.

    .venv/bin/python tests/benchmarks/planted_control.py make --out data/planted-hard.npz
    mind-model compare --data data/planted-hard.npz --split-seed S --threads 1 --out runs/planted/seedS
    .venv/bin/python tests/benchmarks/planted_control.py recovery runs/planted/seed0 runs/planted/seed1 ...

`make` writes a `model.synthetic.synthetic_planted` data set (100 clusters of 20 items, every user drawing
from 2 to 4 of them, 5 % noise; the parameters are the flags) as a .npz that `mind-model` reads like any
prepared data, and the planted truth beside it (`*.truth.npz`: each item's cluster, each user's
clusters). `recovery` loads each compare run's checkpoints, recomputes the test users' interests from
their user-split histories, and prints `model.diagnostics.planted_recovery` (did each interest's own top
10 fall in one planted cluster, and did the interests find the user's clusters), mean ± std over the runs,
as JSON.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from model.checkpoint import load_checkpoint
from model.cli import _split, load_data
from model.datasets import save_dataset
from model.diagnostics import planted_recovery, summarize
from model.evaluate import model_interests, user_split_cases
from model.synthetic import synthetic_planted


def truth_path(data_path: Path) -> Path:
    return data_path.with_suffix(".truth.npz")


def make(args: argparse.Namespace) -> None:
    data, truth = synthetic_planted(
        num_users=args.users, num_clusters=args.clusters, items_per_cluster=args.items_per_cluster,
        min_interests=args.min_interests, max_interests=args.max_interests, min_length=args.min_length,
        max_length=args.max_length, noise=args.noise, seed=args.seed)
    save_dataset(data, args.out)
    planted = np.zeros((data.num_users, args.clusters), dtype=bool)  # user x cluster: drawn from
    for user, clusters in enumerate(truth.user_clusters):
        planted[user, clusters] = True
    np.savez(truth_path(args.out), item_cluster=truth.item_cluster, user_clusters=planted)
    print(f"wrote {args.out}: {data.num_users} users, {data.num_items} items, {data.num_interactions} events")


def recovery_of_run(run_dir: Path, top_n: int) -> dict[str, dict]:
    """planted_recovery of every model checkpoint in one `mind-model compare` output directory."""
    summary = json.loads((run_dir / "compare.json").read_text())
    record = summary["dataset"]
    data_path = Path(record["source"])
    data = load_data(str(data_path), Path("data"))
    with np.load(truth_path(data_path)) as truth:
        item_cluster, user_clusters = truth["item_cluster"], truth["user_clusters"]
    split = _split(data, record)  # the compare run's own split
    out = {}
    for model_name in summary["runs"]:
        checkpoint = load_checkpoint(run_dir / model_name)
        config = checkpoint.config
        cases = user_split_cases(data.sequences, split.test_users, config.holdout_fraction)
        histories = [case.history for case in cases]
        planted = [np.flatnonzero(user_clusters[case.user]) for case in cases]
        profiles = data.user_profile[[case.user for case in cases]]
        interests = model_interests(checkpoint.model, histories, profiles, config.max_history_length)
        items = checkpoint.model.all_item_embeddings().detach().numpy()
        out[model_name] = summarize(planted_recovery(interests.vectors, interests.mask, items, histories,
                                                     item_cluster, planted, n=top_n))["all"]
    return out


def recovery(args: argparse.Namespace) -> None:
    per_run = [recovery_of_run(run_dir, args.top_n) for run_dir in args.runs]
    table = {}
    for model_name in per_run[0]:
        rows = [run[model_name] for run in per_run if model_name in run]
        table[model_name] = {
            name: f"{np.mean([r[name] for r in rows]):.3f} ± {np.std([r[name] for r in rows]):.3f}"
            for name in ("interest_purity", "clusters_found", "clusters_in_top")}
        table[model_name]["users"] = [r["users"] for r in rows]
    print(json.dumps(table, indent=2, ensure_ascii=False))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    made = commands.add_parser("make", help="write the planted data set")
    made.add_argument("--out", type=Path, default=Path("data/planted-hard.npz"))
    made.add_argument("--users", type=int, default=3000)
    made.add_argument("--clusters", type=int, default=100)
    made.add_argument("--items-per-cluster", type=int, default=20)
    made.add_argument("--min-interests", type=int, default=2)
    made.add_argument("--max-interests", type=int, default=4)
    made.add_argument("--min-length", type=int, default=12)
    made.add_argument("--max-length", type=int, default=50)
    made.add_argument("--noise", type=float, default=0.05)
    made.add_argument("--seed", type=int, default=11)
    scored = commands.add_parser("recovery", help="planted recovery of compare runs' checkpoints")
    scored.add_argument("runs", type=Path, nargs="+", help="mind-model compare output directories")
    scored.add_argument("--top-n", type=int, default=10)
    args = parser.parse_args()
    make(args) if args.command == "make" else recovery(args)


if __name__ == "__main__":
    main()
