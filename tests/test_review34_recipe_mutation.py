"""Session 34: mutation testing of ``deepzip.config.recipe``: the Python-constructed recipe's
checks, the hostile-TOML refusals (each naming the key and the bad value), the order rules'
exact boundaries, and the per-stage views (effective configs, index bits, the prune job)."""

from __future__ import annotations

import re
import sys
from pathlib import Path
from typing import Any

import pytest

from deepzip.config import (
    BitsOverride,
    EncodeStage,
    LayerOverride,
    LayerRule,
    PruneConfig,
    PruneJob,
    PruneStage,
    QuantizeConfig,
    QuantizeStage,
    Recipe,
    RetrainConfig,
    ScheduleConfig,
    SensitivityStage,
    Stage,
    TrainConfig,
    TrainStage,
    builtin_recipe,
    builtin_recipe_names,
    load_prune_job,
    load_recipe,
)
from deepzip.config.recipe import builtin_recipe_data
from deepzip.errors import ConfigError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

ENCODE = Stage("encode", EncodeStage())
TRAIN = Stage("train", TrainStage(TrainConfig()))


def _prune(sparsity: float = 0.5, **kw: Any) -> Stage:
    return Stage("prune", PruneStage(PruneConfig(sparsity=sparsity, **kw)))


def _quantize(bits: int = 4, **kw: Any) -> Stage:
    return Stage("quantize", QuantizeStage(QuantizeConfig(bits=bits, **kw)))


def _table(kind: str, **kw: Any) -> dict[str, Any]:
    extra: dict[str, Any] = {"prune": {"sparsity": 0.5}}.get(kind, {})
    return {"type": kind, **extra, **kw}


# -- Python construction


def test_the_default_seed_is_the_seed_of_a_recipe_without_one() -> None:
    assert Recipe(stages=(ENCODE,)).seed == 0
    assert Recipe(stages=(ENCODE,)) == Recipe.from_dict({"stages": [{"type": "encode"}]})


@pytest.mark.parametrize(
    "stages",
    [
        [ENCODE],  # a list, not a tuple
        (EncodeStage(),),  # a config, not a Stage
        (ENCODE, "encode"),  # one good item does not make the rest good
        ("encode", ENCODE),
    ],
)
def test_stages_must_be_a_tuple_of_stage(stages: Any) -> None:
    with pytest.raises(ConfigError, match=r"stages must be a tuple of Stage, got "):
        Recipe(stages=stages)


@pytest.mark.parametrize(
    "overrides",
    [
        [LayerRule("fc1", index_bits=4)],
        (LayerOverride("fc1", sparsity=0.5),),
        (LayerRule("fc1", index_bits=4), {"pattern": "fc2", "index_bits": 4}),
        ({"pattern": "fc2", "index_bits": 4}, LayerRule("fc1", index_bits=4)),
    ],
)
def test_overrides_must_be_layer_rules(overrides: Any) -> None:
    with pytest.raises(ConfigError, match=r"overrides must be LayerRule items, got "):
        Recipe(stages=(ENCODE,), overrides=overrides)


@pytest.mark.parametrize("key", ["model", "dataset", "name", "description"])
@pytest.mark.parametrize("value", ["", 3, b"lenet-5"])
def test_descriptive_keys_must_be_non_empty_strings(key: str, value: object) -> None:
    info: dict[str, Any] = {key: value}
    with pytest.raises(
        ConfigError, match=re.escape(f"{key} must be a non-empty string, got {value!r}")
    ):
        Recipe(stages=(ENCODE,), **info)
    good: dict[str, Any] = {key: "x"}
    assert getattr(Recipe(stages=(ENCODE,), **good), key) == "x"


# -- hostile TOML / JSON


@pytest.mark.parametrize("data", [["stages"], "stages = []", 7, None])
def test_a_recipe_that_is_not_a_table_is_refused(data: object) -> None:
    with pytest.raises(ConfigError, match=re.escape(f"a recipe must be a table, got {data!r}")):
        Recipe.from_dict(data)  # type: ignore[arg-type]


