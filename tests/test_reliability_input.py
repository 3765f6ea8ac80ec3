"""Bad input never crashes anything (issue 7): fuzzed event payloads against `parse_event` (pure, many
examples), broken artifacts, and bad flags / paths for the three CLIs — each ends in one clear line.

The worker-side half of the fuzz (a batch through the real worker, DLQ reasons, good events around them)
is in tests/test_reliability_worker.py. Budget: about 60 s (each CLI case is a Python start-up).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from support.payloads import labelled_payloads, payloads

from export.artifact import ArtifactError
from export.runtime import UserTowerRuntime
from streams.events import (
    MAX_BEHAVIOR_LENGTH,
    MAX_EVENT_ID_LENGTH,
    MAX_ITEM_ID_LENGTH,
    Interaction,
    Rejection,
    encode_event,
    parse_event,
)
from streams.store import USER_ID_PATTERN

REPO_ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
# Every reason the wire contract (docs/ARCHITECTURE.md, streams/events.py) allows, by its first words.
REASONS = ("empty message", "bad JSON", "not an object", "missing field ",
           "wrong type for ", "user_id format",
           "item_id is empty", "item_id too long", "item_id contains control characters",
           "ts is not a finite",
           "ts negative", "ts too far in the future", "behavior too long", "event_id length")
NOW_MS = 1_796_000_000_000  # a fixed "now" (2026-11-29), so the examples replay identically


# --- parse_event, pure --------------------------------------------------------------------------------


@settings(max_examples=1500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(raw=payloads())
def test_every_payload_is_either_a_valid_interaction_or_a_rejection_with_a_documented_one_line_reason(raw):
    result = parse_event(raw, now_ms=NOW_MS)
    if isinstance(result, Rejection):
        assert result.raw == raw  # the DLQ gets the original bytes
        assert result.reason and "\n" not in result.reason
        assert result.reason.startswith(REASONS), result.reason
        return
    assert isinstance(result, Interaction)
    assert USER_ID_PATTERN.fullmatch(result.user_id)
    assert 1 <= len(result.item_id) <= MAX_ITEM_ID_LENGTH
    assert not any(ord(c) < 32 or ord(c) == 127 for c in result.item_id)
    assert 0 <= result.ts_ms <= NOW_MS + 86_400_000
    assert 1 <= len(result.event_id) <= MAX_EVENT_ID_LENGTH
    assert len(result.behavior) <= MAX_BEHAVIOR_LENGTH
    # Deterministic (so a re-sent event is the same event) and stable through the wire form.
    assert parse_event(raw, now_ms=NOW_MS) == result
    # (re-sent as seconds: a millisecond value below 10^11 would read as seconds, by the documented rule)
    again = parse_event(encode_event(result.user_id, result.item_id, result.ts_ms / 1000,
                                     event_id=result.event_id,
                                     behavior=result.behavior), now_ms=NOW_MS)
    assert again == result


@settings(max_examples=1500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(payload=labelled_payloads())
def test_a_payload_breaking_one_rule_is_rejected_for_that_rule_and_an_intact_one_is_accepted(payload):
    result = parse_event(payload.raw, key=payload.key)  # the timestamps are relative to the real clock
    if payload.expected is None:
        assert isinstance(result, Interaction), result
    else:
        assert isinstance(result, Rejection) and result.reason.startswith(payload.expected), (payload, result)


@settings(max_examples=300, deadline=None)
@given(ts=st.one_of(st.integers(0, NOW_MS // 1000 + 86_400), st.integers(10**11, NOW_MS + 86_400_000),
                    st.floats(min_value=0, max_value=NOW_MS / 1000)))
def test_timestamps_follow_the_seconds_or_milliseconds_rule(ts):
    result = parse_event(json.dumps({"user_id": "u", "item_id": "i", "ts": ts}).encode(), now_ms=NOW_MS)
    assert isinstance(result, Interaction)
    expected = int(round(ts * 1000)) if ts < 10**11 else int(ts)
    assert result.ts_ms == expected


def test_edge_values_have_their_documented_outcome():
    def parse(**fields: object) -> Interaction | Rejection:
        obj = {"user_id": "u1", "item_id": "i1", "ts": 1_700_000_000, **fields}
        return parse_event(json.dumps({k: v for k, v in obj.items() if v is not ...}).encode(), now_ms=NOW_MS)

    assert parse(user_id=2**70).user_id == str(2**70)  # huge integer ids are their decimal string
    assert parse(user_id=-1).reason.startswith("wrong type for user_id")
    assert parse(user_id=True).reason.startswith("wrong type for user_id")
    assert parse(user_id="ü").reason.startswith("user_id format")
    assert parse(user_id="u" * 129).reason.startswith("user_id format")
    assert parse(item_id="ü☃ 漢字").item_id == "ü☃ 漢字"  # unicode item ids are raw ids like any other
    assert parse(item_id="a\x00b").reason == "item_id contains control characters"
    assert parse(ts=-1).reason.startswith("ts negative")
    assert parse(ts=math.inf).reason == "ts is not a finite number"
    assert parse(ts=NOW_MS + 86_400_001).reason.startswith("ts too far in the future")
    assert isinstance(parse(ts=NOW_MS + 86_400_000), Interaction)
    assert parse(ts=...).reason == "missing field ts"
    assert parse(event_id="").reason.startswith("event_id length")
    assert parse(behavior="b" * 33).reason.startswith("behavior too long")
    assert parse(extra={"x": [1]}).item_id == "i1"  # unknown fields are ignored
    assert parse_event(None).reason.startswith("empty message")
    # deep nesting: a reason, not a RecursionError
    assert parse_event(b"[" * 100_000).reason.startswith("bad JSON")


# --- broken artifacts ------------------------------------------------------------------------------------


def _broken(artifact_dir: Path, tmp: Path, name: str) -> Path:
    out = tmp / name
    shutil.copytree(artifact_dir, out)
    manifest = json.loads((out / "manifest.json").read_text())
    if name == "missing-onnx":
        (out / "user_tower.onnx").unlink()
    elif name == "missing-manifest":
        (out / "manifest.json").unlink()
    elif name == "manifest-not-json":
        (out / "manifest.json").write_text("{ this is not json")
    elif name == "future-format":
        manifest["format_version"] = 99
        (out / "manifest.json").write_text(json.dumps(manifest))
    elif name in ("corrupted-onnx", "corrupted-onnx-rehashed"):
        (out / "user_tower.onnx").write_bytes(b"\x08\x07garbage" * 100)
        if name == "corrupted-onnx-rehashed":  # the hash matches, so onnxruntime itself must refuse it
            onnx_bytes = (out / "user_tower.onnx").read_bytes()
            manifest["files"]["user_tower.onnx"] = hashlib.sha256(onnx_bytes).hexdigest()
            (out / "manifest.json").write_text(json.dumps(manifest))
    elif name == "truncated-item-vectors":
        data = (out / "item_vectors.npy").read_bytes()
        (out / "item_vectors.npy").write_bytes(data[: len(data) // 2])
    return out


BROKEN = ["missing-onnx", "missing-manifest", "manifest-not-json", "future-format", "corrupted-onnx",
          "corrupted-onnx-rehashed", "truncated-item-vectors"]


def run_cli(*argv: str, env: dict[str, str] | None = None,
            timeout: float = 120) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith(("MINDSTREAM_", "MILVUS_", "KAFKA_"))}
    return subprocess.run([*argv], env={**base, **(env or {})}, cwd=REPO_ROOT, capture_output=True, text=True,
                          timeout=timeout)


def assert_one_clear_line(result: subprocess.CompletedProcess[str], prog: str, *must_mention: str) -> str:
    """Non-zero exit, no traceback, and the last stderr line is the program's own one-line message."""
    assert result.returncode != 0, result
    assert "Traceback" not in result.stderr, result.stderr
    lines = [line for line in result.stderr.strip().splitlines() if line.strip()]
    assert lines, f"{prog}: nothing on stderr"
    last = lines[-1]
    assert last.startswith(f"{prog}"), last
    for text in must_mention:
        assert text in last, last
    return last


