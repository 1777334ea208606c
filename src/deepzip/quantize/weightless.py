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
from deepzip.errors import ConfigError, InvalidTensorError
from deepzip.quantize.shared import GradRule, SharedTensor, SharedWeight, install_shared
from deepzip.targets import Skipped, Target

__all__ = ["WeightlessWeight", "attach_weightless", "get_weightless", "weightless_skip"]


class WeightlessWeight(SharedWeight):
    """``codebook[indices] * mask`` with the indices and mask a Bloomier filter decodes to.

    Buffers: ``indices`` (uint8) and ``mask`` (bool), the filter's decoding over every
    position; ``counts`` (cluster sizes); ``bloomier`` (uint8, the serialised filter).
    Parameter: ``codebook`` (float32). Attribute: ``train_encoded``, whether the codebook and
    the owning module's bias keep training (see :func:`attach_weightless`).
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
        train_encoded: bool = True,
    ) -> None:
        if not isinstance(train_encoded, bool):
            raise ConfigError(f"train_encoded must be true or false, got {train_encoded!r}")
        super().__init__(codebook, indices, mask, grad=grad)
        if not isinstance(filter_bytes, (bytes, bytearray)) or not filter_bytes:
            raise InvalidTensorError("a Weightless layer needs its serialised Bloomier filter")
        data = torch.frombuffer(bytearray(filter_bytes), dtype=torch.uint8)
        self.register_buffer("bloomier", data.to(self.indices.device))
        self.train_encoded = train_encoded
        self.codebook.requires_grad_(self.train_encoded)

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
    train_encoded: bool = True,
) -> WeightlessWeight:
    """Replace ``module.attr`` by the decoded Weightless layer (any parametrization is removed).

    Args:
        module: the owning module.
        attr: the parameter name (``"weight"``).
        decoded: codebook plus the indices and mask the filter decodes to (false positives
            included), the parameter's shape.
        filter_bytes: the serialised filter.
        grad: the codebook's gradient rule (``"sum"`` or ``"mean"``).
        train_encoded: whether the codebook and, for ``"weight"``, the module's ``bias`` keep
            training (``requires_grad``); ``False`` freezes the whole layer, and so does a
            weight that did not train (``requires_grad=False`` on it, or on the original of
            its parametrization): the user's freeze is kept. Recorded on the parametrization
            (``train_encoded``) so that a checkpoint can restore it.

    Returns:
        The new parametrization. The stored original tensor no longer trains.

    Raises:
        ConfigError: ``train_encoded`` is not a bool, or ``grad`` not ``"sum"`` or ``"mean"``
            (nothing is changed).
        InvalidTensorError: the decoded tensors do not have the parameter's shape, or do not
            form a valid shared tensor; an empty filter (nothing is changed).
    """
    current = getattr(module, attr)
    if tuple(decoded.indices.shape) != tuple(current.shape) or decoded.mask.shape != current.shape:
        raise InvalidTensorError(
            f"{type(module).__name__}.{attr}: decoded indices {tuple(decoded.indices.shape)} "
            f"do not match the parameter's shape {tuple(current.shape)}"
        )
    p = install_shared(
        module,
        attr,
        decoded,
        lambda codebook, indices, mask: WeightlessWeight(
            codebook, indices, mask, filter_bytes, grad=grad, train_encoded=train_encoded
        ),
    )
    if not p.source_trainable:  # a weight that did not train: its codebook stays frozen
        p.train_encoded = False  # (install_shared), and so does the rest of the layer
    bias = getattr(module, "bias", None)
    if attr == "weight" and isinstance(bias, nn.Parameter):
        bias.requires_grad_(p.train_encoded)
    return p


def weightless_skip(
    target: Target, include: tuple[str, ...], overrides: tuple[str, ...], where: str
) -> Skipped | None:
    """How a quantizer treats a layer already encoded with Weightless: ``None`` if it is not.

    Quantizing it again would drop its Bloomier filter, so it is skipped (the returned record,
    for the report); a layer that an ``include`` glob or an override pattern names explicitly
    is an error instead.

    Raises:
        ConfigError: an ``include`` glob or override pattern of ``where`` matches the layer.
    """
    if get_weightless(target.module, target.param_name) is None:
        return None
    for key, patterns in (("include", include), ("overrides", overrides)):
        if any(target.matches(p) for p in patterns):
            raise ConfigError(
                f"{target.name} is encoded with Weightless: quantizing it again would drop its "
                f"Bloomier filter; leave it out of {where}.{key}"
            )
    return Skipped(target.name, "encoded with Weightless (quantizing again would drop its filter)")
