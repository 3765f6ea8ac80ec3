"""Interaction logs → per-user, time-ordered item sequences with item side features and user profiles.

The one in-memory form every other `model/` module reads is `InteractionData` (index conventions in
docs/ARCHITECTURE.md: item index 0 is padding, every vocabulary's index 0 is "<unk>" / none).

File rules for `load_interactions` (CSV, TSV or Parquet, chosen by the file suffix; `LogColumns` and
`SideColumns` rename the columns named here and choose formats):

- Interaction log: columns `user_id`, `item_id`, `timestamp`, optional `behavior`; other columns are
  ignored. Every row is one interaction (implicit feedback). Times are epoch seconds, epoch milliseconds
  or ISO-8601 text, one format per column (`detect_time_format` picks it unless it is given), stored as
  integer seconds. Rows of one user are ordered by time; ties keep file order (a stable sort), so the
  "next item" is deterministic.
- Item file (optional): `item_id` + one column per side feature, + optionally a title column (shown to
  people, not a feature). Side features are categorical; a multi-valued feature separates its values with
  `|` (`Comedy|Drama`) or its own separator. Empty values and `<unk>` mean "none". Numeric features
  (years, prices) become categories by quantile buckets on request (`SideColumns.buckets`).
- User file (optional): `user_id` + one column per profile field (single categorical value each).
- Items and users are those that occur in the log: item-file rows that nobody interacted with are dropped,
  and so are users without interactions. Vocabulary order: item and user files' row order (log order of
  first appearance when there is no such file); feature values sorted (buckets in value order).
- An item (user) in the log that is missing from a given item (user) file is an error by default
  (usually a join-key mismatch); `on_missing="unknown"` keeps it with all features unknown (index 0).
- Bad input raises `DataError("path:line:column: what is wrong")`; for Parquet the "line" is `row N`.
"""

from __future__ import annotations

import csv
import io
import json
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd

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
        if self.user_profile.shape != (n_users, len(self.profile_vocabs)) or self.user_profile.dtype != np.int64:
            raise DataError(f"{self.name}: user_profile must be int64 (num_users, {len(self.profile_vocabs)})")
        for col, (field_name, vocab) in enumerate(self.profile_vocabs.items()):
            column = self.user_profile[:, col]
            if vocab[:1] != [UNKNOWN] or (column.size and (column.min() < 0 or column.max() >= len(vocab))):
                raise DataError(f"{self.name}: profile field {field_name!r} has indices outside its vocabulary")
        if len(self.sequences) != n_users or len(self.timestamps) != n_users:
            raise DataError(f"{self.name}: need one sequence and one timestamp array per user")
        if (self.behaviors is None) != (self.behavior_vocab is None):
            raise DataError(f"{self.name}: behaviors and behavior_vocab must be given together")
        for u, (seq, ts) in enumerate(zip(self.sequences, self.timestamps, strict=True)):
            if len(seq) == 0 or seq.shape != ts.shape or seq.dtype != np.int64 or ts.dtype != np.int64:
                raise DataError(f"{self.name}: user {self.user_ids[u]!r} has an empty or malformed sequence")
            if seq.min() < 1 or seq.max() > n_items:
                raise DataError(f"{self.name}: user {self.user_ids[u]!r} has item indices outside 1..{n_items}")
            if np.any(np.diff(ts) < 0):
                raise DataError(f"{self.name}: user {self.user_ids[u]!r} has timestamps out of order")
            if self.behaviors is not None and self.behaviors[u].shape != seq.shape:
                raise DataError(f"{self.name}: user {self.user_ids[u]!r} has a malformed behaviour array")
        if self.item_titles is not None and len(self.item_titles) != n_items + 1:
            raise DataError(f"{self.name}: item_titles must have one entry per item index (num_items + 1)")


# ----------------------------------------------------------------------------------------------------------
# Reading files


@dataclass
class _Table:
    """A table read from one file, with each row's position in that file for error messages."""

    path: str
    frame: pd.DataFrame
    lines: np.ndarray  # (rows,) line number (text) or 1-based row number (Parquet)
    is_parquet: bool

    def where(self, row: int, column: str) -> str:
        position = f"row {self.lines[row]}" if self.is_parquet else str(self.lines[row])
        return f"{self.path}:{position}:{column}"


