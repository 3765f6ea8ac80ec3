"""`RUN_DIR/checkpoint.pt`: everything needed to rebuild a trained model, and nothing else.

The dict's keys are the contract with `export/` (docs/ARCHITECTURE.md): model_kind, config, state_dict,
vocabularies, item_feature_matrix, model_version, dataset. `load_checkpoint` rebuilds the model from the
file alone. Only plain Python values and tensors are stored, so it loads with `weights_only=True`.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from model.baselines import build_model
from model.config import ConfigError, FeatureSpec, MindConfig
from model.files import atomic_writer
from model.mind import RetrievalModel

CHECKPOINT_FILE = "checkpoint.pt"
CHECKPOINT_KEYS = ("model_kind", "config", "state_dict", "vocabularies", "item_feature_matrix",
                   "model_version", "dataset")


class CheckpointError(RuntimeError):
    """A checkpoint that is missing, unreadable or incomplete."""


@dataclass
class Checkpoint:
    model: RetrievalModel             # rebuilt, weights loaded, in eval mode
    model_kind: str
    config: MindConfig
    vocabularies: dict[str, Any]
    item_feature_matrix: dict[str, np.ndarray]
    model_version: str
    dataset: dict[str, Any]


def checkpoint_path(path: str | Path) -> Path:
    """A run directory or the checkpoint file itself -> the checkpoint file."""
    path = Path(path)
    return path / CHECKPOINT_FILE if path.is_dir() else path


def model_version_of(config: Mapping[str, Any], state_dict: Mapping[str, torch.Tensor]) -> str:
    """Content hash: sha256 of the config (sorted JSON) and every state tensor (by name), first 12 hex."""
    digest = hashlib.sha256(json.dumps(dict(config), sort_keys=True).encode())
    for name in sorted(state_dict):
        tensor = state_dict[name].detach().cpu().contiguous()
        digest.update(name.encode())
        digest.update(str(tensor.dtype).encode())
        digest.update(str(tuple(tensor.shape)).encode())
        digest.update(tensor.numpy().tobytes())
    return digest.hexdigest()[:12]


def save_checkpoint(path: str | Path, model: RetrievalModel, *, vocabularies: Mapping[str, Any],
                    item_feature_matrix: Mapping[str, np.ndarray],
                    dataset: Mapping[str, Any] | None = None) -> str:
    """Write the checkpoint dict to `path` (a run directory or a file); returns the model version."""
    config = model.config.to_dict()
    state_dict = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
    model_version = model_version_of(config, state_dict)
    payload = {
        "model_kind": model.model_kind,
        "config": config,
        "state_dict": state_dict,
        "vocabularies": json.loads(json.dumps(vocabularies)),
        "item_feature_matrix": {k: np.asarray(v, dtype=np.int64).tolist()
                                for k, v in item_feature_matrix.items()},
        "model_version": model_version,
        "dataset": dict(dataset or {}),
    }
    target = checkpoint_path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    with atomic_writer(target) as handle:  # a reader never sees a half-written checkpoint
        torch.save(payload, handle)
    return model_version


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> Checkpoint:
    """Rebuild the model a checkpoint describes; raises CheckpointError naming the file and the problem."""
    source = checkpoint_path(path)
    if not source.is_file():
        raise CheckpointError(f"{source}: no checkpoint here; "
                              "train one with `mind-model train --out RUN_DIR`")
    try:
        payload = torch.load(source, map_location=map_location, weights_only=True)
    except Exception as error:  # noqa: BLE001 - torch raises many kinds for a corrupt file
        raise CheckpointError(
            f"{source}: not a readable checkpoint ({type(error).__name__}: {error})") from None
    missing = [k for k in CHECKPOINT_KEYS if not isinstance(payload, dict) or k not in payload]
    if missing:
        raise CheckpointError(f"{source}: checkpoint lacks {missing}; re-train with "
                              "this version of mind-model")
    try:
        config = MindConfig.from_dict(payload["config"])
        spec = FeatureSpec.from_vocabularies(payload["vocabularies"])
        matrices = {k: np.asarray(v, dtype=np.int64) for k, v in payload["item_feature_matrix"].items()}
        model = build_model(payload["model_kind"], config, spec, matrices)
        model.load_state_dict(payload["state_dict"])
    except (ConfigError, KeyError, RuntimeError, ValueError) as error:
        raise CheckpointError(f"{source}: cannot rebuild the model ({error})") from None
    model.eval()
    return Checkpoint(
        model=model,
        model_kind=payload["model_kind"],
        config=config,
        vocabularies=payload["vocabularies"],
        item_feature_matrix=matrices,
        model_version=payload["model_version"],
        dataset=payload["dataset"],
    )
