"""The MIND layers on tiny hand-checked inputs: pooling, squash, K'u, routing, label-aware attention."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from model.layers import (
    EmbeddingPooling,
    InterestRouting,
    LabelAwareAttention,
    adaptive_interest_count,
    interest_mask_from_lengths,
    label_aware_weights,
    squash,
)


def test_squash_keeps_direction_and_maps_norms_below_one():
    z = torch.randn(64, 5, 8, generator=torch.Generator().manual_seed(0)) * torch.logspace(-3, 3, 8)
    u = squash(z)
    norms = u.norm(dim=-1)
    assert bool((norms < 1).all())
    expected = z.norm(dim=-1) ** 2 / (1 + z.norm(dim=-1) ** 2)
    torch.testing.assert_close(norms, expected, rtol=1e-5, atol=1e-6)
    cosine = torch.nn.functional.cosine_similarity(u, z, dim=-1)
    torch.testing.assert_close(cosine, torch.ones_like(cosine), rtol=0, atol=1e-5)


def test_squash_of_zero_is_zero_with_finite_gradient():
    z = torch.zeros(3, 4, requires_grad=True)
    u = squash(z)
    u.sum().backward()
    assert bool((u == 0).all())
    assert bool(torch.isfinite(z.grad).all())


@pytest.mark.parametrize("max_interests", [1, 4, 8])
def test_adaptive_interest_count_follows_paper_formula_for_lengths_1_2_3_4_16_1000(max_interests):
    lengths = [1, 2, 3, 4, 16, 1000]
    # K'u = max(1, min(K, floor(log2 n))); floor(log2 n) = n.bit_length() - 1 for integers n >= 1
    expected = [max(1, min(max_interests, n.bit_length() - 1)) for n in lengths]
    counts = adaptive_interest_count(torch.tensor(lengths), max_interests)
    assert counts.tolist() == expected
    mask = interest_mask_from_lengths(torch.tensor(lengths), max_interests)
    assert mask.tolist() == [[j < k for j in range(max_interests)] for k in expected]


def test_adaptive_interest_count_examples_for_k4():
    counts = adaptive_interest_count(torch.tensor([0, 1, 2, 3, 4, 7, 8, 15, 16, 1000]), 4)
    assert counts.tolist() == [1, 1, 1, 1, 2, 2, 3, 3, 4, 4]


def numpy_routing(embeddings, mask, valid, bilinear, logits0, iterations):
    """Reference B2I routing in plain numpy, written from the paper's equations."""
    mapped = embeddings @ bilinear.T                                   # S e_i as rows, (L, d)
    b = logits0.copy()
    for r in range(iterations):
        w = np.zeros_like(b)
        for i in range(len(mask)):
            if not mask[i]:
                continue
            exp = np.where(valid, np.exp(b[i] - b[i][valid].max()), 0.0)
            w[i] = exp / exp.sum()
        z = w.T @ mapped                                               # (K, d)
        norms = np.linalg.norm(z, axis=1, keepdims=True)
        safe = np.where(norms > 0, norms, 1.0)
        u = (norms**2 / (1 + norms**2)) * z / safe
        if r < iterations - 1:
            b = b + mapped @ u.T
    return u * valid[:, None], w


def test_routing_one_round_matches_hand_computation():
    routing = InterestRouting(dim=2, num_interests=2, max_history_length=3, iterations=1, logit_std=1.0,
                              seed=0)
    with torch.no_grad():
        routing.bilinear.copy_(torch.eye(2))
        routing.routing_logits.copy_(torch.tensor([[0.0, math.log(3)], [math.log(3), 0.0], [5.0, -5.0]]))
    e = torch.tensor([[[1.0, 0.0], [0.0, 1.0], [9.0, 9.0]]])
    capsules, coupling = routing(e, torch.tensor([[True, True, False]]), torch.tensor([[True, True]]))
    # w_1 = softmax(0, ln 3) = (1/4, 3/4), w_2 = (3/4, 1/4), the padded third behaviour gets 0
    torch.testing.assert_close(coupling[0], torch.tensor([[0.25, 0.75], [0.75, 0.25], [0.0, 0.0]]))
    # z_1 = 1/4 e_1 + 3/4 e_2; |z|^2 = 10/16; u = |z|^2 / (1 + |z|^2) * z / |z|
    z1 = np.array([0.25, 0.75])
    n2 = z1 @ z1
    u1 = n2 / (1 + n2) * z1 / math.sqrt(n2)
    torch.testing.assert_close(capsules[0], torch.tensor(np.array([u1, u1[::-1]]), dtype=torch.float32))


