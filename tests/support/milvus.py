"""Milvus for tests: a Milvus server on a TCP port (the `http://` store path), and releasing a Lite file."""

from __future__ import annotations

import os
import socket
import subprocess
from pathlib import Path

from streams.store.lite import server_manager
from support.basics import wait_until


class MilvusTcpServer:
    """The Milvus engine that milvus-lite ships, serving gRPC on a TCP port instead of a Unix socket.

    The worker reaches it by an ``http://`` URI, so the store runs its server code path (no Lite file lock, no
    in-process server manager, a plain reconnect): the stand-in for a Milvus standalone server that goes down
    and comes back, on a machine without Docker. The binary and its arguments are the ones pymilvus itself
    uses for a Lite file (`milvus_lite.server.Server` with an address); the data lives in `db`.
    """

    def __init__(self, db: Path, port: int) -> None:
        server_manager()  # milvus-lite imported through the store's adapter (no pkg_resources warning)
        import milvus_lite

        self.lib = Path(milvus_lite.__file__).parent / "lib"
        assert (self.lib / "milvus").exists(), f"milvus-lite's server binary is not at {self.lib / 'milvus'}"
        self.db, self.port = db, port
        self.proc: subprocess.Popen | None = None
        self.starts = 0

    @property
    def uri(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        env = dict(os.environ, LD_LIBRARY_PATH=f"{self.lib}:{os.environ.get('LD_LIBRARY_PATH', '')}")
        log = self.db.with_name(f"milvus-server-{self.starts}.log").open("wb")
        self.starts += 1
        self.proc = subprocess.Popen([str(self.lib / "milvus"), str(self.db), f"127.0.0.1:{self.port}",
                                      "ERROR"],
                                     env=env, cwd=self.db.parent, stdout=log, stderr=subprocess.STDOUT,
                                     start_new_session=True)

        def listening() -> bool:
            assert self.proc.poll() is None, f"the Milvus server exited with {self.proc.returncode}"
            with socket.socket() as probe:
                return probe.connect_ex(("127.0.0.1", self.port)) == 0

        wait_until(listening, 30, interval=0.1, what=f"Milvus server listening on {self.port}")

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


def release_lite(store) -> None:
    """Close a store opened in this process and stop its Milvus Lite server, so another process can open the
    file (pymilvus keeps the server, and the file lock, until the process exits)."""
    store.close()
    if store.is_lite:
        server_manager().release_server(store.uri)


def release_all_lite_servers() -> None:
    """Stop every Milvus Lite server this process started (closing a client leaves them running, and an idle
    Lite server still burns CPU)."""
    server_manager().release_all()
