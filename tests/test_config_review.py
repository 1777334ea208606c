"""Review of the typed configs and recipe checks: nested config types, settings a stage
would ignore, and errors that must come before any stage runs."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from torch import nn

from deepzip.config import (
    FinetuneStage,
    INQConfig,
    INQStage,
    MLQStage,
    PruneConfig,
    PruneJob,
    PruneStage,
    QuantizeConfig,
    QuantizeStage,
    Recipe,
    RetrainConfig,
    RetrainStage,
    ScheduleConfig,
    SLQConfig,
    SLQStage,
    TrainStage,
    WeightlessConfig,
    WeightlessStage,
)
from deepzip.errors import ConfigError
from deepzip.pipeline import TrainRequest, run_recipe
from pipeline_toy import toy_data, toy_model

_PRUNE = PruneConfig(sparsity=0.5)


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda: TrainStage(train=None), r"^train must be a TrainConfig, got None$"),
        (
            lambda: PruneStage(prune=QuantizeConfig()),
            r"^prune must be a PruneConfig, got QuantizeConfig\(",
        ),
        (
            lambda: PruneStage(prune=_PRUNE, schedule=None),
            r"^schedule must be a ScheduleConfig, got None$",
        ),
        (
            lambda: PruneStage(prune=_PRUNE, retrain=ScheduleConfig()),
            r"^retrain must be a RetrainConfig, got ScheduleConfig\(",
        ),
        (lambda: RetrainStage(retrain={}), r"^retrain must be a RetrainConfig, got \{\}$"),
        (lambda: FinetuneStage(finetune=None), r"^finetune must be a RetrainConfig, got None$"),
        (
            lambda: QuantizeStage(quantize=_PRUNE),
            r"^quantize must be a QuantizeConfig, got PruneConfig\(",
        ),
        (
            lambda: SLQStage(quantize=QuantizeConfig()),
            r"^quantize must be a SLQConfig, got QuantizeConfig\(",
        ),
        (
            lambda: MLQStage(quantize=SLQConfig()),
            r"^quantize must be a MLQConfig, got SLQConfig\(",
        ),
        (
            lambda: INQStage(quantize=INQConfig(), retrain=None),
            r"^retrain must be a RetrainConfig, got None$",
        ),
        (
            lambda: WeightlessStage(weightless=QuantizeConfig()),
            r"^weightless must be a WeightlessConfig, got QuantizeConfig\(",
        ),
        (
            lambda: WeightlessStage(quantize=WeightlessConfig()),
            r"^quantize must be a QuantizeConfig, got WeightlessConfig\(",
        ),
        (lambda: PruneJob(prune=None), r"^prune must be a PruneConfig, got None$"),
        (
            lambda: PruneJob(prune=_PRUNE, schedule=RetrainConfig()),
            r"^schedule must be a ScheduleConfig, got RetrainConfig\(",
        ),
        (lambda: PruneJob(prune=_PRUNE, train={}), r"^train must be a TrainConfig, got \{\}$"),
    ],
)
def test_stage_configs_check_the_type_of_every_nested_config(make: Any, message: str) -> None:
    # these were accepted (PruneStage(prune=QuantizeConfig())) or raised AttributeError
    with pytest.raises(ConfigError, match=message):
        make()


def _weightless_recipe(quantize: dict[str, Any]) -> dict[str, Any]:
    stage = {"type": "weightless", "cell_bits": 5, "quantize": quantize}
    return {"stages": [stage, {"type": "encode"}]}


@pytest.mark.parametrize(
    ("quantize", "message"),
    [
        (
            {"include": ["4"]},
            r"stage 1 \(weightless\): quantize.include = \['4'\] is not used: the weightless "
            r"stage's own include/exclude select the layers it clusters and encodes",
        ),
        ({"exclude": ["1"]}, r"stage 1 \(weightless\): quantize.exclude = \['1'\] is not used"),
        (
            {"importance": "fisher"},
            r"stage 1 \(weightless\): quantize.importance = 'fisher' is not available in a "
            r"weightless stage \(it computes no importance\); use 'none'",
        ),
    ],
)
def test_a_weightless_stage_refuses_clustering_settings_it_cannot_use(
    quantize: dict[str, Any], message: str
) -> None:
    # include/exclude were ignored (every layer encoded); importance = 'fisher' failed only
    # when the stage ran, after the earlier stages
    with pytest.raises(ConfigError, match=message):
        Recipe.from_dict(_weightless_recipe(quantize))
    # what to_dict writes (empty globs, importance 'none') still reads back
    recipe = Recipe.from_dict(_weightless_recipe({"bits": 3}))
    assert Recipe.from_dict(recipe.to_dict()) == recipe


def test_default_final_epochs_taken_by_no_stage_is_refused() -> None:
    # retrain and finetune stages use epochs only: the default was silently dropped
    data = {
        "defaults": {"final_epochs": 3},
        "stages": [{"type": "quantize"}, {"type": "finetune"}, {"type": "encode"}],
    }
    with pytest.raises(
        ConfigError, match=r"defaults: final_epochs = 3 is taken by no stage of this recipe"
    ):
        Recipe.from_dict(data)
    data["stages"] = [{"type": "prune", "sparsity": 0.5}, *data["stages"]]
    recipe = Recipe.from_dict(data)
    assert recipe.stages[0].config.retrain.final_epochs == 3


def test_weightless_min_cell_bits_with_a_fixed_cell_bits_is_refused() -> None:
    # min_cell_bits bounds the automatic choice only: it was silently ignored
    with pytest.raises(
        ConfigError,
        match=r"weightless.min_cell_bits = 6 is only used when cell_bits is chosen "
        r"automatically, got cell_bits = 4",
    ):
        WeightlessConfig(cell_bits=4, min_cell_bits=6)
    assert WeightlessConfig(min_cell_bits=6).min_cell_bits == 6


def _no_training(model: nn.Module, request: TrainRequest) -> None:
    raise AssertionError(f"{request.stage} trained before the recipe was refused")


def test_fisher_importance_without_batches_fails_before_any_stage(tmp_path: Path) -> None:
    recipe = Recipe.from_dict(
        {
            "stages": [
                {"type": "train", "epochs": 1},
                {"type": "quantize", "importance": "fisher"},
                {"type": "encode"},
            ]
        }
    )
    with pytest.raises(
        ConfigError,
        match=r"stage 2 \(quantize\): importance = 'fisher' needs training batches: pass",
    ):
        run_recipe(toy_model(), recipe, tmp_path, train_fn=_no_training, eval_fn=lambda m: 0.5)


@pytest.mark.parametrize(
    ("first", "message"),
    [
        (
            {"type": "quantize", "bits": 3},
            r"stage 3 \(slq\): 1.weight is quantized by stage 2 \(quantize\) before it",
        ),
        (
            {"type": "inq", "bits": 3, "steps": [0.5, 1.0]},
            r"stage 3 \(slq\): 1.weight is quantized by stage 2 \(inq\) before it",
        ),
        (
            {"type": "weightless", "cell_bits": 5, "quantize": {"bits": 3}, "include": ["1"]},
            r"stage 3 \(slq\): 1.weight is encoded with Weightless by stage 2 \(weightless\)",
        ),
    ],
)
def test_an_incremental_stage_on_layers_quantized_earlier_fails_before_any_stage(
    tmp_path: Path, first: dict[str, Any], message: str
) -> None:
    # it failed only when the stage ran ("1.weight is already quantized"), after the others
    stages = [
        {"type": "train", "epochs": 1},
        first,
        {"type": "slq", "bits": 2, "steps": [0.5, 1.0], "include": ["1"]},
        {"type": "encode"},
    ]
    recipe = Recipe.from_dict({"stages": stages})
    with pytest.raises(ConfigError, match=message):
        run_recipe(toy_model(), recipe, tmp_path, train_fn=_no_training, eval_fn=lambda m: 0.5)


def test_an_incremental_stage_after_quantizing_other_layers_runs(tmp_path: Path) -> None:
    stages = [
        {"type": "quantize", "bits": 3, "include": ["4"]},
        {"type": "slq", "bits": 2, "steps": [0.5, 1.0], "retrain": {"epochs": 0}},
        {"type": "encode"},
    ]
    # the slq stage selects every layer: 4.weight is shared, but a layer quantized earlier
    # and selected only by default is refused as the stage would refuse it
    with pytest.raises(ConfigError, match=r"4.weight is quantized by stage 1 \(quantize\)"):
        run_recipe(toy_model(), Recipe.from_dict({"stages": stages}), tmp_path / "a")
    stages[1] = {**stages[1], "exclude": ["4"]}
    result = run_recipe(
        toy_model(), Recipe.from_dict({"stages": stages}), tmp_path / "b", data=toy_data()
    )
    assert result.dzip.is_file()
