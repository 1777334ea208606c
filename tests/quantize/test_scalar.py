from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from laplace_weights import laplace as _laplace

from deepzip.errors import ConfigError
from deepzip.quantize.scalar import ecsq_quantize, step_quantize, uniform_quantize


def _entropy(labels: torch.Tensor) -> float:
    p = torch.bincount(labels).double() / labels.numel()
    p = p[p > 0]
    return float(-(p * torch.log2(p)).sum())


def test_uniform_bins_and_weighted_means() -> None:
    v = torch.tensor([0.0, 0.1, 0.2, 0.9, 1.0])
    w = torch.tensor([1.0, 1.0, 2.0, 1.0, 3.0])
    r = uniform_quantize(v, 2, weights=w)
    assert r.labels.tolist() == [0, 0, 0, 1, 1]
    torch.testing.assert_close(r.centroids, torch.tensor([0.5 / 4, 3.9 / 4]))


def test_uniform_drops_empty_bins() -> None:
    r = uniform_quantize(torch.tensor([0.0, 0.01, 1.0]), 8)
    assert r.k == 2
    assert r.notes == ("6 of 8 levels unused",)


@settings(max_examples=40, deadline=None)
@given(
    n=st.integers(2, 3000),
    bits=st.integers(1, 8),
    seed=st.integers(0, 1000),
    weighted=st.booleans(),
)
def test_ecsq_with_zero_lambda_is_kmeans_from_the_uniform_centres(
    n: int, bits: int, seed: int, weighted: bool
) -> None:
    # λ = 0: Lloyd's iteration per weight from the uniform quantizer's centres, so it never
    # ends with a larger (weighted) SSE than uniform quantization and every weight sits at its
    # nearest level
    v = _laplace(n, seed)
    w = torch.rand(n, generator=torch.Generator().manual_seed(seed)) if weighted else None
    u = uniform_quantize(v, 2**bits, weights=w)
    e = ecsq_quantize(v, 2**bits, 0.0, weights=w, max_iter=1000)
    assert e.converged
    assert e.k <= u.k
    assert e.sse <= u.sse * (1 + 1e-6) + 1e-12
    if w is None:
        d = (v[:, None].double() - e.centroids[None, :].double()) ** 2
        own = d.gather(1, e.labels[:, None]).squeeze(1)
        assert bool((own <= d.min(dim=1).values * (1 + 1e-6) + 1e-12).all())


def test_larger_lambda_lowers_the_rate() -> None:
    v = _laplace(20000, 0)
    rates, sses = [], []
    for lam in (0.0, 0.01, 0.05, 0.2):
        r = ecsq_quantize(v, 64, lam)
        rates.append(_entropy(r.labels))
        sses.append(r.sse)
    assert rates == sorted(rates, reverse=True)
    assert rates[-1] < rates[0] - 1.0
    assert sses == sorted(sses)


def test_ecsq_bad_lambda() -> None:
    with pytest.raises(ConfigError, match="lambda"):
        ecsq_quantize(torch.randn(10), 4, -1.0)
    with pytest.raises(ConfigError, match="lambda"):
        ecsq_quantize(torch.randn(10), 4, math.nan)


def test_step_rounds_to_the_grid_and_represents_each_point_by_its_mean() -> None:
    values = torch.tensor([-0.26, -0.24, -0.04, 0.04, 0.06, 0.16, 0.5])
    r = step_quantize(values, 0.1)
    # grid points -0.3 (-0.26), -0.2 (-0.24), 0 (-0.04, 0.04), 0.1 (0.06), 0.2 (0.16), 0.5
    assert r.k == 6
    expected = torch.tensor([-0.26, -0.24, 0.0, 0.06, 0.16, 0.5])
    torch.testing.assert_close(r.centroids, expected)
    assert r.labels.tolist() == [0, 1, 2, 2, 3, 4, 5]


@settings(max_examples=25, deadline=None)
@given(n=st.integers(1, 400), step=st.floats(0.008, 0.5), seed=st.integers(0, 2**16))
def test_step_error_is_at_most_half_a_step(n: int, step: float, seed: int) -> None:
    # values in (-1, 1): a step of at least 0.008 uses at most 251 grid points, within the
    # 256 levels allowed (smaller steps may need more, which is an error, tested below)
    g = torch.Generator().manual_seed(seed)
    values = (torch.rand(n, generator=g) - 0.5) * 2.0
    r = step_quantize(values, step)
    decoded = r.centroids[r.labels]
    # each value sits within half a step of its grid point, and so does its group's mean
    assert float((decoded - values).abs().max()) <= step + 1e-6
    assert r.k == torch.unique(torch.round(values.double() / step)).numel()


def test_step_errors_name_the_tensor_and_the_smallest_step() -> None:
    values = torch.linspace(-1.0, 1.0, 1000)
    with pytest.raises(ConfigError, match=r"fc9\.weight: step 0\.001 uses 1000 levels.*0\.00785"):
        step_quantize(values, 0.001, name="fc9.weight")
    assert step_quantize(values, 0.00785).k <= 256  # the advised step fits
    with pytest.raises(ConfigError, match="spans 2000000001 grid points"):
        step_quantize(values, 1e-9, name="fc9.weight")
    for bad in (0.0, -0.1, float("nan"), float("inf"), True):
        with pytest.raises(ConfigError, match="step must be a finite number > 0"):
            step_quantize(values, bad)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("values", "step"),
    [
        (torch.tensor([-1.0, 0.5, 1.0]), 1e-310),  # |w| / step overflows to infinity
        (torch.tensor([-1.0, 0.5, 1.0]), 5e-324),
        (torch.tensor([-3e38, 0.0, 3e38], dtype=torch.float64), 1e-300),
    ],
)
def test_a_step_too_tiny_for_the_range_is_a_config_error(values: torch.Tensor, step: float) -> None:
    with pytest.raises(ConfigError, match=r"fc9\.weight: step .* at least"):
        step_quantize(values, step, name="fc9.weight")
