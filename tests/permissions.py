"""Permission refusals of the kernel, emulated for tests (they run as root, which may read and
search anything): ``unreadable`` and ``unsearchable`` make every route deepzip takes to a path
(os.stat, os.lstat, os.open, os.scandir, Path.open, Path.read_bytes, Path.read_text) fail with
EACCES, as for a user without that permission."""

from __future__ import annotations

import errno
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest


def refuse(path: object) -> PermissionError:
    """The error the kernel gives for ``path`` without the permission."""
    return PermissionError(errno.EACCES, os.strerror(errno.EACCES), os.fsdecode(path))  # type: ignore[arg-type]


def emulate(
    monkeypatch: pytest.MonkeyPatch, denied: Callable[[str], bool], *, lookup: bool = True
) -> None:
    """Opening, reading or listing a path for which ``denied(absolute path)`` holds fails with
    EACCES by every route deepzip takes (os.open, os.scandir, Path.open, Path.read_bytes,
    Path.read_text); with ``lookup``, looking it up too (os.stat, os.lstat)."""

    def hit(path: object) -> bool:
        return not isinstance(path, int) and denied(os.path.abspath(os.fsdecode(path)))  # type: ignore[arg-type]

    def wrap(real: Callable[..., Any]) -> Callable[..., Any]:
        def fake(path: object, *args: object, **kwargs: object) -> Any:
            if hit(path):
                raise refuse(path)
            return real(path, *args, **kwargs)

        return fake

    for name in ("stat", "lstat", "open", "scandir") if lookup else ("open", "scandir"):
        monkeypatch.setattr(os, name, wrap(getattr(os, name)))
    for name in ("open", "read_bytes", "read_text"):
        monkeypatch.setattr(Path, name, wrap(getattr(Path, name)))


def unsearchable(monkeypatch: pytest.MonkeyPatch, directory: Path) -> None:
    """``directory`` may be looked up, but nothing in it (no search permission)."""
    prefix = os.path.abspath(directory) + os.sep
    emulate(monkeypatch, lambda p: p.startswith(prefix))


def unreadable(monkeypatch: pytest.MonkeyPatch, path: Path) -> None:
    """``path`` may be looked up but not opened, read or listed (no read permission)."""
    target = os.path.abspath(path)
    emulate(monkeypatch, lambda p: p == target, lookup=False)