_TEXT_SEPARATORS = {".csv": ",", ".tsv": "\t", ".tab": "\t"}
_PARQUET_SUFFIXES = {".parquet", ".pq"}
_PANDAS_LINE = re.compile(r"line (\d+)")


# How `mind-model data` names each file's columns (the Python API: LogColumns / SideColumns).
_COLUMN_FLAGS = {
    "interaction log": "mind-model data --user-col, --item-col, --time-col, --behavior-col",
    "item file": "mind-model data --item-id-col",
    "user file": "mind-model data --user-id-col",
}


def _file_kind(path: Path) -> str:
    suffixes = [s.lower() for s in path.suffixes]
    if suffixes and suffixes[-1] in {".gz", ".bz2", ".xz", ".zst"}:
        suffixes = suffixes[:-1]
    suffix = suffixes[-1] if suffixes else ""
    if suffix in _TEXT_SEPARATORS or suffix in _PARQUET_SUFFIXES:
        return suffix
    raise DataError(f"{path}: unknown file type {suffix or '(no suffix)'!r}; use .csv, .tsv or .parquet")


def _read_table(path: str | Path, required: Sequence[str], what: str) -> _Table:
    path = Path(path)
    kind = _file_kind(path)
    if not path.is_file():
        raise DataError(f"{path}: no such file ({what}); check the path")
    if path.stat().st_size == 0:
        raise DataError(f"{path}:1: empty file; expected a header line with columns {', '.join(required)}")
    if kind in _PARQUET_SUFFIXES:
        try:
            frame = pd.read_parquet(path)
        except Exception as exc:  # pyarrow raises many types; all mean "not a readable Parquet file"
            raise DataError(f"{path}: cannot read as Parquet ({type(exc).__name__}: {exc})") from exc
        frame.columns = [str(c).strip() for c in frame.columns]
        frame = frame.reset_index(drop=True)
        lines = np.arange(1, len(frame) + 1)
        table = _Table(str(path), frame, lines, is_parquet=True)
    else:
        try:
            # Everything as text, nothing guessed: ids stay strings ("007" ≠ "7"), empty stays "".
            frame = pd.read_csv(
                path, sep=_TEXT_SEPARATORS[kind], dtype=str, na_filter=False, skip_blank_lines=False,
                quoting=csv.QUOTE_MINIMAL, encoding="utf-8",
            )
        except pd.errors.EmptyDataError as exc:
            raise DataError(f"{path}:1: empty file; expected a header line with columns {', '.join(required)}") from exc
        except pd.errors.ParserError as exc:
            match = _PANDAS_LINE.search(str(exc))
            line = match.group(1) if match else "?"
            detail = str(exc).split("C error: ")[-1].strip()
            raise DataError(f"{path}:{line}: malformed row ({detail}); check the separator and quoting") from exc
        except UnicodeDecodeError as exc:
            raise DataError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start}); save it as UTF-8") from exc
        frame.columns = [str(c).strip() for c in frame.columns]
        # Line of each data row: header is line 1 (assumes no newlines inside quoted fields).
        lines = np.arange(2, len(frame) + 2)
        blank = (frame == "").all(axis=1).to_numpy() if len(frame.columns) else np.zeros(len(frame), bool)
        if blank.any():
            frame, lines = frame.loc[~blank].reset_index(drop=True), lines[~blank]
        table = _Table(str(path), frame, lines, is_parquet=False)
    for column in required:
        if column not in table.frame.columns:
            found = ", ".join(map(str, table.frame.columns)) or "none"
            raise DataError(
                f"{path}:1:{column}: missing column {column!r} ({what}); found columns: {found}; name the column "
                f"that holds it ({_COLUMN_FLAGS.get(what, 'LogColumns / SideColumns')})"
            )
    if len(table.frame) == 0:
        raise DataError(f"{path}:2: no rows after the header ({what}); is it the right file?")
    return table


