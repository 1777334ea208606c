"""Fast exact-Lloyd 1-D k-means for weight sharing (Deep Compression stage 2).

The values are sorted once; in 1-D every cluster of a Lloyd iteration is a contiguous run of
the sorted values, bounded by the midpoints between neighbouring centroids. So an iteration is
a ``searchsorted`` of the k − 1 midpoints plus prefix-sum differences: O(k log n), with no
n × k distance matrix. Labels are mapped back through the sort permutation at the end.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch

from deepzip.errors import ConfigError, InvalidTensorError

__all__ = [
    "KMeansInit",
    "KMeansResult",
    "assign_nearest",
    "bits_to_k",
    "check_inputs",
    "kmeans_1d",
    "weighted_sse",
]

KMeansInit = Literal["linear", "density", "forgy", "kmeans++"]
_MAX_K = 256


@dataclass(frozen=True)
class KMeansResult:
    """A scalar quantizer: sorted codebook plus one label per value.

    Attributes:
        centroids: float32, sorted ascending, ``k`` entries.
        labels: int64 index into ``centroids`` for each input value (input order).
        k_requested: the k asked for.
        k: the k delivered (smaller when the data has fewer distinct values, or levels are
            unused).
        iterations: iterations run.
        sse: importance-weighted sum of squared errors (float64 arithmetic).
        converged: whether the assignment stopped changing.
        notes: what the report should say (k reduced, levels unused).
    """

    centroids: torch.Tensor
    labels: torch.Tensor
    k_requested: int
    k: int
    iterations: int
    sse: float
    converged: bool
    notes: tuple[str, ...]


def bits_to_k(bits: int) -> int:
    """``2 ** bits`` for bits in 1..8."""
    if isinstance(bits, bool) or not isinstance(bits, int) or not 1 <= bits <= 8:
        raise ConfigError(f"bits must be an integer from 1 to 8, got {bits!r}")
    return 1 << bits


def check_inputs(values: torch.Tensor, k: int, weights: torch.Tensor | None) -> torch.Tensor:
    """Validate a quantizer's inputs; returns the importance weights (ones when ``None``)."""
    if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= _MAX_K:
        raise ConfigError(f"k must be an integer from 1 to {_MAX_K}, got {k!r}")
    if values.dim() != 1 or values.numel() == 0:
        raise InvalidTensorError(
            f"values must be a non-empty 1-D tensor, got shape {tuple(values.shape)}"
        )
    if not values.is_floating_point():
        raise InvalidTensorError(f"values must be floating point, got {values.dtype}")
    finite = torch.isfinite(values)
    if not bool(finite.all()):
        bad = int((~finite).sum())
        raise InvalidTensorError(
            f"{bad} non-finite value(s) to quantize (first: {float(values[~finite][0])})"
        )
    if weights is None:
        return torch.ones_like(values, dtype=torch.float32)
    if weights.shape != values.shape:
        raise InvalidTensorError(
            f"importance has shape {tuple(weights.shape)}, the values {tuple(values.shape)}"
        )
    if not bool(torch.isfinite(weights).all()) or bool((weights < 0).any()):
        raise InvalidTensorError("importance must be finite and >= 0")
    if not bool((weights > 0).any()):
        raise InvalidTensorError("importance is zero for every value")
    return weights.to(device=values.device, dtype=torch.float32)


def weighted_sse(
    values: torch.Tensor, centroids: torch.Tensor, labels: torch.Tensor, weights: torch.Tensor
) -> float:
    """``Σ w · (x − centroid[label])²`` in float64."""
    err = values.to(torch.float64) - centroids.to(torch.float64)[labels]
    return float((weights.to(torch.float64) * err * err).sum())


def assign_nearest(values: torch.Tensor, centroids: torch.Tensor) -> torch.Tensor:
    """Index of the nearest centroid for each value (``centroids`` sorted ascending)."""
    mids = (centroids[1:] + centroids[:-1]) / 2
    return torch.searchsorted(mids.contiguous(), values.contiguous(), right=True)


