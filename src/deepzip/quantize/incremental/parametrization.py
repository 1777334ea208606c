"""Parametrizations of the incremental quantizers.

:class:`FrozenWeight` is the layer while it is being quantized:
``weight = where(frozen, frozen_values, original) * mask``. The frozen entries come from a
buffer, so no optimizer (momentum, weight decay, Adam moments) can move them, and the gradient
reaching ``original`` there, and at pruned positions, is exactly zero.

:class:`SymmetricSharedWeight` is a finished ternary layer: a :class:`SharedWeight` whose two
codebook entries are tied to ``-a`` and ``+a``, with the zero level carried by the mask.
"""

from __future__ import annotations

import functools

import torch
from torch import nn
from torch.nn.utils import parametrize

from deepzip._parametrize import find_parametrization, remember_tensor_order
from deepzip.errors import ConfigError, InvalidTensorError
from deepzip.quantize.shared import GradRule, SharedTensor, SharedWeight, install_shared

__all__ = [
    "FrozenWeight",
    "SymmetricSharedWeight",
    "attach_frozen",
    "attach_symmetric",
    "get_frozen",
]


class FrozenWeight(nn.Module):
    """Parametrization ``weight = where(frozen, values, original) * mask``.

    Buffers (saved in ``state_dict``): ``frozen`` (bool), ``values`` (the frozen values, the
    weight's dtype) and ``mask`` (bool, ``False`` where pruned), all of the weight's shape.
    """

    frozen: torch.Tensor
    values: torch.Tensor
    mask: torch.Tensor

    def __init__(self, mask: torch.Tensor, dtype: torch.dtype = torch.float32) -> None:
        super().__init__()
        self.register_buffer("mask", mask.to(torch.bool).clone())
        self.register_buffer("frozen", torch.zeros_like(self.mask))
        self.register_buffer("values", torch.zeros(mask.shape, dtype=dtype, device=mask.device))

    def forward(self, original: torch.Tensor) -> torch.Tensor:
        """Frozen entries from the buffer, free ones from ``original``; pruned ones zero."""
        weight = torch.where(self.frozen, self.values.to(original.dtype), original)
        return weight * self.mask.to(original.dtype)

    @torch.no_grad()
    def freeze_(self, positions: torch.Tensor, values: torch.Tensor) -> None:
        """Freeze the (flat) ``positions`` at ``values``; they must be unpruned and free.

        Raises:
            InvalidTensorError: a position is pruned or already frozen.
        """
        flat_frozen, flat_mask = self.frozen.view(-1), self.mask.view(-1)
        if bool(flat_frozen[positions].any()) or not bool(flat_mask[positions].all()):
            raise InvalidTensorError("only surviving, free weights can be frozen")
        flat_frozen[positions] = True
        self.values.view(-1)[positions] = values.to(self.values.dtype)

    @property
    def n_surviving(self) -> int:
        """Number of unpruned weights."""
        return int(self.mask.sum())

    @property
    def n_frozen(self) -> int:
        """Number of frozen weights."""
        return int(self.frozen.sum())


def get_frozen(module: nn.Module, attr: str = "weight") -> FrozenWeight | None:
    """The :class:`FrozenWeight` on ``module.attr``, or ``None``."""
    return find_parametrization(module, attr, FrozenWeight)


def attach_frozen(module: nn.Module, attr: str, mask: torch.Tensor) -> FrozenWeight:
    """Put ``module.attr`` under a :class:`FrozenWeight` with nothing frozen yet.

    A parametrization already there (a pruning mask) is folded in first; its mask is the
    ``mask`` passed here. The stored ``original`` is zeroed at pruned positions and stays
    trainable.

    Raises:
        InvalidTensorError: ``mask`` is not of the weight's shape (nothing is changed).
    """
    current = getattr(module, attr)
    if mask.shape != current.shape:
        raise InvalidTensorError(
            f"{attr}: the mask has shape {tuple(mask.shape)}, the weight {tuple(current.shape)}"
        )
    remember_tensor_order(module)
    if parametrize.is_parametrized(module, attr):
        parametrize.remove_parametrizations(module, attr, leave_parametrized=True)
    weight = getattr(module, attr)
    p = FrozenWeight(mask.to(weight.device), dtype=weight.dtype)
    parametrize.register_parametrization(module, attr, p)
    original = module.parametrizations[attr].original  # type: ignore[index,union-attr]
    with torch.no_grad():
        original.masked_fill_(~p.mask, 0.0)
    return p


class SymmetricSharedWeight(SharedWeight):
    """A ternary :class:`SharedWeight`: codebook ``(-a, +a)`` with ``a`` one learned value.

    The forward pass uses ``a = (codebook[1] - codebook[0]) / 2``, so the two entries act as
    one parameter whatever the optimizer does to them; :meth:`export` returns ``(-a, +a)``.
    Zero weights are the mask's ``False`` positions. With ``grad="sum"`` the gradient of ``a``
    is the sum of the members' gradients, each signed by its level (``"mean"``: divided by
    the number of members), and each entry receives all of it (``+G`` on ``codebook[1]``,
    ``-G`` on ``codebook[0]``), so that a plain SGD step moves ``a`` by ``lr * G``, as it
    moves a centroid of an untied codebook by ``lr`` times its members' summed gradient.
    """

    def __init__(
        self,
        codebook: torch.Tensor,
        indices: torch.Tensor,
        mask: torch.Tensor,
        *,
        grad: GradRule = "sum",
    ) -> None:
        if codebook.numel() != 2 or not bool(codebook[0] == -codebook[1]) or codebook[1] <= 0:
            raise ConfigError(
                f"a ternary codebook must be (-a, +a) with a > 0, got {codebook.tolist()!r}"
            )
        super().__init__(codebook, indices, mask, grad=grad)

    def _tied(self) -> torch.Tensor:
        c: torch.Tensor = self.codebook
        # a = (c1 - c0) / 2 alone hands each entry half of a's gradient, and an SGD step would
        # move a by half the sum rule's step: the gradient is scaled by 2 (value unchanged)
        scale: float | torch.Tensor = 2.0
        if self.grad == "mean":
            scale = 2.0 / self.counts.sum().clamp(min=1).to(c.dtype)
        c = c.detach() + (c - c.detach()) * scale  # value c, gradient scaled
        a = (c[1] - c[0]) / 2
        return torch.stack((-a, a))

    def forward(self, original: torch.Tensor) -> torch.Tensor:
        """Gather ``(-a, +a)``; zero the masked positions."""
        return self._gather(self._tied()).to(original.dtype)

    def export(self) -> SharedTensor:
        """A detached copy of ``((-a, +a), indices, mask)``."""
        with torch.no_grad():
            codebook = self._tied().detach().clone()
        return SharedTensor(codebook, self.indices.clone(), self.mask.clone())


def attach_symmetric(
    module: nn.Module, attr: str, shared: SharedTensor, *, grad: GradRule = "sum"
) -> SymmetricSharedWeight:
    """Replace ``module.attr`` by a :class:`SymmetricSharedWeight` (as ``attach_shared``)."""
    return install_shared(module, attr, shared, functools.partial(SymmetricSharedWeight, grad=grad))
