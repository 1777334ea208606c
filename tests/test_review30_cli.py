"""Review 30: `deepzip prune --recipe FILE` reads the recipe once (it was read and parsed
twice, once for the job and once for its model and data set)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import pytest

import deepzip.cli.train_commands as train_commands
from deepzip.cli import main
from deepzip.cli._common import _prune_job

RECIPE = """
name = "mine"
model = "lenet-5"
dataset = "mnist"

[prune]
sparsity = 0.5

[schedule]
steps = [0.5, 1.0]

[retrain]
epochs = 0
final_epochs = 0
"""


def test_prune_reads_its_recipe_file_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    recipe = tmp_path / "r.toml"
    recipe.write_text(RECIPE, encoding="utf-8")
    opened: list[Path] = []
    real_open = Path.open

    def counting_open(self: Path, *args: Any, **kwargs: Any) -> Any:
        if self == recipe:
            opened.append(self)
        return real_open(self, *args, **kwargs)

    datasets: list[str | None] = []

    def stop(args: argparse.Namespace, device: object) -> None:
        datasets.append(args.dataset)  # the recipe's, taken before the model is loaded
        raise KeyboardInterrupt

    monkeypatch.setattr(Path, "open", counting_open)
    monkeypatch.setattr(train_commands, "_load_model", stop)
    monkeypatch.chdir(tmp_path)
    argv = ["prune", "x.safetensors", "-o", "o.safetensors", "--recipe", str(recipe)]
    assert main([*argv, "--device", "cpu"]) == 130
    assert len(opened) == 1
    assert datasets == ["mnist"]
    job, parsed = _prune_job(argparse.Namespace(recipe=str(recipe)))
    assert parsed is not None
    assert (parsed.model, parsed.dataset) == ("lenet-5", "mnist")
    assert job.prune.sparsity == 0.5
    assert job.schedule.steps == (0.5, 1.0)
