"""Crash safety: atomic writes under failures, and run directories that are killed, damaged or
used by two runs at once."""

from __future__ import annotations

import errno
import json
import os
import shutil
import signal
import stat
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

from deepzip._atomic import atomic_open, atomic_write_bytes
from deepzip.cli import main
from deepzip.datasets import DataSplits, ImageDataset
from deepzip.errors import CheckpointError, ConfigError
from deepzip.format import save_checkpoint
from deepzip.pipeline import DZIP_FILE, STATE_FILE, PipelineEvent, read_run, run_recipe
from deepzip.pipeline.state import LOCK_FILE, RunLockedError, lock_run
from full_disk import FullDisk
from pipeline_toy import toy_data, toy_model, toy_recipe

posix_only = pytest.mark.skipif(os.name != "posix", reason="POSIX permission bits")


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def _names(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir())


# --- atomic writes -------------------------------------------------------------------------


def _fail_writing(dest: Path) -> None:
    with atomic_open(dest) as fh:
        fh.write(b"half")
        raise RuntimeError("boom")


def test_a_failed_write_removes_the_directories_it_created(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError, match="boom"):
        _fail_writing(tmp_path / "a" / "b" / "x")
    assert _names(tmp_path) == []


def test_a_failed_write_keeps_a_directory_that_was_there(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    with pytest.raises(RuntimeError, match="boom"):
        _fail_writing(tmp_path / "a" / "b" / "x")
    assert _names(tmp_path) == ["a"]
    assert _names(tmp_path / "a") == []


def test_a_parent_that_is_a_file_is_named(tmp_path: Path) -> None:
    (tmp_path / "f").write_bytes(b"keep")
    with pytest.raises(NotADirectoryError) as info:
        atomic_write_bytes(tmp_path / "f" / "sub" / "x.bin", b"data")
    assert info.value.filename == str(tmp_path / "f")
    assert _names(tmp_path) == ["f"]


@posix_only
def test_a_checkpoint_gets_the_mode_open_would_give(tmp_path: Path, umask: None) -> None:
    """safetensors writes its own 0o600 temporary file and renames it over the one given."""
    new = save_checkpoint(nn.Linear(2, 2), tmp_path / "new.safetensors")
    assert _mode(new) == 0o644
    old = tmp_path / "old.safetensors"
    old.write_bytes(b"")
    old.chmod(0o640)
    save_checkpoint(nn.Linear(2, 2), old)
    assert _mode(old) == 0o640


@pytest.fixture
def full_disk(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every file opened for writing through ``Path.open`` holds at most 100 bytes."""
    real = Path.open

    def open_(self: Path, mode: str = "r", *args: Any, **kwargs: Any) -> Any:
        fh = real(self, mode, *args, **kwargs)
        return FullDisk(fh, 100) if "w" in mode else fh

    monkeypatch.setattr(Path, "open", open_)


def test_a_full_disk_names_the_file(tmp_path: Path, full_disk: None) -> None:
    dest = tmp_path / "out.bin"
    dest.write_bytes(b"old")
    with pytest.raises(OSError, match="No space left on device") as info:
        atomic_write_bytes(dest, bytes(1000))
    assert info.value.errno == errno.ENOSPC
    assert info.value.filename == str(dest)
    assert _names(tmp_path) == ["out.bin"]
    assert dest.read_bytes() == b"old"


def test_compress_on_a_full_disk_is_one_line_naming_the_output(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    src = save_checkpoint(nn.Linear(64, 64), tmp_path / "in.safetensors")
    out = tmp_path / "out.dzip"
    assert main(["compress", str(src), "-o", str(out), "--no-progress"]) == 0
    before = out.read_bytes()
    capsys.readouterr()
    real = Path.open
    monkeypatch.setattr(
        Path,
        "open",
        lambda self, mode="r", *a, **k: (
            FullDisk(real(self, mode, *a, **k), 100) if "w" in mode else real(self, mode, *a, **k)
        ),
    )
    assert main(["compress", str(src), "-o", str(out), "--bits", "3", "--no-progress"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == f"deepzip: error: {out}: No space left on device"
    assert out.read_bytes() == before
    assert _names(tmp_path) == ["in.safetensors", "out.dzip"]


# --- run directories -----------------------------------------------------------------------


@pytest.fixture(scope="module")
def finished(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished run of the toy recipe, copied by the tests that damage it."""
    torch.set_num_threads(1)
    run_dir = tmp_path_factory.mktemp("finished")
    run_recipe(toy_model(), toy_recipe(), run_dir, data=toy_data(), device="cpu")
    return run_dir


def _copy(run_dir: Path, dest: Path, stages: int | None = None) -> Path:
    """A copy of ``run_dir``, cut back to its first ``stages`` stages (as a kill leaves it)."""
    shutil.copytree(run_dir, dest)
    if stages is not None:
        state = json.loads((dest / STATE_FILE).read_text())
        state["stages"] = state["stages"][:stages]
        state["finished"] = False
        (dest / STATE_FILE).write_text(json.dumps(state))
        (dest / DZIP_FILE).unlink()
    return dest


def _resume(run_dir: Path, **kwargs: Any) -> Any:
    return run_recipe(toy_model(), toy_recipe(), run_dir, data=toy_data(), device="cpu", **kwargs)


def test_a_second_run_in_a_busy_directory_is_refused(finished: Path, tmp_path: Path) -> None:
    run_dir = _copy(finished, tmp_path / "run", stages=2)
    before = {p.name: p.read_bytes() for p in run_dir.iterdir()}
    with lock_run(run_dir), pytest.raises(RunLockedError, match="another deepzip run"):
        _resume(run_dir)
    assert {p.name: p.read_bytes() for p in run_dir.iterdir()} == before  # nothing touched
    assert not (run_dir / LOCK_FILE).exists()  # released and removed


def test_a_second_run_does_not_remove_the_first_ones_files(tmp_path: Path) -> None:
    """The busy run's size measurement is a .measure-* directory a starting run removed."""
    events: list[str] = []

    def on_event(event: PipelineEvent) -> None:
        if event.kind == "stage_start" and event.index == 0 and not events:
            events.append("second")
            with pytest.raises(RunLockedError):
                _resume(tmp_path)

    result = _resume(tmp_path, on_event=on_event)
    assert events == ["second"]
    assert result.resumed_from == 0
    assert (tmp_path / DZIP_FILE).is_file()


def test_temporary_files_of_a_killed_run_are_removed(finished: Path, tmp_path: Path) -> None:
    run_dir = _copy(finished, tmp_path / "run", stages=3)
    stale = [
        ".state.json.0123abcd.tmp",
        ".stage-04-finetune.safetensors.deadbeef.tmp",
        f".{DZIP_FILE}.89abcdef.tmp",
    ]
    for name in stale:
        (run_dir / name).write_bytes(b"partial")
    (run_dir / ".notes.txt.0123abcd.tmp").write_bytes(b"the user's")
    (run_dir / LOCK_FILE).write_bytes(b"")  # as a killed run leaves it
    _resume(run_dir)
    names = _names(run_dir)
    assert not set(stale) & set(names)
    assert ".notes.txt.0123abcd.tmp" in names  # not a file of the run
    assert LOCK_FILE not in names
    assert (run_dir / DZIP_FILE).read_bytes() == (finished / DZIP_FILE).read_bytes()


def test_a_changed_stage_checkpoint_is_refused(finished: Path, tmp_path: Path) -> None:
    run_dir = _copy(finished, tmp_path / "run", stages=3)
    path = run_dir / "stage-03-quantize.safetensors"
    data = bytearray(path.read_bytes())
    data[-3] ^= 0x40  # one weight's bits: still a valid checkpoint
    path.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="changed since the run wrote it"):
        _resume(run_dir)


def test_a_changed_teacher_checkpoint_is_refused(finished: Path, tmp_path: Path) -> None:
    run_dir = _copy(finished, tmp_path / "run", stages=1)  # the prune stage distills
    path = run_dir / "stage-01-train.safetensors"
    data = bytearray(path.read_bytes())
    data[-3] ^= 0x40
    path.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match=r"stage-01-train.*changed since"):
        _resume(run_dir)


