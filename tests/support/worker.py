"""`mind-stream worker` as a subprocess, for the tests and the benchmarks alike.

`worker_env` gives a worker its own topics, consumer group, Milvus Lite file, data dir and web port;
`Worker` starts, probes and stops it; `metric` reads one figure off its /metrics and fails on a name the
worker does not export.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from streams.config import COMMIT_INTERVAL_S
from streams.kafka import changelog_topic
from support.basics import die_with_parent, free_port, process_tree, rss_mb, unique_name, wait_until
from support.topics import delete_topics, produce, read_topic

T = TypeVar("T")
REPO_ROOT = Path(__file__).resolve().parents[2]
HISTOGRAM_SUFFIXES = ("_bucket", "_count", "_sum")


def get_json(url: str, timeout: float = 10.0) -> dict:
    """GET `url` and parse its JSON body; HTTP errors raise (urllib.error.HTTPError)."""
    with urllib.request.urlopen(url, timeout=timeout) as response:
        return json.loads(response.read())


def worker_env(kafka_bootstrap: str, tmp: Path, **extra: str) -> dict[str, str]:
    """Settings of a worker on its own topics, consumer group, Milvus Lite file, data dir and web port."""
    app_id = unique_name("mstest")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MINDSTREAM_", "MILVUS_"))}
    env.update({
        "KAFKA_BOOTSTRAP": kafka_bootstrap, "MINDSTREAM_APP_ID": app_id,
        "MINDSTREAM_TOPIC_INTERACTIONS": f"{app_id}-interactions",
        "MINDSTREAM_TOPIC_PROFILES": f"{app_id}-profiles",
        "MINDSTREAM_TOPIC_UPDATES": f"{app_id}-updates", "MINDSTREAM_TOPIC_DLQ": f"{app_id}-dlq",
        "MINDSTREAM_PARTITIONS": "3", "MINDSTREAM_MILVUS_URI": str(tmp / "milvus.db"),
        "MINDSTREAM_DATA_DIR": str(tmp / "faust-data"), "MINDSTREAM_WEB_PORT": str(free_port()),
        "MINDSTREAM_ORT_THREADS": "1", **extra,
    })  # fmt: skip
    return env


def worker_topics(env: dict[str, str]) -> list[str]:
    """Every topic a worker with settings `env` uses or creates: its own and faust's internal ones."""
    app_id = env["MINDSTREAM_APP_ID"]
    topics = [env[k] for k in env if k.startswith("MINDSTREAM_TOPIC_")]
    return topics + [changelog_topic(app_id, "histories"), changelog_topic(app_id, "profiles"),
                     f"{app_id}-__assignor-__leader"]


def cleanup_topics(kafka_bootstrap: str, env: dict[str, str]) -> None:
    """Delete every topic of the worker settings `env`, so a shared broker is left as it was."""
    delete_topics(kafka_bootstrap, worker_topics(env))


def index_items(env: dict[str, str], artifact_dir: Path) -> None:
    """Write the artifact's item vectors to the store of `env` with `mind-stream index-items`."""
    indexed = subprocess.run([sys.executable, "-m", "streams.cli", "index-items", str(artifact_dir)],
                             env=env, cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)
    if indexed.returncode != 0:
        raise RuntimeError(f"mind-stream index-items failed ({indexed.returncode}):\n{indexed.stderr}")


def parse_exposition(text: str) -> tuple[dict[str, float], set[str]]:
    """Prometheus text → ({sample name with labels: value}, names of the declared families).

    A family is declared by its `# TYPE` line even while it has no sample (a labelled counter before its
    first increment).
    """
    samples: dict[str, float] = {}
    families: set[str] = set()
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            families.add(line.split()[2])
        elif line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            samples[name] = float(value)
    return samples, families


def metric_value(text: str, name: str) -> float:
    """The value of `name` in the exposition `text`, summed over its label sets.

    A declared family with no sample yet reads 0.0; a name the exposition does not declare raises KeyError,
    so a misspelt metric fails instead of reading as zero.
    """
    samples, families = parse_exposition(text)
    matching = [v for key, v in samples.items() if key == name or key.startswith(name + "{")]
    if matching:
        return float(sum(matching))
    base = next((name.removesuffix(s) for s in HISTOGRAM_SUFFIXES if name.endswith(s)), name)
    if name in families or base in families:
        return 0.0
    raise KeyError(f"no metric {name!r} on /metrics; declared: {', '.join(sorted(families))}")


def event(user: str, item: str, ts_s: float, **extra: object) -> tuple[bytes, bytes]:
    """One `interactions` message (key, value) for `user` clicking `item` at `ts_s`."""
    return user.encode(), json.dumps({"user_id": user, "item_id": item, "ts": ts_s, **extra}).encode()


