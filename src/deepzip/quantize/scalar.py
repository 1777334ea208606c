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

*ECSQ* (the iterative, Lloyd-like algorithm of Choi et al. 2017, their Algorithm 1, after
Chou, Lookabaugh & Gray 1989): start from the centres of the uniform quantizer's occupied bins
(their weighted means) and their shares of the values ``p``, then repeat: assign each weight
``w`` to the cluster with the least Lagrangian cost ``importance·(w − c)² / (σ²·ī) +
λ·(−log2 p)``, update each centre ``c`` (its members' importance-weighted mean; their plain
mean if all have zero importance) and probability ``p`` (its share of the values), and drop the
clusters left empty, until no weight changes cluster (a weight whose cost ties keeps its
cluster) or ``max_iter`` rounds. Neither step can raise the total cost ``Σ importance·(w − c)²
/ (σ²·ī) + λ·Σ −log2 p``. With ``λ = 0`` this is importance-weighted k-means started from the
uniform quantizer's centres; a larger ``λ`` pulls weights into the more probable clusters and
empties the rare ones (fewer levels, a lower entropy rate, more distortion). Distortion is
divided by the layer's weighted variance ``σ²`` and by its mean importance ``ī``, so one ``λ``
means the same for every layer whatever the scale of its weights and of its importance (a
Fisher estimate is often ~1e-8; only the importance's relative sizes matter). Each round
evaluates only the clusters that can be a weight's least cost (:mod:`.ecsq_assign`: usually
one to three per weight, not ``k``), in memory linear in the number of weights, with the
labels the whole cost matrix would give.
"""

from __future__ import annotations

import math

import torch

from deepzip.errors import ConfigError
from deepzip.quantize.ecsq_assign import SortedBlocks
from deepzip.quantize.kmeans import KMeansResult, check_inputs, sum_float64, weighted_sse

__all__ = ["MAX_GRID_SPAN", "check_step", "ecsq_quantize", "step_quantize", "uniform_quantize"]

MAX_GRID_SPAN = 1 << 20
"""Most grid points between a layer's extreme weights that :func:`step_quantize` considers."""


def _cells(values: torch.Tensor, k: int) -> torch.Tensor:
    """Uniform bin index of each value over ``[min, max]`` (``k`` bins), as int32 (half the
    memory of int64 labels until :func:`_finish` has computed the SSE)."""
    lo, hi = values.min(), values.max()
    if float(hi) == float(lo):
        return torch.zeros_like(values, dtype=torch.int32)
    scaled = values.to(torch.float64, copy=True)  # (x − lo) / (hi − lo) · k, in place
    scaled.sub_(float(lo)).div_(float(hi) - float(lo)).mul_(k)
    return scaled.floor_().clamp_(0, k - 1).to(torch.int32)


