from __future__ import annotations

import dataclasses
import itertools
import math
from pathlib import Path
from typing import Any

import pytest

from deepzip.config import (
    LayerOverride,
    PruneConfig,
    PruneJob,
    QuantizeConfig,
    RetrainConfig,
    ScheduleConfig,
    TrainConfig,
    load_prune_job,
    save_toml,
)
from deepzip.errors import ConfigError


@pytest.mark.parametrize("bad", [-0.1, 1.0, 1.5, float("nan"), "0.5", True])
def test_sparsity_outside_range_is_rejected(bad: object) -> None:
    with pytest.raises(ConfigError, match="sparsity"):
        PruneConfig(sparsity=bad)  # type: ignore[arg-type]


def test_exactly_one_threshold() -> None:
    with pytest.raises(ConfigError, match="exactly one of sparsity and quality"):
        PruneConfig()
    with pytest.raises(ConfigError, match="exactly one"):
        PruneConfig(sparsity=0.5, quality=1.0)
    with pytest.raises(ConfigError, match="global"):
        PruneConfig(quality=1.0, scope="global")


def test_override_validation() -> None:
    with pytest.raises(ConfigError, match=r"overrides\['fc1'\]\.sparsity must be in \[0, 1\)"):
        LayerOverride("fc1", sparsity=1.2)
    with pytest.raises(ConfigError, match="set sparsity, quality or skip"):
        LayerOverride("fc1")


def test_schedule_fractions() -> None:
    assert ScheduleConfig(kind="oneshot").fractions() == (1.0,)
    agp = ScheduleConfig(kind="agp", n_steps=4).fractions()
    assert agp[-1] == 1.0
    assert all(b > a for a, b in itertools.pairwise(agp))
    assert math.isclose(agp[0], 1 - 0.75**3)
    with pytest.raises(ConfigError, match=r"end at 1.0"):
        ScheduleConfig(steps=(0.5, 0.9))
    with pytest.raises(ConfigError, match="increase strictly"):
        ScheduleConfig(steps=(0.5, 0.5, 1.0))


@pytest.mark.parametrize(
    ("table", "message"),
    [
        ({"kind": "agp", "steps": [0.5, 1.0]}, r'schedule.steps is only used with kind = "steps"'),
        ({"kind": "oneshot", "steps": [7]}, r"got kind = 'oneshot' and steps = \[7\]"),
        ({"kind": "oneshot", "n_steps": 3}, r'schedule.n_steps is only used with kind = "agp"'),
        ({"steps": [0.5, 1.0], "n_steps": 3}, r"got kind = 'steps' and n_steps = 3"),
    ],
)
def test_schedule_keys_the_kind_ignores_are_rejected(table: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        ScheduleConfig.from_dict(table)


def test_schedule_saved_by_earlier_versions_still_reads() -> None:
    # earlier to_dict wrote every key whatever the kind; run directories keep such recipes
    steps = {"kind": "steps", "steps": [0.5, 1.0], "n_steps": 5}
    agp = {"kind": "agp", "steps": [0.5, 0.75, 0.875, 1.0], "n_steps": 3}
    assert ScheduleConfig.from_dict(steps) == ScheduleConfig(steps=(0.5, 1.0))
    assert ScheduleConfig.from_dict(agp) == ScheduleConfig(kind="agp", n_steps=3)


@pytest.mark.parametrize("where", ["schedule", "slq", "mlq", "inq"])
def test_fractions_given_as_a_list_ask_for_a_tuple(where: str) -> None:
    # "must be a non-empty list of fractions, got [0.5, 1.0]": the message contradicted itself
    from deepzip.config import INQConfig, MLQConfig, SLQConfig

    cls: dict[str, Any] = {
        "schedule": ScheduleConfig,
        "slq": SLQConfig,
        "mlq": MLQConfig,
        "inq": INQConfig,
    }
    with pytest.raises(ConfigError) as info:
        cls[where](steps=[0.5, 1.0])
    assert str(info.value) == f"{where}.steps must be a tuple of fractions, got [0.5, 1.0]"
    with pytest.raises(ConfigError, match=rf"^{where}\.steps must not be empty$"):
        cls[where](steps=())
    table = {"kind": "steps", "steps": []} if where == "schedule" else {"steps": []}
    with pytest.raises(ConfigError, match=rf"^{where}\.steps must not be empty$"):
        cls[where].from_dict(table)
    assert cls[where](steps=(0.5, 1.0)).steps == (0.5, 1.0)


def test_schedule_steps_are_checked_whatever_the_kind() -> None:
    with pytest.raises(ConfigError, match=r"schedule.steps values must be in \(0, 1\], got 5"):
        ScheduleConfig(kind="agp", steps=(5.0,))


@pytest.mark.parametrize(
    ("schedule", "table"),
    [
        (ScheduleConfig(), {"kind": "steps", "steps": [0.5, 0.75, 0.875, 1.0]}),
        (ScheduleConfig(kind="agp", n_steps=3), {"kind": "agp", "n_steps": 3}),
        (ScheduleConfig(kind="oneshot"), {"kind": "oneshot"}),
    ],
)
def test_schedule_dict_holds_only_the_keys_of_its_kind(
    schedule: ScheduleConfig, table: dict[str, Any]
) -> None:
    assert schedule.to_dict() == table
    assert ScheduleConfig.from_dict(schedule.to_dict()) == schedule


def test_an_override_without_a_pattern_names_file_and_key(tmp_path: Path) -> None:
    path = tmp_path / "r.toml"
    path.write_text("[prune]\nsparsity = 0.5\noverrides = [{ sparsity = 0.3 }]\n")
    with pytest.raises(
        ConfigError,
        match=r"r\.toml: prune\.overrides\[0\]: missing required key 'pattern' "
        r"\(got \{'sparsity': 0\.3\}\)",
    ):
        load_prune_job(path)


def test_retrain_and_train_validation() -> None:
    assert RetrainConfig(lr=0.1, lr_scale=0.1).retrain_lr == pytest.approx(0.01)
    with pytest.raises(ConfigError, match=r"retrain\.lr must be a number > 0, got 0"):
        RetrainConfig(lr=0)
    with pytest.raises(ConfigError, match=r"retrain.optimizer"):
        RetrainConfig(optimizer="rmsprop")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match=r"train.epochs"):
        TrainConfig(epochs=-1)


