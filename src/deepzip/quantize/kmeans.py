"""Fast exact-Lloyd 1-D k-means for weight sharing (Deep Compression stage 2).

In one dimension every cluster of a Lloyd iteration is a contiguous run of the sorted values,
bounded by the midpoints between neighbouring centroids. So the values are sorted once
(O(n log n)), float64 prefix sums of the importance ``w`` and of ``w·x`` are built over the
sorted order, and each iteration is a ``searchsorted`` of the k − 1 midpoints plus prefix-sum
differences: O(k log n), with no n × k distance matrix. Labels are mapped back to the input order
through the sort permutation once, at the end. Everything stays on the values' device.

Equal values are merged first (their importances summed), so the work is done on the distinct
values; "k is reduced" whenever fewer than k distinct values carry a non-zero importance, and the
result is then exact (each such value is a centroid).

:func:`optimal_kmeans_1d` is the exact optimum (dynamic programming with divide-and-conquer
optimisation, O(k · n log n)) for quality checks on small inputs.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass, replace
from typing import Literal

import numpy as np
import torch

from deepzip.errors import ConfigError, InvalidTensorError

__all__ = [
    "DEFAULT_MAX_ITER",
    "MAX_K",
    "OPTIMAL_MAX_VALUES",
    "KMeansInit",
    "KMeansResult",
    "assign_nearest",
    "bits_to_k",
    "check_float32_range",
    "check_inputs",
    "initial_centroids",
    "kmeans_1d",
    "optimal_kmeans_1d",
    "sum_float64",
    "weighted_sse",
]

KMeansInit = Literal["linear", "density", "forgy", "kmeans++"]
_INITS = ("linear", "density", "forgy", "kmeans++")

MAX_K = 256
"""The largest codebook (8-bit indices)."""

OPTIMAL_MAX_VALUES = 20_000
"""The most values :func:`optimal_kmeans_1d` accepts (it is a quality check, not a quantizer)."""

_KMEANSPP_SAMPLE = 1 << 17
"""k-means++ seeds from a weighted sample of this many values when there are more (see below)."""

_BLOCK = 1 << 20
"""Values worked on at a time in the O(n) passes that need a temporary (a value's count ×
value in ``_prepare``, the SSE's importance in ``_codebook``, the labels' float64 copy in
``_result``): 8 MB a temporary."""

_CPU_SEARCH_CHUNK = 200
"""ATen's CPU ``searchsorted`` goes multi-threaded above 200 queries; for the k − 1 midpoints
of an iteration waking the thread pool costs far more than the search, so search in chunks."""


@dataclass(frozen=True)
class KMeansResult:
    """A scalar quantizer: sorted codebook plus one label per value.

    Attributes:
        centroids: float32, sorted ascending, ``k`` distinct entries, on the values' device.
        labels: int64 index into ``centroids`` for each input value (input order). From k-means
            always the nearest centroid (a value exactly half-way goes to the upper one); the
            scalar quantizers (:mod:`deepzip.quantize.scalar`) keep each value in its bin or
            cell's cluster, which need not be the nearest.
        k_requested: the k asked for.
        k: the k delivered (smaller when the data has fewer distinct values, or levels are
            unused).
        iterations: Lloyd iterations run (each is one assignment and one update).
        sse: importance-weighted sum of squared errors of the values to their centroids,
            computed in float64 (on CPU the same for every thread count).
        converged: whether the centroids are a Lloyd fixed point (the assignment stopped
            changing), or moved no more than ``tol``.
        notes: what the report should say (k reduced, iteration limit reached).
    """

    centroids: torch.Tensor
    labels: torch.Tensor
    k_requested: int
    k: int
    iterations: int
    sse: float
    converged: bool
    notes: tuple[str, ...]


# --------------------------------------------------------------------------------------------
# validation and small helpers


# Lloyd iterations are cheap once the values are sorted (see kmeans_1d), so the default cap is
# well above scikit-learn's 300: on heavy-tailed weights Lloyd keeps lowering the SSE for
# hundreds of iterations.
DEFAULT_MAX_ITER = 1000


def bits_to_k(bits: int) -> int:
    """Codebook size for an index width: ``2 ** bits`` for bits in 1..8.

    Raises:
        ConfigError: ``bits`` is not an integer from 1 to 8.
    """
    if isinstance(bits, bool) or not isinstance(bits, int) or not 1 <= bits <= 8:
        raise ConfigError(f"bits must be an integer from 1 to 8, got {bits!r}")
    return 1 << bits


def _check_k(k: int) -> None:
    if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= MAX_K:
        raise ConfigError(f"k must be an integer from 1 to {MAX_K}, got {k!r}")


def _check_shape(values: torch.Tensor, name: str) -> None:
    if values.dim() != 1 or values.numel() == 0:
        raise InvalidTensorError(
            f"{name} must be a non-empty 1-D tensor, got shape {tuple(values.shape)}"
        )
    if not values.is_floating_point():
        raise InvalidTensorError(f"{name} must be floating point, got {values.dtype}")


def _check_finite(values: torch.Tensor, name: str, what: str) -> None:
    finite = torch.isfinite(values)
    if not bool(finite.all()):
        bad = int((~finite).sum())
        first = int((~finite).nonzero()[0])
        raise InvalidTensorError(
            f"{name}: {bad} non-finite value(s) {what} "
            f"(first at index {first}: {float(values[first])})"
        )


def check_float32_range(
    name: str,
    values: torch.Tensor,
    mask: torch.Tensor | None = None,
    *,
    noun: str = "value(s)",
    of: str = "the codebook",
) -> None:
    """Finite float64 ``values`` (those under ``mask``, when given) must stay finite as
    float32, the type of codebooks and levels; other dtypes pass.

    Raises:
        InvalidTensorError: naming ``name``, how many ``noun`` are beyond float32's range and
            the first of them.
    """
    if values.dtype != torch.float64:
        return
    values = values.detach()
    beyond = ~torch.isfinite(values.to(torch.float32))
    if mask is not None:
        beyond &= mask
    if bool(beyond.any()):
        first = tuple(int(i) for i in beyond.nonzero()[0])
        where = first[0] if len(first) == 1 else list(first)
        raise InvalidTensorError(
            f"{name}: {int(beyond.sum())} {noun} beyond the float32 range of {of} "
            f"(first at index {where}: {float(values[first]):g})"
        )


def _check_values(values: torch.Tensor, name: str = "values") -> None:
    _check_shape(values, name)
    _check_finite(values, name, "to quantize")
    check_float32_range(name, values)


def _check_weights(values: torch.Tensor, weights: torch.Tensor | None) -> torch.Tensor | None:
    """Validated importance as float64 on the values' device (``None`` stays ``None``)."""
    if weights is None:
        return None
    if weights.shape != values.shape:
        raise InvalidTensorError(
            f"importance has shape {tuple(weights.shape)}, the values {tuple(values.shape)}"
        )
    w = weights.detach().to(device=values.device, dtype=torch.float64)
    lo, hi = torch.aminmax(w)  # one pass; NaN propagates into both
    if not (float(lo) >= 0 and math.isfinite(float(hi))):
        _check_finite(w, "importance", "(importance must be finite and >= 0)")
        negative = w < 0
        first = int(negative.nonzero()[0])
        raise InvalidTensorError(
            f"importance must be finite and >= 0: {int(negative.sum())} negative value(s) "
            f"(first at index {first}: {float(w[first])})"
        )
    if float(hi) <= 0:
        raise InvalidTensorError("importance is zero for every value")
    return w


