"""Quality: mindstream's MIND vs its baselines and torch-rechub's MIND (`run`, in `make bench`), and the
multi-interest evidence over several user splits (`evidence`, `make bench-quality`).

mindstream's side is `mind-model compare` (MIND, MIND-1, YouTube-DNN, most-popular), run with a fixed
number of epochs and no early stopping. torch-rechub's `MIND` (its model code as it ships, trained with its
own `MatchTrainer` in list-wise mode) gets the same training sequences: the same user split, one sample
per (training user, position t ≥ 1) with the previous ≤ max_history_length items, the same profile fields as
its user features, the same embedding size, K and epochs; only the data feeding is ours (rechub wants a
dict of tensors and per-sample negatives, here uniform). Both are scored by `model.evaluate.evaluate_scorer`:
exact f_score (max over interests) against every item, history items excluded, held-out test users.

    .venv/bin/python tests/benchmarks/bench_quality.py --data ml-100k --epochs 4

The evidence (`--evidence`, what `make bench-quality` runs): for each data set and user-split seed, `mind-model
compare` of MIND, MIND-1, YouTube-DNN and most-popular with one epoch budget and early stopping on the
validation users (the models' defaults), its diagnostics (interests, stability) on the test users, then the
MIND run exported and scored as served by `mind-export evaluate` for each diversity λ (the default λ chosen on
validation users). Mean ± std over the seeds go to runs/bench/quality-evidence.json and BENCHMARKS.md's
"Quality evidence" section (tests/benchmarks/report.py). Runs already done with the same arguments and
the same model defaults are reused, so an interrupted run resumes.

    .venv/bin/python tests/benchmarks/bench_quality.py --evidence [--data ml-100k,ml-1m] [--seeds 0,1,2]
        [--epochs 10] [--train-args "--routing-logit-std 0.001"]
"""

from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import time
from pathlib import Path
from typing import Any

import numpy as np
from common import BIN, REPO_ROOT

from model.config import MindConfig

METRICS = ("HitRate@50", "Recall@50", "NDCG@50")

EVIDENCE_DATA = ("ml-100k", "ml-1m")
EVIDENCE_SEEDS = (0, 1, 2)
EVIDENCE_MODELS = ("mind", "mind1", "youtube_dnn", "popular")
EVIDENCE_EPOCHS = 10            # MindConfig's default; early stopping (patience 3) usually ends sooner
DIVERSITIES = (0.0, 0.25, 0.5, 1.0)
EVIDENCE_ROOT = REPO_ROOT / "runs" / "bench-quality"
EVIDENCE_RESULTS = REPO_ROOT / "runs" / "bench" / "quality-evidence.json"
# (where, key in the diagnostics, label) of the figures the evidence averages
DIAGNOSTICS = (("interests", "mean_pairwise_cosine", "pairwise cosine"),
               ("interests", "interests_contributing", "interests in top-50"),
               ("interests", "dominant_share", "dominant share"),
               ("interests", "norm_ratio", "norm max/min"),
               ("stability", "same_slot_cosine", "same-slot cosine"),
               ("stability", "matched_slot_cosine", "matched-slot cosine"),
               ("stability", "top_n_survival", "top-50 kept"))


def mindstream_compare(data: str, epochs: int, out: Path) -> dict[str, Any]:
    """`mind-model compare` with a fixed epoch budget → its compare.json."""
    subprocess.run([str(BIN / "mind-model"), "compare", "--data", data, "--out", str(out), "--epochs", str(epochs),
                    "--patience", "0", "--no-progress"], cwd=REPO_ROOT, check=True, stdout=subprocess.DEVNULL)
    return json.loads((out / "compare.json").read_text())


