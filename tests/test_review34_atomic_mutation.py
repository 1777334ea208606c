"""Atomic writes: what mutation testing of ``deepzip._atomic`` found unchecked (review 34).

A read-only file replaced by a user who is not root (the tests may run as root, who may write
any file: the kernel's check is emulated), directories made part-way before a failure, another
writer making a directory meanwhile, how far a long name is cut for the temporary file's name,
the fsync of the directories made and of the file's flushed content, a file system that cannot
fsync a directory, no file descriptor left open, a taken temporary name, the setuid, setgid and
sticky bits not carried over, and the words of ``os_error_reason``.
"""

from __future__ import annotations

import errno
import os
import re
import secrets
import shutil
import stat
from collections.abc import Callable
from contextlib import suppress
from pathlib import Path
from typing import Any

import pytest

from deepzip._atomic import atomic_open, atomic_path, atomic_write_bytes, os_error_reason
from deepzip.pipeline.state import remove_stale_temps

posix_only = pytest.mark.skipif(os.name != "posix", reason="POSIX file systems and permissions")
needs_proc = pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="needs /proc/self/fd")


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def _names(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir())


def _name_max(directory: Path) -> int:
    try:
        return os.pathconf(directory, "PC_NAME_MAX")
    except (AttributeError, OSError, ValueError):
        return 255


# ---------------------------------------------- a read-only file, for a user who is not root


@pytest.fixture
def not_root(monkeypatch: pytest.MonkeyPatch) -> None:
    """Opening an existing file for writing needs its owner's write bit, as for a user who is
    not root (root may write any file, so a test run as root would not see the refusal)."""
    real_open, real_os_open = Path.open, os.open

    def check(path: Any) -> None:
        with suppress(FileNotFoundError):
            if not os.stat(path).st_mode & stat.S_IWUSR:
                raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(path))

    def open_(self: Path, mode: str = "r", *args: Any, **kwargs: Any) -> Any:
        if set(mode) & set("wa+x"):
            check(self)
        return real_open(self, mode, *args, **kwargs)

    def os_open(path: Any, flags: int, *args: Any, **kwargs: Any) -> int:
        if flags & os.O_ACCMODE != os.O_RDONLY:
            check(path)
        return real_os_open(path, flags, *args, **kwargs)

    monkeypatch.setattr(Path, "open", open_)
    monkeypatch.setattr(os, "open", os_open)


def _by_stream(dest: Path, data: bytes) -> None:
    atomic_write_bytes(dest, data)


def _by_path(dest: Path, data: bytes) -> None:
    with atomic_path(dest) as tmp:
        tmp.write_bytes(data)


@posix_only
@pytest.mark.parametrize("write", [_by_stream, _by_path], ids=["atomic_open", "atomic_path"])
def test_a_read_only_file_is_replaced_by_a_user_who_is_not_root(
    tmp_path: Path, not_root: None, write: Callable[[Path, bytes], None]
) -> None:
    # the temporary file was given the 0o444 of the file it replaces before it was written:
    # opening it for writing failed (EACCES) for every user but root
    dest = tmp_path / "m.dzip"
    dest.write_bytes(b"old")
    dest.chmod(0o444)
    with pytest.raises(PermissionError):  # the emulation refuses what the kernel would
        dest.open("wb")
    write(dest, b"new")
    assert dest.read_bytes() == b"new"
    assert _mode(dest) == 0o444
    assert _names(tmp_path) == ["m.dzip"]


@posix_only
def test_the_setuid_setgid_and_sticky_bits_are_not_carried_over(tmp_path: Path) -> None:
    dest = tmp_path / "m.dzip"
    dest.write_bytes(b"old")
    dest.chmod(0o755 | stat.S_ISUID | stat.S_ISGID | stat.S_ISVTX)
    if not dest.stat().st_mode & stat.S_ISUID:
        pytest.skip("this file system does not keep the setuid bit")
    atomic_write_bytes(dest, b"new")
    assert stat.S_IMODE(dest.stat().st_mode) == 0o755


# ------------------------------------------------------- directories made for the file


def test_directories_made_before_a_failed_mkdir_are_removed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # a/ and a/b/ were made, then a/b/c/ failed (a full disk, a name too long): both were left
    real = Path.mkdir
    deepest = tmp_path / "a" / "b" / "c"

    def mkdir(self: Path, *args: Any, **kwargs: Any) -> None:
        if self == deepest:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(self))
        real(self, *args, **kwargs)

    monkeypatch.setattr(Path, "mkdir", mkdir)
    with pytest.raises(OSError, match="No space") as info:
        atomic_write_bytes(deepest / "x.bin", b"data")
    assert info.value.filename == str(deepest)
    assert _names(tmp_path) == []


