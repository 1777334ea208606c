"""Atomic file writes: write to a temporary file in the destination's directory, then rename.

A crash or an exception part-way leaves the destination untouched (the old file, or none) and
removes the temporary file. The temporary file's content is fsync'ed before the rename, so a
power loss after it cannot leave an empty or partial file under the destination's name. The
file gets the permissions a plain ``open(dest, "wb")`` would give it: those of the file it
replaces, else ``0o666`` less the umask.
"""

from __future__ import annotations

import os
import secrets
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import BinaryIO

__all__ = ["atomic_open", "atomic_path", "atomic_write_bytes", "atomic_write_text"]

_CREATE = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0)
_CREATE |= getattr(os, "O_BINARY", 0) | getattr(os, "O_NOINHERIT", 0)


def _create_temp(target: Path) -> Path:
    """Create a new, empty file next to ``target`` as ``open()`` would, and return its path.

    ``tempfile.mkstemp`` creates files with mode ``0o600`` whatever the umask. Creating the
    file with ``os.open(..., 0o666)`` lets the kernel apply the umask (and any default ACL of
    the directory) exactly as for a plain ``open()``, without reading the umask: ``os.umask``
    can only be read by setting it, which is process-wide and races with other threads.
    ``O_EXCL`` makes the name ours (as in ``mkstemp``); a taken name is retried.
    """
    for _ in range(tempfile.TMP_MAX):
        tmp = target.parent / f".{target.name}.{secrets.token_hex(4)}.tmp"
        try:
            fd = os.open(tmp, _CREATE, 0o666)
        except FileExistsError:
            continue
        os.close(fd)
        return tmp
    raise FileExistsError(f"no free temporary file name next to {target}")


def _fsync_file(path: Path) -> None:
    """Flush ``path``'s content to disk (POSIX fsyncs a read-only descriptor; Windows needs
    one open for writing)."""
    mode = os.O_RDONLY if os.name == "posix" else os.O_RDWR | getattr(os, "O_BINARY", 0)
    fd = os.open(path, mode | getattr(os, "O_CLOEXEC", 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextmanager
def atomic_path(dest: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path next to ``dest``; on success it replaces ``dest``.

    The parent directory is created if needed. The temporary file exists (empty) and has the
    permission bits ``dest`` will end with: those of the file it replaces, else what a plain
    ``open()`` would give a new file. When the block succeeds the temporary file is fsync'ed,
    then renamed over ``dest``. On any exception the temporary file is deleted and ``dest`` is
    left as it was.
    """
    with _atomic_path(dest, sync=True) as tmp:
        yield tmp


@contextmanager
def _atomic_path(dest: str | os.PathLike[str], *, sync: bool) -> Iterator[Path]:
    """:func:`atomic_path`; ``sync=False`` when the caller fsyncs the file itself."""
    target = Path(dest)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = _create_temp(target)
    try:
        with suppress(FileNotFoundError):  # replacing a file: keep its permission bits
            os.chmod(tmp, os.stat(target).st_mode & 0o777)  # (not setuid, setgid, sticky)
        yield tmp
        if sync:
            _fsync_file(tmp)
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


@contextmanager
def atomic_open(dest: str | os.PathLike[str]) -> Iterator[BinaryIO]:
    """A writable binary stream whose content replaces ``dest`` only if the block succeeds.

    The stream is flushed and fsync'ed before the rename.
    """
    with _atomic_path(dest, sync=False) as tmp, tmp.open("wb") as fh:
        yield fh
        fh.flush()
        os.fsync(fh.fileno())


def atomic_write_bytes(dest: str | os.PathLike[str], data: bytes) -> Path:
    """Write ``data`` to ``dest`` atomically."""
    with atomic_open(dest) as fh:
        fh.write(data)
    return Path(dest)


def atomic_write_text(dest: str | os.PathLike[str], text: str) -> Path:
    """Write UTF-8 ``text`` to ``dest`` atomically."""
    return atomic_write_bytes(dest, text.encode("utf-8"))
