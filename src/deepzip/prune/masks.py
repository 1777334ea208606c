"""Pure mask functions: tensors in, boolean keep-masks out. No module walking here.

A mask is a ``torch.bool`` tensor of the weight's shape; ``True`` keeps the weight. Positions
already pruned (``current`` mask ``False``) stay pruned: they rank below every live weight.
Ties at the threshold are broken by position (stable sort; across the tensors of a global
threshold, by name first), so masks are deterministic.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np
import torch

from deepzip.errors import ConfigError, InvalidTensorError

__all__ = [
    "check_finite",
    "check_mask_shape",
    "global_magnitude_masks",
    "quality_mask",
    "reference_std",
    "sparsity_mask",
]


def check_finite(name: str, weight: torch.Tensor) -> None:
    """Raise ``InvalidTensorError`` naming the tensor if it holds NaN or infinity."""
    finite = torch.isfinite(weight)
    if not bool(finite.all()):
        bad = int((~finite).sum())
        first = int((~finite).flatten().nonzero()[0])
        value = float(weight.detach().flatten()[first])
        raise InvalidTensorError(
            f"{name}: {bad} non-finite value(s) in the weights (first at flat index {first}: "
            f"{value}); cannot rank weights by magnitude"
        )


def _check_sparsity(sparsity: float) -> None:
    if not (0.0 <= sparsity < 1.0) or math.isnan(sparsity):
        raise ConfigError(f"sparsity must be in [0, 1), got {sparsity!r}")


def check_mask_shape(name: str, weight: torch.Tensor, current: torch.Tensor) -> None:
    """Raise :class:`InvalidTensorError` naming ``name`` unless the mask ``current`` has
    ``weight``'s shape (a broadcastable mask would be taken silently)."""
    if current.shape != weight.shape:
        raise InvalidTensorError(
            f"{name}: mask shape {tuple(current.shape)} does not match weight {tuple(weight.shape)}"
        )


def _scores(name: str, weight: torch.Tensor, current: torch.Tensor | None) -> torch.Tensor:
    scores = weight.detach().abs().flatten().to(torch.float64)
    if current is not None:
        check_mask_shape(name, weight, current)
        scores = scores.masked_fill(~current.flatten().to(scores.device), -1.0)
    return scores


def sparsity_mask(
    weight: torch.Tensor,
    sparsity: float,
    current: torch.Tensor | None = None,
    *,
    name: str = "weight",
) -> torch.Tensor:
    """Keep the largest-magnitude ``1 - sparsity`` fraction of ``weight``.

    Exactly ``round(sparsity * numel)`` weights are removed, or the already pruned ones if more.

    Args:
        weight: any-shape floating-point tensor.
        sparsity: fraction to remove, in [0, 1).
        current: an existing keep-mask; pruned positions never come back.
        name: tensor name used in error messages.

    Returns:
        A boolean keep-mask of ``weight``'s shape, on ``weight``'s device.
    """
    _check_sparsity(sparsity)
    check_finite(name, weight)
    n = weight.numel()
    n_prune = round(sparsity * n)
    scores = _scores(name, weight, current)
    if current is not None:
        n_prune = max(n_prune, n - int(current.sum()))
    if n_prune == 0:
        return torch.ones(weight.shape, dtype=torch.bool, device=weight.device)
    return _keep_largest(scores, n_prune).view(weight.shape)


def _keep_largest(scores: torch.Tensor, n_prune: int) -> torch.Tensor:
    """False at the ``n_prune`` smallest of the 1-D ``scores``, ties taken in index order: the
    first ``n_prune`` of a stable ascending sort, found by a selection in O(n) instead (a
    large layer's sort took seconds, and three float64-sized arrays)."""
    threshold = torch.kthvalue(scores, n_prune).values  # the n_prune-th smallest score
    keep = scores > threshold
    tied = torch.nonzero(scores == threshold).flatten()  # in index order
    pruned_ties = n_prune - int((scores < threshold).sum())
    keep[tied[pruned_ties:]] = True  # the later ties stay
    return keep


def reference_std(weight: torch.Tensor) -> float:
    """The standard deviation of ``weight`` (Bessel-corrected, as ``torch.std``), in float64:
    the reference of :func:`quality_mask`; 0.0 for fewer than two elements.

    On CPU it is the same for every thread count: ``torch.std`` splits a large reduction across
    its threads, which changes the last bits, and a weight at the threshold ``quality * std``
    would be kept with one thread count and pruned with another. (On other devices it is the
    device's reduction.)
    """
    if weight.numel() < 2:
        return 0.0
    x = weight.detach().to(torch.float64)
    if x.device.type == "cpu":
        return float(np.std(x.reshape(-1).numpy(), ddof=1))  # single-threaded, pairwise sums
    return float(x.std())


def quality_mask(
    weight: torch.Tensor,
    quality: float,
    std: float,
    current: torch.Tensor | None = None,
    *,
    name: str = "weight",
) -> torch.Tensor:
    """Han et al.'s rule: remove weights with ``|w| < quality * std``.

    The comparison is made in float64, so a low-precision weight just under the threshold is
    removed even where the threshold would round down to it in the weight's dtype.

    Args:
        weight: any-shape floating-point tensor.
        quality: threshold multiplier, >= 0.
        std: the layer's reference standard deviation (of the dense weights, see
            :func:`reference_std`), >= 0.
        current: an existing keep-mask of ``weight``'s shape; pruned positions never come back.
        name: tensor name used in error messages.

    Raises:
        ConfigError: ``quality`` or ``std`` is negative or not finite.
        InvalidTensorError: ``weight`` holds NaN or infinity, or ``current`` has another shape.
    """
    if not math.isfinite(quality) or quality < 0:
        raise ConfigError(f"quality must be a finite number >= 0, got {quality!r}")
    if not math.isfinite(std) or std < 0:
        raise ConfigError(f"{name}: reference std must be a finite number >= 0, got {std!r}")
    check_finite(name, weight)
    if current is not None:
        check_mask_shape(name, weight, current)
    keep = weight.detach().abs().to(torch.float64) >= quality * std
    if current is not None:
        keep &= current.to(keep.device)
    return keep


def global_magnitude_masks(
    weights: Mapping[str, torch.Tensor],
    sparsity: float,
    current: Mapping[str, torch.Tensor] | None = None,
) -> dict[str, torch.Tensor]:
    """One magnitude threshold across all tensors: remove the ``sparsity`` fraction overall.

    Ties at the threshold are broken by name (in sorted order), then by position, so the
    masks do not depend on the order of ``weights``' keys.

    Args:
        weights: name → tensor; all are ranked together.
        sparsity: overall fraction to remove, in [0, 1).
        current: name → existing keep-mask (optional per name).

    Returns:
        name → keep-mask, in ``weights``' order.
    """
    _check_sparsity(sparsity)
    if not weights:
        return {}
    current = current or {}
    for n in weights:
        check_finite(n, weights[n])
    names = sorted(weights)
    device = next(iter(weights.values())).device
    scores = torch.cat([_scores(n, weights[n], current.get(n)).to(device) for n in names])
    total = scores.numel()
    n_prune = max(round(sparsity * total), int((scores < 0).sum()))
    if n_prune > 0:
        keep = _keep_largest(scores, n_prune)
    else:
        keep = torch.ones(total, dtype=torch.bool, device=device)
    found: dict[str, torch.Tensor] = {}
    offset = 0
    for n in names:
        w = weights[n]
        found[n] = keep[offset : offset + w.numel()].view(w.shape).to(w.device)
        offset += w.numel()
    return {n: found[n] for n in weights}