@dataclass
class Worker:
    """One `mind-stream worker` subprocess and the settings it runs with.

    `own_session=True` starts it in a process group of its own, so `kill9` also takes down the Milvus Lite
    server it spawned (a `kill -9` of a whole worker, as a crashed container). `source_dir`: the checkout
    whose `streams` package it runs (the benchmark runs main's next to this one).
    """

    env: dict[str, str]
    artifact_dir: Path
    log_path: Path
    loglevel: str = "info"
    own_session: bool = False
    proc: subprocess.Popen | None = None
    started_logs: list[Path] = field(default_factory=list)
    source_dir: Path = REPO_ROOT

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.env['MINDSTREAM_WEB_PORT']}"

    @property
    def db(self) -> Path:
        """The Milvus Lite file of this worker."""
        return Path(self.env["MINDSTREAM_MILVUS_URI"])

    def spawn(self) -> None:
        """Start the process and return at once (`start` also waits until it is healthy)."""
        log = self.log_path.with_name(f"{self.log_path.stem}-{len(self.started_logs)}.log")
        self.started_logs.append(log)
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "streams.cli", "worker", "--artifact", str(self.artifact_dir),
             "--loglevel", self.loglevel],
            env=self.env, cwd=self.source_dir, stdout=log.open("wb"), stderr=subprocess.STDOUT,
            preexec_fn=die_with_parent,
            start_new_session=self.own_session,
        )

    def start(self, timeout: float = 240.0) -> float:
        """Spawn and wait until /healthz says ok; returns the seconds that took."""
        self.spawn()
        return self.wait_ready(timeout)

    def wait_ready(self, timeout: float = 240.0) -> float:
        """Seconds until /healthz says ok (artifact loaded, store open); raises when the worker exits."""
        started = time.monotonic()
        wait_until(self._healthy, timeout, interval=0.3,
                   what=f"worker healthy at {self.url} (log {self.started_logs[-1]})")
        return time.monotonic() - started

    def _healthy(self) -> bool:
        if self.proc is not None and self.proc.poll() is not None:
            raise RuntimeError(f"worker exited with {self.proc.returncode}:\n{self.log_tail()}")
        answer = self.health()
        return answer is not None and answer[1].get("status") == "ok"

    def health(self) -> tuple[int, dict] | None:
        """(HTTP status, body) of /healthz, None while nothing listens."""
        try:
            with urllib.request.urlopen(f"{self.url}/healthz", timeout=5) as response:
                return response.status, json.loads(response.read())
        except urllib.error.HTTPError as exc:
            return exc.code, json.loads(exc.read())
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            return None

    def stop(self) -> None:
        """SIGTERM (faust commits offsets and flushes the changelog); the whole tree is killed after 30 s."""
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            for pid in reversed(process_tree(self.proc.pid)):
                try:
                    os.kill(pid, signal.SIGKILL)
                except OSError:
                    pass
            self.proc.wait(timeout=10)

    def kill9(self) -> None:
        """SIGKILL the worker's process group (needs `own_session=True`)."""
        assert self.own_session, "kill9 needs a worker started with own_session=True"
        os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait()

    def wait_for(self, predicate: Callable[[], T], timeout: float, what: str, interval: float = 0.5) -> T:
        """`wait_until`, and on timeout the worker's log tail in the error: a stalled worker says why."""
        try:
            return wait_until(predicate, timeout, interval=interval, what=what)
        except TimeoutError as exc:
            raise TimeoutError(f"{exc}; worker log {self.started_logs[-1]}:\n{self.log_tail()}") from None

    def log_tail(self, lines: int = 40) -> str:
        return "\n".join(self.started_logs[-1].read_text(errors="replace").splitlines()[-lines:])

    def produce(self, messages: Sequence[tuple[bytes | None, bytes]],
                topic_env: str = "MINDSTREAM_TOPIC_INTERACTIONS") -> None:
        """Send (key, value) pairs to the worker's topic named by the setting `topic_env`."""
        produce(self.env["KAFKA_BOOTSTRAP"], self.env[topic_env], messages)

    def interests(self, user: str) -> dict:
        return get_json(f"{self.url}/users/{user}/interests")

    def metrics_text(self) -> str:
        with urllib.request.urlopen(f"{self.url}/metrics", timeout=5) as response:
            return response.read().decode()

    def metric(self, name: str) -> float:
        """One metric's value now (summed over labels); KeyError when the worker exports no such metric."""
        return metric_value(self.metrics_text(), name)

    def metric_or_zero(self, name: str) -> float:
        """`metric`, or 0.0 while the worker does not answer (starting, or killed)."""
        try:
            return self.metric(name)
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            return 0.0

    def metrics(self) -> dict[str, float]:
        """Every sample {name with labels: value}; empty while the worker does not answer."""
        try:
            return parse_exposition(self.metrics_text())[0]
        except (urllib.error.URLError, ConnectionError, TimeoutError, OSError):
            return {}

    def memory_mb(self) -> dict[str, float]:
        """RSS of the worker process and of its children (the Milvus Lite server), MiB."""
        if self.proc is None:
            return {}
        tree = process_tree(self.proc.pid)
        worker = rss_mb(tree[0])
        children = sum(rss_mb(p) for p in tree[1:])
        return {"worker_rss_mb": worker, "lite_server_rss_mb": children, "total_rss_mb": worker + children}


