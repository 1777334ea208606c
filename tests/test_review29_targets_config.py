"""Review 29: layer selection (targets.py) and the technique configs."""

from __future__ import annotations

import json
import re
import warnings
from collections.abc import Callable
from typing import Any

import pytest
import torch
from torch import nn

from deepzip import (
    ConfigError,
    PruneConfig,
    QuantizeConfig,
    WeightlessConfig,
    prune_,
    quantize_,
    select_targets,
    weightless_,
)
from deepzip.config.techniques import (
    INQConfig,
    LayerOverride,
    MLQConfig,
    RetrainConfig,
    ScheduleConfig,
    SLQConfig,
    TrainConfig,
)


def _lazy(module: Callable[[], nn.Module]) -> nn.Module:
    with warnings.catch_warnings():  # "Lazy modules are a new feature under heavy development"
        warnings.simplefilter("ignore")
        return module()


# --- targets ---------------------------------------------------------------------------------


def test_a_lazy_parameter_that_would_not_be_selected_is_skipped_not_an_error() -> None:
    # a LazyBatchNorm1d's weight is never a target, yet select_targets raised "run a forward
    # pass first" for it; so did a LazyLinear's bias once its weight was excluded
    model = nn.Sequential(
        nn.Linear(3, 4), _lazy(nn.LazyBatchNorm1d), _lazy(lambda: nn.LazyLinear(2))
    )
    sel = select_targets(model, exclude=("2.weight",))
    assert sel.names() == ["0.weight"]
    reasons = {s.name: s.reason for s in sel.skipped}
    assert "uninitialized parameter of a lazy module" in reasons["1.weight"]
    assert "bias/normalization vector" in reasons["2.bias"]
    assert reasons["2.weight"] == "excluded by pattern '2.weight'"
    report = prune_(model, PruneConfig(sparsity=0.5, exclude=("2.weight",)))
    assert [r.name for r in report.layers] == ["0.weight"]


@pytest.mark.parametrize(
    ("include", "name"), [((), "1.weight"), (("1.bias",), "1.bias"), (("1",), "1.weight")]
)
def test_a_lazy_parameter_that_would_be_selected_is_still_an_error(
    include: tuple[str, ...], name: str
) -> None:
    model = nn.Sequential(nn.Linear(3, 4), _lazy(lambda: nn.LazyLinear(2)))
    with pytest.raises(ConfigError, match=rf"^{name} is an uninitialized parameter"):
        select_targets(model, include=include)


@pytest.mark.parametrize("bad", ["", None, b"fc*", 3])
@pytest.mark.parametrize("key", ["include", "exclude"])
def test_select_targets_refuses_a_glob_that_is_not_a_non_empty_string(key: str, bad: Any) -> None:
    # "" matched the root module's name, so include=("",) selected the root's own parameters;
    # None and bytes raised TypeError from fnmatch
    class Root(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.w = nn.Parameter(torch.randn(3, 3))
            self.fc = nn.Linear(3, 3)

    with pytest.raises(ConfigError, match=rf"^{key} globs must be non-empty strings, got"):
        select_targets(Root(), **{key: (bad,)})


def test_a_default_layer_whose_weight_is_a_buffer_is_listed_as_skipped() -> None:
    # it was neither a target nor in the skipped list: the layer stayed dense without a word
    model = nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 2, bias=False))
    weight = model[1].weight.detach().clone()
    del model[1].weight
    model[1].register_buffer("weight", weight)
    sel = select_targets(model)
    assert sel.names() == ["0.weight"]
    reasons = {s.name: s.reason for s in sel.skipped}
    assert reasons["1.weight"] == (
        "Linear.weight: a buffer, not a parameter; only parameters are compressed"
    )
    report = prune_(model, PruneConfig(sparsity=0.5))
    assert "1.weight" in {s.name for s in report.skipped}
    # the globs still apply first
    excluded = select_targets(model, exclude=("1",))
    assert {s.name: s.reason for s in excluded.skipped}["1.weight"] == "excluded by pattern '1'"
    included = select_targets(model, include=("0",))
    assert {s.name: s.reason for s in included.skipped}["1.weight"] == (
        "not matched by any include pattern"
    )


def test_every_parameter_and_buffer_weight_is_listed_once() -> None:
    model = nn.Sequential(nn.Linear(4, 4), nn.BatchNorm1d(4), nn.Linear(4, 2))
    sel = select_targets(model)
    names = sel.names() + [s.name for s in sel.skipped]
    assert sorted(names) == sorted(n for n, _ in model.named_parameters())


# --- configs ---------------------------------------------------------------------------------


@pytest.mark.parametrize("overrides", [({"pattern": "fc1", "skip": True},), None, ["x"]])
def test_global_prune_with_overrides_of_the_wrong_type_is_a_config_error(overrides: Any) -> None:
    # the global-scope check read o.skip before the overrides' type was checked:
    # AttributeError ('dict' object has no attribute 'skip') or TypeError (None not iterable)
    with pytest.raises(ConfigError, match=r"^prune\.overrides must be LayerOverride items"):
        PruneConfig(sparsity=0.5, scope="global", overrides=overrides)