@pytest.mark.parametrize("damage", ["deleted", "truncated"])
def test_a_finished_run_writes_a_lost_dzip_again(
    finished: Path, tmp_path: Path, damage: str
) -> None:
    run_dir = _copy(finished, tmp_path / "run")
    dzip = run_dir / DZIP_FILE
    if damage == "deleted":
        dzip.unlink()
    else:
        dzip.write_bytes(dzip.read_bytes()[:40])
    events: list[PipelineEvent] = []
    result = _resume(run_dir, on_event=events.append)
    assert result.resumed_from == 4
    assert "the last stage runs again" in events[0].message
    assert dzip.read_bytes() == (finished / DZIP_FILE).read_bytes()
    state = json.loads((run_dir / STATE_FILE).read_text())
    assert state["finished"] is True
    assert state["sha256"] == json.loads((finished / STATE_FILE).read_text())["sha256"]


def test_a_finished_run_with_its_dzip_is_not_redone(finished: Path, tmp_path: Path) -> None:
    run_dir = _copy(finished, tmp_path / "run")
    assert _resume(run_dir).resumed_from == 5


def test_malformed_digests_in_the_state_are_a_config_error(finished: Path, tmp_path: Path) -> None:
    run_dir = _copy(finished, tmp_path / "run")
    state = json.loads((run_dir / STATE_FILE).read_text())
    state["sha256"] = ["not", "a", "map"]
    (run_dir / STATE_FILE).write_text(json.dumps(state))
    with pytest.raises(ConfigError, match="'sha256' must map file names"):
        read_run(run_dir)