def check_inputs(values: torch.Tensor, k: int, weights: torch.Tensor | None) -> torch.Tensor:
    """Validate a quantizer's inputs.

    Args:
        values: the 1-D finite floating-point values to quantize.
        k: the codebook size, 1..256.
        weights: optional per-value importance (same shape, >= 0, not all zero).

    Returns:
        The importance as float32 on the values' device (ones when ``weights`` is ``None``).

    Raises:
        ConfigError: ``k`` is out of range.
        InvalidTensorError: empty, non-1-D, non-float or non-finite values (or float64 values
            beyond the float32 range); bad importance, or float64 importance that is zero
            everywhere once in float32.
    """
    _check_k(k)
    _check_values(values)
    w = _check_weights(values, weights)
    if w is None:
        return torch.ones_like(values, dtype=torch.float32)
    w32 = w.to(torch.float32)
    if not bool((w32 > 0).any()):  # float64 importance below float32's smallest value
        raise InvalidTensorError(
            f"importance is zero for every value in float32 (largest {float(w.max()):.3g}): "
            "only its relative sizes matter, so scale it up"
        )
    return w32


def sum_float64(v: torch.Tensor) -> float:
    """The sum of a float64 tensor, the same whatever the number of threads.

    ATen splits a large reduction (and BLAS a dot product) across its threads, so their sums
    change in the last bits with ``torch.set_num_threads``; on CPU the sum is numpy's
    (single-threaded pairwise summation) instead. On other devices: the device's reduction.
    """
    v = v.detach()
    if v.device.type == "cpu":
        return float(np.sum(v.reshape(-1).numpy()))
    return float(v.sum())


_SSE_BLOCK = 1 << 22  # values per block of weighted_sse's gather


def weighted_sse(
    values: torch.Tensor,
    centroids: torch.Tensor,
    labels: torch.Tensor,
    weights: torch.Tensor | None = None,
) -> float:
    """``Σ w · (x − centroid[label])²``, computed in float64 (on CPU the same for every thread
    count); ``weights=None`` is importance 1 everywhere (the same sum, without the ones)."""
    err = values.to(torch.float64, copy=True)  # the work arrays are updated in place
    c = centroids.to(torch.float64)
    for start in range(0, err.numel(), _SSE_BLOCK):  # the gathered centroids, a block at a time
        # (index_select takes int32 labels as they are; [] would copy them to int64)
        err[start : start + _SSE_BLOCK] -= c.index_select(0, labels[start : start + _SSE_BLOCK])
    if weights is None:
        return sum_float64(err.square_())  # 1·e·e is e·e exactly
    weighted = weights.to(torch.float64) * err
    weighted *= err
    return sum_float64(weighted)


def _is_real(value: object) -> bool:
    """A real number that is not a bool (``True`` is an ``int``)."""
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def assign_nearest(values: torch.Tensor, centroids: torch.Tensor) -> torch.Tensor:
    """Index of the nearest centroid for each value.

    The comparison is made in float64 against the midpoints between neighbouring centroids;
    a value exactly half-way goes to the upper centroid.

    Args:
        values: any-shape floating-point tensor.
        centroids: 1-D, non-empty, sorted ascending.

    Returns:
        int64 labels of ``values``' shape, on ``values``' device.

    Raises:
        InvalidTensorError: ``centroids`` is empty, not 1-D, not finite or not sorted.
    """
    if centroids.dim() != 1 or centroids.numel() == 0:
        raise InvalidTensorError(
            f"centroids must be a non-empty 1-D tensor, got shape {tuple(centroids.shape)}"
        )
    c = centroids.detach().to(device=values.device, dtype=torch.float64)
    if not bool(torch.isfinite(c).all()):  # NaN passes the order check: every label was 1
        raise InvalidTensorError(f"centroids must be finite, got {centroids.tolist()}")
    if bool((c[1:] < c[:-1]).any()):
        raise InvalidTensorError("centroids must be sorted ascending")
    mids = (c[1:] + c[:-1]) / 2
    x = values.detach().to(torch.float64).contiguous()
    return torch.searchsorted(mids.contiguous(), x, right=True)


