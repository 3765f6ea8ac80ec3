"""The MIND user tower and its baselines: shapes, masks, determinism, gradients, ONNX-traceability."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from support.tiny_model import NUM_ITEMS, batch, tiny_model

from model.baselines import YouTubeDNN
from model.config import LEGACY_VALUES, ConfigError, MindConfig


def test_interests_have_documented_shapes_and_adaptive_masks():
    model = tiny_model(num_interests=4)
    history, mask, profile = batch([1, 3, 4, 9, 20])
    out = model.interests(history, mask, profile)
    assert out.interest_vectors.shape == (5, 4, 8)
    assert out.coupling.shape == (5, 20, 4)
    assert out.valid_interest_mask.dtype == torch.bool
    assert out.valid_interest_mask.sum(-1).tolist() == [1, 1, 2, 3, 4]
    invalid = ~out.valid_interest_mask
    assert bool((out.interest_vectors[invalid] == 0).all())
    assert bool((out.coupling[~mask] == 0).all())


def test_global_interest_is_an_always_valid_slot_0_routed_from_every_behaviour_with_weight_1():
    model = tiny_model(num_interests=4, global_interest=True)
    history, mask, profile = batch([1, 3, 4, 9, 20])
    out = model.interests(history, mask, profile)
    assert model.num_interests == 5
    assert out.interest_vectors.shape == (5, 5, 8) and out.coupling.shape == (5, 20, 5)
    assert out.valid_interest_mask[:, 0].all()
    assert out.valid_interest_mask[:, 1:].sum(-1).tolist() == [1, 1, 2, 3, 4]  # K'u routed slots, as without
    torch.testing.assert_close(out.coupling[..., 0], mask.to(out.coupling.dtype))
    # slot 0 is MIND-1's capsule through the same interest MLP
    pooled = model.routing.pooled_capsule(model.item_embeddings(history), mask)
    vectors = model.interest_mlp(pooled.unsqueeze(1), model.profile_embedding(profile))
    expected = model.finish_interests(vectors, torch.ones(5, 1, dtype=torch.bool))
    torch.testing.assert_close(out.interest_vectors[:, :1], expected)
    with pytest.raises(ConfigError, match="global_interest"):
        MindConfig(global_interest=True, per_interest_bilinear=True)


def test_non_adaptive_model_gives_every_user_k_interests():
    model = tiny_model(num_interests=3, adaptive_interests=False)
    out = model.interests(*batch([1, 2, 20]))
    assert bool(out.valid_interest_mask.all())


def test_extra_padding_changes_nothing():
    model = tiny_model()
    history, mask, profile = batch([2, 5, 7], width=7)
    wider = torch.cat([history, torch.zeros(3, 13, dtype=torch.long)], dim=1)
    wider_mask = torch.cat([mask, torch.zeros(3, 13, dtype=torch.bool)], dim=1)
    with torch.no_grad():
        narrow_out = model.interests(history, mask, profile)
        wide_out = model.interests(wider, wider_mask, profile)
    torch.testing.assert_close(wide_out.interest_vectors, narrow_out.interest_vectors)
    torch.testing.assert_close(wide_out.valid_interest_mask, narrow_out.valid_interest_mask)
    torch.testing.assert_close(wide_out.coupling[:, :7], narrow_out.coupling)


def test_a_user_gets_the_same_vectors_alone_or_in_a_batch_and_on_every_call():
    model = tiny_model()
    history, mask, profile = batch([3, 11, 20])
    with torch.no_grad():
        together = model.interests(history, mask, profile).interest_vectors
        again = model.interests(history, mask, profile).interest_vectors
        alone = model.interests(history[1:2, :11], mask[1:2, :11], profile[1:2]).interest_vectors
        model.train()
        in_train_mode = model.interests(history, mask, profile).interest_vectors
    torch.testing.assert_close(again, together)
    torch.testing.assert_close(alone[0], together[1])
    torch.testing.assert_close(in_train_mode, together)


def test_all_item_embeddings_pool_every_item_with_padding_row_zero():
    model = tiny_model()
    table = model.all_item_embeddings()
    assert table.shape == (NUM_ITEMS + 1, 8)
    assert bool((table[0] == 0).all())
    torch.testing.assert_close(table[[3, 17]], model.item_embeddings(torch.tensor([3, 17])))


@pytest.mark.parametrize("kind", ["mind", "youtube_dnn"])
def test_training_forward_gives_one_vector_per_target_and_finite_gradients(kind):
    model = tiny_model(kind).train()
    history, mask, profile = batch([1, 4, 9, 20])
    target = torch.tensor([1, 2, 3, 4])
    user_vectors = model(history, mask, profile, target)
    assert user_vectors.shape == (4, 8)
    logits = user_vectors @ model.all_item_embeddings().T
    torch.nn.functional.cross_entropy(logits, target).backward()
    grads = {name: p.grad for name, p in model.named_parameters()}
    assert all(g is not None and bool(torch.isfinite(g).all()) for g in grads.values())
    assert float(grads["item_pooling.id_embedding.weight"].abs().sum()) > 0


def test_youtube_dnn_speaks_the_same_interface_with_one_interest():
    model = tiny_model("youtube_dnn")
    assert isinstance(model, YouTubeDNN)
    history, mask, profile = batch([2, 6])
    out = model.interests(history, mask, profile)
    assert out.interest_vectors.shape == (2, 1, 8)
    assert bool(out.valid_interest_mask.all())
    torch.testing.assert_close(out.coupling.sum(1), torch.ones(2, 1))


def test_normalised_interests_are_unit_length_and_invalid_ones_zero():
    for kind in ("mind", "youtube_dnn"):
        out = tiny_model(kind, normalize="interests").interests(*batch([1, 4, 20]))
        norms = out.interest_vectors.norm(dim=-1)
        torch.testing.assert_close(
            norms[out.valid_interest_mask], torch.ones(int(out.valid_interest_mask.sum()))
        )
        assert bool((norms[~out.valid_interest_mask] == 0).all())


def test_the_interest_prior_is_each_valid_interests_share_of_the_age_weighted_coupling():
    coupling = torch.tensor([[[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.5, 0.5, 0.0], [0.0, 0.0, 0.0]]])
    mask = torch.tensor([[True, True, True, False]])                      # 3 behaviours, 1 padding
    valid = torch.tensor([[True, True, False]])
    flat = tiny_model(interest_prior_decay=1.0).interest_log_prior(coupling, mask, valid)
    torch.testing.assert_close(flat, torch.log(torch.tensor([[0.5, 0.5, 1.0]])))   # invalid slot: log 1 = 0
    # decay 0.5: ages 2, 1, 0 weigh 0.25, 0.5, 1 -> masses 0.25 + 0.5 and 0.5 + 0.5
    recent = tiny_model(interest_prior_decay=0.5).interest_log_prior(coupling, mask, valid).exp()
    torch.testing.assert_close(recent[:, :2], torch.tensor([[0.75 / 1.75, 1.0 / 1.75]]))


def test_recall_scores_are_the_max_or_the_prior_weighted_mixture_of_the_valid_interests():
    history, mask, profile = batch([1, 6, 20])
    items = torch.randn(7, 8)
    paper = tiny_model(interest_merge="max")
    out = paper.interests(history, mask, profile)
    inner = torch.einsum("bkd,nd->bkn", out.interest_vectors, items).masked_fill(
        ~out.valid_interest_mask.unsqueeze(-1), -torch.inf)
    torch.testing.assert_close(paper.recall_scores(out, mask, items), inner.max(1).values)
    assert bool((paper.merge_bias(out, mask) == 0).all())
    mixture = tiny_model(interest_merge="mixture", interest_prior_weight=2.0, logit_temperature=0.5)
    bias = mixture.merge_bias(out, mask)
    torch.testing.assert_close(bias, 2.0 * mixture.interest_log_prior(out.coupling, mask,
                                                                      out.valid_interest_mask))
    by_hand = 0.5 * torch.log((torch.exp(inner / 0.5) * torch.exp(bias).unsqueeze(-1)).sum(1))
    torch.testing.assert_close(mixture.recall_scores(out, mask, items), by_hand)
    # one valid interest (row 0, K'u = 1): pi = 1, so the mixture is the inner product itself
    torch.testing.assert_close(mixture.recall_scores(out, mask, items)[0], inner[0, 0])


def test_a_config_without_the_later_flags_rebuilds_the_model_it_was_trained_as():
    stored = {k: v for k, v in MindConfig().to_dict().items() if k not in LEGACY_VALUES}
    rebuilt = MindConfig.from_dict(stored)
    assert all(getattr(rebuilt, k) == v for k, v in LEGACY_VALUES.items())
    with pytest.raises(ConfigError, match="routing_init"):
        MindConfig(routing_init="per-user")
    with pytest.raises(ConfigError, match="candidate_scoring"):
        MindConfig(candidate_scoring="mean")


@pytest.mark.parametrize("routing_init", ["position", "item"])
def test_user_tower_traces_to_onnx_with_dynamic_batch_and_length(tmp_path, routing_init):
    import onnxruntime

    model = tiny_model(routing_init=routing_init, normalize="interests")

    class Tower(torch.nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, history, history_mask, profile):
            out = self.inner.interests(history, history_mask, profile)
            return out.interest_vectors, out.valid_interest_mask

    history, mask, profile = batch([3, 9], width=9)
    b, length = torch.export.Dim("batch"), torch.export.Dim("length", max=20)
    path = tmp_path / "tower.onnx"
    torch.onnx.export(Tower(model).eval(), (history, mask, profile), str(path), opset_version=18, dynamo=True,
                      input_names=["history", "history_mask", "profile"],
                      output_names=["interest_vectors", "valid_interest_mask"],
                      dynamic_shapes=({0: b, 1: length}, {0: b, 1: length}, {0: b}))
    session = onnxruntime.InferenceSession(str(path))
    history, mask, profile = batch([1, 2, 5, 16, 20], seed=4)          # another B and L than traced
    vectors, valid = session.run(None, {"history": history.numpy(), "history_mask": mask.numpy(),
                                        "profile": profile.numpy()})
    with torch.no_grad():
        expected = model.interests(history, mask, profile)
    np.testing.assert_allclose(vectors, expected.interest_vectors.numpy(), rtol=1e-4, atol=1e-5)
    np.testing.assert_array_equal(valid, expected.valid_interest_mask.numpy())


@pytest.mark.parametrize("merge", ["max", "mixture"])
def test_the_interest_diagnostics_merge_as_the_model_recalls(merge):
    from model.diagnostics import interest_diagnostics
    from model.evaluate import diagnose_interests, model_interests, user_split_cases

    model = tiny_model(interest_merge=merge, logit_temperature=1.0)  # T 1, 20 items: max and lse lists differ
    rng = np.random.default_rng(0)
    sequences = [rng.integers(1, NUM_ITEMS + 1, size=12) for _ in range(6)]
    profiles = np.zeros((6, 2), np.int64)
    users = np.arange(6)
    got = diagnose_interests(model, 20, sequences, profiles, users, n=20)["interests"]["all"]
    histories = [case.history for case in user_split_cases(sequences, users, 0.2)]
    interests = model_interests(model, histories, profiles, 20)
    with torch.no_grad():
        items = model.all_item_embeddings().numpy()
    bias = interests.bias if merge == "mixture" else None  # max: the plain max-merge, no bias at all
    expected = interest_diagnostics(interests.vectors, interests.mask, items, histories, 20, bias,
                                    model.config.logit_temperature)
    assert got["dominant_share"] == pytest.approx(float(np.mean(expected["dominant_share"])), abs=1e-4)
    assert got["interests_contributing"] == pytest.approx(float(np.mean(expected["interests_contributing"])),
                                                          abs=1e-4)