@posix_only
def test_a_directory_name_too_long_leaves_no_directory(tmp_path: Path) -> None:
    long_dir = tmp_path / "new" / ("d" * (_name_max(tmp_path) + 1))
    with pytest.raises(OSError, match="too long") as info:
        atomic_write_bytes(long_dir / "x.bin", b"data")
    assert info.value.errno == errno.ENAMETOOLONG
    assert info.value.filename == str(long_dir)
    assert _names(tmp_path) == []


def _fail_writing(dest: Path) -> None:
    with atomic_open(dest) as fh:
        fh.write(b"half")
        raise RuntimeError("boom")


def _another_writer_makes(
    monkeypatch: pytest.MonkeyPatch, where: Path, make: Callable[[Path], object]
) -> None:
    """Another writer makes ``where`` just before this one's ``mkdir`` of it."""
    real = Path.mkdir

    def mkdir(self: Path, *args: Any, **kwargs: Any) -> None:
        if self == where:
            make(self)
        real(self, *args, **kwargs)

    monkeypatch.setattr(Path, "mkdir", mkdir)


def test_a_directory_made_meanwhile_by_another_writer_is_used_and_kept(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    theirs = tmp_path / "a" / "b"
    _another_writer_makes(monkeypatch, theirs, os.mkdir)
    atomic_write_bytes(theirs / "x.bin", b"data")
    assert (theirs / "x.bin").read_bytes() == b"data"

    other = tmp_path / "c" / "d"
    _another_writer_makes(monkeypatch, other, os.mkdir)
    with pytest.raises(RuntimeError, match="boom"):
        _fail_writing(other / "x.bin")
    assert _names(tmp_path / "c") == ["d"]  # not ours to remove (and so c/ is not empty)
    assert _names(other) == []


def test_a_file_made_meanwhile_on_the_way_is_named(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    theirs = tmp_path / "a"
    _another_writer_makes(monkeypatch, theirs, lambda p: p.write_bytes(b"theirs"))
    with pytest.raises(FileExistsError) as info:
        atomic_write_bytes(theirs / "b" / "x.bin", b"data")
    assert info.value.filename == str(theirs)
    assert _names(tmp_path) == ["a"]
    assert theirs.read_bytes() == b"theirs"


# ------------------------------------------------------------- the temporary file's name


def test_the_temporary_name_is_the_one_a_resumed_run_removes(tmp_path: Path) -> None:
    # pipeline.state.remove_stale_temps removes ".<name>.<8 hex>.tmp" of a run's own files
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    with atomic_path(tmp_path / "state.json") as tmp:
        assert tmp.parent == tmp_path
        assert re.fullmatch(r"\.state\.json\.[0-9a-f]{8}\.tmp", tmp.name)
        tmp.write_bytes(b"partial")
        shutil.copy(tmp, run_dir / tmp.name)  # what a run killed here leaves behind
    assert remove_stale_temps(run_dir) == [run_dir / tmp.name]
    assert _names(run_dir) == []


@posix_only
@pytest.mark.parametrize(
    ("name", "kept"),
    [
        # ".<name>.<8 hex>.tmp" is the name and 14 bytes: 255 bytes at most, so 241 of the name
        ("m" * 236 + ".dzip", "m" * 236 + ".dzip"),  # 241 bytes: exactly 255, not cut
        ("m" * 237 + ".dzip", "m" * 237 + ".dzi"),  # 242 bytes: one byte off
        ("m" * 250 + ".dzip", "m" * 241),  # 255 bytes: the most a name can have
        ("é" * 121, "é" * 120),  # 242 bytes of 2-byte characters: one whole character off
    ],
    ids=["241", "242", "255", "2-byte"],
)
def test_a_long_name_is_cut_only_by_the_whole_characters_over_the_limit(
    tmp_path: Path, name: str, kept: str
) -> None:
    if _name_max(tmp_path) < 255:
        pytest.skip("a file system with shorter names")
    dest = tmp_path / name
    with atomic_path(dest) as tmp:
        tmp.write_bytes(b"data")
    assert re.fullmatch(re.escape(f".{kept}.") + r"[0-9a-f]{8}\.tmp", tmp.name)
    assert dest.read_bytes() == b"data"


def test_a_taken_temporary_name_is_retried_and_left_alone(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    tokens = iter(["0123abcd", "0123abcd", "89abcdef"])
    monkeypatch.setattr(secrets, "token_hex", lambda nbytes: next(tokens))
    taken = tmp_path / ".out.bin.0123abcd.tmp"
    taken.write_bytes(b"another writer's")
    atomic_write_bytes(tmp_path / "out.bin", b"data")
    assert (tmp_path / "out.bin").read_bytes() == b"data"
    assert taken.read_bytes() == b"another writer's"
    assert _names(tmp_path) == [taken.name, "out.bin"]


def test_no_free_temporary_name_names_the_file_and_leaves_no_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(secrets, "token_hex", lambda nbytes: "0123abcd")
    dest = tmp_path / "new" / "out.bin"
    dest.parent.mkdir()
    (dest.parent / ".out.bin.0123abcd.tmp").write_bytes(b"")
    with pytest.raises(FileExistsError, match=re.escape(str(dest))):
        atomic_write_bytes(dest, b"data")
    assert _names(dest.parent) == [".out.bin.0123abcd.tmp"]

    deeper = tmp_path / "a" / "b" / "out.bin"  # the directories made for it are removed
    real_open = os.open

    def open_(path: Any, flags: int, *args: Any, **kwargs: Any) -> int:
        if flags & os.O_CREAT:
            raise FileExistsError(errno.EEXIST, os.strerror(errno.EEXIST), str(path))
        return real_open(path, flags, *args, **kwargs)

    monkeypatch.setattr(os, "open", open_)
    with pytest.raises(FileExistsError, match=re.escape(str(deeper))):
        atomic_write_bytes(deeper, b"data")
    assert _names(tmp_path) == ["new"]


# ------------------------------------------------------------------------------- fsync


@needs_proc
def test_the_directories_made_are_fsynced_in_their_parents(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    synced: list[str] = []
    real = os.fsync

    def fsync(fd: int) -> None:
        synced.append(os.readlink(f"/proc/self/fd/{fd}"))
        real(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    dest = tmp_path / "a" / "b" / "x.bin"
    with atomic_path(dest) as tmp:
        tmp.write_bytes(b"data")
    assert synced[0] == str(tmp)
    # the rename (in a/b), and the entries of b (in a) and of a (in tmp_path)
    assert sorted(synced[1:]) == sorted(str(d) for d in (dest.parent, tmp_path / "a", tmp_path))


def test_the_content_is_in_the_file_when_it_is_fsynced(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    sizes: list[int] = []
    real = os.fsync

    def fsync(fd: int) -> None:
        st = os.fstat(fd)
        if stat.S_ISREG(st.st_mode):
            sizes.append(st.st_size)
        real(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    with atomic_open(tmp_path / "out.bin") as fh:
        fh.write(b"x" * 100)  # held in the stream's buffer until flushed
    assert sizes == [100]


@posix_only
def test_a_directory_that_cannot_be_fsynced_does_not_fail_the_write(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_fsync, real_open = os.fsync, os.open

    def fsync(fd: int) -> None:  # as on a file system that cannot fsync a directory
        if stat.S_ISDIR(os.fstat(fd).st_mode):
            raise OSError(errno.EINVAL, os.strerror(errno.EINVAL))
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    atomic_write_bytes(tmp_path / "a" / "x.bin", b"one")
    assert (tmp_path / "a" / "x.bin").read_bytes() == b"one"

    def open_(path: Any, flags: int, *args: Any, **kwargs: Any) -> int:
        if flags & os.O_DIRECTORY:  # nor open one
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(path))
        return real_open(path, flags, *args, **kwargs)

    monkeypatch.setattr(os, "open", open_)
    with atomic_path(tmp_path / "b" / "x.bin") as tmp:
        tmp.write_bytes(b"two")
    assert (tmp_path / "b" / "x.bin").read_bytes() == b"two"


@needs_proc
def test_no_file_descriptor_is_left_open(tmp_path: Path) -> None:
    def open_fds() -> int:
        return len(os.listdir("/proc/self/fd"))

    before = open_fds()
    for i in range(3):
        atomic_write_bytes(tmp_path / f"d{i}" / "x.bin", b"data")
        with atomic_path(tmp_path / f"p{i}.bin") as tmp:
            tmp.write_bytes(b"data")
        with pytest.raises(RuntimeError), atomic_path(tmp_path / f"f{i}.bin"):
            raise RuntimeError("boom")
    assert open_fds() == before


# ------------------------------------------------------------------------------ errors


def test_an_os_error_naming_another_file_keeps_its_name(tmp_path: Path) -> None:
    # only an error that names no file (a failed write) is given the destination's name
    source = tmp_path / "gone.safetensors"
    with pytest.raises(FileNotFoundError) as info, atomic_path(tmp_path / "out.dzip"):
        raise FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT), str(source))
    assert info.value.filename == str(source)
    assert _names(tmp_path) == []


@pytest.mark.skipif(not hasattr(errno, "EDQUOT"), reason="no EDQUOT here")
def test_a_quota_exceeded_is_a_full_disk() -> None:
    exc = OSError(errno.EDQUOT, os.strerror(errno.EDQUOT), "/x")
    assert os_error_reason(exc) == "disk full (quota exceeded)"


def test_an_os_error_with_no_errno_gives_its_text() -> None:
    assert os_error_reason(OSError("the medium went away")) == "the medium went away"


@posix_only
def test_a_dangling_link_is_replaced_by_a_new_file(tmp_path: Path, umask: None) -> None:
    link = tmp_path / "link.dzip"
    link.symlink_to(tmp_path / "gone.dzip")
    atomic_write_bytes(link, b"data")
    assert not link.is_symlink()
    assert link.read_bytes() == b"data"
    assert _mode(link) == 0o644  # a new file's, as open() gives it under umask 022
    assert _names(tmp_path) == ["link.dzip"]
