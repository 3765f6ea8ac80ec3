"""Audit findings on `mind-stream` against the real broker (issue 16): bad table keys end in one line."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from support.topics import create_topics, delete_topics, produce
from support.worker import worker_env

from streams.kafka import changelog_topic

REPO_ROOT = Path(__file__).resolve().parent.parent


def test_a_changelog_key_that_is_not_a_user_id_stops_rebuild_with_one_line(kafka_bootstrap, artifact_dir,
                                                                            tmp_path):
    env = worker_env(kafka_bootstrap, tmp_path)
    topic = changelog_topic(env["MINDSTREAM_APP_ID"], "histories")
    create_topics(kafka_bootstrap, {topic: 1}, compact=[topic])
    history = json.dumps({"items": [["c0_1", 1000, "e1"]], "seen": ["e1"]}).encode()
    try:
        produce(kafka_bootstrap, topic, [(b'"u1"', history), (json.dumps("bad key#1").encode(), history)])
        command = ["rebuild", "--artifact", str(artifact_dir), "--source", "changelog"]
        result = subprocess.run([sys.executable, "-m", "streams.cli", *command], env=env, cwd=REPO_ROOT,
                                capture_output=True, text=True, timeout=240)
    finally:
        delete_topics(kafka_bootstrap, [topic])
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith(f"mind-stream rebuild: {topic}: user id 'bad key#1' is not valid")