def test_toml_round_trip(tmp_path: Path) -> None:
    job = PruneJob(
        PruneConfig(
            sparsity=0.9,
            exclude=("head",),
            overrides=(LayerOverride("conv*", sparsity=0.5), LayerOverride("fc3", skip=True)),
        ),
        ScheduleConfig(kind="agp", n_steps=3),
        RetrainConfig(epochs=1, optimizer="adamw"),
    )
    path = tmp_path / "recipe.toml"
    save_toml(job.to_dict(), path)
    assert load_prune_job(path) == job


def test_unknown_key_and_section_are_named(tmp_path: Path) -> None:
    path = tmp_path / "r.toml"
    path.write_text("[prune]\nsparsity = 0.5\nsparsty = 0.9\n")
    with pytest.raises(ConfigError, match="unknown key 'sparsty'"):
        load_prune_job(path)
    path.write_text("[prune]\nsparsity = 0.5\n[quantize]\nbits = 4\n")
    with pytest.raises(ConfigError, match="unknown section 'quantize'"):
        load_prune_job(path)
    path.write_text("[prune]\nsparsity = 1.5\n")
    with pytest.raises(
        ConfigError, match=r"r\.toml: prune\.sparsity must be in \[0, 1\), got 1\.5"
    ):
        load_prune_job(path)
    path.write_text("[prune\n")
    with pytest.raises(ConfigError, match="invalid TOML"):
        load_prune_job(path)


def test_builtin_recipes_load_and_name_unknown() -> None:
    from deepzip.config import builtin_recipe, builtin_recipe_names

    names = builtin_recipe_names()
    assert names == ["lenet-300-100", "lenet-300-100-full", "lenet-5", "lenet-5-full"]
    for name in names:
        job = builtin_recipe(name)
        assert job.train is not None
        assert job.schedule.fractions()[-1] == 1.0
    with pytest.raises(ConfigError, match="no built-in recipe 'vgg'"):
        builtin_recipe("vgg")


def test_distillation_settings_validated() -> None:
    assert RetrainConfig(distill=0.5).distill == 0.5
    with pytest.raises(ConfigError, match=r"retrain\.distill must be in \[0, 1\]"):
        RetrainConfig(distill=1.5)
    with pytest.raises(ConfigError, match=r"retrain\.temperature must be a number > 0"):
        RetrainConfig(temperature=0.0)


def test_unreadable_recipe_files_are_config_errors(tmp_path: Path) -> None:
    from deepzip.config import load_recipe, load_toml

    latin1 = tmp_path / "latin1.toml"
    latin1.write_bytes(b'name = "caf\xe9"\n')
    for load in (load_toml, load_recipe, load_prune_job):
        with pytest.raises(ConfigError, match="not UTF-8") as info:
            load(latin1)
        assert str(info.value).count(str(latin1)) == 1  # the file, named once
        with pytest.raises(ConfigError, match="cannot read") as info:
            load(tmp_path)  # a directory
        assert str(tmp_path) in str(info.value)
    with pytest.raises(ConfigError, match="recipe file not found"):
        load_toml(tmp_path / "missing.toml")


