"""Interaction logs → per-user, time-ordered item sequences with item side features and user profiles.

The one in-memory form every other `model/` module reads is `InteractionData` (index conventions in
docs/ARCHITECTURE.md: item index 0 is padding, every vocabulary's index 0 is "<unk>" / none). Files become
one through `model.logfiles.load_interactions`; a raw log and side tables through `build_interaction_data`:

- Items and users are those that occur in the log: item-file rows that nobody interacted with are dropped,
  and so are users without interactions. Vocabulary order: item and user files' row order (log order of
  first appearance when there is no such file); feature values sorted (or in the side table's given order).
- Rows of one user are ordered by time; ties keep log order (a stable sort), so the "next item" is
  deterministic.
- An item (user) in the log that is missing from a given item (user) table is an error by default
  (usually a join-key mismatch); `on_missing="unknown"` keeps it with all features unknown (index 0).
- Bad input raises `DataError("path:line:column: what is wrong")`.

Also here: the user split and the fast `.npz` cache (`save_dataset` / `load_dataset`).
"""

from __future__ import annotations

import io
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd

from model.files import atomic_writer

PAD = "<pad>"
UNKNOWN = "<unk>"
MULTI_VALUE_SEPARATOR = "|"

OnMissing = Literal["error", "unknown"]


class DataError(ValueError):
    """Bad input data: the message names the file, line and column and what to do."""


@dataclass
class InteractionData:
    """Everything the model needs from an interaction log, in index space.

    Shapes: `item_features[name]` is (num_items + 1, max_values) int64 padded with 0 (row 0 = padding item);
    `user_profile` is (num_users, P) int64 with columns in `profile_vocabs` order; `sequences[u]`,
    `timestamps[u]` (and `behaviors[u]`) are (len_u,) int64, oldest first.
    """

    name: str
    item_ids: list[str]
    item_features: dict[str, np.ndarray]
    item_feature_vocabs: dict[str, list[str]]
    user_ids: list[str]
    user_profile: np.ndarray
    profile_vocabs: dict[str, list[str]]
    sequences: list[np.ndarray]
    timestamps: list[np.ndarray]
    behaviors: list[np.ndarray] | None = None
    # Behaviour type per index (index 0 = "<unk>"); set exactly when `behaviors` is.
    behavior_vocab: list[str] | None = None
    # What people call each item (a title or name), per item index (entry 0 = ""); not a model feature.
    item_titles: list[str] | None = None

    @property
    def num_items(self) -> int:
        return len(self.item_ids) - 1

    @property
    def num_users(self) -> int:
        return len(self.user_ids)

    @property
    def num_interactions(self) -> int:
        return int(sum(len(s) for s in self.sequences))

    @property
    def profile_fields(self) -> list[str]:
        return list(self.profile_vocabs)

    def item_side_text(self, item_index: int) -> str:
        """Human-readable side features of one item, e.g. "Comedy|Drama 1990s" (for plots and demos)."""
        if not 0 < item_index <= self.num_items:
            return PAD if item_index == 0 else f"<item {item_index} out of range>"
        parts = []
        for name, matrix in self.item_features.items():
            vocab = self.item_feature_vocabs[name]
            values = [vocab[v] for v in matrix[item_index] if v != 0]
            if values:
                parts.append(MULTI_VALUE_SEPARATOR.join(values))
        return " ".join(parts)

    def validate(self) -> None:
        """Check the invariants every consumer relies on; raise DataError naming the broken one."""
        n_items, n_users = self.num_items, self.num_users
        if not self.item_ids or self.item_ids[0] != PAD:
            raise DataError(f"{self.name}: item_ids[0] must be {PAD!r}")
        for name, matrix in self.item_features.items():
            vocab = self.item_feature_vocabs.get(name)
            if vocab is None or vocab[:1] != [UNKNOWN]:
                raise DataError(f"{self.name}: feature {name!r} needs a vocabulary starting with {UNKNOWN!r}")
            if matrix.ndim != 2 or matrix.shape[0] != n_items + 1 or matrix.dtype != np.int64:
                raise DataError(f"{self.name}: feature {name!r} must be int64 (num_items + 1, max_values)")
            if matrix.size and (matrix.min() < 0 or matrix.max() >= len(vocab) or matrix[0].any()):
                raise DataError(f"{self.name}: feature {name!r} has indices outside its vocabulary")
        if (self.user_profile.shape != (n_users, len(self.profile_vocabs))
                or self.user_profile.dtype != np.int64):
            raise DataError(f"{self.name}: user_profile must be int64 "
                            f"(num_users, {len(self.profile_vocabs)})")
        for col, (field_name, vocab) in enumerate(self.profile_vocabs.items()):
            column = self.user_profile[:, col]
            if vocab[:1] != [UNKNOWN] or (column.size and (column.min() < 0 or column.max() >= len(vocab))):
                raise DataError(f"{self.name}: profile field {field_name!r} has indices outside its "
                                "vocabulary")
        if len(self.sequences) != n_users or len(self.timestamps) != n_users:
            raise DataError(f"{self.name}: need one sequence and one timestamp array per user")
        if (self.behaviors is None) != (self.behavior_vocab is None):
            raise DataError(f"{self.name}: behaviors and behavior_vocab must be given together")
        for u, (seq, ts) in enumerate(zip(self.sequences, self.timestamps, strict=True)):
            if len(seq) == 0 or seq.shape != ts.shape or seq.dtype != np.int64 or ts.dtype != np.int64:
                raise DataError(f"{self.name}: user {self.user_ids[u]!r} has an empty or malformed sequence")
            if seq.min() < 1 or seq.max() > n_items:
                raise DataError(f"{self.name}: user {self.user_ids[u]!r} has item indices outside "
                                f"1..{n_items}")
            if np.any(np.diff(ts) < 0):
                raise DataError(f"{self.name}: user {self.user_ids[u]!r} has timestamps out of order")
            if self.behaviors is not None and self.behaviors[u].shape != seq.shape:
                raise DataError(f"{self.name}: user {self.user_ids[u]!r} has a malformed behaviour array")
        if self.item_titles is not None and len(self.item_titles) != n_items + 1:
            raise DataError(f"{self.name}: item_titles must have one entry per item index (num_items + 1)")


