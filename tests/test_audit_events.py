"""The Kafka key of an `interactions` message must be its user id (issue 16): the pure rule."""

from __future__ import annotations

import json

from streams.events import Interaction, Rejection, parse_event

NOW_MS = 1_764_000_000_000
VALUE = json.dumps({"user_id": "u1", "item_id": "i9", "ts": 978300760, "event_id": "e1"}).encode()


def test_an_event_keyed_by_its_user_id_is_accepted_and_an_integer_id_matches_its_decimal_key():
    assert parse_event(VALUE, key=b"u1", now_ms=NOW_MS) == Interaction("u1", "i9", 978_300_760_000, "e1")
    numeric = json.dumps({"user_id": 42, "item_id": "i9", "ts": 1}).encode()
    assert isinstance(parse_event(numeric, key=b"42", now_ms=NOW_MS), Interaction)


def test_an_event_whose_key_is_another_user_missing_or_not_utf8_is_rejected_with_the_key_rule():
    for key, shown in ((b"u2", "key 'u2'"), (b"u1 ", "key 'u1 '"), (b"", "key ''"), (None, "no key"),
                       (b"\xffu1", "key '\ufffdu1'")):
        result = parse_event(VALUE, key=key, now_ms=NOW_MS)
        assert isinstance(result, Rejection), key
        assert result.reason.startswith(f"key is not the user id: {shown}, user_id 'u1'"), result.reason
        assert result.raw == VALUE


def test_the_value_alone_still_parses_without_a_key_to_check():
    assert parse_event(VALUE, now_ms=NOW_MS) == Interaction("u1", "i9", 978_300_760_000, "e1")
