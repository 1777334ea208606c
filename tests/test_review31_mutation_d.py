"""Tests from mutation testing of the quantizers (review 31, part d).

Each test kills mutants of quantize/incremental/levels.py, quantize/scalar.py or
quantize/kmeans.py that the rest of the suite let live. Expected values are derived by hand,
from the papers' formulas, or from an independent computation (brute force), never from the
code under test.
"""

from __future__ import annotations

import pytest
import torch

from deepzip.errors import ConfigError, InvalidTensorError
from deepzip.quantize.incremental import (
    cluster_losses,
    inq_exponents,
    inq_levels,
    recluster_1d,
    ternary_scale,
)
from deepzip.quantize.scalar import ecsq_quantize, step_quantize, uniform_quantize

# --------------------------------------------------------------------------------------------
# quantize/incremental/levels.py


@pytest.mark.parametrize(
    "bad",
    [
        torch.ones(2, 2),  # not 1-D
        torch.empty(0),  # empty
        torch.tensor([3, 1]),  # not floating point
    ],
)
def test_level_functions_refuse_values_that_are_not_a_nonempty_float_vector(
    bad: torch.Tensor,
) -> None:
    with pytest.raises(InvalidTensorError, match="non-empty 1-D floating-point"):
        ternary_scale(bad)
    free = torch.zeros(2, dtype=torch.bool)
    with pytest.raises(InvalidTensorError, match="non-empty 1-D floating-point"):
        recluster_1d(bad, torch.tensor([0.0, 1.0]), free)
    with pytest.raises(InvalidTensorError, match="centroids must be a non-empty 1-D"):
        recluster_1d(torch.tensor([0.0, 1.0]), bad, torch.zeros(bad.shape, dtype=torch.bool))


def test_ternary_scale_of_a_single_weight_is_its_magnitude() -> None:
    # one weight: m = 1 is the only choice, a = |w|
    assert ternary_scale(torch.tensor([-0.5])) == 0.5


@pytest.mark.parametrize("bits", [3.0, 9, 1])
def test_inq_bits_must_be_an_integer_from_2_to_8(bits: object) -> None:
    with pytest.raises(ConfigError, match="from 2 to 8"):
        inq_exponents(0.5, bits)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("max_abs", "bits", "expected"),
    [
        # the top level 2**127 is the largest float32 power of two: 4s/3 = 2**127 * 4/3
        (2.0**127, 2, (127, 127)),
        (1.4 * 2.0**127, 2, (127, 127)),  # 4s/3 = 1.87 * 2**127
        # the bottom level 2**-149 is the smallest float32 subnormal
        (2.0**-149, 2, (-149, -149)),
        (2.0**-148, 3, (-148, -149)),  # n2 = n1 + 1 - 4 / 2
    ],
)
def test_inq_exponents_reach_the_float32_limits(
    max_abs: float, bits: int, expected: tuple[int, int]
) -> None:
    assert inq_exponents(max_abs, bits) == expected
    levels = inq_levels(*expected)
    assert bool((levels != 0).all())
    assert bool(torch.isfinite(levels).all())


@pytest.mark.parametrize(
    ("max_abs", "bits"),
    [
        (1.5 * 2.0**127, 2),  # 4s/3 = 2**128: n1 = 128
        (2.0**-150, 2),  # n1 = n2 = -150
        (2.0**-149, 3),  # n1 = -149, n2 = -150
    ],
)
def test_inq_exponents_beyond_float32_are_refused(max_abs: float, bits: int) -> None:
    with pytest.raises(InvalidTensorError, match="not all float32 numbers"):
        inq_exponents(max_abs, bits)


def test_recluster_refuses_a_fixed_mask_that_is_not_bool() -> None:
    with pytest.raises(InvalidTensorError, match="fixed must be a bool tensor"):
        recluster_1d(torch.ones(3), torch.zeros(2), torch.zeros(2, dtype=torch.uint8))


@pytest.mark.parametrize("max_iter", [True, 2.5, 0])
def test_recluster_max_iter_must_be_a_positive_integer(max_iter: object) -> None:
    with pytest.raises(ConfigError, match="max_iter"):
        recluster_1d(
            torch.ones(3),
            torch.zeros(2),
            torch.zeros(2, dtype=torch.bool),
            max_iter=max_iter,  # type: ignore[arg-type]
        )