# ----------------------------------------------------------------------------------------------------------
# Building InteractionData


@dataclass
class SideTable:
    """One row per entity (item or user): raw id + categorical values per feature column.

    `values[column][row]` is the list of values of that row (empty = unknown). `vocab_order[column]`, when
    given, fixes that feature's vocabulary (after "<unk>") instead of the sorted observed values.
    `where(row, column)` names the source position for error messages.
    """

    ids: list[str]
    values: dict[str, list[list[str]]]
    source: str = "<memory>"
    lines: Sequence[int] | None = None
    vocab_order: dict[str, list[str]] = field(default_factory=dict)
    titles: list[str] | None = None
    id_column: str | None = None

    def where(self, row: int, column: str) -> str:
        line = self.lines[row] if self.lines is not None else row + 1
        return f"{self.source}:{line}:{column}"


@dataclass
class InteractionLog:
    """Raw interactions in file order: parallel arrays of raw user id, raw item id, seconds, behaviour."""

    user_ids: np.ndarray  # (n,) object str
    item_ids: np.ndarray  # (n,) object str
    timestamps: np.ndarray  # (n,) int64
    behaviors: np.ndarray | None = None  # (n,) object str
    source: str = "<memory>"
    lines: np.ndarray | None = None
    columns: tuple[str, str] = ("user_id", "item_id")  # names of the user and item columns in `source`

    def where(self, row: int, column: str) -> str:
        line = self.lines[row] if self.lines is not None else row + 1
        return f"{self.source}:{line}:{column}"


def _entity_order(
    log_ids: np.ndarray, table: SideTable | None, column: str, log: InteractionLog, on_missing: OnMissing,
    what: str,
) -> tuple[list[str], np.ndarray | None]:
    """Index order of the entities that occur in the log, and each one's row in `table` (-1 = not there)."""
    seen = pd.unique(log_ids)
    if table is None:
        return [str(x) for x in seen], None
    table_index = pd.Index(table.ids)
    id_column = table.id_column or column
    if not table_index.is_unique:
        duplicated = table_index.duplicated()
        row = int(np.argmax(duplicated))
        raise DataError(
            f"{table.where(row, id_column)}: duplicate {id_column} {table.ids[row]!r} in the {what} file; "
            f"keep one row per {what}"
        )
    in_log = pd.Index(seen)
    rows_in_table = in_log.get_indexer(table_index)  # for each table row: position in `seen` or -1
    missing = table_index.get_indexer(in_log) < 0
    if missing.any() and on_missing == "error":
        first_missing = seen[int(np.argmax(missing))]
        row = int(np.argmax(log_ids == first_missing))
        raise DataError(
            f"{log.where(row, column)}: {column} {first_missing!r} is not in the {what} file {table.source} "
            f"({int(missing.sum())} such ids); fix the ids (or the {what} file's id column), or keep them "
            "with unknown features (on_missing='unknown'; mind-model data --keep-missing)"
        )
    order = [table.ids[r] for r in np.flatnonzero(rows_in_table >= 0)]
    order += [str(x) for x in seen[missing]]
    source_rows = table_index.get_indexer(pd.Index(order))
    return order, source_rows


