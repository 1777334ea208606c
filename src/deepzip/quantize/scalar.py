"""Uniform and entropy-constrained scalar quantization (Choi, El-Khamy & Lee, ICLR 2017).

Both work on a layer's surviving weights with optional per-weight importance and return the
same :class:`~deepzip.quantize.kmeans.KMeansResult` as k-means: a sorted codebook plus one
label per value.

*Uniform*: ``k`` equal-width bins over ``[min, max]``; each bin's centre is the (importance-)
weighted mean of its members. Empty bins are dropped.

*Step* (:func:`step_quantize`): a grid of a fixed step ``Δ`` with zero as a level (mid-tread),
the same ``Δ`` for every layer, as NNCodec/DeepCABAC quantize: a weight goes to the nearest
multiple of ``Δ``, each used grid point is represented by its members' weighted mean, and the
number of levels is whatever the layer's range needs. One absolute step spends the same
distortion per weight everywhere, so small layers with large weights get many levels and a
large layer of small weights few; with an entropy coder the rate follows.

*ECSQ* (the iterative algorithm of Chou, Lookabaugh & Gray 1989, as used by Choi et al.): start
from the uniform quantizer's bins ("cells"), then repeat: assign each cell to the cluster with the
least Lagrangian cost ``Σ importance·(w − c)² / (σ²·ī) + λ·n·(−log2 p_c)``, and update each
centre ``c`` (weighted mean) and probability ``p`` (share of values). Cells move as units, so
with ``λ = 0`` every cell stays its own cluster and ECSQ equals uniform quantization exactly; a
larger ``λ`` merges cells into fewer, more probable clusters (a lower entropy rate). Distortion
is divided by the layer's weighted variance ``σ²`` and by its mean importance ``ī``, so one
``λ`` means the same for every layer whatever the scale of its weights and of its importance
(a Fisher estimate is often ~1e-8; only the importance's relative sizes matter).
"""

from __future__ import annotations

import math

import torch

from deepzip.errors import ConfigError
from deepzip.quantize.kmeans import KMeansResult, check_inputs, weighted_sse

__all__ = ["MAX_GRID_SPAN", "check_step", "ecsq_quantize", "step_quantize", "uniform_quantize"]

MAX_GRID_SPAN = 1 << 20
"""Most grid points between a layer's extreme weights that :func:`step_quantize` considers."""


def _cells(values: torch.Tensor, k: int) -> torch.Tensor:
    """Uniform bin index of each value over ``[min, max]`` (``k`` bins)."""
    lo, hi = values.min(), values.max()
    if float(hi) == float(lo):
        return torch.zeros_like(values, dtype=torch.int64)
    scaled = (values.to(torch.float64) - float(lo)) / (float(hi) - float(lo)) * k
    return scaled.floor().clamp_(0, k - 1).to(torch.int64)


def _finish(
    values: torch.Tensor,
    weights: torch.Tensor,
    cluster_of_value: torch.Tensor,
    k_requested: int,
    iterations: int,
    converged: bool,
    notes: list[str],
) -> KMeansResult:
    """Drop empty clusters, sort centres, relabel, and compute the SSE."""
    n_clusters = int(cluster_of_value.max()) + 1
    w = weights.to(torch.float64)
    wsum = torch.zeros(n_clusters, dtype=torch.float64, device=values.device)
    xsum = torch.zeros_like(wsum)
    count = torch.zeros(n_clusters, dtype=torch.int64, device=values.device)
    wsum.index_add_(0, cluster_of_value, w)
    xsum.index_add_(0, cluster_of_value, w * values.to(torch.float64))
    count.index_add_(0, cluster_of_value, torch.ones_like(cluster_of_value))
    used = count > 0
    # a cluster whose members all have zero importance takes their plain mean
    plain = torch.zeros_like(wsum).index_add_(0, cluster_of_value, values.to(torch.float64))
    centre = torch.where(wsum > 0, xsum / wsum.clamp(min=1e-300), plain / count.clamp(min=1))
    order = torch.argsort(centre[used], stable=True)
    centroids = centre[used][order]
    remap = torch.full((n_clusters,), -1, dtype=torch.int64, device=values.device)
    remap[torch.nonzero(used).flatten()[order]] = torch.arange(
        centroids.numel(), device=values.device
    )
    labels = remap[cluster_of_value]
    if centroids.numel() < k_requested:
        notes.append(f"{k_requested - centroids.numel()} of {k_requested} levels unused")
    centroids32 = centroids.to(torch.float32)
    if centroids32.numel() > 1 and bool((centroids32[1:] == centroids32[:-1]).any()):
        # (float64 values) centres closer than float32 resolution become one level
        centroids32, merged = torch.unique_consecutive(centroids32, return_inverse=True)
        labels = merged[labels]
        notes.append(
            f"{centroids.numel() - centroids32.numel()} level(s) closer than float32 "
            "resolution were merged"
        )
    k_eff = int(centroids32.numel())
    return KMeansResult(
        centroids=centroids32,
        labels=labels,
        k_requested=k_requested,
        k=k_eff,
        iterations=iterations,
        sse=weighted_sse(values, centroids32, labels, weights),
        converged=converged,
        notes=tuple(notes),
    )


