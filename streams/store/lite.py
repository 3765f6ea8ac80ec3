"""Every workaround for a Milvus Lite or pymilvus behaviour, in one place (versions: milvus-lite 2.5.1,
pymilvus 2.5). Each function names what it works around and the upstream report where one exists; the
measurements behind them are in docs/ARCHITECTURE.md, "Decisions".
"""

from __future__ import annotations

import logging
import warnings
from pathlib import Path
from typing import Any

_log = logging.getLogger(__name__)


def server_manager() -> Any:
    """milvus-lite's per-process server manager, imported without milvus-lite's pkg_resources warning.

    Works around: milvus-lite 2.5.1's `milvus_lite/__init__.py` imports `pkg_resources` (for its own
    version), which setuptools 80.9 to 81 deprecate with a warning on import (setuptools 81 removes it:
    pyproject pins setuptools<81). Fixed upstream in milvus-io/milvus-lite#323 (2.5.2rc1). Every use of
    milvus-lite in the project, pymilvus' own included, comes after this first import: the store checks the
    Lite file's lock (`refuse_if_locked_elsewhere`) before it opens a client. Only that warning is filtered,
    only around this import.
    """
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="pkg_resources is deprecated", category=Warning)
        from milvus_lite.server_manager import server_manager_instance
    return server_manager_instance


def lite_db_path(uri: str) -> Path:
    return Path(uri).expanduser().absolute().resolve()


def refuse_if_locked_elsewhere(uri: str, error: type[Exception]) -> None:
    """Raise `error` when another process holds the Lite file's lock, checked WITHOUT starting a server.

    Works around: a failed open in milvus-lite 2.5.1 leaves a `Server` whose `__del__` unlinks the lock file
    the other process holds, so a retry starts a second server on the same .db. A Lite file is one process's
    at a time by design (milvus-io/milvus-lite issue 227; issue 264 for sharing). Reads the server manager's
    private `_servers` map to know whether this process already owns the file.
    """
    import fcntl

    db = lite_db_path(uri)
    if str(db) in getattr(server_manager(), "_servers", {}):
        return  # this process owns it (and closing a second fd here would drop its POSIX lock)
    lock = db.parent / f".{db.name}.lock"
    if not lock.exists():
        return
    with open(lock, "a") as handle:
        try:
            fcntl.lockf(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            raise error(
                f"Milvus Lite file {uri} is open in another process (lock {lock} is held); a Lite file is "
                f"one process's at a time: stop that process, or use a Milvus server URI"
            ) from None
        fcntl.lockf(handle, fcntl.LOCK_UN)


def release_dead_server(uri: str) -> None:
    """Forget this process's Lite server for `uri`, so the next client starts a fresh one.

    Works around: pymilvus does not restart a Milvus Lite server that died (killed, crashed); milvus-lite's
    server manager keeps the dead process per file (no upstream report found).
    """
    server_manager().release_server(uri)


def index_primary_keys(uri: str, collection: str) -> None:
    """Index a collection's primary keys in the Lite file's own SQLite table (idempotent).

    Works around: Milvus Lite 2.5.1 keeps a collection's rows in a table ``"{name}"(id, milvus_id, data)`` and
    runs every delete (an upsert's too) as ``DELETE ... WHERE milvus_id IN (...)`` with no index on
    ``milvus_id``, a scan of the whole table per call (no upstream report found). The running server picks
    the index up by itself (SQLite re-prepares statements after a schema change); dropping the collection
    drops it.
    A file of another layout is left as it is, and a failure only costs speed, so it is logged.
    """
    import sqlite3

    db = lite_db_path(uri)
    try:
        connection = sqlite3.connect(db, timeout=10)
        try:
            columns = [row[1] for row in connection.execute(f'PRAGMA table_info("{collection}")')]
            if "milvus_id" in columns:
                connection.execute(
                    f'CREATE INDEX IF NOT EXISTS "{collection}__milvus_id" ON "{collection}"(milvus_id)')
                connection.commit()
        finally:
            connection.close()
    except sqlite3.Error as exc:
        _log.warning("could not index the keys of %s in %s (deletes stay slow): %s", collection, db, exc)


def column_insert(client: Any) -> Any:
    """A callable ``(collection, entities, schema=..., timeout=...)`` inserting rows given column by column.

    Works around: `MilvusClient.insert(rows)` packs row dicts field by field in Python (the row path added
    in milvus-io/pymilvus PR 1434), several times slower than the column path the ORM's `Collection.insert`
    takes, which `MilvusClient` does not expose: this reaches it through the private `_get_connection()`.
    Called inside the store's error translation: on a dead connection `_get_connection()` itself raises.
    """

    def batch_insert(*args: Any, **kwargs: Any) -> Any:
        return client._get_connection().batch_insert(*args, **kwargs)  # noqa: SLF001

    return batch_insert