@pytest.mark.parametrize("stages", [[], {"type": "encode"}, "encode", None])
def test_stages_must_be_a_non_empty_list(stages: object) -> None:
    data = {"stages": stages} if stages is not None else {"seed": 1}
    with pytest.raises(ConfigError, match=r"a recipe needs a non-empty \[\[stages\]\] list, got "):
        Recipe.from_dict(data)


@pytest.mark.parametrize("rules", [{"pattern": "fc1", "index_bits": 4}, "fc1"])
def test_recipe_overrides_must_be_a_list(rules: object) -> None:
    with pytest.raises(
        ConfigError, match=re.escape(f"overrides must be a list of tables, got {rules!r}")
    ):
        Recipe.from_dict({"overrides": rules, "stages": [{"type": "encode"}]})


def test_a_recipe_with_stages_and_a_prune_table_is_a_pipeline_recipe() -> None:
    # [prune] next to [[stages]] is an unknown key, not a pruning recipe
    with pytest.raises(ConfigError, match=r"recipe: unknown key 'prune'"):
        Recipe.from_dict({"prune": {"sparsity": 0.5}, "stages": [{"type": "encode"}]})
    with pytest.raises(ConfigError, match=r"recipe: unknown key 'prune'"):
        PruneJob.from_dict({"prune": {"sparsity": 0.5}, "stages": [{"type": "encode"}]})


def test_a_pruning_recipe_is_checked_as_one() -> None:
    with pytest.raises(ConfigError, match=r"unknown section 'scheduel'; expected 'prune'"):
        Recipe.from_dict({"prune": {"sparsity": 0.5}, "scheduel": {}})
    with pytest.raises(ConfigError, match=r"unknown section 'a'"):  # the first, sorted
        PruneJob.from_dict({"prune": {"sparsity": 0.5}, "z": 1, "a": 2})
    with pytest.raises(ConfigError, match=r"a pruning recipe needs a \[prune\] section"):
        PruneJob.from_dict({"schedule": {"kind": "oneshot"}})
    with pytest.raises(ConfigError, match=r"a pruning recipe needs a \[prune\] section"):
        PruneJob.from_dict({"model": "lenet-5"})


def test_a_pruning_recipe_keeps_its_descriptive_keys() -> None:
    info = {"name": "n", "description": "d", "model": "lenet-5", "dataset": "mnist"}
    recipe = Recipe.from_dict({"prune": {"sparsity": 0.8}, **info})
    assert (recipe.name, recipe.description, recipe.model, recipe.dataset) == (
        "n",
        "d",
        "lenet-5",
        "mnist",
    )
    assert [s.kind for s in recipe.stages] == ["prune", "encode"]  # no [train]: no train stage
    assert recipe.seed == 0
    job = PruneJob.from_dict({"prune": {"sparsity": 0.8}, **info})
    assert job == PruneJob(PruneConfig(sparsity=0.8))
    assert job.train is None


def test_a_bad_descriptive_key_of_a_pruning_recipe_is_named() -> None:
    with pytest.raises(ConfigError, match=r"model must be a non-empty string, got ''"):
        Recipe.from_dict({"prune": {"sparsity": 0.8}, "model": ""})


# -- [defaults] and recipe-wide rules that no stage takes


def test_a_default_taken_by_no_stage_names_key_value_stages_and_takers() -> None:
    stages = [_table("prune"), _table("prune"), {"type": "encode"}]
    with pytest.raises(ConfigError) as info:
        Recipe.from_dict({"defaults": {"sparsity": 0.2, "bits": 6}, "stages": stages})
    assert str(info.value) == (
        "defaults: bits = 6 is taken by no stage of this recipe (its stages: prune, "
        "encode; bits is for inq, mlq, quantize, slq, weightless stages); remove it"
    )