def uniform_quantize(
    values: torch.Tensor, k: int, *, weights: torch.Tensor | None = None
) -> KMeansResult:
    """Uniform bins over ``[min, max]``, each represented by its weighted mean.

    Args:
        values: 1-D finite float tensor (the surviving weights).
        k: number of bins, 1..256.
        weights: optional per-value importance (>= 0).
    """
    w = check_inputs(values, k, weights)
    cells = _cells(values, k)
    return _finish(values, w, cells, k, 0, True, [])


def check_step(step: object) -> None:
    """Raise :class:`ConfigError` unless ``step`` is a finite number > 0 (not a bool)."""
    if (
        isinstance(step, bool)
        or not isinstance(step, (int, float))
        or not math.isfinite(step)
        or step <= 0
    ):
        raise ConfigError(f"step must be a finite number > 0, got {step!r}")


def step_quantize(
    values: torch.Tensor,
    step: float,
    *,
    max_levels: int = 256,
    weights: torch.Tensor | None = None,
    name: str = "values",
) -> KMeansResult:
    """Round to the grid ``Δ·ℤ`` (``step = Δ``); each used grid point becomes its members'
    (importance-)weighted mean.

    Args:
        values: 1-D finite float tensor (the surviving weights).
        step: the grid step ``Δ > 0``.
        max_levels: most grid points the values may use (the index alphabet).
        weights: optional per-value importance (>= 0).
        name: the tensor's name, for error messages.

    Raises:
        ConfigError: a step that is not a finite number > 0, or one so small that the values
            use more than ``max_levels`` grid points (the message gives a step that fits);
            ``max_levels`` not an integer from 1 to 256.
    """
    check_step(step)
    levels_ok = isinstance(max_levels, int) and not isinstance(max_levels, bool)
    if not levels_ok or not 1 <= max_levels <= 256:
        raise ConfigError(f"max_levels must be an integer from 1 to 256, got {max_levels!r}")
    w = check_inputs(values, max_levels, weights)
    x = values.to(torch.float64)
    lo, hi = float(x.min()), float(x.max())
    top, bottom = hi / step, lo / step  # overflow to infinity for a tiny enough step
    span = round(top) - round(bottom) + 1 if math.isfinite(top - bottom) else None
    if span is None or span > MAX_GRID_SPAN:
        spans = f"{span}" if span is not None else "too many"
        raise ConfigError(
            f"{name}: step {step:g} spans {spans} grid points over [{lo:g}, {hi:g}]; "
            f"at most {max_levels} levels fit: use a step of at least "
            f"{_fitting_step(lo, hi, max_levels):.3g}"
        )
    cell = torch.round(x / step).to(torch.int64)
    cell -= int(cell.min())
    used = int(torch.unique(cell).numel())
    if used > max_levels:
        raise ConfigError(
            f"{name}: step {step:g} uses {used} levels over [{lo:g}, {hi:g}], more than "
            f"{max_levels}: use a step of at least {_fitting_step(lo, hi, max_levels):.3g}"
        )
    return _finish(values, w, cell, used, 0, True, [])


def _fitting_step(lo: float, hi: float, levels: int) -> float:
    """A step (3 significant digits) with which values in ``[lo, hi]`` use at most ``levels``
    grid points.

    Rounding to the grid moves each end by at most half a step, so a step ``Δ`` spans at most
    ``(hi − lo)/Δ + 1`` grid intervals, fewer than ``levels`` once ``Δ > (hi − lo)/(levels −
    1)``; a single level needs every value to round to zero, ``Δ > 2·max(|lo|, |hi|)``. The
    bound is exclusive, so it is rounded up to the next 3-digit number.
    """
    bound = 2 * max(abs(lo), abs(hi)) if levels == 1 else (hi - lo) / (levels - 1)
    if bound <= 0 or not math.isfinite(bound):
        return bound
    quantum = 10.0 ** (math.floor(math.log10(bound)) - 2)
    return (math.floor(bound / quantum) + 1) * quantum