def _encode_features(
    table: SideTable | None, source_rows: np.ndarray | None, n_rows: int, offset: int,
) -> tuple[dict[str, np.ndarray], dict[str, list[str]]]:
    """Per feature: (offset + n_rows, max_values) int64 matrix of vocabulary indices and its vocabulary."""
    matrices: dict[str, np.ndarray] = {}
    vocabs: dict[str, list[str]] = {}
    if table is None or source_rows is None:
        return matrices, vocabs
    for column, per_row in table.values.items():
        kept = [per_row[r] if r >= 0 else [] for r in source_rows]
        observed = sorted({v for values in kept for v in values})
        if column in table.vocab_order:
            vocab = [UNKNOWN, *table.vocab_order[column]]
            allowed = set(vocab)
            for i, values in enumerate(kept):
                for v in values:
                    if v not in allowed:
                        raise DataError(
                            f"{table.where(int(source_rows[i]), column)}: unexpected value {v!r}; "
                            f"expected one of {', '.join(vocab[1:])}"
                        )
        else:
            vocab = [UNKNOWN, *observed]
        lookup = {v: i for i, v in enumerate(vocab)}
        width = max(1, max((len(values) for values in kept), default=0))
        matrix = np.zeros((offset + n_rows, width), dtype=np.int64)
        for i, values in enumerate(kept):
            for j, v in enumerate(values):
                matrix[offset + i, j] = lookup[v]
        matrices[column] = matrix
        vocabs[column] = vocab
    return matrices, vocabs


def build_interaction_data(
    name: str,
    log: InteractionLog,
    *,
    items: SideTable | None = None,
    users: SideTable | None = None,
    on_missing: OnMissing = "error",
) -> InteractionData:
    """Index a raw log (+ side tables): per-user sequences sorted by time, ties in log order."""
    if len(log.user_ids) == 0:
        raise DataError(f"{log.source}: no interactions")
    item_order, item_rows = _entity_order(log.item_ids, items, log.columns[1], log, on_missing, "item")
    user_order, user_rows = _entity_order(log.user_ids, users, log.columns[0], log, on_missing, "user")

    item_index = pd.Index(item_order).get_indexer(log.item_ids).astype(np.int64) + 1
    user_index = pd.Index(user_order).get_indexer(log.user_ids).astype(np.int64)

    item_features, item_vocabs = _encode_features(items, item_rows, len(item_order), offset=1)
    profile_matrices, profile_vocabs = _encode_features(users, user_rows, len(user_order), offset=0)
    for column, matrix in profile_matrices.items():
        if matrix.shape[1] != 1:
            raise DataError(f"{users.source if users else name}: profile field {column!r} must be "
                            "single-valued")
    user_profile = (
        np.concatenate([profile_matrices[c] for c in profile_vocabs], axis=1)
        if profile_vocabs else np.zeros((len(user_order), 0), dtype=np.int64)
    )

    behavior_vocab = None
    behavior_index = None
    if log.behaviors is not None:
        behavior_vocab = [UNKNOWN, *sorted(set(log.behaviors.tolist()) - {UNKNOWN})]
        behavior_index = pd.Index(behavior_vocab).get_indexer(log.behaviors).astype(np.int64)

    # Stable: ties in (user, timestamp) keep log order, so the "next item" never depends on the sort.
    order = np.lexsort((np.arange(len(user_index)), log.timestamps, user_index))
    sorted_users = user_index[order]
    boundaries = np.flatnonzero(np.diff(sorted_users)) + 1
    sequences = np.split(item_index[order], boundaries)
    timestamps = np.split(log.timestamps.astype(np.int64)[order], boundaries)
    behaviors = np.split(behavior_index[order], boundaries) if behavior_index is not None else None

    item_titles = None
    if items is not None and items.titles is not None and item_rows is not None:
        item_titles = ["", *(items.titles[r] if r >= 0 else "" for r in item_rows)]

    data = InteractionData(
        name=name,
        item_ids=[PAD, *item_order],
        item_features=item_features,
        item_feature_vocabs=item_vocabs,
        user_ids=user_order,
        user_profile=user_profile,
        profile_vocabs=profile_vocabs,
        sequences=sequences,
        timestamps=timestamps,
        behaviors=behaviors,
        behavior_vocab=behavior_vocab,
        item_titles=item_titles,
    )
    return data


# ----------------------------------------------------------------------------------------------------------
# Splits


@dataclass(frozen=True)
class UserSplit:
    """Disjoint, sorted user-index arrays: train users, validation users, held-out test users."""

    train_users: np.ndarray
    valid_users: np.ndarray
    test_users: np.ndarray


