"""mind-stream CLI: reading interaction logs, the wire messages it sends, and one clear line on bad input."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from streams.cli import UserError, build_parser, format_recall
from streams.config import ConfigError, Settings
from streams.events import Interaction, parse_event
from streams.produce import read_events, to_message

REPO_ROOT = Path(__file__).resolve().parent.parent


def mind_stream(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "streams.cli", *args], cwd=REPO_ROOT, capture_output=True,
                          text=True, timeout=60, env=env)


def test_csv_with_header_becomes_events_the_worker_accepts(tmp_path):
    log = tmp_path / "log.csv"
    log.write_text("user_id,item_id,ts,behavior,extra\n7,1193,978300760,rating,x\nu2,i9,978300761.5,,\n")
    records = list(read_events(log))
    assert records == [{"user_id": "7", "item_id": "1193", "ts": "978300760", "behavior": "rating"},
                       {"user_id": "u2", "item_id": "i9", "ts": "978300761.5"}]
    key, value = to_message(records[0], stamp_now=False)
    assert key == b"7"
    # Sent without an event id: the id is derived from (user, item, time, behavior), so a re-send is
    # recognised.
    fields = ("7", "1193", "978300760000", "rating")
    derived = "h:" + hashlib.sha256("\x1f".join(fields).encode()).hexdigest()[:24]
    assert parse_event(value) == Interaction("7", "1193", 978_300_760_000, derived, "rating")
    assert "event_id" not in json.loads(value)


def test_headerless_tsv_needs_columns_and_reads_movielens_u_data(tmp_path):
    log = tmp_path / "u.data"
    log.write_text("196\t242\t3\t881250949\n186\t302\t3\t891717742\n")
    with pytest.raises(UserError, match="--columns"):
        list(read_events(log))
    records = list(read_events(log, columns="user_id,item_id,-,ts"))
    assert records[1] == {"user_id": "186", "item_id": "302", "ts": "891717742"}


def test_jsonl_lines_are_sent_as_they_are_unless_restamped(tmp_path):
    log = tmp_path / "log.jsonl"
    log.write_text('{"user_id": "a", "item_id": "1", "ts": 5}\nnot json\n\n')
    first, second = list(read_events(log))
    assert to_message(first, stamp_now=False) == (b"a", first)
    assert to_message(second, stamp_now=False) == (None, b"not json")  # the worker dead-letters it
    key, restamped = to_message(first, stamp_now=True)
    assert key == b"a" and json.loads(restamped)["ts"] > 1_700_000_000_000


def test_short_row_names_the_line(tmp_path):
    log = tmp_path / "log.csv"
    log.write_text("user_id,item_id,ts\n1,2\n")
    with pytest.raises(UserError, match=r"log.csv:2: 2 columns"):
        list(read_events(log))


def test_format_recall_shows_rank_item_score_and_interest():
    text = format_recall({"user_id": "u", "cold_start": False,
                          "items": [{"item_id": "42", "score": 1.5, "slot": 2},
                                    {"item_id": "7", "score": 1.0, "slot": 0}]})
    lines = text.splitlines()
    assert lines[0].startswith("recall for user u: 2 items")
    assert lines[1].split() == ["1", "42", "1.5000", "slot", "2"]
    titled = format_recall({"user_id": "u", "cold_start": False, "diversity": 0.5,
                            "items": [{"item_id": "42", "score": 1.5, "slot": 2, "title": "Heat (1995)"}]})
    assert titled.splitlines()[0].startswith("recall for user u: 1 items (diversity 0.5)")
    assert titled.splitlines()[1].split() == ["1", "42", "1.5000", "slot", "2", "Heat", "(1995)"]


def test_settings_reject_bad_values_naming_the_env_var():
    with pytest.raises(ConfigError, match="MINDSTREAM_BATCH_SIZE"):
        Settings.from_env({"MINDSTREAM_BATCH_SIZE": "many"})
    with pytest.raises(ConfigError, match="MINDSTREAM_TABLE_STORE"):
        Settings.from_env({"MINDSTREAM_TABLE_STORE": "redis://"})
    for below_or_above_the_brokers_bounds in ("2", "3600"):
        with pytest.raises(ConfigError, match="MINDSTREAM_SESSION_TIMEOUT_S"):
            Settings.from_env({"MINDSTREAM_SESSION_TIMEOUT_S": below_or_above_the_brokers_bounds})
    settings = Settings.from_env({"KAFKA_SECURITY_PROTOCOL": "SASL_SSL", "KAFKA_SASL_USERNAME": "svc",
                                  "KAFKA_SASL_PASSWORD": "pw", "KAFKA_BOOTSTRAP": "a:1,b:2"})
    kwargs = settings.kafka_python_kwargs()
    assert kwargs["bootstrap_servers"] == ["a:1", "b:2"] and kwargs["sasl_plain_username"] == "svc"
    assert Settings.from_env({}).web_host == "127.0.0.1"
    assert Settings.from_env({}).recall_diversity == 0.0
    assert Settings.from_env({"MINDSTREAM_RECALL_DIVERSITY": "0.5"}).recall_diversity == 0.5
    for bad in ("-1", "nan", "many"):
        with pytest.raises(ConfigError, match="MINDSTREAM_RECALL_DIVERSITY"):
            Settings.from_env({"MINDSTREAM_RECALL_DIVERSITY": bad})
    assert Settings.from_env({}).faust_loop == "uvloop"
    assert Settings.from_env({"MINDSTREAM_EVENT_LOOP": "asyncio"}).faust_loop == "aio"
    with pytest.raises(ConfigError, match="MINDSTREAM_EVENT_LOOP='gevent': use uvloop or asyncio"):
        Settings.from_env({"MINDSTREAM_EVENT_LOOP": "gevent"})


def test_uvloop_missing_is_one_line_naming_the_fallback(monkeypatch):
    monkeypatch.setitem(sys.modules, "uvloop", None)  # `import uvloop` now raises ImportError
    with pytest.raises(ConfigError, match="pip install uvloop, or set MINDSTREAM_EVENT_LOOP=asyncio"):
        _ = Settings.from_env({}).faust_loop


def test_every_flag_of_every_command_has_help():
    parser = build_parser()
    subparsers = next(a for a in parser._actions if a.choices and isinstance(a.choices, dict))
    for name, sub in subparsers.choices.items():
        for action in sub._actions:
            assert action.help, f"mind-stream {name} {action.option_strings or action.dest} has no help"


@pytest.mark.parametrize(("args", "message"), [
    (["recall", "bad user!"], "user id 'bad user!' is not valid"),
    (["recall", "u1", "--n", "0"], "n must be an integer between 1 and"),
    (["recall", "u1", "--diversity", "much"], "diversity must be a number between 0 and"),
    (["recall", "u1", "--diversity", "-1"], "diversity must be a number between 0 and"),
    (["worker", "--recall-diversity", "-1", "--artifact", "x"], "MINDSTREAM_RECALL_DIVERSITY=-1: diversity"),
    (["produce", "/nonexistent/log.csv"], "/nonexistent/log.csv: no such file"),
    (["worker", "--artifact", "/nonexistent/artifact"], "/nonexistent/artifact"),
    (["index-items", "/nonexistent/artifact"], "/nonexistent/artifact: not a directory"),
    (["worker", "--batch-size", "0", "--artifact", "x"], "MINDSTREAM_BATCH_SIZE=0: must be at least 1"),
    (["worker", "--event-loop", "tokio", "--artifact", "x"], "MINDSTREAM_EVENT_LOOP='tokio': use uvloop or"),
])
def test_bad_input_ends_with_one_clear_line_and_exit_2(args, message):
    result = mind_stream(*args)
    assert result.returncode == 2, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert message in lines[0]


# What setuptools 80.9 to 81 print when anything imports pkg_resources (milvus-lite 2.5.1 does, on import).
SETUPTOOLS_81_PKG_RESOURCES = """
import warnings
warnings.warn("pkg_resources is deprecated as an API. See "
              "https://setuptools.pypa.io/en/latest/pkg_resources.html. The pkg_resources package is "
              "slated for removal as early as 2025-11-30. Refrain from using this package or pin to "
              "Setuptools<81.", UserWarning, stacklevel=2)


