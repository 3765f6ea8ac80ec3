"""Shared pieces of the benchmarks: percentiles, HTTP reads, file sizes, the screening scripts' command line;
and tests/ on sys.path.

The worker runner, topic helpers and the rest live in tests/support, shared with the tests: importing this
module (first, as every benchmark does) makes `support` importable when a benchmark runs alone or from
run_all.py. Nothing here asserts anything about speed: benchmarks print and record numbers (BENCHMARKS.md).
"""

from __future__ import annotations

import argparse
import json
import sys
import urllib.error
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

REPO_ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
if str(REPO_ROOT / "tests") not in sys.path:
    sys.path.insert(0, str(REPO_ROOT / "tests"))


def pct(values: Sequence[float], q: float) -> float:
    """The q-th percentile of `values` (nan when empty)."""
    return float(np.percentile(np.asarray(values, dtype=float), q)) if len(values) else float("nan")


def summary_ms(seconds: Sequence[float]) -> dict[str, float]:
    """p50 / p99 / mean / max in milliseconds of latencies given in seconds, and their count."""
    ms = np.asarray(seconds, dtype=float) * 1000.0
    if not len(ms):
        return {"n": 0, "p50_ms": float("nan"), "p99_ms": float("nan"), "mean_ms": float("nan"),
                "max_ms": float("nan")}
    return {"n": int(len(ms)), "p50_ms": pct(ms, 50), "p99_ms": pct(ms, 99), "mean_ms": float(ms.mean()),
            "max_ms": float(ms.max())}


def http_json(url: str, timeout: float = 5.0) -> Any:
    """GET url → parsed JSON, or None when nothing answers / non-200."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return json.loads(response.read())
    except (urllib.error.URLError, ConnectionError, TimeoutError, json.JSONDecodeError, OSError):
        return None


def path_size_mb(path: Path) -> float:
    """Size of a file, or of everything under a folder, in MiB."""
    if path.is_file():
        return path.stat().st_size / 2**20
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) / 2**20 if path.exists() else 0.0


def screening_arguments(description: str) -> argparse.Namespace:
    """The command line screen_interests.py and screen_merges.py share (one validation-users row each)."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--data", default="ml-100k")
    parser.add_argument("--split-seed", type=int, default=7)
    parser.add_argument("--name", required=True, help="a label for the row")
    parser.add_argument("--overrides", default="{}", help="JSON object of MindConfig fields")
    parser.add_argument("--cache-dir", type=Path, default=Path("data"))
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=None, help="append the row to this JSON-lines file")
    return parser.parse_args()


def checkpoint_parser(description: str) -> argparse.ArgumentParser:
    """The command line of the scripts that rescore a trained checkpoint (screen_coverage.py,
    screen_diversity_rule.py); each adds its own flags before parsing."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("checkpoint", type=Path, help="a run's model folder or checkpoint.pt")
    parser.add_argument("--data", default="ml-100k")
    parser.add_argument("--split-seed", type=int, required=True, help="the split the model was trained on")
    parser.add_argument("--cache-dir", type=Path, default=Path("data"))
    parser.add_argument("--out", type=Path, default=None, help="append the row to this JSON-lines file")
    return parser


def emit_row(row: dict[str, Any], out: Path | None) -> None:
    """Print one row as a JSON line, and append it to `out` when given."""
    line = json.dumps(row, default=str)
    print(line, flush=True)
    if out:
        out.parent.mkdir(parents=True, exist_ok=True)
        with out.open("a") as handle:
            handle.write(line + "\n")


def screening_summary(values: dict[str, dict[str, Any]], k: int) -> dict[str, dict[str, float]]:
    """Per setting, the means of a screen's per-user arrays (split_recall, next_hit, contributing, dominant,
    valid_interests, and kept where present); coverage also for the users with all k interests valid."""
    result = {}
    for key, v in values.items():
        full = v["valid_interests"] == k
        row = {"split_recall": round(float(v["split_recall"].mean()), 4),
               "next_hit": round(float(v["next_hit"].mean()), 4),
               "contributing": round(float(v["contributing"].mean()), 3),
               "dominant": round(float(v["dominant"].mean()), 3),
               "contributing_full": round(float(v["contributing"][full].mean()), 3),
               "dominant_full": round(float(v["dominant"][full].mean()), 3),
               "users": int(len(v["split_recall"])), "users_full": int(full.sum())}
        if "kept" in v:
            row.update(kept=round(float(v["kept"].mean()), 4), users_kept=int(len(v["kept"])))
        result[key] = row
    return result