def test_override_skip_must_be_a_bool_and_alone() -> None:
    from deepzip.config import BitsOverride, CellBitsOverride

    with pytest.raises(ConfigError, match=r"overrides\['fc1'\]\.skip must be true or false"):
        LayerOverride("fc1", skip="no")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match=r"overrides\['fc1'\]\.skip must be true or false"):
        BitsOverride("fc1", skip="false")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match=r"overrides\['fc1'\]: skip = true .* set nothing else"):
        LayerOverride("fc1", sparsity=0.9, skip=True)
    with pytest.raises(ConfigError, match=r"overrides\['fc1'\]: skip = true .* set nothing else"):
        LayerOverride("fc1", quality=1.0, skip=True)
    with pytest.raises(ConfigError, match=r"overrides\['fc1'\]: skip = true .* set nothing else"):
        BitsOverride("fc1", bits=4, skip=True)
    with pytest.raises(ConfigError, match=r"overrides\['fc1'\]: skip = true .* set nothing else"):
        CellBitsOverride("fc1", cell_bits=6, skip=True)
    assert LayerOverride("fc1", skip=True).skip
    assert BitsOverride("fc1", skip=True).skip
    # from TOML as well
    with pytest.raises(ConfigError, match=r"overrides\['fc1'\]\.skip must be true or false"):
        PruneConfig.from_dict({"sparsity": 0.5, "overrides": [{"pattern": "fc1", "skip": "no"}]})


def test_every_seed_is_bounded() -> None:
    from deepzip.config import MLQConfig, QuantizeConfig, Recipe, SLQConfig, WeightlessConfig

    cases: list[tuple[Any, str, int]] = [
        (TrainConfig, "train.seed", 2**32),
        (QuantizeConfig, "quantize.seed", 2**64),
        (SLQConfig, "slq.seed", 2**64),
        (MLQConfig, "mlq.seed", 2**64),
        (WeightlessConfig, "weightless.seed", 2**64),
    ]
    for cls, key, limit in cases:
        assert cls(seed=limit - 1).seed == limit - 1
        for bad in (limit, 10**20, -1, 1.5, True):
            with pytest.raises(ConfigError, match=rf"{key} must be an integer in \[0, "):
                cls(seed=bad)
    with pytest.raises(ConfigError, match=r"seed must be an integer in \[0, 2\*\*31\), got"):
        Recipe.from_dict({"seed": 2**31, "stages": [{"type": "encode"}]})
    with pytest.raises(ConfigError, match=r"stage 1 \(quantize\): quantize.seed must be"):
        Recipe.from_dict({"stages": [{"type": "quantize", "seed": 10**20}, {"type": "encode"}]})


def test_the_largest_quantize_seed_runs() -> None:
    import torch
    from torch import nn

    from deepzip.config import QuantizeConfig
    from deepzip.quantize import quantize_

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(20, 10))
    report = quantize_(model, QuantizeConfig(bits=2, init="forgy", seed=2**64 - 1))
    assert [layer.name for layer in report.layers] == ["0.weight"]


_PEELING = {2: 2.0, 3: 1.222, 4: 1.295, 5: 1.425, 6: 1.57, 7: 1.719, 8: 1.87}


def test_weightless_ratio_must_exceed_the_peeling_threshold() -> None:
    import re

    from deepzip.config import Recipe, WeightlessConfig

    default = WeightlessConfig()
    assert (default.hashes, default.ratio) == (3, 1.23)  # existing recipes are unchanged
    assert (default.to_dict()["hashes"], default.to_dict()["ratio"]) == (3, 1.23)
    for hashes, minimum in _PEELING.items():
        with pytest.raises(
            ConfigError,
            match=rf"weightless\.ratio = {re.escape(repr(minimum))} is too low for hashes = "
            rf"{hashes}: .* unless the ratio exceeds {re.escape(repr(minimum))}",
        ):
            WeightlessConfig(hashes=hashes, ratio=minimum)
        assert WeightlessConfig(hashes=hashes, ratio=minimum + 0.01).hashes == hashes
    with pytest.raises(ConfigError, match=r"ratio = 1\.23 is too low for hashes = 4: .* 1\.295"):
        WeightlessConfig(hashes=4, ratio=1.23)
    with pytest.raises(ConfigError, match=r"weightless\.hashes must be an integer from 2 to 8"):
        WeightlessConfig(hashes=1, ratio=16.0)
    with pytest.raises(ConfigError, match=r"stage 1 \(weightless\): .*too low for hashes = 2"):
        Recipe.from_dict(
            {"stages": [{"type": "weightless", "hashes": 2, "ratio": 1.9}, {"type": "encode"}]}
        )


# Each k's default: just above its threshold (benchmarks/bloomier_peeling.py measures them).
_DEFAULT_RATIO = {2: 2.5, 3: 1.23, 4: 1.32, 5: 1.45, 6: 1.62, 7: 1.77, 8: 1.93}


