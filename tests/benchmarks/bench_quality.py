"""Quality vs peers: mindstream's MIND, its baselines and torch-rechub's MIND on one split, one evaluator.

mindstream's side is `mind-model compare` (MIND, MIND-1, YouTube-DNN, most-popular), run with a fixed
number of epochs and no early stopping. torch-rechub's `MIND` (its model code as it ships, trained with its
own `MatchTrainer` in list-wise mode) gets the same training sequences: the same user split, one sample
per (training user, position t ≥ 1) with the previous ≤ max_history_length items, the same profile fields as
its user features, the same embedding size, K and epochs; only the data feeding is ours (rechub wants a
dict of tensors and per-sample negatives, here uniform). Both are scored by `model.evaluate.evaluate_scorer`:
exact f_score (max over interests) against every item, history items excluded, held-out test users.

    .venv/bin/python tests/benchmarks/bench_quality.py --data ml-100k --epochs 4
"""

from __future__ import annotations

import argparse
import json
import subprocess
import time
from pathlib import Path
from typing import Any

import numpy as np
from common import BIN, REPO_ROOT

METRICS = ("HitRate@50", "Recall@50", "NDCG@50")


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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="ml-100k")
    parser.add_argument("--epochs", type=int, default=4)
    args = parser.parse_args(argv)
    result = run(args.data, args.epochs)
    for name, model in result["models"].items():
        split = model["results"]["user_split"]
        nxt = model["results"]["next_item"]
        print(f"{name:<20} next HR@50 {nxt.get('HitRate@50', float('nan')):.4f}  split "
              + "  ".join(f"{m} {split.get(m, float('nan')):.4f}" for m in METRICS) + f"  train {model.get('train_seconds')} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
