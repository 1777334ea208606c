from __future__ import annotations

import math

import pytest
import torch
from laplace_weights import laplace

from deepzip.errors import ConfigError, InvalidTensorError
from deepzip.quantize.incremental import (
    cluster_losses,
    inq_exponents,
    inq_levels,
    inq_round,
    recluster_1d,
    ternary_round,
    ternary_scale,
)

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.parametrize(
    ("max_abs", "bits", "n1", "n2"),
    [
        (0.3, 3, -2, -3),  # 4s/3 = 0.4 -> floor(log2) = -2; n2 = -2 + 1 - 4/2
        (0.3, 5, -2, -9),  # 2**4 / 2 = 8 magnitudes
        (0.3, 2, -2, -2),  # ternary: one magnitude
        (0.75, 4, 0, -3),  # 4s/3 = 1 exactly: n1 = 0
        (0.7499, 4, -1, -4),  # just below the boundary
        (3.0, 8, 2, -61),
    ],
)
def test_inq_exponents_follow_the_paper(max_abs: float, bits: int, n1: int, n2: int) -> None:
    assert inq_exponents(max_abs, bits) == (n1, n2)


@pytest.mark.parametrize("bits", [2, 3, 4, 5, 8])
@pytest.mark.parametrize("max_abs", [0.013, 0.3, 1.7])
def test_inq_levels_are_signed_powers_of_two(bits: int, max_abs: float) -> None:
    n1, n2 = inq_exponents(max_abs, bits)
    levels = inq_levels(n1, n2)
    assert levels.dtype == torch.float32
    assert levels.numel() == 2 ** (bits - 1)  # one more bit for the zero level
    assert torch.equal(levels, torch.sort(levels).values)
    assert torch.equal(levels, -levels.flip(0))
    for v in levels.tolist():
        mantissa, _ = math.frexp(abs(v))
        assert mantissa == 0.5, v
    # the largest level covers max |w|: it lies in [0.75, 1.5) times the top level
    top = float(levels[-1])
    assert 0.75 * top <= max_abs < 1.5 * top


def test_inq_round_uses_the_paper_intervals() -> None:
    # levels 0.25 and 0.125 (n1 = -2, n2 = -3): 0.125 covers [0.0625, 0.1875), 0.25 the rest
    values = torch.tensor([0.0, 0.06, 0.0625, 0.18, 0.1875, 0.3, 5.0, -0.2, -0.0624, -0.07])
    expected = torch.tensor([0.0, 0.0, 0.125, 0.125, 0.25, 0.25, 0.25, -0.25, 0.0, -0.125])
    assert torch.equal(inq_round(values, -2, -3), expected)


def test_inq_rejects_bad_inputs() -> None:
    with pytest.raises(ConfigError, match="from 2 to 8"):
        inq_exponents(0.5, 1)
    with pytest.raises(InvalidTensorError):
        inq_exponents(0.0, 4)
    with pytest.raises(InvalidTensorError):
        inq_exponents(math.inf, 4)


def test_ternary_scale_hand_example() -> None:
    # top-3 magnitudes: S = 3, 9/3 = 3 beats 1 (m=1), 2 (m=2) and 3.1**2/4 (m=4)
    assert ternary_scale(torch.tensor([1.0, -1.0, 1.0, 0.1])) == 1.0
    # one huge weight: a is that weight
    assert ternary_scale(torch.tensor([10.0, 0.1, -0.1])) == 10.0


def _ternary_error(values: torch.Tensor, a: float) -> float:
    q = torch.where(values.abs() >= a / 2, torch.sign(values) * a, torch.zeros_like(values))
    return float(((values.double() - q.double()) ** 2).sum())


def test_ternary_scale_is_the_least_squares_optimum() -> None:
    values = laplace(600, seed=3)
    a = ternary_scale(values)
    best = _ternary_error(values, a)
    grid = torch.linspace(1e-4, float(values.abs().max()), 3000)
    assert min(_ternary_error(values, float(g)) for g in grid) >= best - 1e-9
    twn = 0.7 * float(values.abs().mean())  # TWN's threshold, a = mean above it
    a_twn = float(values.abs()[values.abs() > twn].mean())
    assert _ternary_error(values, a_twn) >= best - 1e-9