def test_weightless_ratio_defaults_to_each_hash_counts_own() -> None:
    from deepzip.config import (
        BLOOMIER_RATIO,
        PEELING_THRESHOLD,
        Recipe,
        WeightlessConfig,
        WeightlessStage,
    )

    assert PEELING_THRESHOLD == _PEELING
    for hashes, ratio in _DEFAULT_RATIO.items():
        assert BLOOMIER_RATIO[hashes] == ratio
        config = WeightlessConfig(hashes=hashes)
        assert config.ratio == ratio  # filled in: the config and its TOML hold the number
        assert config.to_dict()["ratio"] == ratio
        assert WeightlessConfig.from_dict(config.to_dict()) == config
        assert WeightlessConfig(hashes=hashes, ratio=ratio + 0.5).ratio == ratio + 0.5
    # the default is filled in: replacing the hash count alone keeps the old count's ratio
    with pytest.raises(ConfigError, match=r"ratio = 1\.23 is too low for hashes = 4"):
        dataclasses.replace(WeightlessConfig(), hashes=4)
    assert dataclasses.replace(WeightlessConfig(), hashes=4, ratio=None).ratio == 1.32
    # a recipe that names only the hash count gets that count's default
    recipe = Recipe.from_dict({"stages": [{"type": "weightless", "hashes": 5}, {"type": "encode"}]})
    stage = recipe.stages[0].config
    assert isinstance(stage, WeightlessStage)
    assert stage.weightless.ratio == 1.45


@pytest.mark.parametrize("hashes", sorted(_PEELING))
def test_the_peeling_thresholds_match_the_filter_builder(hashes: int) -> None:
    import numpy as np

    from deepzip.coding.bloomier import build_filter
    from deepzip.errors import BloomierBuildError

    rng = np.random.default_rng(hashes)
    keys = rng.choice(10**6, 20_000, replace=False)
    values = rng.integers(0, 4, keys.size)

    def build(ratio: float | None) -> int:
        f = build_filter(
            keys, values, n_positions=10**6, num_values=4, cell_bits=3, hashes=hashes,
            ratio=ratio,
        )  # fmt: skip
        return f.attempts

    assert build(_PEELING[hashes] * 1.05) <= 16
    assert build(None) <= 16  # the default ratio: _DEFAULT_RATIO[hashes]
    with pytest.raises(BloomierBuildError):
        build(_PEELING[hashes] * 0.97)


def test_quantize_lambda_needs_the_ecsq_method() -> None:
    with pytest.raises(ConfigError, match=r"ecsq_lambda = 0\.5 is only used with method 'ecsq'"):
        QuantizeConfig(bits=4, method="kmeans", ecsq_lambda=0.5)
    assert QuantizeConfig(bits=4, method="ecsq", ecsq_lambda=0.5).ecsq_lambda == 0.5


def test_the_cosine_schedule_is_documented_as_it_runs() -> None:
    # the docstrings said "annealed to zero": the last epoch trains above zero, and with one
    # epoch "cosine" is "constant"
    import torch

    from deepzip.pipeline.training import _scheduler

    for epochs in (1, 2, 5):
        optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
        scheduler = _scheduler(optimizer, "cosine", epochs)
        assert scheduler is not None
        seen = []
        for _ in range(epochs):
            seen.append(optimizer.param_groups[0]["lr"])
            optimizer.step()
            scheduler.step()
        expected = [(1 + math.cos(math.pi * e / epochs)) / 2 for e in range(epochs)]
        assert seen == pytest.approx(expected)
        assert seen[0] == 1.0
        assert seen[-1] > 0
    for cls, formula in ((RetrainConfig, "(1 + cos(pi * e / E)) / 2"),
                         (TrainConfig, "(1 + cos(pi * e / epochs)) / 2")):  # fmt: skip
        doc = " ".join((cls.__doc__ or "").split())
        assert "to zero" not in doc
        assert formula in doc
        assert 'the same as ``"constant"``' in doc


def test_globs_and_sparsities_given_as_a_list_ask_for_a_tuple() -> None:
    # "must be a list of non-empty glob strings, got ['fc1']": the message contradicted itself
    from deepzip.config import PruneConfig, SensitivityStage

    with pytest.raises(ConfigError) as info:
        PruneConfig(sparsity=0.5, include=["fc1"])  # type: ignore[arg-type]
    assert "must be a tuple of non-empty glob strings (a list in TOML), got ['fc1']" in str(
        info.value
    )
    with pytest.raises(ConfigError) as info:
        SensitivityStage(sparsities=[0.5])  # type: ignore[arg-type]
    assert str(info.value) == "sparsities must be a non-empty tuple (a list in TOML), got [0.5]"
