"""Parse and validate one message: raw Kafka bytes → `Interaction` | `Profile` | `Rejection` (for the DLQ).

The `interactions` topic carries one JSON object per message, keyed by the user id (UTF-8):

    {"user_id": "u42", "item_id": "1193", "ts": 978300760, "event_id": "e-81", "behavior": "click"}

- `user_id` (required, string or integer): 1–128 characters of `A-Z a-z 0-9 _ . : @ -` (an integer ≥ 0 becomes
  its decimal string)
- `item_id` (required, string or integer): 1–128 characters, no control characters (an integer ≥ 0 becomes its
  decimal string); raw id, as in the artifact's vocabulary
- `ts` (required, number): event time since the Unix epoch: values below 10^11 are seconds, values from 10^11
  up are milliseconds (10^11 s is the year 5138, 10^11 ms is March 1973); must be ≥ 0 and at most
  `max_future_s` (default 1 day) ahead of now; stored as integer milliseconds
- `event_id` (optional, string or integer): 1–128 characters; names one delivery so a duplicate is dropped.
  Absent: derived as `sha256(user, item, ts_ms, behavior)`, so the same event sent twice is recognised
- `behavior` (optional, string): at most 32 characters (`click`, `rating`, `purchase` …); default `""`

Unknown extra fields are ignored. Booleans are not numbers here. An item id the model does not know is
accepted (it is kept in the user's history, so a later model with a larger vocabulary uses it) but has no
effect on the current model's vectors.

The message key must be the user id, as UTF-8 bytes (`b"u42"`; an integer user id as its decimal string):
the worker's tables live in the partition of the key while requests are routed by the user id, so a message
whose key is missing or differs from its `user_id` is rejected (`key is not the user id: ...`).

A `user-profiles` message (`parse_profile`) is keyed by the user id; its value is a JSON object of profile
field -> value, or null (a tombstone) to delete the profile.

Every rejection names the field and the rule, e.g. `missing field user_id`, `wrong type for ts: expected a
number, got string`, `user_id format: ...`, `item_id too long: ...`, `ts too far in the future: ...`.
"""

from __future__ import annotations

import enum
import hashlib
import json
import math
import re
import time
from dataclasses import dataclass

from streams.ids import MAX_EVENT_ID_LENGTH, MAX_ITEM_ID_LENGTH, MAX_USER_ID_LENGTH, USER_ID_PATTERN

MAX_BEHAVIOR_LENGTH = 32
# Below this a timestamp is read as seconds, from it up as milliseconds (see the module docstring).
SECONDS_MS_THRESHOLD = 10**11
DEFAULT_MAX_FUTURE_S = 86_400.0

_CONTROL_CHARS = re.compile(r"[\x00-\x1f\x7f]")
# json.loads lets a lone surrogate through (an escaped \ud800, or its CESU-8 bytes): not text, so not an id.
_SURROGATES = re.compile("[\ud800-\udfff]")


@dataclass(frozen=True)
class Interaction:
    """One valid behaviour of one user: what the history table stores (ids are raw strings, ts in ms)."""

    user_id: str
    item_id: str
    ts_ms: int
    event_id: str
    behavior: str = ""


@dataclass(frozen=True)
class Profile:
    """A user's profile fields (field -> value), or None when the message deletes the profile."""

    user_id: str
    fields: dict[str, object] | None


@dataclass(frozen=True)
class Rejection:
    """An event that cannot be processed: the reason (one line) and the original bytes, for the DLQ."""

    reason: str
    raw: bytes


class _ValueOnly(enum.Enum):
    VALUE_ONLY = "value only"


# `parse_event(raw)` without a key: the value's wire format alone (encoded events, logs), no key to check.
VALUE_ONLY = _ValueOnly.VALUE_ONLY


