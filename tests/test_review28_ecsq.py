"""ECSQ is Choi, El-Khamy & Lee's (ICLR 2017) Algorithm 1: a Lloyd-like iteration per weight.

It used to move whole uniform bins between clusters, so at λ = 0 it equalled uniform
quantization exactly and a small λ changed nothing.
"""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from deepzip.errors import ConfigError
from deepzip.quantize.kmeans import kmeans_1d
from deepzip.quantize.scalar import ecsq_quantize, uniform_quantize


def _gauss(n: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, generator=torch.Generator().manual_seed(seed))


def _importance(n: int, seed: int = 1) -> torch.Tensor:
    imp = torch.rand(n, generator=torch.Generator().manual_seed(seed)) + 0.2
    imp[::7] = 0.0  # some weights of zero importance
    return imp


def _scale(x: torch.Tensor, h: torch.Tensor) -> float:
    """``1 / (σ² ī)``: the layer's weighted variance times its mean importance."""
    x, h = x.double(), h.double()
    mean = float((h * x).sum() / h.sum())
    var = float((h * (x - mean) ** 2).sum() / h.sum())
    return 1.0 / (var * float(h.mean()))


def _centres(x: torch.Tensor, h: torch.Tensor, labels: list[int]) -> dict[int, float]:
    """Each cluster's importance-weighted mean (plain mean when all its importance is zero)."""
    out = {}
    for j in sorted(set(labels)):
        idx = [i for i, lab in enumerate(labels) if lab == j]
        hs = sum(float(h[i]) for i in idx)
        if hs > 0:
            out[j] = sum(float(h[i]) * float(x[i]) for i in idx) / hs
        else:
            out[j] = sum(float(x[i]) for i in idx) / len(idx)
    return out


def _lagrangian(x: torch.Tensor, h: torch.Tensor, labels: torch.Tensor, lam: float) -> float:
    """J = Σ h (w − c)² / (σ² ī) + λ Σ −log2 p, with c the clusters' weighted means."""
    lab = labels.tolist()
    c = _centres(x, h, lab)
    scale = _scale(x, h)
    n = len(lab)
    counts = {j: lab.count(j) for j in c}
    d = sum(float(h[i]) * (float(x[i]) - c[lab[i]]) ** 2 for i in range(n)) * scale
    r = sum(-math.log2(counts[lab[i]] / n) for i in range(n))
    return d + lam * r


def _reference_weighted_lloyd(x: torch.Tensor, h: torch.Tensor, k: int, iters: int) -> list[int]:
    """Plain-Python weighted Lloyd from the uniform quantizer's occupied bins; a weight keeps
    its cluster on a tie, empty clusters disappear."""
    lab = uniform_quantize(x, k).labels.tolist()
    xs, hs = [float(v) for v in x], [float(v) for v in h]
    for _ in range(iters):
        c = _centres(x, h, lab)
        new = []
        for i, v in enumerate(xs):
            costs = {j: hs[i] * (v - cj) ** 2 for j, cj in c.items()}
            best = min(costs.values())
            new.append(lab[i] if costs[lab[i]] <= best else min(j for j in c if costs[j] == best))
        if new == lab:
            break
        lab = new
    return lab


def _same_partition(a: list[int], b: list[int]) -> bool:
    pairs = set(zip(a, b, strict=True))
    return len(pairs) == len(set(a)) == len(set(b))


def _entropy(labels: torch.Tensor) -> float:
    p = torch.bincount(labels).double() / labels.numel()
    p = p[p > 0]
    return float(-(p * torch.log2(p)).sum())


@pytest.mark.parametrize("weighted", [False, True])
@pytest.mark.parametrize("k", [3, 8])
def test_ecsq_at_zero_lambda_is_weighted_lloyd_from_the_uniform_centres(
    weighted: bool, k: int
) -> None:
    x = _gauss(300, seed=k)
    h = _importance(300) if weighted else torch.ones(300)
    ref = _reference_weighted_lloyd(x, h, k, 200)
    r = ecsq_quantize(x, k, 0.0, weights=h if weighted else None, max_iter=200)
    assert r.converged
    assert _same_partition(r.labels.tolist(), ref)
    want = sorted(_centres(x, h, ref).values())
    torch.testing.assert_close(r.centroids.double(), torch.tensor(want, dtype=torch.float64))


