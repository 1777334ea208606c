"""The parametrization of a Weightless layer: shared weights decoded from a Bloomier filter.

A layer encoded with Weightless (Reagen et al., ICML 2018; see ``deepzip.weightless``) is
``codebook[indices] * mask`` like any shared-weight layer, except that its indices and mask are
*what the Bloomier filter decodes*, false positives included, and never change again: the
filter is the stored form, so only the codebook (the filter's value table) may still train.
:class:`WeightlessWeight` is a :class:`~deepzip.quantize.shared.SharedWeight` that also carries
the serialised filter (a ``uint8`` buffer), so that the ``.dzip`` writer and checkpoints can
store the filter itself instead of a sparse index.

This module only holds the filter's bytes; building and decoding filters lives in
``deepzip.coding.bloomier`` (above this layer).
"""

from __future__ import annotations

import torch
from torch import nn

from deepzip._parametrize import find_parametrization
from deepzip.errors import InvalidTensorError
from deepzip.quantize.shared import GradRule, SharedTensor, SharedWeight, install_shared

__all__ = ["WeightlessWeight", "attach_weightless", "get_weightless"]


class WeightlessWeight(SharedWeight):
    """``codebook[indices] * mask`` with the indices and mask a Bloomier filter decodes to.

    Buffers: ``indices`` (uint8) and ``mask`` (bool), the filter's decoding over every
    position; ``counts`` (cluster sizes); ``bloomier`` (uint8, the serialised filter).
    Parameter: ``codebook`` (float32).
    """

    bloomier: torch.Tensor

    def __init__(
        self,
        codebook: torch.Tensor,
        indices: torch.Tensor,
        mask: torch.Tensor,
        filter_bytes: bytes,
        *,
        grad: GradRule = "sum",
    ) -> None:
        super().__init__(codebook, indices, mask, grad=grad)
        if not isinstance(filter_bytes, (bytes, bytearray)) or not filter_bytes:
            raise InvalidTensorError("a Weightless layer needs its serialised Bloomier filter")
        data = torch.frombuffer(bytearray(filter_bytes), dtype=torch.uint8)
        self.register_buffer("bloomier", data.to(self.indices.device))

    def filter_bytes(self) -> bytes:
        """The serialised filter (``deepzip.coding.bloomier.BloomierFilter.from_bytes``)."""
        return bytes(self.bloomier.detach().cpu().numpy().tobytes())


def get_weightless(module: nn.Module, attr: str = "weight") -> WeightlessWeight | None:
    """The :class:`WeightlessWeight` on ``module.attr``, or ``None``."""
    return find_parametrization(module, attr, WeightlessWeight)


def attach_weightless(
    module: nn.Module,
    attr: str,
    decoded: SharedTensor,
    filter_bytes: bytes,
    *,
    grad: GradRule = "sum",
) -> WeightlessWeight:
    """Replace ``module.attr`` by the decoded Weightless layer (any parametrization is removed).

    Args:
        module: the owning module.
        attr: the parameter name (``"weight"``).
        decoded: codebook plus the indices and mask the filter decodes to (false positives
            included), the parameter's shape.
        filter_bytes: the serialised filter.
        grad: the codebook's gradient rule (``"sum"`` or ``"mean"``).

    Returns:
        The new parametrization. The stored original tensor no longer trains; the codebook
        trains unless the caller sets ``requires_grad=False`` on it.

    Raises:
        InvalidTensorError: the decoded tensors do not have the parameter's shape.
    """
    current = getattr(module, attr)
    if tuple(decoded.indices.shape) != tuple(current.shape) or decoded.mask.shape != current.shape:
        raise InvalidTensorError(
            f"{type(module).__name__}.{attr}: decoded indices {tuple(decoded.indices.shape)} "
            f"do not match the parameter's shape {tuple(current.shape)}"
        )
    return install_shared(
        module,
        attr,
        decoded,
        lambda codebook, indices, mask: WeightlessWeight(
            codebook, indices, mask, filter_bytes, grad=grad
        ),
    )
