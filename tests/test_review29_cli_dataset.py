"""``prune``, ``quantize`` and ``sensitivity`` without ``--dataset`` use the data set the
checkpoint records (they used Fashion-MNIST whatever the checkpoint was trained on)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

import deepzip.cli._common as common
from deepzip.cli import main
from deepzip.errors import ConfigError
from deepzip.format import save_checkpoint
from deepzip.zoo import create_model


def _checkpoint(tmp_path: Path, dataset: str | None) -> Path:
    path = tmp_path / "in.safetensors"
    meta = {"deepzip.model": "lenet-300-100"}
    if dataset is not None:
        meta["deepzip.dataset"] = dataset
    save_checkpoint(create_model("lenet-300-100"), path, metadata=meta)
    return path


def _asked(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    asked: list[str] = []

    def load_dataset(name: str, *args: Any, **kwargs: Any) -> Any:
        asked.append(name)
        raise ConfigError(f"stop after choosing {name}")

    monkeypatch.setattr(common, "load_dataset", load_dataset)
    return asked


_COMMANDS = {
    "prune": ["prune", "{ckpt}", "-o", "{out}.safetensors", "--sparsity", "0.5"],
    "quantize": ["quantize", "{ckpt}", "-o", "{out}.safetensors"],
    "sensitivity": ["sensitivity", "{ckpt}", "-o", "{out}.json"],
}


@pytest.mark.parametrize("command", sorted(_COMMANDS))
@pytest.mark.parametrize(
    ("recorded", "flag", "expected"),
    [
        ("mnist", None, "mnist"),
        ("mnist", "fashion-mnist", "fashion-mnist"),
        (None, None, "fashion-mnist"),
        ("fashion-mnist", "mnist", "mnist"),
    ],
)
def test_the_data_set_defaults_to_the_checkpoints(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    command: str,
    recorded: str | None,
    flag: str | None,
    expected: str,
) -> None:
    asked = _asked(monkeypatch)
    ckpt = _checkpoint(tmp_path, recorded)
    argv = [a.format(ckpt=ckpt, out=tmp_path / "out") for a in _COMMANDS[command]]
    argv += ["--no-progress", "--device", "cpu"] + (["--dataset", flag] if flag else [])
    assert main(argv) == 2
    assert asked == [expected]


def test_a_checkpoint_naming_an_unknown_data_set_asks_for_dataset(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    asked = _asked(monkeypatch)
    ckpt = _checkpoint(tmp_path, "cifar10")
    argv = ["quantize", str(ckpt), "-o", str(tmp_path / "o.safetensors"), "--no-progress"]
    assert main([*argv, "--device", "cpu"]) == 2
    assert "'cifar10' is not one deepzip knows" in capsys.readouterr().err
    assert asked == []
    assert main([*argv, "--device", "cpu", "--dataset", "mnist"]) == 2
    assert asked == ["mnist"]
