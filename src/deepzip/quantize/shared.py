"""Trainable shared weights: ``weight = codebook[index] * mask``.

The codebook is an ``nn.Parameter``; the indices and the mask are fixed buffers. Because the
weight is a gather from the codebook, autograd gives each centroid the SUM of the gradients of
the weights in its cluster, which is Han et al.'s rule; ``grad="mean"`` divides it by the
cluster size instead. Pruned positions are exactly zero and receive no gradient.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import nn
from torch.nn.utils import parametrize

__all__ = [
    "GradRule",
    "SharedTensor",
    "SharedWeight",
    "attach_shared",
    "get_shared",
]

GradRule = Literal["sum", "mean"]


class _ScaleGrad(torch.autograd.Function):
    """Identity in the forward pass; multiplies the gradient by ``scale`` in the backward pass."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(scale)
        return x.view_as(x)

    @staticmethod
    def backward(ctx: Any, *grads: torch.Tensor) -> tuple[torch.Tensor, None]:
        (scale,) = ctx.saved_tensors
        return grads[0] * scale, None


@dataclass(frozen=True)
class SharedTensor:
    """One quantized tensor: ``dense = codebook[indices] * mask``.

    Attributes:
        codebook: float32, shape ``(k,)``, sorted ascending.
        indices: uint8 (k <= 256), the tensor's shape; 0 at pruned positions.
        mask: bool, the tensor's shape; ``False`` where pruned.
    """

    codebook: torch.Tensor
    indices: torch.Tensor
    mask: torch.Tensor

    def dense(self) -> torch.Tensor:
        """The dense float32 tensor."""
        return self.codebook[self.indices.long()] * self.mask.to(self.codebook.dtype)


class SharedWeight(nn.Module):
    """Parametrization whose output is ``codebook[indices] * mask`` (the input is ignored).

    Buffers: ``indices`` (uint8), ``mask`` (bool), ``counts`` (int64 cluster sizes).
    Parameter: ``codebook`` (float32).
    """

    indices: torch.Tensor
    mask: torch.Tensor
    counts: torch.Tensor

    def __init__(
        self,
        codebook: torch.Tensor,
        indices: torch.Tensor,
        mask: torch.Tensor,
        *,
        grad: GradRule = "sum",
    ) -> None:
        super().__init__()
        if grad not in ("sum", "mean"):
            raise ValueError(f"grad must be 'sum' or 'mean', got {grad!r}")
        self.grad = grad
        self.codebook = nn.Parameter(codebook.detach().to(torch.float32).clone())
        self.register_buffer("indices", indices.to(torch.uint8).clone())
        self.register_buffer("mask", mask.to(torch.bool).clone())
        counts = torch.bincount(self.indices[self.mask].long(), minlength=self.codebook.numel())
        self.register_buffer("counts", counts)

    def forward(self, original: torch.Tensor) -> torch.Tensor:
        """Gather the codebook; zero the pruned positions."""
        codebook = self.codebook
        if self.grad == "mean":
            scale = 1.0 / self.counts.clamp(min=1).to(codebook.dtype)
            codebook = _ScaleGrad.apply(codebook, scale)  # type: ignore[no-untyped-call]
        weight = codebook[self.indices.long()] * self.mask.to(codebook.dtype)
        return weight.to(original.dtype)

    def export(self) -> SharedTensor:
        """A detached copy of ``(codebook, indices, mask)``."""
        return SharedTensor(self.codebook.detach().clone(), self.indices.clone(), self.mask.clone())


def get_shared(module: nn.Module, attr: str = "weight") -> SharedWeight | None:
    """The :class:`SharedWeight` on ``module.attr``, or ``None``."""
    if not parametrize.is_parametrized(module, attr):
        return None
    for p in module.parametrizations[attr]:  # type: ignore[index]
        if isinstance(p, SharedWeight):
            return p
    return None


def attach_shared(
    module: nn.Module, attr: str, shared: SharedTensor, *, grad: GradRule = "sum"
) -> SharedWeight:
    """Replace ``module.attr`` (pruned or not) by trainable shared weights.

    Any parametrization already on the attribute (a pruning mask) is folded in first: the
    mask travels inside ``shared``. The stored original tensor no longer trains
    (``requires_grad=False``); only the codebook does.
    """
    if parametrize.is_parametrized(module, attr):
        parametrize.remove_parametrizations(module, attr, leave_parametrized=True)
    device = getattr(module, attr).device
    p = SharedWeight(
        shared.codebook.to(device), shared.indices.to(device), shared.mask.to(device), grad=grad
    )
    parametrize.register_parametrization(module, attr, p, unsafe=True)
    original = module.parametrizations[attr].original  # type: ignore[index,union-attr]
    with torch.no_grad():
        original.copy_(shared.dense().to(device=device, dtype=original.dtype))
    original.requires_grad_(False)
    return p
