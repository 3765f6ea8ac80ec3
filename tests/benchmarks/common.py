"""Shared pieces of the benchmarks: percentiles, a worker subprocess, Prometheus text, process memory.

Nothing here asserts anything about speed: benchmarks print and record numbers (docs: BENCHMARKS.md).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

REPO_ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent


def pct(values: Sequence[float], q: float) -> float:
    """The q-th percentile of `values` (nan when empty)."""
    return float(np.percentile(np.asarray(values, dtype=float), q)) if len(values) else float("nan")


def summary_ms(seconds: Sequence[float]) -> dict[str, float]:
    """p50 / p99 / mean / max in milliseconds of latencies given in seconds, and their count."""
    ms = np.asarray(seconds, dtype=float) * 1000.0
    if not len(ms):
        return {"n": 0, "p50_ms": float("nan"), "p99_ms": float("nan"), "mean_ms": float("nan"), "max_ms": float("nan")}
    return {"n": int(len(ms)), "p50_ms": pct(ms, 50), "p99_ms": pct(ms, 99), "mean_ms": float(ms.mean()),
            "max_ms": float(ms.max())}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def http_json(url: str, timeout: float = 5.0) -> Any:
    """GET url → parsed JSON, or None when nothing answers / non-200."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return json.loads(response.read())
    except (urllib.error.URLError, ConnectionError, TimeoutError, json.JSONDecodeError, OSError):
        return None


def http_text(url: str, timeout: float = 5.0) -> str | None:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return response.read().decode()
    except (urllib.error.URLError, ConnectionError, TimeoutError, OSError):
        return None


def parse_prometheus(text: str) -> dict[str, float]:
    """`name{labels} value` lines → {name{labels}: value} (comments skipped)."""
    values: dict[str, float] = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        name, _, value = line.rpartition(" ")
        try:
            values[name] = float(value)
        except ValueError:
            continue
    return values


def process_tree(pid: int) -> list[int]:
    """pid and all its descendants (Linux /proc)."""
    found, stack = [], [pid]
    while stack:
        current = stack.pop()
        found.append(current)
        for task in Path(f"/proc/{current}/task").glob("*"):
            try:
                stack.extend(int(c) for c in (task / "children").read_text().split())
            except OSError:
                continue
    return found


def rss_mb(pid: int) -> float:
    """Resident set size of one process in MiB (0 when it is gone)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return 0.0


def path_size_mb(path: Path) -> float:
    """Size of a file, or of everything under a folder, in MiB."""
    if path.is_file():
        return path.stat().st_size / 2**20
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) / 2**20 if path.exists() else 0.0


class Worker:
    """One `mind-stream worker` subprocess with its own app id, Lite file, data dir and web port."""

    def __init__(self, name: str, artifact: Path, workdir: Path, env: dict[str, str]) -> None:
        self.name = name
        self.workdir = workdir
        self.port = free_port()
        self.db = workdir / f"{name}.db"
        self.env = {**os.environ, **env, "MINDSTREAM_MILVUS_URI": str(self.db), "MINDSTREAM_WEB_PORT": str(self.port),
                    "MINDSTREAM_DATA_DIR": str(workdir / f"{name}-data"), "MINDSTREAM_ARTIFACT": str(artifact)}
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = workdir / f"{name}.log"
        self.process: subprocess.Popen | None = None

    def start(self) -> None:
        self.process = subprocess.Popen([str(BIN / "mind-stream"), "worker", "--loglevel", "warning"], env=self.env,
                                        cwd=REPO_ROOT, stdout=self.log_path.open("wb"), stderr=subprocess.STDOUT)

    def wait_ready(self, timeout: float = 180.0) -> float:
        """Seconds until /healthz answers 200 (artifact loaded, store open); raises when the worker dies."""
        started = time.monotonic()
        while time.monotonic() - started < timeout:
            if self.process is not None and self.process.poll() is not None:
                raise RuntimeError(f"worker {self.name} exited ({self.process.returncode}); log: {self.log_path}\n"
                                   + self.log_path.read_text()[-3000:])
            answer = http_json(self.url + "/healthz", timeout=2)
            if answer and answer.get("status") == "ok":
                return time.monotonic() - started
            time.sleep(0.2)
        raise RuntimeError(f"worker {self.name} not ready after {timeout:.0f} s; log: {self.log_path}")

    def metrics(self) -> dict[str, float]:
        text = http_text(self.url + "/metrics", timeout=5)
        return parse_prometheus(text) if text else {}

    def memory_mb(self) -> dict[str, float]:
        """RSS of the worker process and of its children (the Milvus Lite server), MiB."""
        if self.process is None:
            return {}
        tree = process_tree(self.process.pid)
        worker = rss_mb(tree[0])
        children = sum(rss_mb(p) for p in tree[1:])
        return {"worker_rss_mb": worker, "lite_server_rss_mb": children, "total_rss_mb": worker + children}

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            for pid in reversed(process_tree(self.process.pid)):
                try:
                    os.kill(pid, signal.SIGKILL)
                except OSError:
                    pass
            self.process.wait(timeout=10)
