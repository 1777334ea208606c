"""Atomic writes: all or nothing, and the permissions a plain ``open()`` would give."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from deepzip._atomic import atomic_open, atomic_path, atomic_write_bytes

posix_only = pytest.mark.skipif(os.name != "posix", reason="POSIX permission bits")


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@posix_only
@pytest.mark.parametrize("mask", [0o022, 0o027, 0o077, 0o002], ids=oct)
def test_a_new_file_gets_the_mode_open_would_give(tmp_path: Path, umask: None, mask: int) -> None:
    os.umask(mask)
    plain = tmp_path / "plain.bin"
    with plain.open("wb"):
        pass
    atomic_write_bytes(tmp_path / "atomic.bin", b"data")
    with atomic_path(tmp_path / "by_path.bin") as tmp:
        tmp.write_bytes(b"data")
    assert _mode(plain) == 0o666 & ~mask
    assert _mode(tmp_path / "atomic.bin") == _mode(plain)
    assert _mode(tmp_path / "by_path.bin") == _mode(plain)


@posix_only
@pytest.mark.parametrize("mode", [0o644, 0o600, 0o755, 0o640], ids=oct)
def test_a_replaced_file_keeps_its_mode(tmp_path: Path, umask: None, mode: int) -> None:
    dest = tmp_path / "net.dzip"
    dest.write_bytes(b"old")
    dest.chmod(mode)
    os.umask(0o077)  # ignored: the file keeps what it had, as open("wb") would
    atomic_write_bytes(dest, b"new")
    assert dest.read_bytes() == b"new"
    assert _mode(dest) == mode


def _write_half_then_fail(dest: Path) -> None:
    with atomic_open(dest) as fh:
        fh.write(b"half")
        raise RuntimeError("boom")


def test_a_failed_write_leaves_nothing_behind(tmp_path: Path) -> None:
    dest = tmp_path / "out.bin"
    dest.write_bytes(b"old")
    with pytest.raises(RuntimeError, match="boom"):
        _write_half_then_fail(dest)
    assert dest.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["out.bin"]


def _record_fsync_and_replace(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, str]]:
    """Record ``("fsync", path of the fd)`` and ``("replace", source)`` calls, in order."""
    calls: list[tuple[str, str]] = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd: int) -> None:
        calls.append(("fsync", os.readlink(f"/proc/self/fd/{fd}")))
        real_fsync(fd)

    def replace(src: str | os.PathLike[str], dst: str | os.PathLike[str]) -> None:
        calls.append(("replace", str(src)))
        real_replace(src, dst)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    return calls


@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="needs /proc/self/fd")
def test_atomic_path_fsyncs_the_file_before_the_rename(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = _record_fsync_and_replace(monkeypatch)
    dest = tmp_path / "out.bin"
    with atomic_path(dest) as tmp:
        tmp.write_bytes(b"data")  # written by another writer, through the path
    assert calls == [("fsync", str(tmp)), ("replace", str(tmp)), ("fsync", str(tmp_path))]
    assert dest.read_bytes() == b"data"


@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="needs /proc/self/fd")
def test_atomic_open_fsyncs_once_before_the_rename(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = _record_fsync_and_replace(monkeypatch)
    dest = tmp_path / "out.bin"
    with atomic_open(dest) as fh:
        fh.write(b"data")
        tmp = fh.name
    assert calls == [("fsync", str(tmp)), ("replace", str(tmp)), ("fsync", str(tmp_path))]


def test_a_failed_block_is_not_fsynced_or_renamed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[str] = []
    monkeypatch.setattr(os, "fsync", lambda fd: calls.append("fsync"))
    dest = tmp_path / "out.bin"

    def write_half_then_fail() -> None:
        with atomic_path(dest) as tmp:
            tmp.write_bytes(b"half")
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        write_half_then_fail()
    assert calls == []
    assert list(tmp_path.iterdir()) == []


def test_a_directory_destination_is_refused_naming_it(tmp_path: Path) -> None:
    # the rename failed only after the write, naming the temporary file first
    dest = tmp_path / "out.dzip"
    dest.mkdir()
    with pytest.raises(IsADirectoryError) as info, atomic_path(dest) as tmp:
        tmp.write_bytes(b"never")
    assert info.value.filename == str(dest)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.dzip"]
    assert list(dest.iterdir()) == []