def _misfit_data() -> DataSplits:
    """5×5 images for the toy model's 20 inputs."""
    g = torch.Generator().manual_seed(0)

    def split(n: int, name: str) -> ImageDataset:
        return ImageDataset(torch.randn(n, 1, 5, 5, generator=g), torch.zeros(n).long(), "x", name)

    return DataSplits(split(32, "train"), split(16, "val"), split(16, "test"))


def test_a_fresh_run_that_fails_at_once_leaves_no_directory(tmp_path: Path) -> None:
    run_dir = tmp_path / "new" / "run"
    with pytest.raises(RuntimeError):
        run_recipe(toy_model(), toy_recipe(), run_dir, data=_misfit_data(), device="cpu")
    assert not (tmp_path / "new").exists()  # nor the parent it made for it


def test_a_fresh_run_that_fails_at_once_empties_the_given_directory(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError):
        run_recipe(toy_model(), toy_recipe(), tmp_path, data=_misfit_data(), device="cpu")
    assert tmp_path.is_dir()
    assert _names(tmp_path) == []


_KILL_DURING_DZIP = textwrap.dedent(
    """
    import os, signal, sys
    import torch
    from pipeline_toy import toy_data, toy_model, toy_recipe
    from deepzip.pipeline import run_recipe

    torch.set_num_threads(1)
    real = os.replace

    def replace(src, dst):  # SIGKILL just before model.dzip gets its name
        if os.path.basename(dst) == "model.dzip" and ".measure" not in str(dst):
            os.kill(os.getpid(), signal.SIGKILL)
        real(src, dst)

    os.replace = replace
    run_recipe(toy_model(), toy_recipe(), sys.argv[1], data=toy_data(), device="cpu")
    """
)


