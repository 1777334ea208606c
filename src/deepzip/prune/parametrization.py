"""Masking through ``torch.nn.utils.parametrize``.

The module's ``weight`` becomes ``original * mask``. The product makes the masked entries of the
effective weight exactly zero whatever the optimizer does to ``original`` (momentum, weight
decay, Adam moments), and the gradient reaching ``original`` at masked positions is exactly
zero. On top of that, :func:`zero_pruned_` clears the stored ``original`` at masked positions
(when a mask is attached or tightened, and when it is stripped) so a stripped model holds exact
zeros too. An optimizer that keeps momentum or Adam moments from before a mask was tightened
can still move the stored ``original`` there afterwards (the effective weight stays zero):
create the optimizer after each pruning step (deepzip's own retraining does).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import cast

import torch
from torch import nn
from torch.nn.utils import parametrize

from deepzip._parametrize import find_parametrization, remember_tensor_order
from deepzip.errors import ConfigError
from deepzip.prune.masks import check_mask_shape, reference_std

__all__ = [
    "WeightMask",
    "attach_mask",
    "check_prunable",
    "get_mask",
    "get_quantization",
    "is_masked",
    "strip_mask",
    "zero_pruned_",
]


class WeightMask(nn.Module):
    """Parametrization ``weight = original * mask``.

    Buffers (saved in ``state_dict``): ``mask`` (bool, the weight's shape) and ``reference_std``
    (the dense layer's standard deviation, for quality-based thresholds), both on ``mask``'s
    device.
    """

    mask: torch.Tensor
    reference_std: torch.Tensor

    def __init__(self, mask: torch.Tensor, reference_std: float) -> None:
        super().__init__()
        self.register_buffer("mask", mask.to(torch.bool).clone())
        self.register_buffer(
            "reference_std",
            torch.tensor(float(reference_std), dtype=torch.float64, device=mask.device),
        )

    def _apply(
        self, fn: Callable[[torch.Tensor], torch.Tensor], recurse: bool = True
    ) -> WeightMask:
        """As ``nn.Module._apply`` (``.to()``, ``.half()``, ``.to_empty()``, ...), but
        ``reference_std`` only moves: it stays float64, so a model cast to bfloat16 keeps its
        quality thresholds. A ``fn`` that keeps its dtype (a device move, ``to_empty`` of a
        model on the meta device) is applied as it is."""
        std = self.reference_std
        super()._apply(fn, recurse)  # type: ignore[no-untyped-call]
        if self.reference_std.dtype != std.dtype:
            self.reference_std = std.to(device=self.reference_std.device)
        return self

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


def get_quantization(module: nn.Module, attr: str = "weight") -> nn.Module | None:
    """The deepzip quantization parametrization on ``module.attr`` (shared weights, or the
    ``FrozenWeight`` of an unfinished incremental run), or ``None``."""
    # imported here: deepzip.quantize imports this package
    from deepzip.quantize.incremental.parametrization import FrozenWeight
    from deepzip.quantize.shared import SharedWeight

    shared = find_parametrization(module, attr, SharedWeight)
    return shared if shared is not None else find_parametrization(module, attr, FrozenWeight)


def check_prunable(
    module: nn.Module,
    attr: str,
    name: str,
    advice: str = "prune before quantizing, or strip_ first",
) -> None:
    """Raise :class:`ConfigError` naming the tensor ``name`` if ``module.attr`` is quantized,
    or carries a parametrization that is not deepzip's.

    A mask on top of a quantization parametrization would prune the forward pass only: export
    and save use the quantizer's own mask, so the pruning would be lost. ``advice`` ends that
    message. Under any other parametrization (``orthogonal``, one's own) the
    stored tensor is not the weight: zeroing it at the pruned positions would change the kept
    weights too, and a sensitivity sweep would prune nothing.
    """
    quantization = get_quantization(module, attr)
    if quantization is not None:
        raise ConfigError(f"{name} is quantized ({type(quantization).__name__}); {advice}")
    if parametrize.is_parametrized(module, attr):
        foreign = [
            type(p).__name__
            for p in module.parametrizations[attr]  # type: ignore[index]
            if not isinstance(p, WeightMask)
        ]
        if foreign:
            raise ConfigError(
                f"{name} has a parametrization deepzip does not manage ({', '.join(foreign)}); "
                "its stored tensor is not the weight, so it cannot be pruned: remove it first "
                "(torch.nn.utils.parametrize.remove_parametrizations) or exclude the layer"
            )


def _original(module: nn.Module, attr: str) -> torch.Tensor:
    original = module.parametrizations[attr].original  # type: ignore[union-attr,index]
    assert isinstance(original, torch.Tensor)
    return original


def attach_mask(
    module: nn.Module, attr: str, mask: torch.Tensor, *, name: str | None = None
) -> WeightMask:
    """Attach (or update) the pruning mask of ``module.attr``; returns the parametrization.

    Updating intersects nothing: the caller passes the full new mask (mask functions already
    keep pruned positions pruned). ``name`` names the tensor in errors (default ``attr``).

    Raises:
        ConfigError: ``module.attr`` is quantized or carries a parametrization that is not
            deepzip's (see :func:`check_prunable`).
        InvalidTensorError: ``mask`` does not have the weight's shape.
    """
    check_prunable(module, attr, name or attr)
    weight = getattr(module, attr)
    check_mask_shape(name or attr, weight, mask)
    existing = _find(module, attr)
    if existing is not None:
        existing.mask.copy_(mask.to(existing.mask.device))
    else:
        std = reference_std(weight)
        existing = WeightMask(mask.to(weight.device), std)
        remember_tensor_order(module)
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
    """Make pruning permanent: ``module.attr`` becomes a plain parameter with zeros.

    A parametrization registered on top of the mask afterwards (the user's own: deepzip
    refuses to mask a weight under one) stays: only the mask is removed, and the stored
    ``original`` it acts on keeps the zeros. Removing the whole list would bake the user's
    parametrization into the weight and drop it silently.
    """
    if _find(module, attr) is None:
        return
    zero_pruned_(module, attr)
    plist = cast(nn.ModuleList, module.parametrizations[attr])  # type: ignore[index]
    if len(plist) > 1 and isinstance(plist[0], WeightMask):
        del plist[0]  # original * mask == original now; the rest of the list is renumbered
        return
    parametrize.remove_parametrizations(module, attr, leave_parametrized=True)
