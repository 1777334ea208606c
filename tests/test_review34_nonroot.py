"""Session 34: deepzip run as a user other than root. A directory that may not be searched
(another user's home on the data search path, a checkpoint's folder) escaped as a bare
PermissionError or stopped the data search; a shard directory that may not be listed was
reported as holding no shards; an unreadable run state asked for a restart, which would
discard the run; an unreadable stage checkpoint escaped untyped; an output that the sticky
bit of its directory keeps from being replaced failed only after the work. The tests run as
root, which may do all of it, so the refusals of the kernel are emulated."""

from __future__ import annotations

import os
import stat
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file
from torch import nn

import deepzip as dz
from deepzip.cli import main
from deepzip.datasets import mnist
from deepzip.errors import CheckpointError, ConfigError, CorruptFileError, DatasetNotFoundError
from deepzip.format import DzipReader
from deepzip.pipeline.state import (
    LOCK_FILE,
    RunLockedError,
    load_stage_checkpoint,
    lock_run,
    read_state,
    save_stage_checkpoint,
)
from permissions import refuse, unreadable, unsearchable


def _tensors() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return {"fc.weight": torch.randn(8, 8, generator=g), "fc.bias": torch.zeros(8)}


def _idx_files(directory: Path) -> None:
    directory.mkdir(parents=True)
    for name in mnist._all_files():
        (directory / f"{name}.gz").write_bytes(b"")


