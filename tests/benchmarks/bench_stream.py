"""Streaming benchmarks: freshness, throughput (worker vs a naive peer, 1 vs 2 workers) and memory.

Everything runs against the real thing: the Kafka broker named by KAFKA_BOOTSTRAP (run under
`deploy/kafka/with-broker.sh`), real `mind-stream worker` subprocesses (faust + onnxruntime + Milvus Lite).

Setup. `users` users (100k; 10k with --quick) get histories of realistic length (log-normal, median 30
behaviours, capped at 500; the table keeps the artifact's `max_history_length` newest items and every event
id in `seen`) over the artifact's items drawn by Zipf popularity. They are pre-seeded by writing the
`histories` table's changelog topic directly (the worker restores its table from it on start, as after a
restart), so no warm-up stream is needed. Events pick users by Zipf (s = 1.1) over all of them.

Freshness, as a user sees it = the time from `producer.send()` of an event (its `ts` is stamped then)
until the user's vectors carrying that event are readable from the store: a probe polls the worker's
`GET /users/{user}/interests` every 2 ms for a sample of events until a stored row carries the event's time
(an upper bound: it adds an HTTP request and a Milvus query). For every event, also the arrival of the
user's `interest-updates` message whose `event_ts_ms` covers it (sent by the worker after the store write
returned; it adds the hop through Kafka back to the benchmark). Load levels: idle (a closed loop, one event
at a time, the next sent once the last is readable), paced 100 / 1,000 / 2,000 ev/s, and the highest paced
rate whose p99 stays ≤ 100 ms. The worker runs with its DEFAULT settings (no linger, batch ≤ 256).

The floor on this machine, timed in the same run: a Kafka produce → consume round trip alone, one Milvus
Lite write of 1 user × 4 vectors, one tower call for one user; each freshness figure is also given as a
ratio to their sum. With `--baseline-src DIR` (a checkout of main, e.g. from `git archive`), the same
single-worker phases run first with that code at its own defaults, so both read side by side.

Throughput = events/s applied by the worker (its `mindstream_events_applied` counter) while it drains a
backlog produced in one burst, measured from the end of the burst (and 10 % applied) to 90 % applied. The
naive peer drains the same events: a kafka-python loop that runs the PyTorch model eagerly for each event
and upserts that user's vectors into its own Milvus Lite collection for each event.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import threading
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np
from common import BIN, http_json, path_size_mb, summary_ms
from support.basics import free_port
from support.milvus import release_all_lite_servers
from support.topics import create_topics, delete_topics
from support.worker import Worker, index_items

from streams.kafka import changelog_topic

ZIPF_USERS = 1.1
ZIPF_ITEMS = 0.8


# --- synthetic users and events --------------------------------------------------------------------------


def zipf_sampler(rng: np.random.Generator, n: int, s: float):  # noqa: ANN201
    """A function size -> ranks 0..n-1 drawn with P(rank r) ∝ 1 / (r + 1)^s."""
    cdf = np.cumsum(1.0 / np.arange(1, n + 1) ** s)
    cdf /= cdf[-1]
    return lambda size: np.minimum(np.searchsorted(cdf, rng.random(size)), n - 1)


def make_histories(rng: np.random.Generator, item_ids: list[str], users: int, max_len: int,
                   now_ms: int) -> dict[str, dict]:
    """User id -> a histories-table value (docs/ARCHITECTURE.md) with a realistic number of past
    behaviours."""
    lengths = np.clip(np.round(rng.lognormal(np.log(30), 1.0, users)), 1, 500).astype(int)
    pick_item = zipf_sampler(rng, len(item_ids), ZIPF_ITEMS)
    histories = {}
    for u, n in enumerate(lengths.tolist()):
        items = pick_item(n)
        start = now_ms - 86_400_000 * 30
        ts = np.sort(rng.integers(start, now_ms - 60_000, n))
        kept = range(max(0, n - max_len), n)
        histories[f"u{u}"] = {"items": [[item_ids[items[j]], int(ts[j]), f"s{u}-{j}"] for j in kept],
                              "seen": [f"s{u}-{j}" for j in range(n)]}
    return histories


def kafka_kwargs() -> dict[str, Any]:
    return {"bootstrap_servers": bootstrap().split(",")}


def bootstrap() -> str:
    return os.environ.get("KAFKA_BOOTSTRAP", "localhost:9092")


def bench_worker(name: str, artifact: Path, workdir: Path, env: dict[str, str]) -> Worker:
    """A worker of this benchmark with its own Milvus Lite file, data dir and web port under `workdir`."""
    env = {**os.environ, **env, "MINDSTREAM_MILVUS_URI": str(workdir / f"{name}.db"),
           "MINDSTREAM_WEB_PORT": str(free_port()), "MINDSTREAM_DATA_DIR": str(workdir / f"{name}-data")}
    # loglevel: the default (info). At warning faust's progress spinner sets the root logger to DEBUG, and
    # every aiokafka debug call then builds a log record (py-spy: ~8 % of a drain's GIL time).
    return Worker(env=env, artifact_dir=artifact, log_path=workdir / f"{name}.log")


def seed_changelog(topic: str, histories: dict[str, dict], partitions: int) -> float:
    """Write every user's table value to the histories changelog, as faust does (table keys and values
    are JSON)."""
    from kafka import KafkaProducer
    from kafka.partitioner.default import murmur2

    started = time.perf_counter()
    producer = KafkaProducer(acks=1, linger_ms=50, batch_size=1 << 20, max_request_size=8 << 20,
                             **kafka_kwargs())
    for user, value in histories.items():
        # faust writes a key's changelog entry to the partition of the input event (raw user id key).
        partition = (murmur2(user.encode()) & 0x7FFFFFFF) % partitions
        producer.send(topic, key=json.dumps(user).encode(),
                      value=json.dumps(value, separators=(",", ":")).encode(),
                      partition=partition)
    producer.flush(timeout=300)
    producer.close()
    return time.perf_counter() - started


def event_value(user: str, item: str, ts_ms: int, event_id: str) -> bytes:
    return json.dumps({"user_id": user, "item_id": item, "ts": ts_ms, "event_id": event_id,
                       "behavior": "click"},
                      separators=(",", ":")).encode()


class EventSource:
    """Zipf users, Zipf items; per-user strictly increasing ts so an update's event_ts_ms names one event."""

    def __init__(self, rng: np.random.Generator, users: int, item_ids: list[str]) -> None:
        self.pick_user = zipf_sampler(rng, users, ZIPF_USERS)
        self.pick_item = zipf_sampler(rng, len(item_ids), ZIPF_ITEMS)
        self.item_ids = item_ids
        self.last_ts: dict[str, int] = {}
        self.count = 0

    def batch(self, size: int) -> list[tuple[str, str]]:
        return [(f"u{u}", self.item_ids[i]) for u, i in zip(self.pick_user(size).tolist(),
                                                            self.pick_item(size).tolist(),
                                                            strict=True)]

    def stamp(self, user: str, now_s: float) -> tuple[int, str]:
        ts = max(int(now_s * 1000), self.last_ts.get(user, 0) + 1)
        self.last_ts[user] = ts
        self.count += 1
        return ts, f"b{self.count}"