def test_a_rule_used_by_no_stage_names_rule_setting_stages_and_takers() -> None:
    with pytest.raises(ConfigError) as info:
        Recipe(
            stages=(_prune(), _prune(), ENCODE),
            overrides=(LayerRule("fc1", index_bits=4), LayerRule("fc2", bits=3)),
        )
    assert str(info.value) == (
        "overrides[1] ('fc2'): bits = 3 is used by no stage of this recipe (its stages: "
        "prune, encode; bits is for inq, mlq, quantize, slq, weightless stages)"
    )
    with pytest.raises(ConfigError, match=r"^overrides\[0\] \('fc1'\): sparsity = 0.2 is used"):
        Recipe(stages=(TRAIN, _quantize(), ENCODE), overrides=(LayerRule("fc1", sparsity=0.2),))


# -- a stage's own override of a layer it excludes


def test_an_own_override_of_an_excluded_layer_is_refused_naming_both() -> None:
    stage = _prune(exclude=("fc*",), overrides=(LayerOverride("fc3", sparsity=0.2),))
    with pytest.raises(ConfigError) as info:
        Recipe(stages=(stage, ENCODE))
    assert str(info.value) == (
        "stage 1 (prune): override pattern 'fc3' names a layer this stage excludes (exclude "
        "glob 'fc*'); remove the override or the exclusion"
    )
    # the first exclude glob that matches is named; a later stage is numbered as such
    quantize = _quantize(exclude=("conv1", "fc?", "fc3"), overrides=(BitsOverride("fc3", bits=3),))
    with pytest.raises(ConfigError, match=r"^stage 2 \(quantize\): .*'fc3'.*exclude glob 'fc\?'"):
        Recipe(stages=(_prune(), quantize, ENCODE))


@pytest.mark.parametrize("pattern", ["fc*", "fc?", "fc[12]"])
def test_an_own_override_glob_is_checked_against_the_model_not_here(pattern: str) -> None:
    stage = _prune(exclude=("fc*",), overrides=(LayerOverride(pattern, sparsity=0.2),))
    recipe = Recipe(stages=(stage, ENCODE))
    assert recipe.stages[0].config.prune.overrides[0].pattern == pattern


def test_an_own_override_of_a_layer_not_excluded_is_accepted() -> None:
    stage = _prune(exclude=("conv*",), overrides=(LayerOverride("fc3", sparsity=0.2),))
    assert Recipe(stages=(stage, ENCODE)).stages[0] == stage
    # a stage that selects no layers (train) is skipped, and the one after it checked
    bad = _prune(exclude=("fc3",), overrides=(LayerOverride("fc3", sparsity=0.2),))
    with pytest.raises(ConfigError, match=r"^stage 2 \(prune\): override pattern 'fc3'"):
        Recipe(stages=(TRAIN, bad, ENCODE))


# -- the order rules, at their boundaries


def _kinds(*kinds: str) -> list[dict[str, Any]]:
    return [_table(k) for k in kinds]


