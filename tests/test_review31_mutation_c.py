"""Tests from mutation testing of the papers' algorithms (review 31, part c).

Each test kills mutants of prune/masks.py, quantize/kmeans.py, quantize/scalar.py,
quantize/incremental/levels.py or the schedule fractions that the rest of the suite let live.
Expected values are derived by hand, from the papers' formulas, or from an independent
computation (brute force, numpy), never from the code under test.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from deepzip.errors import ConfigError, InvalidTensorError
from deepzip.prune.masks import (
    global_magnitude_masks,
    quality_mask,
    reference_std,
    sparsity_mask,
)
from deepzip.quantize.kmeans import assign_nearest, kmeans_1d
from deepzip.quantize.scalar import step_quantize, uniform_quantize

# --------------------------------------------------------------------------------------------
# prune/masks.py


def test_mask_of_another_shape_but_the_same_size_is_refused() -> None:
    w = torch.arange(6, dtype=torch.float32).reshape(2, 3)
    flat = torch.ones(6, dtype=torch.bool)  # same numel, other shape: would flatten the same
    with pytest.raises(InvalidTensorError, match=r"w1: mask shape \(6,\) does not match"):
        sparsity_mask(w, 0.5, flat, name="w1")
    with pytest.raises(InvalidTensorError, match=r"w2: mask shape \(1, 3\) does not match"):
        quality_mask(w, 1.0, 1.0, torch.ones(1, 3, dtype=torch.bool), name="w2")


def test_reference_std_is_bessel_corrected() -> None:
    # [1, 3]: mean 2, squared deviations 1 + 1 = 2, divided by n - 1 = 1: std sqrt(2)
    assert reference_std(torch.tensor([1.0, 3.0])) == pytest.approx(math.sqrt(2), rel=1e-12)
    # [0, 1, 2, 3, 4]: squared deviations 4 + 1 + 0 + 1 + 4 = 10, / 4: std sqrt(2.5)
    x = torch.arange(5, dtype=torch.float32)
    assert reference_std(x) == pytest.approx(math.sqrt(2.5), rel=1e-12)


def test_reference_std_of_fewer_than_two_elements_is_zero() -> None:
    assert reference_std(torch.tensor([3.0])) == 0.0
    assert reference_std(torch.zeros(0)) == 0.0


def test_reference_std_on_cpu_is_numpy_pairwise_not_torch_threaded(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # the docstring promises numpy's single-threaded value on CPU, whatever the thread count:
    # torch.std's threaded reduction (its last bits depend on the threads) is not used
    x = torch.randn(100_003, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    x = x * 3 + 1
    expected = float(np.std(x.numpy(), ddof=1))

    def threaded(*args: object, **kwargs: object) -> None:
        raise AssertionError("torch.std was used")

    monkeypatch.setattr(torch.Tensor, "std", threaded)
    monkeypatch.setattr(torch, "std", threaded)
    assert reference_std(x) == expected


@pytest.mark.parametrize("quality", [-0.5, -1e-9, math.inf, math.nan])
def test_quality_mask_refuses_a_bad_quality(quality: float) -> None:
    with pytest.raises(ConfigError, match="quality must be a finite number >= 0"):
        quality_mask(torch.ones(3), quality, 1.0)


@pytest.mark.parametrize("std", [-0.5, -1e-9, math.inf, math.nan])
def test_quality_mask_refuses_a_bad_std(std: float) -> None:
    with pytest.raises(ConfigError, match="fc: reference std must be a finite number >= 0"):
        quality_mask(torch.ones(3), 1.0, std, name="fc")


def test_quality_mask_accepts_zero_and_fractional_quality_and_std() -> None:
    w = torch.tensor([0.0, -0.2, 0.3, -0.6, 1.0])
    assert quality_mask(w, 0.0, 1.0).all()  # |w| >= 0 keeps everything
    assert quality_mask(w, 1.0, 0.0).all()
    # threshold 0.5 * 0.8 = 0.4: keep |w| >= 0.4
    assert quality_mask(w, 0.5, 0.8).tolist() == [False, False, False, True, True]
    assert quality_mask(w, 0.8, 0.5).tolist() == [False, False, False, True, True]


def test_global_masks_do_not_count_zero_weights_as_already_pruned() -> None:
    # only positions pruned by ``current`` (score -1) are forced out; a weight that is exactly
    # zero but alive is kept at sparsity 0
    weights = {"a": torch.tensor([0.0, 1.0, 2.0]), "b": torch.tensor([0.0, -3.0])}
    masks = global_magnitude_masks(weights, 0.0)
    assert masks["a"].all()
    assert masks["b"].all()
    # with a current mask: exactly the one pruned position goes
    cur = {"a": torch.tensor([True, False, True])}
    masks = global_magnitude_masks(weights, 0.0, cur)
    assert masks["a"].tolist() == [True, False, True]
    assert masks["b"].all()


def test_global_masks_prune_a_single_weight() -> None:
    weights = {"b": torch.tensor([4.0, -1.0]), "a": torch.tensor([3.0, 2.0])}
    masks = global_magnitude_masks(weights, 0.25)  # round(0.25 * 4) = 1: the -1.0 goes
    assert masks["a"].tolist() == [True, True]
    assert masks["b"].tolist() == [True, False]
    assert list(masks) == ["b", "a"]  # in the input's order


# --------------------------------------------------------------------------------------------
# quantize/kmeans.py


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_assign_nearest_refuses_non_finite_centroids(bad: float) -> None:
    with pytest.raises(InvalidTensorError, match="centroids must be finite"):
        assign_nearest(torch.tensor([0.0, 1.0]), torch.tensor([-1.0, 0.5, bad]).sort().values)


def test_assign_nearest_refuses_a_2d_codebook() -> None:
    with pytest.raises(InvalidTensorError, match="centroids must be a non-empty 1-D tensor"):
        assign_nearest(torch.tensor([0.0, 1.0]), torch.tensor([[0.0, 1.0]]))


def test_assign_nearest_accepts_repeated_centroids() -> None:
    # sorted ascending allows equal neighbours; midpoints 0.5, 1, 1.5 (by hand), a value
    # exactly on a midpoint goes up
    c = torch.tensor([0.0, 1.0, 1.0, 2.0])
    x = torch.tensor([-1.0, 0.4, 0.6, 1.0, 1.6, 3.0])
    assert assign_nearest(x, c).tolist() == [0, 0, 1, 2, 3, 3]


def test_empty_clusters_beyond_the_splittable_ones_go_to_the_farthest_values() -> None:
    # Derived by hand from kmeans_1d's documented rule. Every value is nearest to 100, so
    # clusters 1.. are empty; the one live cluster {0, 1, 2, 10, 11} (mean 4.8) is split into
    # {0, 1, 2} -> 1 and {10, 11} -> 10.5; the remaining empty centroid(s) go to the values
    # farthest from [1, 10.5]: 0 and 2 (error 1 each; ties: the smaller first).
    x = torch.tensor([0.0, 1.0, 2.0, 10.0, 11.0])
    # k = 3: one left over -> 0; Lloyd then settles at {0}, {1, 2}, {10, 11}
    r = kmeans_1d(x, 3, init_centroids=torch.tensor([100.0, 101.0, 102.0]))
    assert r.centroids.tolist() == [0.0, 1.5, 10.5]
    assert r.labels.tolist() == [0, 1, 1, 2, 2]
    assert (r.k, r.sse, r.converged) == (3, 1.0, True)
    # k = 4: two left over -> 0 and 2; {0}, {1}, {2}, {10, 11} is a fixed point
    r = kmeans_1d(x, 4, init_centroids=torch.tensor([100.0, 101.0, 102.0, 103.0]))
    assert r.centroids.tolist() == [0.0, 1.0, 2.0, 10.5]
    assert (r.k, r.sse, r.converged) == (4, 0.5, True)


def test_farthest_value_is_measured_from_the_midpoint_partition() -> None:
    # By hand: {3, 8, 11, 20} (mean 10.5) splits into {3, 8} -> 5.5 and {11, 20} -> 15.5; the
    # left-over centroid goes to the farthest value from its nearest of [5.5, 15.5] (midpoint
    # 10.5): errors 6.25, 6.25, 20.25, 20.25, tie -> 11. Lloyd then moves 15.5 to 20:
    # {3, 8} -> 5.5, {11}, {20}, a fixed point (midpoints 8.25 and 15.5), SSE 2 * 2.5² = 12.5.
    x = torch.tensor([3.0, 8.0, 11.0, 20.0])
    r = kmeans_1d(x, 3, init_centroids=torch.tensor([100.0, 101.0, 102.0]))
    assert r.centroids.tolist() == [5.5, 11.0, 20.0]
    assert (r.k, r.sse, r.converged) == (3, 12.5, True)


# --------------------------------------------------------------------------------------------
# quantize/scalar.py


def test_step_grid_span_limit_is_inclusive_at_2_to_the_20() -> None:
    x = torch.tensor([0.0, 1.0], dtype=torch.float64)
    # step 1 / (2**20 - 1): 0 and 1 are 2**20 - 1 steps apart, a span of exactly 2**20 points
    r = step_quantize(x, 1.0 / ((1 << 20) - 1), max_levels=2)
    assert r.centroids.tolist() == [0.0, 1.0]
    # step 2**-20: a span of 2**20 + 1 points is refused before any rounding
    with pytest.raises(ConfigError, match="spans 1048577 grid points"):
        step_quantize(x, 2.0**-20, max_levels=2)


def test_uniform_bin_of_zero_importance_takes_its_plain_mean() -> None:
    # k = 2 over [0, 10]: bins {0, 1} and {9, 10}; the second has no importance, so its
    # level is the plain mean 9.5 (module doc), the first the weighted mean 0.25*0 + 0.75*1
    x = torch.tensor([0.0, 1.0, 9.0, 10.0])
    r = uniform_quantize(x, 2, weights=torch.tensor([0.25, 0.75, 0.0, 0.0]))
    assert r.centroids.tolist() == [0.75, 9.5]
    assert r.labels.tolist() == [0, 0, 1, 1]
    # a lone value of zero importance is its own level
    r = uniform_quantize(torch.tensor([0.0, 1.0, 10.0]), 2, weights=torch.tensor([1.0, 3.0, 0.0]))
    assert r.centroids.tolist() == [0.75, 10.0]


def test_uniform_reports_no_unused_levels_when_every_bin_is_used() -> None:
    r = uniform_quantize(torch.tensor([0.0, 1.0, 2.0, 3.0]), 2)  # bins {0, 1}, {2, 3}
    assert r.centroids.tolist() == [0.5, 2.5]
    assert r.notes == ()
    r = uniform_quantize(torch.tensor([0.0, 0.1, 3.0]), 3)  # the middle bin [1, 2) is empty
    assert r.notes == ("1 of 3 levels unused",)