def parse_event(raw: bytes | None, *, key: bytes | str | None | _ValueOnly = VALUE_ONLY,
                now_ms: int | None = None,
                max_future_s: float = DEFAULT_MAX_FUTURE_S) -> Interaction | Rejection:
    """Decode and validate one message: its value and, for a Kafka message, its `key` (None = the message
    has no key, a rejection), which must be the user id. Pure apart from reading the clock when `now_ms` is
    None."""
    if raw is None:
        return Rejection("empty message: value is null (a tombstone), expected a JSON object", b"")
    try:
        obj = json.loads(raw)
    except UnicodeDecodeError:
        return Rejection("bad JSON: value is not UTF-8 text", raw)
    except (json.JSONDecodeError, RecursionError) as exc:
        return Rejection(f"bad JSON: {exc}", raw)
    if not isinstance(obj, dict):
        return Rejection(f"not an object: expected a JSON object, got {_json_type(obj)}", raw)

    for name in ("user_id", "item_id", "ts"):
        if name not in obj or obj[name] is None:
            return Rejection(f"missing field {name}", raw)

    user_id = _id_text(obj["user_id"])
    if user_id is None:
        return Rejection(f"wrong type for user_id: expected a string or a non-negative integer, "
                         f"got {_json_type(obj['user_id'])}", raw)
    if not USER_ID_PATTERN.fullmatch(user_id):
        return Rejection(f"user_id format: {user_id[:80]!r} must be 1-{MAX_USER_ID_LENGTH} characters "
                         f"of A-Z a-z 0-9 _ . : @ -", raw)

    if key is not VALUE_ONLY:
        key_text = key.decode("utf-8", "replace") if isinstance(key, bytes) else key
        if key_text != user_id:
            shown = "no key" if key_text is None else f"key {key_text[:80]!r}"
            return Rejection(f"key is not the user id: {shown}, user_id {user_id!r}; key each event by its "
                             f"user id (UTF-8)", raw)

    item_id = _id_text(obj["item_id"])
    if item_id is None:
        return Rejection(f"wrong type for item_id: expected a string or a non-negative integer, "
                         f"got {_json_type(obj['item_id'])}", raw)
    if not item_id:
        return Rejection("item_id is empty", raw)
    if len(item_id) > MAX_ITEM_ID_LENGTH:
        return Rejection(f"item_id too long: {len(item_id)} characters, at most {MAX_ITEM_ID_LENGTH}", raw)
    if _CONTROL_CHARS.search(item_id):
        return Rejection("item_id contains control characters", raw)
    if _SURROGATES.search(item_id):
        return Rejection("bad JSON: item_id holds a lone surrogate, which is not Unicode text", raw)

    ts = obj["ts"]
    if isinstance(ts, bool) or not isinstance(ts, int | float):
        return Rejection(f"wrong type for ts: expected a number (epoch seconds or milliseconds), "
                         f"got {_json_type(ts)}", raw)
    if not math.isfinite(ts):
        return Rejection("ts is not a finite number", raw)
    if ts < 0:
        return Rejection(f"ts negative: {ts}", raw)
    ts_ms = int(round(ts * 1000)) if ts < SECONDS_MS_THRESHOLD else int(ts)
    now_ms = int(time.time() * 1000) if now_ms is None else now_ms
    if ts_ms > now_ms + max_future_s * 1000:
        return Rejection(f"ts too far in the future: {ts_ms} ms is more than {max_future_s:g} s after now "
                         f"({now_ms} ms); send epoch seconds or milliseconds", raw)

    behavior = obj.get("behavior")
    if behavior is None:
        behavior = ""
    elif not isinstance(behavior, str):
        return Rejection(f"wrong type for behavior: expected a string, got {_json_type(behavior)}", raw)
    elif len(behavior) > MAX_BEHAVIOR_LENGTH:
        return Rejection(f"behavior too long: {len(behavior)} characters, at most {MAX_BEHAVIOR_LENGTH}", raw)
    elif _SURROGATES.search(behavior):
        return Rejection("bad JSON: behavior holds a lone surrogate, which is not Unicode text", raw)

    event_id = obj.get("event_id")
    if event_id is None:
        event_id = derive_event_id(user_id, item_id, ts_ms, behavior)
    else:
        event_id = _id_text(event_id)
        if event_id is None:
            return Rejection(f"wrong type for event_id: expected a string or a non-negative integer, "
                             f"got {_json_type(obj['event_id'])}", raw)
        if not 1 <= len(event_id) <= MAX_EVENT_ID_LENGTH:
            return Rejection(f"event_id length {len(event_id)}: must be 1-{MAX_EVENT_ID_LENGTH} characters",
                             raw)
        if _SURROGATES.search(event_id):
            return Rejection("bad JSON: event_id holds a lone surrogate, which is not Unicode text", raw)
    return Interaction(user_id=user_id, item_id=item_id, ts_ms=ts_ms, event_id=event_id, behavior=behavior)


def parse_profile(key: bytes | str | None, raw: bytes | None) -> Profile | Rejection:
    """Decode and validate one `user-profiles` message (key = user id). Pure."""
    user_id = key.decode("utf-8", "replace") if isinstance(key, bytes) else str(key or "")
    if not USER_ID_PATTERN.fullmatch(user_id):
        return Rejection(f"user_id format: profile key {user_id[:80]!r} is not a valid user id", raw or b"")
    if raw is None:
        return Profile(user_id, None)
    try:
        fields = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        return Rejection(f"bad JSON: {exc}", raw)
    if not isinstance(fields, dict):
        return Rejection("not an object: a profile must be a JSON object of field -> value", raw)
    return Profile(user_id, fields)


def derive_event_id(user_id: str, item_id: str, ts_ms: int, behavior: str) -> str:
    """Deterministic id of an event sent without one: the same (user, item, time, behavior) is the same
    event."""
    digest = hashlib.sha256("\x1f".join((user_id, item_id, str(ts_ms), behavior)).encode()).hexdigest()
    return "h:" + digest[:24]


def encode_event(user_id: str | int, item_id: str | int, ts: int | float, *, event_id: str | None = None,
                 behavior: str | None = None) -> bytes:
    """The wire form of one event (what `mind-stream produce` sends)."""
    obj: dict[str, object] = {"user_id": user_id, "item_id": item_id, "ts": ts}
    if event_id is not None:
        obj["event_id"] = event_id
    if behavior is not None:
        obj["behavior"] = behavior
    return json.dumps(obj, separators=(",", ":")).encode()


def _id_text(value: object) -> str | None:
    """Ids may be strings or non-negative integers; anything else (bool, float, list …) is a wrong type."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return str(value) if value >= 0 else None
    if isinstance(value, str):
        return value
    return None


def _json_type(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer" if value >= 0 else "negative integer"
    if isinstance(value, float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    if isinstance(value, dict):
        return "object"
    return type(value).__name__
