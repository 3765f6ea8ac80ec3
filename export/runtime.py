"""The serving side of an artifact: raw ids → indices → onnxruntime user tower → interest vectors.

Imports only numpy, onnxruntime, the standard library and `export.artifact` (itself numpy + stdlib), so a
serving worker never loads torch or `model/`.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import NamedTuple

import numpy as np
import onnxruntime as ort

from export.artifact import (
    BIAS_OUTPUT,
    INPUT_NAMES,
    ITEM_VECTORS_FILE,
    ONNX_FILE,
    OUTPUT_NAMES,
    VOCAB_FILE,
    ArtifactError,
    Manifest,
    Vocabularies,
    as_raw_id,
    parse_item_vectors,
    parse_vocab,
    read_manifest,
    read_verified_bytes,
)

# The worker spends most of its time waiting on Kafka and Milvus; one intra-op thread per session keeps
# the tower from fighting the event loop (and other workers) for cores. Raise it for large batches.
DEFAULT_INTRA_OP_THREADS = 1
THREADS_ENV = "MINDSTREAM_ORT_THREADS"

_EXPECTED_INPUT_TYPES = {"history": "tensor(int64)", "history_mask": "tensor(bool)",
                         "profile": "tensor(int64)"}
_EXPECTED_OUTPUT_TYPES = {"interest_vectors": "tensor(float)", "valid_interest_mask": "tensor(bool)",
                          BIAS_OUTPUT: "tensor(float)"}


class TowerOutput(NamedTuple):
    """interest_vectors float32 (B, K, d); valid_interest_mask bool (B, K) — True for the first K'_u slots;
    interest_bias float32 (B, K): each interest's logit in the 'mixture' merge (zeros under 'max')."""

    interest_vectors: np.ndarray
    valid_interest_mask: np.ndarray
    interest_bias: np.ndarray


