"""Recipe-wide per-layer overrides against the stages that act on a layer, stage-local
overrides of excluded layers, and Weightless stages whose widths are all fixed."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
from torch import nn

from deepzip.config import Recipe, WeightlessStage
from deepzip.errors import ConfigError
from deepzip.pipeline import StageContext, check_recipe, run_recipe, validation_stage
from deepzip.pipeline.registry import registered_runner, stage_config
from pipeline_toy import toy_model

NO_RETRAIN = {"epochs": 0, "final_epochs": 0}


def _layers(details: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {layer["name"]: layer for layer in details["report"]["layers"]}


def test_a_recipe_override_is_used_only_by_the_stages_acting_on_its_layer(
    tmp_path: Path,
) -> None:
    # the quantize stage excludes "4": it used to refuse the recipe's rule for "4" as
    # matching no quantizable layer; the prune and SLQ stages act on "4" and use it
    recipe = Recipe.from_dict(
        {
            "overrides": [{"pattern": "4", "sparsity": 0.5, "bits": 6}],
            "stages": [
                {"type": "prune", "sparsity": 0.8, "retrain": NO_RETRAIN},
                {"type": "quantize", "bits": 3, "exclude": ["4"]},
                {"type": "slq", "bits": 2, "include": ["4"], "steps": [1.0], "retrain": NO_RETRAIN},
                {"type": "encode"},
            ],
        }
    )
    check_recipe(toy_model(), recipe)
    assert stage_config(toy_model(), recipe, 1).quantize.overrides == ()
    result = run_recipe(toy_model(), recipe, tmp_path, device="cpu")
    pruned = _layers(result.stages[0].details)
    assert pruned["4.weight"]["kept_fraction"] == pytest.approx(0.5, abs=0.01)
    assert pruned["1.weight"]["kept_fraction"] == pytest.approx(0.2, abs=0.01)
    assert set(_layers(result.stages[1].details)) == {"1.weight"}
    slq = _layers(result.stages[2].details)
    assert set(slq) == {"4.weight"}
    assert slq["4.weight"]["bits"] == 6


def test_a_recipe_override_skips_where_a_stage_acts_and_not_where_it_excludes(
    tmp_path: Path,
) -> None:
    recipe = Recipe.from_dict(
        {
            "overrides": [{"pattern": "1", "skip": True}],
            "stages": [
                {"type": "prune", "sparsity": 0.5, "exclude": ["1"], "retrain": NO_RETRAIN},
                {"type": "quantize", "bits": 3},
                {"type": "encode"},
            ],
        }
    )
    result = run_recipe(toy_model(), recipe, tmp_path, device="cpu")
    assert set(_layers(result.stages[0].details)) == {"4.weight"}
    skipped = {s["name"] for s in result.stages[1].details["report"]["skipped"]}
    assert "1.weight" in skipped


@pytest.mark.parametrize(
    ("stage", "key"),
    [
        ({"type": "prune", "sparsity": 0.5, "exclude": ["1"]}, "sparsity = 0.3"),
        ({"type": "quantize", "bits": 3, "exclude": ["1"]}, "bits = 4"),
        ({"type": "slq", "bits": 3, "include": ["4"]}, "bits = 4"),
        ({"type": "weightless", "cell_bits": 6, "exclude": ["1"]}, "bits = 4"),
    ],
)
def test_a_recipe_override_no_stage_acting_on_its_layer_uses_is_refused(
    stage: dict[str, Any], key: str
) -> None:
    setting = {"sparsity": 0.3} if key.startswith("sparsity") else {"bits": 4}
    recipe = Recipe.from_dict(
        {"overrides": [{"pattern": "1", **setting}], "stages": [stage, {"type": "encode"}]}
    )
    with pytest.raises(
        ConfigError, match=rf"overrides\[0\] \('1'\): {key} is used by no stage: .*1\.weight"
    ):
        check_recipe(toy_model(), recipe)


def test_a_recipe_override_setting_no_stage_takes_is_refused_at_load() -> None:
    with pytest.raises(
        ConfigError, match=r"overrides\[0\] \('1'\): bits = 4 is used by no stage of this recipe"
    ):
        Recipe.from_dict(
            {
                "overrides": [{"pattern": "1", "sparsity": 0.5, "bits": 4}],
                "stages": [{"type": "prune", "sparsity": 0.5}, {"type": "encode"}],
            }
        )
    with pytest.raises(ConfigError, match=r"sparsity = 0.5 is used by no stage of this recipe"):
        Recipe.from_dict(
            {
                "overrides": [{"pattern": "1", "sparsity": 0.5}],
                "stages": [{"type": "quantize"}, {"type": "encode"}],
            }
        )
    # a pattern matching nothing is still refused against the model
    recipe = Recipe.from_dict(
        {
            "overrides": [{"pattern": "nomatch", "bits": 4}],
            "stages": [{"type": "quantize"}, {"type": "encode"}],
        }
    )
    with pytest.raises(ConfigError, match=r"overrides\[0\]: pattern 'nomatch' matches no"):
        check_recipe(toy_model(), recipe)


@pytest.mark.parametrize(
    "stage",
    [
        {"type": "prune", "sparsity": 0.5, "exclude": ["1"], "overrides": [
            {"pattern": "1", "sparsity": 0.3}]},
        {"type": "quantize", "exclude": ["[14]"], "overrides": [{"pattern": "1", "bits": 4}]},
        {"type": "inq", "exclude": ["1"], "overrides": [{"pattern": "1", "bits": 4}]},
        {"type": "weightless", "exclude": ["1"], "overrides": [{"pattern": "1", "cell_bits": 6}]},
    ],
)  # fmt: skip
def test_a_stage_override_of_a_layer_it_excludes_is_refused_at_load(
    stage: dict[str, Any],
) -> None:
    glob = re.escape(stage["exclude"][0])
    with pytest.raises(
        ConfigError,
        match=rf"stage 1 \({stage['type']}\): override pattern '1' names a layer this stage "
        rf"excludes \(exclude glob '{glob}'\)",
    ):
        Recipe.from_dict({"stages": [stage, {"type": "encode"}]})


def test_a_stage_override_glob_of_excluded_layers_is_refused_naming_both() -> None:
    recipe = Recipe.from_dict(
        {
            "stages": [
                {
                    "type": "prune",
                    "sparsity": 0.5,
                    "exclude": ["1.weight"],
                    "overrides": [{"pattern": "[1]", "sparsity": 0.3}],
                },
                {"type": "quantize", "include": ["4"], "overrides": [{"pattern": "1", "bits": 4}]},
                {"type": "encode"},
            ]
        }
    )
    with pytest.raises(
        ConfigError,
        match=r"stage 1 \(prune\): override pattern '\[1\]' names 1\.weight, which this stage "
        r"leaves out \(exclude = \['1\.weight'\]\)",
    ):
        check_recipe(toy_model(), recipe)
    recipe = Recipe.from_dict({**recipe.to_dict(), "stages": recipe.to_dict()["stages"][1:]})
    with pytest.raises(
        ConfigError,
        match=r"stage 1 \(quantize\): override pattern '1' names 1\.weight, which this stage "
        r"leaves out \(include = \['4'\]\)",
    ):
        check_recipe(toy_model(), recipe)


class _Attention(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.attn = nn.MultiheadAttention(8, 2)
        self.fc = nn.Linear(8, 4)


def test_a_recipe_override_may_name_a_parameter_a_stage_includes(tmp_path: Path) -> None:
    # in_proj_weight is no default target: the rule was refused as matching no layer
    recipe = Recipe.from_dict(
        {
            "overrides": [{"pattern": "attn.in_proj_weight", "sparsity": 0.25}],
            "stages": [
                {
                    "type": "prune",
                    "sparsity": 0.5,
                    "include": ["attn.in_proj_weight", "fc"],
                    "retrain": NO_RETRAIN,
                },
                {"type": "encode"},
            ],
        }
    )
    result = run_recipe(_Attention(), recipe, tmp_path, device="cpu")
    layers = _layers(result.stages[0].details)
    assert layers["attn.in_proj_weight"]["kept_fraction"] == pytest.approx(0.75, abs=0.01)
    assert layers["fc.weight"]["kept_fraction"] == pytest.approx(0.5, abs=0.01)


def test_impossible_recipe_overrides_are_refused_before_any_stage_naming_them() -> None:
    inq = Recipe.from_dict(
        {
            "overrides": [{"pattern": "1", "bits": 1}],
            "stages": [{"type": "inq", "bits": 3}, {"type": "encode"}],
        }
    )
    with pytest.raises(ConfigError, match=r"stage 1 \(inq\): .*\['1'\]\.bits .* got 1"):
        check_recipe(toy_model(), inq)
    global_scope = Recipe.from_dict(
        {
            "overrides": [{"pattern": "1", "sparsity": 0.3}],
            "stages": [{"type": "prune", "sparsity": 0.5, "scope": "global"}, {"type": "encode"}],
        }
    )
    with pytest.raises(
        ConfigError, match=r"stage 1 \(prune\): overrides\['1'\]: sparsity = 0.3 .* 'global'"
    ):
        check_recipe(toy_model(), global_scope)


def test_a_rule_a_stage_cannot_take_is_fine_where_the_stage_leaves_its_layer_out() -> None:
    # bits = 1 for layer 1 is SLQ's; the INQ stage (bits 2..8) leaves layer 1 out
    recipe = Recipe.from_dict(
        {
            "overrides": [{"pattern": "1", "bits": 1}, {"pattern": "4", "sparsity": 0.3}],
            "stages": [
                {"type": "prune", "sparsity": 0.5, "scope": "global", "exclude": ["4"]},
                {"type": "prune", "sparsity": 0.5, "include": ["4"]},
                {"type": "slq", "bits": 2, "include": ["1"]},
                {"type": "inq", "bits": 3, "exclude": ["1"]},
                {"type": "encode"},
            ],
        }
    )
    check_recipe(toy_model(), recipe)
    assert stage_config(toy_model(), recipe, 0).prune.overrides == ()
    assert stage_config(toy_model(), recipe, 3).quantize.overrides == ()
    assert [o.bits for o in stage_config(toy_model(), recipe, 2).quantize.overrides] == [1]


def test_a_weightless_clustering_override_matching_no_layer_is_refused() -> None:
    # it was ignored: weightless_ applies each clustering override to the layers it matches
    recipe = Recipe.from_dict(
        {
            "stages": [
                {
                    "type": "weightless",
                    "cell_bits": 6,
                    "quantize": {"bits": 2, "overrides": [{"pattern": "nomatch", "bits": 3}]},
                },
                {"type": "encode"},
            ]
        }
    )
    with pytest.raises(
        ConfigError, match=r"stage 1 \(weightless\): override pattern 'nomatch' matches no layer"
    ):
        check_recipe(toy_model(), recipe)


def _weightless(overrides: list[dict[str, Any]], **keys: Any) -> Recipe:
    stage = {"type": "weightless", "quantize": {"bits": 2}, "retrain": {"epochs": 0}}
    return Recipe.from_dict(
        {"stages": [{**stage, **keys, "overrides": overrides}, {"type": "encode"}]}
    )


def test_weightless_with_every_width_fixed_needs_no_validation(tmp_path: Path) -> None:
    fixed = _weightless([{"pattern": "1", "cell_bits": 4}, {"pattern": "4", "cell_bits": 3}])
    assert validation_stage(fixed, toy_model()) is None
    skipped = _weightless([{"pattern": "1", "cell_bits": 4}, {"pattern": "4", "skip": True}])
    assert validation_stage(skipped, toy_model()) is None
    excluded = _weightless([{"pattern": "1", "cell_bits": 4}], exclude=["4"])
    assert validation_stage(excluded, toy_model()) is None
    # a layer whose width is chosen needs it; without the model any stage that may choose
    chosen = _weightless([{"pattern": "1", "cell_bits": 4}])
    assert validation_stage(chosen, toy_model()) == ("stage 1 (weightless)", "set cell_bits")
    assert validation_stage(fixed) is not None
    # the stage runs without validation accuracy
    model = toy_model()
    stage = fixed.stages[0]
    assert isinstance(stage.config, WeightlessStage)

    def no_file(path: Path) -> Any:
        raise AssertionError("no file is written here")

    ctx = StageContext(
        model=model, recipe=fixed, stage=stage, index=0, config=fixed.effective(stage), seed=3,
        run_dir=tmp_path, device=None, train_fn=None, eval_fn=None, test_fn=None,
        batches=None, teacher=lambda: model, emit=lambda event: None, write_dzip=no_file,
    )  # fmt: skip
    result = registered_runner("weightless").run(ctx, ctx.config)
    widths = {layer["name"]: layer["cell_bits"] for layer in result.details["report"]["layers"]}
    assert widths == {"1.weight": 4, "4.weight": 3}


# --- the same through run_recipe and `deepzip run` (the run and the CLI use stage_config and
# validation_stage with the model)


def test_run_recipe_runs_an_all_fixed_weightless_stage_without_validation(
    tmp_path: Path,
) -> None:
    fixed = _weightless([{"pattern": "1", "cell_bits": 4}, {"pattern": "4", "cell_bits": 3}])
    result = run_recipe(toy_model(), fixed, tmp_path, device="cpu")  # no eval_fn, no data
    widths = {
        layer["name"]: layer["cell_bits"] for layer in result.stages[0].details["report"]["layers"]
    }
    assert widths == {"1.weight": 4, "4.weight": 3}
    chosen = _weightless([{"pattern": "1", "cell_bits": 4}])
    with pytest.raises(ConfigError, match=r"stage 1 \(weightless\) needs validation accuracy"):
        run_recipe(toy_model(), chosen, tmp_path / "chosen", device="cpu")


def test_run_recipe_gives_each_stage_only_the_rules_of_its_layers(tmp_path: Path) -> None:
    # bits = 1 for layer 1 is the SLQ stage's; the INQ stage (bits 2..8) leaves layer 1 out.
    # run_recipe merged every rule into every stage and failed in the INQ stage.
    recipe = Recipe.from_dict(
        {
            "overrides": [{"pattern": "1", "bits": 1}],
            "stages": [
                {"type": "slq", "bits": 2, "include": ["1"], "steps": [1.0], "retrain": NO_RETRAIN},
                {"type": "inq", "bits": 3, "exclude": ["1"], "steps": [1.0], "retrain": NO_RETRAIN},
                {"type": "encode"},
            ],
        }
    )
    result = run_recipe(toy_model(), recipe, tmp_path, device="cpu")
    slq, inq = (_layers(result.stages[i].details) for i in (0, 1))
    assert set(slq) == {"1.weight"}
    assert slq["1.weight"]["bits"] == 1
    assert set(inq) == {"4.weight"}
    assert inq["4.weight"]["bits"] == 3


WEIGHTLESS_FIXED = """
model = "lenet-300-100"
dataset = "fashion-mnist"
seed = 1

