"""Regression tests for defects found in review of the pruning stage."""

from __future__ import annotations

import copy
import re

import pytest
import torch
from torch import nn
from torch.nn.utils import parametrize

from deepzip import ConfigError, InvalidTensorError, PruneConfig, prune_, sensitivity_analysis
from deepzip.prune import (
    SensitivityResult,
    WeightMask,
    attach_mask,
    get_mask,
    mask_dict,
    quality_mask,
    scale_dropout_,
)


def test_attach_mask_refuses_a_mask_of_another_shape() -> None:
    lin = nn.Linear(4, 3)
    row = torch.tensor([True, False, True, True])  # broadcastable to (3, 4): was taken
    with pytest.raises(InvalidTensorError, match=r"^fc\.weight: mask shape \(4,\) .* \(3, 4\)"):
        attach_mask(lin, "weight", row, name="fc.weight")
    assert get_mask(lin) is None
    attach_mask(lin, "weight", torch.ones(3, 4, dtype=torch.bool))
    with pytest.raises(InvalidTensorError, match=r"mask shape \(4,\)"):
        attach_mask(lin, "weight", row)
    m = get_mask(lin)
    assert m is not None
    assert bool(m.mask.all())


def test_quality_mask_checks_current_shape_and_std() -> None:
    w = torch.randn(3, 4)
    with pytest.raises(InvalidTensorError, match=r"^fc\.weight: mask shape \(4,\)"):
        quality_mask(w, 0.5, 1.0, torch.tensor([True, False, True, True]), name="fc.weight")
    for bad in (float("nan"), float("inf"), -1.0):
        with pytest.raises(ConfigError, match=r"^fc\.weight: reference std"):
            quality_mask(w, 0.5, bad, name="fc.weight")


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
def test_quality_mask_removes_weights_just_under_the_threshold(dtype: torch.dtype) -> None:
    threshold = 0.25 + 2.0**-30  # rounds down to 0.25 in each of these dtypes
    w = torch.tensor([0.25, 0.5], dtype=dtype)
    assert float(w[0]) < threshold
    assert quality_mask(w, 1.0, threshold).tolist() == [False, True]
    assert quality_mask(-w, 1.0, threshold).tolist() == [False, True]
    assert quality_mask(w, 1.0, 0.25).tolist() == [True, True]  # |w| == threshold is kept


def test_weight_mask_buffers_share_the_mask_device() -> None:
    m = WeightMask(torch.ones(3, dtype=torch.bool, device="meta"), 0.5)
    assert m.mask.device.type == "meta"
    assert m.reference_std.device.type == "meta"
    assert m.reference_std.dtype == torch.float64


class _RowNormalize(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x / x.norm(dim=1, keepdim=True)


def test_a_layer_under_a_foreign_parametrization_is_skipped_or_refused() -> None:
    # prune_ zeroed the stored tensor under the user's parametrization (changing the kept
    # weights), the sensitivity sweep wrote into the computed weight (a flat curve), and
    # strip_ then removed the user's parametrization
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 4))
    parametrize.register_parametrization(model[0], "weight", _RowNormalize())
    before = {k: v.clone() for k, v in model.state_dict().items()}
    reason = r"^Linear\.weight: computed by _RowNormalize from original, a parametrization"
    with pytest.raises(ConfigError, match=r"^weight has a parametrization"):
        attach_mask(model[0], "weight", torch.ones(8, 8, dtype=torch.bool))
    calls: list[nn.Module] = []

    def evaluate(m: nn.Module) -> float:
        calls.append(m)
        return 0.0

    result = sensitivity_analysis(model, evaluate, sparsities=(0.0, 0.5))
    assert list(result.curves) == ["2.weight"]
    assert re.match(reason, {s.name: s.reason for s in result.skipped}["0.weight"])
    assert result.to_dict()["skipped"][0]["name"] == "0.weight"  # type: ignore[index]
    assert mask_dict(model) == {}
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k
    for scope in ("layer", "global"):
        m = copy.deepcopy(model)
        report = prune_(m, PruneConfig(sparsity=0.5, scope=scope))  # type: ignore[arg-type]
        assert [r.name for r in report.layers] == ["2.weight"]
        assert re.match(reason, {s.name: s.reason for s in report.skipped}["0.weight"])
        assert torch.equal(
            m[0].parametrizations.weight.original, before["0.parametrizations.weight.original"]
        )
        assert isinstance(m[0].parametrizations.weight[0], _RowNormalize)


class _RootWeight(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(4, 4))
        self.drop = nn.Dropout(0.5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop(x @ self.weight)


def test_scale_dropout_ties_a_dropout_to_a_root_parameter() -> None:
    model = _RootWeight()
    assert scale_dropout_(model, {"weight": 0.25}) == {"drop": pytest.approx(0.25)}
    assert model.drop.p == pytest.approx(0.25)


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -0.01])
def test_suggest_rejects_a_bad_budget(bad: float) -> None:
    result = SensitivityResult(0.9, (0.0, 0.5), {"a": (0.9, 0.9)}, {"a": 4})
    assert result.suggest(0.0) == {"a": 0.5}
    with pytest.raises(ConfigError, match="max_drop must be a finite number >= 0"):
        result.suggest(bad)


@pytest.mark.parametrize(
    "make_opt",
    [
        lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9, weight_decay=1e-3),
        lambda p: torch.optim.AdamW(p, lr=1e-2, weight_decay=0.05),
    ],
    ids=["sgd-momentum-wd", "adamw"],
)
def test_stored_original_stays_zero_through_retraining(make_opt: object) -> None:
    """The effective weight is zero by construction; the stored tensor must stay zero too
    (no gradient, decay or momentum reaches the pruned positions)."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(10, 16), nn.ReLU(), nn.Linear(16, 3))
    prune_(model, PruneConfig(sparsity=0.7))
    opt = make_opt(model.parameters())  # type: ignore[operator]
    x, y = torch.randn(32, 10), torch.randint(0, 3, (32,))
    for _ in range(20):
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    for idx in (0, 2):
        m = get_mask(model[idx])
        assert m is not None
        original = model[idx].parametrizations.weight.original
        assert torch.count_nonzero(original[~m.mask]) == 0
        assert torch.count_nonzero(original[m.mask]) == int(m.mask.sum())


def test_a_drop_of_exactly_the_budget_is_within_it() -> None:
    # 5006/10000 - 0.001 rounds above 4996/10000: the layer's 0.5 was not suggested
    result = SensitivityResult(0.5006, (0.0, 0.5), {"a": (0.5006, 0.4996)}, {"a": 4})
    assert result.suggest(0.001) == {"a": 0.5}
    assert result.suggest(0.0009) == {"a": 0.0}
