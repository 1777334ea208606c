"""Atomic file writes: write to a temporary file in the destination's directory, then rename.

A crash or an exception part-way leaves the destination untouched (the old file, or none) and
removes the temporary file. The temporary file's content is fsync'ed before the rename, so a
power loss after it cannot leave an empty or partial file under the destination's name; the
directory is fsync'ed after the rename, so that the new file is there after a power loss. The
file gets the permissions a plain ``open(dest, "wb")`` would give it: those of the file it
replaces, else ``0o666`` less the umask, even when the code writing it replaces the temporary
file by its own (as safetensors' ``save_file`` does). Parent directories created for the file
are removed again when the write fails.

The rename replaces the directory entry ``dest``: a symbolic link there is replaced by the new
file (the file it pointed to is left as it was; the new file takes its permission bits; a link
to a directory is refused, as a directory is), and an existing file is replaced whatever its
own permission bits (as ``mv`` does: renaming needs only the right to write in the directory).
A name as long as the file system allows (255 bytes) can be written: the temporary file's name
is then shortened.
"""

from __future__ import annotations

import errno
import os
import secrets
import stat
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import BinaryIO

__all__ = [
    "atomic_open",
    "atomic_path",
    "atomic_write_bytes",
    "atomic_write_text",
    "make_dirs",
    "os_error_reason",
    "remove_dirs",
]

# what went wrong in a failed write, in the words of the messages deepzip makes up itself
_REASONS = {
    errno.EROFS: "read-only file system",
    errno.EACCES: "no permission",
    errno.EPERM: "no permission",
    errno.ENOSPC: "disk full",
}
if hasattr(errno, "EDQUOT"):  # (not on Windows)
    _REASONS[errno.EDQUOT] = "disk full (quota exceeded)"


def os_error_reason(exc: OSError) -> str:
    """What went wrong in a failed read or write, in a few words, for a message that names the
    path.

    ``read-only file system`` (``EROFS``), ``no permission`` (``EACCES``, ``EPERM``),
    ``disk full`` (``ENOSPC``, ``EDQUOT``), else the error's ``strerror`` (or its text).
    """
    words = _REASONS.get(exc.errno) if exc.errno is not None else None
    return words or exc.strerror or str(exc)


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
        tmp = target.parent / _temp_name(target.name, secrets.token_hex(4))
        try:
            fd = os.open(tmp, _CREATE, 0o666)
        except FileExistsError:
            continue
        except OSError as exc:  # a read-only or full file system, no permission
            exc.filename = str(target)  # named as the caller knows it, not by the temporary name
            raise
        os.close(fd)
        return tmp
    raise FileExistsError(f"no free temporary file name next to {target}")


_NAME_MAX = 255  # bytes in one file name, on the common file systems


def _temp_name(name: str, token: str) -> str:
    """``.<name>.<token>.tmp``, with ``name`` cut short (whole characters) where the whole
    would exceed :data:`_NAME_MAX` bytes: a destination named near the limit stays writable.
    A ``name`` over the limit itself is kept whole, so that creating the temporary file fails
    at once (``ENAMETOOLONG``), before any work, as the rename would after it."""
    if len(os.fsencode(name)) <= _NAME_MAX:
        while len(os.fsencode(f".{name}.{token}.tmp")) > _NAME_MAX:
            name = name[:-1]
    return f".{name}.{token}.tmp"


