"""Review 29 of the recipe pipeline: TOML round trips, stage errors that name the stage, checks
that must come before any stage runs, and resume of an equal recipe."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest
import tomli_w

from deepzip.config import (
    PruneConfig,
    PruneJob,
    QuantizeConfig,
    Recipe,
    RetrainConfig,
    TrainConfig,
    TrainStage,
)
from deepzip.errors import ConfigError
from deepzip.pipeline import (
    DZIP_FILE,
    PipelineEvent,
    StageContext,
    recipe_hash,
    run_recipe,
)
from deepzip.quantize import quantize_
from pipeline_toy import toy_data, toy_model

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib


def test_a_pruning_job_with_a_train_seed_round_trips() -> None:
    # the job's train seed stayed in the train stage, where to_dict drops it: the recipe read
    # back (from TOML, or from a run's state.json) was not equal to the one run
    job = PruneJob(PruneConfig(sparsity=0.5), train=TrainConfig(epochs=2, seed=7))
    recipe = Recipe.from_prune_job(job)
    assert recipe.seed == 7
    assert Recipe.from_dict(recipe.to_dict()) == recipe
    assert Recipe.from_dict(tomllib.loads(tomli_w.dumps(recipe.to_dict()))) == recipe
    assert recipe.prune_job() == job  # and back to the job, its seed included


def test_a_train_stage_with_a_seed_of_its_own_is_refused() -> None:
    # it was neither used (the recipe's seed seeds every stage) nor kept in the recipe's TOML
    with pytest.raises(ConfigError, match=r"train\.seed = 3 is not used \(the recipe's seed"):
        TrainStage(TrainConfig(seed=3))


@pytest.mark.parametrize("name", [5, "", ["q"]])
def test_a_bad_stage_name_names_the_stage(name: object) -> None:
    stages = [{"type": "quantize", "name": name}, {"type": "encode"}]
    with pytest.raises(ConfigError, match=r"^stage 1 \(quantize\): name must be a non-empty"):
        Recipe.from_dict({"stages": stages})


_WEIGHTLESS_FIRST = {
    "type": "weightless",
    "cell_bits": 6,
    "include": ["1"],
    "quantize": {"bits": 3},
    "retrain": {"epochs": 0},
}


@pytest.mark.parametrize(
    "quantize",
    [
        {"type": "quantize", "bits": 3, "include": ["1"]},
        {"type": "quantize", "bits": 3, "overrides": [{"pattern": "1", "bits": 2}]},
    ],
)
def test_a_quantize_stage_naming_a_weightless_layer_fails_before_any_stage(
    tmp_path: Path, quantize: dict[str, Any]
) -> None:
    # quantize_ refused it only when stage 2 started, after stage 1 had run
    recipe = Recipe.from_dict({"stages": [_WEIGHTLESS_FIRST, quantize, {"type": "encode"}]})
    events: list[PipelineEvent] = []
    with pytest.raises(
        ConfigError,
        match=r"^stage 2 \(quantize\): 1\.weight is encoded with Weightless by stage 1 "
        r"\(weightless\): quantizing it again would drop its Bloomier filter",
    ):
        run_recipe(toy_model(), recipe, tmp_path / "run", on_event=events.append, device="cpu")
    assert events == []
    assert not (tmp_path / "run").exists()


def test_a_quantize_stage_after_weightless_selecting_by_default_runs(tmp_path: Path) -> None:
    stages = [_WEIGHTLESS_FIRST, {"type": "quantize", "bits": 3}, {"type": "encode"}]
    result = run_recipe(toy_model(), Recipe.from_dict({"stages": stages}), tmp_path, device="cpu")
    skipped = result.stages[1].details["report"]["skipped"]
    assert "1.weight" in [s["name"] for s in skipped]  # left encoded, as quantize_ does


def test_fixed_cell_bits_on_a_model_clustered_before_the_run(tmp_path: Path) -> None:
    # the check took K from the stage's own quantize (5 bits: K = 32 > 2**4) although the
    # layers are clustered with K = 8 already and weightless_ encodes them at t = 4
    model = toy_model()
    quantize_(model, QuantizeConfig(bits=3))
    stages = [{"type": "weightless", "cell_bits": 4, "retrain": {"epochs": 0}}, {"type": "encode"}]
    result = run_recipe(model, Recipe.from_dict({"stages": stages}), tmp_path, device="cpu")
    layers = result.stages[0].details["report"]["layers"]
    assert [(layer["name"], layer["cell_bits"]) for layer in layers] == [
        ("1.weight", 4),
        ("4.weight", 4),
    ]
    assert (tmp_path / DZIP_FILE).is_file()


def test_fixed_cell_bits_after_a_weightless_stage_of_other_layers_fail_before_any_stage(
    tmp_path: Path,
) -> None:
    # an earlier Weightless stage that leaves 4.weight alone stopped the check: stage 2 then
    # failed when it started, after stage 1 had run
    stages = [
        _WEIGHTLESS_FIRST,
        {"type": "weightless", "cell_bits": 4, "include": ["4"], "retrain": {"epochs": 0}},
        {"type": "encode"},
    ]
    events: list[PipelineEvent] = []
    with pytest.raises(
        ConfigError, match=r"^stage 2 \(weightless\): 4\.weight: cell_bits = 4 with K = 32"
    ):
        run_recipe(
            toy_model(),
            Recipe.from_dict({"stages": stages}),
            tmp_path / "run",
            on_event=events.append,
            device="cpu",
        )
    assert events == []


def _finetune_recipe(lr: float) -> Recipe:
    stages = [
        {"type": "quantize", "bits": 3},
        {"type": "finetune", "epochs": 1, "lr": lr, "batch_size": 64},
        {"type": "encode"},
    ]
    return Recipe.from_dict({"seed": 2, "stages": stages})


def test_equal_recipes_have_one_hash_and_resume(tmp_path: Path) -> None:
    # lr = 1 and lr = 1.0 make equal recipes, but their hashes differed: the resume was refused
    # as "a different recipe" with an empty description ("recipe .")
    written_as_int, written_as_float = _finetune_recipe(1), _finetune_recipe(1.0)
    assert written_as_int == written_as_float
    assert recipe_hash(written_as_int) == recipe_hash(written_as_float)
    assert recipe_hash(_finetune_recipe(0.5)) != recipe_hash(written_as_float)
    data = toy_data()
    first = run_recipe(toy_model(), written_as_int, tmp_path, data=data, device="cpu")
    again = run_recipe(toy_model(), written_as_float, tmp_path, data=data, device="cpu")
    assert again.resumed_from == len(again.stages) == 3
    assert again.stages == first.stages


@pytest.mark.parametrize(
    ("rules", "encode_bits"),
    [
        ([("*", 4), ("1", 6), ("*", 3)], None),  # a glob given twice: its last place counts
        ([("1", 6), ("*", 3)], 5),  # a "*" rule after a layer's, beside the stage's width
    ],
)
def test_the_last_matching_index_bits_rule_wins(
    tmp_path: Path, rules: list[tuple[str, int]], encode_bits: int | None
) -> None:
    # as for bits and sparsity: the rule for "1" (6 bits) won although a later "*" rule
    # matches 1.weight too
    encode: dict[str, Any] = {"type": "encode", "layout": "sparse"}
    if encode_bits is not None:
        encode["index_bits"] = encode_bits
    recipe = Recipe.from_dict(
        {
            "overrides": [{"pattern": p, "index_bits": b} for p, b in rules],
            "stages": [
                {"type": "prune", "sparsity": 0.8, "retrain": {"epochs": 0, "final_epochs": 0}},
                {"type": "quantize", "bits": 3},
                encode,
            ],
        }
    )
    result = run_recipe(toy_model(), recipe, tmp_path, device="cpu")
    widths = {t["name"]: t["gap_width"] for t in result.final.details["save"]["tensors"]}
    assert widths["1.weight"] == widths["4.weight"] == 3


def test_a_request_trains_at_the_learning_rate_it_is_given(tmp_path: Path) -> None:
    # StageContext.request took lr= and dropped it: a custom runner's rate was never used
    recipe = Recipe.from_dict({"stages": [{"type": "quantize"}, {"type": "encode"}]})
    model = toy_model()

    def no_file(path: Path) -> Any:
        raise AssertionError("no file is written here")

    ctx = StageContext(
        model=model,
        recipe=recipe,
        stage=recipe.stages[0],
        index=0,
        config=recipe.stages[0].config,
        seed=11,
        run_dir=tmp_path,
        device=None,
        train_fn=None,
        eval_fn=None,
        test_fn=None,
        batches=None,
        teacher=lambda: model,
        emit=lambda event: None,
        write_dzip=no_file,
    )
    config = RetrainConfig(lr=0.02, lr_scale=0.5)
    assert ctx.request(config, 1).lr == pytest.approx(0.01)
    assert ctx.request(config, 1, lr=0.3).lr == 0.3
