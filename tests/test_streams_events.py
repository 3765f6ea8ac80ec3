"""events.py: every malformed event is rejected with a specific reason; valid ones are normalised."""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from streams.events import Interaction, Rejection, derive_event_id, encode_event, parse_event

NOW_MS = 1_764_000_000_000  # 2025-11-24


def parse(obj_or_bytes: object) -> Interaction | Rejection:
    raw = obj_or_bytes if isinstance(obj_or_bytes, bytes) else json.dumps(obj_or_bytes).encode()
    return parse_event(raw, now_ms=NOW_MS)


def test_valid_event_with_string_ids_keeps_them_and_converts_seconds_to_ms():
    event = parse({"user_id": "u1", "item_id": "i9", "ts": 978300760, "event_id": "e1", "behavior": "click"})
    assert event == Interaction("u1", "i9", 978_300_760_000, "e1", "click")


def test_integer_ids_become_decimal_strings_and_ms_timestamps_stay_ms():
    event = parse({"user_id": 42, "item_id": 1193, "ts": 978300760123, "event_id": 7})
    assert isinstance(event, Interaction)
    assert (event.user_id, event.item_id, event.ts_ms, event.event_id) == ("42", "1193", 978300760123, "7")


def test_fractional_seconds_are_rounded_to_ms():
    event = parse({"user_id": "u", "item_id": "i", "ts": 1.2346})
    assert isinstance(event, Interaction) and event.ts_ms == 1235


def test_seconds_ms_threshold_rule():
    below = parse({"user_id": "u", "item_id": "i", "ts": 99_999_999_999})  # < 1e11: seconds
    at = parse({"user_id": "u", "item_id": "i", "ts": 100_000_000_000})  # >= 1e11: ms
    assert isinstance(at, Interaction) and at.ts_ms == 100_000_000_000
    assert isinstance(below, Rejection) and "future" in below.reason  # year 5138 in seconds


def test_missing_event_id_is_derived_deterministically_so_duplicates_match():
    a = parse({"user_id": "u", "item_id": "i", "ts": 10, "behavior": "click"})
    b = parse({"item_id": "i", "ts": 10.0, "behavior": "click", "user_id": "u", "extra": 1})
    c = parse({"user_id": "u", "item_id": "i", "ts": 10, "behavior": "buy"})
    assert isinstance(a, Interaction) and isinstance(b, Interaction) and isinstance(c, Interaction)
    assert a.event_id == b.event_id == derive_event_id("u", "i", 10_000, "click")
    assert a.event_id != c.event_id