[[stages]]
type = "prune"
sparsity = 0.95
[stages.schedule]
kind = "oneshot"
[stages.retrain]
epochs = 0
final_epochs = 0

[[stages]]
type = "weightless"
[stages.quantize]
bits = 2
[stages.retrain]
epochs = 0
[[stages.overrides]]
pattern = "fc*"
cell_bits = 4

[[stages]]
type = "encode"
"""


def test_cli_run_needs_no_validation_split_for_an_all_fixed_weightless_stage(
    tiny_idx: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from deepzip.cli import main

    data = tiny_idx
    recipe = tmp_path / "w.toml"
    common = ["--data-dir", str(data), "--no-progress", "--device", "cpu", "--val-size", "0"]
    recipe.write_text(WEIGHTLESS_FIXED)
    assert main(["run", str(recipe), "--run-dir", str(tmp_path / "run"), *common]) == 0
    capsys.readouterr()
    # a width left to choose still needs the split, refused before any work
    recipe.write_text(WEIGHTLESS_FIXED.replace('pattern = "fc*"', 'pattern = "fc[12]"'))
    assert main(["run", str(recipe), "--run-dir", str(tmp_path / "r2"), *common]) == 2
    err = capsys.readouterr().err
    assert "stage 2 (weightless) needs validation data: --val-size must be > 0, got 0" in err
    assert not (tmp_path / "r2").exists()


PRUNE_PART = """
model = "lenet-300-100"

