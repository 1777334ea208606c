"""SLQ, MLQ and INQ as recipe stages (deepzip.pipeline.run_recipe)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from deepzip.config import INQStage, MLQStage, Recipe, SLQConfig, SLQStage
from deepzip.errors import ConfigError
from deepzip.format import load_state_dict
from deepzip.pipeline import PipelineEvent, check_recipe, run_recipe
from pipeline_toy import toy_data, toy_model

pytestmark = pytest.mark.usefixtures("one_thread")


def _recipe(stage: dict[str, Any], *, finetune: bool = True, **extra: Any) -> Recipe:
    stages: list[dict[str, Any]] = [
        {"type": "train", "epochs": 2, "lr": 0.05, "batch_size": 32},
        stage,
    ]
    if finetune:
        stages.append({"type": "finetune", "epochs": 1, "batch_size": 32})
    stages.append({"type": "encode", "coder": "huffman"})
    return Recipe.from_dict({"seed": 3, "stages": stages, **extra})


def test_stage_tables_parse_with_defaults_and_round_trip() -> None:
    recipe = _recipe(
        {"type": "mlq", "bits": "ternary", "groups": 2, "retrain": {"epochs": 2}},
        defaults={"lr": 0.02, "steps": [0.5, 1.0]},
        overrides=[{"pattern": "1", "bits": 4}],
    )
    stage = recipe.stages[1].config
    assert isinstance(stage, MLQStage)
    assert stage.quantize.bits == "ternary"
    assert stage.quantize.steps == (0.5, 1.0)  # from [defaults]
    assert stage.retrain.epochs == 2
    assert stage.retrain.lr == 0.02  # [defaults] beat the stage type's base
    assert stage.retrain.optimizer == "adam"
    effective = recipe.effective(recipe.stages[1])
    assert [(o.pattern, o.bits) for o in effective.quantize.overrides] == [("1", 4)]
    assert Recipe.from_dict(recipe.to_dict()) == recipe


@pytest.mark.parametrize(
    ("stage", "message"),
    [
        ({"type": "slq", "bits": 9}, "slq.bits"),
        ({"type": "mlq", "freeze_order": "worst"}, "mlq.freeze_order"),
        ({"type": "inq", "bits": "ternary"}, "inq.bits"),
        ({"type": "mlq", "groupz": 2}, "unknown key 'groupz'"),
        ({"type": "slq", "retrain": {"epochz": 1}}, "unknown key 'epochz'"),
        ({"type": "slq", "retrain": 3}, "retrain must be a table"),
    ],
)
def test_bad_stage_tables_are_rejected(stage: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        _recipe(stage)


def test_prune_after_an_incremental_stage_is_refused() -> None:
    with pytest.raises(ConfigError, match="prune after slq"):
        Recipe.from_dict(
            {
                "stages": [
                    {"type": "slq"},
                    {"type": "prune", "sparsity": 0.5},
                    {"type": "encode"},
                ]
            }
        )


def test_check_recipe_validates_globs() -> None:
    recipe = _recipe({"type": "inq", "overrides": [{"pattern": "nope", "bits": 3}]})
    with pytest.raises(ConfigError, match="nope"):
        check_recipe(toy_model(), recipe)


@pytest.mark.parametrize(
    ("stage", "levels", "n_steps"),
    [
        ({"type": "slq", "bits": 3, "steps": [0.5, 1.0]}, 8, 2),
        ({"type": "slq", "bits": 3, "steps": [0.5, 1.0], "freeze_order": "low_loss"}, 8, 2),
        # MLQ: the default 2 groups (the toy model's two layers, one each) x 2 width steps
        ({"type": "mlq", "bits": "ternary", "steps": [0.5, 1.0]}, 3, 4),
        ({"type": "inq", "bits": 3, "steps": [0.5, 1.0]}, 5, 2),
    ],
)
def test_stage_runs_and_encodes(
    tmp_path: Path, stage: dict[str, Any], levels: int, n_steps: int
) -> None:
    events: list[PipelineEvent] = []
    result = run_recipe(
        toy_model(),
        _recipe(stage, finetune=False),
        tmp_path,
        data=toy_data(),
        device="cpu",
        on_event=events.append,
    )
    record = result.stages[1]
    steps = record.details["steps"]
    assert len(steps) == n_steps
    assert steps[-1]["frozen_fraction"] == 1.0
    assert sum(e.kind == "step" for e in events) == len(steps)
    state = load_state_dict(tmp_path / "model.dzip")
    for name in ("1.weight", "4.weight"):
        assert len(state[name].unique()) <= levels
    assert record.details["report"]["layers"][0]["levels"] <= levels
    assert result.final.test_acc is not None
    assert result.final.test_acc > 0.5  # the toy problem is learnable after quantization


def test_resume_after_the_stage_gives_identical_bytes(tmp_path: Path) -> None:
    recipe = _recipe({"type": "mlq", "bits": "ternary", "steps": [0.5, 1.0]})
    run_recipe(toy_model(), recipe, tmp_path / "straight", data=toy_data(), device="cpu")

    class StopRunError(Exception):
        pass

    def stop_after_mlq(event: PipelineEvent) -> None:
        if event.kind == "stage_end" and event.index == 1:
            raise StopRunError

    with pytest.raises(StopRunError):
        run_recipe(
            toy_model(),
            recipe,
            tmp_path / "resumed",
            data=toy_data(),
            device="cpu",
            on_event=stop_after_mlq,
        )
    result = run_recipe(toy_model(), recipe, tmp_path / "resumed", data=toy_data(), device="cpu")
    assert result.resumed_from is not None
    straight = (tmp_path / "straight" / "model.dzip").read_bytes()
    assert (tmp_path / "resumed" / "model.dzip").read_bytes() == straight


def test_python_construction() -> None:
    stage = SLQStage(SLQConfig(bits=4))
    assert stage.to_dict()["bits"] == 4
    assert stage.retrain.optimizer == "adam"
    assert INQStage().quantize.bits == 5
