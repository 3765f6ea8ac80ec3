"""Session-wide test fixtures: one real Apache Kafka broker for the whole run, and unique topics on it.

`kafka_bootstrap` uses the broker named by KAFKA_BOOTSTRAP=host:port when set (and starts nothing);
otherwise it starts the project's own broker (deploy/kafka/kafka.sh) on free ports in a temporary state
folder and stops it when the session ends, also on failure or Ctrl-C. If this pytest is killed outright,
the script's --exit-with watchdog stops the broker.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

# Importing `support` sets GRPC_ENABLE_FORK_SUPPORT=false before anything imports grpc (support/__init__.py).
from support.basics import free_port, unique_name
from support.topics import create_topics, delete_topics
from support.worker import Worker, running_worker

REPO_ROOT = Path(__file__).resolve().parent.parent
KAFKA_SCRIPT = REPO_ROOT / "deploy" / "kafka" / "kafka.sh"
START_ATTEMPTS = 3  # free ports are picked here and bound by the JVM later; another process may win the race


def _kafka_script(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["bash", str(KAFKA_SCRIPT), *args], capture_output=True, text=True, check=False)


def _last_line(text: str) -> str:
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return lines[-1] if lines else "(no output)"


def _start_broker(state_dir: Path) -> subprocess.CompletedProcess[str]:
    for _ in range(START_ATTEMPTS):
        port, controller_port = free_port(), free_port()
        while controller_port == port:
            controller_port = free_port()
        started = _kafka_script(
            "start",
            "--port", str(port),
            "--controller-port", str(controller_port),
            "--dir", str(state_dir),
            "--exit-with", str(os.getpid()),
        )  # fmt: skip
        if started.returncode == 0 or "already in use" not in started.stderr:
            break
    return started


@pytest.fixture(scope="session")
def kafka_bootstrap(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """'host:port' of a running Kafka broker: KAFKA_BOOTSTRAP, or one started for this test session."""
    user_broker = os.environ.get("KAFKA_BOOTSTRAP")
    if user_broker:
        yield user_broker
        return

    fetched = _kafka_script("fetch")
    if fetched.returncode != 0:
        pytest.fail(f"{fetched.stderr.strip()}", pytrace=False)

    state_dir = tmp_path_factory.mktemp("kafka")
    try:
        started = _start_broker(state_dir)
    except BaseException:
        # Interrupted mid-start (Ctrl-C): subprocess.run killed the script, not the JVM it launched.
        _kafka_script("stop", "--dir", str(state_dir))
        raise
    if started.returncode != 0:
        pytest.fail(f"could not start the Kafka broker:\n{started.stderr.strip()}", pytrace=False)
    bootstrap = _last_line(started.stdout)
    try:
        yield bootstrap
    finally:
        stopped = _kafka_script("stop", "--dir", str(state_dir))
        if stopped.returncode != 0:
            print(f"warning: stopping the test broker failed: {_last_line(stopped.stderr)}")


@pytest.fixture(scope="session")
def artifact_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny exported artifact (40 items, random weights) shared by the store, worker and reliability tests.

    Read-only: a test that needs a broken or different artifact copies it or builds its own.
    """
    from support.artifact import build_tiny_artifact

    return build_tiny_artifact(tmp_path_factory.mktemp("tiny-artifact") / "artifact", num_items=40)


@pytest.fixture(scope="session")
def runtime(artifact_dir: Path):
    """`artifact_dir` loaded with the serving runtime (onnxruntime)."""
    from export.runtime import UserTowerRuntime

    return UserTowerRuntime.load(artifact_dir)


@pytest.fixture
def new_topic(kafka_bootstrap: str) -> Iterator[Callable[..., str]]:
    """Factory: `new_topic(partitions=1, prefix="test")` creates a uniquely named topic and returns its name.

    The topics are deleted after the test, so a shared broker (KAFKA_BOOTSTRAP) is left as it was.
    """
    created: list[str] = []

    def make(partitions: int = 1, prefix: str = "test") -> str:
        name = unique_name(prefix)
        create_topics(kafka_bootstrap, {name: partitions})
        created.append(name)
        return name

    yield make
    delete_topics(kafka_bootstrap, created)


def _cluster_script(*args: str) -> subprocess.CompletedProcess[str]:
    """`kafka.sh cluster ...` on the cluster this session owns (KAFKA_BOOTSTRAP names a single broker)."""
    env = {k: v for k, v in os.environ.items() if k != "KAFKA_BOOTSTRAP"}
    return subprocess.run(["bash", str(KAFKA_SCRIPT), "cluster", *args], capture_output=True, text=True,
                          env=env)


class KafkaCluster:
    """A 3-node KRaft cluster run by `kafka.sh cluster` (see deploy/kafka/kafka.sh): bootstrap list, node ids
    1..3 (= broker ids), and the script's kill / stop / start of one node."""

    def __init__(self, state_dir: Path, bootstrap: str) -> None:
        self.state_dir, self.bootstrap = state_dir, bootstrap

    def run(self, *args: str) -> str:
        done = _cluster_script(*args, "--dir", str(self.state_dir))
        assert done.returncode == 0, f"kafka.sh cluster {' '.join(args)} failed: {done.stderr.strip()}"
        return done.stdout

    def kill(self, node: int) -> None:
        self.run("kill", str(node))

    def stop(self, node: int) -> None:
        self.run("stop", str(node))

    def start(self, node: int) -> None:
        self.run("start", str(node))


@pytest.fixture(scope="session")
def kafka_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[KafkaCluster]:
    """A 3-broker cluster for this session (kafka.sh cluster up 3), own state folder, stopped at the end."""
    fetched = _kafka_script("fetch")
    if fetched.returncode != 0:
        pytest.fail(f"{fetched.stderr.strip()}", pytrace=False)
    state_dir = tmp_path_factory.mktemp("kafka-cluster")
    try:
        started = _cluster_script("up", "3", "--dir", str(state_dir), "--exit-with", str(os.getpid()))
    except BaseException:
        _cluster_script("down", "--dir", str(state_dir))
        raise
    if started.returncode != 0:
        _cluster_script("down", "--dir", str(state_dir))
        pytest.fail(f"could not start the 3-broker Kafka cluster:\n{started.stderr.strip()}", pytrace=False)
    try:
        yield KafkaCluster(state_dir, _last_line(started.stdout))
    finally:
        _cluster_script("down", "--dir", str(state_dir))


def pytest_configure(config: pytest.Config) -> None:
    # kafka-python 3.0 loads its protocol schemas through importlib.resources' legacy API, warning hundreds of
    # times per session; the warnings are theirs, not ours.
    config.addinivalue_line("filterwarnings", "ignore:read_text is deprecated:DeprecationWarning")
    config.addinivalue_line("filterwarnings", "ignore:open_text is deprecated:DeprecationWarning")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    # Every test that needs the broker carries the `kafka` marker, so `-m "not kafka"` runs the rest.
    for item in items:
        if "kafka_bootstrap" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.kafka)


@pytest.fixture(scope="module")
def worker(kafka_bootstrap: str, artifact_dir: Path,
           tmp_path_factory: pytest.TempPathFactory) -> Iterator[Worker]:
    """A running worker on unique topics / consumer group, a fresh Milvus Lite file with the items indexed."""
    with running_worker(kafka_bootstrap, artifact_dir, tmp_path_factory.mktemp("stream-worker")) as w:
        yield w
