"""Trainable shared weights: ``weight = codebook[index] * mask``.

The codebook is an ``nn.Parameter``; the indices and the mask are fixed buffers. Because the
weight is a gather from the codebook, autograd gives each centroid the SUM of the gradients of
the weights in its cluster, which is Han et al.'s rule; ``grad="mean"`` divides it by the
cluster size instead. Pruned positions are exactly zero (+0.0, whatever the sign of the entry
their index points at) and receive no gradient.

The sum is taken in one fixed order (the cluster's members in position order, accumulated in
float64, each cluster on its own), so training is bit-reproducible whatever the thread count:
PyTorch's own backward of a multi-dimensional gather adds with parallel atomics on the CPU, and
two runs then differ.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal, TypeVar

import torch
from torch import nn
from torch.nn.utils import parametrize

from deepzip._parametrize import find_parametrization, remember_tensor_order
from deepzip.errors import ConfigError, InvalidTensorError
from deepzip.targets import layer_type

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
    """``codebook[index]`` with the pruned positions +0.0; the backward sums each entry's
    gradient in a fixed order.

    ``index`` holds ``k`` (one past the codebook) at the pruned positions, which gather the
    +0.0 appended to the codebook: one gather, no pass over a mask (a product with a 0/1 mask
    would give -0.0 where the entry is negative, and a fill after the gather doubles the
    forward's time). ``order`` lists the kept positions (flat) grouped by codebook entry,
    ``bounds`` (k + 1) where each entry's group starts and ends in it.
    """

    @staticmethod
    def forward(
        ctx: Any,
        codebook: torch.Tensor,
        index: torch.Tensor,
        order: torch.Tensor,
        bounds: torch.Tensor,
    ) -> torch.Tensor:
        ctx.save_for_backward(order, bounds)
        return torch.cat((codebook, codebook.new_zeros(1)))[index]

    @staticmethod
    def backward(ctx: Any, *grads: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        order, bounds = ctx.saved_tensors
        grad = grads[0]
        members = grad.reshape(-1).index_select(0, order)
        if grad.device.type in ("cpu", "cuda"):
            # each group summed on its own, in order: a difference of prefix sums over all the
            # groups would lose a group of small gradients against the running total
            sums = torch.segment_reduce(
                members.to(torch.float64), "sum", offsets=bounds, unsafe=True, initial=0.0
            )
        else:
            acc = torch.float32 if grad.device.type == "mps" else torch.float64  # no MPS float64
            prefix = torch.zeros(members.numel() + 1, dtype=acc, device=grad.device)
            torch.cumsum(members.to(acc), 0, out=prefix[1:])
            sums = prefix[bounds[1:]] - prefix[bounds[:-1]]
        return sums.to(grad.dtype), None, None, None


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
        """The dense float32 tensor (+0.0 at the pruned positions)."""
        return self.codebook[self.indices.long()].masked_fill(self.mask.logical_not(), 0.0)


class SharedWeight(nn.Module):
    """Parametrization whose output is ``codebook[indices] * mask`` (the input is ignored).

    Buffers: ``indices`` (uint8), ``mask`` (bool), ``counts`` (int64 cluster sizes).
    Parameter: ``codebook`` (float32).

    Raises:
        ConfigError: ``grad`` is not ``"sum"`` or ``"mean"``.
        InvalidTensorError: a codebook that is not 1-D, floating point, finite in float32
            with 1..256 entries; indices that are not integers in ``[0, k)``; indices and mask of
            different shapes.
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
        _check_parts(codebook, indices, mask)
        self.grad = grad
        self.codebook = nn.Parameter(codebook.detach().to(torch.float32).clone())
        self.register_buffer("indices", indices.to(torch.uint8).clone())
        self.register_buffer("mask", mask.to(torch.bool).clone())
        counts = torch.bincount(self.indices[self.mask].long(), minlength=self.codebook.numel())
        self.register_buffer("counts", counts)
        # whether the weight it replaced trained (install_shared sets it; strip_ restores it)
        self.source_trainable = True
        self._plan_key: tuple[object, ...] | None = None
        self._plan: tuple[torch.Tensor, ...] = ()
        # before every forward (this class's or a subclass's), so that ``counts`` (the "mean"
        # rule's divisor) follows indices and mask changed in place
        self.register_forward_pre_hook(_refresh_before_forward)

    def _refresh(self, numel: int, dtype: torch.dtype) -> None:
        """Rebuild the cached long indices (``numel`` at the pruned positions), members' order
        and ``counts`` when the buffers changed in place (their version counters) or moved
        (their storage)."""
        if self.indices.is_inference() or self.mask.is_inference():
            key = None  # inference tensors keep no version counter: rebuild every call
        else:
            key = (
                self.indices._version,
                self.mask._version,
                self.indices.data_ptr(),
                self.mask.data_ptr(),
                numel,
                dtype,
            )
        if key is None or key != self._plan_key:
            # plain tensors even under inference_mode, so a later training step can save them
            with torch.inference_mode(False), torch.no_grad():
                index = self.indices.long()
                kept = self.mask.reshape(-1).nonzero().squeeze(1)
                members = index.reshape(-1)[kept]
                order = kept[torch.argsort(members, stable=True)]
                counts = torch.bincount(members, minlength=numel)
                bounds = torch.zeros(counts.numel() + 1, dtype=torch.long, device=counts.device)
                torch.cumsum(counts, 0, out=bounds[1:])
                # the pruned positions point one past the codebook, at the +0.0 _Gather adds
                self._plan = (index.masked_fill(self.mask.logical_not(), numel), order, bounds)
                if not torch.equal(counts, self.counts):
                    self.counts = counts
            self._plan_key = key

    def _gather(self, codebook: torch.Tensor) -> torch.Tensor:
        """``codebook[indices]``, +0.0 where pruned, with a reproducible backward (see
        :class:`_Gather`)."""
        self._refresh(codebook.numel(), codebook.dtype)
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


def _refresh_before_forward(module: SharedWeight, args: tuple[Any, ...]) -> None:
    module._refresh(module.codebook.numel(), module.codebook.dtype)


def _check_grad(grad: object) -> None:
    if grad not in ("sum", "mean"):
        raise ConfigError(f"grad must be 'sum' or 'mean', got {grad!r}")


def _check_parts(codebook: torch.Tensor, indices: torch.Tensor, mask: torch.Tensor) -> None:
    """Raise :class:`InvalidTensorError` unless ``(codebook, indices, mask)`` fit together."""
    k = codebook.numel()
    if codebook.dim() != 1 or not 1 <= k <= 256 or not codebook.is_floating_point():
        raise InvalidTensorError(
            "the codebook must be 1-D floating point with 1..256 entries, got shape "
            f"{tuple(codebook.shape)} {codebook.dtype}"
        )
    finite = torch.isfinite(codebook.detach().to(torch.float32))  # (the codebook's type)
    if not bool(finite.all()):
        first = int((~finite).nonzero()[0])
        raise InvalidTensorError(
            f"the codebook must be finite in float32: entry {first} is {float(codebook[first])}"
        )
    if indices.shape != mask.shape:
        raise InvalidTensorError(
            f"indices of shape {tuple(indices.shape)} and mask of shape {tuple(mask.shape)} differ"
        )
    if indices.is_floating_point() or indices.is_complex() or indices.dtype == torch.bool:
        raise InvalidTensorError(f"indices must be integers, got {indices.dtype}")
    if indices.numel():
        lo, hi = int(indices.min()), int(indices.max())
        if lo < 0 or hi >= k:
            raise InvalidTensorError(
                f"indices must be in [0, {k}) for a codebook of {k} entries, "
                f"got {lo if lo < 0 else hi}"
            )


def get_shared(module: nn.Module, attr: str = "weight") -> SharedWeight | None:
    """The :class:`SharedWeight` on ``module.attr``, or ``None``."""
    return find_parametrization(module, attr, SharedWeight)


def attach_shared(
    module: nn.Module, attr: str, shared: SharedTensor, *, grad: GradRule = "sum"
) -> SharedWeight:
    """Replace ``module.attr`` (pruned or not) by trainable shared weights.

    Any parametrization already on the attribute (a pruning mask) is folded in first: the
    mask travels inside ``shared``. The stored original tensor no longer trains
    (``requires_grad=False``); only the codebook does, unless the weight did not train
    (``requires_grad=False``), in which case the codebook is frozen too.

    Raises:
        ConfigError: ``grad`` is not ``"sum"`` or ``"mean"`` (nothing is changed).
        InvalidTensorError: ``shared`` does not fit the attribute or is malformed (see
            :class:`SharedWeight`; nothing is changed).
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

    Raises:
        InvalidTensorError: ``shared``'s indices do not have the attribute's shape (the
            module is unchanged).
    """
    current = getattr(module, attr)
    if shared.indices.shape != current.shape:
        raise InvalidTensorError(
            f"{layer_type(module)}.{attr} has shape {tuple(current.shape)}, the shared "
            f"weights {tuple(shared.indices.shape)}"
        )
    device = current.device
    # whether the weight trains: a codebook over a weight the user froze stays frozen (the
    # flag of the stored original, not of the parametrized value, which no_grad clears;
    # an earlier SharedWeight froze its original itself, so its own record is used)
    previous = find_parametrization(module, attr, SharedWeight)
    if previous is not None:
        trainable = previous.source_trainable
    elif parametrize.is_parametrized(module, attr):
        trainable = bool(module.parametrizations[attr].original.requires_grad)  # type: ignore[index,union-attr]
    else:
        trainable = bool(current.requires_grad)
    p = make(shared.codebook.to(device), shared.indices.to(device), shared.mask.to(device))
    p.source_trainable = trainable
    if not trainable:
        p.codebook.requires_grad_(False)
    remember_tensor_order(module)
    if parametrize.is_parametrized(module, attr):
        parametrize.remove_parametrizations(module, attr, leave_parametrized=True)
    parametrize.register_parametrization(module, attr, p, unsafe=True)
    original = module.parametrizations[attr].original  # type: ignore[index,union-attr]
    with torch.no_grad():
        original.copy_(shared.dense().to(device=device, dtype=original.dtype))
    original.requires_grad_(False)
    return p
