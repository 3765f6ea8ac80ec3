"""User-tower latency and throughput: onnxruntime (the serving path) vs PyTorch eager, in one run.

    .venv/bin/python tests/benchmarks/bench_tower.py ARTIFACT_DIR [--run RUN_DIR] [--threads 1]

ARTIFACT_DIR is what `mind-export` wrote; the PyTorch model comes from the checkpoint recorded in its
manifest (or --run). Histories are drawn from the artifact's items with random lengths 1..max (padded to
the longest in the batch, as the runtime does); batch 1 uses a full-length history (the worst case).
Both engines get the same number of threads. Prints a table; asserts nothing about speed.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np


def time_calls(call: Callable[[], object], iterations: int, warmup: int) -> list[float]:
    for _ in range(warmup):
        call()
    times = []
    for _ in range(iterations):
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
    return times


def summarise(times: list[float], batch: int) -> tuple[float, float, float]:
    """-> (median ms, p99 ms, users per second at the median)."""
    ordered = sorted(times)
    median = statistics.median(ordered)
    p99 = ordered[min(len(ordered) - 1, int(round(0.99 * (len(ordered) - 1))))]
    return median * 1e3, p99 * 1e3, batch / median


def measure_batch(runtime, mind, histories: list[list[str]], profiles: list[dict[str, str]],
                  seconds: float) -> tuple[int, list[tuple[str, list[float]]]]:
    """Time PyTorch eager, onnxruntime, and onnxruntime with raw-id encoding on one batch -> (L, rows)."""
    import torch

    history, mask = runtime.encode_histories(histories)
    profile = runtime.encode_profiles(profiles)
    tensors = (torch.from_numpy(history), torch.from_numpy(mask), torch.from_numpy(profile))

    def torch_call() -> object:
        with torch.inference_mode():
            return mind.interests(*tensors)

    def ort_call() -> object:
        return runtime.infer(history, mask, profile)

    def ort_encode_call() -> object:
        h, m = runtime.encode_histories(histories)
        return runtime.infer(h, m, runtime.encode_profiles(profiles))

    probe = time_calls(ort_call, 3, 1)
    iterations = max(20, min(2000, int(seconds / max(statistics.median(probe), 1e-5))))
    warmup = max(5, iterations // 10)
    return history.shape[1], [
        ("pytorch eager", time_calls(torch_call, iterations, warmup)),
        ("onnxruntime", time_calls(ort_call, iterations, warmup)),
        ("onnxruntime + encode raw ids", time_calls(ort_encode_call, iterations, warmup)),
    ]


def run(artifact_dir: Path, run_dir: Path | None = None, threads: int = 1,
        batches: tuple[int, ...] = (1, 64, 512),
        seconds: float = 2.0, echo: bool = True) -> dict:
    """Measure every engine at every batch size; returns {"name", "setup", "rows": [...]} (for run_all.py)."""
    import torch

    from export.onnx_export import load_run
    from export.runtime import UserTowerRuntime

    torch.set_num_threads(threads)
    runtime = UserTowerRuntime.load(artifact_dir, intra_op_threads=threads)
    manifest = runtime.manifest
    run = run_dir or manifest.source.get("checkpoint")
    if not run:
        raise SystemExit("no checkpoint recorded in the manifest; pass --run RUN_DIR")
    mind = load_run(run).mind.eval()
    rng = np.random.default_rng(0)
    ids = runtime.item_ids()
    max_len = manifest.max_history_length
    fields = manifest.profile_fields
    profile_values = {f: runtime.vocab.profile[f][1:] for f in fields}

    def raw_batch(batch: int) -> tuple[list[list[str]], list[dict[str, str]]]:
        lengths = [max_len] if batch == 1 else rng.integers(1, max_len + 1, batch).tolist()
        histories = [[ids[i] for i in rng.integers(0, len(ids), n)] for n in lengths]
        profiles = [{f: values[rng.integers(0,
                                            len(values))] for f, values in profile_values.items() if values}
                    for _ in range(batch)]
        return histories, profiles

    setup = (f"artifact {artifact_dir}: model {manifest.model_version}, {manifest.num_items:,} items, "
             f"d={manifest.embedding_dim}, K={manifest.num_interests}, max history {max_len}, "
             f"opset {manifest.opset}; "
             f"python {platform.python_version()}, torch {torch.__version__}, onnxruntime "
             f"{__import__('onnxruntime').__version__}, {threads} thread(s), CPU "
             f"{platform.processor() or platform.machine()}")
    header = f"{'engine':<28}{'batch':>6}{'L':>5}{'median ms':>11}{'p99 ms':>9}{'users/s':>11}{'speedup':>9}"
    if echo:
        print(setup)
        print(header)
        print("-" * len(header))
    rows = []
    for batch in batches:
        histories, profiles = raw_batch(batch)
        length, measured = measure_batch(runtime, mind, histories, profiles, seconds)
        torch_median = statistics.median(measured[0][1])
        for name, times in measured:
            median, p99, throughput = summarise(times, batch)
            speedup = torch_median / statistics.median(times)
            rows.append({"engine": name, "batch": batch, "L": length, "p50_ms": median, "p99_ms": p99,
                         "users_per_s": throughput, "speedup_vs_torch": speedup})
            if echo:
                print(f"{name:<28}{batch:>6}{length:>5}{median:>11.3f}{p99:>9.3f}{throughput:>11,.0f}{speedup:>8.2f}x")
    return {"name": "user tower", "setup": setup, "rows": rows}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("artifact_dir", type=Path)
    parser.add_argument("--run", type=Path, default=None,
                        help="checkpoint for PyTorch eager (default: manifest source)")
    parser.add_argument("--threads", type=int, default=1,
                        help="intra-op threads for both engines (default 1)")
    parser.add_argument("--batches", default="1,64,512", help="batch sizes (default 1,64,512)")
    parser.add_argument("--seconds", type=float, default=2.0, help="approximate time per measurement")
    args = parser.parse_args(argv)
    run(args.artifact_dir, args.run, args.threads,
        tuple(int(b) for b in args.batches.split(",")), args.seconds)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
