"""The serving artifact: manifest, file layout, reading, writing and validation.

This module is the contract between `export/` (which writes an artifact) and `streams/` (which serves it),
so it imports only numpy and the standard library — serving must never pull in torch.

Layout of ``ARTIFACT_DIR/`` (see docs/ARCHITECTURE.md):

```
manifest.json      Manifest below, with the sha256 of every other file
user_tower.onnx    history int64 (B, L), history_mask bool (B, L), profile int64 (B, P)
                   -> interest_vectors float32 (B, K, d), valid_interest_mask bool (B, K)
item_vectors.npy   float32 (num_items + 1, d); row i = pooled embedding of item index i (row 0 = padding)
vocab.json         item_ids, profile vocabularies, item side-feature vocabularies and matrices
```
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import math
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

FORMAT_VERSION = 1
SUPPORTED_FORMAT_VERSIONS = frozenset({1})

MANIFEST_FILE = "manifest.json"
ONNX_FILE = "user_tower.onnx"
ITEM_VECTORS_FILE = "item_vectors.npy"
VOCAB_FILE = "vocab.json"
HASHED_FILES = (ONNX_FILE, ITEM_VECTORS_FILE, VOCAB_FILE)

PAD_TOKEN = "<pad>"

INPUT_NAMES = ("history", "history_mask", "profile")
OUTPUT_NAMES = ("interest_vectors", "valid_interest_mask")
BIAS_OUTPUT = "interest_bias"  # (B, K) float: each interest's logit in the 'mixture' merge (export.merge)
MERGE_RULES = ("max", "mixture")

# Written into every manifest so a reader of the artifact alone knows how raw values become indices.
UNKNOWN_VALUE_RULES = {
    "item": "raw item ids not in vocab.json item_ids are dropped from the history before the tower runs; "
    "the most recent max_history_length known items are kept; a history with no known item yields "
    "one interest computed from an empty (all-masked) history",
    "profile": "a missing field, a None value or a value not in the field's vocabulary maps to index 0 "
    "(padding/unknown, zero embedding)",
    "raw_id_type": "raw ids and profile values are compared as strings (ints as their decimal string)",
}


class ArtifactError(Exception):
    """An artifact that cannot be served; the message is one line naming the file and what to do."""


@dataclasses.dataclass(frozen=True)
class Manifest:
    """Everything a server needs to know about an artifact without loading torch.

    `files` maps each file name in `HASHED_FILES` to its sha256 hex digest. `adaptive_interests`: the
    valid-interest mask follows K'u = max(1, min(K, floor(log2 n))) (else all K are valid). `parity` records
    the onnxruntime-vs-PyTorch check done at export time (tolerance, max abs difference, cases checked).
    `source` records where the artifact came from (checkpoint path), for `mind-export verify`. `merge` is
    how recall merges a user's interests (`export.merge`): {"rule": "max"} (the paper), or {"rule":
    "mixture", "temperature": T}, whose tower also outputs `interest_bias`.
    """

    model_version: str
    embedding_dim: int
    num_interests: int
    routing_iterations: int
    max_history_length: int
    num_items: int
    profile_fields: list[str]
    files: dict[str, str]
    adaptive_interests: bool = True
    onnx_inputs: list[str] = dataclasses.field(default_factory=lambda: list(INPUT_NAMES))
    onnx_outputs: list[str] = dataclasses.field(default_factory=lambda: list(OUTPUT_NAMES))
    opset: int = 17
    unknown_value_rules: dict[str, str] = dataclasses.field(default_factory=lambda: dict(UNKNOWN_VALUE_RULES))
    item_features: list[str] = dataclasses.field(default_factory=list)
    parity: dict[str, Any] = dataclasses.field(default_factory=dict)
    dataset: dict[str, Any] = dataclasses.field(default_factory=dict)
    source: dict[str, Any] = dataclasses.field(default_factory=dict)
    merge: dict[str, Any] = dataclasses.field(default_factory=lambda: {"rule": "max"})
    created_at: str = dataclasses.field(
        default_factory=lambda: datetime.now(UTC).isoformat(timespec="seconds"))
    format_version: int = FORMAT_VERSION

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], source: str = MANIFEST_FILE) -> Manifest:
        """Parse a manifest dict; raises ArtifactError naming `source` on a wrong or missing field."""
        if not isinstance(data, Mapping):
            raise ArtifactError(f"{source}: expected a JSON object; re-export the artifact with mind-export")
        version = data.get("format_version")
        if version not in SUPPORTED_FORMAT_VERSIONS:
            raise ArtifactError(
                f"{source}: format_version {version!r} is not supported by this runtime "
                f"(supports {sorted(SUPPORTED_FORMAT_VERSIONS)}); re-export with this version of mind-export"
            )
        names = {f.name for f in dataclasses.fields(cls)}
        required = {f.name for f in dataclasses.fields(cls)
                    if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING}
        missing = sorted(required - set(data))
        if missing:
            raise ArtifactError(f"{source}: missing field(s) {', '.join(missing)}; re-export the "
                                "artifact with mind-export")
        manifest = cls(**{k: v for k, v in data.items() if k in names})
        manifest._check_types(source)
        return manifest

    def _check_types(self, source: str) -> None:
        for name in ("embedding_dim", "num_interests", "routing_iterations", "max_history_length",
                     "num_items", "opset"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ArtifactError(f"{source}: {name} must be a positive integer, got "
                                    f"{value!r}; re-export the artifact")
        if not isinstance(self.model_version, str) or not self.model_version:
            raise ArtifactError(f"{source}: model_version must be a non-empty string; re-export the artifact")
        if not isinstance(self.profile_fields,
                          list) or not all(isinstance(f, str) for f in self.profile_fields):
            raise ArtifactError(f"{source}: profile_fields must be a list of names; re-export the artifact")
        if list(self.onnx_inputs) != list(INPUT_NAMES) or list(self.onnx_outputs)[:2] != list(OUTPUT_NAMES):
            raise ArtifactError(
                f"{source}: onnx inputs {self.onnx_inputs} / outputs {self.onnx_outputs} do not match the "
                f"contract {list(INPUT_NAMES)} -> {list(OUTPUT_NAMES)}; re-export the artifact"
            )
        rule = self.merge.get("rule") if isinstance(self.merge, Mapping) else None
        temperature = self.merge.get("temperature") if rule == "mixture" else 1.0
        if (rule not in MERGE_RULES or isinstance(temperature, bool)
                or not isinstance(temperature, int | float) or not (0 < temperature < math.inf)
                or (rule == "mixture") != (BIAS_OUTPUT in self.onnx_outputs)):
            raise ArtifactError(f"{source}: merge {self.merge!r} is not {{'rule': 'max'}} or {{'rule': "
                                f"'mixture', 'temperature': T > 0}} with a {BIAS_OUTPUT} output; re-export "
                                "the artifact")
        missing_hashes = [f for f in HASHED_FILES if f not in self.files]
        if missing_hashes:
            raise ArtifactError(f"{source}: no sha256 for {', '.join(missing_hashes)}; "
                                "re-export the artifact")


@dataclasses.dataclass(frozen=True)
class Vocabularies:
    """Raw value ↔ index tables. Index 0 is padding/unknown in every table.

    item_ids: raw id per item index (length num_items + 1, entry 0 = "<pad>").
    profile: field -> raw value per index. item_features: name -> raw value per index.
    item_feature_matrix: name -> (num_items + 1, max_values) indices into item_features[name], 0-padded.
    item_titles: what people call each item (a title or name) per item index, entry 0 = ""; None when the
    training data had no title column. For display only: no model input.
    """

    item_ids: list[str]
    profile: dict[str, list[str]]
    item_features: dict[str, list[str]] = dataclasses.field(default_factory=dict)
    item_feature_matrix: dict[str, list[list[int]]] = dataclasses.field(default_factory=dict)
    item_titles: list[str] | None = None

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], source: str = VOCAB_FILE) -> Vocabularies:
        if not isinstance(data, Mapping) or "item_ids" not in data or "profile" not in data:
            raise ArtifactError(f"{source}: expected an object with item_ids and "
                                "profile; re-export the artifact")
        return cls(
            item_ids=[as_raw_id(v) for v in data["item_ids"]],
            profile={f: [as_raw_id(v) for v in values] for f, values in data["profile"].items()},
            item_features={n: [as_raw_id(v) for v in values]
                           for n, values in data.get("item_features", {}).items()},
            item_feature_matrix={n: m for n, m in data.get("item_feature_matrix", {}).items()},
            item_titles=_titles(data.get("item_titles"), len(data["item_ids"]), source),
        )


def _titles(titles: object, num_ids: int, source: str) -> list[str] | None:
    if titles is None:
        return None
    if not isinstance(titles, list) or len(titles) != num_ids:
        raise ArtifactError(f"{source}: item_titles must be a list with one entry per item_ids entry; "
                            "re-export the artifact")
    return [str(t) for t in titles]


def as_raw_id(value: object) -> str:
    """The canonical string form of a raw id or profile value: ints as decimal strings, floats that are
    whole numbers likewise (so a JSON 3.0 matches a vocabulary "3"), strings unchanged."""
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, int | np.integer):
        return str(int(value))
    if isinstance(value, float | np.floating) and math.isfinite(value) and float(value).is_integer():
        return str(int(value))
    return str(value)


def sha256_file(path: Path, chunk_size: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(chunk_size):
            digest.update(chunk)
    return digest.hexdigest()


def write_vocab(path: Path, vocab: Vocabularies) -> None:
    path.write_text(json.dumps(vocab.to_dict(), ensure_ascii=False, separators=(",", ":")))


def write_item_vectors(path: Path, item_vectors: np.ndarray) -> None:
    np.save(path, np.ascontiguousarray(item_vectors, dtype=np.float32), allow_pickle=False)


def write_manifest(artifact_dir: Path, manifest: Manifest) -> None:
    """Write manifest.json last, so a directory with a manifest is a complete artifact."""
    tmp = artifact_dir / (MANIFEST_FILE + ".tmp")
    tmp.write_text(json.dumps(manifest.to_dict(), indent=2, ensure_ascii=False) + "\n")
    tmp.replace(artifact_dir / MANIFEST_FILE)


def file_hashes(artifact_dir: Path) -> dict[str, str]:
    return {name: sha256_file(artifact_dir / name) for name in HASHED_FILES}


def read_manifest(artifact_dir: str | Path, expected_model_version: str | None = None) -> Manifest:
    """Read and type-check manifest.json; optionally insist on one model version."""
    artifact_dir = Path(artifact_dir)
    path = artifact_dir / MANIFEST_FILE
    if not artifact_dir.is_dir():
        raise ArtifactError(f"{artifact_dir}: not a directory; point at an artifact written by mind-export")
    if not path.is_file():
        raise ArtifactError(f"{path}: missing; this is not a complete artifact, re-run mind-export "
                            f"RUN_DIR --out {artifact_dir}")
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ArtifactError(f"{path}: not valid JSON ({exc}); the file is corrupted, "
                            "re-export the artifact") from None
    try:
        manifest = Manifest.from_dict(data, source=str(path))
    except TypeError as exc:
        raise ArtifactError(f"{path}: unexpected manifest layout ({exc}); re-export the artifact") from None
    if expected_model_version is not None and manifest.model_version != expected_model_version:
        raise ArtifactError(
            f"{path}: model version {manifest.model_version} ≠ expected {expected_model_version}; "
            f"point at the artifact of {expected_model_version} or rebuild the store for "
            f"{manifest.model_version}"
        )
    return manifest


def read_verified_bytes(artifact_dir: str | Path, manifest: Manifest, name: str) -> bytes:
    """The bytes of one artifact file, after checking it exists and matches the manifest's sha256."""
    path = Path(artifact_dir) / name
    if not path.is_file():
        raise ArtifactError(f"{path}: missing; re-export the artifact with mind-export (or restore the file)")
    data = path.read_bytes()
    actual = hashlib.sha256(data).hexdigest()
    if actual != manifest.files[name]:
        raise ArtifactError(
            f"{path}: sha256 {actual[:12]}… ≠ manifest {manifest.files[name][:12]}…; the file is corrupted "
            f"or from another export, re-export the artifact"
        )
    return data


