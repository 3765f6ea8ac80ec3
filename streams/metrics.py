"""Prometheus metrics of the worker, served at `GET /metrics` on its web server.

One registry per process (not the global default one), so importing this module twice in tests or
embedding the worker elsewhere never collides.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

REGISTRY = CollectorRegistry(auto_describe=True)

EVENTS_IN = Counter("mindstream_events_in", "Messages read from the interactions topic", registry=REGISTRY)
EVENTS_APPLIED = Counter("mindstream_events_applied", "Events appended to a user's history",
                         registry=REGISTRY)
EVENTS_DUPLICATE = Counter("mindstream_events_duplicate",
                           "Duplicate deliveries dropped by event id", registry=REGISTRY)
EVENTS_DLQ = Counter("mindstream_events_dlq", "Messages sent to the dead-letter topic, by reason kind",
                     ["kind"], registry=REGISTRY)
PROFILES_IN = Counter("mindstream_profiles_in", "Messages read from the user-profiles topic",
                      registry=REGISTRY)
USERS_RECOMPUTED = Counter("mindstream_users_recomputed", "Users whose interests were recomputed",
                           registry=REGISTRY)
BATCH_RETRIES = Counter("mindstream_batch_retries", "Retries of a batch's tower+store step",
                        registry=REGISTRY)
BATCH_EVENTS = Histogram("mindstream_batch_events", "Events per micro-batch",
                         buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024), registry=REGISTRY)
BATCH_USERS = Histogram("mindstream_batch_users", "Distinct users recomputed per micro-batch",
                        buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024), registry=REGISTRY)
_LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
TOWER_SECONDS = Histogram("mindstream_tower_seconds", "Wall time of one user-tower call (encode + infer)",
                          buckets=_LATENCY_BUCKETS, registry=REGISTRY)
UPSERT_SECONDS = Histogram("mindstream_upsert_seconds",
                           "Wall time of one vector-store write (the new generation's insert)",
                           buckets=_LATENCY_BUCKETS, registry=REGISTRY)
CLEANUP_SECONDS = Histogram("mindstream_cleanup_seconds",
                            "Wall time of one clean-up of replaced generations (between writes)",
                            buckets=_LATENCY_BUCKETS, registry=REGISTRY)
SAVE_SECONDS = Histogram("mindstream_save_seconds",
                         "Wall time of a batch's save after its write: update messages sent, histories saved",
                         buckets=_LATENCY_BUCKETS, registry=REGISTRY)
FRESHNESS_SECONDS = Histogram(
    "mindstream_freshness_seconds",
    "now - event time, when the event's vectors are written (replays of old logs land in +Inf)",
    buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0), registry=REGISTRY)
RECALL_SECONDS = Histogram("mindstream_recall_seconds", "Wall time of one recall request",
                           buckets=_LATENCY_BUCKETS, registry=REGISTRY)
ASSIGNED_PARTITIONS = Gauge("mindstream_assigned_partitions",
                            "Partitions of the interactions topic this worker owns now "
                            "(moves on a rebalance)",
                            registry=REGISTRY)
STALL_RECOVERIES = Counter("mindstream_stall_recoveries",
                           "Seeks back to the committed offsets after partitions stopped moving with a lag",
                           registry=REGISTRY)
STORE_DOWN = Gauge("mindstream_store_down", "1 while the vector store cannot be reached (the worker retries)",
                   registry=REGISTRY)
MODEL_INFO = Gauge("mindstream_model_info", "The artifact the worker serves (value 1)", ["model_version"],
                   registry=REGISTRY)


def render() -> tuple[bytes, str]:
    """The Prometheus text exposition of every metric, and its content type."""
    return generate_latest(REGISTRY), CONTENT_TYPE_LATEST


def dlq_kind(reason: str) -> str:
    """A low-cardinality label for a DLQ reason: its words before the first ':' (`missing field user_id`)."""
    head = reason.split(":", 1)[0].strip()
    return head[:48] or "unknown"
