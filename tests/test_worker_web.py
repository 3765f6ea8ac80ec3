"""Routing a user's request to the worker that owns the user, and the query-string rules, without a broker."""

from __future__ import annotations

import pytest
from kafka.partitioner.default import murmur2 as kafka_python_murmur2

from streams.worker.web import forward_to, owner_of, parse_flag, partition_of


def test_a_user_lands_in_the_partition_kafkas_default_partitioner_gives_its_raw_key():
    for user in ("u1", "c17", "42", "user@example.com"):
        expected = (kafka_python_murmur2(user.encode()) & 0x7FFFFFFF) % 4
        assert partition_of(user, 4) == expected


def test_the_owner_is_the_worker_announcing_the_users_partition():
    owners = {p: f"http://worker-{p % 2}:6066" for p in range(4)}
    user = "c17"
    assert owner_of(user, owners, 4) == owners[partition_of(user, 4)]
    assert owner_of(user, {}, 4) is None  # before the first assignment


def test_a_request_is_forwarded_only_to_another_worker_and_only_once():
    assert forward_to("http://b:6066", "http://a:6066", already_routed=False) == "http://b:6066"
    assert forward_to("http://a:6066/", "http://a:6066", already_routed=False) is None  # this worker owns it
    assert forward_to("http://b:6066", "http://a:6066", already_routed=True) is None  # passed here already
    assert forward_to(None, "http://a:6066", already_routed=False) is None  # no owner known yet


def test_query_flags_accept_true_false_forms_and_name_a_bad_one():
    assert [parse_flag("x", v) for v in ("true", "1", "YES", "false", "0", "no")] == [True] * 3 + [False] * 3
    with pytest.raises(ValueError, match="exclude_seen must be true or false"):
        parse_flag("exclude_seen", "maybe")
