"""The interests inspector's pure logic (streams/inspector.py) on small hand-checked inputs, and the package
data that carries its pages. The page itself is tested in a real Chromium: tests/test_inspector_browser.py."""

from __future__ import annotations

import dataclasses
import fnmatch
import tomllib
from pathlib import Path

import numpy as np
import pytest

from export.artifact import Vocabularies
from streams.inspector import ItemCatalogue, RecentUsers, build_user_view, error_page
from streams.inspector_web import static_files
from streams.recall import RecalledItem, RecallResult
from streams.store import ItemHit, StoredInterest

REPO_ROOT = Path(__file__).resolve().parent.parent

# Three items; "m2" has two genres, "m3" none; "ghost" (below) is not in the artifact.
VOCAB = Vocabularies(
    item_ids=["<pad>", "m1", "m2", "m3"],
    profile={},
    item_features={"genre": ["<pad>", "Drama", "Comedy"]},
    item_feature_matrix={"genre": [[0, 0], [1, 0], [1, 2], [0, 0]]},
)


def titled(vocab: Vocabularies, titles: list[str]) -> Vocabularies:
    """The vocabularies of an artifact that carries item titles (vocab.json `item_titles`)."""
    return dataclasses.replace(vocab, item_titles=titles)


def interest(slot: int, vector: list[float], bias: float = 0.0) -> StoredInterest:
    return StoredInterest("u1", slot, np.array(vector, dtype=np.float32), "v1", event_ts_ms=5_000,
                          updated_at_ms=6_000, bias=bias)


def test_catalogue_gives_titles_and_features_and_degrades_to_the_id():
    catalogue = ItemCatalogue.from_vocabularies(titled(VOCAB, ["", "Heat", "Up", ""]))
    assert catalogue.describe("m2") == {"item_id": "m2", "title": "Up",
                                        "features": {"genre": ["Drama", "Comedy"]}}
    # an empty title and no genre; an item the artifact does not know
    assert catalogue.describe("m3") == {"item_id": "m3", "title": None, "features": {}}
    assert catalogue.describe("ghost") == {"item_id": "ghost", "title": None, "features": {}}


def test_catalogue_without_titles_in_the_artifact_shows_features_only():
    catalogue = ItemCatalogue.from_vocabularies(VOCAB)
    assert catalogue.describe("m1") == {"item_id": "m1", "title": None, "features": {"genre": ["Drama"]}}


def test_user_view_counts_each_interests_share_of_the_merged_list():
    interests = [interest(0, [3.0, 4.0], bias=-0.25), interest(2, [0.0, 1.0])]
    hits = [[ItemHit(1, "m1", 0.9), ItemHit(2, "m2", 0.5)], [ItemHit(3, "m3", 0.8)]]
    recalled = RecallResult("u1", [RecalledItem("m1", 0.9, 0, 1), RecalledItem("m3", 0.8, 2, 3),
                                   RecalledItem("m2", 0.5, 0, 2), RecalledItem("ghost", 0.4, 2, 9)],
                            "v1", cold_start=False, interests_used=2)
    history = {"items": [["m1", 1_000, "e1"], ["ghost", 2_000, "e2"], ["m2", 3_000, "e3"]], "seen": []}
    view = build_user_view("u1", history, interests, hits, recalled, ItemCatalogue.from_vocabularies(VOCAB),
                           diversity=0.5)

    assert view["state"] == "interests" and view["diversity"] == 0.5 and view["model_version"] == "v1"
    first, second = view["interests"]
    assert (first["slot"], first["label"], first["merged_count"], first["share"]) == (0, "interest 0", 2, 0.5)
    assert (second["slot"], second["merged_count"], second["share"]) == (2, 2, 0.5)
    assert first["norm"] == pytest.approx(5.0)  # |(3, 4)|
    assert (first["bias"], second["bias"]) == (-0.25, 0.0)
    assert [item["item_id"] for item in first["top_items"]] == ["m1", "m2"]
    assert first["top_items"][1]["features"] == {"genre": ["Drama", "Comedy"]}
    assert [(m["rank"], m["item_id"], m["slot"], m["label"]) for m in view["merged"]] == [
        (1, "m1", 0, "interest 0"), (2, "m3", 2, "interest 2"), (3, "m2", 0, "interest 0"),
        (4, "ghost", 2, "interest 2")]
    # newest first, each with its time and what the artifact knows of it
    assert [(h["item_id"], h["ts_ms"], h["event_id"]) for h in view["history"]] == [
        ("m2", 3_000, "e3"), ("ghost", 2_000, "e2"), ("m1", 1_000, "e1")]
    assert view["history"][1]["title"] is None and view["history_length"] == 3


