"""Pipeline recipes: TOML in and out, defaults, per-layer overrides, and every error case."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from deepzip.config import (
    BitsOverride,
    EncodeStage,
    FinetuneStage,
    LayerOverride,
    LayerRule,
    PruneConfig,
    PruneJob,
    PruneStage,
    QuantizeConfig,
    QuantizeStage,
    Recipe,
    RetrainConfig,
    RetrainStage,
    Stage,
    builtin_recipe,
    builtin_recipe_names,
    load_prune_job,
    load_recipe,
)
from deepzip.errors import ConfigError

FULL = """
name = "toy"
seed = 7
model = "lenet-300-100"
dataset = "fashion-mnist"

[defaults]
batch_size = 64
weight_decay = 0.001

[[overrides]]
pattern = "fc3"
sparsity = 0.5
bits = 6

[[overrides]]
pattern = "fc1"
index_bits = 4

[[stages]]
type = "train"
epochs = 2

[[stages]]
type = "sensitivity"
sparsities = [0.0, 0.5, 0.9]

[[stages]]
type = "prune"
sparsity = 0.9
overrides = [{ pattern = "fc2", sparsity = 0.8 }]
[stages.schedule]
kind = "steps"
steps = [0.5, 1.0]
[stages.retrain]
epochs = 1
final_epochs = 2
lr = 0.05

[[stages]]
type = "retrain"
epochs = 1
weight_decay = 0.0

[[stages]]
type = "quantize"
name = "q"
fc_bits = 5
method = "ecsq"
ecsq_lambda = 0.02

[[stages]]
type = "finetune"
epochs = 1

