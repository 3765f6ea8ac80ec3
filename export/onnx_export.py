"""Checkpoint → serving artifact: the user tower as ONNX, checked against PyTorch before anything is written.

The exported graph takes item *indices*: the pooled item embeddings (id + side features) are computed once
here and frozen into the graph as a lookup table, so serving needs neither the side-feature matrices nor
the embedding tables of the side features.
"""

from __future__ import annotations

import dataclasses
import tempfile
import warnings
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import torch
from torch import nn

from export.artifact import (
    BIAS_OUTPUT,
    INPUT_NAMES,
    OUTPUT_NAMES,
    ArtifactError,
    Manifest,
    Vocabularies,
    as_raw_id,
    write_artifact,
)
from export.runtime import pack_histories, session_options

DEFAULT_TOLERANCE = 1e-4
COUPLING_OUTPUT = "coupling"


class ExportError(Exception):
    """The checkpoint cannot be exported (wrong kind, failed parity, exporter failure); one line."""


class UserTowerForExport(nn.Module):
    """MIND's user tower over item indices, with the pooled item table frozen in as a constant.

    forward: history (B, L) int64, history_mask (B, L) bool, profile (B, P) int64
        -> interest_vectors (B, K, d) float32, valid_interest_mask (B, K) bool[, interest_bias (B, K)
        float32 when the model merges by 'mixture'][, coupling (B, L, K)]
    """

    def __init__(self, mind: nn.Module, with_coupling: bool = False) -> None:
        super().__init__()
        self.mind = mind
        self.with_coupling = with_coupling
        self.with_bias = mind.config.interest_merge == "mixture"
        with torch.no_grad():
            item_table = mind.all_item_embeddings().detach().to(torch.float32).clone()  # (N + 1, d)
        self.register_buffer("item_table", item_table)

    def forward(
        self, history: torch.Tensor, history_mask: torch.Tensor, profile: torch.Tensor
    ) -> tuple[torch.Tensor, ...]:
        behaviour_embeddings = nn.functional.embedding(history, self.item_table)  # (B, L, d)
        output = self.mind.interests_from_embeddings(behaviour_embeddings, history_mask, profile, history)
        outputs = (output.interest_vectors, output.valid_interest_mask)
        if self.with_bias:
            outputs += (self.mind.merge_bias(output, history_mask),)
        return outputs + ((output.coupling,) if self.with_coupling else ())

    def output_names(self) -> list[str]:
        """The ONNX graph's outputs, in `forward`'s order."""
        return (list(OUTPUT_NAMES) + ([BIAS_OUTPUT] if self.with_bias else [])
                + ([COUPLING_OUTPUT] if self.with_coupling else []))

    def merge(self) -> dict[str, Any]:
        """The manifest's `merge` (export.merge): the rule and the mixture's temperature."""
        if not self.with_bias:
            return {"rule": "max"}
        return {"rule": "mixture", "temperature": float(self.mind.config.logit_temperature)}


# --- ONNX export --------------------------------------------------------------------------------------


def export_onnx_bytes(
    tower: UserTowerForExport, max_history_length: int, num_profile_fields: int, opset: int = 18
) -> bytes:
    """Export with dynamic batch and sequence axes (torch.onnx dynamo exporter) and return the model bytes."""
    tower.eval()
    example_length = min(5, max_history_length)
    example = (
        torch.ones(2, example_length, dtype=torch.int64),
        torch.ones(2, example_length, dtype=torch.bool),
        torch.zeros(2, num_profile_fields, dtype=torch.int64),
    )
    batch = torch.export.Dim("batch", min=1, max=1 << 20)
    history_axes: dict[int, Any] = {0: batch}
    if max_history_length > 1:  # a Dim needs a range; a tower of length 1 has a static L
        history_axes[1] = torch.export.Dim("history_length", min=1, max=max_history_length)
    dynamic_shapes = {"history": history_axes, "history_mask": history_axes, "profile": {0: batch}}
    output_names = tower.output_names()
    with warnings.catch_warnings(), torch.no_grad():
        # The exporter warns about renaming dims that share constraints; that is expected here.
        warnings.simplefilter("ignore")
        try:
            program = torch.onnx.export(
                tower,
                example,
                dynamo=True,
                input_names=list(INPUT_NAMES),
                output_names=output_names,
                dynamic_shapes=dynamic_shapes,
                opset_version=opset,
                verbose=False,
            )
        except Exception as exc:  # the exporter raises many types; one line is what the CLI needs
            raise ExportError(f"torch.onnx.export failed: {str(exc).strip().splitlines()[0]}") from exc
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "user_tower.onnx"
        program.save(str(path), external_data=False)
        model_proto = onnx.load(str(path))
    onnx.checker.check_model(model_proto)
    return model_proto.SerializeToString()