def pack_histories(index_rows: Sequence[Sequence[int]],
                   length: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Item-index rows → left-aligned (B, L) int64 history and (B, L) bool mask, padding (0, False) after
    the items. L = `length`, or the longest row (at least 1)."""
    if length is None:
        length = max([len(row) for row in index_rows], default=0) or 1
    history = np.zeros((len(index_rows), length), dtype=np.int64)
    mask = np.zeros((len(index_rows), length), dtype=np.bool_)
    for row, indices in enumerate(index_rows):
        history[row, : len(indices)] = indices
        mask[row, : len(indices)] = True
    return history, mask


def session_options(intra_op_threads: int | None = None) -> ort.SessionOptions:
    """Options tuned for a mostly-I/O worker: few threads, no spinning, sequential, all graph
    optimisations."""
    if intra_op_threads is None:
        raw = os.environ.get(THREADS_ENV, str(DEFAULT_INTRA_OP_THREADS))
        if not raw.strip().isdigit():
            raise ValueError(f"{THREADS_ENV}={raw!r}: expected a positive integer number of threads")
        intra_op_threads = int(raw)
    if intra_op_threads < 1:
        raise ValueError(f"intra_op_threads must be ≥ 1, got {intra_op_threads}")
    options = ort.SessionOptions()
    options.intra_op_num_threads = intra_op_threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    # Spinning threads burn a core between calls that arrive milliseconds apart; the event loop needs it.
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.log_severity_level = 3
    return options


class UserTowerRuntime:
    """A loaded, validated artifact: vocabularies, item vectors and an onnxruntime session of the user tower.

    Build with `UserTowerRuntime.load(artifact_dir)`. Thread-safe for `infer` (onnxruntime sessions are).
    """

    def __init__(
        self,
        artifact_dir: Path,
        manifest: Manifest,
        vocab: Vocabularies,
        item_vectors: np.ndarray,
        session: ort.InferenceSession,
    ) -> None:
        self.artifact_dir = artifact_dir
        self.manifest = manifest
        self.vocab = vocab
        self._item_vectors = item_vectors
        self._session = session
        # Index 0 is padding: "<pad>" must not be a servable raw id, so it is left out of the lookup.
        self._item_index = {raw: index for index, raw in enumerate(vocab.item_ids) if index > 0}
        self._profile_index = [
            {raw: index for index, raw in enumerate(vocab.profile[field]) if index > 0}
            for field in manifest.profile_fields
        ]
        with_bias = BIAS_OUTPUT in manifest.onnx_outputs
        self._output_names = list(OUTPUT_NAMES) + ([BIAS_OUTPUT] if with_bias else [])
        self._max_len = manifest.max_history_length
        self._num_profile_fields = len(manifest.profile_fields)

    @classmethod
    def load(
        cls,
        artifact_dir: str | Path,
        intra_op_threads: int | None = None,
        expected_model_version: str | None = None,
    ) -> UserTowerRuntime:
        """Validate manifest, hashes, shapes and the ONNX signature; raise ArtifactError (one line) if any
        fails."""
        artifact_dir = Path(artifact_dir)
        manifest = read_manifest(artifact_dir, expected_model_version)
        # Each file is read once; the hash is checked on the same bytes that are then parsed.
        onnx_bytes = read_verified_bytes(artifact_dir, manifest, ONNX_FILE)
        item_vectors = parse_item_vectors(
            read_verified_bytes(artifact_dir, manifest, ITEM_VECTORS_FILE), manifest,
            str(artifact_dir / ITEM_VECTORS_FILE)
        )
        vocab = parse_vocab(read_verified_bytes(artifact_dir, manifest, VOCAB_FILE), manifest,
                            str(artifact_dir / VOCAB_FILE))
        onnx_path = artifact_dir / ONNX_FILE
        try:
            session = ort.InferenceSession(
                onnx_bytes, sess_options=session_options(intra_op_threads), providers=["CPUExecutionProvider"]
            )
        except Exception as exc:  # onnxruntime raises its own exception types for a bad graph
            first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise ArtifactError(f"{onnx_path}: onnxruntime cannot load it "
                                f"({first_line}); re-export the artifact") from None
        _check_signature(session, manifest, onnx_path)
        return cls(artifact_dir, manifest, vocab, item_vectors, session)

    @property
    def session(self) -> ort.InferenceSession:
        """The onnxruntime session (for tools such as parity checks and benchmarks)."""
        return self._session

    # --- raw values → indices -------------------------------------------------------------------------

    def encode_histories(self, histories: Sequence[Sequence[object]]) -> tuple[np.ndarray, np.ndarray]:
        """Raw item ids (oldest first) → (history int64 (B, L), history_mask bool (B, L)).

        Unknown ids are dropped; the most recent max_history_length known items are kept; items sit at the
        left and padding (index 0, mask False) at the right; L = longest kept history in the batch (≥ 1).
        """
        item_index = self._item_index
        kept_rows = []
        for history in histories:
            indices = [
                index
                for index in (item_index.get(raw if type(raw) is str else as_raw_id(raw)) for raw in history)
                if index is not None
            ]
            kept_rows.append(indices[-self._max_len:])
        return pack_histories(kept_rows)

    def encode_profiles(self, profiles: Sequence[Mapping[str, object] | None]) -> np.ndarray:
        """Profile dicts (field → raw value) → int64 (B, P) in manifest.profile_fields order.

        A missing profile, field, None value or unknown value maps to index 0.
        """
        encoded = np.zeros((len(profiles), self._num_profile_fields), dtype=np.int64)
        for row, profile in enumerate(profiles):
            if not profile:
                continue
            for column, (field,
                         lookup) in enumerate(zip(self.manifest.profile_fields, self._profile_index,
                                                  strict=True)):
                value = profile.get(field)
                if value is not None:
                    encoded[row, column] = lookup.get(value if type(value) is str else as_raw_id(value), 0)
        return encoded

    def known_item_count(self, history: Sequence[object]) -> int:
        """How many of these raw ids the artifact knows (before truncation to max_history_length)."""
        return sum(1 for raw in history if (raw if type(raw) is str else as_raw_id(raw)) in self._item_index)

    # --- inference -----------------------------------------------------------------------------------

    def infer(self, history: np.ndarray, history_mask: np.ndarray, profile: np.ndarray) -> TowerOutput:
        """(B, L) int64, (B, L) bool, (B, P) int64 → TowerOutput; one onnxruntime call for the whole batch.

        Arrays already of the right dtype are passed through without copying.
        """
        batch = history.shape[0]
        if (history.ndim != 2 or history_mask.shape != history.shape
                or profile.shape != (batch, self._num_profile_fields)):
            raise ValueError(
                "infer: expected history (B, L), history_mask (B, L), profile (B, "
                f"{self._num_profile_fields}); got "
                f"{history.shape}, {history_mask.shape}, {profile.shape}"
            )
        if history.shape[1] > self._max_len:
            raise ValueError(f"infer: history length {history.shape[1]} > max_history_length {self._max_len}")
        if batch == 0:
            k, d = self.manifest.num_interests, self.manifest.embedding_dim
            return TowerOutput(np.zeros((0, k, d), np.float32), np.zeros((0, k), np.bool_),
                               np.zeros((0, k), np.float32))
        outputs = self._session.run(
            self._output_names,
            {
                "history": history if history.dtype == np.int64 else history.astype(np.int64),
                "history_mask": (history_mask if history_mask.dtype == np.bool_
                                 else history_mask.astype(np.bool_)),
                "profile": profile if profile.dtype == np.int64 else profile.astype(np.int64),
            },
        )
        bias = outputs[2] if len(outputs) > 2 else np.zeros(outputs[1].shape, np.float32)
        return TowerOutput(outputs[0], outputs[1], bias)

    def infer_raw(
        self,
        histories: Sequence[Sequence[object]],
        profiles: Sequence[Mapping[str, object] | None] | None = None,
        batch_size: int = 512,
    ) -> TowerOutput:
        """Encode raw histories/profiles and infer in chunks of `batch_size` rows (bounds peak memory)."""
        if profiles is None:
            profiles = [None] * len(histories)
        if len(profiles) != len(histories):
            raise ValueError(f"infer_raw: {len(histories)} histories but {len(profiles)} profiles")
        parts = []
        for start in range(0, len(histories), batch_size):
            history, mask = self.encode_histories(histories[start : start + batch_size])
            parts.append(self.infer(history, mask,
                                    self.encode_profiles(profiles[start : start + batch_size])))
        if len(parts) == 1:
            return parts[0]
        if not parts:
            return self.infer(*self.encode_histories([]), self.encode_profiles([]))
        return TowerOutput(*(np.concatenate(column) for column in zip(*parts, strict=True)))

    # --- the item side, for the items collection -----------------------------------------------------

    def item_ids(self) -> list[str]:
        """Raw item ids in index order 1..num_items (padding left out)."""
        return self.vocab.item_ids[1:]

    def item_vectors(self) -> np.ndarray:
        """float32 (num_items, d): row j is the pooled embedding of item index j + 1 (padding left out)."""
        return self._item_vectors[1:]

    def item_side_features(self) -> dict[str, list[list[str]]]:
        """name → per item (index order 1..num_items) the list of raw side-feature values (e.g. genres)."""
        features = {}
        for name, matrix in self.vocab.item_feature_matrix.items():
            values = self.vocab.item_features[name]
            features[name] = [[values[v] for v in row if v] for row in matrix[1:]]
        return features

    def item_titles(self) -> list[str] | None:
        """What people call each item (index order 1..num_items), or None when the artifact has no titles."""
        return None if self.vocab.item_titles is None else self.vocab.item_titles[1:]


def _check_signature(session: ort.InferenceSession, manifest: Manifest, onnx_path: Path) -> None:
    inputs = {i.name: i for i in session.get_inputs()}
    outputs = {o.name: o for o in session.get_outputs()}
    for name in INPUT_NAMES:
        if name not in inputs or inputs[name].type != _EXPECTED_INPUT_TYPES[name]:
            got = inputs[name].type if name in inputs else "absent"
            raise ArtifactError(
                f"{onnx_path}: input {name} is {got}, expected "
                f"{_EXPECTED_INPUT_TYPES[name]}; re-export the artifact"
            )
    for name in list(OUTPUT_NAMES) + [name for name in manifest.onnx_outputs if name == BIAS_OUTPUT]:
        if name not in outputs or outputs[name].type != _EXPECTED_OUTPUT_TYPES[name]:
            got = outputs[name].type if name in outputs else "absent"
            raise ArtifactError(
                f"{onnx_path}: output {name} is {got}, expected "
                f"{_EXPECTED_OUTPUT_TYPES[name]}; re-export the artifact"
            )
    # Static trailing dims (K, d) must agree with the manifest; dynamic ones are symbolic strings.
    shape = outputs["interest_vectors"].shape
    expected = [manifest.num_interests, manifest.embedding_dim]
    static = [dim if isinstance(dim, int) else None for dim in shape[1:]]
    for got, want in zip(static, expected, strict=False):
        if got is not None and got != want:
            raise ArtifactError(
                f"{onnx_path}: interest_vectors has shape {shape}, manifest says (B, "
                f"{expected[0]}, {expected[1]}); "
                f"re-export the artifact"
            )
