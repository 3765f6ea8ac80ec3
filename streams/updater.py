"""Pure batch logic of the worker: events → histories → one tower call → store rows. No Kafka, no Milvus.

The faust agent (streams/app.py) is a thin shell around these functions:

1. `plan_batch(current_histories, events)` appends each user's new events to their history table value,
   drops duplicate deliveries (by event id) and collapses many events of one user into one recompute.
2. `recompute(runtime, histories, profiles, ...)` runs the ONNX user tower ONCE for all touched users and
   returns the rows to upsert (only the valid K'u slots, each with its merge bias; never a masked
   all-zero capsule), the keys of
   slots that are no longer valid (to delete), and one `interest-updates` message per user.

History table value (docs/ARCHITECTURE.md), JSON-able so it travels through the changelog:

    {"items": [[raw_item_id, ts_ms, event_id], ...],   # by ts, ties in arrival order; the last max_len
     "seen":  [event_id, ...]}                           # the last max_seen event ids applied, oldest first
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from itertools import chain
from operator import itemgetter
from typing import Any, Protocol

import numpy as np

from streams.events import Interaction
from streams.ids import interest_key

History = dict[str, list]


class TowerRuntime(Protocol):
    """What the updater needs of `export.runtime.UserTowerRuntime` (a fake one fits in pure-logic tests)."""

    manifest: Any

    def encode_histories(self, histories: Sequence[Sequence[str]]) -> tuple[np.ndarray, np.ndarray]: ...

    def encode_profiles(self, profiles: Sequence[Mapping[str, object] | None]) -> np.ndarray: ...

    def infer(self, history: np.ndarray, history_mask: np.ndarray, profile: np.ndarray) -> Any: ...


def empty_history() -> History:
    return {"items": [], "seen": []}


def apply_events(history: Mapping[str, list] | None, events: Sequence[Interaction], *, max_len: int,
                 max_seen: int) -> tuple[History, list[Interaction]]:
    """Append `events` (one user's, in arrival order) to `history`; return (new history, events applied).

    An event whose id is among the history's `seen` ids or its kept items' ids, or repeated within
    `events`, is a duplicate delivery and is dropped. Items are kept ordered by ts, equal ts in arrival
    order, and only the last `max_len` are kept; `seen` keeps the last `max_seen` ids (so a duplicate is
    recognised even after its item fell out of the window). The one event applied twice is one whose id is
    in neither window. The input is not modified.
    """
    history = history or empty_history()
    items = list(history.get("items", []))  # shallow: item triples are never mutated, so never copied
    seen = list(history.get("seen", []))
    # -- de-duplication: both windows (issue 16): ids of kept items as well as the last `max_seen` ids --
    # The windows are scanned in C for the batch's own ids, never hashed into a set of their own.
    batch_ids = {event.event_id for event in events}
    if batch_ids.isdisjoint(chain(seen, map(itemgetter(2), items))):
        skip: set[str] = set()
    else:
        skip = batch_ids.intersection(chain(seen, map(itemgetter(2), items)))
    applied: list[Interaction] = []
    for event in events:
        if event.event_id in skip:
            continue
        skip.add(event.event_id)
        seen.append(event.event_id)
        items.append([event.item_id, event.ts_ms, event.event_id])
        applied.append(event)
    if applied:
        items.sort(key=lambda item: item[1])  # stable: equal ts keep arrival order
    return {"items": items[-max_len:] if max_len > 0 else [], "seen": seen[-max_seen:]}, applied


def history_item_ids(history: Mapping[str, list]) -> list[str]:
    """Raw item ids of a history, oldest first (what the tower's `encode_histories` takes)."""
    return [item[0] for item in history.get("items", [])]


def latest_event_ts(history: Mapping[str, list]) -> int:
    """The newest event time (ms) a history reflects; 0 for an empty one. Items are kept ordered by ts
    (`apply_events`), so it is the last one's."""
    items = history.get("items")
    return int(items[-1][1]) if items else 0


@dataclass
class BatchPlan:
    """What one micro-batch changes: new table values and the events behind them."""

    histories: dict[str, History] = field(default_factory=dict)  # only users with at least one new event
    applied: dict[str, list[Interaction]] = field(default_factory=dict)
    duplicates: list[Interaction] = field(default_factory=list)


def plan_batch(current: Mapping[str, Mapping[str, list] | None], events: Sequence[Interaction], *,
               max_len: int, max_seen: int) -> BatchPlan:
    """Group a batch by user (first-seen order) and apply each user's events to their current history.

    `current` maps user id → the table value (None or missing = new user). Users whose events were all
    duplicates are not in `plan.histories`: nothing to write, nothing to recompute.
    """
    by_user: dict[str, list[Interaction]] = {}
    for event in events:
        by_user.setdefault(event.user_id, []).append(event)
    plan = BatchPlan()
    for user_id, user_events in by_user.items():
        new_history, applied = apply_events(current.get(user_id), user_events, max_len=max_len,
                                            max_seen=max_seen)
        applied_ids = {id(e) for e in applied}
        plan.duplicates.extend(e for e in user_events if id(e) not in applied_ids)
        if applied:
            plan.histories[user_id] = new_history
            plan.applied[user_id] = applied
    return plan


@dataclass(frozen=True)
class UserInterests:
    """The valid interest vectors of one user after one recompute.

    interest_vectors: (K'u, d) float32, only valid slots; `slots` their slot numbers in the tower's output;
    interest_bias: (K'u,) float32, each one's logit in the 'mixture' merge (zeros under max).
    """

    user_id: str
    slots: list[int]
    interest_vectors: np.ndarray
    event_ts_ms: int
    known_items: int
    interest_bias: np.ndarray | None = None


Profiles = Mapping[str, Mapping[str, object] | None]


def compute_interests(runtime: TowerRuntime, histories: Mapping[str, Mapping[str, list]],
                      profiles: Profiles | None = None) -> list[UserInterests]:
    """Run the user tower once for every user in `histories` (a batch of B users).

    A user none of whose items the model knows gets no vectors (cold start): the tower would still emit
    K'u = 1 "interest" built from nothing but padding, which must never reach the store.
    """
    user_ids = list(histories)
    if not user_ids:
        return []
    profiles = profiles or {}
    # (B, L) each
    history, history_mask = runtime.encode_histories([history_item_ids(histories[u]) for u in user_ids])
    profile = runtime.encode_profiles([profiles.get(u) for u in user_ids])  # (B, P)
    out = runtime.infer(history, history_mask, profile)  # (B, K, d), (B, K)
    vectors = np.asarray(out.interest_vectors, dtype=np.float32)
    biases = np.asarray(out.interest_bias, dtype=np.float32)
    has_known_items = np.asarray(history_mask, dtype=bool).any(axis=1)  # (B,)
    valid = np.asarray(out.valid_interest_mask, dtype=bool) & has_known_items[:, None]
    result = []
    for b, user_id in enumerate(user_ids):
        slots = [int(s) for s in np.flatnonzero(valid[b])]
        result.append(UserInterests(user_id=user_id, slots=slots, interest_vectors=vectors[b, slots],
                                    event_ts_ms=latest_event_ts(histories[user_id]),
                                    known_items=int(np.asarray(history_mask[b]).sum()),
                                    interest_bias=biases[b, slots]))
    return result


@dataclass
class Recompute:
    """Everything one batch writes: store rows + keys to delete, and the `interest-updates` messages."""

    rows: list[dict[str, Any]]
    delete_keys: list[str]
    updates: list[dict[str, Any]]
    interests: list[UserInterests]


def store_operations(interests: Sequence[UserInterests], *, num_interests: int, model_version: str,
                     updated_at_ms: int) -> tuple[list[dict[str, Any]], list[str]]:
    """Rows for every valid slot and delete keys for every other slot 0..K-1 of each user.

    Primary keys are unique within the call because each user appears once in `interests`.
    """
    rows: list[dict[str, Any]] = []
    delete_keys: list[str] = []
    for ui in interests:
        biases = np.zeros(len(ui.slots)) if ui.interest_bias is None else ui.interest_bias
        for slot, vector, bias in zip(ui.slots, ui.interest_vectors, biases.tolist(), strict=True):
            rows.append({"pk": interest_key(ui.user_id, slot), "user_id": ui.user_id, "slot": slot,
                         # tolist: far faster than float(x) per element
                         "vector": vector.tolist(), "bias": bias, "model_version": model_version,
                         "event_ts_ms": ui.event_ts_ms, "updated_at_ms": updated_at_ms})
        valid = set(ui.slots)
        delete_keys.extend(interest_key(ui.user_id, s) for s in range(num_interests) if s not in valid)
    return rows, delete_keys


def interest_rows(user_id: str, interest_vectors: np.ndarray, valid_interest_mask: np.ndarray, *,
                  model_version: str, event_ts_ms: int, updated_at_ms: int | None = None,
                  interest_bias: np.ndarray | None = None) -> tuple[list[dict[str, Any]], list[str]]:
    """One user's tower output → `store_operations` (rows to write, keys to delete), without a runtime.

    interest_vectors (K, d), valid_interest_mask (K,) bool: valid slots become rows, the others delete keys;
    interest_bias (K,) float: each slot's merge bias (default 0).
    """
    vectors = np.asarray(interest_vectors, dtype=np.float32)
    mask = np.asarray(valid_interest_mask, dtype=bool)
    if vectors.ndim != 2 or mask.shape != (vectors.shape[0],):
        raise ValueError(f"expected interest_vectors (K, d) and valid_interest_mask (K,), "
                         f"got {vectors.shape} and {mask.shape}")
    slots = [int(s) for s in np.flatnonzero(mask)]
    bias = None if interest_bias is None else np.asarray(interest_bias, dtype=np.float32)[slots]
    interests = UserInterests(user_id=user_id, slots=slots, interest_vectors=vectors[slots],
                              event_ts_ms=int(event_ts_ms), known_items=0, interest_bias=bias)
    updated = int(updated_at_ms if updated_at_ms is not None else time.time() * 1000)
    return store_operations([interests], num_interests=vectors.shape[0], model_version=model_version,
                            updated_at_ms=updated)


def recompute(runtime: TowerRuntime, histories: Mapping[str, Mapping[str, list]],
              profiles: Mapping[str, Mapping[str, object] | None] | None, *, updated_at_ms: int) -> Recompute:
    """One tower call for the batch → store operations and one `interest-updates` message per user."""
    manifest = runtime.manifest
    model_version = str(_get(manifest, "model_version"))
    interests = compute_interests(runtime, histories, profiles)
    rows, delete_keys = store_operations(interests, num_interests=int(_get(manifest, "num_interests")),
                                         model_version=model_version, updated_at_ms=updated_at_ms)
    updates = [{"user_id": ui.user_id, "model_version": model_version, "num_interests": len(ui.slots),
                "event_ts_ms": ui.event_ts_ms, "updated_at_ms": updated_at_ms} for ui in interests]
    return Recompute(rows=rows, delete_keys=delete_keys, updates=updates, interests=interests)


def _get(manifest: Any, name: str) -> Any:
    """The manifest may be a dict or an object with attributes; accept both."""
    return manifest[name] if isinstance(manifest, Mapping) else getattr(manifest, name)