def onnx_opset(onnx_bytes: bytes) -> int:
    model_proto = onnx.load_from_string(onnx_bytes)
    return next(o.version for o in model_proto.opset_import if o.domain in ("", "ai.onnx"))


# --- parity ---------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class ParityCase:
    """One batch for the parity check: history (B, L) int64, history_mask (B, L) bool,
    profile (B, P) int64."""

    name: str
    history: np.ndarray
    history_mask: np.ndarray
    profile: np.ndarray


@dataclasses.dataclass(frozen=True)
class ParityReport:
    tolerance: float
    max_abs_diff: float
    mask_mismatches: int
    cases: int
    rows: int
    worst_case: str

    @property
    def passed(self) -> bool:
        return self.max_abs_diff <= self.tolerance and self.mask_mismatches == 0

    def to_dict(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "passed": self.passed}

    def summary(self) -> str:
        verdict = "ok" if self.passed else "FAILED"
        return (
            f"parity {verdict}: max |onnxruntime - torch| = {self.max_abs_diff:.2e} (tolerance "
            f"{self.tolerance:.0e}), "
            f"{self.mask_mismatches} K'u mask mismatches, {self.rows} histories in {self.cases} batches "
            f"(worst: {self.worst_case})"
        )


def parity_cases(
    num_items: int,
    profile_vocab_sizes: Sequence[int],
    max_history_length: int,
    real_histories: Sequence[Sequence[int]] = (),
    seed: int = 0,
    rows_per_length: int = 3,
) -> Iterator[ParityCase]:
    """Batches covering every length 1..max, unpadded (L = n) and padded (mixed lengths, L = max).

    `real_histories` are item-index sequences from the data (oldest first); each is cut to several lengths
    ending at its most recent item, exactly as serving would see it. Random histories cover the rest.
    """
    rng = np.random.default_rng(seed)

    def profiles(batch: int) -> np.ndarray:
        columns = [rng.integers(0, size, batch) for size in profile_vocab_sizes]
        return np.stack(columns, axis=1).astype(np.int64) if columns else np.zeros((batch, 0), np.int64)

    def random_history(n: int) -> list[int]:
        return rng.integers(1, num_items + 1, n).tolist()

    real = [list(h) for h in real_histories if len(h) > 0]
    lengths = range(1, max_history_length + 1)
    for n in lengths:
        rows = [random_history(n) for _ in range(rows_per_length)]
        long_enough = [h for h in real if len(h) >= n]
        if long_enough:  # a different few users per length; each cut to its n most recent items
            start = (n * rows_per_length) % len(long_enough)
            rows += [h[-n:] for h in (long_enough[start:] + long_enough[:start])[:rows_per_length]]
        history, mask = pack_histories(rows)
        yield ParityCase(f"length {n}, no padding", history, mask, profiles(len(rows)))
    # One batch holding every length, padded to max: each row must not depend on the padding after it.
    mixed = [random_history(n) for n in lengths]
    history, mask = pack_histories(mixed, max_history_length)
    yield ParityCase("lengths 1..max, padded to max", history, mask, profiles(len(mixed)))
    if real:
        chosen = [real[i] for i in rng.choice(len(real), size=min(len(real), 64), replace=False)]
        cut = [h[-int(rng.integers(1, max_history_length + 1)):] for h in chosen]
        history, mask = pack_histories(cut, max_history_length)
        yield ParityCase(f"{len(cut)} real histories, padded to max", history, mask, profiles(len(cut)))
        history, mask = pack_histories(cut)
        yield ParityCase(f"{len(cut)} real histories, padded to longest", history, mask, profiles(len(cut)))
    # Unknown profile values (index 0), short histories padded far, and an empty history (what the runtime
    # sends for a user none of whose items the artifact knows).
    short = [random_history(1), random_history(min(2, max_history_length)), []]
    history, mask = pack_histories(short, max_history_length)
    yield ParityCase("short and empty histories padded to max, unknown profile", history, mask,
                     np.zeros((len(short), len(profile_vocab_sizes)), np.int64))


