"""Codebooks an incremental stage leaves frozen (INQ's powers of two; SLQ/MLQ with
``train_codebook = false``) stay frozen through the later stages of a recipe, resumed or not."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest
import torch

from deepzip.config import Recipe
from deepzip.pipeline import PipelineEvent, run_recipe
from deepzip.quantize import get_shared
from pipeline_toy import toy_data, toy_model

_RETRAIN = {"epochs": 1, "batch_size": 32, "lr": 0.05}


def _recipe(incremental: dict[str, Any]) -> Recipe:
    return Recipe.from_dict(
        {
            "seed": 1,
            "stages": [
                {"type": "train", "epochs": 1, "lr": 0.05, "batch_size": 32},
                {"type": "prune", "sparsity": 0.5},
                {**incremental, "include": ["1"], "retrain": _RETRAIN},
                {"type": "quantize", "bits": 3, "include": ["4"]},
                {"type": "finetune", "epochs": 2, "batch_size": 32, "lr": 0.05},
                {"type": "encode"},
            ],
        }
    )


def _codebook(model: torch.nn.Module, owner: str) -> torch.Tensor:
    shared = get_shared(model.get_submodule(owner), "weight")
    assert shared is not None
    return shared.codebook.detach().clone()


class _StopRunError(Exception):
    pass


@pytest.mark.parametrize(
    "incremental",
    [
        {"type": "inq", "bits": 4, "steps": [0.5, 1.0]},
        {"type": "slq", "bits": 3, "steps": [0.5, 1.0], "train_codebook": False},
    ],
    ids=["inq", "slq-frozen"],
)
@pytest.mark.parametrize("resume", [False, True], ids=["straight", "resumed"])
def test_a_frozen_codebook_stays_frozen_in_later_stages(
    tmp_path: Path, incremental: dict[str, Any], resume: bool
) -> None:
    recipe = _recipe(incremental)
    data = toy_data()
    after: dict[str, torch.Tensor] = {}
    model = toy_model()

    def on_event(event: PipelineEvent) -> None:
        if event.kind == "stage_end" and event.index == 2:
            after["codebook"] = _codebook(model, "1")
            if resume:
                raise _StopRunError

    if resume:
        with pytest.raises(_StopRunError):
            run_recipe(model, recipe, tmp_path, data=data, device="cpu", on_event=on_event)
        model = toy_model()
        run_recipe(model, recipe, tmp_path, data=data, device="cpu")
    else:
        run_recipe(model, recipe, tmp_path, data=data, device="cpu", on_event=on_event)
    final = _codebook(model, "1")
    assert torch.equal(final, after["codebook"])  # the finetune stage left it as it was
    assert not get_shared(model.get_submodule("1"), "weight").codebook.requires_grad
    # the quantize stage's own codebook did train
    assert get_shared(model.get_submodule("4"), "weight").codebook.requires_grad
    if incremental["type"] == "inq":
        for value in final.tolist():
            assert value != 0
            assert math.log2(abs(value)).is_integer()


@pytest.mark.parametrize("value", ['["1.weight"]', '["4.weight"]', '{"a": 1}', "[5]"])
def test_frozen_codebook_metadata_that_does_not_fit_is_refused(tmp_path: Path, value: str) -> None:
    from deepzip.config import PruneConfig
    from deepzip.errors import CheckpointError
    from deepzip.format import save_checkpoint
    from deepzip.pipeline.state import load_stage_checkpoint
    from deepzip.prune import prune_

    model = toy_model()
    prune_(model, PruneConfig(sparsity=0.5, include=("4",)))  # 4 is pruned, 1 is plain
    path = tmp_path / "stage.safetensors"
    save_checkpoint(model, path, metadata={"deepzip.run.frozen_codebooks": value})
    with pytest.raises(CheckpointError, match="frozen codebook"):
        load_stage_checkpoint(toy_model(), path)