_FROM_DICT: list[tuple[Callable[[Any], object], str]] = [
    (PruneConfig.from_dict, "prune"),
    (ScheduleConfig.from_dict, "schedule"),
    (RetrainConfig.from_dict, "retrain"),
    (TrainConfig.from_dict, "train"),
    (QuantizeConfig.from_dict, "quantize"),
    (SLQConfig.from_dict, "slq"),
    (MLQConfig.from_dict, "mlq"),
    (INQConfig.from_dict, "inq"),
    (WeightlessConfig.from_dict, "weightless"),
]


@pytest.mark.parametrize("bad", [[1], None, "sparsity", 3])
@pytest.mark.parametrize(("from_dict", "where"), _FROM_DICT)
def test_from_dict_of_a_non_table_is_a_config_error(
    from_dict: Callable[[Any], object], where: str, bad: Any
) -> None:
    # dict(data) raised TypeError or ValueError before the table was checked
    with pytest.raises(ConfigError, match=rf"^{where} must be a table, got"):
        from_dict(bad)


_HUGE = 10**400  # JSON reads a number written with 401 digits as this int


@pytest.mark.parametrize(
    ("make", "key"),
    [
        (lambda: PruneConfig(sparsity=_HUGE), "prune.sparsity"),
        (lambda: PruneConfig(quality=_HUGE), "prune.quality"),
        (lambda: LayerOverride("x", quality=_HUGE), "overrides['x'].quality"),
        (lambda: RetrainConfig(lr=_HUGE), "retrain.lr"),
        (lambda: TrainConfig(weight_decay=_HUGE), "train.weight_decay"),
        (lambda: QuantizeConfig(method="ecsq", ecsq_lambda=_HUGE), "quantize.ecsq_lambda"),
        (lambda: WeightlessConfig(max_drop=_HUGE), "weightless.max_drop"),
        (lambda: WeightlessConfig(ratio=_HUGE), "weightless.ratio"),
    ],
)
def test_an_integer_too_large_for_a_float_is_a_config_error(
    make: Callable[[], object], key: str
) -> None:
    # math.isfinite raised OverflowError: int too large to convert to float
    with pytest.raises(ConfigError, match=rf"^{re.escape(key)} must"):
        make()


def test_a_json_recipe_value_too_large_for_a_float_is_a_config_error() -> None:
    data = json.loads('{"lr": 1' + "0" * 400 + "}")
    with pytest.raises(ConfigError, match=r"^retrain\.lr must be a number > 0"):
        RetrainConfig.from_dict(data)


def test_weightless_keeps_the_most_accurate_width_when_none_is_within_budget() -> None:
    # the docstring said max_cell_bits is "used when no smaller one is within budget"; the
    # code keeps the most accurate width tried
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 4))
    quantize_(model, QuantizeConfig(bits=2))
    # the reference, then one result per width tried (t = 3, 4, 5): the middle one is best
    results = iter([1.0, 0.5, 0.7, 0.6])
    config = WeightlessConfig(min_cell_bits=3, max_cell_bits=5, include=("0",))
    report = weightless_(model, config, evaluate=lambda m: next(results))
    (layer,) = report.layers
    assert [t.cell_bits for t in layer.trials] == [3, 4, 5]
    assert layer.cell_bits == 4 != config.max_cell_bits
    assert layer.accuracy == 0.7
    assert layer.within_budget is False
    doc = " ".join((WeightlessConfig.__doc__ or "").split())
    assert "used when no smaller one is within budget" not in doc
    assert "keeps the most accurate one tried" in doc


def test_every_config_round_trips_through_json_with_non_default_values() -> None:
    configs: list[Any] = [
        PruneConfig(
            quality=1.5,
            include=("a*",),
            exclude=("c",),
            overrides=(LayerOverride("a1", sparsity=0.3), LayerOverride("a3", skip=True)),
        ),
        ScheduleConfig(kind="agp", n_steps=7),
        ScheduleConfig(steps=(0.25, 1.0)),
        RetrainConfig(epochs=0, lr=0.5, optimizer="adamw", scale_dropout=False, distill=1),
        TrainConfig(epochs=1, optimizer="adam", schedule="constant", seed=2**32 - 1),
        QuantizeConfig(bits=3, method="ecsq", ecsq_lambda=0.1, seed=2**64 - 1),
        SLQConfig(bits="ternary", steps=(0.3, 1.0), rank="mse", train_codebook=False),
        MLQConfig(bits=2, steps=(1.0,), groups=3, order="size"),
        INQConfig(bits=3, steps=(0.5, 1.0)),
        WeightlessConfig(min_cell_bits=2, max_cell_bits=9, hashes=4, ratio=2.0, lzma=True),
    ]
    for config in configs:
        again = type(config).from_dict(json.loads(json.dumps(config.to_dict())))
        assert again == config