def test_ecsq_at_zero_lambda_beats_uniform_and_nears_kmeans() -> None:
    # 20,000 Gaussian samples, 16 levels: the old cell-moving ECSQ gave uniform's SSE (454)
    x = _gauss(20_000)
    u = uniform_quantize(x, 16).sse
    e = ecsq_quantize(x, 16, 0.0, max_iter=1000).sse
    km = kmeans_1d(x, 16).sse
    assert e < 0.5 * u
    assert e < 1.01 * km
    # a small λ already changes the result
    small = ecsq_quantize(x, 16, 0.01, max_iter=1000)
    assert small.sse != e


@pytest.mark.parametrize("lam", [0.0, 0.02, 0.1])
def test_the_lagrangian_cost_never_increases(lam: float) -> None:
    x = _gauss(400, seed=5)
    h = _importance(400)
    costs = []
    for it in range(1, 9):
        r = ecsq_quantize(x, 16, lam, weights=h, max_iter=it)
        costs.append(_lagrangian(x, h, r.labels, lam))
    for before, after in itertools.pairwise(costs):
        assert after <= before * (1 + 1e-9) + 1e-9
    assert costs[-1] < costs[0]


def test_larger_lambda_does_not_raise_the_entropy() -> None:
    x = _gauss(5000, seed=2)
    ent = [_entropy(ecsq_quantize(x, 32, lam, max_iter=500).labels) for lam in (0.0, 0.02, 0.1)]
    assert ent == sorted(ent, reverse=True)
    assert ent[-1] < ent[0] - 0.5


@pytest.mark.parametrize("lam", [0.0, 0.05])
def test_every_weight_sits_in_its_least_cost_cluster_at_convergence(lam: float) -> None:
    x = _gauss(2000, seed=9)
    h = _importance(2000)
    r = ecsq_quantize(x, 16, lam, weights=h, max_iter=1000)
    assert r.converged
    lab = r.labels
    c = torch.tensor(
        [v for _, v in sorted(_centres(x, h, lab.tolist()).items())], dtype=torch.float64
    )
    p = torch.bincount(lab).double() / lab.numel()
    cost = h.double()[:, None] * (x.double()[:, None] - c[None, :]) ** 2 * _scale(x, h)
    cost = cost - lam * torch.log2(p)[None, :]
    own = cost.gather(1, lab[:, None]).squeeze(1)
    assert bool((own <= cost.min(dim=1).values + 1e-9).all())


def test_ecsq_is_deterministic() -> None:
    x = _gauss(30_000, seed=3)
    h = _importance(30_000)
    a = ecsq_quantize(x, 64, 0.03, weights=h)
    b = ecsq_quantize(x.clone(), 64, 0.03, weights=h.clone())
    assert torch.equal(a.labels, b.labels)
    assert torch.equal(a.centroids, b.centroids)
    assert a.sse.hex() == b.sse.hex()


def test_ecsq_matches_for_any_row_block_size(monkeypatch: pytest.MonkeyPatch) -> None:
    import deepzip.quantize.ecsq_assign as ecsq_assign

    x = _gauss(5000, seed=4)
    h = _importance(5000)
    for w in (None, h):
        whole = ecsq_quantize(x, 32, 0.02, weights=w)
        with monkeypatch.context() as patch:
            patch.setattr(ecsq_assign, "_MIN_BLOCK", 7)  # blocks of 7 weights
            blocked = ecsq_quantize(x, 32, 0.02, weights=w)
        assert torch.equal(whole.labels, blocked.labels)
        assert torch.equal(whole.centroids, blocked.centroids)
        assert whole.iterations == blocked.iterations


@pytest.mark.parametrize(
    "device",
    [
        "cpu",
        pytest.param(
            "cuda",
            marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA"),
        ),
    ],
)
def test_outputs_are_on_the_inputs_device(device: str) -> None:
    x = _gauss(3000, seed=6).to(device)
    h = _importance(3000).to(device)
    r = ecsq_quantize(x, 16, 0.05, weights=h)
    assert r.labels.device == x.device
    assert r.centroids.device == x.device
    again = ecsq_quantize(x, 16, 0.05, weights=h)
    assert torch.equal(r.labels, again.labels)
    assert torch.equal(r.centroids, again.centroids)
    if device != "cpu":
        cpu = ecsq_quantize(x.cpu(), 16, 0.05, weights=h.cpu())
        assert r.k == cpu.k
        assert abs(r.sse - cpu.sse) <= 1e-6 * cpu.sse


@pytest.mark.parametrize("bad", [-1.0, math.nan, math.inf, "0.1", None])
def test_bad_lambda_is_refused(bad: object) -> None:
    with pytest.raises(ConfigError, match="ECSQ lambda must be a finite number >= 0"):
        ecsq_quantize(_gauss(10), 4, bad)  # type: ignore[arg-type]
