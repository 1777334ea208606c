"""Atomic writes: all or nothing, and the permissions a plain ``open()`` would give."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from deepzip._atomic import atomic_open, atomic_path, atomic_write_bytes

posix_only = pytest.mark.skipif(os.name != "posix", reason="POSIX permission bits")


@pytest.fixture
def umask() -> Iterator[None]:
    """Restore the process umask after the test (the tests set it)."""
    old = os.umask(0o022)
    try:
        yield
    finally:
        os.umask(old)


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
