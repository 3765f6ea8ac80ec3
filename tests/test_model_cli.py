"""`mind-model` end to end on the synthetic dataset: train, evaluate, compare, explain; bad input in one
line."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch

from model.cli import build_parser, main
from model.config import MindConfig

SMALL = ["--embedding-dim", "8", "--hidden-dim", "16", "--profile-embedding-dim", "4", "--num-negatives",
         "50",
         "--epochs", "1", "--max-history-length", "20", "--no-progress"]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    assert main(["train", "--data", "synthetic", "--out", str(out), *SMALL]) == 0
    return out


def test_train_writes_checkpoint_and_metrics(run_dir):
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert (run_dir / "checkpoint.pt").is_file()
    assert metrics["model_kind"] == "mind" and metrics["best_epoch"] == 1
    assert metrics["config"]["embedding_dim"] == 8
    assert metrics["dataset"]["split"]["test_users"] > 0
    # The recorded validation is the best epoch's, over every validation user, and shows a learned signal:
    # 50 of the 400 planted items drawn at random would recall about 50 / 400 of a user's held-out items.
    assert metrics["validation"] == metrics["epochs"][0]["validation"]
    assert metrics["validation"]["user_split"]["users"] == metrics["dataset"]["split"]["valid_users"] == 100
    assert metrics["dataset"]["num_items"] == 400
    assert metrics["validation"]["user_split"]["Recall@50"] > 2 * 50 / 400
    assert metrics["environment"]["torch"] == torch.__version__ and metrics["environment"]["cpu"]


def test_train_records_its_held_out_users_by_raw_id(run_dir):
    held_out = json.loads((run_dir / "held_out_users.json").read_text())
    assert held_out["test"] and held_out["validation"]
    assert not set(held_out["test"]) & set(held_out["validation"])
    assert all(isinstance(user, str) for user in held_out["test"])


def test_evaluate_scores_the_test_users_and_writes_json(run_dir, capsys):
    assert main(["evaluate", str(run_dir)]) == 0
    printed = capsys.readouterr().out
    assert "popular" in printed and "split Recall@50" in printed
    evaluation = json.loads((run_dir / "evaluation.json").read_text())
    result = evaluation["results"]["mind K=4"]
    assert set(result) == {"next_item", "user_split"}
    assert result["user_split"]["users"] == evaluation["test_users"]


def test_explain_writes_a_heatmap_png(run_dir, tmp_path, capsys):
    out = tmp_path / "heat.png"
    assert main(["explain", str(run_dir), "u3", "--out", str(out)]) == 0
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "interest 1" in capsys.readouterr().out


def test_compare_puts_all_models_in_one_table(tmp_path, capsys):
    assert main(["compare", "--data", "synthetic", "--out", str(tmp_path), "--models",
                 "mind,youtube_dnn,popular",
                 *SMALL]) == 0
    table = capsys.readouterr().out
    assert all(name in table for name in ("mind", "youtube_dnn", "popular"))
    summary = json.loads((tmp_path / "compare.json").read_text())
    assert set(summary["results"]) == {"mind", "youtube_dnn", "popular"}
    assert summary["environment"]["torch_threads"] >= 1
    assert (tmp_path / "youtube_dnn" / "checkpoint.pt").is_file()


@pytest.mark.parametrize("argv, fragment", [
    (["train", "--data", "synthetic", "--out", "x", "--bogus"], "unrecognized arguments: --bogus"),
    (["train", "--data", "no-such-set", "--out", "x"], "not a named dataset"),
    (["train", "--data", "synthetic", "--out", "x", "--num-interests", "0"], "num_interests"),
    (["evaluate", "/nonexistent/run"], "no checkpoint here"),
    (["compare", "--data", "synthetic", "--models", "mind,alien"], "unknown ['alien']"),
])
def test_bad_input_gives_one_clear_line_and_exit_2(argv, fragment, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and fragment in err and err.startswith("mind-model")


def test_explain_unknown_user_is_one_line(run_dir, tmp_path, capsys):
    assert main(["explain", str(run_dir), "nobody", "--out", str(tmp_path / "h.png")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "nobody" in err


def test_every_flag_has_help_and_every_hyperparameter_a_flag():
    parser = build_parser()
    subcommands = parser._subparsers._group_actions[0].choices  # noqa: SLF001 - argparse has no public walk
    for name, sub in subcommands.items():
        for action in sub._actions:  # noqa: SLF001
            assert action.help, f"{name} {action.option_strings} has no help"
    train_flags = {s for a in subcommands["train"]._actions for s in a.option_strings}  # noqa: SLF001
    for f in dataclasses.fields(MindConfig):
        assert "--" + f.name.replace("_", "-") in train_flags
