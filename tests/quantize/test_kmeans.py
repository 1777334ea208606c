from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from deepzip.errors import ConfigError, InvalidTensorError
from deepzip.quantize.kmeans import assign_nearest, bits_to_k, kmeans_1d, weighted_sse

INITS = ("linear", "density", "forgy", "kmeans++")


def _laplace(n: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    u = torch.rand(n, generator=g, dtype=torch.float64) - 0.5
    return (-0.02 * torch.sign(u) * torch.log1p(-2 * u.abs())).float()


def _optimal_sse(values: torch.Tensor, k: int) -> float:
    """Exact 1-D k-means by dynamic programming over sorted values (O(k n²); small n only)."""
    xs = torch.sort(values.double()).values
    n = xs.numel()
    p1 = torch.cat([torch.zeros(1, dtype=torch.float64), torch.cumsum(xs, 0)])
    p2 = torch.cat([torch.zeros(1, dtype=torch.float64), torch.cumsum(xs * xs, 0)])
    j = torch.arange(n + 1)
    # cost[i, j] = SSE of xs[i:j]
    cnt = (j[None, :] - j[:, None]).double().clamp(min=1)
    s1 = p1[None, :] - p1[:, None]
    cost = (p2[None, :] - p2[:, None]) - s1 * s1 / cnt
    cost = torch.where(j[None, :] > j[:, None], cost, torch.full_like(cost, float("inf")))
    best = cost[0].clone()
    for _ in range(1, k):
        best = torch.minimum(best, (best[:, None] + cost).min(dim=0).values)
    return float(best[n])


@settings(max_examples=50, deadline=None)
@given(
    n=st.integers(1, 2000),
    k=st.integers(1, 64),
    seed=st.integers(0, 10_000),
    init=st.sampled_from(INITS),
    weighted=st.booleans(),
)
def test_lloyd_fixed_point(n: int, k: int, seed: int, init: str, weighted: bool) -> None:
    v = _laplace(n, seed)
    w = torch.rand(n, generator=torch.Generator().manual_seed(seed)) + 0.01 if weighted else None
    r = kmeans_1d(v, k, weights=w, init=init, seed=seed)  # type: ignore[arg-type]
    assert r.centroids.dtype == torch.float32
    assert r.labels.dtype == torch.int64
    assert bool((r.centroids[1:] > r.centroids[:-1]).all())
    assert r.k == r.centroids.numel() <= k
    # every value sits in its nearest cluster
    assert torch.equal(r.labels, assign_nearest(v.double(), r.centroids.double()))
    # every centroid is the weighted mean of its members (converged runs)
    ww = torch.ones(n) if w is None else w
    if r.converged:
        for c in range(r.k):
            members = r.labels == c
            assert bool(members.any())
            mean = (ww[members].double() * v[members].double()).sum() / ww[members].double().sum()
            assert abs(float(mean) - float(r.centroids[c])) <= 1e-6 + 1e-5 * abs(float(mean))
    assert r.sse == pytest.approx(weighted_sse(v, r.centroids, r.labels, ww))


@pytest.mark.parametrize("init", INITS)
def test_same_seed_same_result(init: str) -> None:
    v = _laplace(5000, 1)
    a = kmeans_1d(v, 16, init=init, seed=3)  # type: ignore[arg-type]
    b = kmeans_1d(v, 16, init=init, seed=3)  # type: ignore[arg-type]
    assert torch.equal(a.centroids, b.centroids)
    assert torch.equal(a.labels, b.labels)


@pytest.mark.parametrize("init", INITS)
@pytest.mark.parametrize("k", [2, 4, 8, 16])
def test_against_the_exact_optimum(k: int, init: str) -> None:
    """Lloyd is a local method: never below the optimum, at it for small k, and k-means++
    seeding stays close on heavy-tailed data."""
    v = _laplace(600, k)
    optimum = _optimal_sse(v, k)
    sse = kmeans_1d(v, k, init=init).sse  # type: ignore[arg-type]
    assert sse >= optimum * (1 - 1e-9)
    if k <= 4:
        assert sse <= 1.02 * optimum
    if init == "kmeans++":
        assert sse <= 1.05 * optimum


def test_fewer_distinct_values_reduce_k_exactly() -> None:
    v = torch.tensor([0.5, -1.0, 0.5, 2.0, -1.0])
    r = kmeans_1d(v, 8)
    assert r.k == 3
    assert r.sse == 0.0
    assert r.notes == ("k reduced from 8 to 3: only 3 distinct value(s)",)
    assert r.centroids[r.labels].tolist() == v.tolist()


def test_k1_is_weighted_mean_and_importance_pulls() -> None:
    v = torch.tensor([0.0, 1.0, 2.0, 10.0])
    assert kmeans_1d(v, 1).centroids.tolist() == [3.25]
    w = torch.tensor([1.0, 1.0, 1.0, 97.0])
    assert kmeans_1d(v, 1, weights=w).centroids.item() == pytest.approx(9.73)


def test_empty_cluster_is_reseated() -> None:
    # linear init over [0, 100] puts most centroids where there is no data
    v = torch.cat([torch.linspace(0, 1, 50), torch.tensor([100.0])])
    r = kmeans_1d(v, 8, init="linear")
    assert r.k == 8
    assert torch.bincount(r.labels, minlength=8).min() > 0


@pytest.mark.parametrize("bits", range(1, 9))
def test_bits(bits: int) -> None:
    assert bits_to_k(bits) == 2**bits
    r = kmeans_1d(_laplace(3000, bits), bits_to_k(bits))
    assert int(r.labels.max()) < r.k <= 2**bits


def test_bad_inputs() -> None:
    v = torch.randn(10)
    for k in (0, 257):
        with pytest.raises(ConfigError, match=f"k must be an integer from 1 to 256, got {k}"):
            kmeans_1d(v, k)
    with pytest.raises(ConfigError, match="bits must be an integer from 1 to 8, got 9"):
        bits_to_k(9)
    with pytest.raises(InvalidTensorError, match="1 non-finite"):
        kmeans_1d(torch.tensor([1.0, float("nan")]), 2)
    with pytest.raises(InvalidTensorError, match="non-empty"):
        kmeans_1d(torch.zeros(0), 2)
    with pytest.raises(InvalidTensorError, match="importance has shape"):
        kmeans_1d(v, 2, weights=torch.ones(3))
    with pytest.raises(InvalidTensorError, match=">= 0"):
        kmeans_1d(v, 2, weights=-torch.ones(10))
    with pytest.raises(InvalidTensorError, match="zero for every value"):
        kmeans_1d(v, 2, weights=torch.zeros(10))