def test_routing_three_rounds_matches_numpy_reference():
    rng = np.random.default_rng(3)
    length, dim, k = 6, 5, 3
    routing = InterestRouting(dim=dim, num_interests=k, max_history_length=8, iterations=3, logit_std=1.0,
                              seed=7)
    bilinear = rng.normal(size=(dim, dim)).astype(np.float32)
    with torch.no_grad():
        routing.bilinear.copy_(torch.from_numpy(bilinear))
    embeddings = rng.normal(size=(length, dim)).astype(np.float32)
    mask = np.array([True, True, True, True, False, False])
    valid = np.array([True, True, False])
    capsules, coupling = routing(torch.from_numpy(embeddings)[None], torch.from_numpy(mask)[None],
                                 torch.from_numpy(valid)[None])
    expected_u, expected_w = numpy_routing(embeddings, mask, valid, bilinear,
                                           routing.routing_logits[:length].numpy().astype(np.float64), 3)
    np.testing.assert_allclose(capsules[0].detach().numpy(), expected_u, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(coupling[0].detach().numpy(), expected_w, rtol=1e-4, atol=1e-5)


def test_routing_softmax_runs_over_interests_for_each_behaviour():
    routing = InterestRouting(dim=4, num_interests=3, max_history_length=10, iterations=3, logit_std=1.0,
                              seed=1)
    e = torch.randn(2, 10, 4, generator=torch.Generator().manual_seed(0))
    mask = torch.ones(2, 10, dtype=torch.bool)
    mask[1, 6:] = False
    _, coupling = routing(e, mask, torch.tensor([[True, True, True], [True, True, False]]))
    sums = coupling.sum(-1)
    torch.testing.assert_close(sums, mask.float())               # 1 per real behaviour, 0 per padded one
    assert bool((coupling[1, :, 2] == 0).all())                   # the invalid interest gets nothing


def test_routing_ignores_padded_behaviours_whatever_their_embeddings():
    routing = InterestRouting(dim=4, num_interests=3, max_history_length=12, iterations=3, logit_std=1.0,
                              seed=2)
    generator = torch.Generator().manual_seed(5)
    e = torch.randn(1, 5, 4, generator=generator)
    valid = torch.tensor([[True, True, True]])
    capsules, coupling = routing(e, torch.ones(1, 5, dtype=torch.bool), valid)
    padded = torch.cat([e, 100 * torch.randn(1, 7, 4, generator=generator)], dim=1)
    padded_mask = torch.tensor([[True] * 5 + [False] * 7])
    capsules_padded, coupling_padded = routing(padded, padded_mask, valid)
    torch.testing.assert_close(capsules_padded, capsules)
    torch.testing.assert_close(coupling_padded[:, :5], coupling)
    assert bool((coupling_padded[:, 5:] == 0).all())


def test_routing_logits_are_a_frozen_seeded_buffer():
    first = InterestRouting(dim=4, num_interests=3, max_history_length=200, iterations=3, logit_std=2.0,
                            seed=11)
    again = InterestRouting(dim=4, num_interests=3, max_history_length=200, iterations=3, logit_std=2.0,
                            seed=11)
    other = InterestRouting(dim=4, num_interests=3, max_history_length=200, iterations=3, logit_std=2.0,
                            seed=12)
    assert "routing_logits" in dict(first.named_buffers())
    assert "routing_logits" not in dict(first.named_parameters())
    torch.testing.assert_close(first.routing_logits, again.routing_logits)
    assert not torch.equal(first.routing_logits, other.routing_logits)
    assert 1.6 < float(first.routing_logits.std()) < 2.4          # drawn from N(0, sigma^2), not zeros
    before = first.routing_logits.clone()
    e = torch.randn(2, 9, 4)
    mask = torch.ones(2, 9, dtype=torch.bool)
    valid = torch.ones(2, 3, dtype=torch.bool)
    out1 = first(e, mask, valid)
    out2 = first(e, mask, valid)
    torch.testing.assert_close(first.routing_logits, before)       # forward never writes the buffer
    torch.testing.assert_close(out1[0], out2[0])


def test_routing_stop_gradient_still_trains_bilinear_and_embeddings():
    for stop_gradient in (True, False):
        routing = InterestRouting(dim=4, num_interests=2, max_history_length=6, iterations=3, logit_std=1.0,
                                  seed=0, stop_gradient=stop_gradient)
        e = torch.randn(3, 6, 4, requires_grad=True)
        mask = torch.ones(3, 6, dtype=torch.bool)
        valid = torch.tensor([[True, False], [True, True], [True, True]])
        capsules, _ = routing(e, mask, valid)
        capsules.pow(2).sum().backward()
        grad = routing.bilinear.grad
        assert bool(torch.isfinite(grad).all()) and float(grad.abs().sum()) > 0
        assert bool(torch.isfinite(e.grad).all()) and float(e.grad.abs().sum()) > 0


def test_embedding_pooling_averages_id_and_feature_embeddings_and_skips_missing_values():
    genre = np.array([[0, 0], [1, 2], [0, 0], [2, 0]])     # item 2 has no genre
    year = np.array([[0], [1], [1], [2]])
    pooling = EmbeddingPooling(3, 4, {"genre": genre, "year": year}, {"genre": 3, "year": 3})
    ids = pooling.id_embedding.weight.detach()
    g = pooling.feature_embeddings["genre"].weight.detach()
    y = pooling.feature_embeddings["year"].weight.detach()
    out = pooling(torch.tensor([[0, 1], [2, 3]]))
    assert out.shape == (2, 2, 4)
    torch.testing.assert_close(out[0, 0], torch.zeros(4))
    torch.testing.assert_close(out[0, 1], (ids[1] + (g[1] + g[2]) / 2 + y[1]) / 3)
    torch.testing.assert_close(out[1, 0], (ids[2] + y[1]) / 2)
    torch.testing.assert_close(out[1, 1], (ids[3] + g[2] + y[2]) / 3)


def test_embedding_pooling_rejects_a_matrix_of_the_wrong_height():
    with pytest.raises(ValueError, match="genre"):
        EmbeddingPooling(3, 4, {"genre": np.zeros((3, 2), dtype=np.int64)}, {"genre": 2})


NEGATIVE_SCORES = torch.tensor([[-5.0, -1.0, -3.0, -0.5], [-200.0, -150.0, -300.0, -100.0]])
VALID = torch.tensor([[True, True, True, False], [True, True, True, True]])


@pytest.mark.parametrize("power", [0.0, 1.0, 100.0, 1e6, math.inf])
def test_label_aware_weights_are_finite_and_attend_only_valid_interests(power):
    weights = label_aware_weights(NEGATIVE_SCORES, VALID, power)
    assert bool(torch.isfinite(weights).all())
    torch.testing.assert_close(weights.sum(-1), torch.ones(2))
    assert float(weights[0, 3]) == 0.0
    if power > 0:  # monotone in the score for every sign: the least negative valid interest weighs most
        assert weights[0].argmax().item() == 1
        assert weights[1].argmax().item() == 3


def test_label_aware_weights_average_at_p0_and_approach_hard_max_as_p_grows():
    torch.testing.assert_close(label_aware_weights(NEGATIVE_SCORES, VALID, 0.0)[0],
                               torch.tensor([1 / 3, 1 / 3, 1 / 3, 0.0]))
    scores = torch.tensor([[0.30, 0.31, -2.0, 0.29]])
    valid = torch.ones(1, 4, dtype=torch.bool)
    hard = label_aware_weights(scores, valid, math.inf)
    torch.testing.assert_close(hard, torch.tensor([[0.0, 1.0, 0.0, 0.0]]))
    gaps = [float((label_aware_weights(scores, valid, p) - hard).abs().max())
            for p in (1, 10, 100, 1000, 1e5)]
    assert all(later < earlier for earlier, later in zip(gaps, gaps[1:], strict=False))
    assert gaps[-1] < 1e-6


def test_label_aware_attention_returns_the_weighted_interest_vectors():
    vectors = torch.tensor([[[1.0, 0.0], [0.0, 1.0], [5.0, 5.0]]])
    valid = torch.tensor([[True, True, False]])   # the invalid one would score highest
    target = torch.tensor([[0.2, 1.0]])
    out = LabelAwareAttention(math.inf)(vectors, valid, target)
    torch.testing.assert_close(out, torch.tensor([[0.0, 1.0]]))
    soft = LabelAwareAttention(1.0)(vectors, valid, target)
    w = torch.softmax(torch.tensor([0.2, 1.0]), 0)
    torch.testing.assert_close(soft, torch.tensor([[w[0], w[1]]]))


def test_item_keyed_routing_logits_follow_the_item_not_its_position():
    routing = InterestRouting(
        dim=4,
        num_interests=3,
        max_history_length=8,
        iterations=3,
        logit_std=1.0,
        seed=5,
        init="item",
        num_items=20,
    )
    assert tuple(routing.routing_logits.shape) == (21, 3)
    history = torch.tensor([[3, 7, 11, 19, 2]])
    order = torch.tensor([4, 0, 3, 1, 2])
    table = torch.randn(21, 4)
    mask = torch.ones(1, 5, dtype=torch.bool)
    valid = torch.ones(1, 3, dtype=torch.bool)
    capsules, coupling = routing(table[history], mask, valid, history)
    shuffled_capsules, shuffled_coupling = routing(table[history[:, order]], mask, valid, history[:, order])
    torch.testing.assert_close(shuffled_capsules, capsules)           # the same items in any order
    torch.testing.assert_close(shuffled_coupling, coupling[:, order])
    with pytest.raises(ValueError, match="item ids"):
        routing(table[history], mask, valid)


def test_learned_routing_logits_are_an_item_keyed_parameter_that_the_loss_trains():
    routing = InterestRouting(dim=4, num_interests=3, max_history_length=8, iterations=3, logit_std=1.0,
                              seed=5, init="learned", num_items=20)
    fixed = InterestRouting(dim=4, num_interests=3, max_history_length=8, iterations=3, logit_std=1.0,
                            seed=5, init="item", num_items=20)
    assert isinstance(routing.routing_logits, torch.nn.Parameter)
    assert "routing_logits" not in dict(fixed.named_parameters())
    torch.testing.assert_close(routing.routing_logits.detach(), fixed.routing_logits)  # the same first draw
    history = torch.tensor([[3, 7, 11, 19, 2]])
    e = torch.randn(1, 5, 4)
    mask = torch.ones(1, 5, dtype=torch.bool)
    valid = torch.ones(1, 3, dtype=torch.bool)
    capsules, coupling = routing(e, mask, valid, history)
    order = torch.tensor([4, 0, 3, 1, 2])
    shuffled, _ = routing(e[:, order], mask, valid, history[:, order])
    torch.testing.assert_close(shuffled, capsules)  # keyed by item, like "item"
    capsules[:, 0].sum().backward()
    grad = routing.routing_logits.grad
    assert grad is not None
    assert grad[history[0]].abs().sum() > 0          # the items in the history get a gradient
    untouched = torch.ones(21, dtype=torch.bool)
    untouched[history[0]] = False
    assert grad[untouched].abs().sum() == 0          # the others do not


def test_prototype_routing_logits_are_the_scaled_cosine_of_each_behaviour_with_learned_directions():
    routing = InterestRouting(dim=4, num_interests=3, max_history_length=8, iterations=3, logit_std=2.0,
                              seed=5, init="prototype")
    assert isinstance(routing.prototypes, torch.nn.Parameter) and routing.prototypes.shape == (3, 4)
    keys = torch.randn(2, 5, 4)
    expected = 2.0 * 4 ** 0.5 * torch.nn.functional.cosine_similarity(
        keys.unsqueeze(2), routing.prototypes.detach().view(1, 1, 3, 4), dim=-1)  # sigma sqrt(d) cos
    torch.testing.assert_close(routing.initial_logits(None, 5, keys[..., :1], keys).detach(), expected)
    e = torch.randn(1, 5, 4)
    mask = torch.ones(1, 5, dtype=torch.bool)
    valid = torch.ones(1, 3, dtype=torch.bool)
    capsules, _ = routing(e, mask, valid)  # keyed by content: no item ids needed
    order = torch.tensor([4, 0, 3, 1, 2])
    shuffled, _ = routing(e[:, order], mask, valid)
    torch.testing.assert_close(shuffled, capsules)  # the same behaviours in another order
    capsules[:, 0].sum().backward()
    assert routing.prototypes.grad is not None and routing.prototypes.grad.abs().sum() > 0


def test_zero_update_scale_keeps_the_initial_coupling_and_training_records_the_logit_shift():
    e = torch.randn(2, 6, 4)
    mask = torch.ones(2, 6, dtype=torch.bool)
    valid = torch.ones(2, 3, dtype=torch.bool)
    frozen = InterestRouting(
        dim=4, num_interests=3, max_history_length=6, iterations=3, logit_std=1.0, seed=0, update_scale=0.0
    )
    _, coupling = frozen(e, mask, valid)
    torch.testing.assert_close(coupling, torch.softmax(frozen.routing_logits, -1).expand(2, -1, -1))
    for normalize in (False, True):
        routing = InterestRouting(dim=4, num_interests=3, max_history_length=6, iterations=3, logit_std=1.0,
                                  seed=0, update_scale=2.0, normalize=normalize).train()
        routing(e, mask, valid)
        assert routing.last_logit_shift is not None and float(routing.last_logit_shift) > 0
    frozen.train()(e, mask, valid)
    assert float(frozen.last_logit_shift) == 0.0


def test_normalised_routing_update_is_the_scaled_cosine_of_capsule_and_behaviour():
    routing = InterestRouting(
        dim=4,
        num_interests=2,
        max_history_length=5,
        iterations=2,
        logit_std=1.0,
        seed=1,
        update_scale=3.0,
        normalize=True,
    )
    e = torch.randn(1, 5, 4)
    mask = torch.ones(1, 5, dtype=torch.bool)
    valid = torch.ones(1, 2, dtype=torch.bool)
    _, coupling = routing(e, mask, valid)
    mapped = e @ routing.bilinear.detach().t()
    first = squash(torch.softmax(routing.routing_logits, -1).t() @ mapped[0])        # (K, d) round one
    cosine = (
        torch.nn.functional.normalize(mapped[0], dim=-1) @ torch.nn.functional.normalize(first, dim=-1).t()
    )
    torch.testing.assert_close(coupling[0], torch.softmax(routing.routing_logits + 3.0 * cosine, -1))


def test_per_sample_routing_init_draws_afresh_in_training_and_is_fixed_in_eval():
    routing = InterestRouting(
        dim=4, num_interests=3, max_history_length=6, iterations=3, logit_std=1.0, seed=0, init="sample"
    )
    e = torch.randn(2, 6, 4)
    mask = torch.ones(2, 6, dtype=torch.bool)
    valid = torch.ones(2, 3, dtype=torch.bool)
    routing.train()
    assert not torch.allclose(routing(e, mask, valid)[0], routing(e, mask, valid)[0])
    routing.eval()
    torch.testing.assert_close(routing(e, mask, valid)[0], routing(e, mask, valid)[0])


def test_per_interest_bilinear_routing_with_equal_maps_is_the_shared_routing():
    shared = InterestRouting(
        dim=4, num_interests=3, max_history_length=6, iterations=3, logit_std=1.0, seed=2
    )
    per_interest = InterestRouting(
        dim=4,
        num_interests=3,
        max_history_length=6,
        iterations=3,
        logit_std=1.0,
        seed=2,
        per_interest_bilinear=True,
    )
    assert tuple(per_interest.bilinear.shape) == (3, 4, 4)
    with torch.no_grad():
        per_interest.bilinear.copy_(shared.bilinear.expand(3, -1, -1))
    e = torch.randn(2, 6, 4)
    mask = torch.tensor([[True] * 6, [True] * 4 + [False] * 2])
    valid = torch.tensor([[True, True, True], [True, True, False]])
    for got, expected in zip(per_interest(e, mask, valid), shared(e, mask, valid), strict=True):
        torch.testing.assert_close(got, expected)
