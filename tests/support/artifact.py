"""Build a tiny but real serving artifact in a few seconds, for any test that needs one.

A random-weight MIND (nothing trained) over `synthetic_planted` data is saved with the model's own
`save_checkpoint`, then exported by the real `mind-export` path: dynamo ONNX export, onnxruntime-vs-PyTorch
parity on the data's histories, manifest with hashes. Use from any test module:

    from support.artifact import build_tiny_artifact
    artifact_dir = build_tiny_artifact(tmp_path / "artifact", num_items=40)
    runtime = UserTowerRuntime.load(artifact_dir)

Raw item ids are "c{cluster}_{j}" (or "1".."N" with numeric_ids=True; titles "Title of {id}" with
item_titles=True); one profile field, "cohort", with
values "a", "b", "c". Needs torch (the train extras); the artifact it writes does not.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np


@dataclass(frozen=True)
class TinyRun:
    """A saved random-weight MIND checkpoint and the data it was built for."""

    run_dir: Path
    data: object  # model.data.InteractionData
    model_version: str


def build_tiny_run(
    run_dir: str | Path,
    *,
    num_items: int = 40,
    num_clusters: int = 4,
    num_users: int = 60,
    embedding_dim: int = 8,
    num_interests: int = 4,
    max_history_length: int = 12,
    routing_iterations: int = 3,
    adaptive_interests: bool = True,
    numeric_ids: bool = False,
    item_titles: bool = False,
    seed: int = 0,
    config_changes: dict | None = None,
) -> TinyRun:
    """Save RUN_DIR/checkpoint.pt of a random-weight MIND over synthetic data with `num_items` items.

    `config_changes` sets further MindConfig fields (e.g. {"routing_init": "position"}).
    """
    import torch

    from model.checkpoint import save_checkpoint
    from model.config import FeatureSpec, MindConfig, vocabularies_of
    from model.mind import MIND
    from model.synthetic import synthetic_planted

    if num_items % num_clusters:
        raise ValueError(f"num_items ({num_items}) must be a multiple of num_clusters ({num_clusters})")
    data, _ = synthetic_planted(
        num_users=num_users,
        num_clusters=num_clusters,
        items_per_cluster=num_items // num_clusters,
        max_interests=min(4, num_clusters),
        min_length=8,
        max_length=max(8, max_history_length + 8),
        seed=seed,
    )
    if numeric_ids:
        data.item_ids = [data.item_ids[0]] + [str(i) for i in range(1, len(data.item_ids))]
    if item_titles:  # display names, as an item file's title column gives them
        data.item_titles = [""] + [f"Title of {item_id}" for item_id in data.item_ids[1:]]
    config = MindConfig(
        embedding_dim=embedding_dim,
        num_interests=num_interests,
        max_history_length=max_history_length,
        routing_iterations=routing_iterations,
        adaptive_interests=adaptive_interests,
        hidden_dim=2 * embedding_dim,
        profile_embedding_dim=4,
        seed=seed,
        **(config_changes or {}),
    )
    torch.manual_seed(seed)
    # save_checkpoint treats a path that is not (yet) a directory as the checkpoint file itself.
    Path(run_dir).mkdir(parents=True, exist_ok=True)
    model = MIND(config, FeatureSpec.from_data(data), data.item_features).eval()
    model_version = save_checkpoint(
        run_dir,
        model,
        vocabularies=vocabularies_of(data),
        item_feature_matrix=data.item_features,
        dataset={"name": "synthetic",
                 "description": f"synthetic_planted seed {seed}, random weights (untrained)"},
    )
    return TinyRun(Path(run_dir), data, model_version)


def build_tiny_artifact(
    out_dir: str | Path,
    *,
    run_dir: str | Path | None = None,
    num_items: int = 40,
    with_coupling: bool = False,
    **run_options: object,
) -> Path:
    """Write a real exported artifact to `out_dir` (checkpoint in `run_dir`, default `<out_dir>-run`)."""
    from export.onnx_export import export_artifact, load_run

    out_dir = Path(out_dir)
    run_dir = Path(run_dir) if run_dir is not None else out_dir.with_name(out_dir.name + "-run")
    tiny = build_tiny_run(run_dir, num_items=num_items, **run_options)
    histories = [np.asarray(s).tolist() for s in tiny.data.sequences]
    export_artifact(load_run(run_dir), out_dir, real_histories=histories, with_coupling=with_coupling)
    return out_dir