[[overrides]]
pattern = "fc3"
skip = true

[[stages]]
type = "prune"
sparsity = 0.5
exclude = ["fc3"]
[stages.retrain]
epochs = 0
final_epochs = 0

[[stages]]
type = "quantize"
bits = 4

[[stages]]
type = "encode"
"""


def test_cli_prune_with_a_recipe_gives_the_prune_stage_only_its_rules(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # the fc3 rule is the quantize stage's (the prune stage excludes fc3): `deepzip prune
    # --recipe` merged it into the prune job, which then refused it as matching nothing
    import deepzip.cli.train_commands as train_commands
    from deepzip.cli import main
    from deepzip.config import PruneJob
    from deepzip.format import save_checkpoint
    from deepzip.zoo import create_model

    checkpoint = tmp_path / "dense.safetensors"
    save_checkpoint(
        create_model("lenet-300-100"), checkpoint, metadata={"deepzip.model": "lenet-300-100"}
    )
    recipe = tmp_path / "r.toml"
    recipe.write_text(PRUNE_PART, encoding="utf-8")
    jobs: list[PruneJob] = []

    def prune(model: nn.Module, data: object, job: PruneJob, **kwargs: object) -> None:
        jobs.append(job)
        raise KeyboardInterrupt  # the job is what this test is about

    monkeypatch.setattr(train_commands, "prune_with_retraining", prune)
    monkeypatch.setattr(train_commands, "_data", lambda args: None)
    out = tmp_path / "p.safetensors"
    argv = ["prune", str(checkpoint), "-o", str(out), "--recipe", str(recipe), "--device", "cpu"]
    assert main(argv) == 130
    (job,) = jobs
    assert job.prune.exclude == ("fc3",)
    assert job.prune.overrides == ()
    assert job.prune.sparsity == 0.5


def test_checking_a_recipe_selects_layers_per_stage_not_per_layer(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # the checks ask, per layer, what the earlier stages made of it; computing each earlier
    # stage's configuration (a layer selection) per layer made check_recipe quadratic
    import deepzip.pipeline.registry as registry
    import deepzip.pipeline.runners as runners

    calls = [0]
    real = registry.select_targets

    def counting(*args: Any, **kwargs: Any) -> Any:
        calls[0] += 1
        return real(*args, **kwargs)

    monkeypatch.setattr(registry, "select_targets", counting)
    monkeypatch.setattr(runners, "select_targets", counting)
    recipe = Recipe.from_dict(
        {
            "overrides": [{"pattern": "1*", "bits": 4}],
            "stages": [
                {"type": "prune", "sparsity": 0.5, "retrain": NO_RETRAIN},
                {"type": "quantize", "bits": 3, "exclude": ["2*"]},
                {"type": "slq", "bits": 3, "include": ["2*"], "retrain": NO_RETRAIN},
                {"type": "weightless", "quantize": {"bits": 2}, "retrain": {"epochs": 0}},
                {"type": "encode"},
            ],
        }
    )
    counts = []
    for n in (12, 48):
        calls[0] = 0
        model = nn.Sequential(*[nn.Linear(4, 4) for _ in range(n)])
        check_recipe(model, recipe)
        validation_stage(recipe, model)
        counts.append(calls[0])
    assert counts[0] == counts[1]
