"""Small generic helpers for tests: free ports, waiting for a condition, unique names, Kafka topics.

Import as `from helpers import ...`: pytest puts tests/ on sys.path (rootdir-style imports, no __init__.py).
"""

from __future__ import annotations

import signal
import socket
import sys
import time
import uuid
from collections.abc import Callable, Iterable
from typing import TypeVar

T = TypeVar("T")


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def die_with_parent() -> None:
    """`preexec_fn` for subprocess.Popen: the child gets SIGTERM when the test process dies (Linux only).

    A pytest killed outright (SIGKILL, a CI timeout) then leaves no worker process behind on a shared machine.
    """
    if sys.platform.startswith("linux"):
        import ctypes

        PR_SET_PDEATHSIG = 1
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


def wait_until(
    predicate: Callable[[], T], timeout: float, interval: float = 0.1, what: str = "condition"
) -> T:
    """Call `predicate` until it returns something truthy and return that; raise TimeoutError naming `what`.

    The timeout is a ceiling against hanging forever, not a performance assertion.
    """
    deadline = time.monotonic() + timeout
    while True:
        result = predicate()
        if result:
            return result
        if time.monotonic() >= deadline:
            raise TimeoutError(f"{what} not reached within {timeout:g}s")
        time.sleep(interval)


def unique_name(prefix: str) -> str:
    """`prefix` plus a short random suffix, so tests sharing one broker never share a topic or group."""
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


def create_topics(bootstrap: str, partitions_by_topic: dict[str, int]) -> None:
    """Create topics (replication factor 1) and wait until every partition has a leader.

    Waiting for leaders spares the first producer a round of LEADER_NOT_AVAILABLE retries.
    """
    from kafka import KafkaAdminClient

    admin = KafkaAdminClient(bootstrap_servers=bootstrap, client_id="mindstream-tests")
    try:
        admin.create_topics(
            {
                name: {"num_partitions": count, "replication_factor": 1}
                for name, count in partitions_by_topic.items()
            },
            wait_for_metadata=True,
        )
    finally:
        admin.close()


def delete_topics(bootstrap: str, topics: Iterable[str]) -> None:
    """Delete topics; ones already gone are fine (best effort cleanup on a shared broker)."""
    from kafka import KafkaAdminClient
    from kafka.errors import UnknownTopicOrPartitionError

    topics = list(topics)
    if not topics:
        return
    admin = KafkaAdminClient(bootstrap_servers=bootstrap, client_id="mindstream-tests")
    try:
        admin.delete_topics(topics)
    except UnknownTopicOrPartitionError:
        pass
    finally:
        admin.close()
