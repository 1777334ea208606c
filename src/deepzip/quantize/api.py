"""The quantization verbs: :func:`quantize_`, :func:`export_shared`, :func:`strip_`.

Every quantizer (k-means, uniform, ECSQ) produces the same thing per layer: a sorted float32
codebook plus one index per surviving weight. Pruned positions (from a pruning mask, or exact
zeros in an unmasked weight that was pruned and stripped) are never cluster members and stay
exactly zero.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn.utils import parametrize

from deepzip._parametrize import tensor_order_kept
from deepzip.config import BitsOverride, QuantizeConfig
from deepzip.errors import ConfigError, InvalidTensorError
from deepzip.prune.api import strip_ as strip_masks_
from deepzip.prune.masks import check_finite
from deepzip.prune.parametrization import get_mask
from deepzip.quantize.kmeans import KMeansResult, bits_to_k, check_float32_range, kmeans_1d
from deepzip.quantize.scalar import ecsq_quantize, uniform_quantize
from deepzip.quantize.shared import SharedTensor, attach_shared, get_shared
from deepzip.quantize.weightless import get_weightless, weightless_skip
from deepzip.targets import (
    CONV_LAYER_TYPES,
    Skipped,
    Target,
    check_config,
    check_module,
    select_targets,
)

__all__ = [
    "QuantizeReport",
    "QuantizedLayer",
    "export_shared",
    "layer_bits",
    "quantize_",
    "quantize_tensor",
    "strip_",
]


@dataclass(frozen=True)
class QuantizedLayer:
    """What quantization did to one tensor."""

    name: str
    layer_type: str
    bits: int
    weights: int
    kept: int
    levels: int
    sse: float
    notes: tuple[str, ...]

    def to_dict(self) -> dict[str, object]:
        """JSON-ready form."""
        return {
            "name": self.name,
            "type": self.layer_type,
            "bits": self.bits,
            "weights": self.weights,
            "kept": self.kept,
            "levels": self.levels,
            "sse": self.sse,
            "notes": list(self.notes),
        }


@dataclass(frozen=True)
class QuantizeReport:
    """Per-layer results, and every parameter left in float with its reason."""

    layers: tuple[QuantizedLayer, ...]
    skipped: tuple[Skipped, ...]

    def to_dict(self) -> dict[str, object]:
        """JSON-ready form."""
        return {
            "layers": [layer.to_dict() for layer in self.layers],
            "skipped": [{"name": s.name, "reason": s.reason} for s in self.skipped],
        }


def layer_bits(target: Target, config: QuantizeConfig) -> int | None:
    """Bits for one target: last matching override, else ``bits``, else the paper's default.

    Returns ``None`` when an override says ``skip``.
    """
    found: BitsOverride | None = None
    for o in config.overrides:
        if target.matches(o.pattern):
            found = o
    if found is not None:
        return None if found.skip else found.bits
    if config.bits is not None:
        return config.bits
    return config.conv_bits if isinstance(target.module, CONV_LAYER_TYPES) else config.fc_bits


def quantize_tensor(
    values: torch.Tensor,
    bits: int,
    config: QuantizeConfig,
    *,
    weights: torch.Tensor | None = None,
) -> KMeansResult:
    """Quantize a 1-D tensor of surviving weights with the configured method."""
    k = bits_to_k(bits)
    if config.method == "uniform":
        return uniform_quantize(values, k, weights=weights)
    if config.method == "ecsq":
        return ecsq_quantize(
            values, k, config.ecsq_lambda, weights=weights, max_iter=config.max_iter
        )
    return kmeans_1d(
        values, k, weights=weights, init=config.init, seed=config.seed, max_iter=config.max_iter
    )


def current_mask(target: Target) -> torch.Tensor:
    """The target's surviving weights: its shared or pruning mask (or the mask of an
    interrupted incremental run, whose weights frozen at zero still survive), else its
    non-zeros."""
    # imported here: deepzip.quantize.incremental imports this module
    from deepzip.quantize.incremental.parametrization import get_frozen

    shared = get_shared(target.module, target.param_name)
    if shared is not None:
        return shared.mask.clone()
    m = get_mask(target.module, target.param_name)
    if m is not None:
        return m.mask.clone()
    frozen = get_frozen(target.module, target.param_name)
    if frozen is not None:
        return frozen.mask.clone()
    return target.tensor.detach() != 0


def quantize_(
    model: nn.Module,
    config: QuantizeConfig,
    *,
    importance: Mapping[str, torch.Tensor] | None = None,
) -> QuantizeReport:
    """Share weights in place: each selected layer becomes ``codebook[index] * mask``.

    The codebook of each layer is an ``nn.Parameter`` that fine-tunes with any optimizer (only
    the codebooks train; indices and masks are fixed). Pruned layers keep their pruning.

    Args:
        model: any ``nn.Module``, pruned or not.
        config: bits per layer and the quantizer.
        importance: ``{parameter name: per-weight importance}`` (same shape, >= 0) used as
            k-means/ECSQ sample weights; required when ``config.importance != "none"``, and
            refused when it is ``"none"`` (they would be ignored).

    Returns:
        The per-layer report. A layer with no surviving weights is skipped and reported, and
        so is a layer encoded with Weightless (``deepzip.weightless_``): clustering it again
        would drop its filter.

    Raises:
        ConfigError: ``model`` not an ``nn.Module`` or ``config`` not a
            :class:`~deepzip.QuantizeConfig`; a glob or override that matches no layer;
            importance missing, or given with ``config.importance == "none"``; an
            ``include`` glob that matches a layer encoded with Weightless.
        InvalidTensorError: non-finite weights, or float64 surviving weights beyond the
            float32 range of the codebook; importance that is not a real tensor, of the
            wrong shape, negative, beyond the float32 range, or zero (in float32) on all of a
            layer's surviving weights. Every layer is checked before any changes.
    """
    check_module(model, "quantize_")
    check_config(config, QuantizeConfig, "quantize_")
    if config.importance == "none" and importance is not None:
        raise ConfigError(
            "importance tensors were given but quantize.importance is 'none', which would "
            "ignore them: set importance = 'fisher' or 'adam' (whichever computed them)"
        )
    if config.importance != "none" and importance is None:
        raise ConfigError(
            f"quantize.importance = {config.importance!r} needs importance tensors: compute "
            "them with deepzip.quantize.fisher_diagonal or adam_second_moment"
        )
    selection = select_targets(model, include=config.include, exclude=config.exclude)
    selection.check_overrides((o.pattern for o in config.overrides), "quantizable layer")
    selection.check_materialized("quantize")
    skipped = list(selection.skipped)
    plans: list[tuple[Target, int, torch.Tensor, torch.Tensor | None]] = []
    patterns = tuple(o.pattern for o in config.overrides)
    for t in selection.targets:
        encoded = weightless_skip(t, config.include, patterns, "quantize")
        if encoded is not None:
            skipped.append(encoded)
            continue
        bits = layer_bits(t, config)
        if bits is None:
            skipped.append(Skipped(t.name, "skipped by override (kept in float)"))
            continue
        check_finite(t.name, t.tensor)
        imp = _importance_for(t, importance) if config.importance != "none" else None
        mask = current_mask(t)
        check_float32_range(t.name, t.tensor, mask, noun="surviving weight(s)")
        if imp is not None and bool(mask.any()) and not bool((imp[mask] > 0).any()):
            raw = importance[t.name] if importance is not None else imp
            given = raw.detach().to(mask.device)[mask]
            if bool((given > 0).any()):  # positive, but below float32's smallest value
                raise InvalidTensorError(
                    f"{t.name}: importance is below float32's smallest value on every "
                    f"surviving weight (largest {float(given.max()):.3g}): only its relative "
                    "sizes matter, so scale it up"
                )
            raise InvalidTensorError(
                f"{t.name}: importance is zero for every surviving weight (k-means needs at "
                "least one weight with importance > 0)"
            )
        plans.append((t, bits, mask, imp))
    layers: list[QuantizedLayer] = []
    for t, bits, mask, imp in plans:  # every input validated before any layer changes
        weight = t.tensor.detach()
        if not bool(mask.any()):
            skipped.append(Skipped(t.name, no_survivors_reason(t)))
            continue
        values = weight[mask]
        if values.dtype != torch.float64:  # (float64 is clustered as given: float32 could
            values = values.to(torch.float32)  # merge distinct weights and hide their error)
        result = quantize_tensor(values, bits, config, weights=None if imp is None else imp[mask])
        indices = torch.zeros(weight.shape, dtype=torch.uint8, device=weight.device)
        indices[mask] = result.labels.to(device=weight.device, dtype=torch.uint8)
        attach_shared(
            t.module, t.param_name, SharedTensor(result.centroids, indices, mask), grad=config.grad
        )
        layers.append(
            QuantizedLayer(
                t.name,
                t.layer_type,
                bits,
                int(weight.numel()),
                int(mask.sum()),
                result.k,
                result.sse,
                result.notes,
            )
        )
    return QuantizeReport(tuple(layers), tuple(skipped))


def no_survivors_reason(target: Target) -> str:
    """Why a layer without surviving weights is skipped: pruned by a mask, or all zero
    (quantize_, the incremental methods and weightless_ give the same reasons)."""
    # imported here: deepzip.quantize.incremental imports this module
    from deepzip.quantize.incremental.parametrization import get_frozen

    module, attr = target.module, target.param_name
    if any(f(module, attr) is not None for f in (get_shared, get_mask, get_frozen)):
        return "no surviving weights (all pruned); left as zeros"
    return "no surviving weights (every weight is zero); left as zeros"


def _importance_for(target: Target, importance: Mapping[str, torch.Tensor] | None) -> torch.Tensor:
    if importance is None or target.name not in importance:
        raise ConfigError(f"{target.name}: no importance tensor given for this layer")
    imp = importance[target.name]
    if not isinstance(imp, torch.Tensor) or imp.is_complex():
        what = imp.dtype if isinstance(imp, torch.Tensor) else type(imp).__name__
        raise InvalidTensorError(f"{target.name}: importance must be a real tensor, got {what}")
    if imp.shape != target.tensor.shape:
        raise InvalidTensorError(
            f"{target.name}: importance has shape {tuple(imp.shape)}, "
            f"the weight {tuple(target.tensor.shape)}"
        )
    bad = ~torch.isfinite(imp) | (imp < 0)
    if bool(bad.any()):
        first = tuple(int(i) for i in bad.nonzero()[0])
        raise InvalidTensorError(
            f"{target.name}: importance must be finite and >= 0: {int(bad.sum())} bad value(s) "
            f"(first at index {list(first)}: {float(imp[first])})"
        )
    imp32 = imp.detach().to(device=target.tensor.device, dtype=torch.float32)
    beyond = ~torch.isfinite(imp32)
    if bool(beyond.any()):
        first = tuple(int(i) for i in beyond.nonzero()[0])
        raise InvalidTensorError(
            f"{target.name}: importance beyond the float32 range: {int(beyond.sum())} value(s) "
            f"(first at index {list(first)}: {float(imp[first]):g}); only its relative sizes "
            "matter, so scale it down"
        )
    return imp32


def export_shared(model: nn.Module) -> dict[str, SharedTensor]:
    """``{parameter name: (codebook, indices, mask)}`` for every quantized tensor.

    Raises:
        ConfigError: ``model`` is not an ``nn.Module``.
    """
    check_module(model, "export_shared")
    out: dict[str, SharedTensor] = {}
    for mod_name, module in model.named_modules():
        params = getattr(module, "parametrizations", None)
        if params is None:
            continue
        for attr in params:
            shared = get_shared(module, attr)
            if shared is not None:
                out[f"{mod_name}.{attr}" if mod_name else attr] = shared.export()
    return out


def strip_(model: nn.Module) -> nn.Module:
    """Make pruning and quantization permanent: plain dense weights, exact zeros and levels.

    A layer left in the middle of an incremental run (SLQ, MLQ, INQ interrupted: a
    ``FrozenWeight``) keeps its current weight, frozen levels and free weights alike. A
    Weightless layer keeps its decoded weight (false positives included), and the bias that
    its ``train_encoded = False`` froze trains again, like the weight. A weight the user had
    frozen (``requires_grad=False`` before quantization) stays frozen. A parametrization the
    user registered on top of deepzip's stays, acting on the now plain stored weight.

    Returns ``model`` (modified in place).

    Raises:
        ConfigError: ``model`` is not an ``nn.Module``.
    """
    check_module(model, "strip_")
    with tensor_order_kept(model):  # (a stripped Linear would list bias before weight)
        _remove_ours(model)
        strip_masks_(model)
    return model


def _remove_ours(model: nn.Module) -> None:
    """:func:`strip_`'s removal of the shared-weight and frozen-weight parametrizations."""
    # imported here: deepzip.quantize.incremental imports this module
    from deepzip.quantize.incremental.parametrization import get_frozen

    for _, module in list(model.named_modules()):
        params = getattr(module, "parametrizations", None)
        if params is None:
            continue
        for attr in list(params):
            encoded = get_weightless(module, attr)
            shared = get_shared(module, attr)
            if shared is not None or get_frozen(module, attr) is not None:
                # trains again unless the user had frozen it (a partly frozen weight's
                # original keeps the user's flag)
                plist = params[attr]
                original = plist.original
                trainable = (
                    shared.source_trainable if shared is not None else original.requires_grad
                )
                ours: nn.Module = plist[0]
                if len(plist) > 1 and (ours is shared or ours is get_frozen(module, attr)):
                    # a parametrization the user registered on top stays: the stored
                    # original takes deepzip's value and only deepzip's entry goes
                    with torch.no_grad():
                        original.copy_(ours(original))
                    del plist[0]
                    original.requires_grad_(trainable)
                else:
                    parametrize.remove_parametrizations(module, attr, leave_parametrized=True)
                    getattr(module, attr).requires_grad_(trainable)
            bias = getattr(module, "bias", None)
            if encoded is not None and attr == "weight" and isinstance(bias, nn.Parameter):
                bias.requires_grad_(True)
