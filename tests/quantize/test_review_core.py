"""Regression tests for defects found in review of the trained-quantization core."""

from __future__ import annotations

import pytest
import torch
from laplace_weights import laplace as _laplace
from torch import nn

from deepzip import PruneConfig, prune_
from deepzip.config import QuantizeConfig
from deepzip.errors import ConfigError, InvalidTensorError
from deepzip.prune import get_mask
from deepzip.quantize import assign_nearest, kmeans_1d, optimal_kmeans_1d, quantize_
from deepzip.quantize.incremental.parametrization import attach_frozen
from deepzip.quantize.scalar import ecsq_quantize, step_quantize, uniform_quantize
from deepzip.quantize.shared import SharedTensor, SharedWeight, attach_shared, get_shared


def test_ecsq_at_zero_lambda_keeps_a_weight_of_zero_importance_in_its_cluster() -> None:
    # the middle value has zero importance: it costs the same in every cluster at λ = 0, and
    # must stay in the cluster the uniform bins gave it rather than fall into cluster 0
    v = torch.tensor([0.0, 0.1, 0.5, 0.9, 1.0])
    w = torch.tensor([1.0, 1.0, 0.0, 1.0, 1.0])
    u = uniform_quantize(v, 4, weights=w)
    e = ecsq_quantize(v, 4, 0.0, weights=w)
    assert u.labels.tolist() == [0, 0, 1, 2, 2]
    assert torch.equal(e.labels, u.labels)
    assert torch.equal(e.centroids, u.centroids)


@pytest.mark.parametrize("method", ["uniform", "ecsq", "step"])
def test_scalar_quantizers_merge_float64_levels_float32_cannot_tell_apart(method: str) -> None:
    # two levels in float64 (two bins, two grid points), a single one in float32: the
    # codebook used to hold 0.5 twice
    v = torch.tensor([0.5 - 1e-12, 0.5 + 1e-12, 0.5 - 1e-12], dtype=torch.float64)
    if method == "uniform":
        r = uniform_quantize(v, 2)
    elif method == "ecsq":
        r = ecsq_quantize(v, 2, 0.0)
    else:
        r = step_quantize(v, 1e-12)
    assert r.centroids.tolist() == [0.5]  # distinct, as KMeansResult says
    assert r.k == 1
    assert torch.equal(r.labels, assign_nearest(v, r.centroids))
    assert any("closer than float32 resolution" in note for note in r.notes)


def test_ecsq_max_iter_is_validated_and_a_run_that_did_not_settle_is_noted() -> None:
    v = _laplace(5000, 0)
    for bad in (0, True, 2.5):
        with pytest.raises(ConfigError, match="max_iter must be an integer >= 1"):
            ecsq_quantize(v, 64, 0.2, max_iter=bad)  # type: ignore[arg-type]
    short = ecsq_quantize(v, 64, 0.2, max_iter=1)
    assert not short.converged
    assert "ECSQ stopped at max_iter=1 before it settled" in short.notes
    assert not any("max_iter" in note for note in ecsq_quantize(v, 64, 0.2).notes)


@pytest.mark.parametrize(
    ("values", "levels"),
    [
        (torch.linspace(-1.0, 1.0, 1000), 256),
        (torch.linspace(-1.0, 1.0, 1000), 2),
        (torch.tensor([0.0, 1.0, 2.0]), 1),
        (torch.tensor([-3.0, 0.25, 1.0]), 1),
        (torch.tensor([0.3, 0.7, 1.3, 2.9]), 3),
    ],
)
def test_the_step_an_error_advises_fits(values: torch.Tensor, levels: int) -> None:
    # the advice used to be (hi - lo) / (levels - 1) rounded to 3 digits: 0.00784 for the
    # first case, itself refused (257 levels), and a ZeroDivisionError for one level
    with pytest.raises(ConfigError, match=r"use a step of at least") as info:
        step_quantize(values, 1e-4, max_levels=levels)
    advised = float(str(info.value).rsplit(" ", 1)[-1])
    assert step_quantize(values, advised, max_levels=levels).k <= levels


def test_step_max_levels_is_validated_by_name() -> None:
    for bad in (0, 257, True):
        with pytest.raises(ConfigError, match="max_levels must be an integer from 1 to 256"):
            step_quantize(torch.tensor([0.0, 1.0]), 0.5, max_levels=bad)


def test_a_seed_outside_torchs_range_is_a_config_error() -> None:
    v = _laplace(100, 0)
    for seed in (2**64, -(2**63) - 1):
        with pytest.raises(ConfigError, match="seed must be an integer from -2\\*\\*63"):
            kmeans_1d(v, 4, init="forgy", seed=seed)
    assert kmeans_1d(v, 4, init="kmeans++", seed=2**64 - 1).k == 4