def test_the_data_search_goes_past_a_home_it_may_not_look_in(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # as `nobody` with HOME=/root: ~/.cache may not be searched, the system copy may be read
    home, system = tmp_path / "home", tmp_path / "system"
    _idx_files(home / ".cache" / "deepzip" / "fashion-mnist")
    _idx_files(system / "fashion-mnist")
    monkeypatch.delenv("DEEPZIP_DATA", raising=False)
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setattr(mnist, "SYSTEM_DATA_ROOT", system)
    unsearchable(monkeypatch, home)
    assert mnist.find_data_dir("fashion-mnist") == system / "fashion-mnist"


def test_a_data_directory_it_may_not_look_in_is_said_so(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = tmp_path / "data"
    _idx_files(data)
    unsearchable(monkeypatch, data)
    with pytest.raises(DatasetNotFoundError) as info:
        mnist.find_data_dir("fashion-mnist", data)
    assert f"  - {data} (cannot look in it: no permission)\n" in str(info.value)


def test_a_shard_directory_that_may_not_be_listed_is_not_called_empty(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    tensors = _tensors()
    save_file({"fc.weight": tensors["fc.weight"]}, str(tmp_path / "a.safetensors"))
    save_file({"fc.bias": tensors["fc.bias"]}, str(tmp_path / "b.safetensors"))
    out = tmp_path.parent / f"{tmp_path.name}.dzip"
    unreadable(monkeypatch, tmp_path)  # (its files may still be opened by name)
    with pytest.raises(CheckpointError) as info:
        dz.compress_checkpoint(tmp_path, out)
    assert str(info.value) == f"{tmp_path}: cannot list it: no permission"
    assert not out.exists()


def test_a_shard_directory_that_may_not_be_searched_is_named(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    save_file(_tensors(), str(tmp_path / "a.safetensors"))
    out = tmp_path.parent / f"{tmp_path.name}.dzip"
    unsearchable(monkeypatch, tmp_path)
    with pytest.raises(CheckpointError) as info:
        dz.compress_checkpoint(tmp_path, out)
    index = tmp_path / "model.safetensors.index.json"
    assert str(info.value) == f"{index}: cannot read it: no permission"
    assert not out.exists()


def test_a_checkpoint_in_a_directory_that_may_not_be_searched_is_named(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = tmp_path / "folder"
    folder.mkdir()
    src = folder / "model.safetensors"
    save_file(_tensors(), str(src))
    out = tmp_path / "out.dzip"
    unsearchable(monkeypatch, folder)
    expected = f"{src}: cannot read it: no permission"
    with pytest.raises(CheckpointError) as info:
        dz.compress_checkpoint(src, out)
    assert str(info.value) == expected
    with pytest.raises(CheckpointError) as info:
        dz.read_checkpoint(src)
    assert str(info.value) == expected
    assert main(["compress", str(src), "-o", str(out), "--no-progress"]) == 2
    assert capsys.readouterr().err.strip() == f"deepzip: error: {expected}"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["folder"]


def test_a_dzip_file_that_may_not_be_opened_is_named_with_the_reason(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = tmp_path / "folder"
    folder.mkdir()
    src = folder / "net.dzip"
    dz.save(nn.Linear(4, 4), src)
    out = tmp_path / "out.safetensors"
    unsearchable(monkeypatch, folder)
    with pytest.raises(CorruptFileError) as info:
        DzipReader(src)
    assert str(info.value) == f"{src}: cannot open: no permission"
    assert main(["decompress", str(src), "-o", str(out), "--no-progress"]) == 2
    assert capsys.readouterr().err.strip() == f"deepzip: error: {src}: cannot open: no permission"
    assert not out.exists()


def test_an_unreadable_run_state_asks_for_no_restart(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "state.json"
    path.write_text("{}")
    unreadable(monkeypatch, path)
    with pytest.raises(ConfigError) as info:
        read_state(path)
    assert str(info.value) == f"{path}: cannot read the run state: no permission"


def test_an_unreadable_stage_checkpoint_is_named(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "stage-01-train.safetensors"
    save_stage_checkpoint(nn.Linear(2, 2), path, {})
    unreadable(monkeypatch, path)
    with pytest.raises(CheckpointError) as info:
        load_stage_checkpoint(nn.Linear(2, 2), path, sha256="0" * 64)
    assert str(info.value) == f"{path}: cannot read it: no permission"


@pytest.mark.skipif(not hasattr(os, "geteuid"), reason="POSIX ownership")
def test_another_users_file_in_a_sticky_directory_is_refused_before_the_work(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    src = tmp_path / "model.safetensors"
    save_file(_tensors(), str(src))
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o1777)  # as /tmp
    old = shared / "old.dzip"
    old.write_bytes(b"another user's")
    owner = old.stat().st_uid
    monkeypatch.setattr(os, "geteuid", lambda: owner + 1)  # not the owner, not root
    assert main(["compress", str(src), "-o", str(old), "--no-progress"]) == 2
    assert capsys.readouterr().err.strip() == (
        f"deepzip: error: -o {old}: cannot replace it: another user's file in {shared}, "
        "whose sticky bit lets only the file's owner replace it"
    )
    assert old.read_bytes() == b"another user's"
    assert sorted(p.name for p in shared.iterdir()) == ["old.dzip"]
    # its owner replaces it; a new file is written; without the sticky bit, anyone replaces it
    monkeypatch.setattr(os, "geteuid", lambda: owner)
    assert main(["compress", str(src), "-o", str(old), "--no-progress"]) == 0
    monkeypatch.setattr(os, "geteuid", lambda: owner + 1)
    assert main(["compress", str(src), "-o", str(shared / "new.dzip"), "--no-progress"]) == 0
    shared.chmod(0o777)
    assert main(["compress", str(src), "-o", str(old), "--no-progress"]) == 0
    assert stat.S_IMODE(shared.stat().st_mode) == 0o777


@pytest.mark.skipif(sys.platform == "win32", reason="flock")
def test_another_users_lock_file_still_locks_the_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import fcntl

    lock = tmp_path / LOCK_FILE
    lock.touch(mode=0o644)  # left by a run of another user, who holds it
    holder = os.open(lock, os.O_RDONLY)
    try:
        fcntl.flock(holder, fcntl.LOCK_EX | fcntl.LOCK_NB)
        real_open = os.open

        def fake_open(path: object, flags: int, *args: object, **kwargs: object) -> int:
            if os.fsdecode(path) == str(lock) and flags & (os.O_RDWR | os.O_WRONLY):  # type: ignore[arg-type]
                raise refuse(path)
            return real_open(path, flags, *args, **kwargs)  # type: ignore[arg-type]

        monkeypatch.setattr(os, "open", fake_open)
        with pytest.raises(RunLockedError, match="another deepzip run"), lock_run(tmp_path):
            pass
        fcntl.flock(holder, fcntl.LOCK_UN)  # its run ended (or was killed): ours runs
        with lock_run(tmp_path), pytest.raises(BlockingIOError):  # and holds the lock
            fcntl.flock(holder, fcntl.LOCK_EX | fcntl.LOCK_NB)
    finally:
        os.close(holder)
