"""Session 32, from mutation testing of quantize/kmeans.py: Lloyd's iterations, the empty-
cluster rule (``_reseat`` and its fallback to the farthest values) and ``_finish`` checked
against an independent exact reference (kmeans_reference.py), plus the argument checks whose
mutants survived."""

from __future__ import annotations

import random
from fractions import Fraction

import pytest
import torch
from kmeans_reference import lloyd

from deepzip.errors import ConfigError, InvalidTensorError
from deepzip.quantize.kmeans import kmeans_1d


def _cases(seed: int, count: int) -> list[tuple[list[int], list[int] | None, list[int], int]]:
    """Small integer data (exact in float64 prefix sums), optional integer importance with
    zeros, and starting centroids that often leave clusters empty (some lie outside the data)."""
    rng = random.Random(seed)
    out = []
    while len(out) < count:
        n = rng.randint(6, 30)
        values = [rng.randint(-12, 12) for _ in range(n)]
        weights = [rng.randint(0, 3) for _ in range(n)] if rng.random() < 0.5 else None
        live = {v for i, v in enumerate(values) if weights is None or weights[i] > 0}
        k = rng.randint(2, 6)
        if len(live) > k:  # else kmeans_1d returns the distinct values without Lloyd
            out.append((values, weights, [rng.randint(-30, 30) for _ in range(k)], k))
    return out


@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("scale", [1, 4])
def test_lloyd_and_the_empty_cluster_rule_match_the_reference(seed: int, scale: int) -> None:
    reseats = 0
    for values, weights, init, k in _cases(seed, 30):
        x = torch.tensor(values, dtype=torch.float32) / scale  # exact: a power of two
        w = None if weights is None else torch.tensor(weights, dtype=torch.float32)
        c0 = torch.tensor(init, dtype=torch.float32) / scale
        for max_iter in (1, 2, 3, 60):
            for tol in (0.0, 0.5 / scale):
                ref_c, ref_it, ref_conv, ref_labels = lloyd(
                    [Fraction(v, scale) for v in values],
                    weights,
                    [Fraction(v, scale) for v in init],
                    max_iter,
                    Fraction(tol),
                )
                got = kmeans_1d(x, k, weights=w, init_centroids=c0, max_iter=max_iter, tol=tol)
                where = f"{values} {weights} init {init} /{scale} max_iter {max_iter} tol {tol}"
                assert [Fraction(float(v)) for v in got.centroids] == ref_c, where
                assert (got.iterations, got.converged) == (ref_it, ref_conv), where
                assert got.labels.tolist() == ref_labels, where
                wt = [1] * len(values) if weights is None else weights
                sse = sum(
                    wi * (Fraction(v, scale) - ref_c[j]) ** 2
                    for v, wi, j in zip(values, wt, ref_labels, strict=True)
                )
                assert got.sse == pytest.approx(float(sse), rel=1e-12, abs=1e-12), where
        # the cases exercise the rule: a start with a centroid beyond the data leaves it empty
        lo, hi = min(values), max(values)
        reseats += sum(1 for c in init if c < lo or c > hi) > 0
    assert reseats >= 15


def test_the_split_takes_the_cluster_whose_split_lowers_the_sse_most() -> None:
    # traced by hand: centroids 0 and 100 over {0, 1, 10, 11}: the second cluster is empty.
    # Splitting {0, 1, 10, 11} at its mean 5.5 gives {0, 1} and {10, 11}: centroids 0.5, 10.5.
    got = kmeans_1d(torch.tensor([0.0, 1, 10, 11]), 2, init_centroids=torch.tensor([0.0, 100]))
    assert got.centroids.tolist() == [0.5, 10.5]
    assert got.labels.tolist() == [0, 0, 1, 1]
    # two live clusters and an empty one; the gain W_L·W_R/(W_L+W_R)·(m_L − m_R)² of a split
    # at the mean: {0 | 1, 2} (mean 1): 1·2/3·1.5² = 1.5; {20 | 30} (mean 25): 1/2·10² = 50
    got = kmeans_1d(
        torch.tensor([0.0, 1, 2, 20, 30]),
        3,
        init_centroids=torch.tensor([1.0, 25, 1000]),
        max_iter=1,
    )
    assert got.centroids.tolist() == [1.0, 20.0, 30.0]


def test_centroids_that_merge_in_float32_reduce_k_from_two() -> None:
    # two float64 values 1e-12 apart are one float32 centroid
    values = torch.tensor([1.0, 1.0 + 1e-12], dtype=torch.float64)
    got = kmeans_1d(values, 2)
    assert got.k == 1
    assert got.centroids.tolist() == [1.0]
    assert got.labels.tolist() == [0, 0]
    assert any("k reduced from 2 to 1" in n for n in got.notes)


def test_fewer_values_with_importance_keeps_those_of_importance_below_one() -> None:
    values = torch.tensor([1.0, 2.0, 3.0])
    got = kmeans_1d(values, 3, weights=torch.tensor([0.25, 0.0, 0.5]))
    assert got.centroids.tolist() == [1.0, 3.0]
    assert got.labels.tolist() == [0, 1, 1]  # 2 is half-way: it goes to the upper one


def test_exactly_k_values_with_importance_need_no_iteration() -> None:
    got = kmeans_1d(torch.tensor([3.0, 1.0, 2.0]), 3, init="forgy", seed=5)
    assert got.centroids.tolist() == [1.0, 2.0, 3.0]
    assert (got.iterations, got.converged, got.sse) == (0, True, 0.0)


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"max_iter": True}, ConfigError, "max_iter must be an integer >= 1, got True"),
        ({"max_iter": 2.0}, ConfigError, "max_iter must be an integer >= 1, got 2.0"),
        ({"tol": "0.1"}, ConfigError, "tol must be a finite number >= 0, got '0.1'"),
        ({"tol": -1e-9}, ConfigError, "tol must be a finite number >= 0, got -1e-09"),
        ({"tol": float("inf")}, ConfigError, "tol must be a finite number >= 0, got inf"),
        (
            {"init_centroids": torch.tensor([[0.0, 1.0]])},
            InvalidTensorError,
            r"init_centroids must be 1-D, got shape \(1, 2\)",
        ),
    ],
)
def test_bad_lloyd_settings_are_refused(
    kwargs: dict[str, object], error: type[Exception], match: str
) -> None:
    with pytest.raises(error, match=match):
        kmeans_1d(torch.tensor([0.0, 1.0, 2.0, 5.0]), 2, **kwargs)  # type: ignore[arg-type]