def check_parity(
    mind: nn.Module, session: ort.InferenceSession, cases: Sequence[ParityCase] | Iterator[ParityCase],
    tolerance: float = DEFAULT_TOLERANCE,
) -> ParityReport:
    """Compare onnxruntime with the PyTorch model's own `interests` (which embeds items on the fly, so the
    frozen item table is checked too). Vectors (and a mixture's interest biases) must agree within
    `tolerance`, K'u masks exactly."""
    with_bias = BIAS_OUTPUT in {output.name for output in session.get_outputs()}
    worst, worst_case, mismatches, n_cases, n_rows = 0.0, "", 0, 0, 0
    mind.eval()
    with torch.no_grad():
        for case in cases:
            expected = mind.interests(
                torch.from_numpy(case.history), torch.from_numpy(case.history_mask),
                torch.from_numpy(case.profile)
            )
            got = session.run(
                list(OUTPUT_NAMES) + ([BIAS_OUTPUT] if with_bias else []),
                {"history": case.history, "history_mask": case.history_mask, "profile": case.profile},
            )
            vectors, valid = got[0], got[1]
            expected_vectors = expected.interest_vectors.numpy()
            expected_valid = expected.valid_interest_mask.numpy()
            if with_bias:  # compared as one array with the vectors: (B, K, d + 1)
                bias = mind.merge_bias(expected, torch.from_numpy(case.history_mask)).numpy()
                expected_vectors = np.concatenate([expected_vectors, bias[..., None]], axis=-1)
                vectors = np.concatenate([vectors, got[2][..., None]], axis=-1)
            if vectors.shape != expected_vectors.shape or valid.shape != expected_valid.shape:
                diff, mismatches = float("inf"), mismatches + max(valid.size, expected_valid.size)
            else:
                diff = float(np.max(np.abs(vectors - expected_vectors))) if vectors.size else 0.0
                diff = diff if np.isfinite(diff) else float("inf")  # NaN would otherwise compare as "small"
                mismatches += int(np.sum(valid != expected_valid))
            if diff > worst or not worst_case:
                worst, worst_case = diff, case.name
            n_cases += 1
            n_rows += case.history.shape[0]
    return ParityReport(tolerance, worst, mismatches, n_cases, n_rows, worst_case)


# --- checkpoint → artifact ------------------------------------------------------------------------------


@dataclasses.dataclass
class LoadedCheckpoint:
    """What export needs from `model.checkpoint.load_checkpoint`, normalised."""

    mind: nn.Module
    config: Mapping[str, Any]
    vocabularies: Mapping[str, Any]
    item_feature_matrix: Mapping[str, Any]
    model_version: str
    dataset: Mapping[str, Any]
    path: Path | None = None


def load_run(run_dir: str | Path) -> LoadedCheckpoint:
    """Load RUN_DIR/checkpoint.pt (or a checkpoint file) through model.checkpoint; ExportError if unusable."""
    from model.checkpoint import CheckpointError, checkpoint_path, load_checkpoint

    path = checkpoint_path(run_dir)
    if not path.is_file():
        raise ExportError(f"{path}: no checkpoint here; train one with mind-model train --out RUN_DIR")
    try:
        loaded = load_checkpoint(path)
    except CheckpointError as exc:
        raise ExportError(str(exc)) from None
    if loaded.model_kind != "mind":
        raise ExportError(f"{path}: model_kind {loaded.model_kind!r} cannot be exported; "
                          "only MIND checkpoints (model_kind 'mind') can")
    return LoadedCheckpoint(
        mind=loaded.model.eval(),
        config=dataclasses.asdict(loaded.config),
        vocabularies=loaded.vocabularies,
        item_feature_matrix=loaded.item_feature_matrix,
        model_version=loaded.model_version,
        dataset=dict(loaded.dataset),
        path=path,
    )


def real_histories_for(
    checkpoint: LoadedCheckpoint, dataset_cache: str | Path | None = None, data_dir: str | Path = "data"
) -> tuple[list[list[int]], str]:
    """User histories (item indices of this checkpoint, oldest first) for the parity check, and where they
    came from. Reads `dataset_cache` (a `mind-model data` .npz) or else the prepared cache of the dataset
    the checkpoint names, if present; never downloads. Items the checkpoint does not know are dropped."""
    from model.data import DataError, load_dataset

    path: Path | None = Path(dataset_cache) if dataset_cache else None
    if path is None:
        name = checkpoint.dataset.get("name")
        if not name:
            return [], "none (the checkpoint names no dataset; pass --dataset-cache)"
        try:
            from model.datasets import prepared_path

            path = prepared_path(str(name), Path(data_dir))
        except (ImportError, KeyError, ValueError):
            return [], f"none (no prepared cache for dataset {name!r})"
        if not path.is_file():
            return [], f"none ({path} not found; pass --dataset-cache)"
    try:
        data = load_dataset(path)
    except DataError as exc:
        raise ExportError(str(exc)) from None
    index_of = {as_raw_id(raw): i for i, raw in enumerate(checkpoint.vocabularies["item_ids"]) if i > 0}
    remap = np.array([index_of.get(as_raw_id(raw), 0) for raw in data.item_ids], dtype=np.int64)
    histories = []
    for sequence in data.sequences:
        mapped = remap[sequence]
        mapped = mapped[mapped > 0]
        if mapped.size:
            histories.append(mapped.tolist())
    return histories, f"{len(histories):,} user histories from {path}"


