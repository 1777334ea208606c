"""Review fixes of run_recipe: models with 0-dim buffers (BatchNorm), malformed state files,
errors that name the stage they come from."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch import nn

from deepzip.config import PruneConfig, PruneJob, Recipe, RetrainConfig, ScheduleConfig
from deepzip.errors import ConfigError, InvalidTensorError
from deepzip.pipeline import (
    DZIP_FILE,
    STATE_FILE,
    PipelineEvent,
    TrainRequest,
    data_trainer,
    model_fingerprint,
    prune_with_retraining,
    read_run,
    run_recipe,
)
from deepzip.pipeline.state import describe_change
from pipeline_toy import toy_data, toy_model, toy_recipe


def _bn_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Flatten(), nn.Linear(20, 48), nn.BatchNorm1d(48), nn.ReLU(), nn.Linear(48, 4)
    )


_BN_RECIPE = {
    "seed": 3,
    "stages": [
        {"type": "train", "epochs": 1, "batch_size": 32},
        {"type": "prune", "sparsity": 0.5, "schedule": {"kind": "oneshot"},
         "retrain": {"epochs": 1, "final_epochs": 0, "batch_size": 32}},
        {"type": "encode"},
    ],
}  # fmt: skip


def test_model_fingerprint_of_scalar_tensors() -> None:
    a, b = nn.BatchNorm1d(3), nn.BatchNorm1d(3)
    assert model_fingerprint(a) == model_fingerprint(b)
    b.load_state_dict({**b.state_dict(), "num_batches_tracked": torch.tensor(1)})  # 0-dim
    assert model_fingerprint(a) != model_fingerprint(b)


def test_a_batchnorm_model_runs_and_resumes(tmp_path: Path) -> None:
    recipe = Recipe.from_dict(_BN_RECIPE)
    full = run_recipe(_bn_model(), recipe, tmp_path / "full", data=toy_data(), device="cpu")
    assert [s.kind for s in full.stages] == ["train", "prune", "encode"]

    class StopError(Exception):
        pass

    def stop_after_train(event: PipelineEvent) -> None:
        if event.kind == "stage_end" and event.index == 0:
            raise StopError

    part = tmp_path / "part"
    with pytest.raises(StopError):
        run_recipe(_bn_model(), recipe, part, data=toy_data(), device="cpu",
                   on_event=stop_after_train)  # fmt: skip
    resumed = run_recipe(_bn_model(), recipe, part, data=toy_data(), device="cpu")
    assert resumed.resumed_from == 1
    assert (part / DZIP_FILE).read_bytes() == (tmp_path / "full" / DZIP_FILE).read_bytes()


_HEAD = {"format": "deepzip.run", "version": 1}


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (json.dumps(_HEAD), "'identity' must be a JSON object"),
        (b"\xff\xfe{}", "unreadable run state"),
        (
            json.dumps({**_HEAD, "identity": {}, "recipe": {}, "initial": {}, "stages": {}}),
            "'stages' must be a JSON array",
        ),
    ],
)
def test_a_malformed_state_file_is_a_config_error(
    tmp_path: Path, content: str | bytes, message: str
) -> None:
    raw = content.encode() if isinstance(content, str) else content
    (tmp_path / STATE_FILE).write_bytes(raw)
    with pytest.raises(ConfigError, match=message):
        read_run(tmp_path)
    with pytest.raises(ConfigError, match=message):
        run_recipe(toy_model(), toy_recipe(), tmp_path, data=toy_data(), device="cpu")
    # restart discards it
    result = run_recipe(
        toy_model(), toy_recipe(), tmp_path, data=toy_data(), device="cpu", restart=True
    )
    assert result.resumed_from == 0


def test_an_error_inside_a_stage_names_the_stage(tmp_path: Path) -> None:
    recipe = Recipe.from_dict(
        {
            "stages": [
                {"type": "train", "epochs": 1, "batch_size": 32},
                {"type": "prune", "name": "p", "sparsity": 0.5, "schedule": {"kind": "oneshot"},
                 "retrain": {"epochs": 1, "final_epochs": 0, "lr": 1e30, "lr_scale": 1.0,
                             "batch_size": 32}},
                {"type": "encode"},
            ]
        }
    )  # fmt: skip
    with pytest.raises(InvalidTensorError, match=r"^stage 2 \(prune 'p'\): training loss is"):
        run_recipe(toy_model(), recipe, tmp_path, data=toy_data(), device="cpu")
    assert [s.kind for s in read_run(tmp_path)[2]] == ["train"]


def test_no_trainable_parameters_names_the_stage_once(tmp_path: Path) -> None:
    data = toy_data()
    inner = data_trainer(data, device="cpu")

    def frozen(model: nn.Module, request: TrainRequest) -> None:
        if request.stage == "prune":
            model.requires_grad_(False)
        inner(model, request)

    recipe = Recipe.from_dict(_BN_RECIPE)
    with pytest.raises(ConfigError) as info:
        run_recipe(_bn_model(), recipe, tmp_path, data=data, device="cpu", train_fn=frozen)
    assert str(info.value) == "stage 2 (prune): the model has no trainable parameters"


def test_prune_with_retraining_takes_the_largest_seed() -> None:
    job = PruneJob(
        prune=PruneConfig(sparsity=0.5),
        schedule=ScheduleConfig(kind="steps", steps=(0.5, 1.0)),
        retrain=RetrainConfig(epochs=1, final_epochs=0, batch_size=64),
    )
    outcome = prune_with_retraining(
        toy_model(), toy_data(), job, device=torch.device("cpu"), seed=2**32 - 1
    )
    assert [s.step for s in outcome.steps] == [0, 1]


def test_a_recipe_change_that_drops_a_stage_is_told_as_the_stage_list() -> None:
    # it compared the old stage 1 (train) with the new stage 1 (prune) key by key
    train = {"type": "train", "epochs": 1}
    prune = {"type": "prune", "sparsity": 0.5}
    quant = {"type": "quantize", "bits": 4}
    old = {"name": "r", "stages": [train, prune, quant]}
    dropped = {"name": "r", "stages": [prune, quant]}
    assert describe_change(old, dropped) == (
        "the stages changed (train, prune, quantize → prune, quantize)"
    )
    edited = {"name": "r", "stages": [train, {**prune, "sparsity": 0.9}, quant]}
    assert describe_change(old, edited) == "stage 2 (prune) changed (sparsity: 0.5 → 0.9)"
    renamed = {"name": "s", "stages": [train, prune, quant]}
    assert describe_change(old, renamed) == "recipe name: 'r' → 's'"