def test_user_view_lists_only_the_newest_history_entries_but_counts_them_all():
    history = {"items": [[f"m{i % 3 + 1}", i, f"e{i}"] for i in range(10)]}
    recalled = RecallResult("u1", [], "v1", cold_start=True, interests_used=0)
    view = build_user_view("u1", history, [], [], recalled, ItemCatalogue.from_vocabularies(VOCAB),
                           diversity=0.0, history_shown=3)
    assert [h["event_id"] for h in view["history"]] == ["e9", "e8", "e7"]
    assert view["history_length"] == 10


def test_user_without_vectors_is_in_the_no_interests_state_with_the_cold_start_list():
    recalled = RecallResult("u1", [RecalledItem("m1", 7.0, None)], "v1", cold_start=True, interests_used=0)
    view = build_user_view("u1", None, [], [], recalled, ItemCatalogue.from_vocabularies(VOCAB),
                           diversity=0.0)
    assert view["state"] == "no_interests" and view["interests"] == [] and view["history"] == []
    assert view["cold_start"] is True
    assert [(m["item_id"], m["slot"], m["label"]) for m in view["merged"]] == [
        ("m1", None, "popular (no interests yet)")]


def test_user_view_refuses_hit_lists_that_do_not_match_the_interests():
    recalled = RecallResult("u1", [], "v1", cold_start=False, interests_used=1)
    with pytest.raises(ValueError, match="1 interests but 0 hit lists"):
        build_user_view("u1", None, [interest(0, [1.0, 0.0])], [], recalled,
                        ItemCatalogue.from_vocabularies(VOCAB), diversity=0.0)


def test_recent_users_are_newest_first_bounded_and_count_writes():
    recent = RecentUsers(capacity=2)
    recent.touch("a", 1)
    recent.touch("b", 2)
    recent.touch("a", 3)  # a again: moves to the front
    assert recent.latest() == [{"user_id": "a", "updated_at_ms": 3, "writes": 2},
                               {"user_id": "b", "updated_at_ms": 2, "writes": 1}]
    recent.touch("c", 4)  # full: b, the least recently written, drops out
    assert [row["user_id"] for row in recent.latest()] == ["c", "a"]
    assert recent.latest(1) == [{"user_id": "c", "updated_at_ms": 4, "writes": 1}]


def test_error_page_escapes_the_message():
    page = error_page(400, "user id '<script>' is not valid")
    assert "<h1>400</h1>" in page and "&lt;script&gt;" in page and "<script>" not in page


def test_every_page_file_is_package_data_and_served():
    """`pip install .` must carry the pages: each file of streams/static/inspector/ matches a package-data
    glob of pyproject.toml, and the server's file table holds exactly these files."""
    config = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())
    globs = config["tool"]["setuptools"]["package-data"]["streams"]
    folder = REPO_ROOT / "streams" / "static" / "inspector"
    names = sorted(p.name for p in folder.iterdir() if p.is_file())
    assert {"index.html", "user.html", "user.js", "inspector.css"} <= set(names)
    for name in names:
        assert any(fnmatch.fnmatch(f"static/inspector/{name}", glob) for glob in globs), name
    assert sorted(static_files()) == names
