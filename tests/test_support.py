"""The test support's own pure logic: reading one metric off a Prometheus exposition."""

from __future__ import annotations

import pytest
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from support.worker import metric_value


@pytest.fixture
def exposition() -> str:
    registry = CollectorRegistry()
    Counter("mindstream_events_in", "read", registry=registry).inc(3)
    dlq = Counter("mindstream_events_dlq", "dead-lettered", ["reason"], registry=registry)
    Counter("mindstream_profiles_dlq", "never incremented", ["reason"], registry=registry)
    Histogram("mindstream_batch_events", "events per batch", registry=registry).observe(4)
    dlq.labels("bad JSON").inc(2)
    dlq.labels("missing field").inc(5)
    return generate_latest(registry).decode()


def test_a_metric_reads_its_value_summed_over_its_labels(exposition):
    assert metric_value(exposition, "mindstream_events_in_total") == 3.0
    assert metric_value(exposition, "mindstream_events_dlq_total") == 7.0
    assert metric_value(exposition, "mindstream_batch_events_count") == 1.0
    assert metric_value(exposition, "mindstream_batch_events_sum") == 4.0


def test_a_declared_metric_without_samples_reads_zero(exposition):
    assert metric_value(exposition, "mindstream_profiles_dlq_total") == 0.0


@pytest.mark.parametrize("name",
                         ["mindstream_events_in", "mindstream_event_in_total", "mindstream_nothing_count"])
def test_a_metric_the_exposition_does_not_declare_fails(exposition, name):
    with pytest.raises(KeyError, match=name):
        metric_value(exposition, name)
