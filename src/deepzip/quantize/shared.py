"""Trainable shared weights: ``weight = codebook[index] * mask``.

The codebook is an ``nn.Parameter``; the indices and the mask are fixed buffers. Because the
weight is a gather from the codebook, autograd gives each centroid the SUM of the gradients of
the weights in its cluster, which is Han et al.'s rule; ``grad="mean"`` divides it by the
cluster size instead. Pruned positions are exactly zero and receive no gradient.

The sum is taken in one fixed order (the cluster's members in position order, accumulated in
float64), so training is bit-reproducible whatever the thread count: PyTorch's own backward of
a multi-dimensional gather adds with parallel atomics on the CPU, and two runs then differ.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal, TypeVar

import torch
from torch import nn
from torch.nn.utils import parametrize

from deepzip._parametrize import find_parametrization
from deepzip.errors import ConfigError

__all__ = [
    "GradRule",
    "SharedTensor",
    "SharedWeight",
    "attach_shared",
    "get_shared",
    "install_shared",
]

GradRule = Literal["sum", "mean"]
SharedWeightT = TypeVar("SharedWeightT", bound="SharedWeight")


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


class _Gather(torch.autograd.Function):
    """``codebook[index] * maskf``; the backward sums each entry's gradient in a fixed order.

    ``order`` lists the kept positions (flat) grouped by codebook entry, ``bounds`` (k + 1) where
    each entry's group starts and ends in it.
    """

    @staticmethod
    def forward(
        ctx: Any,
        codebook: torch.Tensor,
        index: torch.Tensor,
        maskf: torch.Tensor,
        order: torch.Tensor,
        bounds: torch.Tensor,
    ) -> torch.Tensor:
        ctx.save_for_backward(order, bounds)
        return codebook[index] * maskf

    @staticmethod
    def backward(ctx: Any, *grads: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        order, bounds = ctx.saved_tensors
        grad = grads[0]
        acc = torch.float32 if grad.device.type == "mps" else torch.float64  # MPS has no float64
        members = grad.reshape(-1).index_select(0, order).to(acc)
        prefix = torch.zeros(members.numel() + 1, dtype=acc, device=grad.device)
        torch.cumsum(members, 0, out=prefix[1:])
        sums = (prefix[bounds[1:]] - prefix[bounds[:-1]]).to(grad.dtype)
        return sums, None, None, None, None


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
        _check_grad(grad)
        self.grad = grad
        self.codebook = nn.Parameter(codebook.detach().to(torch.float32).clone())
        self.register_buffer("indices", indices.to(torch.uint8).clone())
        self.register_buffer("mask", mask.to(torch.bool).clone())
        counts = torch.bincount(self.indices[self.mask].long(), minlength=self.codebook.numel())
        self.register_buffer("counts", counts)
        self._plan_key: tuple[object, ...] | None = None
        self._plan: tuple[torch.Tensor, ...] = ()

    def _gather(self, codebook: torch.Tensor) -> torch.Tensor:
        """``codebook[indices] * mask``, with a reproducible backward (see :class:`_Gather`).

        The long indices, the float mask and the members' order are cached, and rebuilt when
        the buffers change in place (their version counters) or move (their storage).
        """
        if self.indices.is_inference() or self.mask.is_inference():
            key = None  # inference tensors keep no version counter: rebuild every call
        else:
            key = (
                self.indices._version,
                self.mask._version,
                self.indices.data_ptr(),
                self.mask.data_ptr(),
                codebook.numel(),
                codebook.dtype,
            )
        if key is None or key != self._plan_key:
            # plain tensors even under inference_mode, so a later training step can save them
            with torch.inference_mode(False), torch.no_grad():
                index = self.indices.long()
                kept = self.mask.reshape(-1).nonzero().squeeze(1)
                members = index.reshape(-1)[kept]
                order = kept[torch.argsort(members, stable=True)]
                counts = torch.bincount(members, minlength=codebook.numel())
                bounds = torch.zeros(counts.numel() + 1, dtype=torch.long, device=counts.device)
                torch.cumsum(counts, 0, out=bounds[1:])
                self._plan = (index, self.mask.to(codebook.dtype), order, bounds)
            self._plan_key = key
        out: torch.Tensor = _Gather.apply(codebook, *self._plan)  # type: ignore[no-untyped-call]
        return out

    def forward(self, original: torch.Tensor) -> torch.Tensor:
        """Gather the codebook; zero the pruned positions."""
        codebook = self.codebook
        if self.grad == "mean":
            scale = 1.0 / self.counts.clamp(min=1).to(codebook.dtype)
            codebook = _ScaleGrad.apply(codebook, scale)  # type: ignore[no-untyped-call]
        return self._gather(codebook).to(original.dtype)

    def export(self) -> SharedTensor:
        """A detached copy of ``(codebook, indices, mask)``."""
        return SharedTensor(self.codebook.detach().clone(), self.indices.clone(), self.mask.clone())


def _check_grad(grad: object) -> None:
    if grad not in ("sum", "mean"):
        raise ConfigError(f"grad must be 'sum' or 'mean', got {grad!r}")


def get_shared(module: nn.Module, attr: str = "weight") -> SharedWeight | None:
    """The :class:`SharedWeight` on ``module.attr``, or ``None``."""
    return find_parametrization(module, attr, SharedWeight)


def attach_shared(
    module: nn.Module, attr: str, shared: SharedTensor, *, grad: GradRule = "sum"
) -> SharedWeight:
    """Replace ``module.attr`` (pruned or not) by trainable shared weights.

    Any parametrization already on the attribute (a pruning mask) is folded in first: the
    mask travels inside ``shared``. The stored original tensor no longer trains
    (``requires_grad=False``); only the codebook does.

    Raises:
        ConfigError: ``grad`` is not ``"sum"`` or ``"mean"`` (nothing is changed).
    """
    return install_shared(module, attr, shared, functools.partial(SharedWeight, grad=grad))


def install_shared(
    module: nn.Module,
    attr: str,
    shared: SharedTensor,
    make: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], SharedWeightT],
) -> SharedWeightT:
    """Install ``make(codebook, indices, mask)`` (``shared``'s, moved to the parameter's device)
    as the parametrization of ``module.attr``.

    The common part of every ``attach_*``: any parametrization already on the attribute (a
    pruning mask) is folded in and removed; the parametrization is registered; the stored
    original tensor gets ``shared``'s dense values (so that a state dict holds them) and no
    longer trains. ``make`` runs first: when it raises, the module is unchanged.
    """
    device = getattr(module, attr).device
    p = make(shared.codebook.to(device), shared.indices.to(device), shared.mask.to(device))
    if parametrize.is_parametrized(module, attr):
        parametrize.remove_parametrizations(module, attr, leave_parametrized=True)
    parametrize.register_parametrization(module, attr, p, unsafe=True)
    original = module.parametrizations[attr].original  # type: ignore[index,union-attr]
    with torch.no_grad():
        original.copy_(shared.dense().to(device=device, dtype=original.dtype))
    original.requires_grad_(False)
    return p