def ecsq_quantize(
    values: torch.Tensor,
    k: int,
    lam: float,
    *,
    weights: torch.Tensor | None = None,
    max_iter: int = 100,
) -> KMeansResult:
    """Entropy-constrained scalar quantization over ``k`` uniform cells (see the module doc).

    Args:
        values: 1-D finite float tensor (the surviving weights).
        k: number of uniform cells (the most levels the result can have), 1..256.
        lam: the rate weight ``λ >= 0``; 0 gives uniform quantization.
        weights: optional per-value importance (>= 0).
        max_iter: most assignment/update rounds.
    """
    if not (isinstance(lam, (int, float)) and math.isfinite(lam) and lam >= 0):
        raise ConfigError(f"ECSQ lambda must be a finite number >= 0, got {lam!r}")
    if isinstance(max_iter, bool) or not isinstance(max_iter, int) or max_iter < 1:
        raise ConfigError(f"max_iter must be an integer >= 1, got {max_iter!r}")
    w = check_inputs(values, k, weights).to(torch.float64)
    x = values.to(torch.float64)
    cells = _cells(values, k)
    dev = values.device
    # per-cell sufficient statistics
    cw = torch.zeros(k, dtype=torch.float64, device=dev).index_add_(0, cells, w)
    c1 = torch.zeros_like(cw).index_add_(0, cells, w * x)
    c2 = torch.zeros_like(cw).index_add_(0, cells, w * x * x)
    cn = torch.zeros_like(cw).index_add_(0, cells, torch.ones_like(x))
    cx = torch.zeros_like(cw).index_add_(0, cells, x)  # plain sums (zero-importance clusters)
    occupied = torch.nonzero(cn > 0).flatten()
    cw, c1, c2, cn, cx = cw[occupied], c1[occupied], c2[occupied], cn[occupied], cx[occupied]
    total_w = float(cw.sum())
    mean = float(c1.sum()) / total_w if total_w > 0 else float(x.mean())
    var = float(c2.sum()) / total_w - mean * mean if total_w > 0 else 0.0
    n_total = float(cn.sum())
    # per-value distortion in units of the layer's variance and mean importance (see the
    # module doc): scaling every weight or every importance by a constant changes nothing
    mean_imp = total_w / n_total if total_w > 0 else 1.0
    scale = 1.0 / (var * mean_imp) if var > 0 else 1.0 / mean_imp
    assign = torch.arange(occupied.numel(), device=dev)  # cell -> cluster
    iterations, converged = 0, False
    for step in range(1, max_iter + 1):
        iterations = step
        n_cl = int(assign.max()) + 1
        sw = torch.zeros(n_cl, dtype=torch.float64, device=dev).index_add_(0, assign, cw)
        s1 = torch.zeros_like(sw).index_add_(0, assign, c1)
        sn = torch.zeros_like(sw).index_add_(0, assign, cn)
        sx = torch.zeros_like(sw).index_add_(0, assign, cx)
        # every cluster holds at least one occupied cell (the numbering is compact); one whose
        # members all have zero importance sits at their plain mean, as in the result
        centre = torch.where(sw > 0, s1 / sw.clamp(min=1e-300), sx / sn)
        rate = -torch.log2(sn / n_total)
        # cost[cell, cluster] = Σ imp (w - c)^2 / (σ² ī) + λ n log2(1/p)
        distortion = c2[:, None] - 2 * c1[:, None] * centre[None, :] + cw[:, None] * centre**2
        cost = distortion * scale + lam * cn[:, None] * rate[None, :]
        new_assign = torch.argmin(cost, dim=1)
        # a tie keeps the cell where it is (a cell of zero importance costs the same in every
        # cluster at λ = 0, and must not move to cluster 0)
        own = cost.gather(1, assign[:, None]).squeeze(1)
        new_assign = torch.where(own <= cost.min(dim=1).values, assign, new_assign)
        # keep the numbering compact
        _, new_assign = torch.unique(new_assign, return_inverse=True)
        if torch.equal(new_assign, assign):
            converged = True
            break
        assign = new_assign
    cell_to_cluster = torch.zeros(k, dtype=torch.int64, device=dev)
    cell_to_cluster[occupied] = assign
    notes = [] if converged else [f"ECSQ stopped at max_iter={max_iter} before it settled"]
    return _finish(
        values,
        check_inputs(values, k, weights),
        cell_to_cluster[cells],
        k,
        iterations,
        converged,
        notes,
    )