@pytest.mark.skipif(os.name != "posix", reason="SIGKILL")
def test_a_run_killed_while_writing_the_dzip_resumes_cleanly(
    finished: Path, tmp_path: Path
) -> None:
    run_dir = tmp_path / "run"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(__file__).parent), *sys.path])}
    proc = subprocess.run(
        [sys.executable, "-c", _KILL_DURING_DZIP, str(run_dir)],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )
    assert proc.returncode == -9, proc.stderr
    assert not (run_dir / DZIP_FILE).exists()
    assert any(n.startswith(f".{DZIP_FILE}.") for n in _names(run_dir))  # what a kill leaves
    result = _resume(run_dir)
    assert result.resumed_from == 4
    assert (run_dir / DZIP_FILE).read_bytes() == (finished / DZIP_FILE).read_bytes()
    assert [n for n in _names(run_dir) if n.startswith(".")] == []


# --- the command line ----------------------------------------------------------------------


def test_run_in_a_busy_directory_is_one_line(
    quantize_run: tuple[list[str], Path], capsys: pytest.CaptureFixture[str]
) -> None:
    argv, run_dir = quantize_run
    run_dir.mkdir()
    with lock_run(run_dir):
        assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0
    assert err.startswith(f"deepzip: error: {run_dir}: another deepzip run is using")
    assert _names(run_dir) == []


_TERMINATE_BEFORE_RENAME = textwrap.dedent(
    """
    import os, signal, sys
    from deepzip.cli import main

    real = os.replace

    def replace(src, dst):  # SIGTERM (kill PID) just before the output gets its name
        os.kill(os.getpid(), signal.SIGTERM)
        real(src, dst)

    os.replace = replace
    sys.exit(main(sys.argv[1:]))
    """
)


@pytest.mark.skipif(os.name != "posix", reason="SIGTERM")
def test_a_terminated_command_leaves_no_temporary_file(tmp_path: Path) -> None:
    src = save_checkpoint(nn.Linear(64, 64), tmp_path / "in.safetensors")
    out = tmp_path / "out.dzip"
    out.write_bytes(b"previous output")
    argv = ["compress", str(src), "-o", str(out), "--no-progress"]
    proc = subprocess.run(
        [sys.executable, "-c", _TERMINATE_BEFORE_RENAME, *argv],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 128 + 15, proc.stderr
    assert proc.stderr.strip() == "deepzip: terminated"
    assert out.read_bytes() == b"previous output"
    assert _names(tmp_path) == ["in.safetensors", "out.dzip"]


def test_the_sigterm_handler_is_put_back(tmp_path: Path) -> None:
    before = signal.getsignal(signal.SIGTERM)
    src = save_checkpoint(nn.Linear(4, 4), tmp_path / "in.safetensors")
    assert main(["compress", str(src), "-o", str(tmp_path / "o.dzip"), "--no-progress"]) == 0
    assert signal.getsignal(signal.SIGTERM) is before


def test_a_finished_run_on_read_only_media_is_read_back(
    finished: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    run_dir = _copy(finished, tmp_path / "run")
    real = os.open

    def open_(path: Any, flags: int, *args: Any, **kwargs: Any) -> int:
        if Path(path).name == LOCK_FILE:
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(path))
        return real(path, flags, *args, **kwargs)

    monkeypatch.setattr(os, "open", open_)
    assert _resume(run_dir).resumed_from == 5


def test_a_missing_stage_checkpoint_says_how_to_go_on(finished: Path, tmp_path: Path) -> None:
    run_dir = _copy(finished, tmp_path / "run", stages=3)
    (run_dir / "stage-03-quantize.safetensors").unlink()
    with pytest.raises(CheckpointError, match=r"stage-03-quantize.*is gone.*--restart"):
        _resume(run_dir)


def test_a_directory_that_cannot_be_written_is_named_not_the_temporary_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = os.open

    def open_(path: Any, flags: int, *args: Any, **kwargs: Any) -> int:
        if flags & os.O_CREAT:
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(path))
        return real(path, flags, *args, **kwargs)

    monkeypatch.setattr(os, "open", open_)
    with pytest.raises(OSError, match="Read-only file system") as info:
        atomic_write_bytes(tmp_path / "out.dzip", b"data")
    assert info.value.filename == str(tmp_path / "out.dzip")
    assert _names(tmp_path) == []
