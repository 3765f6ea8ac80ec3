"""`make bench`: run every benchmark and regenerate BENCHMARKS.md and its plots (docs/benchmarks/*.png).

    bash deploy/kafka/with-broker.sh .venv/bin/python tests/benchmarks/run_all.py [--quick]

Needs KAFKA_BOOTSTRAP (with-broker.sh exports it; `make bench` runs this under it). Trains a small ml-100k
MIND (`mind-model train --epochs 1`, into runs/bench-ml100k) and exports it (artifacts/bench-ml100k) when
they are missing; that artifact is what the tower and streaming benchmarks serve. Every figure is printed,
kept in runs/bench/results.json and written to BENCHMARKS.md with the baseline it was measured against in
the same run. Nothing asserts a speed. Full mode takes about 20-25 min on the 2-core build machine;
--quick (about 6 min) uses 10k users, short phases, 100k items only and 1 training epoch for the peers.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import subprocess
import sys
import time
import traceback
from pathlib import Path
from typing import Any

import bench_recall  # first: it pins numpy's BLAS to one thread before numpy loads (see its comment)

# isort: split
import bench_quality
import bench_stream
import bench_tower
from common import BIN, REPO_ROOT
from support.milvus import release_all_lite_servers

RUN_DIR = REPO_ROOT / "runs" / "bench-ml100k"
ARTIFACT = REPO_ROOT / "artifacts" / "bench-ml100k"
RESULTS = REPO_ROOT / "runs" / "bench" / "results.json"
PLOTS = REPO_ROOT / "docs" / "benchmarks"
REPORT = REPO_ROOT / "BENCHMARKS.md"


def ensure_artifact() -> None:
    """The served model: one epoch of MIND on ml-100k, exported (skipped when both exist)."""
    if not (RUN_DIR / "checkpoint.pt").is_file():
        subprocess.run([str(BIN / "mind-model"), "train", "--data", "ml-100k", "--out", str(RUN_DIR),
                        "--epochs", "1",
                        "--no-progress"], cwd=REPO_ROOT, check=True)
    if not (ARTIFACT / "manifest.json").is_file():
        subprocess.run([str(BIN / "mind-export"), str(RUN_DIR), "--out", str(ARTIFACT)], cwd=REPO_ROOT,
                       check=True)


def step(results: dict[str, Any], key: str, title: str, fn: Any) -> None:
    """Run one benchmark; a failure is recorded (and reported in BENCHMARKS.md), the others still run."""
    print(f"\n== {title}", flush=True)
    started = time.perf_counter()
    try:
        results[key] = fn()
    except Exception as exc:  # noqa: BLE001 - one broken benchmark must not hide the others
        traceback.print_exc()
        results[key] = {"error": f"{type(exc).__name__}: {exc}"}
    results.setdefault("timings", {})[key] = round(time.perf_counter() - started, 1)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(results, indent=1, default=str))


def machine() -> dict[str, Any]:
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO_ROOT, capture_output=True,
                            text=True).stdout.strip()
    load = os.getloadavg()
    # The checkout is shared while others work: name tracked files with uncommitted edits, which the run
    # measured.
    dirty = subprocess.run(["git", "diff", "--name-only", "HEAD"], cwd=REPO_ROOT, capture_output=True,
                           text=True).stdout.split()
    return {"date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"), "commit": commit,
            "uncommitted": dirty,
            "python": platform.python_version(), "cpus": os.cpu_count(), "cpu": _cpu_model(),
            "load_at_start": [round(x, 2) for x in load]}


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="short development run (about 6 min)")
    parser.add_argument("--only", default="tower,recall,stream,quality",
                        help="comma-separated subset of tower, recall, stream, quality (default: all)")
    parser.add_argument("--ml-1m", action="store_true",
                        help="also compare quality on ml-1m (long: tens of minutes)")
    parser.add_argument("--profile", action="store_true",
                        help="py-spy the worker while it drains (default in full mode)")
    parser.add_argument("--report-only", action="store_true",
                        help="rewrite BENCHMARKS.md from runs/bench/results.json")
    args = parser.parse_args(argv)
    if args.report_only:
        import report

        report.write(json.loads(RESULTS.read_text()), REPORT, PLOTS)
        print(f"wrote {REPORT}")
        return 0
    if not os.environ.get("KAFKA_BOOTSTRAP"):
        print("run_all.py: KAFKA_BOOTSTRAP is not set; run it under "
              "deploy/kafka/with-broker.sh (make bench does)",
              file=sys.stderr)
        return 2
    only = {p.strip() for p in args.only.split(",") if p.strip()}
    quick = args.quick
    started = time.perf_counter()
    results: dict[str, Any] = {"mode": "quick" if quick else "full", "machine": machine()}
    print(f"mindstream benchmarks ({results['mode']}) at {results['machine']['commit']}, "
          f"{results['machine']['cpus']} CPUs, load {results['machine']['load_at_start']}", flush=True)
    step(results, "artifact", "artifact: ml-100k MIND, 1 epoch (train + export when missing)",
         lambda: (ensure_artifact(), {"run_dir": str(RUN_DIR), "artifact": str(ARTIFACT)})[1])
    if "tower" in only:
        step(results, "tower", "user tower: onnxruntime vs PyTorch eager",
             lambda: bench_tower.run(ARTIFACT, RUN_DIR, seconds=0.5 if quick else 2.0))
    if "stream" in only:
        profile = RESULTS.parent / "worker-drain.pyspy.txt" if (args.profile or not quick) else None
        step(results, "stream", "streaming: freshness, throughput, naive peer, 2 workers, memory",
             lambda: bench_stream.run(ARTIFACT, RUN_DIR, quick=quick, profile=profile))
    if "recall" in only:
        step(results, "recall", "recall latency: Milvus Lite vs numpy brute force",
             lambda: bench_recall.run(sizes=(100_000,) if quick else (100_000, 1_000_000),
                                      repeats=60 if quick else 200))
        release_all_lite_servers()
    if "quality" in only:
        epochs = 1 if quick else 4
        step(results, "quality_ml100k", f"quality on ml-100k ({epochs} epochs each)",
             lambda: bench_quality.run("ml-100k", epochs))
        if args.ml_1m:
            step(results, "quality_ml1m", "quality on ml-1m", lambda: bench_quality.run("ml-1m", 2))
    results["seconds"] = round(time.perf_counter() - started, 1)
    RESULTS.write_text(json.dumps(results, indent=1, default=str))
    import report

    report.write(results, REPORT, PLOTS)
    print(f"\nwrote {REPORT} and {PLOTS}/*.png in {results['seconds'] / 60:.1f} min (raw results: {RESULTS})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
