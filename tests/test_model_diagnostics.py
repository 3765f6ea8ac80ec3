"""model/diagnostics.py on tiny inputs whose expected values were computed by hand."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from model.diagnostics import (
    _best_assignment,
    best_matching_cosine,
    contribution,
    interest_diagnostics,
    mean_pairwise_cosine,
    merged_top_n,
    norm_ratio,
    planted_recovery,
    same_slot_cosine,
    stability,
    summarize,
    top_n_survival,
)

# row 0 = padding; item 1 = (1, 0), item 2 = (0, 1), item 3 = (.5, .5), item 4 = (3, -1)
ITEMS = np.array([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0], [0.5, 0.5], [3.0, -1.0]])


def test_pairwise_cosine_averages_the_pairs_of_valid_interests_only():
    vectors = np.array([
        [[1, 0], [0, 1], [1, 1]],      # third invalid: one pair, cosine 0
        [[2, 0], [1, 1], [0, 3]],      # pairs: 1/sqrt2, 0, 1/sqrt2 -> sqrt2/3
        [[1, 0], [0, 1], [0, 0]],      # one valid interest: undefined
    ], dtype=float)
    mask = np.array([[True, True, False], [True, True, True], [True, False, False]])
    result = mean_pairwise_cosine(vectors, mask)
    assert result[0] == pytest.approx(0.0)
    assert result[1] == pytest.approx(math.sqrt(2) / 3)
    assert math.isnan(result[2])


def test_merged_top_n_max_merges_excludes_history_and_padding_and_names_the_winning_interest():
    # interest 0 = (1, 0) scores items 1..4 as 1, 0, .5, 3; interest 1 = (0, 2) as 0, 2, 1, -2
    vectors = np.array([[[1.0, 0.0], [0.0, 2.0]]])
    top, winner, scores = merged_top_n(vectors, np.array([[True, True]]), ITEMS, [np.array([3])], n=3)
    assert top.tolist() == [[4, 2, 1]]
    assert winner.tolist() == [[0, 1, 0]]
    assert scores.tolist() == [[3.0, 2.0, 1.0]]
    interests, dominant = contribution(winner, np.array([[True, True]]))
    assert interests.tolist() == [2] and dominant.tolist() == [pytest.approx(2 / 3)]


def test_merged_top_n_with_a_bias_ranks_by_the_mixture_and_names_the_nearest_interest():
    # scores as above; T = 1, b = (0, log 3): terms 1, 0, .5, 3 against 0 + log 3, 2 + log 3, 1 + log 3, ...
    # item 1's largest term is interest 1's (log 3 > 1), but interest 0 is nearer to it (1 > 0)
    vectors = np.array([[[1.0, 0.0], [0.0, 2.0]]])
    bias = np.array([[0.0, math.log(3.0)]])
    top, winner, scores = merged_top_n(vectors, np.array([[True, True]]), ITEMS, [np.array([], dtype=int)],
                                       n=4, interest_bias=bias, temperature=1.0)
    by_hand = {i: math.log(math.exp(a) + 3 * math.exp(b))
               for i, (a, b) in {1: (1, 0), 2: (0, 2), 3: (0.5, 1), 4: (3, -2)}.items()}
    assert top.tolist() == [sorted(by_hand, key=lambda i: -by_hand[i])]
    assert scores[0].tolist() == pytest.approx([by_hand[i] for i in top[0]])
    assert dict(zip(top[0].tolist(), winner[0].tolist(), strict=True)) == {1: 0, 2: 1, 3: 1, 4: 0}


def test_merged_top_n_breaks_ties_by_smaller_item_then_lower_slot_and_ignores_invalid_interests():
    # both interests score item 1 as 1 (lowest slot wins); items 1 and 3 tie at 1 (item 1 first);
    # the invalid third interest (0, 9) would have won item 2
    vectors = np.array([[[1.0, 0.0], [1.0, 0.0], [0.0, 9.0]]])
    top, winner, _ = merged_top_n(vectors, np.array([[True, True, False]]), np.array(
        [[0, 0], [1, 0], [0, 1], [1, 0]], dtype=float), [np.array([], dtype=np.int64)], n=3)
    assert top.tolist() == [[1, 3, 2]]
    assert winner.tolist() == [[0, 0, 0]]


def test_merged_top_n_rejects_a_list_longer_than_the_catalogue():
    with pytest.raises(ValueError, match="n=5"):
        merged_top_n(np.ones((1, 1, 2)), np.ones((1, 1), bool), ITEMS, [np.array([])], n=5)


def test_contribution_counts_interests_and_the_dominant_share():
    winner = np.array([[0, 0, 0, 0], [0, 1, 2, 1], [3, 3, 1, 0]])
    interests, dominant = contribution(winner, np.ones((3, 4), dtype=bool))
    assert interests.tolist() == [1, 3, 3]
    assert dominant.tolist() == [1.0, 0.5, 0.5]


def test_norm_ratio_over_valid_interests():
    vectors = np.array([[[3, 4], [0, 2], [10, 0]], [[1, 0], [0, 0], [0, 0]], [[1, 0], [0, 0], [0, 0]]], float)
    mask = np.array([[True, True, False], [True, False, False], [True, True, False]])
    assert norm_ratio(vectors, mask).tolist() == [2.5, 1.0, math.inf]


def test_swapped_slots_have_low_same_slot_but_perfect_matched_cosine():
    before = np.array([[[1.0, 0.0], [0.0, 1.0]], [[1.0, 0.0], [0.0, 1.0]]])
    after = np.array([[[0.0, 3.0], [2.0, 0.0]], [[1.0, 1.0], [0.0, 1.0]]])
    mask = np.ones((2, 2), dtype=bool)
    # user 1: cos 1/sqrt2 and 1 kept in place (best matching), swapping gives 0 + 1/sqrt2
    expected_user_1 = (1 / math.sqrt(2) + 1) / 2
    assert same_slot_cosine(before, after, mask, mask).tolist() == pytest.approx([0.0, expected_user_1])
    assert best_matching_cosine(before, after, mask, mask).tolist() == pytest.approx([1.0, expected_user_1])


def test_matching_with_a_new_interest_matches_the_fewer_slots():
    before = np.array([[[1.0, 0.0], [0.0, 0.0]]])
    after = np.array([[[0.0, 1.0], [1.0, 0.0]]])
    before_mask, after_mask = np.array([[True, False]]), np.array([[True, True]])
    assert same_slot_cosine(before, after, before_mask, after_mask).tolist() == [0.0]
    assert best_matching_cosine(before, after, before_mask, after_mask).tolist() == [1.0]
    assert best_matching_cosine(after, before, after_mask, before_mask).tolist() == [1.0]


def test_best_assignment_is_optimal_where_greedy_is_not():
    # greedy takes 0.9 then is left with 0.0 (sum 0.9); the optimum is 0.8 + 0.8
    assert _best_assignment(np.array([[0.9, 0.8], [0.8, 0.0]])) == pytest.approx(1.6)
    assert _best_assignment(np.array([[0.1, 0.5, 0.2]])) == pytest.approx(0.5)
    # an outer product (1, 2, 3) x (1, 2, 3): the rearrangement inequality pairs them sorted: 1 + 4 + 9
    assert _best_assignment(np.array([[1, 2, 3], [2, 4, 6], [3, 6, 9]], float)) == pytest.approx(14.0)


def test_top_n_survival_is_the_share_kept_in_any_order():
    survival = top_n_survival(np.array([[1, 2, 3, 4], [5, 6, 7, 8]]), np.array([[4, 3, 9, 8], [8, 7, 6, 5]]))
    assert survival.tolist() == [0.5, 1.0]


def test_stability_excludes_the_same_history_both_times():
    # before: interest (1, 0) -> items 4, 1, 3; after: (0, 1) -> items 2, 3, 1; item 3 is excluded in both
    before, after = np.array([[[1.0, 0.0]]]), np.array([[[0.0, 1.0]]])
    mask = np.array([[True]])
    result = stability(before, mask, after, mask, ITEMS, [np.array([3])], n=2)
    assert result["top_n_survival"].tolist() == [0.5]     # {4, 1} -> {2, 1}
    assert result["same_slot_cosine"].tolist() == [0.0]
    assert result["num_interests"].tolist() == [1]


def test_planted_recovery_labels_each_interest_by_its_top_items_cluster():
    # item 1, 2: cluster 0 near (1, 0); item 3, 4: cluster 1 near (0, 1); item 5: cluster 2 at (-1, 0)
    items = np.array([[0, 0], [1, 0.1], [1, -0.1], [0.1, 1], [-0.1, 1], [-1, 0]])
    item_cluster = np.array([-1, 0, 0, 1, 1, 2])
    vectors = np.array([[[1.0, 0.0], [0.0, 1.0]],     # two interests, one per planted cluster
                        [[1.0, 0.0], [1.0, 0.0]],     # two alike: only cluster 0 found; history hides 3, 4
                        [[0.0, 1.0], [9.0, 9.0]],     # K'u = 1: found = 1 of min(1, 2)
                        [[1.0, 1.0], [0.0, 0.0]]])    # top 2 = items 1, 3 (a tie, smaller first): purity 0.5
    mask = np.array([[True, True], [True, True], [True, False], [True, False]])
    histories = [np.array([], np.int64), np.array([3, 4]), np.array([], np.int64), np.array([], np.int64)]
    planted = [np.array([0, 1]), np.array([0, 1]), np.array([0, 1]), np.array([1])]
    result = planted_recovery(vectors, mask, items, histories, item_cluster, planted, n=2)
    np.testing.assert_array_equal(result["num_interests"], [2, 2, 1, 1])
    np.testing.assert_allclose(result["interest_purity"], [1.0, 1.0, 1.0, 0.5])
    np.testing.assert_allclose(result["clusters_found"], [1.0, 0.5, 1.0, 0.0])
    # merged top 5 (all items not in the history): user 1 sees clusters 0 and 2 only
    np.testing.assert_allclose(result["clusters_in_top"], [1.0, 0.5, 1.0, 1.0])
    unknown = planted_recovery(vectors[:1], mask[:1], items, histories[:1], item_cluster, [np.array([])], n=2)
    assert np.isnan(unknown["clusters_found"][0]) and unknown["interest_purity"][0] == 1.0


def test_interest_diagnostics_and_summary_per_interest_count():
    vectors = np.array([[[1.0, 0.0], [0.0, 2.0]], [[1.0, 0.0], [0.0, 0.0]]])
    mask = np.array([[True, True], [True, False]])
    per_user = interest_diagnostics(vectors, mask, ITEMS, [np.array([3]), np.array([], dtype=np.int64)], n=3)
    assert per_user["num_interests"].tolist() == [2, 1]
    assert per_user["interests_contributing"].tolist() == [2, 1]
    assert per_user["dominant_share"].tolist() == pytest.approx([2 / 3, 1.0])
    assert per_user["norm_ratio"].tolist() == [2.0, 1.0]
    summary = summarize(per_user)
    assert summary["all"]["users"] == 2
    assert summary["all"]["dominant_share"] == pytest.approx(round(5 / 6, 4))
    assert summary["all"]["mean_pairwise_cosine"] == 0.0            # only user 0 has a pair
    assert summary["K=2"] == {"users": 1, "mean_pairwise_cosine": 0.0, "interests_contributing": 2.0,
                              "dominant_share": pytest.approx(0.6667), "norm_ratio": 2.0}
    assert summary["K=1"]["mean_pairwise_cosine"] is None


def test_summary_skips_undefined_and_infinite_values():
    summary = summarize({"num_interests": np.array([4, 4, 1]), "x": np.array([0.2, np.inf, np.nan]),
                         "y": np.array([1.0, 0.5, 0.0])})
    assert summary["all"] == {"users": 3, "x": 0.2, "y": 0.5}
    assert summary["K=4"] == {"users": 2, "x": 0.2, "y": 0.75}
    assert summary["K=1"] == {"users": 1, "x": None, "y": 0.0}


# --- in `mind-model evaluate` and `compare` (synthetic data, one epoch) ----------------------------------

SMALL = ["--embedding-dim", "8", "--hidden-dim", "16", "--profile-embedding-dim", "4",
         "--num-negatives", "50", "--epochs", "1", "--max-history-length", "20", "--no-progress"]


@pytest.fixture(scope="module")
def compared(tmp_path_factory):
    from model.cli import main

    out = tmp_path_factory.mktemp("compare")
    assert main(["compare", "--data", "synthetic", "--out", str(out), "--models", "mind,popular",
                 *SMALL]) == 0
    return out


def test_evaluate_and_compare_report_the_diagnostics_on_the_test_users(compared, tmp_path, capsys):
    from model.cli import main
    from model.data import user_split
    from model.datasets import prepare_dataset
    from model.evaluate import user_split_cases

    tmp_path, data_dir = compared, tmp_path
    compared = json.loads((tmp_path / "compare.json").read_text())
    assert set(compared["diagnostics"]) == {"mind"}
    assert main(["evaluate", str(tmp_path / "mind")]) == 0
    printed = capsys.readouterr().out
    assert "same-slot cos" in printed and "dominant share" in printed
    diagnosed = json.loads((tmp_path / "mind" / "evaluation.json").read_text())["diagnostics"]["mind K=4"]
    assert diagnosed == compared["diagnostics"]["mind"]       # same model, same users, deterministic

    data = prepare_dataset("synthetic", data_dir / "data")
    test_users = user_split(data, valid_fraction=0.1, test_fraction=0.1, seed=0).test_users
    cases = user_split_cases(data.sequences, test_users)
    full_window = sum(len(case.history) >= 20 for case in cases)
    interests, stability_ = diagnosed["interests"], diagnosed["stability"]
    assert interests["all"]["users"] == len(cases) and stability_["all"]["users"] == full_window > 0
    assert sum(group["users"] for name, group in interests.items() if name != "all") == len(cases)
    assert 1 <= interests["K=4"]["interests_contributing"] <= 4
    assert 0.25 <= interests["K=4"]["dominant_share"] <= 1
    assert 0 < stability_["all"]["same_slot_cosine"] <= stability_["all"]["matched_slot_cosine"] + 1e-9
    assert 0 <= stability_["all"]["top_n_survival"] <= 1


def test_explain_lists_each_interests_top_items_and_the_merged_list_with_its_interests(compared, tmp_path,
                                                                                      capsys):
    from model.checkpoint import load_checkpoint
    from model.cli import main
    from model.datasets import prepare_dataset
    from model.explain import explain_user

    checkpoint = load_checkpoint(compared / "mind")
    explanation = explain_user(checkpoint.model, prepare_dataset("synthetic", tmp_path), "u3",
                               merged_items=10)
    k = explanation.coupling.shape[1]
    assert len(explanation.interest_top_items) == len(explanation.interest_top_scores) == k
    assert all(scores == sorted(scores, reverse=True) for scores in explanation.interest_top_scores)
    # the merged list's first item is the best first item of any interest, and names that interest
    best = max(range(k), key=lambda j: explanation.interest_top_scores[j][0])
    assert explanation.merged_top[0] == (explanation.interest_top_items[best][0], best)
    assert len(explanation.merged_top) == 10 and {j for _, j in explanation.merged_top} <= set(range(k))
    assert main(["explain", str(compared / "mind"), "u3", "--out", str(tmp_path / "h.png")]) == 0
    printed = capsys.readouterr().out
    assert "interest 1 retrieves:" in printed and "merged top 10" in printed
    assert explanation.merged_top[0][0] in printed


def test_planted_control_script_scores_the_checkpoints_of_a_compare_run(tmp_path):
    import subprocess
    import sys

    from model.cli import main

    script = "tests/benchmarks/planted_control.py"
    data = tmp_path / "planted.npz"
    subprocess.run([sys.executable, script, "make", "--out", str(data), "--users", "120", "--clusters", "12",
                    "--items-per-cluster", "8"], check=True, capture_output=True)
    assert (tmp_path / "planted.truth.npz").is_file()
    assert main(["compare", "--data", str(data), "--out", str(tmp_path / "run"), "--models", "mind,mind1",
                 *SMALL]) == 0
    printed = subprocess.run([sys.executable, script, "recovery", str(tmp_path / "run")], check=True,
                             capture_output=True, text=True).stdout
    table = json.loads(printed)
    assert set(table) == {"mind", "mind1"}
    for row in table.values():
        for name in ("interest_purity", "clusters_found", "clusters_in_top"):
            mean = float(row[name].split(" ± ")[0])
            assert 0.0 < mean <= 1.0, (name, row)