def _search(sorted_seq: torch.Tensor, queries: torch.Tensor) -> torch.Tensor:
    """``searchsorted`` (left) of a few queries in a long sorted sequence."""
    n = queries.numel()
    if queries.device.type != "cpu" or n <= _CPU_SEARCH_CHUNK:
        return torch.searchsorted(sorted_seq, queries)
    parts = [
        torch.searchsorted(sorted_seq, queries[i : i + _CPU_SEARCH_CHUNK])
        for i in range(0, n, _CPU_SEARCH_CHUNK)
    ]
    return torch.cat(parts)


# --------------------------------------------------------------------------------------------
# the sorted, merged view of the data


@dataclass(frozen=True)
class _Sorted:
    """Values sorted once and merged: ``xd`` distinct (float64), ``pw`` the prefix sums of their
    importance, ``px`` those of importance × value.

    No permutation is kept (the labels are found from the values themselves at the end, see
    :func:`_result`), and no array of the importance itself: it is the step in ``pw``
    (:meth:`importance`). Without importance ``pw`` holds the run starts as integers, int32
    below 2^31 values. So while Lloyd runs the work arrays take 20 bytes a distinct value
    (24 with importance).
    """

    xd: torch.Tensor  # float64 distinct values, ascending
    pw: torch.Tensor  # (nd + 1) prefix sums of the importance (integer counts when unweighted)
    px: torch.Tensor  # float64 (nd + 1) prefix sums of importance * xd (empty after Lloyd)
    n_pos: int  # distinct values with non-zero importance

    def cum(self, idx: torch.Tensor) -> torch.Tensor:
        """``pw[idx]`` as float64 (integer counts below 2^53 convert exactly)."""
        return self.pw[idx].to(torch.float64)

    def importance(self, start: int = 0, stop: int | None = None) -> torch.Tensor:
        """The float64 importance of distinct values ``start:stop``: its step in ``pw``."""
        stop = self.xd.numel() if stop is None else stop
        return (self.pw[start + 1 : stop + 1] - self.pw[start:stop]).to(torch.float64)


def _prefix(v: torch.Tensor) -> torch.Tensor:
    """``[0, v0, v0 + v1, ...]`` (length ``len(v) + 1``) without an extra copy."""
    out = torch.empty(v.numel() + 1, dtype=v.dtype, device=v.device)
    out[0] = 0
    torch.cumsum(v, 0, out=out[1:])
    return out


def _prefix_in_place(buf: torch.Tensor) -> torch.Tensor:
    """``buf[1:]`` holds ``v``: turn ``buf`` into :func:`_prefix` of ``v`` (the same sums).

    On CPU the sums are taken in place (ATen's CPU cumsum is one sequential pass, so this is
    bit for bit the out-of-place result, without its second array); elsewhere out of place.
    """
    buf[0] = 0
    if buf.device.type == "cpu":
        torch.cumsum(buf[1:], 0, out=buf[1:])
    else:
        buf[1:] = torch.cumsum(buf[1:], 0)
    return buf


def _ordered_bits(x: torch.Tensor) -> torch.Tensor:
    """The float bits as signed integers that sort like the floats (an involution).

    Non-negative floats keep their bits; negative floats flip their magnitude bits, so a larger
    magnitude gives a smaller integer. -0.0 lands just below +0.0, NaNs at the two ends.
    """
    itype = torch.int64 if x.element_size() == 8 else torch.int32
    bits = x.view(itype)
    mask = (1 << (torch.iinfo(itype).bits - 1)) - 1
    return bits ^ ((bits >> (torch.iinfo(itype).bits - 1)) & mask)