def rechub_mind(data_name: str, epochs: int, split_record: dict[str, Any], config: dict[str, Any],
                negatives: int = 100, seed: int = 0) -> dict[str, Any]:
    """Train torch-rechub's MIND on the same training users' sequences; evaluate with mindstream's evaluator."""
    import torch
    from torch_rechub.basic.features import SequenceFeature, SparseFeature
    from torch_rechub.models.matching import MIND
    from torch_rechub.trainers import MatchTrainer

    from model.data import user_split
    from model.datasets import prepare_dataset
    from model.evaluate import evaluate_scorer, pad_histories
    from model.train import build_samples

    torch.manual_seed(seed)
    torch.set_num_threads(1)
    rng = np.random.default_rng(seed)
    data = prepare_dataset(data_name, REPO_ROOT / "data")
    split = user_split(data, valid_fraction=split_record["valid_fraction"], test_fraction=split_record["test_fraction"],
                       seed=split_record["seed"])
    d, k, max_len = config["embedding_dim"], config["num_interests"], config["max_history_length"]
    vocab = data.num_items + 1
    fields = [f"profile_{j}" for j in range(data.user_profile.shape[1])]
    user_features = [SparseFeature(name, int(data.user_profile[:, j].max()) + 1, embed_dim=config["profile_embedding_dim"])
                     for j, name in enumerate(fields)]
    item_features = [SparseFeature("item_id", vocab, embed_dim=d)]
    history_features = [SequenceFeature("hist_item_id", vocab, embed_dim=d, pooling="concat", shared_with="item_id")]
    neg_features = [SequenceFeature("neg_items", vocab, embed_dim=d, pooling="concat", shared_with="item_id")]
    model = MIND(user_features, history_features, item_features, neg_features, max_length=max_len, interest_num=k)
    trainer = MatchTrainer(model, mode=2, optimizer_params={"lr": config["learning_rate"], "weight_decay": 0.0},
                           n_epoch=epochs, device="cpu", model_path=str(REPO_ROOT / "runs" / "bench-rechub"))
    samples = build_samples(data.sequences, split.train_users)
    batch_size = config["batch_size"]

    def features(histories: list[np.ndarray], profiles: np.ndarray) -> dict[str, torch.Tensor]:
        history, _ = pad_histories(histories, max_len)
        padded = np.zeros((len(histories), max_len), dtype=np.int64)  # rechub's capsule wants exactly max_len
        padded[:, : history.shape[1]] = history
        x = {"hist_item_id": torch.from_numpy(padded)}
        for j, name in enumerate(fields):
            x[name] = torch.from_numpy(np.ascontiguousarray(profiles[:, j]))
        return x

    def epoch_batches() -> list[tuple[dict[str, torch.Tensor], torch.Tensor]]:
        order = rng.permutation(len(samples))
        batches = []
        for start in range(0, len(order), batch_size):
            rows = order[start : start + batch_size]
            starts, offsets = samples.sequence_start[rows], samples.target_offset[rows]
            histories = [samples.flat_items[s + max(0, t - max_len) : s + t] for s, t in zip(starts, offsets, strict=True)]
            x = features(histories, data.user_profile[samples.sample_user[rows]])
            x["item_id"] = torch.from_numpy(samples.flat_items[starts + offsets])
            x["neg_items"] = torch.from_numpy(rng.integers(1, vocab, (len(rows), negatives)))
            batches.append((x, torch.zeros(len(rows), dtype=torch.long)))  # list-wise: the positive is class 0
        return batches

    started = time.perf_counter()
    losses = []
    for _ in range(epochs):
        losses.append(float(trainer.train_one_epoch(epoch_batches(), log_interval=10**9) or 0.0))
    train_seconds = time.perf_counter() - started
    model.eval()
    with torch.no_grad():
        model.mode = "item"
        item_table = model({"item_id": torch.arange(vocab)})  # (N + 1, d)

    def score(histories: list[np.ndarray], profiles: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            model.mode = "user"
            interests = model(features(list(histories), np.asarray(profiles)))  # (B, K, d)
            return torch.einsum("bkd,nd->bkn", interests, item_table).max(dim=1).values.numpy()

    results = evaluate_scorer(score, data.sequences, data.user_profile, split.test_users, config["holdout_fraction"])
    return {"results": results, "train_seconds": round(train_seconds, 1), "negatives_per_sample": negatives,
            "samples": len(samples), "epoch_losses": losses}


def run(data: str = "ml-100k", epochs: int = 4, out: Path | None = None) -> dict[str, Any]:
    out = out or REPO_ROOT / "runs" / f"bench-compare-{data}"
    started = time.perf_counter()
    compare = mindstream_compare(data, epochs, out)
    models = {name: {"results": result, "train_seconds": compare.get("runs", {}).get(name, {}).get("train_seconds")}
              for name, result in compare["results"].items()}
    peer = rechub_mind(data, epochs, compare["dataset"]["split"], compare["config"])
    models["torch-rechub MIND"] = peer
    return {"name": f"quality {data}", "data": data, "epochs": epochs, "dataset": compare["dataset"],
            "test_users": compare["test_users"], "models": models, "seconds": time.perf_counter() - started}


def _cli(*args: str) -> None:
    subprocess.run([str(BIN / args[0]), *args[1:]], cwd=REPO_ROOT, check=True, stdout=subprocess.DEVNULL)


def evidence_run(data: str, seed: int, epochs: int, train_args: list[str], root: Path = EVIDENCE_ROOT) -> dict[str, Any]:
    """One (data set, split seed): compare.json of the four models, and served.json of the exported MIND."""
    out = root / data / f"seed-{seed}"
    # the defaults too: a run trained before a default changed is not reused
    wanted = {"data": data, "seed": seed, "epochs": epochs, "train_args": train_args,
              "defaults": MindConfig().to_dict()}
    stamp = out / "bench-args.json"
    done = stamp.is_file() and json.loads(stamp.read_text()) == wanted
    if not (done and (out / "compare.json").is_file()):
        stamp.unlink(missing_ok=True)
        print(f"  compare {data} seed {seed} ({epochs} epochs at most)", flush=True)
        _cli("mind-model", "compare", "--data", data, "--split-seed", str(seed), "--out", str(out), "--epochs",
             str(epochs), "--models", ",".join(EVIDENCE_MODELS), "--no-progress", *train_args)
    compare = json.loads((out / "compare.json").read_text())
    artifact, served = out / "mind-artifact", out / "served.json"
    version = compare["runs"]["mind"]["model_version"]
    manifest = artifact / "manifest.json"
    if not (manifest.is_file() and json.loads(manifest.read_text()).get("model_version") == version):
        _cli("mind-export", str(out / "mind"), "--out", str(artifact))
    if not (done and served.is_file() and json.loads(served.read_text()).get("model_version") == version):
        _cli("mind-export", "evaluate", str(artifact), "--diversity", ",".join(f"{d:g}" for d in DIVERSITIES),
             "--out", str(served))
    stamp.write_text(json.dumps(wanted))
    return {"compare": compare, "served": json.loads(served.read_text())}


def mean_std(values: list[float | None]) -> dict[str, float | int | None]:
    """Mean and sample standard deviation of the defined values (std 0 for one value)."""
    kept = [float(v) for v in values if v is not None]
    if not kept:
        return {"mean": None, "std": None, "n": 0}
    return {"mean": float(np.mean(kept)), "std": float(np.std(kept, ddof=1)) if len(kept) > 1 else 0.0,
            "n": len(kept)}


def _group(summary: dict[str, Any], k: int) -> dict[str, Any]:
    return summary.get(f"K={k}", {})


def aggregate(data: str, runs: list[dict[str, Any]], num_interests: int = 4) -> dict[str, Any]:
    """Mean ± std over the seeds' runs of one data set: metrics per model, diagnostics, the λ sweep, targets."""
    first = runs[0]["compare"]
    models: dict[str, Any] = {}
    for name in first["results"]:
        rows = [r["compare"]["results"][name] for r in runs]
        entry = {"next HitRate@50": mean_std([m["next_item"].get("HitRate@50") for m in rows]),
                 "split HitRate@50": mean_std([m["user_split"].get("HitRate@50") for m in rows]),
                 "split Recall@50": mean_std([m["user_split"].get("Recall@50") for m in rows])}
        trained = [r["compare"]["runs"].get(name) for r in runs]
        if all(trained):
            entry["best epoch"] = mean_std([t["best_epoch"] for t in trained])
            entry["train s"] = mean_std([t["train_seconds"] for t in trained])
        diagnosed = [r["compare"].get("diagnostics", {}).get(name) for r in runs]
        if all(diagnosed):
            entry["diagnostics"] = {
                group: {label: mean_std([(d[part].get(group) or {}).get(key) for d in diagnosed])
                        for part, key, label in DIAGNOSTICS}
                for group in ("all", f"K={num_interests}")}
        models[name] = entry
    sweep: dict[str, Any] = {}
    for key in runs[0]["served"]["test"]:
        served = [r["served"] for r in runs]
        sweep[key] = {
            "validation split Recall@50": mean_std([s["validation"][key]["user_split"].get("Recall@50") for s in served]),
            "test split Recall@50": mean_std([s["test"][key]["user_split"].get("Recall@50") for s in served]),
            "test split HitRate@50": mean_std([s["test"][key]["user_split"].get("HitRate@50") for s in served]),
            "test next HitRate@50": mean_std([s["test"][key]["next_item"].get("HitRate@50") for s in served]),
            "interests in top-50": mean_std([_group(s["test"][key]["coverage"], num_interests)
                                             .get("interests_contributing") for s in served]),
            "dominant share": mean_std([_group(s["test"][key]["coverage"], num_interests).get("dominant_share")
                                        for s in served]),
        }
    chosen = [r["served"].get("chosen_diversity") for r in runs]
    return {"data": data, "seeds": [r["compare"]["dataset"]["split"]["seed"] for r in runs],
            "dataset": first["dataset"], "config": first["config"], "test_users": [r["compare"]["test_users"] for r in runs],
            "models": models, "diversity_sweep": sweep, "chosen_diversity": chosen,
            "targets": targets(models, sweep, chosen, num_interests)}


def targets(models: dict[str, Any], sweep: dict[str, Any], chosen: list[float | None], k: int) -> list[dict[str, Any]]:
    """Issue 11's targets, each with the measured mean and whether it is met (None when not measurable)."""
    def mean(name: str, metric: str) -> float | None:
        return models.get(name, {}).get(metric, {}).get("mean")

    def diag(name: str) -> float | None:
        return models.get("mind", {}).get("diagnostics", {}).get(f"K={k}", {}).get(name, {}).get("mean")

    rows = []
    for metric in ("split Recall@50", "next HitRate@50"):
        singles = [v for v in (mean("mind1", metric), mean("youtube_dnn", metric)) if v is not None]
        mind = mean("mind", metric)
        best = max(singles) if singles else None
        rows.append({"target": f"MIND {metric} ≥ 1.05 × best single-interest model", "goal": 1.05,
                     "measured": mind / best if mind is not None and best else None,
                     "met": (mind >= 1.05 * best) if mind is not None and best else None})
    for label, goal, at_least in (("interests in top-50", 2.5, True), ("dominant share", 0.6, False),
                                  ("top-50 kept", 0.85, True), ("same-slot cosine", 0.9, True)):
        value = diag(label)
        rows.append({"target": f"MIND, K'u = {k} users: {label} {'≥' if at_least else '≤'} {goal}", "goal": goal,
                     "measured": value,
                     "met": None if value is None else (value >= goal if at_least else value <= goal)})
    return rows


def evidence(datasets: list[str], seeds: list[int], epochs: int, train_args: list[str]) -> dict[str, Any]:
    """Every (data set, seed) run, aggregated per data set; written to EVIDENCE_RESULTS as it goes."""
    started = time.perf_counter()
    result: dict[str, Any] = {"epochs": epochs, "seeds": seeds, "train_args": train_args,
                              "diversities": list(DIVERSITIES), "datasets": {}}
    for data in datasets:
        runs = [evidence_run(data, seed, epochs, train_args) for seed in seeds]
        result["datasets"][data] = aggregate(data, runs)
        result["seconds"] = round(time.perf_counter() - started, 1)
        EVIDENCE_RESULTS.parent.mkdir(parents=True, exist_ok=True)
        EVIDENCE_RESULTS.write_text(json.dumps(result, indent=1))
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--evidence", action="store_true",
                        help="the multi-interest evidence over several split seeds (make bench-quality); rewrites "
                             "BENCHMARKS.md's quality evidence section")
    parser.add_argument("--data", default=None,
                        help="data set (default ml-100k), or with --evidence a comma-separated list "
                             f"(default {','.join(EVIDENCE_DATA)})")
    parser.add_argument("--epochs", type=int, default=None,
                        help=f"epoch budget (default 4, or {EVIDENCE_EPOCHS} with --evidence, with early stopping)")
    parser.add_argument("--seeds", default=",".join(map(str, EVIDENCE_SEEDS)),
                        help="with --evidence: comma-separated user-split seeds (default: %(default)s)")
    parser.add_argument("--train-args", default="",
                        help="with --evidence: extra `mind-model compare` flags for every model, e.g. "
                             "\"--num-negatives 1000\"")
    args = parser.parse_args(argv)
    if args.evidence:
        import report

        datasets = [d.strip() for d in (args.data or ",".join(EVIDENCE_DATA)).split(",") if d.strip()]
        seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
        result = evidence(datasets, seeds, args.epochs or EVIDENCE_EPOCHS, shlex.split(args.train_args))
        path = REPO_ROOT / "BENCHMARKS.md"
        report.write_evidence(result, path, REPO_ROOT / "docs" / "benchmarks")
        for data, aggregated in result["datasets"].items():
            for target in aggregated["targets"]:
                print(f"{data}: {target['target']}: {target['measured']} (met: {target['met']})")
        print(f"wrote {EVIDENCE_RESULTS}, the quality evidence section of {path} and its plots")
        return 0
    result = run(args.data or "ml-100k", args.epochs or 4)
    for name, model in result["models"].items():
        split = model["results"]["user_split"]
        nxt = model["results"]["next_item"]
        print(f"{name:<20} next HR@50 {nxt.get('HitRate@50', float('nan')):.4f}  split "
              + "  ".join(f"{m} {split.get(m, float('nan')):.4f}" for m in METRICS) + f"  train {model.get('train_seconds')} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
