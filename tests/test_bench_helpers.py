"""The benchmark scripts' own logic (no timing asserted): freshness matching, Zipf draws, the report
writer."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent / "benchmarks"))

import bench_stream  # noqa: E402
import report  # noqa: E402


def test_an_event_is_fresh_at_the_first_update_of_its_user_that_covers_its_time() -> None:
    sent = [("u1", 1_000, 1.000), ("u1", 1_005, 1.005), ("u2", 1_010, 1.010), ("u3", 1_020, 1.020)]
    arrivals = [
        (0.990, "u1", 1_000),  # arrived before the event was sent: a previous update, not this one
        (1.030, "u1", 1_000),  # covers the first event only
        (1.050, "u1", 1_005),
        (1.040, "u2", 1_009),  # older than u2's event: does not cover it
        (1.060, "u2", 1_010),
    ]
    latencies, missing = bench_stream.match_freshness(sent, arrivals)
    assert np.allclose(latencies, [0.030, 0.045, 0.050])
    assert missing == 1  # u3 never got an update


def test_zipf_draws_stay_in_range_and_favour_low_ranks() -> None:
    draw = bench_stream.zipf_sampler(np.random.default_rng(0), 1000, 1.1)
    ranks = draw(20_000)
    assert ranks.min() >= 0 and ranks.max() < 1000
    counts = np.bincount(ranks, minlength=1000)
    assert counts[0] > counts[1] > counts[10] > counts[500]


def test_seeded_histories_keep_the_newest_items_and_every_event_id() -> None:
    items = [str(i) for i in range(1, 50)]
    histories = bench_stream.make_histories(np.random.default_rng(0), items, 200, max_len=10, now_ms=10**12)
    for value in histories.values():
        assert 1 <= len(value["items"]) <= 10
        assert len(value["seen"]) >= len(value["items"])
        assert [it[2] for it in value["items"]] == value["seen"][-len(value["items"]):]
        assert [it[1] for it in value["items"]] == sorted(it[1] for it in value["items"])


def _results() -> dict:
    phase = {"rate": 1000, "achieved_rate": 1000.0, "events": 3, "not_readable_within_30s": 0, "n": 3,
             "p50_ms": 40.0,
             "p99_ms": 90.0, "mean_ms": 45.0, "max_ms": 95.0, "latencies_ms": [30.0, 40.0, 95.0],
             "batch_events_mean": 5.0, "batch_users_mean": 4.0, "tower_ms_mean": 1.0, "upsert_ms_mean": 8.0}
    slow = {**phase, "rate": 100, "p50_ms": 20.0, "p99_ms": 30.0}
    idle = {**phase, "rate": "idle", "achieved_rate": float("nan"), "p50_ms": 8.0, "p99_ms": 12.0,
            "http_probe": {"n": 3, "p50_ms": 9.0, "p99_ms": 20.0, "timeouts": 0}}
    step = {"n": 5, "p50_ms": 2.0, "p99_ms": 3.0}
    floor = {"kafka_round_trip": step, "lite_write_1x4": step, "tower_1_user": step, "sum_p50_ms": 6.0}
    drain = {"events": 100, "events_per_s": 6000.0, "interval_p50_events_per_s": 6100.0,
             "burst_produce_s": 0.1,
             "drain_s": 1.0, "series": [(0.0, 0), (1.0, 100)], "batch_events_mean": 100.0,
             "batch_users_mean": 60.0,
             "tower_ms_mean": 5.0, "upsert_ms_mean": 10.0}
    return {
        "mode": "quick",
        "machine": {"date": "d", "commit": "c", "cpus": 2, "cpu": "x", "load_at_start": [1, 1, 1]},
        "stream": {"setup": {"users": 10, "zipf_users_s": 1.1, "zipf_items_s": 0.8, "items": 5,
                             "history_median": 3,
                             "history_p90": 5, "max_history_length": 50, "baseline_src": "/tmp/main"},
                   "floor": floor, "freshness": [idle, slow, phase], "max_sustainable_rate": 1000,
                   "throughput_1_worker": drain,
                   "baseline": {"freshness": [{**idle, "p50_ms": 104.0}, slow], "max_sustainable_rate": 100,
                                "throughput_1_worker": {**drain, "events_per_s": 3000.0}},
                   "naive_peer": {"events": 10, "events_per_s": 100.0, "worker_vs_naive": 60.0}},
        "tower": {"setup": "s", "rows": [
            {"engine": "pytorch eager", "batch": 1, "L": 5, "p50_ms": 1.0, "p99_ms": 2.0,
             "users_per_s": 1000.0, "speedup_vs_torch": 1.0},
            {"engine": "onnxruntime", "batch": 1, "L": 5, "p50_ms": 0.5, "p99_ms": 1.0, "users_per_s": 2000.0,
             "speedup_vs_torch": 2.0}]},
        "recall": {"error": "RuntimeError: boom"},
    }


def test_the_report_names_unmet_goals_met_goals_and_failed_benchmarks(tmp_path: Path) -> None:
    out = tmp_path / "BENCHMARKS.md"
    report.write(_results(), out, tmp_path / "plots")
    text = out.read_text()
    freshness_row = next(line for line in text.splitlines() if line.startswith("| Freshness at 1,000"))
    assert "p50 40.0 ms, p99 90.0 ms" in freshness_row and freshness_row.endswith("| **no** |")
    throughput_row = next(line for line in text.splitlines() if line.startswith("| Throughput, 1 worker"))
    assert throughput_row.endswith("| yes |") and "60.0×" in throughput_row
    idle_row = next(line for line in text.splitlines() if line.startswith("| Freshness idle"))
    assert "p50 9.0 ms, p99 20.0 ms" in idle_row and "1.5×" in idle_row and idle_row.endswith("| yes |")
    against_main = next(line for line in text.splitlines()
                        if line.startswith("| idle (closed loop) | 9.0 / 20.0"))
    assert "13.0× / 1.0×" in against_main  # main's 104 ms against this 8 ms interest-updates p50
    assert "| drain, ev/s | – | – | 3,000 | 6,000 | 2.00× faster |" in text
    assert "**failed**: RuntimeError: boom" in text
    assert "Goals not met" in text and "**Freshness at 1,000 ev/s**" in text
    assert (tmp_path / "plots" / "freshness.png").stat().st_size > 0
    assert (tmp_path / "plots" / "tower.png").stat().st_size > 0