def _id_column(table: _Table, column: str) -> np.ndarray:
    """Raw ids as stripped strings (ints become their decimal string); empty → DataError."""
    series = table.frame[column]
    if pd.api.types.is_float_dtype(series) and series.notna().all() and (series % 1 == 0).all():
        series = series.astype(np.int64)
    missing = series.isna().to_numpy()
    values = series.astype(str).str.strip()
    bad = missing | (values == "").to_numpy()
    if bad.any():
        row = int(np.argmax(bad))
        raise DataError(f"{table.where(row, column)}: empty {column}; every row needs one: fill it or drop the row")
    return values.to_numpy(dtype=object)


_INTEGER_TEXT = re.compile(r"[+-]?\d+(?:\.0*)?")

TimeFormat = Literal["auto", "seconds", "milliseconds", "iso8601"]
TIME_FORMATS: tuple[str, ...] = ("auto", "seconds", "milliseconds", "iso8601")
# "auto" reads integers from this value up as milliseconds: as seconds they would lie after the year 5138.
MILLISECONDS_FROM = 100_000_000_000


def detect_time_format(series: pd.Series) -> TimeFormat:
    """"iso8601" unless the first non-empty value is an integer; then "milliseconds" when the largest integer
    is ≥ MILLISECONDS_FROM, else "seconds". Parquet datetime columns are read as they are ("iso8601")."""
    if pd.api.types.is_datetime64_any_dtype(series):
        return "iso8601"
    numbers = pd.to_numeric(series, errors="coerce")
    present = series.notna() & (series.astype(str).str.strip() != "")
    first = int(np.argmax(present.to_numpy())) if present.any() else 0
    if len(series) == 0 or pd.isna(numbers.iloc[first]):
        return "iso8601"
    return "milliseconds" if float(np.nanmax(np.abs(numbers.to_numpy(dtype=np.float64)))) >= MILLISECONDS_FROM else "seconds"


def _timestamp_column(table: _Table, column: str, time_format: TimeFormat = "auto") -> np.ndarray:
    """(rows,) int64 seconds since the epoch, from epoch seconds, epoch milliseconds (floored to seconds) or
    ISO-8601 text (times without an offset are UTC); Parquet datetimes are taken as they are.

    `time_format="auto"` picks one format for the whole column (`detect_time_format`); a value not in the
    column's format → DataError naming its line.
    """
    series = table.frame[column]
    if time_format == "auto":
        time_format = detect_time_format(series)
    if pd.api.types.is_datetime64_any_dtype(series):
        if series.isna().any():
            row = int(np.argmax(series.isna().to_numpy()))
            raise DataError(f"{table.where(row, column)}: missing {column}; every row needs a time")
        if getattr(series.dt, "tz", None) is not None:
            series = series.dt.tz_convert("UTC").dt.tz_localize(None)
        return series.to_numpy(dtype="datetime64[s]").astype(np.int64)
    if time_format == "iso8601":
        text = series.astype(str).str.strip()
        parsed = pd.to_datetime(text, format="ISO8601", utc=True, errors="coerce")
        bad = parsed.isna().to_numpy() | series.isna().to_numpy()
        if bad.any():
            row = int(np.argmax(bad))
            raise DataError(
                f"{table.where(row, column)}: {column} {series.iloc[row]!r} is not an ISO-8601 time "
                "(e.g. 2024-03-01T09:30:00Z); fix the value, or give the time format if the column holds epoch numbers"
            )
        return parsed.dt.tz_localize(None).to_numpy(dtype="datetime64[s]").astype(np.int64)
    unit = "seconds" if time_format == "seconds" else "milliseconds"
    example = "881250949" if time_format == "seconds" else "881250949000"
    values = _integer_values(table, column, f"an integer (expected {unit} since the epoch, e.g. {example})")
    return values if time_format == "seconds" else values // 1000


def _integer_values(table: _Table, column: str, expected: str) -> np.ndarray:
    """(rows,) int64 from integer or integral-float cells; any other cell → DataError "... is not {expected}"."""
    series = table.frame[column]
    if pd.api.types.is_integer_dtype(series) and not series.isna().any():
        return series.to_numpy(dtype=np.int64)
    if pd.api.types.is_numeric_dtype(series) and not pd.api.types.is_bool_dtype(series):
        values = series.to_numpy(dtype=np.float64)
        bad = ~np.isfinite(values) | (values % 1 != 0)
        if bad.any():
            row = int(np.argmax(bad))
            raise DataError(f"{table.where(row, column)}: {column} {series.iloc[row]!r} is not {expected}")
        return values.astype(np.int64)
    text = series.astype(str).str.strip()
    ok = text.str.fullmatch(_INTEGER_TEXT).fillna(False).to_numpy(dtype=bool) & series.notna().to_numpy()
    if not ok.all():
        row = int(np.argmax(~ok))
        raise DataError(f"{table.where(row, column)}: {column} {series.iloc[row]!r} is not {expected}")
    return text.str.split(".", n=1).str[0].astype(np.int64).to_numpy()


