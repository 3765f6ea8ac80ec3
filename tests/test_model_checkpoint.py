"""checkpoint.pt round trips: the model is rebuilt from the file alone and gives the same vectors."""

from __future__ import annotations

import pytest
import torch
from support.tiny_model import NUM_ITEMS, batch, tiny_features, tiny_model

from model.checkpoint import CHECKPOINT_KEYS, CheckpointError, load_checkpoint, save_checkpoint


def vocabularies():
    return {
        "item_ids": ["<pad>"] + [f"movie-{i}" for i in range(1, NUM_ITEMS + 1)],
        "item_features": {"genre": ["<unk>", "a", "b", "c", "d", "e"],
                          "year_bucket": ["<unk>", "1980s", "1990s", "2000s"]},
        "profile": {"age_bucket": ["<unk>", "18", "25", "35", "45"], "gender": ["<unk>", "F", "M"]},
    }


@pytest.mark.parametrize("kind", ["mind", "youtube_dnn"])
def test_load_checkpoint_rebuilds_a_model_with_identical_vectors(tmp_path, kind):
    model = tiny_model(kind)
    _, matrices = tiny_features()
    version = save_checkpoint(tmp_path, model, vocabularies=vocabularies(), item_feature_matrix=matrices,
                              dataset={"name": "tiny"})
    payload = torch.load(tmp_path / "checkpoint.pt", weights_only=True)
    assert set(payload) == set(CHECKPOINT_KEYS)
    assert payload["model_kind"] == kind and payload["model_version"] == version and len(version) == 12
    assert "item_pooling.feature_matrix_genre" in payload["state_dict"]

    loaded = load_checkpoint(tmp_path)
    assert loaded.model_version == version and loaded.model_kind == kind
    assert loaded.config == model.config and loaded.vocabularies == vocabularies()
    history, mask, profile = batch([2, 7, 20])
    with torch.no_grad():
        expected = model.interests(history, mask, profile)
        actual = loaded.model.interests(history, mask, profile)
    torch.testing.assert_close(actual.interest_vectors, expected.interest_vectors)
    torch.testing.assert_close(loaded.model.all_item_embeddings(), model.all_item_embeddings())
    assert save_checkpoint(tmp_path / "again.pt", loaded.model, vocabularies=vocabularies(),
                           item_feature_matrix=matrices) == version


def test_model_version_changes_when_the_weights_change(tmp_path):
    model = tiny_model()
    _, matrices = tiny_features()
    first = save_checkpoint(tmp_path / "a.pt", model, vocabularies=vocabularies(),
                            item_feature_matrix=matrices)
    with torch.no_grad():
        model.routing.bilinear.add_(1e-3)
    assert save_checkpoint(tmp_path / "b.pt", model, vocabularies=vocabularies(),
                           item_feature_matrix=matrices) != first


def test_missing_or_corrupt_checkpoint_raises_one_clear_error(tmp_path):
    with pytest.raises(CheckpointError, match="no checkpoint here"):
        load_checkpoint(tmp_path)
    (tmp_path / "checkpoint.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="not a readable checkpoint"):
        load_checkpoint(tmp_path)
    torch.save({"model_kind": "mind"}, tmp_path / "checkpoint.pt")
    with pytest.raises(CheckpointError, match="lacks"):
        load_checkpoint(tmp_path)