def _sort_floats(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Stable ascending sort of float32/float64 ``x``: (sorted values, permutation).

    Sorting the order-preserving integer image of the bits lets ATen use its radix sort on
    CPU, about three times faster than its float sort for millions of values.
    """
    keys, order = torch.sort(_ordered_bits(x.contiguous()), stable=True)
    return _ordered_bits(keys).view(x.dtype), order


def _sorted_values(x: torch.Tensor) -> torch.Tensor:
    """``x`` (float32/float64, on CPU) sorted ascending, as :func:`_sort_floats` sorts it.

    NumPy's sort (SIMD quicksort) gives no permutation, needs one copy of the values rather
    than the radix sort's key, value and index buffers, and is faster. It orders every value
    as :func:`_sort_floats` does except the zeros: it compares -0.0 and +0.0 as equal, and
    its min/max sorting network may even change one into the other. Merged, the zeros are
    one distinct value whose sign is that of its run's first element, which
    :func:`_sort_floats` makes -0.0 whenever the input holds one; so that element is set
    from the input here. (NaN sorts last, as the check of the two ends expects.)
    """
    a = x.numpy().copy()
    a.sort(kind="quicksort")
    lo, hi = int(np.searchsorted(a, 0.0, "left")), int(np.searchsorted(a, 0.0, "right"))
    if hi > lo:
        itype = torch.int64 if x.element_size() == 8 else torch.int32
        negative_zero = torch.iinfo(itype).min  # the bits of -0.0: the sign bit alone
        a[lo] = -0.0 if bool((x.view(itype) == negative_zero).any()) else 0.0
    return torch.from_numpy(a)


def _prepare(values: torch.Tensor, weights: torch.Tensor | None) -> _Sorted:
    """Sort once, merge equal values, build the prefix sums. Checks finiteness on the way
    (NaN sorts last, infinities to the ends), which saves a pass over the values.

    ``weights`` is the validated float64 importance. Callers pass their only reference
    (``_prepare(values, _check_weights(...))``), so a copy made by the validation is freed
    once it is gathered into sorted order. Each work array is freed as soon as nothing below
    needs it.
    """
    x = values.detach()
    if x.dtype != torch.float64:
        x = x.to(torch.float32)
    if weights is None and x.device.type == "cpu":
        xs, order = _sorted_values(x), None  # no importance to gather: no permutation
    else:
        xs, order = _sort_floats(x)
    ends = xs[[0, -1]]
    if not bool(torch.isfinite(ends.to(torch.float32)).all()):
        _check_values(values)
    distinct, counts = torch.unique_consecutive(xs, return_counts=True)
    merged = distinct.numel() != xs.numel()
    del xs, x
    if weights is None:
        pw = _prefix(counts.to(torch.int32) if values.numel() < 1 << 31 else counts)
        del counts
        xd = distinct.to(torch.float64)
        del distinct
        px = torch.empty(xd.numel() + 1, dtype=torch.float64, device=xd.device)
        nd = xd.numel()
        for a in range(0, nd, _BLOCK):  # count × value, a block at a time (exact counts)
            b = min(a + _BLOCK, nd)
            torch.mul(pw[a + 1 : b + 1] - pw[a:b], xd[a:b], out=px[a + 1 : b + 1])
        n_pos = nd
    else:
        # Everything below works from these prefix sums, so the importance of a value is
        # taken as its step in them (deterministic on every device; a run of zeros stays
        # exactly zero, and an importance below float64 resolution of the running total
        # counts as zero, consistently everywhere).
        assert order is not None
        pw = torch.empty(order.numel() + 1, dtype=torch.float64, device=order.device)
        torch.index_select(weights, 0, order, out=pw[1:])
        del order, weights
        _prefix_in_place(pw)
        if merged:
            run_start = _prefix(counts)  # where each distinct value's run starts, then n
            del counts
            pw = pw[run_start]
            del run_start
        else:
            del counts
        xd = distinct.to(torch.float64)
        del distinct
        px = torch.empty_like(pw)
        torch.sub(pw[1:], pw[:-1], out=px[1:])  # the importance, for a moment
        n_pos = int((px[1:] > 0).sum())
        px[1:].mul_(xd)
    return _Sorted(xd, pw, _prefix_in_place(px), n_pos)


# --------------------------------------------------------------------------------------------
# initialisations


def _linear(s: _Sorted, k: int) -> torch.Tensor:
    live = s.xd if s.n_pos == s.xd.numel() else s.xd[s.importance() > 0]
    lo, hi = float(live[0]), float(live[-1])
    return torch.linspace(lo, hi, k, dtype=torch.float64, device=s.xd.device)


def _density(s: _Sorted, k: int) -> torch.Tensor:
    """Values at the weighted-CDF levels (i + 0.5) / k (duplicates are possible: Lloyd's
    empty-cluster rule separates them)."""
    total = s.pw[-1].to(torch.float64)
    levels = (torch.arange(k, dtype=torch.float64, device=s.xd.device) + 0.5) / k * total
    idx = torch.searchsorted(s.pw[1:].to(torch.float64), levels).clamp_(max=s.xd.numel() - 1)
    return s.xd[idx]


def _forgy(s: _Sorted, k: int, gen: torch.Generator) -> torch.Tensor:
    """k distinct values drawn without replacement, with probability proportional to their
    importance (their count when unweighted), by Efraimidis–Spirakis keys ``log(u) / w``."""
    u = torch.rand(s.xd.numel(), generator=gen, dtype=torch.float64).to(s.xd.device)
    keys = torch.log(u.clamp_(min=1e-300)) / s.importance()  # zero importance: -inf, never chosen
    idx = torch.topk(keys, k).indices
    return s.xd[idx]


def _kmeanspp(s: _Sorted, k: int, gen: torch.Generator) -> torch.Tensor:
    """D² seeding (Arthur & Vassilvitskii 2007), importance-weighted, one candidate per step.

    With more than 2^17 distinct values the seeding runs on a sample of 2^17 values drawn with
    replacement in proportion to importance (equal draws merged, weighted by their count), so
    it costs O(k · 2^17) whatever n is.
    """
    x = s.xd
    device = x.device
    if x.numel() <= _KMEANSPP_SAMPLE:
        w = s.importance()
    else:
        u = torch.rand(_KMEANSPP_SAMPLE, generator=gen, dtype=torch.float64).to(device)
        whole = s.pw[-1].to(torch.float64)
        pick = torch.searchsorted(s.pw[1:].to(torch.float64), u * whole, right=True)
        pick = torch.sort(pick.clamp_(max=x.numel() - 1)).values
        uniq, cnt = torch.unique_consecutive(pick, return_counts=True)
        x, w = x[uniq], cnt.to(torch.float64)
    chosen: list[int] = []
    d2 = torch.ones_like(x)  # first pick: in proportion to importance alone
    for _ in range(k):
        cdf = torch.cumsum(w * d2, 0)
        total = float(cdf[-1])
        if total <= 0:
            break
        r = float(torch.rand(1, generator=gen, dtype=torch.float64)) * total
        target = torch.tensor([r], dtype=torch.float64, device=device)
        i = int(torch.searchsorted(cdf, target, right=True).clamp_(max=x.numel() - 1))
        chosen.append(i)
        d2 = torch.minimum(d2, (x - x[i]) ** 2) if len(chosen) > 1 else (x - x[i]) ** 2
    centres = x[torch.tensor(chosen, dtype=torch.int64, device=device)]
    if centres.numel() < k:  # fewer distinct values in the sample: duplicates get re-seated
        pad = centres[-1:].expand(k - centres.numel())
        centres = torch.cat([centres, pad])
    return centres


def _initial(s: _Sorted, k: int, init: str, seed: int) -> torch.Tensor:
    if init == "linear":
        c = _linear(s, k)
    elif init == "density":
        c = _density(s, k)
    else:
        gen = torch.Generator().manual_seed(seed)
        c = _forgy(s, k, gen) if init == "forgy" else _kmeanspp(s, k, gen)
    return torch.sort(c).values


def _check_init(init: str, seed: int) -> None:
    if init not in _INITS:
        raise ConfigError(f"init must be one of {', '.join(map(repr, _INITS))}, got {init!r}")
    if isinstance(seed, bool) or not isinstance(seed, int) or not -(1 << 63) <= seed < 1 << 64:
        raise ConfigError(f"seed must be an integer from -2**63 to 2**64 - 1, got {seed!r}")


def initial_centroids(
    values: torch.Tensor,
    k: int,
    *,
    weights: torch.Tensor | None = None,
    init: KMeansInit = "linear",
    seed: int = 0,
) -> torch.Tensor:
    """The starting centroids :func:`kmeans_1d` would use (float64, sorted, ``k`` entries).

    Useful to start another k-means implementation from the same point: :func:`kmeans_1d`
    rounds its start to float32, so ``init_centroids=initial_centroids(...)`` (or its float32
    rounding) reproduces ``init=...`` exactly. Only values with a non-zero importance count.
    ``density`` can repeat a value that carries more than 1/k of the importance; the others
    give distinct values when the data has at least ``k``.

    Args:
        values: 1-D finite float tensor.
        k: number of clusters, 1..256.
        weights: optional per-value importance (>= 0, not all zero).
        init: ``"linear"``, ``"density"``, ``"forgy"`` or ``"kmeans++"`` (see :func:`kmeans_1d`).
        seed: seeds the random initialisations.

    Returns:
        A float64 tensor of ``k`` sorted centroids on the values' device.

    Raises:
        ConfigError: bad ``k``, ``init`` or ``seed``, or fewer than ``k`` distinct values
            with a non-zero importance.
        InvalidTensorError: empty, non-1-D or non-finite values (or float64 values beyond
            the float32 range), or bad importance.
    """
    _check_k(k)
    _check_shape(values, "values")
    _check_init(init, seed)
    s = _prepare(values, _check_weights(values, weights))
    if s.n_pos < k:
        raise ConfigError(
            f"k={k} initial centroids requested but the values have only {s.n_pos} distinct "
            "value(s) with non-zero importance"
        )
    return _initial(s, k, init, seed)


# --------------------------------------------------------------------------------------------
# Lloyd


def _farthest(s: _Sorted, c: torch.Tensor, n_new: int) -> torch.Tensor:
    """Add ``n_new`` centroids at the values of largest importance-weighted squared distance
    to their nearest centroid in sorted ``c`` (ties: the smaller value first). Those values
    are not centroids already (their error is positive), so the centroids stay distinct."""
    err = s.xd - _spread(c, _search(s.xd, (c[1:] + c[:-1]) / 2), s.xd.numel())
    err.square_().mul_(s.importance())
    n_cand = min(n_new, int((err > 0).sum()))
    if n_cand == 0:
        return c
    threshold = torch.topk(err, n_cand).values[-1]
    cand = torch.nonzero(err >= threshold).flatten()  # ascending positions
    if cand.numel() > n_cand:
        by_err = torch.sort(err[cand], descending=True, stable=True).indices[:n_cand]
        cand = cand[by_err]
    return torch.sort(torch.cat([c, s.xd[cand]])).values


def _reseat(
    s: _Sorted,
    means: torch.Tensor,
    live: torch.Tensor,
    starts: torch.Tensor,
    stops: torch.Tensor,
    n_empty: int,
) -> torch.Tensor:
    """Re-seat the centroids of the clusters that got no importance in this assignment.

    Rule: every live cluster (a run ``starts[j]:stops[j]`` of the sorted distinct values) is
    scored by how much splitting it at its mean (below / not below) would lower the weighted
    SSE, ``W_L·W_R / (W_L + W_R) · (mean_L − mean_R)²``; the ``n_empty`` best-scoring clusters
    are split (ties: the leftmost): the cluster's centroid becomes the lower part's mean and an
    empty centroid the upper part's. Should fewer clusters be splittable (a cluster needs two
    distinct values with importance), each remaining empty centroid moves to the value
    farthest from its centroid (see :func:`_farthest`). Every part lies in its own disjoint
    range of values, so the centroids stay distinct and sorted.

    Cost: O(k log n), plus O(n) in the rare fallback.
    """
    px, xd = s.px, s.xd
    cum = s.cum
    sw = cum(stops) - cum(starts)
    sx = px[stops] - px[starts]
    mean = sx / torch.where(live, sw, torch.ones_like(sw))
    q = torch.minimum(torch.maximum(_search(xd, mean), starts), stops)
    wl, wr = cum(q) - cum(starts), cum(stops) - cum(q)
    cross = (px[q] - px[starts]) * wr - (px[stops] - px[q]) * wl
    ok = live & (wl > 0) & (wr > 0)
    den = torch.where(ok, wl * wr * sw, torch.ones_like(sw))
    gain = torch.where(ok, cross * cross / den, torch.zeros_like(sw))
    rank = torch.sort(gain, descending=True, stable=True).indices[:n_empty]
    rank = rank[gain[rank] > 0]
    new = means.clone()
    if rank.numel():
        q, ra, rb = q[rank], starts[rank], stops[rank]
        left = (px[q] - px[ra]) / wl[rank]
        right = (px[rb] - px[q]) / wr[rank]
        # rounding must not push a mean out of its part's range
        new[rank] = torch.minimum(torch.maximum(left, xd[ra]), xd[q - 1])
        right = torch.minimum(torch.maximum(right, xd[q]), xd[rb - 1])
        keep = torch.sort(torch.cat([new[live], right])).values
    else:
        keep = new[live]
    remaining = n_empty - int(rank.numel())
    return _farthest(s, keep, remaining) if remaining else keep


def _spread(c: torch.Tensor, bounds: torch.Tensor, n: int) -> torch.Tensor:
    """Each of ``n`` sorted positions gets the centroid of its run (runs end at ``bounds``)."""
    edges = torch.cat([bounds.new_zeros(1), bounds, bounds.new_full((1,), n)])
    return torch.repeat_interleave(c, edges[1:] - edges[:-1], output_size=n)


def _lloyd(
    s: _Sorted, c: torch.Tensor, max_iter: int, tol: float
) -> tuple[torch.Tensor, int, bool]:
    """Run Lloyd from sorted float64 centroids ``c``; returns (centroids, iterations, converged)."""
    device = c.device
    nd = s.xd.numel()
    zero = torch.zeros(1, dtype=torch.int64, device=device)
    last = torch.full((1,), nd, dtype=torch.int64, device=device)
    previous: torch.Tensor | None = None
    iterations = 0
    while True:
        ends = _search(s.xd, (c[1:] + c[:-1]) / 2)  # values < midpoint go left
        if previous is not None and torch.equal(ends, previous):
            return c, iterations, True
        if iterations >= max_iter:
            return c, iterations, False
        starts = torch.cat([zero, ends])
        stops = torch.cat([ends, last])
        sw = s.cum(stops) - s.cum(starts)
        sx = s.px[stops] - s.px[starts]
        live = sw > 0
        mean = sx / torch.where(live, sw, torch.ones_like(sw))
        # keep each mean inside its run despite rounding, so the order stays strict
        lo = s.xd[starts.clamp(max=nd - 1)]
        hi = s.xd[(stops - 1).clamp(min=0)]
        new_c = torch.where(live, torch.minimum(torch.maximum(mean, lo), hi), c)
        n_empty = int((~live).sum())
        if n_empty:
            new_c = _reseat(s, new_c, live, starts, stops, n_empty)
            previous = None
        else:
            previous = ends
        # The codebook is float32: iterate with float32-representable centroids so that the
        # partition found here is exactly the nearest-centroid partition of the result.
        new_c = new_c.to(torch.float32).to(torch.float64)
        same = new_c.numel() == c.numel()  # (always, unless re-seating ran out of values)
        shift = float((new_c - c).abs().max()) if tol > 0 and same else math.inf
        c = new_c
        iterations += 1
        if tol > 0 and not n_empty and shift <= tol:
            return c, iterations, True


def _codebook(s: _Sorted, c64: torch.Tensor, notes: list[str]) -> tuple[torch.Tensor, float]:
    """Round the centroids to float32 (merging any that become equal) and compute the SSE of
    the nearest-centroid assignment; returns (float32 centroids, SSE)."""
    c32 = c64.to(torch.float32)
    if c32.numel() > 1 and bool((c32[1:] == c32[:-1]).any()):
        before = int(c32.numel())
        c32 = torch.unique_consecutive(c32)
        notes.append(
            f"k reduced from {before} to {c32.numel()}: centroids closer than float32 "
            "resolution were merged"
        )
    c = c32.to(torch.float64)
    nd = s.xd.numel()
    bounds = [0, *_search(s.xd, (c[1:] + c[:-1]) / 2).tolist(), nd]
    # (centroid − value)² is (value − centroid)² bit for bit; built in place, one array
    err = torch.empty(nd, dtype=torch.float64, device=c.device)
    for j in range(c.numel()):
        err[bounds[j] : bounds[j + 1]] = c[j]
    err.sub_(s.xd).square_()
    for a in range(0, nd, _BLOCK):  # times the importance, a block at a time
        err[a : a + _BLOCK].mul_(s.importance(a, min(a + _BLOCK, nd)))
    return c32, sum_float64(err)


def _result(
    values: torch.Tensor,
    c32: torch.Tensor,
    sse: float,
    k_requested: int,
    iterations: int,
    converged: bool,
    notes: list[str],
) -> KMeansResult:
    """Label every value with its nearest centroid in ``c32`` and build the result.

    A value's label is the number of midpoints between consecutive centroids that are <= it
    (a value at a midpoint goes right, as in Lloyd's search). It is found from the values
    themselves, a block at a time, so no sort permutation needs to be kept: a value compares
    with a midpoint exactly as its float64 distinct value in ``_Sorted.xd`` does.
    """
    c = c32.to(torch.float64)
    mids = (c[1:] + c[:-1]) / 2
    flat = values.detach()
    n = flat.numel()
    labels = torch.empty(n, dtype=torch.int64, device=values.device)
    for a in range(0, n, _BLOCK):
        block = flat[a : a + _BLOCK].to(torch.float64).contiguous()  # (a strided view)
        torch.searchsorted(mids, block, right=True, out=labels[a : a + _BLOCK])
    return KMeansResult(
        centroids=c32,
        labels=labels,
        k_requested=k_requested,
        k=int(c32.numel()),
        iterations=iterations,
        sse=sse,
        converged=converged,
        notes=tuple(notes),
    )


def _finish(
    values: torch.Tensor,
    s: _Sorted,
    c64: torch.Tensor,
    k_requested: int,
    iterations: int,
    converged: bool,
    notes: list[str],
) -> KMeansResult:
    """:func:`_codebook` then :func:`_result` (for callers whose ``s`` is small)."""
    c32, sse = _codebook(s, c64, notes)
    return _result(values, c32, sse, k_requested, iterations, converged, notes)


def _reduced(values: torch.Tensor, s: _Sorted, k: int, weighted: bool) -> KMeansResult:
    """Fewer distinct (non-zero-importance) values than k: each is its own centroid."""
    notes: list[str] = []
    if s.n_pos < k:
        what = "distinct value(s) with non-zero importance" if weighted else "distinct value(s)"
        notes.append(f"k reduced from {k} to {s.n_pos}: only {s.n_pos} {what}")
    live = s.xd if s.n_pos == s.xd.numel() else s.xd[s.importance() > 0]
    return _finish(values, s, live, k, 0, True, notes)


def kmeans_1d(
    values: torch.Tensor,
    k: int,
    *,
    weights: torch.Tensor | None = None,
    init: KMeansInit = "linear",
    seed: int = 0,
    max_iter: int = DEFAULT_MAX_ITER,
    tol: float = 0.0,
    init_centroids: torch.Tensor | None = None,
) -> KMeansResult:
    """Weighted 1-D k-means: exact Lloyd iterations on the sorted values.

    Cost: one sort (O(n log n)), O(k log n) per iteration, O(n log k) to label the values at
    the end (a search of the k − 1 midpoints, a block of values at a time).
    The result is deterministic for a given seed on a given device.

    Empty clusters: when an assignment leaves a cluster without importance (no members, or
    members of zero importance), its centroid is used to split the live cluster whose split at
    its mean lowers the SSE most (several empty clusters: the several best clusters; should
    there be more empty clusters than clusters with two distinct values, the rest go to the
    values farthest from their centroids). So the result has ``k``
    distinct centroids whenever at least ``k`` distinct values carry importance. With fewer,
    ``k`` is reduced to their number, each of them is a centroid (SSE 0) and a note says so.

    Lloyd's algorithm finds a local optimum: on heavy-tailed data (trained weights are roughly
    Laplacian) its SSE can be well above the optimum, and the initialisation matters.

    Args:
        values: 1-D finite float tensor (a layer's surviving weights), on any device.
        k: number of clusters, 1..256.
        weights: optional per-value importance (>= 0, same shape, not all zero); values of zero
            importance are labelled but do not move centroids.
        init: ``"linear"`` (evenly over [min, max], the paper's choice), ``"density"`` (the
            weighted-CDF quantiles (i + 0.5) / k), ``"forgy"`` (k distinct values drawn at
            random in proportion to importance) or ``"kmeans++"`` (weighted D² seeding; on a
            2^17-value weighted sample when there are more distinct values).
        seed: seeds the random initialisations (``forgy``, ``kmeans++``).
        max_iter: most Lloyd iterations (>= 1). After the sort an iteration costs only
            O(k log n) (about 0.7 ms at n = 10^7, k = 256), so the default lets Lloyd run to
            its fixed point on typical layers; heavy-tailed layers at large k may still stop
            here, which a note reports.
        tol: also stop when no centroid moves more than ``tol`` (0: stop only when the
            assignment stops changing).
        init_centroids: explicit starting centroids, ``k`` finite values (sorted here);
            overrides ``init``.

    Returns:
        The :class:`KMeansResult`.

    Raises:
        ConfigError: bad ``k``, ``init``, ``seed``, ``max_iter``, ``tol`` or
            ``init_centroids`` count.
        InvalidTensorError: empty, non-1-D or non-finite values (or float64 values beyond the
            float32 range of the codebook), bad importance or non-finite ``init_centroids``.
    """
    _check_k(k)
    _check_shape(values, "values")
    _check_init(init, seed)
    if isinstance(max_iter, bool) or not isinstance(max_iter, int) or max_iter < 1:
        raise ConfigError(f"max_iter must be an integer >= 1, got {max_iter!r}")
    if not _is_real(tol) or not math.isfinite(tol) or tol < 0:
        raise ConfigError(f"tol must be a finite number >= 0, got {tol!r}")
    if init_centroids is not None:
        if init_centroids.dim() != 1:
            raise InvalidTensorError(
                f"init_centroids must be 1-D, got shape {tuple(init_centroids.shape)}"
            )
        if init_centroids.numel() != k:
            raise ConfigError(f"init_centroids has {init_centroids.numel()} value(s) but k is {k}")
        _check_values(init_centroids, "init_centroids")
    s = _prepare(values, _check_weights(values, weights))
    if s.n_pos <= k:
        return _reduced(values, s, k, weights is not None)
    if init_centroids is not None:
        c = init_centroids.detach().to(device=values.device, dtype=torch.float64)
        c = torch.sort(c).values
    else:
        c = _initial(s, k, init, seed)
    c, iterations, converged = _lloyd(s, c.to(torch.float32).to(torch.float64), max_iter, tol)
    notes: list[str] = []
    if not converged:
        notes.append(f"k-means stopped at max_iter={max_iter} before the assignment settled")
    s = replace(s, px=s.px.new_empty(0))  # _codebook needs no px: let it go first
    c32, sse = _codebook(s, c, notes)
    del s  # (12 bytes a distinct value: gone before the labels are built)
    return _result(values, c32, sse, k, iterations, converged, notes)


# --------------------------------------------------------------------------------------------
# the exact optimum


def _optimal_cuts(x: torch.Tensor, w: torch.Tensor, k: int) -> torch.Tensor:
    """Boundaries (k + 1 positions) of the optimal k-partition of sorted ``x`` (all ``w`` > 0)."""
    device = x.device
    n = x.numel()
    xc = x - float((w * x).sum() / w.sum())  # centred: less cancellation in the x² sums
    pw, px, p2 = _prefix(w), _prefix(w * xc), _prefix(w * xc * xc)

    def cost(j: torch.Tensor, i: torch.Tensor) -> torch.Tensor:
        sx = px[i] - px[j]
        return (p2[i] - p2[j] - sx * sx / (pw[i] - pw[j])).clamp_(min=0)

    idx = torch.arange(1, n + 1, device=device)
    prev = torch.cat([torch.zeros(1, dtype=torch.float64, device=device), cost(idx * 0, idx)])
    splits: list[torch.Tensor] = []
    for m in range(2, k + 1):
        cur = torch.full((n + 1,), math.inf, dtype=torch.float64, device=device)
        arg = torch.zeros(n + 1, dtype=torch.int64, device=device)
        # tasks: rows i in [lo, hi] with splits j in [jlo, jhi]; row i needs i >= m, j in
        # [m - 1, i - 1]; all the tasks of one recursion level are solved together
        lo = torch.tensor([m], device=device)
        hi = torch.tensor([n], device=device)
        jlo = torch.tensor([m - 1], device=device)
        jhi = torch.tensor([n - 1], device=device)
        while lo.numel():
            mid = (lo + hi) // 2
            a = jlo
            lengths = torch.minimum(jhi, mid - 1) - a + 1
            task = torch.repeat_interleave(torch.arange(mid.numel(), device=device), lengths)
            offsets = torch.cumsum(lengths, 0) - lengths
            j = a[task] + torch.arange(task.numel(), device=device) - offsets[task]
            val = prev[j] + cost(j, mid[task])
            inf = torch.full(mid.shape, math.inf, dtype=torch.float64, device=device)
            best = inf.scatter_reduce(0, task, val, reduce="amin")
            at_min = val <= best[task]
            big = torch.full_like(mid, n + 1)
            best_j = big.scatter_reduce(0, task[at_min], j[at_min], reduce="amin")  # leftmost
            cur[mid] = best
            arg[mid] = best_j
            left = lo <= mid - 1
            right = mid + 1 <= hi
            lo, hi, jlo, jhi = (
                torch.cat([lo[left], (mid + 1)[right]]),
                torch.cat([(mid - 1)[left], hi[right]]),
                torch.cat([jlo[left], best_j[right]]),
                torch.cat([best_j[left], jhi[right]]),
            )
        splits.append(arg)
        prev = cur
    cuts = [n]
    for arg in reversed(splits):
        cuts.append(int(arg[cuts[-1]]))
    cuts.append(0)
    cuts.reverse()
    return torch.tensor(cuts, dtype=torch.int64, device=device)


def optimal_kmeans_1d(
    values: torch.Tensor, k: int, *, weights: torch.Tensor | None = None
) -> KMeansResult:
    """The exact minimum-SSE k-clustering of 1-D values (a quality reference for tests).

    Dynamic programming over the sorted distinct values: ``D[m][i]`` is the least SSE of the
    first ``i`` values in ``m`` clusters; the leftmost optimal split is monotone in ``i``
    (the SSE cost satisfies the quadrangle inequality), so each of the k layers is solved by
    divide and conquer (as in Grønlund et al. 2017 and the ``kmeans1d`` package), vectorised
    one recursion level at a time: O(k · n log n). Segment costs come from float64 prefix sums
    of the centred values, so SSE differences below about 1e-15 × Σ w·(x − mean)² are not
    resolved (as in other prefix-sum solvers).

    Args:
        values: 1-D finite float tensor with at most 20 000 values.
        k: number of clusters, 1..256.
        weights: optional per-value importance (>= 0, not all zero).

    Returns:
        A :class:`KMeansResult` (``iterations`` 0, ``converged`` True). Values of zero
        importance take the nearest centroid.

    Raises:
        ConfigError: bad ``k``, or more than 20 000 values.
        InvalidTensorError: as :func:`kmeans_1d`.
    """
    _check_k(k)
    _check_shape(values, "values")
    if values.numel() > OPTIMAL_MAX_VALUES:
        raise ConfigError(
            f"optimal_kmeans_1d takes at most {OPTIMAL_MAX_VALUES} values "
            f"(it is a quality check, not a quantizer), got {values.numel()}"
        )
    s = _prepare(values, _check_weights(values, weights))
    if s.n_pos <= k:
        return _reduced(values, s, k, weights is not None)
    importance = s.importance()
    live = importance > 0
    x, wx = s.xd[live], importance[live]
    cut = _optimal_cuts(x, wx, k)
    pw, px = _prefix(wx), _prefix(wx * x)
    mean = (px[cut[1:]] - px[cut[:-1]]) / (pw[cut[1:]] - pw[cut[:-1]])
    centroids = torch.minimum(torch.maximum(mean, x[cut[:-1]]), x[cut[1:] - 1])
    return _finish(values, s, centroids, k, 0, True, [])
