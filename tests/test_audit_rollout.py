"""A rollout next to a running worker leaves no user stale (issue 16): the worker keeps applying events with
the old model while `rollout` writes the new version from a snapshot, and after the pointer switch. Real
broker, a Milvus server on TCP (a Lite file is one process's), `mind-stream worker` as a subprocess; every
user is checked against an offline recompute under the new model."""

from __future__ import annotations

import pytest
from support.artifact import build_tiny_artifact
from support.basics import free_port
from support.milvus import MilvusTcpServer
from support.synthetic_stream import (
    count_mismatches,
    expected_vectors,
    make_stream,
    produce_stream,
    stored_vectors_of,
)
from support.worker import Worker, cleanup_topics, committed_lag, index_items, worker_env

from export.runtime import UserTowerRuntime
from streams.config import Settings

pytestmark = pytest.mark.timeout(600)
WAIT_S = 240  # ceiling against hanging (2 shared cores), not a performance assertion


def test_a_rollout_next_to_a_running_worker_leaves_every_user_equal_to_the_new_models_recompute(
        kafka_bootstrap, artifact_dir, runtime, tmp_path):
    from streams.ops import rollout

    server = MilvusTcpServer(tmp_path / "milvus-server.db", free_port())
    server.start()
    env = worker_env(kafka_bootstrap, tmp_path, MINDSTREAM_MILVUS_URI=server.uri, MINDSTREAM_BATCH_SIZE="64")
    new_dir = build_tiny_artifact(tmp_path / "artifact-v2", num_items=40, seed=7)
    new_runtime = UserTowerRuntime.load(new_dir)
    old_v, new_v = runtime.manifest.model_version, new_runtime.manifest.model_version
    stream = make_stream(list(runtime.item_ids()), 150, 1500, seed_=5, user_prefix="ro")
    third = len(stream.messages) // 3
    parts = [stream.messages[:third], stream.messages[third : 2 * third], stream.messages[2 * third :]]
    worker = Worker(env=env, artifact_dir=artifact_dir, log_path=tmp_path / "worker.log")
    try:
        index_items(env, artifact_dir)
        worker.start()

        def deliver(part: list) -> None:
            """Produce `part` and wait until the running (old-model) worker has applied all of it."""
            produce_stream(kafka_bootstrap, env["MINDSTREAM_TOPIC_INTERACTIONS"], part)
            worker.wait_for(lambda: committed_lag(worker) == 0, WAIT_S, interval=0.5,
                            what="the worker applied every event produced")

        deliver(parts[0])
        phases: list[str] = []

        def on_phase(name: str) -> None:
            phases.append(name)
            if name == "snapshot":  # applied after the snapshot was read, before the switch
                deliver(parts[1])
            elif name == "activated":  # applied by the old-model worker after the switch
                deliver(parts[2])

        settings = Settings.from_env(env)
        store = settings.open_store()
        try:
            previous, version, stats = rollout(settings, new_dir, store=store, on_phase=on_phase)
            assert store.current_version() == new_v
        finally:
            store.close()
        assert (previous, version) == (old_v, new_v)
        assert phases == ["snapshot", "activated", "caught-up"]
        print(f"\nrollout next to a worker: {stats.users_written} users from the snapshot, "
              f"{stats.users_caught_up} caught up in {stats.catch_up_passes} passes, {stats.seconds:.1f}s")
        users = sorted(stream.events_of)
        assert count_mismatches(stored_vectors_of(env, users, new_v),
                                expected_vectors(new_runtime, stream, users)) == []
        assert stats.caught_up and stats.users_caught_up > 0
        # The worker's own version is complete too (it never stopped writing it).
        assert count_mismatches(stored_vectors_of(env, users, old_v),
                                expected_vectors(runtime, stream, users)) == []
    finally:
        worker.stop()
        server.kill()
        cleanup_topics(kafka_bootstrap, env)
