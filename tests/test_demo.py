"""streams/demo.py's printouts: items named from the artifact, the merged list labelled by interest, and the
interests' shares of it (the demo itself is `make demo`, end to end)."""

from __future__ import annotations

from support.artifact import build_tiny_artifact

from export.runtime import UserTowerRuntime
from streams.demo_report import Catalogue, interest_shares, show_interests, show_recall


def test_the_merged_list_names_each_item_and_the_interest_it_came_from(tmp_path, capsys) -> None:
    runtime = UserTowerRuntime.load(build_tiny_artifact(tmp_path / "titled", num_items=40, item_titles=True))
    catalogue = Catalogue.of(runtime)
    first, second = runtime.item_ids()[:2]
    assert catalogue.has_titles and catalogue.title(first) == f"Title of {first}"
    answer = {"diversity": 0.5, "items": [
        {"item_id": first, "score": 2.0, "slot": 0, "title": f"Title of {first}"},
        {"item_id": second, "score": 1.5, "slot": 3, "title": None},
        {"item_id": first, "score": 1.0, "slot": 3, "title": None},
        {"item_id": second, "score": 0.5, "slot": 3, "title": None}]}
    assert interest_shares(answer) == {0: 0.25, 3: 0.75}

    show_recall("BEFORE", answer, catalogue, genre="none")
    lines = capsys.readouterr().out.splitlines()
    assert "diversity 0.5" in lines[1]
    assert f"Title of {first}" in lines[2] and lines[2].endswith("interest 0")
    assert f"Title of {second}" in lines[3] and lines[3].endswith("interest 3")  # named from the artifact
    assert lines[-1].endswith("from: interest 0 25%, interest 3 75%")

    vectors = runtime.item_vectors()
    interests = {"history_length": 3, "interests": [{"slot": 0, "vector": vectors[0].tolist()},
                                                    {"slot": 3, "vector": vectors[1].tolist()}]}
    show_interests("BEFORE", interests, answer, catalogue, genre="none")
    out = capsys.readouterr().out
    assert "interest 0:  25% of the merged top 4" in out and "interest 3:  75% of the merged top 4" in out
    assert f"Title of {first}" in out  # the interest pointing at an item lists it among its own top items