class DistributionNotFound(Exception):
    pass


def get_distribution(name):
    raise DistributionNotFound(name)
"""


def test_index_items_prints_one_line_without_pkg_resources_noise_or_a_progress_bar_off_a_terminal(
        artifact_dir, tmp_path):
    """A pkg_resources that warns as setuptools 80.9-81 do: milvus-lite's import of it stays silent in the
    CLI (streams/store/lite.py), and a progress bar stays off when stderr is not a terminal."""
    shim = tmp_path / "shim"
    shim.mkdir()
    (shim / "pkg_resources.py").write_text(SETUPTOOLS_81_PKG_RESOURCES)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(shim), os.environ.get("PYTHONPATH", "")]),
           "MINDSTREAM_MILVUS_URI": str(tmp_path / "items.db")}
    # The shim does warn where nothing filters it: milvus-lite imported directly.
    bare = subprocess.run([sys.executable, "-c", "import milvus_lite"], env=env, capture_output=True,
                          text=True, timeout=60)
    assert "pkg_resources is deprecated" in bare.stderr

    result = mind_stream("index-items", str(artifact_dir), env=env)

    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    assert result.stdout.startswith("indexed 40 items of model ") and len(result.stdout.splitlines()) == 1


def test_worker_takes_log_level_and_its_older_spelling():
    parser = build_parser()
    for flag in ("--log-level", "--loglevel"):
        assert parser.parse_args(["worker", flag, "warning"]).loglevel == "warning"
    for command in ("index-items x", "rebuild --artifact x", "rollout --artifact x", "produce x"):
        assert parser.parse_args([*command.split(), "--no-progress"]).no_progress