def _value_lists(table: _Table, column: str, separator: str | None) -> list[list[str]]:
    """Categorical values per row, split on `separator` when given; '' and '<unk>' mean none."""
    series = table.frame[column]
    out: list[list[str]] = []
    for raw in series.tolist():
        if raw is None or (isinstance(raw, float) and np.isnan(raw)):
            out.append([])
            continue
        if isinstance(raw, float) and raw.is_integer():
            raw = int(raw)
        parts = str(raw).split(separator) if separator else [str(raw)]
        values = []
        for part in parts:
            part = part.strip()
            if part and part != UNKNOWN and part not in values:
                values.append(part)
        out.append(values)
    return out


def _bucket_lists(table: _Table, column: str, buckets: int) -> tuple[list[list[str]], list[str]]:
    """Quantile buckets of a numeric column: per row [label] ([] when empty) and the labels in value order.

    Labels are value ranges, "10.5-20" (equal quantiles may merge, so there can be fewer than `buckets`).
    """
    series = table.frame[column]
    text = series.astype(str).str.strip()
    empty = series.isna().to_numpy() | (text == "").to_numpy()
    numbers = pd.to_numeric(series.where(~empty), errors="coerce")
    bad = numbers.isna().to_numpy() & ~empty
    if bad.any():
        row = int(np.argmax(bad))
        raise DataError(
            f"{table.where(row, column)}: {column} {series.iloc[row]!r} is not a number; fix the value, or "
            f"do not bucket {column} (it is then read as categories)"
        )
    if (~empty).sum() == 0:
        raise DataError(f"{table.path}:1:{column}: no values to bucket; do not bucket {column}")
    codes, edges = pd.qcut(numbers, q=buckets, labels=False, retbins=True, duplicates="drop")
    labels = [f"{_short_number(lo)}-{_short_number(hi)}" for lo, hi in zip(edges[:-1], edges[1:], strict=True)]
    if not labels:  # a single distinct value
        labels = [_short_number(edges[0])]
        codes = pd.Series(np.where(empty, np.nan, 0.0))
    per_row = [[] if pd.isna(code) else [labels[int(code)]] for code in codes.tolist()]
    return per_row, labels


def _short_number(value: float) -> str:
    return f"{value:.4g}"


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
            f"({int(missing.sum())} such ids); fix the ids (or the {what} file's id column), or keep them with "
            "unknown features (on_missing='unknown'; mind-model data --keep-missing)"
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
            raise DataError(f"{users.source if users else name}: profile field {column!r} must be single-valued")
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


@dataclass(frozen=True)
class LogColumns:
    """Which columns of an interaction log hold what, and how its times are written.

    `behavior=None` reads a column named "behavior" when the file has one; a given name must exist.
    """

    user: str = "user_id"
    item: str = "item_id"
    time: str = "timestamp"
    behavior: str | None = None
    time_format: TimeFormat = "auto"


@dataclass(frozen=True)
class SideColumns:
    """Which columns of an item or user file are read, and how.

    `id`: the id column (None: the log's item or user column name). `features`: feature columns (None:
    every column but the id and title). `separators`: column → separator of its multi-valued cells
    (`default_separator` for the others; None = single-valued). `buckets`: numeric column → number of
    quantile buckets. `title`: an item column shown to people (a title or name), kept out of the features.
    """

    id: str | None = None
    features: tuple[str, ...] | None = None
    separators: Mapping[str, str] = field(default_factory=dict)
    default_separator: str | None = None
    buckets: Mapping[str, int] = field(default_factory=dict)
    title: str | None = None


