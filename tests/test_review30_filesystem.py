"""Review 30, file systems: long names, FIFOs and devices, dangling links, interrupted and failed
writes, and what a replaced symbolic link or read-only file becomes."""

from __future__ import annotations

import errno
import os
import stat
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from torch import nn

from deepzip import compress_checkpoint
from deepzip._atomic import atomic_path, atomic_write_bytes
from deepzip.cli import main
from deepzip.config.tomlfile import MAX_TOML_BYTES, load_toml
from deepzip.errors import CheckpointError, ConfigError, CorruptFileError
from deepzip.format import dzip_writer
from deepzip.format.api import inspect, load_state_dict, save, to_safetensors
from deepzip.format.checkpoint import read_checkpoint, save_checkpoint
from deepzip.runtime import load_compressed

posix_only = pytest.mark.skipif(os.name != "posix", reason="POSIX file system features")


def _name_max(directory: Path) -> int:
    try:
        return os.pathconf(directory, "PC_NAME_MAX")
    except (AttributeError, OSError, ValueError):
        return 255


def _state() -> dict[str, torch.Tensor]:
    return {"w": torch.arange(12, dtype=torch.float32).reshape(3, 4), "b": torch.ones(3)}


def _error_line(capsys: pytest.CaptureFixture[str]) -> str:
    err = capsys.readouterr().err
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.startswith("deepzip: error:")]
    assert len(lines) == 1, err
    return lines[0]


# ----------------------------------------------------------------------------- long names


