"""Reading interaction logs and their item and user files (CSV, TSV or Parquet, by file suffix).

`load_interactions` reads them into `model.data.InteractionData`. The file rules (`LogColumns` and
`SideColumns` rename the columns named here and choose formats):

- Interaction log: columns `user_id`, `item_id`, `timestamp`, optional `behavior`; other columns are
  ignored. Every row is one interaction (implicit feedback). Times are epoch seconds, epoch milliseconds
  or ISO-8601 text, one format per column (`detect_time_format` picks it unless it is given), stored as
  integer seconds.
- Item file (optional): `item_id` + one column per side feature, + optionally a title column (shown to
  people, not a feature). Side features are categorical; a multi-valued feature separates its values with
  `|` (`Comedy|Drama`) or its own separator. Empty values and `<unk>` mean "none". Numeric features
  (years, prices) become categories by quantile buckets on request (`SideColumns.buckets`).
- User file (optional): `user_id` + one column per profile field (single categorical value each).
- How rows become sequences and vocabularies: `model.data.build_interaction_data`.
- Bad input raises `DataError("path:line:column: what is wrong")`; for Parquet the "line" is `row N`.
"""

from __future__ import annotations

import csv
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd

from model.data import (
    MULTI_VALUE_SEPARATOR,
    UNKNOWN,
    DataError,
    InteractionData,
    InteractionLog,
    OnMissing,
    SideTable,
    build_interaction_data,
)

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
            raise DataError(f"{path}:1: empty file; expected a header line with columns "
                            f"{', '.join(required)}") from exc
        except pd.errors.ParserError as exc:
            match = _PANDAS_LINE.search(str(exc))
            line = match.group(1) if match else "?"
            detail = str(exc).split("C error: ")[-1].strip()
            raise DataError(f"{path}:{line}: malformed row ({detail}); check the separator and "
                            "quoting") from exc
        except UnicodeDecodeError as exc:
            raise DataError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start}); save it as "
                            "UTF-8") from exc
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
                f"{path}:1:{column}: missing column {column!r} ({what}); found columns: {found}; name the "
                f"column that holds it ({_COLUMN_FLAGS.get(what, 'LogColumns / SideColumns')})"
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
        raise DataError(f"{table.where(row, column)}: empty {column}; every row needs one: fill it or drop "
                        "the row")
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
    largest = float(np.nanmax(np.abs(numbers.to_numpy(dtype=np.float64))))
    return "milliseconds" if largest >= MILLISECONDS_FROM else "seconds"


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
                "(e.g. 2024-03-01T09:30:00Z); fix the value, or give the time format if the column holds "
                "epoch numbers"
            )
        return parsed.dt.tz_localize(None).to_numpy(dtype="datetime64[s]").astype(np.int64)
    unit = "seconds" if time_format == "seconds" else "milliseconds"
    example = "881250949" if time_format == "seconds" else "881250949000"
    values = _integer_values(table, column, f"an integer (expected {unit} since the epoch, e.g. {example})")
    return values if time_format == "seconds" else values // 1000


def _integer_values(table: _Table, column: str, expected: str) -> np.ndarray:
    """(rows,) int64 from integer or integral-float cells.

    Any other cell raises DataError "... is not {expected}".
    """
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
    labels = [f"{_short_number(lo)}-{_short_number(hi)}"
              for lo, hi in zip(edges[:-1], edges[1:], strict=True)]
    if not labels:  # a single distinct value
        labels = [_short_number(edges[0])]
        codes = pd.Series(np.where(empty, np.nan, 0.0))
    per_row = [[] if pd.isna(code) else [labels[int(code)]] for code in codes.tolist()]
    return per_row, labels


def _short_number(value: float) -> str:
    return f"{value:.4g}"


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
                f"{table.path}:1:{column}: no column {column!r}; found columns: {found}; check the feature "
                "columns and separators asked for (mind-model data --item-cols, --profile-cols, --separator)"
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
    return SideTable(ids=ids, values=values, source=table.path, lines=table.lines.tolist(),
                     vocab_order=vocab_order, titles=titles, id_column=id_column)


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
        name or Path(interactions_path).name.split(".")[0], log, items=items, users=users,
        on_missing=on_missing,
    )
    return data