def user_split(
    data: InteractionData, *, valid_fraction: float = 0.1, test_fraction: float = 0.1, seed: int = 0
) -> UserSplit:
    """Split users (not interactions) at random: a user's whole history lands in exactly one part.

    Deterministic for a given (num_users, fractions, seed). Non-zero fractions get at least one user each
    when there are enough users.
    """
    if not (0 <= valid_fraction < 1 and 0 <= test_fraction < 1 and valid_fraction + test_fraction < 1):
        raise DataError(
            f"user_split: valid_fraction={valid_fraction}, test_fraction={test_fraction}; "
            "each must be in [0, 1) and their sum below 1"
        )
    n = data.num_users
    n_test = int(round(n * test_fraction))
    n_valid = int(round(n * valid_fraction))
    if test_fraction > 0 and n_test == 0 and n >= 3:
        n_test = 1
    if valid_fraction > 0 and n_valid == 0 and n >= 3:
        n_valid = 1
    if n - n_test - n_valid < 1:
        raise DataError(f"user_split: {n} users are too few for fractions {valid_fraction} and "
                        f"{test_fraction}")
    permutation = np.random.default_rng(seed).permutation(n).astype(np.int64)
    return UserSplit(
        train_users=np.sort(permutation[n_test + n_valid:]),
        valid_users=np.sort(permutation[n_test:n_test + n_valid]),
        test_users=np.sort(permutation[:n_test]),
    )


# ----------------------------------------------------------------------------------------------------------
# Fast cache: one .npz holding flat arrays + a JSON header (no pickle)

CACHE_FORMAT = 1


def save_dataset(data: InteractionData, path: str | Path) -> Path:
    """Write `data` to one uncompressed .npz (atomic replace).

    `load_dataset` reads it back in well under 1 s.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    lengths = np.array([len(s) for s in data.sequences], dtype=np.int64)
    meta = {
        "format": CACHE_FORMAT,
        "name": data.name,
        "item_ids": data.item_ids,
        "user_ids": data.user_ids,
        "item_feature_vocabs": data.item_feature_vocabs,
        "profile_vocabs": data.profile_vocabs,
        "behavior_vocab": data.behavior_vocab,
        "item_feature_names": list(data.item_features),
        "item_titles": data.item_titles,
    }
    arrays = {
        "meta": np.frombuffer(json.dumps(meta).encode("utf-8"), dtype=np.uint8),
        "user_profile": data.user_profile,
        "sequence_lengths": lengths,
        "sequence_items": np.concatenate(data.sequences) if data.sequences else np.zeros(0, np.int64),
        "sequence_timestamps": np.concatenate(data.timestamps) if data.timestamps else np.zeros(0, np.int64),
    }
    if data.behaviors is not None:
        arrays["sequence_behaviors"] = np.concatenate(data.behaviors)
    for i, matrix in enumerate(data.item_features.values()):
        arrays[f"item_feature_{i}"] = matrix
    with atomic_writer(path) as handle:
        np.savez(handle, **arrays)
    return path


def load_dataset(path: str | Path) -> InteractionData:
    """Read a file written by `save_dataset`; DataError if it is missing, corrupt or of another format."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no such dataset cache; prepare it first (mind-model data NAME)")
    try:
        with np.load(path, allow_pickle=False) as npz:
            arrays = {key: npz[key] for key in npz.files}
        meta = json.loads(arrays["meta"].tobytes().decode("utf-8"))
    except (OSError, ValueError, KeyError, EOFError, io.UnsupportedOperation) as exc:
        raise DataError(f"{path}: unreadable dataset cache ({exc}); delete it and prepare again") from exc
    if meta.get("format") != CACHE_FORMAT:
        raise DataError(f"{path}: cache format {meta.get('format')} ≠ {CACHE_FORMAT}; delete it and "
                        "prepare again")
    boundaries = np.cumsum(arrays["sequence_lengths"])[:-1]
    data = InteractionData(
        name=meta["name"],
        item_ids=meta["item_ids"],
        item_features={
            name: arrays[f"item_feature_{i}"] for i, name in enumerate(meta["item_feature_names"])
        },
        item_feature_vocabs=meta["item_feature_vocabs"],
        user_ids=meta["user_ids"],
        user_profile=arrays["user_profile"],
        profile_vocabs=meta["profile_vocabs"],
        sequences=np.split(arrays["sequence_items"], boundaries),
        timestamps=np.split(arrays["sequence_timestamps"], boundaries),
        behaviors=(np.split(arrays["sequence_behaviors"], boundaries)
                   if "sequence_behaviors" in arrays else None),
        behavior_vocab=meta["behavior_vocab"],
        item_titles=meta.get("item_titles"),
    )
    return data