def _quantiles(xs: torch.Tensor, cw: torch.Tensor, k: int) -> torch.Tensor:
    """Values at the weighted CDF levels (i + 0.5) / k of sorted ``xs`` (cumulative ``cw``)."""
    levels = (torch.arange(k, dtype=torch.float64, device=xs.device) + 0.5) / k * cw[-1]
    idx = torch.searchsorted(cw, levels).clamp_(max=xs.numel() - 1)
    return xs[idx]


def _kmeanspp(
    distinct: torch.Tensor, dweights: torch.Tensor, k: int, gen: torch.Generator
) -> torch.Tensor:
    """D² seeding over the distinct values (weighted by their total importance)."""
    probs = dweights / dweights.sum()
    first = int(torch.multinomial(probs.float().cpu(), 1, generator=gen))
    chosen = [first]
    d2 = (distinct - distinct[first]) ** 2
    for _ in range(1, k):
        score = (dweights * d2).float().cpu()
        if float(score.sum()) <= 0:
            break
        nxt = int(torch.multinomial(score, 1, generator=gen))
        chosen.append(nxt)
        d2 = torch.minimum(d2, (distinct - distinct[nxt]) ** 2)
    return distinct[torch.tensor(sorted(set(chosen)), device=distinct.device)]


def _initial(
    xs: torch.Tensor, ws: torch.Tensor, k: int, init: KMeansInit, seed: int
) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    if init == "linear":
        return torch.linspace(float(xs[0]), float(xs[-1]), k, dtype=torch.float64, device=xs.device)
    if init == "density":
        return _quantiles(xs, torch.cumsum(ws, 0), k)
    unique = torch.unique_consecutive(xs, return_inverse=True)
    distinct: torch.Tensor = unique[0]
    inverse: torch.Tensor = unique[1]
    if init == "forgy":
        pick = torch.randperm(distinct.numel(), generator=gen)[:k].to(xs.device)
        return distinct[pick]
    if init == "kmeans++":
        dweights = torch.zeros(distinct.numel(), dtype=torch.float64, device=xs.device)
        dweights.index_add_(0, inverse, ws)
        return _kmeanspp(distinct, dweights, k, gen)
    raise ConfigError(f"init must be 'linear', 'density', 'forgy' or 'kmeans++', got {init!r}")