def verify_file_hashes(artifact_dir: str | Path, manifest: Manifest) -> None:
    """Raise ArtifactError for the first file that is missing or whose sha256 differs from the manifest."""
    for name in HASHED_FILES:
        read_verified_bytes(artifact_dir, manifest, name)


def parse_item_vectors(data: bytes, manifest: Manifest, source: str = ITEM_VECTORS_FILE) -> np.ndarray:
    """float32 (num_items + 1, d) from .npy bytes, checked against the manifest."""
    try:
        vectors = np.load(io.BytesIO(data), allow_pickle=False)
    except (ValueError, OSError, EOFError) as exc:
        raise ArtifactError(f"{source}: cannot be read as .npy ({exc}); the file is "
                            "corrupted, re-export the artifact") from None
    expected = (manifest.num_items + 1, manifest.embedding_dim)
    if vectors.dtype != np.float32 or vectors.shape != expected:
        raise ArtifactError(
            f"{source}: {vectors.dtype} {vectors.shape}, manifest expects float32 "
            f"{expected}; re-export the artifact"
        )
    return vectors


def parse_vocab(data: bytes, manifest: Manifest, source: str = VOCAB_FILE) -> Vocabularies:
    """The vocabularies from vocab.json bytes, checked against the manifest (item count, profile fields)."""
    try:
        vocab = Vocabularies.from_dict(json.loads(data), source=source)
    except (json.JSONDecodeError, UnicodeDecodeError, AttributeError, TypeError) as exc:
        raise ArtifactError(f"{source}: cannot be parsed ({exc}); the file is "
                            "corrupted, re-export the artifact") from None
    if len(vocab.item_ids) != manifest.num_items + 1:
        raise ArtifactError(
            f"{source}: {len(vocab.item_ids)} item ids, manifest expects num_items + 1 = "
            f"{manifest.num_items + 1}; "
            f"re-export the artifact"
        )
    if list(vocab.profile) != list(manifest.profile_fields):
        raise ArtifactError(
            f"{source}: profile fields {list(vocab.profile)} ≠ manifest "
            f"{manifest.profile_fields}; re-export the artifact"
        )
    return vocab