def produce_burst(topic: str, source: EventSource,
                  count: int) -> tuple[list[tuple[str, str, int, str]], float]:
    """Send `count` events as fast as kafka-python can; returns the events and the seconds it took."""
    from kafka import KafkaProducer

    producer = KafkaProducer(acks=1, linger_ms=20, batch_size=1 << 18, **kafka_kwargs())
    events = []
    started = time.perf_counter()
    for user, item in source.batch(count):
        ts, event_id = source.stamp(user, time.time())
        producer.send(topic, key=user.encode(), value=event_value(user, item, ts, event_id))
        events.append((user, item, ts, event_id))
    producer.flush(timeout=120)
    elapsed = time.perf_counter() - started
    producer.close()
    return events, elapsed


# --- freshness --------------------------------------------------------------------------------------------


class UpdatesListener:
    """Reads `interest-updates` from its end in a thread: (arrival time, user, event_ts_ms) per message."""

    def __init__(self, topic: str) -> None:
        from kafka import KafkaConsumer, TopicPartition

        self.consumer = KafkaConsumer(fetch_max_wait_ms=5, enable_auto_commit=False, group_id=None,
                                      **kafka_kwargs())
        parts = self.consumer.partitions_for_topic(topic) or {0}
        self.consumer.assign([TopicPartition(topic, p) for p in parts])
        self.consumer.seek_to_end()
        for tp in self.consumer.assignment():
            self.consumer.position(tp)  # resolve the end offset now, before events are sent
        self.arrivals: list[tuple[float, str, int]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        while not self._stop.is_set():
            for records in self.consumer.poll(timeout_ms=20).values():
                now = time.time()
                for record in records:
                    value = json.loads(record.value)
                    self.arrivals.append((now, value["user_id"], int(value["event_ts_ms"])))

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self.consumer.close()


class InterestsProbe:
    """Freshness as a user sees it: for one sampled event at a time, poll GET /users/{user}/interests until
    a stored row carries the event's time; latency = first such answer − send time."""

    def __init__(self, url: str, poll_s: float = 0.002) -> None:
        self.url, self.poll_s = url, poll_s
        self.latencies: list[float] = []
        self.timeouts = 0
        self.busy = threading.Event()

    def offer(self, user: str, ts_ms: int, sent: float) -> None:
        if not self.busy.is_set():
            self.busy.set()
            threading.Thread(target=self._probe, args=(user, ts_ms, sent), daemon=True).start()

    def _probe(self, user: str, ts_ms: int, sent: float) -> None:
        try:
            deadline = sent + 10.0
            while time.time() < deadline:
                answer = http_json(f"{self.url}/users/{user}/interests", timeout=5)
                if answer and any(int(r.get("event_ts_ms", 0)) >= ts_ms for r in answer.get("interests", [])):
                    self.latencies.append(time.time() - sent)
                    return
                time.sleep(self.poll_s)
            self.timeouts += 1
        finally:
            self.busy.clear()


def produce_paced(topic: str, source: EventSource, rate: float, seconds: float,
                  probe: InterestsProbe | None = None, probe_every: int = 10) -> list[tuple[str, int, float]]:
    """Send events at `rate`/s for `seconds`; ts stamped at send. Returns (user, ts_ms, send time)."""
    from kafka import KafkaProducer

    producer = KafkaProducer(acks=1, linger_ms=0, **kafka_kwargs())
    total = int(rate * seconds)
    pairs = source.batch(total)
    sent = []
    started = time.perf_counter()
    for i, (user, item) in enumerate(pairs):
        delay = started + i / rate - time.perf_counter()
        if delay > 0:
            time.sleep(delay)
        now = time.time()
        ts, event_id = source.stamp(user, now)
        producer.send(topic, key=user.encode(), value=event_value(user, item, ts, event_id))
        sent.append((user, ts, now))
        if probe is not None and i % probe_every == 0:
            probe.offer(user, ts, now)
    producer.flush(timeout=60)
    producer.close()
    return sent


def match_freshness(sent: list[tuple[str, int, float]],
                    arrivals: list[tuple[float, str, int]]) -> tuple[list[float], int]:
    """Per sent event: first update of its user (arriving after the send) whose event_ts_ms ≥ the
    event's ts."""
    by_user: dict[str, list[tuple[float, int]]] = defaultdict(list)
    for arrived, user, event_ts in arrivals:
        by_user[user].append((arrived, event_ts))
    latencies, missing = [], 0
    for user, ts, when in sent:
        hit = next((arrived for arrived, event_ts in by_user.get(user, ())
                    if event_ts >= ts and arrived >= when), None)
        if hit is None:
            missing += 1
        else:
            latencies.append(hit - when)
    return latencies, missing


def freshness_histogram(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    """Fraction of events the worker itself saw written within 10 / 25 / 50 ms (its histogram, this phase)."""
    def count(le: str, m: dict[str, float]) -> float:
        return m.get(f'mindstream_freshness_seconds_bucket{{le="{le}"}}', 0.0)

    total = count("+Inf", after) - count("+Inf", before)
    if total <= 0:
        return {}
    return {f"worker_le_{int(float(le) * 1000)}ms": (count(le, after) - count(le, before)) / total
            for le in ("0.01", "0.025", "0.05")}


PROBES_PER_S = 20  # sampled events per second whose store read is polled (one at a time)


def freshness_phase(worker: Worker, topics: dict[str, str], source: EventSource, rate: float,
                    seconds: float) -> dict[str, Any]:
    listener = UpdatesListener(topics["updates"])
    before = worker.metrics()
    checker = InterestsProbe(worker.url)
    sent = produce_paced(topics["interactions"], source, rate, seconds, checker,
                         probe_every=max(1, int(rate // PROBES_PER_S)))
    deadline = time.time() + 30
    latencies, missing = match_freshness(sent, listener.arrivals)
    while missing and time.time() < deadline:
        time.sleep(0.5)
        latencies, missing = match_freshness(sent, listener.arrivals)
    time.sleep(0.2)
    while checker is not None and checker.busy.is_set() and time.time() < deadline:
        time.sleep(0.05)
    listener.close()
    after = worker.metrics()
    achieved = len(sent) / max(1e-9, sent[-1][2] - sent[0][2]) if len(sent) > 1 else 0.0
    return _phase_result(rate, achieved, len(sent), latencies, missing, checker, before, after)


def _phase_result(rate: float | str, achieved: float, events: int, latencies: list[float], missing: int,
                  checker: InterestsProbe, before: dict[str, float],
                  after: dict[str, float]) -> dict[str, Any]:
    return {"rate": rate, "achieved_rate": achieved, "events": events, "not_readable_within_30s": missing,
            **summary_ms(latencies), **freshness_histogram(before, after),
            # for the plot; dropped from printed JSON
            "latencies_ms": [round(x * 1000, 3) for x in latencies],
            "batch_events_mean": _mean_of(before, after, "mindstream_batch_events"),
            "batch_users_mean": _mean_of(before, after, "mindstream_batch_users"),
            "tower_ms_mean": 1000 * _mean_of(before, after, "mindstream_tower_seconds"),
            "upsert_ms_mean": 1000 * _mean_of(before, after, "mindstream_upsert_seconds"),
            **_step_means(before, after),
            "http_probe": {**summary_ms(checker.latencies), "timeouts": checker.timeouts}}


def _step_means(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    """Mean ms of the steps only this branch's worker times (nan for main's): save and clean-up."""
    return {"save_ms_mean": 1000 * _mean_of(before, after, "mindstream_save_seconds"),
            "cleanup_ms_mean": 1000 * _mean_of(before, after, "mindstream_cleanup_seconds"),
            "cleanups": after.get("mindstream_cleanup_seconds_count", 0)
            - before.get("mindstream_cleanup_seconds_count", 0)}


def idle_phase(worker: Worker, topics: dict[str, str], source: EventSource, count: int) -> dict[str, Any]:
    """Closed loop, one event at a time: send, poll the store read until the event is there, then the next.
    Both figures per event: store read (HTTP probe) and the `interest-updates` arrival."""
    from kafka import KafkaProducer

    listener = UpdatesListener(topics["updates"])
    before = worker.metrics()
    producer = KafkaProducer(acks=1, linger_ms=0, **kafka_kwargs())
    checker = InterestsProbe(worker.url)
    sent = []
    for user, item in source.batch(count):
        now = time.time()
        ts, event_id = source.stamp(user, now)
        producer.send(topic=topics["interactions"], key=user.encode(),
                      value=event_value(user, item, ts, event_id))
        producer.flush()
        sent.append((user, ts, now))
        checker.busy.set()
        checker._probe(user, ts, now)  # noqa: SLF001 - in this thread: the loop waits for the read
        time.sleep(0.01)  # idle between events: nothing is queued when the next one is sent
    producer.close()
    deadline = time.time() + 10
    latencies, missing = match_freshness(sent, listener.arrivals)
    while missing and time.time() < deadline:
        time.sleep(0.2)
        latencies, missing = match_freshness(sent, listener.arrivals)
    listener.close()
    after = worker.metrics()
    return _phase_result("idle", float("nan"), len(sent), latencies, missing, checker, before, after)


SUSTAINED_P99_MS = 100.0


def _sustained(phase: dict[str, Any]) -> bool:
    probe = phase.get("http_probe", {})
    return (phase["not_readable_within_30s"] == 0 and phase["p99_ms"] <= SUSTAINED_P99_MS
            and not probe.get("p99_ms", 0) > SUSTAINED_P99_MS)


def _freshness_logged(worker: Worker, topics: dict[str, str], source: EventSource, rate: float,
                      seconds: float, tag: str) -> dict[str, Any]:
    phase = freshness_phase(worker, topics, source, rate, seconds)
    _print_phase(tag, f"{rate:,.0f} ev/s", phase)
    phase["catch_up_s"] = wait_caught_up(worker, source.count)
    return phase


def wait_caught_up(worker: Worker, produced: int, timeout: float = 600.0) -> float:
    """Seconds until the worker has read every event sent so far (an overloaded phase leaves a queue that
    would otherwise be measured by the next phase)."""
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        if worker.metrics().get("mindstream_events_in_total", 0.0) >= produced:
            return time.monotonic() - started
        time.sleep(0.5)
    raise RuntimeError(f"worker {worker.url} did not catch up with {produced} events in {timeout:.0f} s")


def _print_phase(tag: str, load: str, phase: dict[str, Any]) -> None:
    probe = phase["http_probe"]
    print(f"  streaming [{tag}]: {load}: store read p50 {probe['p50_ms']:.1f} ms, "
          f"p99 {probe['p99_ms']:.1f} ms (n={probe['n']}); "
          f"interest-updates p50 {phase['p50_ms']:.1f} ms, p99 {phase['p99_ms']:.1f} ms "
          f"({phase['n']} events, {phase['not_readable_within_30s']} missing; "
          f"{phase['batch_events_mean']:.1f} events/batch)", flush=True)


# --- the floor: each step alone ---------------------------------------------------------------------------


def floor_kafka(topic: str, samples: int) -> dict[str, Any]:
    """One message produced, then consumed by a consumer already waiting at the end: send → receipt."""
    from kafka import KafkaConsumer, KafkaProducer, TopicPartition

    producer = KafkaProducer(acks=1, linger_ms=0, **kafka_kwargs())
    consumer = KafkaConsumer(enable_auto_commit=False, group_id=None, fetch_max_wait_ms=500,
                             **kafka_kwargs())
    consumer.assign([TopicPartition(topic, 0)])
    consumer.seek_to_end()
    consumer.position(TopicPartition(topic, 0))
    latencies = []
    for i in range(samples):
        started = time.perf_counter()
        producer.send(topic, key=b"floor", value=str(i).encode(), partition=0)
        producer.flush()
        got = False
        while not got:
            got = any(records for records in consumer.poll(timeout_ms=1000, max_records=1).values())
        latencies.append(time.perf_counter() - started)
        time.sleep(0.005)
    producer.close()
    consumer.close()
    return summary_ms(latencies)


def floor_store_and_tower(artifact: Path, workdir: Path, samples: int) -> dict[str, Any]:
    """One Milvus Lite write of 1 user × 4 vectors (a fresh Lite file, the worker's write path) and one
    tower call for one user of 30 items."""
    from export.runtime import UserTowerRuntime
    from streams.store import VectorStore
    from streams.updater import recompute

    runtime = UserTowerRuntime.load(artifact)
    manifest = runtime.manifest
    item_ids, _ = read_artifact(artifact)
    history = {"items": [[item_ids[j % len(item_ids)], 1_000 + j, f"f{j}"] for j in range(30)], "seen": []}
    tower = []
    for _ in range(samples):
        started = time.perf_counter()
        recompute(runtime, {"floor": history}, None, updated_at_ms=1)
        tower.append(time.perf_counter() - started)
    store = VectorStore(str(workdir / "floor.db"))
    writes = []
    try:
        store.cleanup_in_writes = False  # as the worker runs it
        store.ensure_collections(manifest.embedding_dim, manifest.model_version)
        rng = np.random.default_rng(0)
        for i in range(samples):
            rows = [{"user_id": f"floor{i % 50}", "slot": slot, "event_ts_ms": 1_000 + i,
                     "vector": rng.standard_normal(manifest.embedding_dim).astype(np.float32).tolist()}
                    for slot in range(4)]
            started = time.perf_counter()
            store.write_user_interests(rows, model_version=manifest.model_version)
            writes.append(time.perf_counter() - started)
            if store.cleanup_due():
                store.flush_cleanup()
    finally:
        store.close()
        release_all_lite_servers()
    return {"lite_write_1x4": summary_ms(writes), "tower_1_user": summary_ms(tower)}


def floor(artifact: Path, workdir: Path, samples: int) -> dict[str, Any]:
    topic = f"bench-floor-{os.getpid()}-{int(time.time())}"
    create_topics(bootstrap(), {topic: 1})
    try:
        result = {"kafka_round_trip": floor_kafka(topic, samples), **floor_store_and_tower(artifact, workdir,
                                                                                          samples)}
    finally:
        delete_topics(bootstrap(), [topic])
    result["sum_p50_ms"] = sum(result[k]["p50_ms"] for k in ("kafka_round_trip", "lite_write_1x4",
                                                             "tower_1_user"))
    print(f"  streaming: floor p50: Kafka round trip {result['kafka_round_trip']['p50_ms']:.2f} ms, "
          f"Lite write 1x4 {result['lite_write_1x4']['p50_ms']:.2f} ms, "
          f"tower 1 user {result['tower_1_user']['p50_ms']:.2f} ms; sum {result['sum_p50_ms']:.2f} ms",
          flush=True)
    return result


def _mean_of(before: dict[str, float], after: dict[str, float], name: str) -> float:
    count = after.get(f"{name}_count", 0) - before.get(f"{name}_count", 0)
    total = after.get(f"{name}_sum", 0) - before.get(f"{name}_sum", 0)
    return total / count if count else float("nan")


# --- throughput -------------------------------------------------------------------------------------------


def drain_rate(workers: list[Worker], topic: str, source: EventSource, backlog: int,
               timeout: float = 900.0) -> dict[str, Any]:
    """Burst `backlog` events, then watch the workers' applied counters until 90 % are applied."""
    def applied() -> float:
        return sum(w.metrics().get("mindstream_events_applied_total", 0.0) for w in workers)

    base = applied()
    before = [w.metrics() for w in workers]
    started = time.perf_counter()
    events, produce_s = produce_burst(topic, source, backlog)
    series = [(time.perf_counter() - started, applied() - base)]
    while series[-1][1] < backlog and time.perf_counter() - started < timeout:
        time.sleep(0.25)
        series.append((time.perf_counter() - started, applied() - base))
        if any(w.proc.poll() is not None for w in workers):
            raise RuntimeError("a worker died while draining; see "
                               + ", ".join(str(w.started_logs[-1]) for w in workers))
    after = [w.metrics() for w in workers]
    t0 = next(t for t, n in series if n >= 0.1 * backlog and t >= produce_s)
    n0 = next(n for t, n in series if t == t0)
    t1, n1 = next((t, n) for t, n in series if n >= 0.9 * backlog)
    interval_rates = [(b[1] - a[1]) / (b[0] - a[0]) for a, b in zip(series, series[1:], strict=False)
                      if a[0] >= t0 and b[0] <= t1 and b[0] > a[0]]
    return {"events": backlog, "events_per_s": (n1 - n0) / (t1 - t0) if t1 > t0 else float("nan"),
            "interval_p50_events_per_s": (statistics.median(interval_rates) if interval_rates
                                          else float("nan")),
            "burst_produce_s": produce_s, "drain_s": series[-1][0], "series": series,
            "batch_events_mean": statistics.fmean(_mean_of(b, a, "mindstream_batch_events")
                                                  for b, a in zip(before, after, strict=True)),
            "batch_users_mean": statistics.fmean(_mean_of(b, a, "mindstream_batch_users")
                                                 for b, a in zip(before, after, strict=True)),
            "tower_ms_mean": 1000 * statistics.fmean(_mean_of(b, a, "mindstream_tower_seconds")
                                                     for b, a in zip(before, after, strict=True)),
            "upsert_ms_mean": 1000 * statistics.fmean(_mean_of(b, a, "mindstream_upsert_seconds")
                                                      for b, a in zip(before, after, strict=True)),
            **_step_means(before[0], after[0])}


def naive_peer(run_dir: Path, topic: str, histories: dict[str, dict], count: int, workdir: Path,
               max_len: int) -> dict[str, Any]:
    """The obvious implementation: kafka-python loop, PyTorch eager per event, one Milvus Lite upsert per
    event."""
    import torch
    from kafka import KafkaConsumer, TopicPartition
    from pymilvus import MilvusClient

    from model.checkpoint import load_checkpoint

    torch.set_num_threads(1)  # the worker's onnxruntime runs on 1 thread too
    checkpoint = load_checkpoint(run_dir)
    model = checkpoint.model.eval()
    index_of = {item: i for i, item in enumerate(checkpoint.vocabularies["item_ids"]) if i > 0}
    profile_fields = len(checkpoint.vocabularies.get("profile", {}))
    dim = checkpoint.config.embedding_dim
    client = MilvusClient(str(workdir / "naive.db"))
    client.create_collection("naive_interests", dimension=dim, primary_field_name="pk", id_type="string",
                             max_length=128, vector_field_name="vector", metric_type="IP")
    table = {u: [it[0] for it in v["items"]] for u, v in histories.items()}
    consumer = KafkaConsumer(enable_auto_commit=False, group_id=None, **kafka_kwargs())
    parts = consumer.partitions_for_topic(topic)
    consumer.assign([TopicPartition(topic, p) for p in parts])
    consumer.seek_to_beginning()
    done, started = 0, None
    while done < count:
        for records in consumer.poll(timeout_ms=500, max_records=100).values():
            for record in records:
                if started is None:
                    started = time.perf_counter()
                event = json.loads(record.value)
                user = event["user_id"]
                items = (table.get(user, []) + [event["item_id"]])[-max_len:]
                table[user] = items
                known = [index_of[i] for i in items if i in index_of] or [0]
                with torch.inference_mode():
                    out = model.interests(torch.tensor([known]), torch.tensor([[k > 0 for k in known]]),
                                          torch.zeros((1, profile_fields), dtype=torch.long))
                vectors, valid = out.interest_vectors[0].numpy(), out.valid_interest_mask[0].numpy()
                rows = [{"pk": f"{user}#{k}",
                         "vector": vectors[k].tolist()} for k in range(len(valid)) if valid[k]]
                client.upsert("naive_interests", rows)
                done += 1
                if done >= count:
                    break
            if done >= count:
                break
    elapsed = time.perf_counter() - started
    consumer.close()
    client.close()
    release_all_lite_servers()
    return {"events": done, "events_per_s": done / elapsed, "seconds": elapsed}


# --- the whole streaming benchmark ------------------------------------------------------------------------


def read_artifact(artifact: Path) -> tuple[list[str], int]:
    manifest = json.loads((artifact / "manifest.json").read_text())
    vocab = json.loads((artifact / "vocab.json").read_text())
    return list(vocab["item_ids"][1:]), int(manifest["max_history_length"])


def new_deployment(tag: str, partitions: int, histories: dict[str, dict],
                   workdir: Path) -> tuple[dict[str, str], dict[str, str], float]:
    """Topics for one app id, with the histories changelog pre-seeded; returns (topics, env, seed seconds)."""
    app_id = f"bench-{tag}-{os.getpid()}-{int(time.time())}"
    topics = {"interactions": f"{app_id}-interactions", "profiles": f"{app_id}-profiles",
              "updates": f"{app_id}-updates",
              "dlq": f"{app_id}-dlq", "changelog": changelog_topic(app_id, "histories")}
    create_topics(bootstrap(),
                  {topics["interactions"]: partitions, topics["profiles"]: partitions, topics["updates"]: 1,
                   topics["dlq"]: 1, topics["changelog"]: partitions},
                   compact={topics["profiles"], topics["changelog"]})
    seed_s = seed_changelog(topics["changelog"], histories, partitions)
    env = {"MINDSTREAM_APP_ID": app_id, "MINDSTREAM_TOPIC_INTERACTIONS": topics["interactions"],
           "MINDSTREAM_TOPIC_PROFILES": topics["profiles"], "MINDSTREAM_TOPIC_UPDATES": topics["updates"],
           "MINDSTREAM_TOPIC_DLQ": topics["dlq"], "MINDSTREAM_PARTITIONS": str(partitions)}
    return topics, env, seed_s


def wait_restored(worker: Worker, user: str, length: int, timeout: float = 600.0) -> float:
    """Seconds until the worker's table answers with `user`'s seeded history (the changelog is restored)."""
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        answer = http_json(f"{worker.url}/users/{user}/interests", timeout=5)
        if answer and answer.get("history_length") == length:
            return time.monotonic() - started
        time.sleep(0.25)
    raise RuntimeError(f"worker {worker.url}: table not restored after {timeout:.0f} s (log "
                       f"{worker.started_logs[-1]})")


RATES = (100, 1000, 2000)


def single_worker(tag: str, artifact: Path, workdir: Path, histories: dict[str, dict], item_ids: list[str],
                  seed: int, sizes: dict[str, Any], all_topics: list[str], workers: list[Worker],
                  source_dir: Path | None = None, profile: Path | None = None,
                  freshness: bool = True) -> tuple[dict[str, Any], dict[str, str]]:
    """One worker on one partition with its default settings: drain rate, then freshness at every load
    level. `source_dir`: run that checkout's code (the baseline) instead of this one."""
    users = len(histories)
    result: dict[str, Any] = {}
    topics, env, seed_s = new_deployment(tag, 1, histories, workdir)
    all_topics += topics.values()
    result["seed_changelog_s"] = seed_s
    worker = bench_worker(tag, artifact, workdir, env)
    if source_dir is not None:
        worker.source_dir = source_dir
    workers.append(worker)
    index_items(worker.env, artifact)
    ready_s = worker.start(timeout=180)
    restore_s = wait_restored(worker, "u0", len(histories["u0"]["items"]))
    result["worker_ready_s"], result["table_restored_s"] = ready_s, ready_s + restore_s
    result["memory_after_restore"] = worker.memory_mb()
    rng = np.random.default_rng(seed + 1)  # the same events for every variant
    source = EventSource(rng, users, item_ids)
    print(f"  streaming [{tag}]: {users:,} users seeded in {seed_s:.1f} s, worker restored its table in "
          f"{ready_s + restore_s:.1f} s", flush=True)
    result["throughput_1_worker"] = drain_rate([worker], topics["interactions"], source, sizes["backlog"])
    max_rate = result["throughput_1_worker"]["events_per_s"]
    print(f"  streaming [{tag}]: 1 worker drained {sizes['backlog']:,} events at {max_rate:,.0f} events/s",
          flush=True)
    if profile:  # a separate, smaller drain: the sampler's own CPU must not lower the figure above
        spy = start_profiler(worker, profile)
        profiled = drain_rate([worker], topics["interactions"], source, sizes["backlog"] // 3)
        result["profile"] = {**finish_profiler(spy, profile),
                             "events_per_s_while_sampled": profiled["events_per_s"]}
    result["freshness"] = []
    if freshness:
        idle = idle_phase(worker, topics, source, sizes["idle_events"])
        _print_phase(tag, "idle, closed loop", idle)
        result["freshness"].append(idle)
        for rate in RATES:
            result["freshness"].append(_freshness_logged(worker, topics, source, rate, sizes["phase_s"], tag))
        # The most events/s a paced stream sustains with p99 ≤ SUSTAINED_P99_MS: the highest tried rate that
        # does, trying fractions of the drain rate from the top.
        shares = (0.9, 0.8, 0.6, 0.45, 0.3, 0.2)
        candidates = sorted({round(max_rate * share, -2) for share in shares} - set(RATES), reverse=True)
        sustained = [p["rate"] for p in result["freshness"][1:] if _sustained(p)]
        for rate in candidates:
            if sustained and rate < max(sustained):
                break
            phase = _freshness_logged(worker, topics, source, rate, sizes["phase_s"] / 2, tag)
            result["freshness"].append(phase)
            if _sustained(phase):
                sustained.append(rate)
                break
        result["max_sustainable_rate"] = max(sustained) if sustained else None
        result["max_sustainable_vs_drain"] = (result["max_sustainable_rate"] or 0) / max_rate
    result["memory"] = {**worker.memory_mb(), "lite_file_mb": path_size_mb(worker.db),
                        "users_in_table": users,
                        "events_applied": worker.metrics().get("mindstream_events_applied_total")}
    worker.stop()
    return result, topics


def run(artifact: Path, run_dir: Path, quick: bool = False, workdir: Path | None = None, seed: int = 0,
        profile: Path | None = None, parts: tuple[str, ...] = ("freshness", "naive", "two_workers"),
        baseline_src: Path | None = None) -> dict[str, Any]:
    users = 10_000 if quick else 100_000
    sizes = {"backlog": 10_000 if quick else 60_000, "phase_s": 6.0 if quick else 20.0,
             "idle_events": 60 if quick else 200}
    naive_events = 200 if quick else 1_000
    item_ids, max_len = read_artifact(artifact)
    rng = np.random.default_rng(seed)
    own_dir = workdir is None
    tmp = tempfile.TemporaryDirectory(prefix="bench_stream_") if own_dir else None
    workdir = Path(tmp.name) if tmp else workdir
    started = time.perf_counter()
    histories = make_histories(rng, item_ids, users, max_len, int(time.time() * 1000))
    lengths = [len(v["seen"]) for v in histories.values()]
    result: dict[str, Any] = {
        "name": "streaming", "setup": {
            "users": users, "zipf_users_s": ZIPF_USERS, "zipf_items_s": ZIPF_ITEMS, "items": len(item_ids),
            "history_median": statistics.median(lengths), "history_p90": float(np.percentile(lengths, 90)),
            "max_history_length": max_len, "worker_settings": "defaults", "backlog_events": sizes["backlog"],
            "phase_seconds": sizes["phase_s"], "idle_events": sizes["idle_events"], "cpus": os.cpu_count(),
            "sustained_p99_ms": SUSTAINED_P99_MS,
            "baseline_src": str(baseline_src) if baseline_src else None}}
    all_topics: list[str] = []
    workers: list[Worker] = []
    try:
        result["floor"] = floor(artifact, workdir, 50 if quick else 200)
        if baseline_src is not None:  # main's code at main's defaults, same events, same machine, same run
            result["baseline"], _ = single_worker("base", artifact, workdir, histories, item_ids, seed, sizes,
                                                  all_topics, workers, source_dir=baseline_src,
                                                  freshness="freshness" in parts)
        one, topics = single_worker("w1", artifact, workdir, histories, item_ids, seed, sizes, all_topics,
                                    workers, profile=profile, freshness="freshness" in parts)
        for key in ("seed_changelog_s", "worker_ready_s", "table_restored_s"):
            result["setup"][key] = one.pop(key)
        result.update(one)
        max_rate = result["throughput_1_worker"]["events_per_s"]
        if "naive" in parts:  # the naive peer on the same backlog events (the first `naive_events` of them)
            result["naive_peer"] = naive_peer(run_dir, topics["interactions"], histories, naive_events,
                                              workdir, max_len)
            result["naive_peer"]["worker_vs_naive"] = max_rate / result["naive_peer"]["events_per_s"]
            print(f"  streaming: naive peer {result['naive_peer']['events_per_s']:.0f} events/s "
                  f"(worker {result['naive_peer']['worker_vs_naive']:.1f}x)", flush=True)
        if "two_workers" in parts:  # two workers, two partitions, each with its own Lite file
            topics2, env2, _ = new_deployment("w2", 2, histories, workdir)
            all_topics += topics2.values()
            pair = [bench_worker(f"w2-{i}", artifact, workdir, env2) for i in range(2)]
            workers += pair
            for w in pair:
                index_items(w.env, artifact)
                w.spawn()
            for w in pair:
                w.wait_ready(timeout=180)
            wait_restored_any(pair, {u: len(histories[u]["items"]) for u in ("u0", "u1", "u2", "u3", "u4",
                                                                             "u5")})
            two = drain_rate(pair, topics2["interactions"], EventSource(rng, users, item_ids),
                             sizes["backlog"])
            two["vs_1_worker"] = two["events_per_s"] / max_rate
            result["throughput_2_workers"] = two
            print(f"  streaming: 2 workers drained at {two['events_per_s']:,.0f} events/s", flush=True)
    finally:
        for w in workers:
            w.stop()
        delete_topics(bootstrap(), all_topics)
        result["seconds"] = time.perf_counter() - started
        if tmp is not None:
            tmp.cleanup()
    return result


def start_profiler(worker: Worker, out: Path) -> Any:
    """py-spy samples the worker while it drains, only the thread holding the GIL (where a Python process
    spends its CPU): collapsed stacks to `out`."""
    import subprocess

    out.parent.mkdir(parents=True, exist_ok=True)
    return subprocess.Popen([str(BIN / "py-spy"), "record", "--pid", str(worker.proc.pid), "--rate", "200",
                             "--format", "raw", "--output", str(out), "--nonblocking", "--gil"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def finish_profiler(spy: Any, out: Path, top: int = 40) -> dict[str, Any]:
    """Stop py-spy (SIGINT writes its file) → the functions with the most samples, self and inclusive."""
    import signal

    spy.send_signal(signal.SIGINT)
    spy.wait(timeout=60)
    self_count: dict[str, int] = defaultdict(int)
    inclusive: dict[str, int] = defaultdict(int)
    total = 0
    for line in out.read_text().splitlines() if out.exists() else []:
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        frames = [f for f in stack.split(";") if not f.startswith(("thread (", "process "))]
        if not frames:
            continue
        total += n
        self_count[frames[-1]] += n
        for frame in set(frames):
            inclusive[frame] += n

    def ranked(counts: dict[str, int]) -> list[tuple[str, float]]:
        return [(f, c / total) for f, c in sorted(counts.items(),
                                                  key=lambda kv: -kv[1])[:top]] if total else []

    return {"samples": total, "file": str(out), "self": ranked(self_count), "inclusive": ranked(inclusive)}


def wait_restored_any(workers: list[Worker], lengths: dict[str, int], timeout: float = 600.0) -> None:
    """Until every user in `lengths` has its seeded history in one of the workers' tables (both partitions
    assigned and restored)."""
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        found = {u for u, n in lengths.items() for w in workers
                 if (http_json(f"{w.url}/users/{u}/interests", timeout=5) or {}).get("history_length") == n}
        if found == set(lengths):
            return
        time.sleep(0.5)
    raise RuntimeError(f"two workers: tables not restored after {timeout:.0f} s")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("artifact", type=Path)
    parser.add_argument("run_dir", type=Path,
                        help="the checkpoint behind the artifact (for the naive PyTorch peer)")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--baseline-src", type=Path, default=None,
                        help="a checkout of main (e.g. `git archive main | tar -x -C DIR`): run its worker "
                             "first, at its defaults, for a side-by-side baseline")
    parser.add_argument("--keep", type=Path, default=None, help="work folder to keep (logs, Lite files)")
    parser.add_argument("--profile", type=Path, default=None,
                        help="py-spy the worker while it drains; collapsed stacks here")
    parser.add_argument("--parts", default="freshness,naive,two_workers",
                        help="what to run after the 1-worker drain")
    args = parser.parse_args(argv)
    if args.keep:
        args.keep.mkdir(parents=True, exist_ok=True)
    result = run(args.artifact.resolve(), args.run_dir.resolve(), args.quick, args.keep, profile=args.profile,
                 parts=tuple(p for p in args.parts.split(",") if p), baseline_src=args.baseline_src)
    for variant in (result, result.get("baseline", {})):
        variant.get("throughput_1_worker", {}).pop("series", None)
        variant.get("throughput_2_workers", {}).pop("series", None)
        for phase in variant.get("freshness", []):
            phase.pop("latencies_ms", None)
    print(json.dumps(result, indent=1, default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
