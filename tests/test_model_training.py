"""Training samples, loss and evaluation on hand-checked inputs; MIND learns planted interests."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from model.config import MindConfig
from model.data import user_split
from model.evaluate import (
    evaluate_scorer,
    model_scorer,
    next_item_cases,
    pad_histories,
    ranking_metrics,
    top_n_excluding_history,
    user_split_cases,
)
from model.synthetic import synthetic_planted
from model.train import (
    NegativeSampler,
    build_samples,
    interest_candidate_scores,
    make_batch,
    mean_pairwise_cosine,
    random_target_rows,
    sampled_softmax_loss,
    softmax_loss_from_scores,
    train_model,
)


def test_samples_are_every_position_after_the_first_with_the_previous_items_as_history():
    sequences = [np.array([5, 6, 7, 8]), np.array([9]), np.array([1, 2, 3])]
    samples = build_samples(sequences, np.array([0, 1, 2]))
    assert len(samples) == 3 + 0 + 2
    batch = make_batch(samples, np.arange(len(samples)), 2, np.array([[1], [2], [3]]))
    assert batch["target"].tolist() == [6, 7, 8, 2, 3]
    assert batch["history"].tolist() == [[5, 0], [5, 6], [6, 7], [1, 0], [1, 2]]  # left-aligned, last 2
    assert batch["history_mask"].tolist() == [[True, False], [True, True], [True, True], [True, False],
                                              [True, True]]
    assert batch["profile"].tolist() == [[1], [1], [1], [3], [3]]


def test_sampled_softmax_is_cross_entropy_over_target_and_negatives_without_accidental_hits():
    user = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
    items = torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])  # item 0 is padding
    targets, negatives = torch.tensor([1, 2]), torch.tensor([2, 3])
    loss = sampled_softmax_loss(user, items[targets], targets, negatives, items[negatives], None)
    # row 0: logits target 1, negatives (0, 1); row 1: target 2, negative 2 is the target itself -> masked
    expected = (-(1 - math.log(math.e + 1 + math.e)) - (2 - math.log(math.exp(2) + math.exp(2)))) / 2
    assert float(loss) == pytest.approx(expected, rel=1e-5)
    log_q = torch.log(torch.tensor([1.0, 0.5, 0.25, 0.25]))
    corrected = sampled_softmax_loss(user, items[targets], targets, negatives, items[negatives], log_q)
    row0 = torch.tensor([1 - log_q[1], 0 - log_q[2], 1 - log_q[3]])
    row1 = torch.tensor([2 - log_q[2], 2 - log_q[3]])
    expected = -(torch.log_softmax(row0, 0)[0] + torch.log_softmax(row1, 0)[0]) / 2
    assert float(corrected) == pytest.approx(float(expected), rel=1e-5)


def test_random_target_rows_draw_users_uniformly_whatever_their_length():
    sequences = [np.arange(1, 101), np.array([1, 2]), np.array([3, 4, 5])]
    samples = build_samples(sequences, np.array([0, 1, 2]))
    rows = random_target_rows(samples, 30_000, np.random.default_rng(0))
    users = samples.sample_user[rows]
    assert np.abs(np.bincount(users, minlength=3) / len(rows) - 1 / 3).max() < 0.02  # not 99 : 1 : 2
    long_user_offsets = samples.target_offset[rows[users == 0]]
    assert long_user_offsets.min() == 1 and long_user_offsets.max() == 99


def test_mean_pairwise_cosine_counts_only_pairs_of_valid_interests():
    vectors = torch.tensor([[[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]], [[1.0, 0.0], [5.0, 0.0], [-1.0, 0.0]]])
    valid = torch.tensor([[True, True, True], [True, True, False]])
    half = 2**-0.5
    assert float(mean_pairwise_cosine(vectors, valid)) == pytest.approx((0 + half + half + 1) / 4)


def test_temperature_divides_the_logits():
    user, items = torch.tensor([[1.0, 0.5]]), torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    targets, negatives = torch.tensor([1]), torch.tensor([2])
    cooled = sampled_softmax_loss(user, items[targets], targets, negatives, items[negatives], None, 0.5)
    assert float(cooled) == pytest.approx(
        float(sampled_softmax_loss(2 * user, items[targets], targets, negatives, items[negatives], None))
    )


def test_max_scoring_ranks_each_candidate_by_its_best_valid_interest():
    interests = torch.tensor([[[1.0, 0.0], [0.0, 1.0], [5.0, 5.0]]])   # the third interest is invalid
    valid = torch.tensor([[True, True, False]])
    target, negatives = torch.tensor([[0.2, 0.9]]), torch.tensor([[3.0, -1.0], [-1.0, -2.0]])
    positive, negative = interest_candidate_scores(interests, valid, target, negatives, "max")
    assert positive.tolist() == pytest.approx([0.9])                 # interest 1, not the invalid 5.5
    assert negative.tolist() == [pytest.approx([3.0, -1.0])]         # interest 0, then the best of -1, -2
    smooth, smooth_negative = interest_candidate_scores(interests, valid, target, negatives, "logsumexp", 0.5)
    assert float(smooth[0]) == pytest.approx(0.5 * math.log(math.exp(0.2 / 0.5) + math.exp(0.9 / 0.5)))
    assert float(smooth_negative[0, 0]) > 3.0                         # a smooth max lies above the max
    sharp, _ = interest_candidate_scores(interests, valid, target, negatives, "logsumexp", 1e-3)
    assert float(sharp[0]) == pytest.approx(0.9, abs=1e-3)


def test_mixture_scoring_adds_each_interests_bias_inside_the_smooth_max_and_needs_it():
    interests = torch.tensor([[[1.0, 0.0], [0.0, 1.0], [5.0, 5.0]]])   # the third interest is invalid
    valid = torch.tensor([[True, True, False]])
    target, negatives = torch.tensor([[0.2, 0.9]]), torch.tensor([[3.0, -1.0]])
    bias = torch.tensor([[math.log(0.9), math.log(0.1), 0.0]])
    positive, negative = interest_candidate_scores(interests, valid, target, negatives, "mixture", 0.5, bias)
    assert float(positive[0]) == pytest.approx(
        0.5 * math.log(0.9 * math.exp(0.2 / 0.5) + 0.1 * math.exp(0.9 / 0.5)))
    assert float(negative[0, 0]) == pytest.approx(
        0.5 * math.log(0.9 * math.exp(3.0 / 0.5) + 0.1 * math.exp(-1.0 / 0.5)))
    # With equal weights it is the plain smooth max shifted by T log(1/2).
    equal = torch.full((1, 3), math.log(0.5))
    mixed, _ = interest_candidate_scores(interests, valid, target, negatives, "mixture", 0.5, equal)
    plain, _ = interest_candidate_scores(interests, valid, target, negatives, "logsumexp", 0.5)
    assert float(mixed[0]) == pytest.approx(float(plain[0]) + 0.5 * math.log(0.5))
    with pytest.raises(ValueError, match="bias"):
        interest_candidate_scores(interests, valid, target, negatives, "mixture", 0.5)


def test_with_one_interest_every_candidate_scoring_is_the_single_vector_loss():
    torch.manual_seed(0)
    user, items = torch.randn(3, 4), torch.randn(6, 4)
    targets, negatives = torch.tensor([1, 2, 3]), torch.tensor([2, 4, 5])
    single = sampled_softmax_loss(user, items[targets], targets, negatives, items[negatives], None, 0.3)
    valid = torch.ones(3, 1, dtype=torch.bool)
    for reduce in ("max", "logsumexp", "mixture"):
        positive, negative = interest_candidate_scores(user.unsqueeze(1), valid, items[targets],
                                                       items[negatives], reduce, 0.3, torch.zeros(3, 1))
        loss = softmax_loss_from_scores(positive, negative, targets, negatives, None, 0.3)
        assert float(loss) == pytest.approx(float(single), rel=1e-5)


@pytest.mark.parametrize("kind", ["uniform", "popularity"])
def test_negative_sampler_draws_real_items_with_the_probabilities_it_corrects_for(kind):
    counts = np.array([0, 100, 10, 0, 1000])
    sampler = NegativeSampler(kind, counts, seed=0)
    draws = sampler.sample(40_000).numpy()
    assert draws.min() >= 1 and draws.max() <= 4
    frequencies = np.bincount(draws, minlength=5)[1:] / len(draws)
    np.testing.assert_allclose(frequencies, np.exp(sampler.log_q[1:].numpy()), atol=0.01)
    if kind == "popularity":
        assert frequencies[3] > frequencies[0] > frequencies[1]


def test_user_split_cases_take_the_first_80_percent_as_history_and_next_item_the_last():
    sequences = [np.arange(1, 11), np.array([3, 4])]
    split = user_split_cases(sequences, np.array([0, 1]), 0.2)
    assert split[0].history.tolist() == list(range(1, 9)) and split[0].targets.tolist() == [9, 10]
    assert split[1].history.tolist() == [3] and split[1].targets.tolist() == [4]
    nxt = next_item_cases(sequences, np.array([0, 1]))
    assert nxt[0].history.tolist() == list(range(1, 10)) and nxt[0].targets.tolist() == [10]


def test_top_n_never_returns_padding_or_history_items():
    scores = np.array([[9.0, 8.0, 7.0, 6.0, 5.0, 4.0]])
    assert top_n_excluding_history(scores, [np.array([1, 3])], 3).tolist() == [[2, 4, 5]]


def test_ranking_metrics_match_hand_computation():
    top = np.array([[5, 1, 7, 2], [3, 4, 6, 8]])
    metrics = ranking_metrics(top, [np.array([1, 2, 9]), np.array([10])], cutoffs=(2, 4))
    assert metrics["HitRate@2"] == pytest.approx(0.5)
    assert metrics["Recall@2"] == pytest.approx((1 / 3 + 0) / 2)
    assert metrics["Recall@4"] == pytest.approx((2 / 3 + 0) / 2)
    ndcg4_user0 = (1 / math.log2(3) + 1 / math.log2(5)) / (1 + 1 / math.log2(3) + 1 / math.log2(4))
    assert metrics["NDCG@4"] == pytest.approx(ndcg4_user0 / 2)


def test_pad_histories_keeps_the_most_recent_items_left_aligned():
    history, mask = pad_histories([np.array([1, 2, 3, 4]), np.array([7])], 3)
    assert history.tolist() == [[2, 3, 4], [7, 0, 0]]
    assert mask.tolist() == [[True, True, True], [True, False, False]]


SYNTHETIC_CONFIG = MindConfig(embedding_dim=16, hidden_dim=32, profile_embedding_dim=4, num_negatives=100,
                              epochs=6, patience=0, max_history_length=30, learning_rate=0.005,
                              interest_output_relu=False)


@pytest.fixture(scope="module")
def planted():
    """Planted interests (16 clusters of 20 items, users with 1-4 clusters), MIND K=4 and K=1 trained on
    it."""
    torch.set_num_threads(1)  # on an oversubscribed CPU one thread is faster than two
    data, truth = synthetic_planted(num_users=500, num_clusters=16, items_per_cluster=20, seed=1)
    split = user_split(data, seed=0)
    models = {k: train_model("mind", SYNTHETIC_CONFIG.replace(num_interests=k), data, split.train_users,
                             split.valid_users, progress=False, log=lambda _: None).model for k in (4, 1)}
    return data, truth, split, models


def test_mind_with_four_interests_recalls_more_held_out_items_than_one(planted):
    data, _, split, models = planted
    recall = {k: evaluate_scorer(model_scorer(m, SYNTHETIC_CONFIG.max_history_length), data.sequences,
                                 data.user_profile, split.test_users)["user_split"]["Recall@50"]
              for k, m in models.items()}
    assert recall[4] > recall[1]


def test_capsules_separate_a_users_planted_clusters(planted):
    data, truth, _, models = planted
    model = models[4]
    items = model.all_item_embeddings().detach()
    separated = chance = users = 0
    for user, clusters in enumerate(truth.user_clusters):
        if len(clusters) != 3:
            continue
        sequence = data.sequences[user]
        history, mask = pad_histories([sequence], SYNTHETIC_CONFIG.max_history_length)
        with torch.no_grad():
            out = model.interests(torch.from_numpy(history), torch.from_numpy(mask),
                                  torch.from_numpy(data.user_profile[user: user + 1]))
        vectors = out.interest_vectors[0, out.valid_interest_mask[0]]            # (K'u, d)
        best_capsule = []
        for cluster in clusters:
            held_out = np.setdiff1d(np.flatnonzero(truth.item_cluster == cluster), sequence)
            if len(held_out):  # the capsule that scores most of the cluster's unseen items highest
                best_capsule.append(int(torch.mode((vectors @ items[held_out].T).argmax(0)).values))
        if len(best_capsule) < 3:
            continue
        users += 1
        separated += len(set(best_capsule)) == 3
        k = len(vectors)
        chance += math.perm(k, 3) / k**3 if k >= 3 else 0.0   # three random capsules all different
    assert users >= 50
    assert separated / users > 0.5
    assert separated / users > 1.5 * chance / users


def test_training_records_slot_wins_and_routing_shift_per_epoch_with_every_option_on():
    data, _ = synthetic_planted(num_users=60, num_clusters=4, items_per_cluster=10, seed=2)
    split = user_split(data, seed=0)
    config = SYNTHETIC_CONFIG.replace(
        epochs=2,
        routing_init="item",
        routing_normalize=True,
        routing_update_scale=5.0,
        full_softmax=True,
        sample_mode="random_target",
        normalize="interests",
        logit_temperature=0.2,
        interest_cosine_penalty=0.1,
        attention_soft_epochs=1,
        attention_power=math.inf,
        candidate_scoring="attention",
    )
    result = train_model("mind", config, data, split.train_users, split.valid_users, progress=False,
                         log=lambda _: None)
    assert [e["attention_power"] for e in result.epochs] == ["0.0", "inf"]
    for epoch in result.epochs:
        training = epoch["training"]
        assert len(training["slot_win_share"]) == 4 and sum(training["slot_win_share"]) == pytest.approx(
            1, abs=1e-3
        )
        assert training["routing_logit_shift"] > 0 and -1 <= training["interest_cosine"] <= 1
        assert math.isfinite(epoch["loss"])
    assert result.model.label_aware_attention.power == math.inf


@pytest.mark.parametrize("scoring", ["max", "logsumexp", "mixture"])
def test_training_with_every_candidate_scored_by_its_interests_learns_and_ignores_attention_power(scoring):
    data, _ = synthetic_planted(num_users=60, num_clusters=4, items_per_cluster=10, seed=2)
    split = user_split(data, seed=0)
    losses = {}
    for power in (0.0, math.inf):
        config = SYNTHETIC_CONFIG.replace(epochs=3, candidate_scoring=scoring, attention_power=power)
        result = train_model("mind", config, data, split.train_users, split.valid_users, progress=False,
                             log=lambda _: None)
        losses[power] = [epoch["loss"] for epoch in result.epochs]
    assert all(math.isfinite(loss) for loss in losses[0.0]) and losses[0.0][-1] < losses[0.0][0]
    assert losses[math.inf] == pytest.approx(losses[0.0], rel=1e-6)  # float sums may differ in order


def test_training_is_deterministic_for_a_seed():
    data, _ = synthetic_planted(num_users=60, num_clusters=4, items_per_cluster=10, seed=2)
    split = user_split(data, seed=0)
    config = SYNTHETIC_CONFIG.replace(epochs=1)
    first, second = (train_model("mind", config, data, split.train_users, split.valid_users, progress=False,
                                 log=lambda _: None).model.state_dict() for _ in range(2))
    for name, tensor in first.items():
        torch.testing.assert_close(second[name], tensor, rtol=0, atol=0)


def test_target_window_draws_the_target_from_the_next_w_items_and_keeps_the_history():
    sequences = [np.array([5, 6, 7, 8])]
    samples = build_samples(sequences, np.array([0]))
    rows = np.repeat(np.arange(len(samples)), 2000)
    batch = make_batch(samples, rows, 3, np.array([[1]]), target_window=2, rng=np.random.default_rng(0))
    targets = batch["target"].numpy().reshape(len(samples), -1)
    assert [sorted(set(row)) for row in targets.tolist()] == [[6, 7], [7, 8], [8]]  # the last has one left
    assert np.abs((targets[0] == 6).mean() - 0.5) < 0.05
    histories = batch["history"].numpy().reshape(len(samples), -1, 3)[:, 0].tolist()
    assert histories == [[5, 0, 0], [5, 6, 0], [5, 6, 7]]  # the items before t, whatever the target


def test_training_keeps_the_best_epoch_and_merge_on_validation_users_and_the_model_names_that_merge():
    torch.set_num_threads(1)
    data, _ = synthetic_planted(num_users=200, num_clusters=8, items_per_cluster=10, seed=3)
    split = user_split(data, seed=0)
    config = SYNTHETIC_CONFIG.replace(epochs=3)
    result = train_model("mind", config, data, split.train_users, split.valid_users, progress=False,
                         log=lambda _: None)
    scored = [(record["validation_by_merge"][merge], record["epoch"], merge)
              for record in result.epochs for merge in ("mixture", "max")]
    assert all(set(record["validation_by_merge"]) == {"mixture", "max"} for record in result.epochs)
    best = max(scored, key=lambda t: (t[0], -t[1], t[2] == "mixture"))  # earliest epoch, then the configured
    assert (result.best_epoch, result.model.config.interest_merge) == (best[1], best[2])
    assert result.best_validation["user_split"]["Recall@50"] == best[0]
    # one interest: both merges rank alike, so only the configured one is validated
    single = train_model("mind", config.replace(num_interests=1, epochs=1), data, split.train_users,
                         split.valid_users, progress=False, log=lambda _: None)
    assert set(single.epochs[0]["validation_by_merge"]) == {"mixture"}
    off = train_model("mind", config.replace(choose_merge=False, epochs=1), data, split.train_users,
                      split.valid_users, progress=False, log=lambda _: None)
    assert set(off.epochs[0]["validation_by_merge"]) == {"mixture"}
    assert off.model.config.interest_merge == "mixture"
