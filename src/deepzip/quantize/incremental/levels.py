"""Pure level functions of the incremental quantizers: INQ powers of two, ternary, re-clustering.

Everything here works on 1-D tensors of a layer's surviving weights and returns new tensors; no
module is touched. Level values are float32 (the dtype of the codebooks); comparisons are made
in float64, where every float32 weight and every level is exact.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch

from deepzip.errors import ConfigError, InvalidTensorError
from deepzip.quantize.kmeans import assign_nearest

__all__ = [
    "ClusterRank",
    "ReclusterResult",
    "cluster_losses",
    "inq_exponents",
    "inq_levels",
    "inq_round",
    "recluster_1d",
    "ternary_round",
    "ternary_scale",
]

ClusterRank = Literal["sse", "mse"]


def _check_values(values: torch.Tensor, name: str = "values") -> None:
    if values.dim() != 1 or values.numel() == 0 or not values.is_floating_point():
        raise InvalidTensorError(
            f"{name} must be a non-empty 1-D floating-point tensor, got shape "
            f"{tuple(values.shape)} {values.dtype}"
        )
    _check_finite(values, name)


def _check_finite(values: torch.Tensor, name: str = "values") -> None:
    if not bool(torch.isfinite(values).all()):
        raise InvalidTensorError(f"{name}: {int((~torch.isfinite(values)).sum())} non-finite")


# --------------------------------------------------------------------------------------------
# INQ (Zhou et al. 2017)


_F32_MAX_EXP = 127  # 2**128 is inf in float32
_F32_MIN_EXP = -149  # the smallest float32 subnormal; 2**-150 rounds to 0


def _check_exponents(n1: int, n2: int) -> None:
    if n2 > n1:
        raise ConfigError(f"INQ exponents need n2 <= n1, got n1={n1}, n2={n2}")


def inq_exponents(max_abs: float, bits: int) -> tuple[int, int]:
    """The exponents ``(n1, n2)`` of INQ's levels ``{±2**n1, ..., ±2**n2, 0}``.

    ``n1 = floor(log2(4 s / 3))`` with ``s = max |w|`` (computed exactly), and
    ``n2 = n1 + 1 - 2**(bits-1) / 2``: ``bits - 1`` bits index the ``2**(bits-1)`` non-zero
    levels and one more bit stands for the zero level, as in the paper.

    Args:
        max_abs: the layer's largest weight magnitude, finite and > 0.
        bits: 2..8.

    Raises:
        ConfigError: ``bits`` outside 2..8.
        InvalidTensorError: ``max_abs`` not finite and positive, or so large or small that a
            level is not a float32 number (``2**n1`` overflows or ``2**n2`` underflows to 0).
    """
    if isinstance(bits, bool) or not isinstance(bits, int) or not 2 <= bits <= 8:
        raise ConfigError(f"INQ bits must be an integer from 2 to 8, got {bits!r}")
    if not (math.isfinite(max_abs) and max_abs > 0):
        raise InvalidTensorError(f"INQ needs max |w| finite and > 0, got {max_abs!r}")
    # s = m * 2**e with m in [0.5, 1), so 4s/3 = (4m/3) * 2**e with 4m/3 in [2/3, 4/3):
    # floor(log2(4s/3)) = e when m >= 3/4, else e - 1 (exact, and no overflow of 4s)
    mantissa, exponent = math.frexp(max_abs)
    n1 = exponent - (0 if mantissa >= 0.75 else 1)
    n2 = n1 + 1 - (1 << (bits - 1)) // 2
    if n1 > _F32_MAX_EXP or n2 < _F32_MIN_EXP:
        raise InvalidTensorError(
            f"INQ levels 2**{n2} .. 2**{n1} for max |w| = {max_abs!r} and {bits} bits are not "
            f"all float32 numbers (2**{_F32_MIN_EXP} .. 2**{_F32_MAX_EXP})"
        )
    return n1, n2


def inq_levels(n1: int, n2: int, *, device: torch.device | None = None) -> torch.Tensor:
    """The non-zero levels ``-2**n1 .. -2**n2, 2**n2 .. 2**n1`` as a sorted float32 tensor.

    Raises:
        ConfigError: ``n2 > n1``.
    """
    _check_exponents(n1, n2)
    mags = [math.ldexp(1.0, n) for n in range(n2, n1 + 1)]
    values = [-m for m in reversed(mags)] + mags
    return torch.tensor(values, dtype=torch.float32, device=device)


def inq_round(values: torch.Tensor, n1: int, n2: int) -> torch.Tensor:
    """Quantize to ``{±2**n1, ..., ±2**n2, 0}`` with the paper's rule.

    ``w`` becomes ``β · sgn(w)`` when ``(α + β) / 2 <= |w| < 3β / 2`` for neighbouring levels
    ``α < β`` (``α = 0`` below the smallest level); magnitudes above the top level's range are
    clamped to ``2**n1`` and those below ``2**n2 / 2`` become 0. Exact: the bounds are compared
    in float64. Returns float32 values of ``values``' shape.

    Raises:
        ConfigError: ``n2 > n1``.
        InvalidTensorError: non-finite values.
    """
    _check_exponents(n1, n2)
    _check_finite(values)
    mags = torch.tensor(
        [math.ldexp(1.0, n) for n in range(n2, n1 + 1)], dtype=torch.float64, device=values.device
    )
    lower = mags * 0.75
    lower[0] = mags[0] * 0.5
    x = values.detach().to(torch.float64)
    idx = torch.searchsorted(lower, x.abs().contiguous(), right=True) - 1
    q = torch.where(idx >= 0, mags[idx.clamp(min=0)], torch.zeros_like(x))
    return (torch.sign(x) * q).to(torch.float32)


# --------------------------------------------------------------------------------------------
# ternary {-a, 0, +a}


def ternary_scale(values: torch.Tensor) -> float:
    """The ``a`` of the least-squares symmetric ternary quantizer ``{-a, 0, +a}``.

    For a fixed number ``m`` of non-zero weights the best choice is the ``m`` largest
    magnitudes with ``a`` their mean, which leaves an error of ``Σ w² − S_m² / m`` (``S_m`` the
    sum of those magnitudes); ``m`` is chosen to maximise ``S_m² / m``. Exact global optimum in
    O(n log n) (TWN's ``0.7 · mean |w|`` threshold approximates it). Returns a float32-exact
    value (> 0 unless every weight is 0).
    """
    _check_values(values)
    mags = torch.sort(values.detach().to(torch.float64).abs(), descending=True).values
    sums = torch.cumsum(mags, 0)
    m = torch.arange(1, mags.numel() + 1, dtype=torch.float64, device=mags.device)
    best = int(torch.argmax(sums * sums / m))
    return float(torch.tensor(float(sums[best]) / (best + 1), dtype=torch.float32))


def ternary_round(values: torch.Tensor, a: float) -> torch.Tensor:
    """Nearest of ``{-a, 0, +a}`` (``|w| >= a / 2`` goes to ``±a``), float32, same shape.

    Raises:
        InvalidTensorError: non-finite values, or ``a`` negative or not finite.
    """
    if not (math.isfinite(a) and a >= 0):
        raise InvalidTensorError(f"the ternary scale a must be finite and >= 0, got {a!r}")
    _check_finite(values)
    x = values.detach().to(torch.float64)
    a32 = float(torch.tensor(a, dtype=torch.float32))
    q = torch.where(x.abs() >= a32 / 2, torch.full_like(x, a32), torch.zeros_like(x))
    return (torch.sign(x) * q).to(torch.float32)


# --------------------------------------------------------------------------------------------
# SLQ re-clustering


@dataclass(frozen=True)
class ReclusterResult:
    """The result of :func:`recluster_1d`.

    Attributes:
        centroids: float32 (K,), sorted ascending; the fixed ones unchanged.
        fixed: bool (K,), which centroids were held (permuted along with ``centroids``).
        labels: int64 nearest-centroid index of each value.
        iterations: Lloyd iterations run.
        converged: whether the assignment stopped changing.
    """

    centroids: torch.Tensor
    fixed: torch.Tensor
    labels: torch.Tensor
    iterations: int
    converged: bool


def _cluster_sums(labels: torch.Tensor, weights: torch.Tensor, k: int) -> torch.Tensor:
    """Float64 (k,) per-cluster sums of ``weights``, on ``labels``' device.

    Added on the CPU whatever the device: ATen's CPU ``bincount`` adds in index order, its
    CUDA one with atomics in a racing order (nondeterministic, and refused under
    ``torch.use_deterministic_algorithms``).
    """
    cpu = torch.bincount(labels.cpu(), weights=weights.to(torch.float64).cpu(), minlength=k)
    # (with no labels, bincount returns int64 zeros whatever the weights)
    return cpu.to(device=labels.device, dtype=torch.float64)


def recluster_1d(
    values: torch.Tensor, centroids: torch.Tensor, fixed: torch.Tensor, *, max_iter: int = 100
) -> ReclusterResult:
    """1-D Lloyd iterations in which the ``fixed`` centroids never move.

    Every value goes to its nearest centroid, fixed or free; each free centroid moves to the
    mean of its members (an empty free centroid stays where it is). This is SLQ's step 5:
    re-cluster the free weights with the frozen centroids held.

    Args:
        values: 1-D finite float tensor (the free weights).
        centroids: 1-D, the starting centroids (any order; sorted here).
        fixed: bool, same shape as ``centroids``.
        max_iter: most iterations (>= 1).

    Raises:
        ConfigError: ``max_iter < 1``.
        InvalidTensorError: bad shapes, non-finite values or centroids.
    """
    _check_values(values)
    _check_values(centroids, "centroids")
    if fixed.shape != centroids.shape or fixed.dtype != torch.bool:
        raise InvalidTensorError(
            f"fixed must be a bool tensor of the centroids' shape {tuple(centroids.shape)}, "
            f"got {tuple(fixed.shape)} {fixed.dtype}"
        )
    if isinstance(max_iter, bool) or not isinstance(max_iter, int) or max_iter < 1:
        raise ConfigError(f"max_iter must be an integer >= 1, got {max_iter!r}")
    order = torch.sort(centroids.detach().to(torch.float32), stable=True).indices
    c = centroids.detach().to(torch.float32)[order].clone()
    held = fixed.to(c.device)[order]
    x = values.detach().to(torch.float64)
    x_cpu = x.cpu()  # the per-cluster sums are taken there (see _cluster_sums)
    k = c.numel()
    labels = assign_nearest(x, c)
    iterations, converged = 0, False
    while iterations < max_iter:
        iterations += 1
        counts = torch.bincount(labels, minlength=k).to(torch.float64)
        sums = _cluster_sums(labels, x_cpu, k)
        means = (sums / counts.clamp(min=1)).to(torch.float32)
        c = torch.where(held | (counts == 0), c, means)
        resort = torch.sort(c, stable=True).indices
        c, held = c[resort], held[resort]
        new_labels = assign_nearest(x, c)
        if torch.equal(new_labels, labels):
            converged = True
            break
        labels = new_labels
    return ReclusterResult(c, held, labels, iterations, converged)


def cluster_losses(
    values: torch.Tensor,
    labels: torch.Tensor,
    centroids: torch.Tensor,
    kind: ClusterRank = "sse",
) -> torch.Tensor:
    """Quantization loss of each cluster, float64 (K,): summed (``"sse"``) or mean (``"mse"``)
    squared error of the members to their centroid; 0 for an empty cluster.

    Raises:
        ConfigError: ``kind`` is not ``"sse"`` or ``"mse"``.
        InvalidTensorError: ``centroids`` not 1-D and non-empty, or ``labels`` not integer
            indices of ``values``' shape into ``centroids``.
    """
    if kind not in ("sse", "mse"):
        raise ConfigError(f"cluster loss must be 'sse' or 'mse', got {kind!r}")
    if centroids.dim() != 1 or centroids.numel() == 0:
        raise InvalidTensorError(
            f"centroids must be a non-empty 1-D tensor, got shape {tuple(centroids.shape)}"
        )
    if (
        labels.shape != values.shape
        or labels.dtype not in (torch.int64, torch.int32, torch.int16, torch.int8, torch.uint8)
        or (labels.numel() > 0 and not 0 <= int(labels.min()) <= int(labels.max()) < len(centroids))
    ):
        raise InvalidTensorError(
            f"labels must be integer indices into the {centroids.numel()} centroids, of the "
            f"values' shape {tuple(values.shape)}; got shape {tuple(labels.shape)} {labels.dtype}"
        )
    labels = labels.long()
    x = values.detach().to(torch.float64)
    err = x - centroids.detach().to(torch.float64)[labels]
    k = centroids.numel()
    sse = _cluster_sums(labels, err * err, k)
    if kind == "sse":
        return sse
    counts = torch.bincount(labels, minlength=k).to(torch.float64)
    return sse / counts.clamp(min=1)