@contextmanager
def running_worker(kafka_bootstrap: str, artifact_dir: Path, tmp: Path, *, own_session: bool = False,
                   **extra: str) -> Iterator[Worker]:
    """A started worker on its own topics and Milvus Lite file (items indexed), `extra` settings on top of
    `worker_env`'s; stopped, and its topics deleted, on exit."""
    env = worker_env(kafka_bootstrap, tmp, **extra)
    index_items(env, artifact_dir)
    w = Worker(env=env, artifact_dir=artifact_dir, log_path=tmp / "worker.log", own_session=own_session)
    w.start()
    try:
        yield w
    finally:
        w.stop()
        cleanup_topics(kafka_bootstrap, env)


def committed_lag(worker: Worker) -> int:
    """Messages of the interactions topic not yet covered by the worker's committed offsets."""
    from kafka import KafkaConsumer, TopicPartition

    topic = worker.env["MINDSTREAM_TOPIC_INTERACTIONS"]
    # A consumer that never subscribes only reads the group's committed offsets; it does not join the group.
    consumer = KafkaConsumer(bootstrap_servers=worker.env["KAFKA_BOOTSTRAP"],
                             group_id=worker.env["MINDSTREAM_APP_ID"],
                             enable_auto_commit=False)
    try:
        partitions = [TopicPartition(topic, p) for p in consumer.partitions_for_topic(topic)]
        ends = consumer.end_offsets(partitions)
        return sum(end - (consumer.committed(tp) or 0) for tp, end in ends.items())
    finally:
        consumer.close()


class LagWatch:
    """`committed_lag` of a worker's consumer group through one long-lived client, for polling it often
    (`committed_lag` connects anew on every call, a few hundred ms on a loaded machine). Close it after."""

    def __init__(self, worker: Worker) -> None:
        from kafka import KafkaConsumer, TopicPartition

        topic = worker.env["MINDSTREAM_TOPIC_INTERACTIONS"]
        self._consumer = KafkaConsumer(bootstrap_servers=worker.env["KAFKA_BOOTSTRAP"],
                                       group_id=worker.env["MINDSTREAM_APP_ID"], enable_auto_commit=False)
        self._partitions = [TopicPartition(topic, p) for p in self._consumer.partitions_for_topic(topic)]

    def lag(self) -> int:
        ends = self._consumer.end_offsets(self._partitions)
        return sum(end - (self._consumer.committed(tp) or 0) for tp, end in ends.items())

    def close(self) -> None:
        self._consumer.close()


def dlq_messages(env: dict[str, str]) -> list[Any]:
    """Every message on the dead-letter topic of the worker settings `env`."""
    return read_topic(env["KAFKA_BOOTSTRAP"], env["MINDSTREAM_TOPIC_DLQ"])


# the worker's broker_commit_interval: acked offsets are committed this often
FAUST_COMMIT_INTERVAL_S = COMMIT_INTERVAL_S


def lags_across_commits(worker: Worker, intervals: int = 2) -> list[int]:
    """`committed_lag` sampled every half second for `intervals` of faust's commit interval.

    For checking that events a worker holds stay unacked: a commit that would cover them had its chance
    (a commit is an absence to prove, so this watches for a time instead of waiting for a condition).
    """
    lags = []
    end = time.monotonic() + intervals * FAUST_COMMIT_INTERVAL_S
    while time.monotonic() < end:
        lags.append(committed_lag(worker))
        time.sleep(0.5)
    return lags


# faust's log lines that mark the phases of a rebalance (faust-streaming 0.15 / aiokafka, loglevel info)
REBALANCE_MARKS = {
    "rebalance_noticed": "Revoking previously assigned partitions",
    "assigned": "Executing _on_partitions_assigned",
    "recovered": "Seek stream partitions to committed offsets.",
}


def rebalance_phases(log: Path, since: float) -> dict[str, float]:
    """Seconds from `since` (a `time.time()`, e.g. a kill) to the first rebalance after it in a worker's
    log: the group noticed it (the survivor's heartbeat answered "rebalancing": the session timeout
    running out), partitions assigned (JoinGroup, SyncGroup and faust's assignor), table recovery done
    (changelogs read to their end; the streams resume). A phase not reached is missing."""
    from datetime import datetime

    found: dict[str, float] = {}
    for line in log.read_text(errors="replace").splitlines():
        if not line.startswith("[20"):
            continue
        try:
            at = datetime.strptime(line[1:24], "%Y-%m-%d %H:%M:%S,%f").timestamp()
        except ValueError:
            continue
        if at < since:
            continue
        for phase, mark in REBALANCE_MARKS.items():
            if phase not in found and mark in line and all(p in found for p in list(REBALANCE_MARKS)[
                    :list(REBALANCE_MARKS).index(phase)]):
                found[phase] = round(at - since, 2)
    return found