def read_item_vectors(artifact_dir: str | Path, manifest: Manifest) -> np.ndarray:
    source = str(Path(artifact_dir) / ITEM_VECTORS_FILE)
    return parse_item_vectors(read_verified_bytes(artifact_dir, manifest, ITEM_VECTORS_FILE), manifest,
                              source)


def read_vocab(artifact_dir: str | Path, manifest: Manifest) -> Vocabularies:
    source = str(Path(artifact_dir) / VOCAB_FILE)
    return parse_vocab(read_verified_bytes(artifact_dir, manifest, VOCAB_FILE), manifest, source)


def write_artifact(
    artifact_dir: str | Path,
    *,
    onnx_bytes: bytes,
    item_vectors: np.ndarray,
    vocab: Vocabularies,
    manifest_fields: Mapping[str, Any],
) -> Manifest:
    """Write every file, hash it, and write manifest.json last. `manifest_fields` = Manifest fields except
    `files` (filled in here). Returns the manifest written."""
    artifact_dir = Path(artifact_dir)
    artifact_dir.mkdir(parents=True, exist_ok=True)
    # A stale manifest must not vouch for half-written new files.
    (artifact_dir / MANIFEST_FILE).unlink(missing_ok=True)
    (artifact_dir / ONNX_FILE).write_bytes(onnx_bytes)
    write_item_vectors(artifact_dir / ITEM_VECTORS_FILE, item_vectors)
    write_vocab(artifact_dir / VOCAB_FILE, vocab)
    manifest = Manifest(**dict(manifest_fields), files=file_hashes(artifact_dir))
    write_manifest(artifact_dir, manifest)
    return manifest