@pytest.mark.parametrize("name", BROKEN)
def test_a_broken_artifact_is_refused_with_one_line_by_the_runtime_and_every_cli(
        artifact_dir, tmp_path, name):
    broken = _broken(artifact_dir, tmp_path, name)
    with pytest.raises(ArtifactError) as refused:
        UserTowerRuntime.load(broken)
    assert "\n" not in str(refused.value)
    env = {"MINDSTREAM_MILVUS_URI": str(tmp_path / "m.db"), "KAFKA_BOOTSTRAP": "127.0.0.1:1"}
    lines = [
        assert_one_clear_line(run_cli(str(BIN / "mind-stream"), "worker", "--artifact", str(broken), env=env),
                              "mind-stream worker"),
        assert_one_clear_line(run_cli(str(BIN / "mind-export"), "verify", str(broken)), "mind-export"),
    ]
    if name in ("future-format", "corrupted-onnx-rehashed"):  # the store/rebuild paths load it the same way
        lines.append(assert_one_clear_line(run_cli(str(BIN / "mind-stream"), "index-items", str(broken),
                                                   env=env),
                                           "mind-stream index-items"))
        lines.append(assert_one_clear_line(run_cli(str(BIN / "mind-stream"), "rebuild", "--artifact",
                                                   str(broken),
                                                   env=env), "mind-stream rebuild"))
    print(f"\n{name}:\n  " + "\n  ".join(lines))


# --- bad CLI input ---------------------------------------------------------------------------------------


