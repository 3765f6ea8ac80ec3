"""export/evaluate.py: the served artifact scored on the run's held-out users, per diversity.

End to end on the synthetic dataset: train one epoch, export, evaluate; at diversity 0 the served path (ONNX
tower, artifact item vectors, export.merge) must give `mind-model evaluate`'s figures."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from export.artifact import ArtifactError
from export.cli import main as export_main
from export.evaluate import choose_diversity, evaluate_artifact, interest_rankings
from model.cli import main as model_main

SMALL = ["--embedding-dim", "8", "--hidden-dim", "16", "--profile-embedding-dim", "4",
         "--num-negatives", "50", "--epochs", "1", "--max-history-length", "20", "--no-progress"]


def test_rankings_leave_out_padding_and_history_and_break_ties_by_smaller_item() -> None:
    items = np.array([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0], [1.0, 1.0], [0.0, 2.0]])
    # interest (2, 1): items 1..4 score 2, 1, 3, 2; item 2 is in the history
    (ranked, scores), = interest_rankings(np.array([[2.0, 1.0]]), items, np.array([2]))
    assert ranked.tolist() == [3, 1, 4] and scores.tolist() == [3.0, 2.0, 2.0]


def test_the_diversity_is_chosen_on_validation_recall_the_smaller_on_ties() -> None:
    validation = {"0": {"user_split": {"Recall@50": 0.30}}, "0.25": {"user_split": {"Recall@50": 0.32}},
                  "0.5": {"user_split": {"Recall@50": 0.32}}, "1": {"user_split": {"Recall@50": 0.31}}}
    assert choose_diversity(validation, 50) == 0.25


@pytest.fixture(scope="module")
def artifact(tmp_path_factory):
    root = tmp_path_factory.mktemp("served")
    assert model_main(["train", "--data", "synthetic", "--out", str(root / "run"), *SMALL]) == 0
    assert model_main(["evaluate", str(root / "run")]) == 0
    assert export_main([str(root / "run"), "--out", str(root / "artifact")]) == 0
    return root


def test_served_evaluation_at_zero_diversity_equals_the_model_evaluation(artifact, capsys) -> None:
    out = artifact / "served.json"
    assert export_main(["evaluate", str(artifact / "artifact"), "--diversity", "0,1", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "chosen by validation" in printed
    served = json.loads(out.read_text())
    model = json.loads((artifact / "run" / "evaluation.json").read_text())
    results, diagnosed = model["results"]["mind K=4"], model["diagnostics"]["mind K=4"]["interests"]
    plain = served["test"]["0"]
    for metric in ("HitRate@50", "Recall@50", "NDCG@50"):
        assert plain["user_split"][metric] == pytest.approx(results["user_split"][metric], abs=1e-6)
    assert plain["next_item"]["HitRate@50"] == pytest.approx(results["next_item"]["HitRate@50"], abs=1e-6)
    assert plain["user_split"]["users"] == results["user_split"]["users"]
    for group in ("all", "K=4"):
        for name in ("interests_contributing", "dominant_share"):
            assert plain["coverage"][group][name] == pytest.approx(diagnosed[group][name], abs=1e-4)
    # diversity buys coverage: more interests in the list, a smaller dominant share
    diverse = served["test"]["1"]["coverage"]["all"]
    assert diverse["interests_contributing"] > plain["coverage"]["all"]["interests_contributing"]
    assert diverse["dominant_share"] < plain["coverage"]["all"]["dominant_share"]
    assert served["chosen_diversity"] in (0.0, 1.0)


def test_validation_users_alone_choose_without_touching_test_users(artifact) -> None:
    summary = evaluate_artifact(artifact / "artifact", groups=["validation"], diversities=[0.0, 0.5])
    assert "test" not in summary and set(summary["validation"]) == {"0", "0.5"}
    assert summary["chosen_diversity"] == choose_diversity(summary["validation"], 50)


def test_an_artifact_without_a_dataset_record_or_bad_flags_fail_in_one_line(artifact, tmp_path,
                                                                            capsys) -> None:
    tiny = tmp_path / "no-record"
    shutil.copytree(artifact / "artifact", tiny)
    manifest = json.loads((tiny / "manifest.json").read_text())
    (tiny / "manifest.json").write_text(json.dumps({**manifest, "dataset": {"name": "synthetic"}}))
    with pytest.raises(ArtifactError, match="records no dataset source and split"):
        evaluate_artifact(tiny)
    assert export_main(["evaluate", str(tiny), "--diversity", "0,x"]) == 1
    assert export_main(["evaluate", str(tiny), "--diversity", "-1"]) == 1
    assert export_main(["evaluate", str(tiny), "--users", "train"]) == 1
    errors = capsys.readouterr().err.strip().splitlines()
    assert len(errors) == 3 and all(line.startswith("mind-export: error:") for line in errors)
    assert "--diversity" in errors[0] and "diversity must be" in errors[1] and "validation, test" in errors[2]
