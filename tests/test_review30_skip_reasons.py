"""Review 30: the reason a layer without surviving weights is skipped is the same in every
method: "all pruned" only when a mask pruned it, "every weight is zero" when it was never
pruned (quantize_ already said so; the incremental methods and weightless_ called both
"all pruned")."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
from torch import nn

import deepzip as dz
from deepzip.config import INQConfig, MLQConfig, QuantizeConfig, SLQConfig, WeightlessConfig
from deepzip.quantize import QuantizeReport
from deepzip.quantize.incremental import inq_, mlq_, slq_
from deepzip.weightless import weightless_

PRUNED = "no surviving weights (all pruned); left as zeros"
ZERO = "no surviving weights (every weight is zero); left as zeros"


def _net() -> nn.Sequential:
    """Layer 0 pruned entirely by its mask, layer 2 never pruned but all zero, layer 4 normal."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 3))
    with torch.no_grad():
        net[2].weight.zero_()
    dz.prune_(net, dz.PruneConfig(sparsity=0.5, include=("0",)))
    net[0].parametrizations.weight[0].mask.zero_()
    return net


def _no_retrain(model: nn.Module, step: object) -> None:
    del model, step


@pytest.mark.parametrize(
    ("method", "config"),
    [
        (slq_, SLQConfig(bits=2)),
        (mlq_, MLQConfig(bits=2, groups=1)),
        (inq_, INQConfig(bits=3)),
    ],
)
def test_incremental_methods_tell_pruned_from_zero_layers(
    method: Callable[..., tuple[QuantizeReport, object]], config: object
) -> None:
    report, _ = method(_net(), config, _no_retrain)
    reasons = {s.name: s.reason for s in report.skipped}
    assert reasons["0.weight"] == PRUNED
    assert reasons["2.weight"] == ZERO
    assert [layer.name for layer in report.layers] == ["4.weight"]


def test_weightless_tells_pruned_from_zero_layers() -> None:
    report = weightless_(_net(), WeightlessConfig(cell_bits=4), quantize=QuantizeConfig(bits=2))
    reasons = {s.name: s.reason for s in report.skipped}
    assert reasons["0.weight"] == PRUNED
    assert reasons["2.weight"] == ZERO
    assert [layer.name for layer in report.layers] == ["4.weight"]
