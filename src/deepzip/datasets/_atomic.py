"""Atomic file output: write to a temporary file in the target directory, then rename."""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

__all__ = ["atomic_open"]


@contextlib.contextmanager
def atomic_open(path: Path) -> Iterator[BinaryIO]:
    """Open a binary stream whose content replaces ``path`` only if the block succeeds.

    The data go to a temporary file in the same directory, which is flushed, synced and then
    moved over ``path`` with :func:`os.replace`. If the block raises, the temporary file is
    removed and ``path`` is left as it was.

    Args:
        path: Destination file; its directory must exist.

    Yields:
        A writable binary stream.
    """
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as stream:
            yield stream
            stream.flush()
            os.fsync(stream.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