def _side_table(table: _Table, id_column: str, columns: SideColumns) -> SideTable:
    ids = _id_column(table, id_column).tolist()
    skip = {id_column, columns.title}
    features = list(columns.features) if columns.features is not None else [
        c for c in table.frame.columns if c not in skip
    ]
    for column in [*features, *columns.separators]:
        if column not in table.frame.columns:
            found = ", ".join(map(str, table.frame.columns))
            raise DataError(
                f"{table.path}:1:{column}: no column {column!r}; found columns: {found}; check the feature columns "
                "and separators asked for (mind-model data --item-cols, --profile-cols, --separator)"
            )
    values: dict[str, list[list[str]]] = {}
    vocab_order: dict[str, list[str]] = {}
    for column in features:
        if column in columns.buckets:
            values[column], vocab_order[column] = _bucket_lists(table, column, columns.buckets[column])
        else:
            separator = columns.separators.get(column, columns.default_separator)
            values[column] = _value_lists(table, column, separator)
    titles = None
    if columns.title is not None:
        if columns.title not in table.frame.columns:
            found = ", ".join(map(str, table.frame.columns))
            raise DataError(
                f"{table.path}:1:{columns.title}: no title column {columns.title!r}; found columns: {found}; "
                "check --title-col"
            )
        titles = [v[0] if v else "" for v in _value_lists(table, columns.title, None)]
    return SideTable(ids=ids, values=values, source=table.path, lines=table.lines.tolist(), vocab_order=vocab_order,
                     titles=titles, id_column=id_column)


def load_interactions(
    interactions_path: str | Path,
    *,
    items_path: str | Path | None = None,
    users_path: str | Path | None = None,
    name: str | None = None,
    on_missing: OnMissing = "error",
    log_columns: LogColumns = LogColumns(),
    item_columns: SideColumns = SideColumns(default_separator=MULTI_VALUE_SEPARATOR),
    user_columns: SideColumns = SideColumns(),
    notes: list[str] | None = None,
) -> InteractionData:
    """Read an interaction log (+ optional item and user files) into InteractionData.

    See the module docstring for the file rules; the column arguments rename columns and choose formats.
    Raises DataError("path:line:column: ...") on bad input. `notes`, when given, receives one line per
    choice made for you (the detected time format).
    """
    c = log_columns
    behavior = c.behavior or "behavior"
    required = [c.user, c.item, c.time] + ([c.behavior] if c.behavior else [])
    table = _read_table(interactions_path, required, "interaction log")
    time_format = c.time_format if c.time_format != "auto" else detect_time_format(table.frame[c.time])
    if notes is not None:
        how = "given" if c.time_format != "auto" else "detected"
        notes.append(f"{table.path}: {c.time} read as {time_format} ({how})")
    log = InteractionLog(
        user_ids=_id_column(table, c.user),
        item_ids=_id_column(table, c.item),
        timestamps=_timestamp_column(table, c.time, time_format),
        behaviors=_id_column(table, behavior) if behavior in table.frame.columns else None,
        source=table.path,
        lines=table.lines,
        columns=(c.user, c.item),
    )
    items = users = None
    if items_path:
        item_id = item_columns.id or c.item
        items = _side_table(_read_table(items_path, [item_id], "item file"), item_id, item_columns)
    if users_path:
        user_id = user_columns.id or c.user
        users = _side_table(_read_table(users_path, [user_id], "user file"), user_id, user_columns)
    data = build_interaction_data(
        name or Path(interactions_path).name.split(".")[0], log, items=items, users=users, on_missing=on_missing
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
        raise DataError(f"user_split: {n} users are too few for fractions {valid_fraction} and {test_fraction}")
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
    """Write `data` to one uncompressed .npz (atomic replace); `load_dataset` reads it back in well under 1 s."""
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
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as handle:
        np.savez(handle, **arrays)
    os.replace(tmp, path)
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
        raise DataError(f"{path}: cache format {meta.get('format')} ≠ {CACHE_FORMAT}; delete it and prepare again")
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
        behaviors=np.split(arrays["sequence_behaviors"], boundaries) if "sequence_behaviors" in arrays else None,
        behavior_vocab=meta["behavior_vocab"],
        item_titles=meta.get("item_titles"),
    )
    return data