@pytest.mark.parametrize(
    ("raw", "reason_start"),
    [
        (b"{not json", "bad JSON"),
        (b"\xff\xfe\x00", "bad JSON: value is not UTF-8"),
        (b"[1, 2]", "not an object: expected a JSON object, got array"),
        (b'"u1"', "not an object: expected a JSON object, got string"),
        ({"item_id": "i", "ts": 1}, "missing field user_id"),
        ({"user_id": "u", "ts": 1}, "missing field item_id"),
        ({"user_id": "u", "item_id": "i"}, "missing field ts"),
        ({"user_id": None, "item_id": "i", "ts": 1}, "missing field user_id"),
        ({"user_id": ["u"], "item_id": "i", "ts": 1}, "wrong type for user_id"),
        ({"user_id": True, "item_id": "i", "ts": 1}, "wrong type for user_id"),
        ({"user_id": -3, "item_id": "i", "ts": 1}, "wrong type for user_id"),
        ({"user_id": 1.5, "item_id": "i", "ts": 1}, "wrong type for user_id"),
        ({"user_id": "bad user", "item_id": "i", "ts": 1}, "user_id format"),
        ({"user_id": 'u"1', "item_id": "i", "ts": 1}, "user_id format"),
        ({"user_id": "u#1", "item_id": "i", "ts": 1}, "user_id format"),
        ({"user_id": "", "item_id": "i", "ts": 1}, "user_id format"),
        ({"user_id": "u" * 129, "item_id": "i", "ts": 1}, "user_id format"),
        ({"user_id": "u", "item_id": {"a": 1}, "ts": 1}, "wrong type for item_id"),
        ({"user_id": "u", "item_id": "", "ts": 1}, "item_id is empty"),
        ({"user_id": "u", "item_id": "x" * 129, "ts": 1}, "item_id too long"),
        ({"user_id": "u", "item_id": "a\nb", "ts": 1}, "item_id contains control characters"),
        ({"user_id": "u", "item_id": "i", "ts": "1"}, "wrong type for ts"),
        ({"user_id": "u", "item_id": "i", "ts": True}, "wrong type for ts"),
        ({"user_id": "u", "item_id": "i", "ts": -1}, "ts negative"),
        ({"user_id": "u", "item_id": "i", "ts": NOW_MS + 2 * 86_400_000}, "ts too far in the future"),
        ({"user_id": "u", "item_id": "i", "ts": 1, "behavior": 3}, "wrong type for behavior"),
        ({"user_id": "u", "item_id": "i", "ts": 1, "behavior": "b" * 33}, "behavior too long"),
        ({"user_id": "u", "item_id": "i", "ts": 1, "event_id": 1.5}, "wrong type for event_id"),
        ({"user_id": "u", "item_id": "i", "ts": 1, "event_id": ""}, "event_id length 0"),
    ],
)
def test_malformed_event_is_rejected_with_a_specific_reason(raw, reason_start):
    result = parse(raw)
    assert isinstance(result, Rejection)
    assert result.reason.startswith(reason_start), result.reason
    expected_raw = raw if isinstance(raw, bytes) else json.dumps(raw).encode()
    assert result.raw == expected_raw


def test_nan_and_infinite_ts_are_rejected():
    assert parse_event(b'{"user_id":"u","item_id":"i","ts":NaN}',
                       now_ms=NOW_MS).reason == "ts is not a finite number"
    assert isinstance(parse_event(b'{"user_id":"u","item_id":"i","ts":Infinity}', now_ms=NOW_MS), Rejection)


def test_null_value_is_rejected_not_raised():
    result = parse_event(None, now_ms=NOW_MS)
    assert isinstance(result, Rejection) and result.reason.startswith("empty message")


def test_encode_event_round_trips():
    raw = encode_event("u1", 5, 1000, event_id="e", behavior="rating")
    assert parse_event(raw, now_ms=NOW_MS) == Interaction("u1", "5", 1_000_000, "e", "rating")


@given(st.binary(max_size=200))
def test_any_bytes_give_an_interaction_or_a_rejection_never_an_exception(raw):
    assert isinstance(parse_event(raw, now_ms=NOW_MS), Interaction | Rejection)


@given(st.recursive(st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=10),
                    lambda children: (st.lists(children, max_size=3)
                                      | st.dictionaries(st.text(max_size=8), children, max_size=4)),
                    max_leaves=10),
       st.sampled_from(["user_id", "item_id", "ts", "event_id", "behavior"]))
def test_any_json_value_in_any_field_never_raises(value, field):
    obj = {"user_id": "u", "item_id": "i", "ts": 5, field: value}
    assert isinstance(parse_event(json.dumps(obj).encode(), now_ms=NOW_MS), Interaction | Rejection)


@pytest.mark.parametrize("raw", [
    b'{"user_id": "0", "item_id": "\xed\xa0\x80", "ts": 0}',             # a surrogate's CESU-8 bytes
    b'{"user_id": "0", "item_id": "a\\ud800", "ts": 0}',                 # an escaped lone surrogate
    b'{"user_id": "0", "item_id": "i", "ts": 0, "behavior": "\\udfff"}',
    b'{"user_id": "0", "item_id": "i", "ts": 0, "event_id": "e\\ud800"}',
])
def test_a_lone_surrogate_in_a_text_field_is_rejected_as_bad_json_not_raised(raw):
    result = parse_event(raw, now_ms=NOW_MS)
    assert isinstance(result, Rejection) and result.reason.startswith("bad JSON: ")
    assert "lone surrogate" in result.reason and result.raw == raw
