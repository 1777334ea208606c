"""Second look at crash safety (run-directory lock, stale temporaries, SIGTERM) and at modules
registered under several names."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

from deepzip.cli import _Terminated, main
from deepzip.format import save_checkpoint
from deepzip.pipeline import DZIP_FILE, run_recipe
from deepzip.pipeline.state import LOCK_FILE, lock_run, remove_stale_temps
from deepzip.targets import select_targets
from pipeline_toy import toy_data, toy_model, toy_recipe


def _names(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir())


# --- the run directory's lock and temporaries ---------------------------------------------


def test_the_lock_does_not_remove_a_users_lock_file(tmp_path: Path) -> None:
    """The lock file is removed when the run ends: a file of the user's (or of another
    tool) named ``.lock`` was opened as the lock and deleted."""
    (tmp_path / ".lock").write_text("another tool's lock\n")
    with lock_run(tmp_path):
        assert (tmp_path / LOCK_FILE).is_file()
    assert (tmp_path / ".lock").read_text() == "another tool's lock\n"
    assert not (tmp_path / LOCK_FILE).exists()


def test_only_a_runs_own_measuring_directories_are_removed(tmp_path: Path) -> None:
    """``.measure-*`` matched any name: a directory of the user's was deleted with its files."""
    mine = tmp_path / ".measure-notes"
    mine.mkdir()
    (mine / "notes.txt").write_text("the user's")
    stale = tmp_path / ".measure-03-a1b_c2d3"  # as tempfile names a killed run's directory
    stale.mkdir()
    (stale / DZIP_FILE).write_bytes(b"partial")
    assert remove_stale_temps(tmp_path) == [stale]
    assert _names(tmp_path) == [".measure-notes"]
    assert (mine / "notes.txt").read_text() == "the user's"


def test_a_run_keeps_the_users_look_alike_files(tmp_path: Path) -> None:
    (tmp_path / ".lock").write_text("another tool's lock\n")
    (tmp_path / ".measure-notes").mkdir()
    (tmp_path / ".measure-notes" / "notes.txt").write_text("the user's")
    run_recipe(toy_model(), toy_recipe(), tmp_path, data=toy_data(), device="cpu")
    names = _names(tmp_path)
    assert ".lock" in names
    assert (tmp_path / ".measure-notes" / "notes.txt").is_file()
    assert LOCK_FILE not in names
    assert not [n for n in names if n.startswith(".measure-") and n != ".measure-notes"]


# --- SIGTERM -------------------------------------------------------------------------------


def test_a_sigterm_while_decoding_ans_is_terminated_not_a_corrupt_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """ANS decoding turns every ``BaseException`` but ``KeyboardInterrupt`` into
    ``CorruptFileError``: a SIGTERM there said 'invalid ANS payload' and exited 2."""
    import constriction

    torch.manual_seed(0)
    src = save_checkpoint(nn.Linear(64, 64), tmp_path / "in.safetensors")
    dzip = tmp_path / "m.dzip"
    assert main(["compress", str(src), "-o", str(dzip), "--coder", "ans", "--no-progress"]) == 0
    capsys.readouterr()

    class Terminated:  # the SIGTERM handler raises in whatever runs at the time
        def __init__(self, *args: Any) -> None:
            raise _Terminated

    monkeypatch.setattr(constriction.stream.stack, "AnsCoder", Terminated)
    out = tmp_path / "out.safetensors"
    assert main(["decompress", str(dzip), "-o", str(out), "--no-progress"]) == 128 + 15
    assert capsys.readouterr().err.strip() == "deepzip: terminated"
    assert not out.exists()


# --- a module under several names ----------------------------------------------------------


def test_a_shared_block_reached_by_several_paths_is_one_target() -> None:
    lin = nn.Linear(4, 4)
    block = nn.Sequential(lin, nn.ReLU())
    model = nn.ModuleDict({"a": block, "b": block, "c": nn.ModuleList([lin, lin])})
    selection = select_targets(model)
    assert selection.names() == ["a.0.weight"]
    (target,) = selection.targets
    assert target.module_aliases == ("b.0", "c.0", "c.1")
    assert selection.by_name("c.1.weight") is target
    # an exclude under any name wins over an include under any other, as for one name
    picked = select_targets(model, include=["c.1"], exclude=["b.*"])
    assert picked.names() == []
    assert ("a.0.weight", "excluded by pattern 'b.*'") in [
        (s.name, s.reason) for s in picked.skipped
    ]
