"""A writable file that fails like a full disk, for the tests of write failures."""

from __future__ import annotations

import errno
import os
from typing import Any


class FullDisk:
    """A writable file that fails like a full disk after ``room`` bytes."""

    def __init__(self, fh: Any, room: int) -> None:
        self.fh, self.room = fh, room

    def write(self, data: bytes) -> int:
        if len(data) > self.room:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        self.room -= len(data)
        return int(self.fh.write(data))

    def __getattr__(self, name: str) -> Any:
        return getattr(self.fh, name)

    def __enter__(self) -> FullDisk:
        return self

    def __exit__(self, *exc: object) -> None:
        self.fh.__exit__(*exc)
