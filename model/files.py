"""Writing files so that a reader, or another process writing the same file, never sees half of one."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO


@contextmanager
def atomic_writer(path: str | Path) -> Iterator[BinaryIO]:
    """A binary file that becomes `path` only when the block ends without an exception.

    The temporary file has a unique name beside `path`, so processes preparing the same file at the same
    time each write their own copy, and the last complete one wins (`os.replace` is atomic on one file
    system). On an exception the temporary file is removed and `path` is left as it was.
    """
    path = Path(path)
    handle = tempfile.NamedTemporaryFile(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp",
                                         delete=False)
    try:
        with handle:
            yield handle
        os.replace(handle.name, path)
    except BaseException:
        Path(handle.name).unlink(missing_ok=True)
        raise