@posix_only
def test_a_name_at_the_file_system_limit_can_be_written(tmp_path: Path) -> None:
    # the temporary file's name (".<name>.<8 hex>.tmp") was 14 bytes longer than the
    # destination's: a name of 242 to 255 bytes failed with ENAMETOOLONG
    limit = _name_max(tmp_path)
    dest = tmp_path / ("m" * (limit - 5) + ".dzip")
    save(_state(), dest)
    assert torch.equal(load_state_dict(dest)["w"], _state()["w"])
    wide = tmp_path / ("я" * ((limit - 5) // 2) + ".bin")  # two bytes a character
    atomic_write_bytes(wide, b"data")
    assert wide.read_bytes() == b"data"
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([dest.name, wide.name])


@posix_only
def test_a_name_over_the_limit_fails_before_the_work_naming_it(tmp_path: Path) -> None:
    dest = tmp_path / ("m" * (_name_max(tmp_path) - 4) + ".dzip")
    ran = []
    with pytest.raises(OSError, match="too long") as info, atomic_path(dest):
        ran.append(True)
    assert info.value.errno == errno.ENAMETOOLONG
    assert info.value.filename == str(dest)
    assert ran == []
    assert list(tmp_path.iterdir()) == []


# ------------------------------------------------------------- FIFOs, directories, devices


@pytest.fixture
def fifo(tmp_path: Path) -> Iterator[Path]:
    """A FIFO named like a model file. Should a reader block opening it, a helper opens it
    for writing after a few seconds (the reader then sees an empty file), so a regression
    fails instead of hanging."""
    if not hasattr(os, "mkfifo"):
        pytest.skip("no FIFOs here")
    path = tmp_path / "model.dzip"
    os.mkfifo(path)
    stop = threading.Event()

    def unblock() -> None:
        while not stop.wait(3.0):
            fd = os.open(path, os.O_RDWR | os.O_NONBLOCK)
            time.sleep(0.1)
            os.close(fd)

    helper = threading.Thread(target=unblock, daemon=True)
    helper.start()
    yield path
    stop.set()
    helper.join()


def test_reading_a_fifo_is_refused_at_once_naming_it(fifo: Path, tmp_path: Path) -> None:
    for read in (inspect, load_state_dict, lambda p: to_safetensors(p, tmp_path / "o.st")):
        t0 = time.monotonic()
        with pytest.raises(CorruptFileError, match="FIFO") as info:
            read(fifo)
        assert str(fifo) in str(info.value)
        assert time.monotonic() - t0 < 2.0
    assert not (tmp_path / "o.st").exists()
    ckpt = fifo.with_name("model.safetensors")
    os.mkfifo(ckpt)
    with pytest.raises(CheckpointError, match="not a regular file") as cinfo:
        read_checkpoint(ckpt)
    assert str(ckpt) in str(cinfo.value)


@pytest.mark.parametrize("command", ["inspect", "bench", "decompress"])
def test_the_cli_refuses_a_fifo_in_one_line(
    fifo: Path, tmp_path: Path, command: str, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = [command, str(fifo)]
    if command == "bench":
        argv += ["--model", "lenet-300-100"]
    if command == "decompress":
        argv += ["-o", str(tmp_path / "out.safetensors"), "--no-progress"]
    assert main(argv) == 2
    line = _error_line(capsys)
    assert str(fifo) in line
    assert "FIFO" in line


def test_a_directory_or_a_device_is_not_a_model_file(tmp_path: Path) -> None:
    with pytest.raises(CorruptFileError, match="a directory") as info:
        inspect(tmp_path)
    assert str(tmp_path) in str(info.value)
    with pytest.raises(CheckpointError, match="not a regular file"):
        read_checkpoint(tmp_path / "")
    with pytest.raises(CheckpointError, match="checkpoint not found"):  # (missing: as before)
        read_checkpoint(tmp_path / "none.safetensors")
    if Path("/dev/zero").exists():
        with pytest.raises(CorruptFileError, match="character device"):
            load_state_dict("/dev/zero")
        with pytest.raises(CheckpointError, match="not a regular file"):
            read_checkpoint("/dev/zero")


# ----------------------------------------------------------------- dangling links on the way


@posix_only
def test_a_dangling_link_on_the_way_is_named_as_not_a_directory(tmp_path: Path) -> None:
    # mkdir of the link's name failed with "File exists", naming it as if it were fine
    link = tmp_path / "out"
    link.symlink_to(tmp_path / "gone")
    with pytest.raises(NotADirectoryError) as info:
        save(_state(), link / "m.dzip")
    assert info.value.filename == str(link)
    assert link.is_symlink()
    assert not (tmp_path / "gone").exists()


@posix_only
@pytest.mark.parametrize("flag", ["-o", "--json"])
def test_the_cli_refuses_a_bad_output_before_the_work(
    tmp_path: Path, flag: str, capsys: pytest.CaptureFixture[str]
) -> None:
    # both were found only when written: after compressing (and after writing -o, for --json)
    ckpt = tmp_path / "in.safetensors"
    save_checkpoint(nn.Linear(8, 4), ckpt)
    (tmp_path / "out").symlink_to(tmp_path / "gone")
    long_name = str(tmp_path / ("r" * (_name_max(tmp_path) + 1)))
    for bad in (str(tmp_path / "out" / "r.json"), long_name):
        argv = ["compress", str(ckpt), "-o", str(tmp_path / "x.dzip"), "--no-progress"]
        argv[3] = bad if flag == "-o" else argv[3]
        if flag == "--json":
            argv += ["--json", bad]
        assert main(argv) == 2
        line = _error_line(capsys)
        assert f"{flag} {bad}" in line
        assert not (tmp_path / "x.dzip").exists()


# ------------------------------------------------- what replacing a link or a locked file does


@posix_only
def test_a_symlink_destination_is_replaced_its_target_left_alone(tmp_path: Path) -> None:
    target = tmp_path / "target.dzip"
    save({"a": torch.zeros(2)}, target)
    before = target.read_bytes()
    target.chmod(0o640)
    link = tmp_path / "link.dzip"
    link.symlink_to(target)
    save(_state(), link)
    assert not link.is_symlink()
    assert target.read_bytes() == before
    assert stat.S_IMODE(link.stat().st_mode) == 0o640  # the permission bits it replaced
    assert torch.equal(load_state_dict(link)["b"], torch.ones(3))


@posix_only
def test_a_read_only_destination_is_replaced_keeping_its_mode(tmp_path: Path) -> None:
    dest = tmp_path / "m.dzip"
    save({"a": torch.zeros(2)}, dest)
    dest.chmod(0o444)
    save(_state(), dest)
    assert stat.S_IMODE(dest.stat().st_mode) == 0o444
    assert torch.equal(load_state_dict(dest)["w"], _state()["w"])


# ------------------------------------------------------- failed and interrupted writes


def test_a_full_disk_leaves_the_old_file_and_names_the_destination(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    dest = tmp_path / "m.dzip"
    save({"a": torch.zeros(2)}, dest)
    before = dest.read_bytes()

    def full(self: object) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(dzip_writer.DzipWriter, "_finish", full)
    with pytest.raises(OSError, match="No space") as info:
        save(_state(), dest)
    assert info.value.errno == errno.ENOSPC
    assert info.value.filename == str(dest)
    assert dest.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["m.dzip"]


def test_an_interrupted_save_leaves_the_old_file_and_no_temporary(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    dest = tmp_path / "new" / "m.dzip"
    save({"a": torch.zeros(2)}, tmp_path / "keep.dzip")
    real = dzip_writer.DzipWriter.add_raw
    calls = []

    def interrupt_second(self: dzip_writer.DzipWriter, name: str, t: torch.Tensor) -> object:
        calls.append(name)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(self, name, t)

    monkeypatch.setattr(dzip_writer.DzipWriter, "add_raw", interrupt_second)
    with pytest.raises(KeyboardInterrupt):
        save(_state(), dest)
    assert [p.name for p in tmp_path.iterdir()] == ["keep.dzip"]  # nor the directory made


def test_the_runtime_refuses_a_fifo_too(fifo: Path) -> None:
    # the regular-file check is in DzipReader itself, so every reader of .dzip files has it
    t0 = time.monotonic()
    with pytest.raises(CorruptFileError, match="FIFO"):
        load_compressed(fifo, nn.Sequential(nn.Linear(2, 2)))
    assert time.monotonic() - t0 < 2.0


def test_a_recipe_that_is_a_fifo_a_device_or_huge_is_refused_at_once(fifo: Path) -> None:
    # load_toml (--recipe, Recipe.load) blocked on a FIFO and read /dev/zero until memory ran out
    recipe = fifo.with_name("recipe.toml")
    os.mkfifo(recipe)
    t0 = time.monotonic()
    with pytest.raises(ConfigError, match="not a regular file") as info:
        load_toml(recipe)
    assert str(recipe) in str(info.value)
    if Path("/dev/zero").exists():
        with pytest.raises(ConfigError, match="/dev/zero: cannot read the recipe"):
            load_toml("/dev/zero")
    assert time.monotonic() - t0 < 2.0
    big = fifo.with_name("big.toml")
    big.write_bytes(b"# " + b"x" * MAX_TOML_BYTES + b"\n")
    with pytest.raises(ConfigError, match="too large for a recipe file"):
        load_toml(big)
    ok = fifo.with_name("ok.toml")
    ok.write_text('seed = 3\n[model]\nname = "x"\n', encoding="utf-8")
    assert load_toml(ok) == {"seed": 3, "model": {"name": "x"}}


def test_compress_names_a_fifo_as_not_a_regular_file(fifo: Path, tmp_path: Path) -> None:
    # compress_checkpoint said "checkpoint not found" for a path that exists
    ckpt = fifo.with_name("model.safetensors")
    os.mkfifo(ckpt)
    with pytest.raises(CheckpointError, match="not a checkpoint file \\(not a regular file\\)"):
        compress_checkpoint(ckpt, tmp_path / "o.dzip")
    assert not (tmp_path / "o.dzip").exists()
