"""Review 31: the messages of file-system failures say what went wrong and name a path that
means something to the user (the run directory and the stage, the output), not a temporary."""

from __future__ import annotations

import errno
import os
import pickle
import re
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import torch
from torch import nn

from deepzip._atomic import os_error_reason
from deepzip.cli import main
from deepzip.cli._common import _check_output, _os_error
from deepzip.errors import ConfigError, DeepZipError
from deepzip.format import save_checkpoint
from deepzip.pipeline import DZIP_FILE, read_run, run_recipe
from deepzip.pipeline.state import RunWriteError
from full_disk import FullDisk
from pipeline_toy import toy_data, toy_model, toy_recipe

posix_only = pytest.mark.skipif(sys.platform == "win32", reason="POSIX file systems")


def _full_while_measuring(monkeypatch: pytest.MonkeyPatch, prefix: str) -> None:
    """The disk fills while a file is written in a run's ``.measure-NN-`` directory."""
    real = Path.open

    def open_(self: Path, mode: str = "r", *args: Any, **kwargs: Any) -> Any:
        fh = real(self, mode, *args, **kwargs)
        return FullDisk(fh, 100) if "w" in mode and self.parent.name.startswith(prefix) else fh

    monkeypatch.setattr(Path, "open", open_)


def _run(run_dir: Path) -> Any:
    return run_recipe(toy_model(), toy_recipe(), run_dir, data=toy_data(), device="cpu")


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    """The ``.dzip`` of an uninterrupted run of the toy recipe."""
    torch.set_num_threads(1)
    run_dir = tmp_path_factory.mktemp("reference")
    _run(run_dir)
    return (run_dir / DZIP_FILE).read_bytes()


# --- a full disk while a run measures a stage's size ---------------------------------------


def test_a_full_disk_while_measuring_names_the_run_directory_and_the_stage(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, reference: bytes
) -> None:
    # it was an OSError naming ".../.measure-02-xxxxxxxx/model.dzip", a path that is gone
    run_dir = tmp_path / "run"
    with monkeypatch.context() as m:
        _full_while_measuring(m, ".measure-02-")
        with pytest.raises(RunWriteError) as info:
            _run(run_dir)
    exc = info.value
    assert str(exc) == (
        f"stage 2 (prune): cannot measure its .dzip size in the run directory {run_dir}: disk full"
    )
    assert isinstance(exc, DeepZipError)
    assert isinstance(exc, OSError)
    assert exc.errno == errno.ENOSPC
    assert exc.strerror == os.strerror(errno.ENOSPC)
    assert exc.filename == str(run_dir)
    assert isinstance(exc.__cause__, OSError)
    # no temporary left, and only the first stage recorded
    assert not [p for p in run_dir.iterdir() if p.name.startswith(".")]
    _, _, stages = read_run(run_dir)
    assert len(stages) == 1
    # space freed: the run resumes at the stage that failed and ends as an uninterrupted one
    result = _run(run_dir)
    assert result.resumed_from == 1
    assert (run_dir / DZIP_FILE).read_bytes() == reference


def test_a_full_disk_while_measuring_the_starting_model_leaves_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    run_dir = tmp_path / "run"
    _full_while_measuring(monkeypatch, ".measure-00-")
    with pytest.raises(RunWriteError, match=r"^the starting model: cannot measure") as info:
        _run(run_dir)
    assert f"run directory {run_dir}: disk full" in str(info.value)
    assert ".measure" not in str(info.value)
    assert not run_dir.exists()  # a fresh run that recorded nothing leaves no directory


def test_a_run_write_error_pickles_with_its_cause() -> None:
    exc = RunWriteError("stage 1 (train): x", errno.ENOSPC, "No space left on device", "/r")
    back = pickle.loads(pickle.dumps(exc))
    assert type(back) is RunWriteError
    assert (str(back), back.errno, back.strerror, back.filename) == (
        "stage 1 (train): x",
        errno.ENOSPC,
        "No space left on device",
        "/r",
    )
    assert _os_error(exc) == "stage 1 (train): x"  # the CLI's line is the message


def test_the_cli_names_the_stage_and_the_run_directory_on_a_full_disk(
    quantize_run: tuple[list[str], Path],
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    argv, run_dir = quantize_run
    _full_while_measuring(monkeypatch, ".measure-01-")
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]  # (after the progress lines)
    assert err == (
        "deepzip: error: stage 1 (quantize): cannot measure its .dzip size in the run "
        f"directory {run_dir}: disk full"
    )


# --- a read-only file system is not "no permission" ----------------------------------------


@pytest.mark.parametrize(
    ("code", "words"),
    [
        (errno.EROFS, "read-only file system"),
        (errno.EACCES, "no permission"),
        (errno.EPERM, "no permission"),
        (errno.ENOSPC, "disk full"),
        (errno.EIO, os.strerror(errno.EIO)),
    ],
)
def test_os_error_reason_says_what_went_wrong(code: int, words: str) -> None:
    assert os_error_reason(OSError(code, os.strerror(code), "/x")) == words


def _unwritable(monkeypatch: pytest.MonkeyPatch, directory: Path, *, read_only: bool) -> None:
    """``directory`` cannot be written: on a read-only file system, or for want of permission."""
    real_access, real_statvfs = os.access, os.statvfs

    def access(path: Any, mode: int, *args: Any, **kwargs: Any) -> bool:
        if Path(path) == directory and mode & os.W_OK:
            return False
        return real_access(path, mode, *args, **kwargs)

    def statvfs(path: Any) -> Any:
        st = real_statvfs(path)
        if Path(path) != directory:
            return st
        fields = {k: getattr(st, k) for k in dir(st) if k.startswith("f_")}
        fields["f_flag"] = st.f_flag | os.ST_RDONLY if read_only else st.f_flag & ~os.ST_RDONLY
        return SimpleNamespace(**fields)

    monkeypatch.setattr(os, "access", access)
    monkeypatch.setattr(os, "statvfs", statvfs)


@posix_only
def test_a_read_only_output_directory_is_named_as_such(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # it was "no permission to write in ..." for a read-only file system too
    ckpt = save_checkpoint(nn.Linear(8, 4), tmp_path / "in.safetensors")
    out_dir = tmp_path / "media"
    out_dir.mkdir()
    out = out_dir / "out.dzip"
    _unwritable(monkeypatch, out_dir, read_only=True)
    assert main(["compress", str(ckpt), "-o", str(out), "--no-progress"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == f"deepzip: error: -o {out}: cannot write in {out_dir}: read-only file system"
    assert not out.exists()


@posix_only
def test_an_output_directory_without_permission_says_so(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _unwritable(monkeypatch, tmp_path, read_only=False)
    with pytest.raises(ConfigError) as info:
        _check_output(tmp_path / "out.dzip", "-o")
    assert (
        str(info.value) == f"-o {tmp_path / 'out.dzip'}: cannot write in {tmp_path}: no permission"
    )


@posix_only
def test_an_existing_run_directory_is_checked_itself_not_its_parent(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # a writable run directory in a parent the user cannot write to was refused, naming the
    # parent; a run directory the user cannot write to, in a writable parent, was accepted
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    with monkeypatch.context() as m:
        _unwritable(m, tmp_path, read_only=False)
        _check_output(run_dir, "--run-dir", directory=True)
    _unwritable(monkeypatch, run_dir, read_only=False)
    with pytest.raises(ConfigError, match=re.escape(f"cannot write in {run_dir}: no permission")):
        _check_output(run_dir, "--run-dir", directory=True)
    _check_output(tmp_path / "new-run", "--run-dir", directory=True)  # created in tmp_path