def build_vocab(vocabularies: Mapping[str, Any], item_feature_matrix: Mapping[str, Any]) -> Vocabularies:
    return Vocabularies(
        item_ids=[as_raw_id(v) for v in vocabularies["item_ids"]],
        profile={f: [as_raw_id(v) for v in values] for f, values in vocabularies.get("profile", {}).items()},
        item_features={n: [as_raw_id(v) for v in values]
                       for n, values in vocabularies.get("item_features", {}).items()},
        item_feature_matrix={n: [[int(x) for x in row] for row in np.asarray(m).tolist()]
                             for n, m in item_feature_matrix.items()},
        item_titles=([str(t) for t in vocabularies["item_titles"]]
                     if vocabularies.get("item_titles") else None),
    )


def export_artifact(
    checkpoint: LoadedCheckpoint,
    out_dir: str | Path,
    *,
    real_histories: Sequence[Sequence[int]] = (),
    tolerance: float = DEFAULT_TOLERANCE,
    with_coupling: bool = False,
    opset: int = 18,
) -> tuple[Manifest, ParityReport]:
    """Export the user tower, check parity, and only then write the artifact to `out_dir`."""
    mind, config = checkpoint.mind, checkpoint.config
    vocab = build_vocab(checkpoint.vocabularies, checkpoint.item_feature_matrix)
    num_items = len(vocab.item_ids) - 1
    max_len = int(config["max_history_length"])
    profile_fields = list(vocab.profile)
    tower = UserTowerForExport(mind, with_coupling=with_coupling).eval()
    item_vectors = tower.item_table.numpy().astype(np.float32, copy=True)  # (N + 1, d)
    if item_vectors.shape != (num_items + 1, int(config["embedding_dim"])):
        raise ExportError(
            f"all_item_embeddings() is {item_vectors.shape}, vocabularies and config say "
            f"({num_items + 1}, {config['embedding_dim']}); the checkpoint is inconsistent"
        )
    onnx_bytes = export_onnx_bytes(tower, max_len, len(profile_fields), opset=opset)
    session = ort.InferenceSession(onnx_bytes, sess_options=session_options(),
                                   providers=["CPUExecutionProvider"])
    cases = parity_cases(
        num_items, [len(vocab.profile[f]) for f in profile_fields], max_len, real_histories=real_histories
    )
    report = check_parity(mind, session, cases, tolerance)
    if not report.passed:
        raise ExportError(f"refusing to write {out_dir}: {report.summary()}")
    manifest = write_artifact(
        out_dir,
        onnx_bytes=onnx_bytes,
        item_vectors=item_vectors,
        vocab=vocab,
        manifest_fields={
            "model_version": checkpoint.model_version,
            "embedding_dim": int(config["embedding_dim"]),
            "num_interests": mind.num_interests,  # interest slots the tower outputs
            "routing_iterations": int(config["routing_iterations"]),
            "max_history_length": max_len,
            "num_items": num_items,
            "profile_fields": profile_fields,
            "onnx_outputs": tower.output_names(),
            "merge": tower.merge(),
            "opset": onnx_opset(onnx_bytes),
            "adaptive_interests": bool(config.get("adaptive_interests", True)),
            "item_features": list(vocab.item_features),
            "parity": report.to_dict(),
            "dataset": dict(checkpoint.dataset),  # JSON by construction: metrics.json holds the same record
            "source": {"checkpoint": str(checkpoint.path.resolve()) if checkpoint.path else None},
        },
    )
    return manifest, report


def verify_against_checkpoint(
    artifact_dir: str | Path, checkpoint: LoadedCheckpoint, real_histories: Sequence[Sequence[int]] = (),
    tolerance: float | None = None,
) -> ParityReport:
    """Re-run parity of an existing artifact's ONNX graph against the checkpoint it was exported from."""
    from export.runtime import UserTowerRuntime

    runtime = UserTowerRuntime.load(artifact_dir)
    manifest = runtime.manifest
    if manifest.model_version != checkpoint.model_version:
        raise ArtifactError(
            f"{Path(artifact_dir) / 'manifest.json'}: model version {manifest.model_version} ≠ checkpoint "
            f"{checkpoint.model_version}; verify against the run it was exported from"
        )
    if tolerance is None:
        tolerance = float(manifest.parity.get("tolerance", DEFAULT_TOLERANCE))
    table = UserTowerForExport(checkpoint.mind).item_table.numpy()
    table_diff = float(np.max(np.abs(table[1:] - runtime.item_vectors())))
    if table_diff > tolerance:
        raise ArtifactError(
            f"{Path(artifact_dir) / 'item_vectors.npy'}: differs from the checkpoint's item embeddings by "
            f"{table_diff:.2e}; re-export the artifact"
        )
    cases = parity_cases(
        manifest.num_items,
        [len(runtime.vocab.profile[f]) for f in manifest.profile_fields],
        manifest.max_history_length,
        real_histories=real_histories,
        seed=1,
    )
    return check_parity(checkpoint.mind, runtime.session, cases, tolerance)
