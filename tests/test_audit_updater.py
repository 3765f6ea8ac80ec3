"""De-duplication holds for every event still in either window of the history (issue 16): pure logic."""

from __future__ import annotations

from streams.events import Interaction
from streams.updater import apply_events


def ev(item: str, ts: int, event_id: str) -> Interaction:
    return Interaction("u", item, ts, event_id)


def test_a_redelivery_whose_id_left_the_seen_window_but_whose_item_is_kept_changes_nothing():
    events = [ev(f"i{j}", 1000 + j, f"e{j}") for j in range(4)]
    history, _ = apply_events(None, events, max_len=4, max_seen=2)
    assert history["seen"] == ["e2", "e3"]
    assert [item[2] for item in history["items"]] == ["e0", "e1", "e2", "e3"]
    # e0 is no longer among the last 2 seen ids, but its item is still in the history: still a duplicate.
    again, applied = apply_events(history, [events[0], events[1]], max_len=4, max_seen=2)
    assert applied == []
    assert again == history


def test_the_bound_an_event_older_than_both_windows_is_applied_again():
    events = [ev(f"i{j}", 1000 + j, f"e{j}") for j in range(4)]
    history, _ = apply_events(None, events, max_len=2, max_seen=2)  # items e2, e3; seen e2, e3
    again, applied = apply_events(history, [events[1]], max_len=2, max_seen=2)
    assert applied == [events[1]]  # e1 is in neither window: the documented bound
    assert again["seen"] == ["e3", "e1"]
    assert [item[2] for item in again["items"]] == ["e2", "e3"]  # older than every kept item: no effect
