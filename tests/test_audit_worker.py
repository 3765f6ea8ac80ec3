"""Audit findings through a real worker (issue 16): the Kafka key of an event must be its user id."""

from __future__ import annotations

import json

from support.basics import wait_until
from support.worker import committed_lag, dlq_messages

WAIT_S = 240  # ceiling against hanging (2 shared cores), not a performance assertion


def test_an_event_keyed_by_another_user_or_by_nothing_is_dead_lettered_and_changes_no_history(worker,
                                                                                             runtime):
    item = runtime.item_ids()[0]

    def value(user: str, ts: float) -> bytes:
        return json.dumps({"user_id": user, "item_id": item, "ts": ts, "event_id": f"{user}-{ts}"}).encode()

    before = worker.metric("mindstream_events_in_total")
    worker.produce([(b"key-alice", value("key-bob", 1_700_000_000)),
                    (None, value("key-carol", 1_700_000_001)),
                    (b"key-dave", value("key-dave", 1_700_000_002))])
    wait_until(lambda: worker.metric("mindstream_events_in_total") >= before + 3, WAIT_S,
               what="3 events read")
    worker.wait_for(lambda: committed_lag(worker) == 0, WAIT_S, what="the 3 events acknowledged")
    assert worker.interests("key-dave")["interests"]
    # Nothing of the two others reached a table or the store, under either name.
    for user in ("key-alice", "key-bob", "key-carol"):
        assert worker.interests(user)["interests"] == [], user
    dead = [m for m in dlq_messages(worker.env) if m.value.startswith(b'{"user_id": "key-')]
    reasons = {m.key: dict(m.headers)["mindstream-reason"].decode() for m in dead}
    assert reasons == {
        b"key-alice": "key is not the user id: key 'key-alice', user_id 'key-bob'; key each event by its "
                      "user id (UTF-8)",
        None: "key is not the user id: no key, user_id 'key-carol'; key each event by its user id (UTF-8)"}