def _finish(
    values: torch.Tensor,
    weights: torch.Tensor | None,
    cluster_of_value: torch.Tensor,
    k_requested: int,
    iterations: int,
    converged: bool,
    notes: list[str],
) -> KMeansResult:
    """Drop empty clusters, sort centres, relabel, and compute the SSE (``weights=None``:
    importance 1 everywhere, the same sums without a tensor of ones).

    ``cluster_of_value`` is int32 or int64. The SSE is computed from it, through a table of
    each cluster's final centroid, before the int64 labels exist: the errors (8 bytes a
    value) and the labels are never held at once.
    """
    n_clusters = int(cluster_of_value.max()) + 1
    x = values.to(torch.float64)
    count = torch.bincount(cluster_of_value, minlength=n_clusters)
    used = count > 0
    # a cluster whose members all have zero importance takes their plain mean
    plain = torch.zeros(n_clusters, dtype=torch.float64, device=values.device)
    plain.index_add_(0, cluster_of_value, x)
    if weights is None:  # Σ 1 is the count, Σ 1·x the plain sum: exactly
        wsum, xsum = count.to(torch.float64), plain
    else:
        w = weights.to(torch.float64)
        wsum = torch.zeros_like(plain).index_add_(0, cluster_of_value, w)
        xsum = torch.zeros_like(plain).index_add_(0, cluster_of_value, w * x)
        del w
    del x
    centre = torch.where(wsum > 0, xsum / wsum.clamp(min=1e-300), plain / count.clamp(min=1))
    order = torch.argsort(centre[used], stable=True)
    centroids = centre[used][order]
    # each cluster's label (an empty cluster has no member: 0 stands in for it)
    remap = torch.zeros(n_clusters, dtype=torch.int64, device=values.device)
    remap[torch.nonzero(used).flatten()[order]] = torch.arange(
        centroids.numel(), device=values.device
    )
    if centroids.numel() < k_requested:
        notes.append(f"{k_requested - centroids.numel()} of {k_requested} levels unused")
    centroids32 = centroids.to(torch.float32)
    if centroids32.numel() > 1 and bool((centroids32[1:] == centroids32[:-1]).any()):
        # (float64 values) centres closer than float32 resolution become one level
        centroids32, merged = torch.unique_consecutive(centroids32, return_inverse=True)
        remap = merged[remap]
        notes.append(
            f"{centroids.numel() - centroids32.numel()} level(s) closer than float32 "
            "resolution were merged"
        )
    # the SSE against centroids32[label], read through the cluster numbers: the same errors
    sse = weighted_sse(values, centroids32.to(torch.float64)[remap], cluster_of_value, weights)
    labels = torch.index_select(remap, 0, cluster_of_value)  # ([] would copy int32 to int64)
    del cluster_of_value  # (freed here unless the caller holds it)
    k_eff = int(centroids32.numel())
    return KMeansResult(
        centroids=centroids32,
        labels=labels,
        k_requested=k_requested,
        k=k_eff,
        iterations=iterations,
        sse=sse,
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
    w: torch.Tensor | None = check_inputs(values, k, weights)
    if weights is None:
        w = None  # (ones: _finish needs none)
    # (the bins go straight to _finish, which lets go of them once it has the labels)
    return _finish(values, w, _cells(values, k), k, 0, True, [])


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
    del x
    return _finish(values, None if weights is None else w, cell, used, 0, True, [])


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
    """Entropy-constrained scalar quantization, started from ``k`` uniform bins (see the
    module doc).

    Args:
        values: 1-D finite float tensor (the surviving weights).
        k: number of uniform bins that give the starting centres (the most levels the result
            can have), 1..256.
        lam: the rate weight ``λ >= 0``; 0 gives importance-weighted k-means started from the
            uniform quantizer's centres.
        weights: optional per-value importance (>= 0).
        max_iter: most assignment/update rounds.
    """
    if isinstance(lam, bool) or not (
        isinstance(lam, (int, float)) and math.isfinite(lam) and lam >= 0
    ):
        raise ConfigError(f"ECSQ lambda must be a finite number >= 0, got {lam!r}")
    if isinstance(max_iter, bool) or not isinstance(max_iter, int) or max_iter < 1:
        raise ConfigError(f"max_iter must be an integer >= 1, got {max_iter!r}")
    checked = check_inputs(values, k, weights)
    w = checked.to(torch.float64)
    w32 = None if weights is None else checked  # (ones: _finish needs none)
    del checked
    x = values.to(torch.float64)
    n = x.numel()
    h = w * _distortion_scale(x, w)
    # start: the uniform quantizer's occupied bins (their weighted means, their shares)
    # (labels are int32 throughout: 4 bytes a weight in each of the round's label arrays)
    _, label = torch.unique(_cells(values, k), return_inverse=True)
    label = label.to(torch.int32)
    blocks = SortedBlocks(x, h, k, banded=weights is not None)
    del h
    label = blocks.sort(label)  # (block order from here on; see ecsq_assign)
    # what the clusters sum, once, on the CPU (see below); without importance w is 1: its
    # sums are the counts and w·x is x
    sums_of = (w.cpu(), (w * x).cpu(), x.cpu()) if weights is not None else (None, None, x.cpu())
    del w
    iterations, converged = 0, False
    for step in range(1, max_iter + 1):
        iterations = step
        # (the sums run in the original order: index_add_ adds in index order)
        centre, rate = _centres_and_rates(sums_of, blocks.unsort(label), n, x.device)
        # each weight to its cluster of least cost h (w − c)² + λ (−log2 p), the lowest on a
        # tie; a tie with its own cluster keeps it there (a weight of zero importance costs
        # the same in every cluster at λ = 0, and must not move to cluster 0)
        new_label = blocks.assign(label, centre, lam * rate)
        # drop the clusters left empty, keeping the numbering compact (the padding at the
        # end of the last block repeats its last weight, so it changes neither)
        used = torch.bincount(new_label.flatten(), minlength=centre.numel()) > 0
        renumber = (torch.cumsum(used, 0) - 1).to(torch.int32)
        new_label = torch.index_select(renumber, 0, new_label.flatten()).view(new_label.shape)
        if torch.equal(new_label, label):
            converged = True
            break
        label = new_label
    label = blocks.unsort(label)
    del blocks, sums_of, x  # (the sorted copies and sums: 16-40 bytes a weight, not needed)
    notes = [] if converged else [f"ECSQ stopped at max_iter={max_iter} before it settled"]
    return _finish(values, w32, label, k, iterations, converged, notes)


def _distortion_scale(x: torch.Tensor, w: torch.Tensor) -> float:
    """``1 / (σ² ī)``: per-weight distortion in units of the layer's importance-weighted
    variance and its mean importance (see the module doc), so that scaling every weight or
    every importance by a constant changes nothing; ``1 / ī`` when the variance is 0.

    ``x`` and ``w`` are float64 values and their importance (ones when there is none)."""
    n = x.numel()
    total_w = sum_float64(w)
    mean = sum_float64(w * x) / total_w if total_w > 0 else sum_float64(x) / n
    var = sum_float64(w * (x - mean) ** 2) / total_w if total_w > 0 else 0.0
    mean_imp = total_w / n if total_w > 0 else 1.0
    return 1.0 / (var * mean_imp) if var > 0 else 1.0 / mean_imp


def _centres_and_rates(
    sums_of: tuple[torch.Tensor | None, torch.Tensor | None, torch.Tensor],
    label: torch.Tensor,
    n: int,
    device: torch.device,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Each cluster's importance-weighted mean (the plain mean where all its members have
    zero importance) and code length ``−log2 p`` (``p`` its share of the ``n`` values), on
    ``device``; every label from 0 to ``label.max()`` must be used.

    ``sums_of`` is ``(w, w·x, x)`` on the CPU, or ``(None, None, x)`` for importance 1
    (whose sums are the counts and the sums of ``x``, exactly). ATen's CPU ``index_add_`` adds
    in index order, whatever the number of threads; on CUDA it adds in a racing order, and
    prefix sums in label order lose a cluster of small values to cancellation against the
    running total (members 4 and 6 gave a centre of 6.3), so the sums are taken on the CPU
    whatever the device.
    """
    cpu_label = label.cpu()
    count = torch.bincount(cpu_label)
    w, wx, x = sums_of
    sx = torch.zeros(count.numel(), dtype=x.dtype).index_add_(0, cpu_label, x).to(device)
    counts = count.to(device=device, dtype=torch.float64)
    if w is None or wx is None:
        return sx / counts, -torch.log2(counts / n)
    sw, s1 = (
        torch.zeros(count.numel(), dtype=v.dtype).index_add_(0, cpu_label, v).to(device)
        for v in (w, wx)
    )
    centre = torch.where(sw > 0, s1 / sw.clamp(min=1e-300), sx / counts)
    return centre, -torch.log2(counts / n)