def _cases(tmp: Path) -> list[tuple[list[str], dict[str, str], str, str]]:
    """(argv, env, program prefix of the last line, text it must contain)."""
    no_header = tmp / "no-header.csv"
    no_header.write_text("1,2,3\n")
    dead_broker = {"KAFKA_BOOTSTRAP": "127.0.0.1:1"}
    ms, me, mm = str(BIN / "mind-stream"), str(BIN / "mind-export"), str(BIN / "mind-model")
    return [
        ([ms, "worker", "--artifact", str(tmp / "nope")], {}, "mind-stream worker", "nope"),
        ([ms, "worker", "--batch-size", "many"], {}, "mind-stream worker", "MINDSTREAM_BATCH_SIZE"),
        ([ms, "worker", "--partitions", "0"], {}, "mind-stream worker", "MINDSTREAM_PARTITIONS"),
        ([ms, "worker"], {"KAFKA_SECURITY_PROTOCOL": "TLS1.0"}, "mind-stream worker",
         "KAFKA_SECURITY_PROTOCOL"),
        ([ms, "worker", "--no-such-flag"], {}, "mind-stream: error", "--no-such-flag"),
        ([ms, "produce", str(tmp / "missing.csv")], {}, "mind-stream produce", "no such file"),
        ([ms, "produce", str(no_header)], dead_broker, "mind-stream produce", "header"),
        ([ms, "recall", "bad user!"], {}, "mind-stream recall", "not valid"),
        ([ms, "recall", "u1", "--n", "0"], {}, "mind-stream recall", "n must be"),
        ([ms, "recall", "u1", "--url", "http://127.0.0.1:1", "--milvus-prefix", "1bad"], {},
         "mind-stream recall",
         "prefix"),
        ([ms, "recall", "u1", "--url", "http://127.0.0.1:1", "--milvus-uri", str(tmp / "s.sqlite")], {},
         "mind-stream recall", ".db"),
        ([ms, "recall", "u1", "--url", "http://127.0.0.1:1", "--exclude-seen"], {}, "mind-stream recall",
         "running worker"),
        ([ms, "worker", "--session-timeout", "1"], {}, "mind-stream worker", "MINDSTREAM_SESSION_TIMEOUT_S"),
        ([ms, "worker"], {"MINDSTREAM_WEB_URL": "worker:6066"}, "mind-stream worker", "MINDSTREAM_WEB_URL"),
        ([ms, "index-items", str(tmp / "nope")], {}, "mind-stream index-items", "not a directory"),
        ([ms, "rollback"], {"MINDSTREAM_MILVUS_URI": str(tmp / "empty.db")}, "mind-stream rollback",
         "no model version"),
        ([ms, "rebuild", "--artifact", str(tmp / "nope")], {}, "mind-stream rebuild", "not a directory"),
        ([ms, "rebuild", "--artifact", str(tmp), "--milvus-uri", str(tmp / "store.txt")], {},
         "mind-stream rebuild", ".db"),
        ([ms, "rebuild", "--artifact", str(tmp), "--milvus-prefix", "1bad"], {}, "mind-stream rebuild",
         "prefix"),
        ([me, str(tmp / "no-run"), "--out", str(tmp / "out")], {}, "mind-export", "no-run"),
        ([me, "verify", str(tmp / "nope")], {}, "mind-export", "nope"),
        ([me, str(tmp / "no-run"), "--out", str(tmp / "out"), "--tolerance", "tiny"], {},
         "mind-export: error", "tiny"),
        ([mm, "train", "--data", "no-such-dataset", "--out", str(tmp / "run")], {}, "mind-model",
         "no-such-dataset"),
        ([mm, "evaluate", str(tmp / "no-run")], {}, "mind-model", "no-run"),
        ([mm, "explain", str(tmp / "no-run"), "u1"], {}, "mind-model", "no-run"),
        ([mm, "train", "--data", "ml-100k", "--out", str(tmp / "r"), "--model", "bogus"], {}, "mind-model",
         "bogus"),
    ]


def test_bad_flags_and_paths_give_one_clear_line_and_a_non_zero_exit(tmp_path):
    started = time.monotonic()
    failures = []
    cases = _cases(tmp_path)
    # Two at a time (each is mostly interpreter start-up); each case has a Lite file of its own.
    def run(number: int) -> subprocess.CompletedProcess[str]:
        argv, env = cases[number][:2]
        return run_cli(*argv, env={"MINDSTREAM_MILVUS_URI": str(tmp_path / f"m{number}.db"), **env})

    with ThreadPoolExecutor(max_workers=2) as pool:
        results = list(pool.map(run, range(len(cases))))
    for (argv, _, prog, text), result in zip(cases, results, strict=True):
        try:
            line = assert_one_clear_line(result, prog, text)
            print(f"{Path(argv[0]).name} {' '.join(argv[1:])[:60]:60} -> {line[:110]}")
        except AssertionError as exc:
            failures.append(f"{' '.join(Path(a).name for a in argv)}: {exc}")
    print(f"{len(cases)} CLI cases in {time.monotonic() - started:.0f}s")
    assert failures == []
