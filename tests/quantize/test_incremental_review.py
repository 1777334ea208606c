"""Regression tests for defects found in review of the incremental quantizers."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from deepzip.config import INQConfig, SLQConfig
from deepzip.errors import ConfigError, InvalidTensorError
from deepzip.quantize.incremental import (
    attach_frozen,
    cluster_losses,
    get_frozen,
    inq_,
    inq_exponents,
    inq_round,
    slq_,
    ternary_round,
)

pytestmark = pytest.mark.usefixtures("one_thread")


def _row(values: list[float]) -> nn.Sequential:
    layer = nn.Linear(len(values), 1, bias=False)
    with torch.no_grad():
        layer.weight.copy_(torch.tensor([values]))
    return nn.Sequential(layer)


def test_slq_does_not_spend_a_step_on_clusters_left_empty() -> None:
    # eight clusters (k-means on these values): -1.5, -1.3, -0.475, ~0.5, 0.9, 0.95, 1.5, 1.6.
    # Step 0 (2 of 8 levels, lowest loss first) freezes -1.5 and -1.3; retraining then moves
    # the 0.9 and 0.95 weights onto 0.5, so re-clustering leaves those two clusters empty
    # (loss 0). Step 1 must still freeze two clusters that hold weights.
    values = (
        [0.5 + 0.001 * (i % 2) for i in range(10)]
        + [0.9, 0.95]
        + [-0.5 + 0.05 * (i % 2) for i in range(10)]
        + [1.5 + 0.1 * (i % 2) for i in range(10)]
        + [-1.5 + 0.2 * (i % 2) for i in range(10)]
    )
    model = _row(values)
    layer = model[0]
    frozen: list[int] = []

    def retrain(_: nn.Module, step: int) -> None:
        fw = get_frozen(layer)
        if fw is None:
            return
        frozen.append(fw.n_frozen)
        if step == 0:
            with torch.no_grad():
                original = layer.parametrizations["weight"].original  # type: ignore[index,union-attr]
                original[0, 10:12] = 0.5

    config = SLQConfig(bits=3, steps=(0.25, 0.5, 0.75, 1.0), freeze_order="low_loss")
    slq_(model, config, retrain)
    assert frozen[0] == 10  # -1.5 and -1.3: five weights each
    assert frozen[1] > frozen[0]  # step 1 froze weights, not two empty levels


def test_attach_frozen_refuses_a_mask_of_another_shape() -> None:
    layer = nn.Linear(3, 2)
    with pytest.raises(InvalidTensorError, match=r"weight.*\(3,\).*\(2, 3\)"):
        attach_frozen(layer, "weight", torch.tensor([True, False, True]))
    assert get_frozen(layer) is None


@pytest.mark.parametrize("a", [-1.0, math.nan, math.inf])
def test_ternary_round_refuses_a_bad_scale(a: float) -> None:
    with pytest.raises(InvalidTensorError, match="ternary scale"):
        ternary_round(torch.tensor([0.5, -0.3]), a)


def test_ternary_round_with_a_zero_scale_gives_zeros() -> None:
    assert torch.equal(ternary_round(torch.tensor([0.5, -0.3]), 0.0).abs(), torch.zeros(2))


def test_inq_round_refuses_exponents_out_of_order() -> None:
    with pytest.raises(ConfigError, match="n2 <= n1"):
        inq_round(torch.tensor([0.5]), 0, 1)


@pytest.mark.parametrize(("max_abs", "bits"), [(3e38, 2), (1e-30, 8)])
def test_inq_exponents_refuse_levels_float32_cannot_hold(max_abs: float, bits: int) -> None:
    # 2**128 is inf in float32; 2**-163 is 0
    with pytest.raises(InvalidTensorError, match="float32"):
        inq_exponents(max_abs, bits)


def test_inq_refuses_a_layer_whose_levels_overflow_before_changing_the_model() -> None:
    model = nn.Sequential(_row([0.3, -0.2, 0.1])[0], nn.ReLU(), _row([3e38, 1e38, -2e38])[0])
    with pytest.raises(InvalidTensorError, match=r"2\.weight.*float32"):
        inq_(model, INQConfig(bits=2, steps=(1.0,)), lambda m, s: None)
    assert get_frozen(model[0]) is None
    assert get_frozen(model[2]) is None


def test_cluster_losses_validates_its_inputs() -> None:
    values = torch.tensor([1.0, 2.0, 3.0])
    centroids = torch.tensor([1.0, 3.0])
    with pytest.raises(InvalidTensorError, match="labels"):
        cluster_losses(values, torch.tensor([0, 1]), centroids)
    with pytest.raises(InvalidTensorError, match="labels"):
        cluster_losses(values, torch.tensor([0, 1, 2]), centroids)
    with pytest.raises(InvalidTensorError, match="labels"):
        cluster_losses(values, torch.tensor([0.0, 1.0, 1.0]), centroids)
    with pytest.raises(InvalidTensorError, match="centroids"):
        cluster_losses(values, torch.tensor([0, 0, 0]), torch.ones(1, 2))