def test_recluster_counts_its_iterations_and_stops_at_max_iter() -> None:
    # by hand: start [0, 5]; 0, 1, 2 go left, 3 and 10 right; round 1 gives [1, 6.5] and
    # moves 3 left (midpoint 3.75), so the assignment has not settled after one round
    values = torch.tensor([0.0, 1.0, 2.0, 3.0, 10.0])
    free = torch.zeros(2, dtype=torch.bool)
    r = recluster_1d(values, torch.tensor([0.0, 5.0]), free, max_iter=1)
    assert (r.iterations, r.converged) == (1, False)
    assert r.centroids.tolist() == [1.0, 6.5]
    assert r.labels.tolist() == [0, 0, 0, 0, 1]
    # round 2 gives [1.5, 10] and the same assignment: settled in 2 rounds
    r = recluster_1d(values, torch.tensor([0.0, 5.0]), free, max_iter=100)
    assert (r.iterations, r.converged) == (2, True)
    assert r.centroids.tolist() == [1.5, 10.0]
    assert r.labels.tolist() == [0, 0, 0, 0, 1]


def test_recluster_moves_a_one_member_centroid_onto_its_member() -> None:
    # 0.0 -> centroid 1.0, 4.0 -> centroid 3.0; each mean is the member itself; one round
    r = recluster_1d(
        torch.tensor([0.0, 4.0]), torch.tensor([1.0, 3.0]), torch.zeros(2, dtype=torch.bool)
    )
    assert r.centroids.tolist() == [0.0, 4.0]
    assert (r.iterations, r.converged) == (1, True)


def test_cluster_losses_edge_cases() -> None:
    # one centroid: (1-2)^2 + (3-2)^2 = 2, mean 1
    one = torch.tensor([2.0])
    labels = torch.tensor([0, 0])
    assert cluster_losses(torch.tensor([1.0, 3.0]), labels, one, "sse").tolist() == [2.0]
    assert cluster_losses(torch.tensor([1.0, 3.0]), labels, one, "mse").tolist() == [1.0]
    # a one-member cluster: its mean loss is its summed loss, (3 - 2.5)^2 = 0.25
    values = torch.tensor([0.0, 0.2, 3.0])
    mse = cluster_losses(values, torch.tensor([0, 0, 1]), torch.tensor([0.1, 2.5]), "mse")
    torch.testing.assert_close(mse, torch.tensor([0.01, 0.25], dtype=torch.float64))
    # no values: every cluster is empty, loss 0
    empty = cluster_losses(
        torch.empty(0), torch.empty(0, dtype=torch.int64), torch.tensor([0.0, 1.0])
    )
    assert empty.tolist() == [0.0, 0.0]
    # no centroids: refused for what it is, whatever the labels
    with pytest.raises(InvalidTensorError, match="centroids must be a non-empty 1-D"):
        cluster_losses(torch.tensor([1.0]), torch.tensor([0]), torch.empty(0))
    # a single out-of-range label is refused, not an index error
    with pytest.raises(InvalidTensorError, match="labels must be integer indices"):
        cluster_losses(torch.tensor([1.0]), torch.tensor([5]), torch.tensor([0.0, 1.0]))


def test_cluster_losses_of_no_values_are_float64() -> None:
    # with no values torch.bincount(weights=...) returns int64: the "sse" losses were int64,
    # not the float64 the docstring promises
    empty = cluster_losses(
        torch.empty(0), torch.empty(0, dtype=torch.int64), torch.tensor([0.0, 1.0]), "sse"
    )
    assert empty.dtype == torch.float64


# --------------------------------------------------------------------------------------------
# quantize/scalar.py


def test_uniform_quantize_runs_no_iterations() -> None:
    r = uniform_quantize(torch.tensor([0.0, 1.0, 2.0, 3.0]), 2)
    assert (r.iterations, r.converged) == (0, True)


def test_a_step_that_is_not_a_number_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="step must be a finite number > 0"):
        step_quantize(torch.tensor([0.0, 1.0]), "0.1")  # type: ignore[arg-type]


def test_step_quantize_runs_no_iterations() -> None:
    r = step_quantize(torch.tensor([-0.26, 0.04, 0.5]), 0.1)
    assert (r.iterations, r.converged) == (0, True)


def test_a_grid_span_that_overflows_float64_is_too_many() -> None:
    # |w| / step = 1e308 at both ends: each end is finite but their difference overflows
    values = torch.tensor([-3e38, 0.0, 3e38], dtype=torch.float64)
    with pytest.raises(ConfigError, match=r"w: step 3e-270 spans too many grid points"):
        step_quantize(values, 3e-270, name="w")


def test_the_step_advised_for_a_single_level_covers_twice_the_largest_magnitude() -> None:
    # one level: every value must round to 0, so the step must exceed 2 * max|w| = 1.0;
    # rounded up to the next 3-digit number: 1.01
    values = torch.tensor([-0.3, 0.5])
    with pytest.raises(ConfigError, match=r"more than 1: use a step of at least 1\.01$"):
        step_quantize(values, 0.4, max_levels=1, name="w")
    assert step_quantize(values, 1.01, max_levels=1).k == 1


