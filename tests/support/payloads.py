"""Hypothesis strategies for interaction payloads: anything at all, and payloads that know their verdict.

`payloads()` draws whatever a producer might send (random bytes, any JSON, events with wrong types): for
properties that hold of every input. `labelled_payloads()` draws a valid event and breaks at most one rule
of the wire contract (streams/events.py), so it knows, without asking the parser, whether the event must be
accepted or which reason it must be dead-lettered with.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass

from hypothesis import HealthCheck, Phase, given, seed, settings
from hypothesis import strategies as st

NOW_S = int(time.time())  # strategies must not read the clock while drawing (hypothesis replays draws)
_IDS = st.one_of(st.text(max_size=140), st.integers(min_value=-(2**70), max_value=2**70), st.booleans(),
                 st.none(),
                 st.floats(allow_nan=True), st.lists(st.integers(), max_size=2), st.just("u" * 128),
                 st.just("u" * 129))
_TS = st.one_of(st.integers(min_value=-(2**70), max_value=2**70),
                st.floats(allow_nan=True, allow_infinity=True),
                st.text(max_size=12), st.none(), st.booleans(), st.just(NOW_S + 30 * 86400),
                st.just(NOW_S * 1000 + 86_400_000 * 2), st.just(-1), st.just(0))


@st.composite
def payloads(draw: st.DrawFn) -> bytes:
    """Random bytes, non-JSON text, JSON of any shape, and event objects with wrong types, huge ids, unicode,
    missing keys, negative / future timestamps, unknown items; some valid events among them."""
    kind = draw(st.integers(0, 6))
    if kind >= 5:  # a valid event, but unicode / unknown items, integer ids, float seconds, extra fields
        obj = {"user_id": draw(st.one_of(st.from_regex(r"[A-Za-z0-9_.:@\-]{1,128}", fullmatch=True),
                                         st.integers(min_value=0, max_value=2**70))),
               "item_id": draw(st.one_of(st.sampled_from(["c0_1", "c1_2", "c3_9", "nope-item"]),
                                         st.text(st.characters(min_codepoint=32, exclude_characters="\x7f"),
                                                 min_size=1, max_size=128),
                                         st.integers(min_value=0, max_value=2**70))),
               "ts": draw(st.one_of(st.integers(0, NOW_S), st.floats(0, float(NOW_S)),
                                    st.integers(10**11, NOW_S * 1000))),
               draw(st.text(max_size=6).filter(lambda k: k not in ("user_id", "item_id", "ts", "event_id",
                                                                    "behavior"))): 1}
        if draw(st.booleans()):
            obj["event_id"] = draw(st.text(min_size=1, max_size=128))
        return json.dumps(obj, ensure_ascii=draw(st.booleans())).encode("utf-8", "surrogatepass")
    if kind == 0:
        return draw(st.binary(max_size=64))
    if kind == 1:
        return draw(st.text(max_size=64)).encode("utf-8", "surrogatepass")
    if kind == 2:
        return json.dumps(draw(st.recursive(
            st.none() | st.booleans() | st.floats() | st.text(max_size=8),
            lambda inner: (st.lists(inner, max_size=3)
                           | st.dictionaries(st.text(max_size=5), inner, max_size=3)),
            max_leaves=8))).encode()
    obj = {"user_id": draw(st.one_of(st.from_regex(r"[A-Za-z0-9_.:@\-]{1,20}", fullmatch=True), _IDS)),
           "item_id": draw(st.one_of(st.sampled_from(["c0_1", "c1_2", "nope-item"]), _IDS)),
           "ts": draw(st.one_of(st.just(NOW_S), st.just(NOW_S * 1000), _TS)),
           "event_id": draw(st.one_of(st.none(), _IDS)),
           "behavior": draw(st.one_of(st.none(), st.text(max_size=40), _IDS))}
    for key in draw(st.lists(st.sampled_from(list(obj)), max_size=2)):
        obj.pop(key, None)
    if kind == 4:
        obj[draw(st.text(max_size=10))] = draw(_IDS)
    return json.dumps(obj, ensure_ascii=draw(st.booleans())).encode("utf-8", "surrogatepass")


@dataclass(frozen=True)
class LabelledPayload:
    """A message and its verdict by construction: `expected` is None (must be accepted) or the first words
    of the reason it must be rejected with."""

    key: bytes
    raw: bytes
    expected: str | None


_USER_IDS = st.one_of(st.from_regex(r"[A-Za-z0-9_.:@\-]{1,128}", fullmatch=True),
                      st.integers(min_value=0, max_value=2**70))
# Printable text without surrogates (a lone surrogate is not UTF-8) and without control characters.
_PRINTABLE = st.characters(min_codepoint=32, exclude_characters="\x7f", exclude_categories=("Cs",))
_ITEM_IDS = st.one_of(st.sampled_from(["c0_1", "c1_2", "c3_9", "nope-item"]),
                      st.text(_PRINTABLE, min_size=1, max_size=128),
                      st.integers(min_value=0, max_value=2**70))
_VALID_TS = st.one_of(st.integers(0, NOW_S), st.floats(0, float(NOW_S)), st.integers(10**11, NOW_S * 1000))
_NOT_AN_ID = st.one_of(st.booleans(), st.floats(allow_nan=False), st.lists(st.integers(), max_size=2),
                       st.dictionaries(st.text(max_size=3), st.integers(), max_size=2),
                       st.integers(min_value=-(2**70), max_value=-1))
_NOT_A_NUMBER = st.one_of(st.text(max_size=12), st.booleans(), st.lists(st.integers(), max_size=2))
_BAD_USER_IDS = st.one_of(
    st.just(""),
    st.from_regex(r"[A-Za-z0-9_.:@\-]{129,200}", fullmatch=True),
    st.tuples(st.text(max_size=10), st.sampled_from(" !#$/\\\"'é\n\x00漢"), st.text(max_size=10))
    .map(lambda parts: parts[0] + parts[1] + parts[2]),
)
_BROKEN_RULES = (
    None, None, None, "bad JSON (not UTF-8)", "bad JSON (truncated)", "not an object", "missing field",
    "wrong type for user_id", "user_id format", "wrong type for item_id", "item_id is empty",
    "item_id too long",
    "item_id contains control characters", "wrong type for ts", "ts is not a finite number", "ts negative",
    "ts too far in the future", "wrong type for behavior", "behavior too long", "wrong type for event_id",
    "event_id length", "key is not the user id",
)


@st.composite
def labelled_payloads(draw: st.DrawFn) -> LabelledPayload:
    """A valid event with at most one rule of the wire contract broken, and the verdict that must follow."""
    obj: dict[str, object] = {"user_id": draw(_USER_IDS), "item_id": draw(_ITEM_IDS), "ts": draw(_VALID_TS)}
    if draw(st.booleans()):
        obj["event_id"] = draw(st.one_of(st.text(_PRINTABLE, min_size=1, max_size=128),
                                         st.integers(min_value=0, max_value=2**70)))
    if draw(st.booleans()):
        obj["behavior"] = draw(st.text(_PRINTABLE, max_size=32))
    if draw(st.booleans()):  # unknown extra fields are ignored
        obj["extra"] = draw(st.one_of(st.integers(), st.text(max_size=5)))
    key = str(obj["user_id"]).encode()
    rule = draw(st.sampled_from(_BROKEN_RULES))
    expected = rule
    if rule == "missing field":
        name = draw(st.sampled_from(["user_id", "item_id", "ts"]))
        if draw(st.booleans()):
            del obj[name]
        else:
            obj[name] = None
        expected = f"missing field {name}"
    elif rule in ("wrong type for user_id", "wrong type for item_id", "wrong type for event_id"):
        obj[rule.rsplit(" ", 1)[1]] = draw(_NOT_AN_ID)
    elif rule == "user_id format":
        obj["user_id"] = draw(_BAD_USER_IDS)
    elif rule == "item_id is empty":
        obj["item_id"] = ""
    elif rule == "item_id too long":
        obj["item_id"] = draw(st.text(_PRINTABLE, min_size=129, max_size=300))
    elif rule == "item_id contains control characters":
        obj["item_id"] = draw(st.text(_PRINTABLE, max_size=8)) + draw(st.sampled_from("\x00\x07\t\n\x1f\x7f"))
    elif rule == "wrong type for ts":
        obj["ts"] = draw(_NOT_A_NUMBER)
    elif rule == "ts is not a finite number":
        obj["ts"] = draw(st.sampled_from([float("nan"), float("inf")]))
    elif rule == "ts negative":
        obj["ts"] = draw(st.one_of(st.integers(max_value=-1),
                                   st.floats(max_value=-1e-3, allow_infinity=False)))
    elif rule == "ts too far in the future":  # more than a day ahead, in seconds or in milliseconds
        ahead_s = draw(st.integers(2 * 86_400, 3650 * 86_400))
        obj["ts"] = draw(st.sampled_from([NOW_S + ahead_s, (NOW_S + ahead_s) * 1000]))
    elif rule == "wrong type for behavior":
        obj["behavior"] = draw(st.one_of(st.integers(), st.booleans(), st.lists(st.integers(), max_size=2)))
    elif rule == "behavior too long":
        obj["behavior"] = draw(st.text(_PRINTABLE, min_size=33, max_size=80))
    elif rule == "event_id length":
        obj["event_id"] = draw(st.one_of(st.just(""), st.text(_PRINTABLE, min_size=129, max_size=200)))
    if rule == "not an object":
        raw = json.dumps(draw(st.one_of(st.lists(st.integers(), max_size=3), st.integers(),
                                        st.text(max_size=8),
                                        st.booleans(), st.just([obj])))).encode()
    else:
        raw = json.dumps(obj, ensure_ascii=draw(st.booleans())).encode()
    if rule == "bad JSON (not UTF-8)":
        raw = b"\xff" + raw
    elif rule == "bad JSON (truncated)":
        raw = raw[: draw(st.integers(1, len(raw) - 1))]
    if rule is not None and rule.startswith("bad JSON"):
        expected = "bad JSON"
    if rule == "key is not the user id":  # another user's id, a near miss, or no key at all
        key = draw(st.sampled_from([b"someone-else", key + b"x", b" " + key, b""]))
    if rule in ("wrong type for user_id", "user_id format", "not an object", "bad JSON (not UTF-8)",
                "bad JSON (truncated)") or (rule == "missing field" and expected.endswith("user_id")):
        key = b"fz-key"
    return LabelledPayload(key, raw, expected)


def examples(strategy: st.SearchStrategy, n: int, seed_: int = 20261129) -> list:
    """`n` values drawn as hypothesis draws them for a test (varied: its first example alone is the
    simplest)."""
    collected: list = []

    @seed(seed_)
    @settings(max_examples=n, deadline=None, database=None, phases=[Phase.generate],
              suppress_health_check=list(HealthCheck))
    @given(strategy)
    def collect(value: object) -> None:
        collected.append(value)

    collect()
    return collected