[[stages]]
type = "encode"
coder = "ans"
"""


def _recipe(text: str, tmp_path: Path) -> Recipe:
    path = tmp_path / "recipe.toml"
    path.write_text(text)
    return load_recipe(path)


def test_full_recipe_parses_with_defaults_and_overrides(tmp_path: Path) -> None:
    r = _recipe(FULL, tmp_path)
    assert [s.kind for s in r.stages] == [
        "train", "sensitivity", "prune", "retrain", "quantize", "finetune", "encode",
    ]  # fmt: skip
    assert (r.seed, r.model, r.dataset, r.name) == (7, "lenet-300-100", "fashion-mnist", "toy")
    train, _, prune, retrain, quant, finetune, encode = (s.config for s in r.stages)
    # [defaults] reach every stage that takes the key, unless the stage sets it
    assert train.train.batch_size == 64
    assert prune.retrain.batch_size == 64
    assert prune.retrain.weight_decay == 0.001
    assert retrain.retrain.weight_decay == 0.0
    assert finetune.finetune.batch_size == 64
    # finetune keeps its own defaults (Adam, small learning rate) where nothing is set
    assert finetune.finetune.optimizer == "adam"
    assert finetune.finetune.retrain_lr == pytest.approx(1e-4)
    assert prune.retrain.final_epochs == 2
    assert prune.schedule.fractions() == (0.5, 1.0)
    assert quant.quantize.method == "ecsq"
    assert r.stages[4].name == "q"
    assert encode == EncodeStage(coder="ans")
    # recipe-wide overrides go first, the stage's own come after (and win)
    eff = r.effective(r.stages[2])
    assert eff.prune.overrides == (
        LayerOverride("fc3", sparsity=0.5),
        LayerOverride("fc2", sparsity=0.8),
    )
    assert r.effective(r.stages[4]).quantize.overrides == (BitsOverride("fc3", bits=6),)
    assert r.index_bits() == {"fc1": 4}


def test_toml_round_trip(tmp_path: Path) -> None:
    r = _recipe(FULL, tmp_path)
    r.save(tmp_path / "out.toml")
    assert load_recipe(tmp_path / "out.toml") == r
    assert Recipe.from_dict(r.to_dict()) == r


def test_pruning_recipe_becomes_train_prune_encode(tmp_path: Path) -> None:
    text = (
        "[train]\nepochs = 3\nseed = 4\n[prune]\nsparsity = 0.8\n"
        '[schedule]\nkind = "oneshot"\n[retrain]\nepochs = 1\n'
    )
    r = _recipe(text, tmp_path)
    assert [s.kind for s in r.stages] == ["train", "prune", "encode"]
    assert r.seed == 4
    assert r.stages[1].config.prune == PruneConfig(sparsity=0.8)


def test_pipeline_recipe_still_loads_as_prune_job(tmp_path: Path) -> None:
    path = tmp_path / "r.toml"
    path.write_text(FULL)
    job = load_prune_job(path)
    assert isinstance(job, PruneJob)
    assert job.prune.sparsity == 0.9
    # the recipe-wide fc3 rule is part of the job's pruning config
    assert job.prune.overrides[0] == LayerOverride("fc3", sparsity=0.5)
    assert job.retrain.final_epochs == 2
    assert job.train is not None
    assert (job.train.epochs, job.train.seed, job.train.batch_size) == (2, 7, 64)


def test_builtin_recipes_load_both_ways() -> None:
    for name in builtin_recipe_names():
        recipe = Recipe.builtin(name)
        assert recipe.stages[-1].kind == "encode"
        assert isinstance(builtin_recipe(name), PruneJob)


def _with_stage(stage: str, extra: str = "") -> str:
    return f'{extra}\n[[stages]]\n{stage}\n[[stages]]\ntype = "encode"\n'


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (_with_stage('type = "prnue"'), r"stage 1: unknown stage type 'prnue' \(known: "),
        (_with_stage("sparsity = 0.5"), r"stage 1: missing key 'type'"),
        (
            _with_stage('type = "prune"\nsparsty = 0.9'),
            r"stage 1 \(prune\): unknown key 'sparsty'",
        ),
        (
            _with_stage('type = "prune"\nsparsity = 0.9\n[stages.retrain]\nepoch = 1'),
            r"stage 1 \(prune\): retrain: unknown key 'epoch'",
        ),
        (
            _with_stage('type = "prune"\nsparsity = 1.5'),
            r"stage 1 \(prune\): prune.sparsity must be in \[0, 1\), got 1.5",
        ),
        (
            _with_stage('type = "prune"\nsparsity = 0.9\noverrides = [{pattern="a", sparsity=-1}]'),
            r"stage 1 \(prune\): overrides\['a'\].sparsity must be in \[0, 1\), got -1",
        ),
        (
            _with_stage('type = "quantize"\nbits = 9'),
            r"stage 1 \(quantize\): quantize.bits must be an integer from 1 to 8, got 9",
        ),
        (
            _with_stage('type = "quantize"\nfc_bits = 0'),
            r"stage 1 \(quantize\): quantize.fc_bits must be an integer from 1 to 8, got 0",
        ),
        (
            _with_stage('type = "quantize"\nimportance = "adam"'),
            r"stage 1 \(quantize\): quantize.importance = 'adam' needs the optimizer state",
        ),
        (
            _with_stage('type = "sensitivity"\nsparsities = [0.5, 1.0]'),
            r"stage 1 \(sensitivity\): sparsities must be in \[0, 1\), got 1.0",
        ),
        (
            _with_stage('type = "retrain"\nfinal_epochs = 3'),
            r"stage 1 \(retrain\): unknown key 'final_epochs'",
        ),
        (
            _with_stage('type = "train"\nseed = 3'),
            r"stage 1 \(train\): unknown key 'seed'",
        ),
        (
            '[[stages]]\ntype = "encode"\nindex_bits = 17\n',
            r"stage 1 \(encode\): index_bits must be an integer from 1 to 16, 'auto' or "
            r"'paper', got 17",
        ),
        (
            '[[stages]]\ntype = "encode"\nindex_bits = "wide"\n',
            r"stage 1 \(encode\): index_bits must be .* got 'wide'",
        ),
        (
            '[[stages]]\ntype = "encode"\ncoder = "zip"\n',
            r"stage 1 \(encode\): coder must be one of .* got 'zip'",
        ),
        (
            _with_stage('type = "train"', "[defaults]\nlearning_rate = 0.1"),
            r"defaults: unknown key 'learning_rate'",
        ),
        (
            _with_stage('type = "train"', 'colour = "red"'),
            r"recipe: unknown key 'colour'",
        ),
        (
            _with_stage('type = "train"', '[[overrides]]\npattern = "fc1"\nbits = 12'),
            r"overrides\['fc1'\].bits must be an integer from 1 to 8, got 12",
        ),
        (
            _with_stage('type = "train"', '[[overrides]]\npattern = "fc1"\nsparsity = 1.0'),
            r"overrides\['fc1'\].sparsity must be in \[0, 1\), got 1.0",
        ),
        (
            _with_stage('type = "train"', '[[overrides]]\npattern = "fc1"\nlr = 0.1'),
            r"overrides\[0\]: unknown key 'lr'",
        ),
        ("seed = 1\n", r"a recipe needs a non-empty \[\[stages\]\] list"),
        (  # a table without a required key: a ConfigError naming it, not a TypeError
            _with_stage('type = "prune"\nsparsity = 0.5', "[[overrides]]\nsparsity = 0.3"),
            r"overrides\[0\]: missing required key 'pattern' \(got \{'sparsity': 0.3\}\)",
        ),
        (
            _with_stage('type = "prune"\nsparsity = 0.5\noverrides = [{sparsity = 0.3}]'),
            r"stage 1 \(prune\): prune.overrides\[0\]: missing required key 'pattern'",
        ),
        (  # a default no stage takes would be neither used nor checked
            _with_stage('type = "prune"\nsparsity = 0.5', "[defaults]\nbits = 99"),
            r"defaults: bits = 99 is taken by no stage of this recipe \(its stages: prune, "
            r"encode; bits is for .*quantize",
        ),
        (
            _with_stage(
                'type = "prune"\nsparsity = 0.5\n[stages.schedule]\nkind = "agp"\n'
                "steps = [0.5, 1.0]"
            ),
            r'stage 1 \(prune\): schedule.steps is only used with kind = "steps", got kind = '
            r"'agp' and steps = \[0.5, 1.0\]",
        ),
        (
            _with_stage('type = "prune"\nsparsity = 0.5\n[stages.schedule]\nn_steps = 3'),
            r'stage 1 \(prune\): schedule.n_steps is only used with kind = "agp", got kind = '
            r"'steps' and n_steps = 3",
        ),
    ],
)
def test_recipe_errors_name_stage_key_and_value(text: str, message: str, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=message) as info:
        _recipe(text, tmp_path)
    assert str(tmp_path / "recipe.toml") in str(info.value)  # and the file


def test_a_default_is_accepted_when_a_stage_takes_it() -> None:
    stages: list[dict[str, Any]] = [
        {"type": "prune", "sparsity": 0.5},
        {"type": "quantize"},
        {"type": "encode"},
    ]
    recipe = Recipe.from_dict({"defaults": {"bits": 4}, "stages": stages})
    assert recipe.stages[1].config.quantize.bits == 4
    with pytest.raises(ConfigError, match=r"quantize\.bits must be an integer from 1 to 8, got 99"):
        Recipe.from_dict({"defaults": {"bits": 99}, "stages": stages})


def _stages(*kinds: str) -> list[dict[str, Any]]:
    tables: dict[str, dict[str, Any]] = {
        "train": {"type": "train"},
        "prune": {"type": "prune", "sparsity": 0.5},
        "retrain": {"type": "retrain"},
        "quantize": {"type": "quantize"},
        "finetune": {"type": "finetune"},
        "encode": {"type": "encode"},
        "sensitivity": {"type": "sensitivity"},
    }
    return [tables[k] for k in kinds]


@pytest.mark.parametrize(
    ("kinds", "message"),
    [
        (("quantize", "finetune"), r"the last stage must be an encode stage \(last: stage 2 "),
        (("encode", "prune", "encode"), r"stage 1 \(encode\): encode must be the last stage"),
        (("finetune", "quantize", "encode"), r"stage 1 \(finetune\): finetune needs an earlier"),
        (("retrain", "prune", "encode"), r"stage 1 \(retrain\): retrain needs an earlier prune"),
        (("quantize", "prune", "encode"), r"stage 2 \(prune\): prune after quantize \(stage 1\)"),
        (
            ("prune", "quantize", "retrain", "encode"),
            r"stage 3 \(retrain\): retrain after quantize",
        ),
        (("prune", "train", "encode"), r"stage 2 \(train\): a train stage can only be the first"),
        (
            ("quantize", "sensitivity", "encode"),
            r"stage 2 \(sensitivity\): sensitivity after quantize \(stage 1\) cannot work",
        ),
    ],
)
def test_impossible_stage_orders(kinds: tuple[str, ...], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        Recipe.from_dict({"stages": _stages(*kinds)})


def test_possible_stage_orders() -> None:
    for kinds in (
        ("encode",),
        ("train", "sensitivity", "prune", "retrain", "quantize", "finetune", "encode"),
        ("quantize", "finetune", "quantize", "finetune", "encode"),
        ("prune", "prune", "quantize", "encode"),
    ):
        recipe = Recipe.from_dict({"stages": _stages(*kinds)})
        assert tuple(s.kind for s in recipe.stages) == kinds


def test_python_construction_is_validated() -> None:
    with pytest.raises(ConfigError, match="unknown stage type 'weightles'"):
        Stage("weightles", EncodeStage())
    with pytest.raises(ConfigError, match="a 'prune' stage needs a PruneStage, got EncodeStage"):
        Stage("prune", EncodeStage())
    with pytest.raises(ConfigError, match=r"seed must be an integer in \[0, 2\*\*31\), got -1"):
        Recipe(stages=(Stage("encode", EncodeStage()),), seed=-1)
    with pytest.raises(ConfigError, match="finetune stage: final_epochs is for prune stages"):
        FinetuneStage(RetrainConfig(final_epochs=1))
    with pytest.raises(ConfigError, match="retrain stage: final_epochs is for prune stages"):
        RetrainStage(RetrainConfig(final_epochs=2))
    with pytest.raises(ConfigError, match="skip = true leaves the layer uncompressed"):
        LayerRule("fc1", skip=True, bits=4)
    with pytest.raises(ConfigError, match="set sparsity, quality, bits, index_bits or skip"):
        LayerRule("fc1")
    recipe = Recipe(
        stages=(
            Stage("prune", PruneStage(PruneConfig(sparsity=0.5, scope="global"))),
            Stage("quantize", QuantizeStage(QuantizeConfig(bits=4))),
            Stage("encode", EncodeStage()),
        ),
        overrides=(LayerRule("fc1", sparsity=0.2),),
    )
    with pytest.raises(ConfigError, match="scope = 'global'"):
        recipe.effective(recipe.stages[0])
    skip = LayerRule("fc1", skip=True)
    assert skip.prune_override() == LayerOverride("fc1", skip=True)
    assert skip.bits_override() == BitsOverride("fc1", skip=True)
    assert LayerRule("fc1", bits=3).prune_override() is None


def test_a_stage_key_replaces_defaults_of_its_group() -> None:
    def parse(defaults: dict[str, Any], stage: dict[str, Any]) -> Any:
        recipe = Recipe.from_dict({"defaults": defaults, "stages": [stage, {"type": "encode"}]})
        return recipe.stages[0].config

    # sparsity and quality are alternatives: the stage's quality replaces the default sparsity
    prune = parse({"sparsity": 0.9}, {"type": "prune", "quality": 1.0})
    assert (prune.prune.sparsity, prune.prune.quality) == (None, 1.0)
    prune = parse({"quality": 1.0}, {"type": "prune", "sparsity": 0.8})
    assert (prune.prune.sparsity, prune.prune.quality) == (0.8, None)
    assert parse({"sparsity": 0.9}, {"type": "prune"}).prune.sparsity == 0.9
    # the stage's specific fc_bits / conv_bits win over a general default bits
    quant = parse({"bits": 4}, {"type": "quantize", "fc_bits": 6})
    assert (quant.quantize.bits, quant.quantize.fc_bits, quant.quantize.conv_bits) == (None, 6, 8)
    quant = parse({"bits": 4, "conv_bits": 6}, {"type": "quantize", "fc_bits": 3})
    assert (quant.quantize.bits, quant.quantize.fc_bits, quant.quantize.conv_bits) == (None, 3, 6)
    slq = parse({"bits": 4}, {"type": "slq", "bits": 3})
    assert slq.quantize.bits == 3
    assert parse({"bits": 4}, {"type": "quantize"}).quantize.bits == 4


def test_default_globs_select_the_layers_of_every_stage() -> None:
    recipe = Recipe.from_dict(
        {
            "defaults": {"include": ["fc3.weight"], "bits": 3},
            "stages": [
                {"type": "sensitivity"},
                {"type": "prune", "sparsity": 0.8},
                {"type": "weightless", "cell_bits": 6},
                {"type": "encode"},
            ],
        }
    )
    sensitivity, prune, weightless, _ = (s.config for s in recipe.stages)
    assert sensitivity.include == ("fc3.weight",)
    assert prune.prune.include == ("fc3.weight",)
    # Weightless encodes only the layers the defaults select; its clustering takes the bits
    assert weightless.weightless.include == ("fc3.weight",)
    assert weightless.quantize.include == ()
    assert weightless.quantize.bits == 3
    assert Recipe.from_dict(recipe.to_dict()) == recipe


def test_a_pruning_recipe_may_name_its_model(tmp_path: Path) -> None:
    text = (
        'name = "p"\nmodel = "lenet-5"\ndataset = "mnist"\ndescription = "d"\n'
        "[train]\nepochs = 3\nseed = 4\n[prune]\nsparsity = 0.8\n"
    )
    r = _recipe(text, tmp_path)
    assert (r.model, r.dataset, r.name, r.description, r.seed) == ("lenet-5", "mnist", "p", "d", 4)
    assert [s.kind for s in r.stages] == ["train", "prune", "encode"]
    job = load_prune_job(tmp_path / "recipe.toml")  # deepzip prune --recipe reads it too
    assert job.prune == PruneConfig(sparsity=0.8)