def test_float64_values_beyond_the_float32_range_are_refused() -> None:
    # they used to give infinite centroids and an infinite or huge SSE, silently
    v = torch.tensor([1e39, -1e39, 0.0, 5.0], dtype=torch.float64)
    calls = [
        lambda: kmeans_1d(v, 2),
        lambda: optimal_kmeans_1d(v, 2),
        lambda: uniform_quantize(v, 4),
        lambda: ecsq_quantize(v, 4, 0.1),
        lambda: step_quantize(v, 1e38),
    ]
    for call in calls:
        with pytest.raises(InvalidTensorError, match=r"2 value\(s\) beyond the float32 range"):
            call()
    with pytest.raises(InvalidTensorError, match="init_centroids: 1 value"):
        kmeans_1d(v[2:], 2, init_centroids=torch.tensor([0.0, 1e40], dtype=torch.float64))


def test_quantize_keeps_surviving_zeros_of_an_interrupted_incremental_layer() -> None:
    torch.manual_seed(0)
    lin = nn.Linear(8, 4)
    mask = torch.ones(4, 8, dtype=torch.bool)
    mask[0, :4] = False
    frozen = attach_frozen(lin, "weight", mask)
    frozen.freeze_(torch.tensor([10, 11, 12]), torch.tensor([0.0, 0.0, 0.25]))  # two at zero
    report = quantize_(nn.Sequential(lin), QuantizeConfig(bits=2))
    assert report.layers[0].kept == 28  # was 26: the weights frozen at zero counted as pruned
    shared = get_shared(lin)
    assert shared is not None
    assert torch.equal(shared.mask, mask)


def _pruned() -> nn.Linear:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(8, 4))
    prune_(net, PruneConfig(sparsity=0.5))
    return net[0]


@pytest.mark.parametrize(
    ("codebook", "indices", "mask", "message"),
    [
        (torch.tensor([-1.0, 1.0]), torch.zeros(3, 3), torch.ones(3, 3), r"Linear\.weight has"),
        (torch.tensor([-1.0, 1.0]), torch.full((4, 8), 5), torch.ones(4, 8), r"\[0, 2\).*got 5"),
        (torch.tensor([-1.0, 1.0]), torch.full((4, 8), 300), torch.ones(4, 8), "got 300"),
        (torch.ones(2, 2), torch.zeros(4, 8), torch.ones(4, 8), "1-D floating point"),
        (torch.tensor([0.0, float("inf")]), torch.zeros(4, 8), torch.ones(4, 8), "entry 1 is inf"),
        (torch.tensor([-1.0, 1.0]), torch.zeros(4, 8), torch.ones(4, 9), "mask of shape"),
    ],
)
def test_attach_shared_refuses_bad_parts_and_leaves_the_module_unchanged(
    codebook: torch.Tensor, indices: torch.Tensor, mask: torch.Tensor, message: str
) -> None:
    # these used to raise RuntimeError/IndexError (or wrap 300 to 44 in uint8) after the
    # pruning mask had been folded away and a broken SharedWeight registered
    layer = _pruned()
    weight = layer.weight.detach().clone()
    shared = SharedTensor(codebook, indices.to(torch.int64), mask.to(torch.bool))
    with pytest.raises(InvalidTensorError, match=message):
        attach_shared(layer, "weight", shared)
    assert get_mask(layer) is not None
    assert get_shared(layer) is None
    assert torch.equal(layer.weight, weight)
    if indices.shape == mask.shape == (4, 8) and codebook.dim() == 1:
        with pytest.raises(InvalidTensorError):
            SharedWeight(codebook, indices.to(torch.int64), mask.to(torch.bool))


def test_mean_rule_follows_a_mask_changed_in_place() -> None:
    # the plan was rebuilt but the "mean" divisor (counts) was not: the gradients came out
    # divided by the old cluster sizes
    gen = torch.Generator().manual_seed(1)
    indices = torch.randint(0, 4, (6, 7), generator=gen, dtype=torch.uint8)
    mask = torch.ones(6, 7, dtype=torch.bool)
    sw = SharedWeight(torch.linspace(-1, 1, 4), indices, mask, grad="mean")
    with torch.no_grad():  # what load_state_dict of a new mask does: copy into the buffer
        sw.mask[:3].fill_(False)
    sw(torch.zeros(6, 7)).backward(torch.ones(6, 7))
    assert sw.codebook.grad is not None
    assert sw.codebook.grad.tolist() == [1.0, 1.0, 1.0, 1.0]  # each cluster's mean of ones
    kept = sw.indices[sw.mask].long()
    assert sw.counts.tolist() == torch.bincount(kept, minlength=4).tolist()
