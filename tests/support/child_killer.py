"""Keep a process's children dead: SIGKILL each child of a pid as it appears, from a process of its own.

A thread in the test process is not enough: while the test's main thread is busy (producing a stream), each
/proc read the killer makes waits for the GIL, one scan of /proc then takes seconds, and a child the watched
process starts (a Milvus Lite server) lives long enough to serve a write.

    with ChildKiller(worker.pid, tmp_path / "kills") as killer:
        wait_until(killer.kills, 10)
        ...
    killer.kills()  # every pid killed, in order

Run as ``python -m support.child_killer PID FILE``: appends each killed pid to FILE, one per line, until
terminated.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from support.basics import children_of

POLL_S = 0.01


class ChildKiller:
    """Kill every child of `pid` while the `with` block runs, from a separate process.

    Args:
        pid: the watched process; it is never killed itself.
        log: a file the killer appends each killed pid to (created empty).
    """

    def __init__(self, pid: int, log: Path) -> None:
        self.pid = pid
        self.log = Path(log)
        self._proc: subprocess.Popen | None = None

    def __enter__(self) -> ChildKiller:
        self.log.write_text("")
        tests_dir = str(Path(__file__).resolve().parents[1])
        self._proc = subprocess.Popen(
            [sys.executable, "-m", "support.child_killer", str(self.pid), str(self.log)],
            env={**os.environ, "PYTHONPATH": tests_dir})
        return self

    def __exit__(self, *exc: object) -> None:
        assert self._proc is not None
        self._proc.terminate()
        self._proc.wait(10)

    def kills(self) -> list[int]:
        """The pids killed so far, in order."""
        return [int(line) for line in self.log.read_text().split()]


def _main(pid: int, log: Path) -> None:
    with open(log, "a") as out:
        while True:
            for child in children_of(pid):
                try:
                    os.kill(child, signal.SIGKILL)
                except ProcessLookupError:
                    continue
                out.write(f"{child}\n")
                out.flush()
            time.sleep(POLL_S)


if __name__ == "__main__":
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    _main(int(sys.argv[1]), Path(sys.argv[2]))