def kmeans_1d(
    values: torch.Tensor,
    k: int,
    *,
    weights: torch.Tensor | None = None,
    init: KMeansInit = "linear",
    seed: int = 0,
    max_iter: int = 100,
    tol: float = 0.0,
    init_centroids: torch.Tensor | None = None,
) -> KMeansResult:
    """Weighted 1-D k-means (Lloyd's algorithm, exact, on sorted values).

    Empty clusters: a centroid left without members is re-seated at the value with the largest
    weighted squared error (splitting the worst cluster), so the result has ``k`` non-empty
    clusters whenever the data has at least ``k`` distinct values. With fewer distinct values,
    ``k`` is reduced to their count and each distinct value is its own centroid (exact).

    Args:
        values: 1-D finite float tensor (a layer's surviving weights), on any device.
        k: number of clusters, 1..256.
        weights: optional per-value importance (>= 0, not all zero).
        init: ``"linear"`` (evenly over [min, max], the paper's choice), ``"density"`` (evenly
            over the weighted CDF), ``"forgy"`` (random distinct values) or ``"kmeans++"``.
        seed: seeds the random initialisations.
        max_iter: most Lloyd iterations.
        tol: stop when no centroid moves more than this (0: stop when assignments settle).
        init_centroids: explicit starting centroids (overrides ``init``).

    Returns:
        The :class:`KMeansResult`.
    """
    w = check_inputs(values, k, weights)
    if max_iter < 1:
        raise ConfigError(f"max_iter must be >= 1, got {max_iter!r}")
    xs, order = torch.sort(values.to(torch.float64), stable=True)
    ws = w.to(torch.float64)[order]
    distinct = torch.unique_consecutive(xs)
    notes: list[str] = []
    if distinct.numel() <= k:
        if distinct.numel() < k:
            notes.append(
                f"k reduced from {k} to {distinct.numel()}: only "
                f"{distinct.numel()} distinct value(s)"
            )
        centroids = distinct
        labels = torch.searchsorted(distinct, values.to(torch.float64))
        c32 = centroids.to(torch.float32)
        return KMeansResult(
            c32,
            labels,
            k,
            int(distinct.numel()),
            0,
            weighted_sse(values, c32, labels, w),
            True,
            tuple(notes),
        )
    if init_centroids is not None:
        if init_centroids.dim() != 1 or not 1 <= init_centroids.numel() <= _MAX_K:
            raise ConfigError(f"init_centroids must be 1-D with 1..{_MAX_K} entries")
        c = torch.sort(init_centroids.to(device=xs.device, dtype=torch.float64)).values
    else:
        c = torch.sort(_initial(xs, ws, k, init, seed)).values
    zero = torch.zeros(1, dtype=torch.float64, device=xs.device)
    pw = torch.cat([zero, torch.cumsum(ws, 0)])
    px = torch.cat([zero, torch.cumsum(ws * xs, 0)])
    n = xs.numel()
    bounds = None
    converged = False
    iterations = 0
    for step in range(1, max_iter + 1):
        iterations = step
        mids = (c[1:] + c[:-1]) / 2
        ends = torch.cat([torch.searchsorted(xs, mids), torch.tensor([n], device=xs.device)])
        starts = torch.cat([torch.zeros(1, dtype=ends.dtype, device=xs.device), ends[:-1]])
        sw = pw[ends] - pw[starts]
        sx = px[ends] - px[starts]
        new_c = torch.where(sw > 0, sx / sw.clamp(min=1e-300), c)
        empty = torch.nonzero((ends - starts) == 0).flatten()
        if empty.numel():
            new_c = _reseat(xs, ws, new_c, starts, ends, empty)
        new_c = torch.sort(new_c).values
        shift = float((new_c - c).abs().max())
        c = new_c
        if bounds is not None and torch.equal(bounds, ends) and not empty.numel():
            converged = True
            break
        if tol > 0 and shift <= tol and not empty.numel():
            converged = True
            break
        bounds = ends
    labels_sorted = torch.searchsorted(xs, (c[1:] + c[:-1]) / 2)
    seg = torch.zeros(n, dtype=torch.int64, device=xs.device)
    if labels_sorted.numel():
        seg.index_add_(
            0, labels_sorted[labels_sorted < n], torch.ones_like(labels_sorted[labels_sorted < n])
        )
    seg = torch.cumsum(seg, 0)
    labels = torch.empty_like(seg)
    labels[order] = seg
    c32 = c.to(torch.float32)
    if not converged:
        notes.append(f"k-means stopped at max_iter={max_iter} before settling")
    return KMeansResult(
        c32,
        labels,
        k,
        int(c.numel()),
        iterations,
        weighted_sse(values, c32, labels, w),
        converged,
        tuple(notes),
    )


def _reseat(
    xs: torch.Tensor,
    ws: torch.Tensor,
    c: torch.Tensor,
    starts: torch.Tensor,
    ends: torch.Tensor,
    empty: torch.Tensor,
) -> torch.Tensor:
    """Move each empty cluster's centroid to the worst-fit value (largest weighted error)."""
    seg = torch.repeat_interleave(torch.arange(c.numel(), device=xs.device), ends - starts)
    err = ws * (xs - c[seg]) ** 2
    c = c.clone()
    taken: set[float] = set(c.tolist())
    for e in empty.tolist():
        for idx in torch.argsort(err, descending=True, stable=True).tolist():
            v = float(xs[idx])
            if v not in taken:
                c[e] = v
                taken.add(v)
                err[idx] = 0
                break
    return c