def test_the_advised_step_is_the_next_three_digit_number_above_the_bound() -> None:
    # 3 grid points for 2 levels; the bound is (hi - lo) / (levels - 1) = 0.001, exclusive,
    # so the advice is the next 3-significant-digit number, 0.00101
    values = torch.tensor([0.0, 0.0005, 0.001], dtype=torch.float64)
    with pytest.raises(ConfigError, match=r"more than 2: use a step of at least 0\.00101$"):
        step_quantize(values, 0.0004, max_levels=2, name="w")


def test_ecsq_is_unchanged_when_all_importance_is_scaled_below_one() -> None:
    # the module doc: scaling every importance by a constant changes nothing. A power of two
    # scales every float sum exactly, so the result must be bit-identical, also when the
    # scaled importance sums to less than 1 (here 2**-20 per value, 300 values)
    g = torch.Generator().manual_seed(7)
    values = torch.randn(300, generator=g)
    # skewed importance: its weighted mean and variance are far from the plain ones
    imp = torch.where(values > 0.5, 8.0, 0.25) * (torch.rand(300, generator=g) + 0.5)
    base = ecsq_quantize(values, 16, 0.05, weights=imp)
    for scale in (2.0**-20, 2.0**-30):
        r = ecsq_quantize(values, 16, 0.05, weights=imp * scale)
        assert torch.equal(r.centroids, base.centroids)
        assert torch.equal(r.labels, base.labels)
    plain = ecsq_quantize(values, 16, 0.05)
    tiny = ecsq_quantize(values, 16, 0.05, weights=torch.full((300,), 2.0**-20))
    assert torch.equal(plain.labels, tiny.labels)


def test_ecsq_is_unchanged_when_all_values_are_scaled() -> None:
    # the module doc: distortion is divided by the layer's variance, so scaling every weight
    # by a constant changes nothing; a power of two keeps every float operation exact
    g = torch.Generator().manual_seed(11)
    values = torch.randn(300, generator=g)
    imp = torch.rand(300, generator=g) + 0.5
    base = ecsq_quantize(values, 16, 0.05, weights=imp)
    for scale in (4.0, 2.0**-6):
        r = ecsq_quantize(values * scale, 16, 0.05, weights=imp)
        assert torch.equal(r.centroids, base.centroids * scale)
        assert torch.equal(r.labels, base.labels)


def test_ecsq_lambda_threshold_matches_the_cost_formula_by_hand() -> None:
    # values 0, 0, 0, 1 (no importance: ī = 1), k = 2: the uniform start is {0, 0, 0} at
    # centre 0 (p = 3/4) and {1} at centre 1 (p = 1/4). σ² = (3 · 0.25² + 0.75²) / 4 = 0.1875.
    # The 1 moves to centre 0 when 1 / σ² + λ · log2(4/3) < λ · 2, i.e. when
    # λ > (1 / 0.1875) / (2 − log2(4/3)) = 3.365 (the zeros never move).
    values = torch.tensor([0.0, 0.0, 0.0, 1.0])
    below = ecsq_quantize(values, 2, 3.3)
    assert below.centroids.tolist() == [0.0, 1.0]
    assert (below.iterations, below.converged) == (1, True)
    above = ecsq_quantize(values, 2, 3.45)
    assert above.centroids.tolist() == [0.25]
    assert above.labels.tolist() == [0, 0, 0, 0]


def test_ecsq_of_equal_values_is_one_level() -> None:
    # zero variance: the distortion is not scaled by it (no division by zero)
    r = ecsq_quantize(torch.full((5,), 0.3), 4, 0.1)
    assert r.k == 1
    assert r.centroids.tolist() == [torch.tensor(0.3).item()]


def test_ecsq_stops_after_max_iter_rounds() -> None:
    # the example above at λ = 3.45: round 1 moves the 1 (not settled yet), round 2 settles
    values = torch.tensor([0.0, 0.0, 0.0, 1.0])
    r = ecsq_quantize(values, 2, 3.45, max_iter=1)
    assert (r.iterations, r.converged) == (1, False)
    assert r.labels.tolist() == [0, 0, 0, 0]
    assert any("max_iter=1" in note for note in r.notes)
    r = ecsq_quantize(values, 2, 3.45, max_iter=2)
    assert (r.iterations, r.converged) == (2, True)
    assert not any("max_iter" in note for note in r.notes)


@pytest.mark.parametrize("lam", [True, False])
def test_ecsq_refuses_a_bool_lambda(lam: bool) -> None:
    # steps, max_iter, INQ bits and QuantizeConfig(ecsq_lambda=True) refuse a bool; ecsq_quantize
    # took True as lambda = 1
    from deepzip.errors import ConfigError
    from deepzip.quantize.scalar import ecsq_quantize

    with pytest.raises(ConfigError, match=f"ECSQ lambda must be a finite number >= 0, got {lam}"):
        ecsq_quantize(torch.linspace(-1, 1, 50), 4, lam)