def _fsync_file(path: Path) -> None:
    """Flush ``path``'s content to disk (POSIX fsyncs a read-only descriptor; Windows needs
    one open for writing)."""
    mode = os.O_RDONLY if os.name == "posix" else os.O_RDWR | getattr(os, "O_BINARY", 0)
    fd = os.open(path, mode | getattr(os, "O_CLOEXEC", 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_dir(directory: Path) -> None:
    """Flush ``directory``'s entries to disk, so that a rename in it survives a power loss
    (POSIX; elsewhere, or on a file system that cannot fsync a directory, nothing)."""
    if os.name != "posix":
        return
    try:
        fd = os.open(directory, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0) | os.O_CLOEXEC)
    except OSError:
        return
    try:
        with suppress(OSError):
            os.fsync(fd)
    finally:
        os.close(fd)


def make_dirs(directory: Path) -> list[Path]:
    """Create ``directory`` and its missing parents; return those created, deepest first."""
    missing: list[Path] = []
    # (lexists: a dangling link is something on the way, not a directory to create)
    while not os.path.lexists(directory) and directory != directory.parent:
        missing.append(directory)
        directory = directory.parent
    if not directory.is_dir():  # a file (or a dangling link) on the way
        raise NotADirectoryError(errno.ENOTDIR, os.strerror(errno.ENOTDIR), str(directory))
    created: list[Path] = []
    try:
        for d in reversed(missing):
            try:
                d.mkdir()
            except FileExistsError:  # made meanwhile by another writer: not ours to remove
                if not d.is_dir():
                    raise
            else:
                created.insert(0, d)
    except BaseException:  # a name too long, a full disk: none of the directories is left
        remove_dirs(created)
        raise
    return created


@contextmanager
def atomic_path(dest: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path next to ``dest``; on success it replaces ``dest``.

    The parent directory is created if needed. The temporary file exists (empty) and has the
    permission bits ``dest`` will end with: those of the file it replaces, else what a plain
    ``open()`` would give a new file (bits that a writer replacing the temporary file by its
    own changed are set back before the rename; the owner's write bit, which it has until then
    so that it can be written, is taken off for a read-only ``dest``). When the block succeeds
    the temporary file is fsync'ed, then renamed over ``dest``. On any exception the temporary
    file is deleted, the directories created for it are removed (when still empty) and ``dest``
    is left as it was; an ``OSError`` that names no file (a full disk) is given ``dest`` as its
    file name.
    """
    with _atomic_path(dest, sync=True) as tmp:
        yield tmp


@contextmanager
def _atomic_path(dest: str | os.PathLike[str], *, sync: bool) -> Iterator[Path]:
    """:func:`atomic_path`; ``sync=False`` when the caller fsyncs the file itself."""
    target = Path(dest)
    if target.is_dir():  # the rename would fail only after the work, naming the temporary file
        raise IsADirectoryError(errno.EISDIR, "a directory, not a file to write", str(target))
    created = make_dirs(target.parent)
    try:
        tmp = _create_temp(target)
    except BaseException:
        remove_dirs(created)
        raise
    try:
        mode = stat.S_IMODE(os.stat(tmp).st_mode)  # what open() gives a new file
        with suppress(FileNotFoundError):  # replacing a file: keep its permission bits
            mode = os.stat(target).st_mode & 0o777  # (not setuid, setgid, sticky)
            # writable by its owner until the rename, so that a read-only file is replaced
            os.chmod(tmp, mode | stat.S_IWUSR)
        yield tmp
        if stat.S_IMODE(os.stat(tmp).st_mode) != mode:  # the writer put its own file there
            os.chmod(tmp, mode)
        if sync:
            _fsync_file(tmp)
        os.replace(tmp, target)
    except BaseException as exc:
        tmp.unlink(missing_ok=True)
        remove_dirs(created)
        if isinstance(exc, OSError) and exc.errno is not None and exc.filename is None:
            exc.filename = str(target)  # a failed write() (ENOSPC, EIO) names no file
        raise
    for d in (target.parent, *(c.parent for c in created)):  # the rename, the new dirs
        _fsync_dir(d)


def remove_dirs(created: list[Path]) -> None:
    """Remove the directories :func:`make_dirs` created, deepest first, while empty (a
    failed write or run leaves no directory it made)."""
    for d in created:
        try:
            d.rmdir()
        except OSError:  # another writer put a file there meanwhile: keep it
            return


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