def test_ternary_round_snaps_to_three_levels() -> None:
    values = torch.tensor([-0.9, -0.5, -0.49, 0.0, 0.2, 0.5, 3.0])
    out = ternary_round(values, 1.0)
    assert torch.equal(out, torch.tensor([-1.0, -1.0, 0.0, 0.0, 0.0, 1.0, 1.0]))


def test_recluster_holds_fixed_centroids() -> None:
    values = torch.tensor([0.0, 0.1, 0.2, 1.0, 1.1])
    result = recluster_1d(values, torch.tensor([0.0, 0.5, 2.0]), torch.tensor([True, False, False]))
    # 0.0 is held although its members' mean is 0.1; 0.5 moves to 1.05; 2.0 is empty and stays
    assert torch.allclose(result.centroids, torch.tensor([0.0, 1.05, 2.0]))
    assert float(result.centroids[0]) == 0.0
    assert result.fixed.tolist() == [True, False, False]
    assert result.labels.tolist() == [0, 0, 0, 1, 1]
    assert result.converged


def test_recluster_is_a_constrained_lloyd_fixed_point() -> None:
    values = laplace(2000, seed=5)
    start = torch.linspace(-0.05, 0.05, 8)
    fixed = torch.tensor([False, True, False, False, True, False, False, False])
    r = recluster_1d(values, start, fixed, max_iter=500)
    assert r.converged
    held = start[fixed]
    assert torch.equal(r.centroids[r.fixed], held)
    # each value sits at its nearest centroid
    dist = (values[:, None] - r.centroids[None, :]).abs()
    chosen = dist.gather(1, r.labels[:, None]).squeeze(1)
    assert bool((chosen <= dist.min(dim=1).values + 1e-7).all())
    # each free, non-empty centroid is the mean of its members
    for j in range(8):
        members = values[r.labels == j]
        if not bool(r.fixed[j]) and members.numel():
            assert float(r.centroids[j]) == pytest.approx(float(members.double().mean()), abs=1e-6)


def test_recluster_rejects_bad_inputs() -> None:
    two = torch.zeros(2, dtype=torch.bool)
    with pytest.raises(InvalidTensorError, match="fixed"):
        recluster_1d(torch.ones(3), torch.zeros(2), torch.zeros(3, dtype=torch.bool))
    with pytest.raises(ConfigError, match="max_iter"):
        recluster_1d(torch.ones(3), torch.zeros(2), two, max_iter=0)
    with pytest.raises(InvalidTensorError):
        recluster_1d(torch.tensor([1.0, math.nan]), torch.zeros(2), two)


def test_cluster_losses_sum_and_mean() -> None:
    values = torch.tensor([0.0, 0.2, 1.0, 1.0, 1.6])
    labels = torch.tensor([0, 0, 1, 1, 1])
    centroids = torch.tensor([0.1, 1.2, 5.0])
    sse = cluster_losses(values, labels, centroids, "sse")
    # 0.01 + 0.01; 0.04 + 0.04 + 0.16; empty cluster 0
    torch.testing.assert_close(sse, torch.tensor([0.02, 0.24, 0.0], dtype=torch.float64))
    mse = cluster_losses(values, labels, centroids, "mse")
    torch.testing.assert_close(mse, torch.tensor([0.01, 0.08, 0.0], dtype=torch.float64))
    with pytest.raises(ConfigError):
        cluster_losses(values, labels, centroids, "max")  # type: ignore[arg-type]


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_rounding_refuses_non_finite_values(bad: float) -> None:
    x = torch.tensor([[bad, 0.3], [0.1, -0.2]])  # a NaN would otherwise round to the 0 level
    with pytest.raises(InvalidTensorError, match="1 non-finite"):
        inq_round(x, -1, -3)
    with pytest.raises(InvalidTensorError, match="1 non-finite"):
        ternary_round(x, 0.2)
