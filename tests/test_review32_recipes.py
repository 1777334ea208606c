"""Session 32: the prune job of a pipeline recipe from ``load_prune_job``, and the messages
naming which stage types take a recipe-wide rule's setting."""

from __future__ import annotations

from pathlib import Path

import pytest

import deepzip as dz
from deepzip.config import Recipe
from deepzip.config.stages import layer_scope, rule_takers, stage_kinds
from deepzip.errors import ConfigError
from deepzip.zoo import create_model

# the fc3 rule is the quantize stage's: the prune stage excludes fc3
RECIPE = """
model = "lenet-300-100"

[[overrides]]
pattern = "fc3"
skip = true

[[overrides]]
pattern = "fc1"
sparsity = 0.8

[[stages]]
type = "prune"
sparsity = 0.5
exclude = ["fc3"]

[[stages]]
type = "quantize"
bits = 4

[[stages]]
type = "encode"
"""


def test_load_prune_job_with_the_model_gets_only_the_prune_stages_rules(
    tmp_path: Path,
) -> None:
    path = tmp_path / "r.toml"
    path.write_text(RECIPE, encoding="utf-8")
    model = create_model("lenet-300-100")
    job = dz.load_prune_job(path, model=model)
    assert [r.pattern for r in job.prune.overrides] == ["fc1"]
    assert job.prune.overrides[0].sparsity == 0.8
    dz.prune_(model, job.prune)  # the job prunes: nothing in it names the excluded fc3
    assert float((model.fc1.weight == 0).float().mean()) == pytest.approx(0.8, abs=1e-3)
    assert float((model.fc3.weight == 0).float().mean()) == 0.0

    # without the model every rule is merged (documented), and fc3's then fails to prune
    blind = dz.load_prune_job(path)
    assert [r.pattern for r in blind.prune.overrides] == ["fc3", "fc1"]
    with pytest.raises(ConfigError, match="'fc3' matches no prunable layer"):
        dz.prune_(create_model("lenet-300-100"), blind.prune)


def test_load_prune_job_with_a_model_names_the_file_and_checks_the_model(
    tmp_path: Path,
) -> None:
    path = tmp_path / "r.toml"
    path.write_text(RECIPE.replace('exclude = ["fc3"]', 'exclude = ["conv*"]'), encoding="utf-8")
    with pytest.raises(ConfigError, match=r"r\.toml: .*'conv\*'"):
        dz.load_prune_job(path, model=create_model("lenet-300-100"))
    with pytest.raises(ConfigError, match=r"model must be a torch\.nn\.Module, got str"):
        dz.load_prune_job(path, model="lenet-300-100")  # type: ignore[arg-type]


def test_a_plain_pruning_recipe_ignores_the_model(tmp_path: Path) -> None:
    path = tmp_path / "p.toml"
    path.write_text("[prune]\nsparsity = 0.25\n", encoding="utf-8")
    job = dz.load_prune_job(path, model=create_model("lenet-300-100"))
    assert job == dz.load_prune_job(path)
    assert job.prune.sparsity == 0.25


def test_rule_takers_follow_each_stage_types_layer_scope() -> None:
    # the stage types named in "<key> is for ... stages" are exactly those whose scope takes it
    expected: dict[str, set[str]] = {}
    for kind in stage_kinds().values():
        recipe = Recipe.from_dict({"stages": _minimal(kind.name)})
        config = next(s.config for s in recipe.stages if s.kind == kind.name)
        scope = layer_scope(config)
        for key in scope.takes if scope is not None else ():
            expected.setdefault(key, set()).add(kind.name)
    assert set(expected) == {"sparsity", "quality", "skip", "bits", "index_bits"}
    for key, kinds in expected.items():
        assert rule_takers(key) == sorted(kinds)
    assert rule_takers("bits") == ["inq", "mlq", "quantize", "slq", "weightless"]
    assert rule_takers("nonsense") == []


def test_a_rule_no_stage_takes_names_the_stage_types_that_would() -> None:
    with pytest.raises(
        ConfigError,
        match=r"skip = True is used by no stage of this recipe \(its stages: encode; skip is "
        r"for inq, mlq, prune, quantize, slq, weightless stages\)",
    ):
        Recipe.from_dict(
            {"overrides": [{"pattern": "1", "skip": True}], "stages": [{"type": "encode"}]}
        )


def _minimal(kind: str) -> list[dict[str, object]]:
    """The smallest valid stage list holding a stage of ``kind``."""
    if kind == "encode":
        return [{"type": "encode"}]
    if kind == "prune":
        return [{"type": "prune", "sparsity": 0.5}, {"type": "encode"}]
    if kind == "retrain":
        return [{"type": "prune", "sparsity": 0.5}, {"type": "retrain"}, {"type": "encode"}]
    if kind == "finetune":
        return [{"type": "quantize"}, {"type": "finetune"}, {"type": "encode"}]
    return [{"type": kind}, {"type": "encode"}]
