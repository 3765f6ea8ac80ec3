"""Store write cost: `VectorStore.write_user_interests` as the worker calls it, under one or more settings.

    .venv/bin/python tests/benchmarks/bench_store_write.py [--users 20000] [--writes 400] \
        [--variants '{"defaults": {}, "no batching of the cleanup": {"cleanup_batch_rows": 1e12}}']

Each variant (a label and the `VectorStore` keyword arguments it runs with) gets its own collections in one
Milvus Lite file: `--users` users x `--slots` slots pre-filled, then `--writes` writes of `--batch-users`
distinct users drawn Zipf(1.1) (the streaming benchmark's user skew), rows in the updater's format (`pk`,
`vector` as a list). The variants are interleaved in rounds so machine noise hits all of them. Each write is
timed including the once-per-`cleanup_interval_s` cleanup of replaced generations that may land in it. At the
end the pending cleanup is flushed and each variant's row count must equal users x slots (a wrong cleanup
shows up here). Also times the raw Lite calls behind a write (insert, delete by keys / by filter). Prints
numbers; asserts nothing about speed. To compare two versions of the store, run it in each checkout.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np

VERSION = "bench"


def user_rows(user_ids: list[str], rng: np.random.Generator, *, slots: int, dim: int, ts: int) -> list[dict]:
    """Rows as `streams.updater.store_operations` makes them (vector as a list)."""
    vectors = rng.standard_normal((len(user_ids), slots, dim)).astype(np.float32)
    return [{"pk": f"{u}#{s}", "user_id": u, "slot": s, "vector": vectors[i, s].tolist(),
             "model_version": VERSION,
             "event_ts_ms": ts, "updated_at_ms": ts}
            for i, u in enumerate(user_ids) for s in range(slots)]  # fmt: skip


def zipf_batches(rng: np.random.Generator, users: int, batch_users: int, writes: int) -> list[list[str]]:
    weights = 1.0 / np.arange(1, users + 1) ** 1.1
    weights /= weights.sum()
    batches = []
    for _ in range(writes):
        chosen: set[int] = set()
        while len(chosen) < batch_users:
            chosen.update(int(u) for u in rng.choice(users, batch_users - len(chosen), p=weights))
        batches.append([f"user{u}" for u in sorted(chosen)])
    return batches


def run(*, users: int, slots: int, dim: int, batch_users: int, writes: int, rounds: int,
        variants: dict[str, dict] | None = None, seed: int = 0) -> dict[str, dict[str, float]]:
    """`variants`: label -> VectorStore keyword arguments (default: one variant, the store's defaults)."""
    from streams.store import VectorStore

    work = Path(tempfile.mkdtemp(prefix="bench_store_write_"))
    uri = str(work / "bench.db")
    stores = {}
    for i, (label, kwargs) in enumerate((variants or {"defaults": {}}).items()):
        store = VectorStore(uri, collection_prefix=f"v{i}_", **kwargs)
        store.ensure_collections(dim, VERSION)
        rng = np.random.default_rng(seed)
        started = time.perf_counter()
        for start in range(0, users, 1000):
            store.write_user_interests(user_rows([f"user{u}" for u in range(start, min(users, start + 1000))],
                                                 rng,
                                                 slots=slots, dim=dim, ts=0))
        store.flush_cleanup()
        print(f"{label}: pre-filled {users} users x {slots} slots in {time.perf_counter() - started:.1f} s",
              flush=True)
        stores[label] = store

    batches = zipf_batches(np.random.default_rng(seed + 1), users, batch_users, writes)
    times: dict[str, list[float]] = {label: [] for label in stores}
    per_round = max(1, writes // rounds)
    for start in range(0, writes, per_round):
        for label, store in stores.items():
            rng = np.random.default_rng(seed + 2 + start)
            for j, batch in enumerate(batches[start : start + per_round]):
                rows = user_rows(batch, rng, slots=slots, dim=dim, ts=start + j + 1)
                began = time.perf_counter()
                store.write_user_interests(rows)
                times[label].append(time.perf_counter() - began)

    results = {}
    for label, store in stores.items():
        began = time.perf_counter()
        store.flush_cleanup()  # work a variant left for later counts too
        flush_ms = (time.perf_counter() - began) * 1000
        stored = store.count_user_interests(VERSION)
        ms = np.asarray(times[label]) * 1000
        results[label] = {"p50_ms": float(np.percentile(ms, 50)), "p99_ms": float(np.percentile(ms, 99)),
                          "max_ms": float(ms.max()), "mean_ms": float(ms.mean()), "flush_ms": flush_ms,
                          "users_per_s": batch_users * len(ms) / ((ms.sum() + flush_ms) / 1000),
                          "rows_after": stored}
        store.drop_all()
        store.close()
    results["raw Lite calls"] = raw_lite_calls(uri, users=users, slots=slots, dim=dim)
    return results


def raw_lite_calls(uri: str, *, users: int, slots: int, dim: int) -> dict[str, float]:
    """p50 ms of the Lite calls behind a write, on a collection of users x slots rows (the store's schema)."""
    from pymilvus import MilvusClient

    from streams.store import VectorStore

    store = VectorStore(uri, collection_prefix="raw_")
    store.ensure_collections(dim, VERSION)
    rng = np.random.default_rng(7)
    name = store.interests_collection(VERSION)
    client = MilvusClient(uri)  # pymilvus shares the process's Lite server for the same file
    generation = 1

    def records(user_range: range, vector_kind: str = "list") -> list[dict]:
        vectors = rng.standard_normal((len(user_range) * slots, dim)).astype(np.float32)
        return [{"key": f"user{u}#{s}#{generation}", "user_id": f"user{u}", "slot": s,
                 "generation": generation,
                 "vector": (vectors[i * slots + s].tolist() if vector_kind == "list"
                            else vectors[i * slots + s]),
                 "model_version": VERSION, "event_ts_ms": 1, "updated_at_ms": 1}
                for i, u in enumerate(user_range) for s in range(slots)]  # fmt: skip

    for start in range(0, users, 1000):
        client.insert(name, records(range(start, min(users, start + 1000))))
    out: dict[str, float] = {}

    def timed(label: str, call, repeats: int = 9) -> None:
        ms = []
        for r in range(repeats):
            began = time.perf_counter()
            call(r)
            ms.append((time.perf_counter() - began) * 1000)
        out[label] = float(np.median(ms))

    picks = np.random.default_rng(8).permutation(users)
    # Each delete takes users no earlier call deleted: 9 small and 2 x 5 large batches. A smaller --users
    # shrinks the batches (their sizes are in the labels) rather than deleting nothing.
    small, large = 75, 700
    if users < 9 * small + 10 * large:
        share = users / (9 * small + 10 * large)
        small, large = max(1, int(small * share)), max(1, int(large * share))
    by_key_large, by_filter = 9 * small, 9 * small + 5 * large

    def pick(start: int, size: int, r: int) -> list[str]:
        return [f"user{u}" for u in picks[start + size * r : start + size * (r + 1)]]

    timed("insert 75 users, vectors as lists",
          lambda r: client.insert(name, records(range(users + 75 * r, users + 75 * r + 75))))
    timed("insert 75 users, vectors as float32 arrays",
          lambda r: client.insert(name, records(range(2 * users + 75 * r, 2 * users + 75 * r + 75), "array")))
    timed(f"delete {small} users' rows by key", lambda r: client.delete(
        name, ids=[f"{u}#{s}#1" for u in pick(0, small, r) for s in range(slots)]))
    timed(f"delete {large} users' rows by key", lambda r: client.delete(
        name, ids=[f"{u}#{s}#1" for u in pick(by_key_large, large, r) for s in range(slots)]), repeats=5)
    timed(f"delete {large} users' rows by filter", lambda r: client.delete(
        name, filter=f"user_id in {json.dumps(pick(by_filter, large, r))} and generation < 2"), repeats=5)
    client.close()
    store.drop_all()
    store.close()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=20_000)
    parser.add_argument("--slots", type=int, default=3)
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--batch-users", type=int, default=75,
                        help="users per write (the worker's users per batch)")
    parser.add_argument("--writes", type=int, default=400)
    parser.add_argument("--rounds", type=int, default=8, help="interleave the variants in this many rounds")
    parser.add_argument("--variants", type=json.loads, default=None,
                        help='JSON {label: VectorStore kwargs}, e.g. \'{"1 s": {"cleanup_batch_rows": '
                             '1e12}}\'')
    args = parser.parse_args()
    results = run(users=args.users, slots=args.slots, dim=args.dim, batch_users=args.batch_users,
                  writes=args.writes, rounds=args.rounds, variants=args.variants)
    print(f"\n{args.users} users x {args.slots} slots, d={args.dim}; {args.writes} writes of "
          f"{args.batch_users} users")
    print("| store | write p50 ms | p99 ms | max ms | mean ms | final flush ms | users/s incl. flush | rows "
          "after flush |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for label, r in results.items():
        if label == "raw Lite calls":
            continue
        print(f"| {label} | {r['p50_ms']:.1f} | {r['p99_ms']:.1f} | {r['max_ms']:.1f} | {r['mean_ms']:.1f} | "
              f"{r['flush_ms']:.0f} | {r['users_per_s']:,.0f} | {r['rows_after']:,} (expected "
              f"{args.users * args.slots:,}) |")
    print("\n| raw Lite call | p50 ms |\n| --- | --- |")
    for label, ms in results["raw Lite calls"].items():
        print(f"| {label} | {ms:.1f} |")


if __name__ == "__main__":
    main()
