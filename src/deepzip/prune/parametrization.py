"""Masking through ``torch.nn.utils.parametrize``.

The module's ``weight`` becomes ``original * mask``. The product makes the masked entries of the
effective weight exactly zero whatever the optimizer does to ``original`` (momentum, weight
decay, Adam moments), and the gradient reaching ``original`` at masked positions is exactly
zero. On top of that, :func:`zero_pruned_` clears the stored ``original`` at masked positions so
a stripped or saved model holds exact zeros too.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn.utils import parametrize

from deepzip._parametrize import find_parametrization

__all__ = [
    "WeightMask",
    "attach_mask",
    "get_mask",
    "is_masked",
    "strip_mask",
    "zero_pruned_",
]


class WeightMask(nn.Module):
    """Parametrization ``weight = original * mask``.

    Buffers (saved in ``state_dict``): ``mask`` (bool, the weight's shape) and ``reference_std``
    (the dense layer's standard deviation, for quality-based thresholds).
    """

    mask: torch.Tensor
    reference_std: torch.Tensor

    def __init__(self, mask: torch.Tensor, reference_std: float) -> None:
        super().__init__()
        self.register_buffer("mask", mask.to(torch.bool).clone())
        self.register_buffer(
            "reference_std", torch.tensor(float(reference_std), dtype=torch.float64)
        )

    def forward(self, original: torch.Tensor) -> torch.Tensor:
        """Apply the mask."""
        return original * self.mask.to(original.dtype)


def _find(module: nn.Module, attr: str) -> WeightMask | None:
    return find_parametrization(module, attr, WeightMask)


def is_masked(module: nn.Module, attr: str = "weight") -> bool:
    """Whether ``module.attr`` carries a deepzip pruning mask."""
    return _find(module, attr) is not None


def get_mask(module: nn.Module, attr: str = "weight") -> WeightMask | None:
    """The attached :class:`WeightMask`, or ``None``."""
    return _find(module, attr)


def _original(module: nn.Module, attr: str) -> torch.Tensor:
    original = module.parametrizations[attr].original  # type: ignore[union-attr,index]
    assert isinstance(original, torch.Tensor)
    return original


def attach_mask(module: nn.Module, attr: str, mask: torch.Tensor) -> WeightMask:
    """Attach (or update) the pruning mask of ``module.attr``; returns the parametrization.

    Updating intersects nothing: the caller passes the full new mask (mask functions already
    keep pruned positions pruned).
    """
    existing = _find(module, attr)
    if existing is not None:
        existing.mask.copy_(mask.to(existing.mask.device))
    else:
        weight = getattr(module, attr)
        std = float(weight.detach().to(torch.float64).std()) if weight.numel() > 1 else 0.0
        existing = WeightMask(mask.to(weight.device), std)
        parametrize.register_parametrization(module, attr, existing, unsafe=False)
    zero_pruned_(module, attr)
    return existing


@torch.no_grad()
def zero_pruned_(module: nn.Module, attr: str = "weight") -> None:
    """Set the stored ``original`` to exactly zero at masked positions."""
    m = _find(module, attr)
    if m is not None:
        original = _original(module, attr)
        original.masked_fill_(~m.mask, 0.0)


def strip_mask(module: nn.Module, attr: str = "weight") -> None:
    """Make pruning permanent: ``module.attr`` becomes a plain parameter with zeros."""
    if _find(module, attr) is None:
        return
    zero_pruned_(module, attr)
    parametrize.remove_parametrizations(module, attr, leave_parametrized=True)