@pytest.mark.parametrize(
    ("kinds", "message"),
    [
        (
            ("prune", "quantize", "prune", "encode"),
            r"^stage 3 \(prune\): prune after quantize \(stage 2\)",
        ),
        (
            ("quantize", "finetune", "slq", "retrain", "encode"),
            r"^stage 4 \(retrain\): retrain after slq \(stage 3\)",
        ),
        (  # two equal quantize stages: the message names the most recent one
            ("quantize", "finetune", "quantize", "retrain", "encode"),
            r"^stage 4 \(retrain\): retrain after quantize \(stage 3\)",
        ),
        (
            ("slq", "sensitivity", "encode"),
            r"^stage 2 \(sensitivity\): sensitivity after slq \(stage 1\)",
        ),
        (("prune", "quantize", "sensitivity", "encode"), r"sensitivity after quantize \(stage 2\)"),
        (
            ("train", "retrain", "encode"),
            r"^stage 2 \(retrain\): retrain needs an earlier prune stage",
        ),
        (("sensitivity", "retrain", "encode"), r"^stage 2 \(retrain\): retrain needs an earlier"),
        (
            ("prune", "finetune", "encode"),
            r"^stage 2 \(finetune\): finetune needs an earlier quantize",
        ),
        (("train", "train", "encode"), r"^stage 2 \(train\): a train stage can only be the first"),
        (("prune", "encode", "encode"), r"^stage 2 \(encode\): encode must be the last stage"),
        (("train",), r"^the last stage must be an encode stage \(last: stage 1 \(train\)\)$"),
        (
            ("prune", "quantize"),
            r"^the last stage must be an encode stage \(last: stage 2 \(quantize\)\)$",
        ),
    ],
)
def test_order_rules_at_their_boundaries(kinds: tuple[str, ...], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        Recipe.from_dict({"stages": _kinds(*kinds)})


def test_an_empty_stage_tuple_has_no_encode_stage() -> None:
    with pytest.raises(
        ConfigError, match=r"^the last stage must be an encode stage \(last: none\)$"
    ):
        Recipe(stages=())


@pytest.mark.parametrize(
    "kinds",
    [
        ("train", "encode"),
        ("sensitivity", "prune", "retrain", "sensitivity", "quantize", "encode"),
        ("prune", "retrain", "retrain", "quantize", "finetune", "finetune", "encode"),
        ("slq", "finetune", "encode"),
        ("prune", "inq", "quantize", "finetune", "encode"),
    ],
)
def test_possible_orders_at_the_boundaries(kinds: tuple[str, ...]) -> None:
    recipe = Recipe.from_dict({"stages": _kinds(*kinds)})
    assert tuple(s.kind for s in recipe.stages) == kinds


# -- the per-stage views


def test_effective_merges_the_recipe_rules_first_and_only_the_given_ones() -> None:
    own = LayerOverride("fc2", sparsity=0.7)
    recipe = Recipe(
        stages=(
            _prune(overrides=(own,)),
            _quantize(overrides=(BitsOverride("fc1", bits=2),)),
            ENCODE,
        ),
        overrides=(
            LayerRule("fc1", sparsity=0.3),
            LayerRule("fc3", bits=5),
            LayerRule("fc2", quality=1.5),
            LayerRule("conv*", skip=True),
            LayerRule("fc1", index_bits=4),
        ),
    )
    prune, quantize, encode = recipe.stages
    assert recipe.effective(prune).prune.overrides == (
        LayerOverride("fc1", sparsity=0.3),
        LayerOverride("fc2", quality=1.5),
        LayerOverride("conv*", skip=True),
        own,
    )
    assert recipe.effective(quantize).quantize.overrides == (
        BitsOverride("fc3", bits=5),
        BitsOverride("conv*", skip=True),
        BitsOverride("fc1", bits=2),
    )
    assert recipe.effective(encode) == EncodeStage()
    # only the rules passed (deepzip.pipeline passes those matching a layer of the stage)
    assert recipe.effective(prune, overrides=()) == prune.config
    assert recipe.effective(quantize, overrides=(recipe.overrides[1],)).quantize.overrides == (
        BitsOverride("fc3", bits=5),
        BitsOverride("fc1", bits=2),
    )
    # the other settings of the stage are kept
    assert recipe.effective(prune).prune.sparsity == 0.5
    assert recipe.effective(quantize).quantize.bits == 4


def test_effective_gives_the_incremental_and_weightless_stages_their_bits() -> None:
    recipe = Recipe.from_dict(
        {
            "overrides": [{"pattern": "fc1", "bits": 3}, {"pattern": "fc2", "sparsity": 0.5}],
            "stages": [
                _table("prune"),
                _table("slq", overrides=[{"pattern": "fc1", "bits": 6}]),
                _table("weightless", include=["fc3"]),
                {"type": "encode"},
            ],
        }
    )
    slq = recipe.effective(recipe.stages[1])
    assert slq.quantize.overrides == (BitsOverride("fc1", bits=3), BitsOverride("fc1", bits=6))
    weightless = recipe.effective(recipe.stages[2])
    assert weightless.quantize.overrides == (BitsOverride("fc1", bits=3),)
    # other stage types take the config unchanged
    other = Recipe.from_dict(
        {"stages": [_table("train"), _table("sensitivity"), {"type": "encode"}]}
    )
    assert isinstance(other.stages[1].config, SensitivityStage)
    for stage in other.stages:
        assert recipe.effective(stage) is stage.config


def test_a_global_prune_stage_takes_a_skip_but_names_a_per_layer_quality() -> None:
    stage = _prune(scope="global")
    skip = Recipe(stages=(stage, ENCODE), overrides=(LayerRule("fc1", skip=True),))
    assert skip.effective(stage).prune.overrides == (LayerOverride("fc1", skip=True),)
    quality = Recipe(stages=(stage, ENCODE), overrides=(LayerRule("fc*", quality=2.0),))
    with pytest.raises(ConfigError) as info:
        quality.effective(stage)
    assert str(info.value).startswith(
        "overrides['fc*']: quality = 2.0 sets a per-layer threshold, but this prune stage uses "
        "scope = 'global'"
    )
    with pytest.raises(ConfigError, match=r"^overrides\['fc2'\]: sparsity = 0.25 sets"):
        Recipe(
            stages=(stage, ENCODE),
            overrides=(LayerRule("fc1", skip=True), LayerRule("fc2", sparsity=0.25)),
        ).effective(stage)
    # a rule without a pruning part (bits) is no per-layer threshold
    both = Recipe(stages=(stage, _quantize(), ENCODE), overrides=(LayerRule("fc1", bits=3),))
    assert both.effective(stage).prune.overrides == ()
    assert quality.effective(stage, overrides=()).prune.scope == "global"


def test_index_bits_keeps_the_last_rule_of_a_glob_where_it_last_appears() -> None:
    recipe = Recipe(
        stages=(_prune(), ENCODE),
        overrides=(
            LayerRule("fc1", index_bits=4),
            LayerRule("fc2", index_bits="auto"),
            LayerRule("fc3", sparsity=0.2),
            LayerRule("fc1", index_bits=6),
        ),
    )
    assert list(recipe.index_bits().items()) == [("fc2", "auto"), ("fc1", 6)]
    assert Recipe(stages=(ENCODE,)).index_bits() == {}


def test_prune_job_takes_the_first_prune_stage_and_the_recipe_seed() -> None:
    first = _prune(0.3)
    recipe = Recipe(
        stages=(Stage("train", TrainStage(TrainConfig(epochs=3))), first, _prune(0.6), ENCODE),
        seed=11,
        overrides=(LayerRule("fc1", sparsity=0.1),),
    )
    assert recipe.prune_index() == 1
    job = recipe.prune_job()
    assert job.prune.sparsity == 0.3
    assert job.prune.overrides == (LayerOverride("fc1", sparsity=0.1),)
    assert job.train == TrainConfig(epochs=3, seed=11)
    assert recipe.prune_job(overrides=()).prune == PruneConfig(sparsity=0.3)
    # no train stage: no train config
    plain = recipe.without("train")
    assert [s.kind for s in plain.stages] == ["prune", "prune", "encode"]
    assert plain.prune_index() == 0
    assert plain.prune_job().train is None
    assert Recipe(stages=(_prune(), ENCODE)).without("prune").stages == (ENCODE,)
    with pytest.raises(ConfigError, match=r"^this recipe has no prune stage$"):
        Recipe(stages=(TRAIN, _quantize(), ENCODE)).prune_index()


def test_from_prune_job_moves_the_train_seed_to_the_recipe() -> None:
    job = PruneJob(
        PruneConfig(sparsity=0.4),
        ScheduleConfig(kind="oneshot"),
        RetrainConfig(epochs=2),
        TrainConfig(epochs=5, seed=9),
    )
    recipe = Recipe.from_prune_job(job, encode=EncodeStage(coder="ans"))
    assert recipe.seed == 9
    assert recipe.stages == (
        Stage("train", TrainStage(TrainConfig(epochs=5, seed=0))),
        Stage("prune", PruneStage(job.prune, job.schedule, job.retrain)),
        Stage("encode", EncodeStage(coder="ans")),
    )
    assert recipe.prune_job() == job
    bare = Recipe.from_prune_job(PruneJob(PruneConfig(sparsity=0.4)))
    assert (bare.seed, [s.kind for s in bare.stages]) == (0, ["prune", "encode"])
    assert bare.stages[-1] == ENCODE


def test_to_dict_writes_only_what_is_set() -> None:
    assert Recipe(stages=(ENCODE,)).to_dict() == {"seed": 0, "stages": [ENCODE.to_dict()]}
    full = Recipe(
        stages=(_prune(), ENCODE),
        seed=3,
        overrides=(LayerRule("fc1", skip=True),),
        model="lenet-5",
        dataset="mnist",
        name="n",
        description="d",
    )
    out = full.to_dict()
    assert list(out) == ["name", "description", "model", "dataset", "seed", "overrides", "stages"]
    assert out["overrides"] == [LayerRule("fc1", skip=True).to_dict()]
    assert Recipe.from_dict(out) == full
    job = PruneJob(PruneConfig(sparsity=0.4), train=TrainConfig(epochs=1))
    assert list(job.to_dict()) == ["prune", "schedule", "retrain", "train"]
    assert PruneJob.from_dict(job.to_dict()) == job
    assert "train" not in PruneJob(PruneConfig(sparsity=0.4)).to_dict()


@pytest.mark.parametrize(
    ("key", "value"),
    [("prune", LayerRule("fc1", skip=True)), ("schedule", None), ("retrain", {}), ("train", 3)],
)
def test_a_prune_job_checks_its_parts(key: str, value: object) -> None:
    parts: dict[str, Any] = {"prune": PruneConfig(sparsity=0.4), key: value}
    with pytest.raises(
        ConfigError, match=rf"^{key} must be a \w+Config, got {re.escape(repr(value))}"
    ):
        PruneJob(**parts)


# -- files and the recipes shipped with deepzip


def test_a_bad_recipe_file_is_named(tmp_path: Path) -> None:
    path = tmp_path / "bad.toml"
    path.write_text('seed = -1\n[[stages]]\ntype = "encode"\n', encoding="utf-8")
    with pytest.raises(ConfigError, match=rf"^{path}: seed must be an integer in \[0, 2\*\*31\)"):
        load_recipe(path)
    path.write_text("[prune]\nsparsity = 2.0\n", encoding="utf-8")
    with pytest.raises(ConfigError, match=rf"^{path}: prune.sparsity must be in \[0, 1\)"):
        load_prune_job(path)
    with pytest.raises(ConfigError, match=r"^model must be a torch\.nn\.Module, got int$"):
        load_prune_job(path, model=3)  # type: ignore[arg-type]


def test_builtin_recipes_are_the_shipped_toml_files() -> None:
    import deepzip.recipes

    folder = Path(deepzip.recipes.__file__).parent
    expected = sorted(p.stem for p in folder.glob("*.toml"))
    assert builtin_recipe_names() == expected
    assert "__init__" not in expected
    name = expected[0]
    text = (folder / f"{name}.toml").read_text(encoding="utf-8")
    assert builtin_recipe_data(name) == tomllib.loads(text)
    assert builtin_recipe(name) == Recipe.builtin(name).prune_job()
    with pytest.raises(ConfigError) as info:
        builtin_recipe_data("lenet-6")
    assert str(info.value) == f"no built-in recipe 'lenet-6'; available: {', '.join(expected)}"
