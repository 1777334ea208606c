"""The pruning verbs: :func:`prune_`, :func:`strip_`, and the per-layer report."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from deepzip._parametrize import tensor_order_kept
from deepzip.config import LayerOverride, PruneConfig
from deepzip.errors import ConfigError
from deepzip.prune.masks import (
    check_finite,
    global_magnitude_masks,
    quality_mask,
    reference_std,
    sparsity_mask,
)
from deepzip.prune.parametrization import attach_mask, check_prunable, get_mask, strip_mask
from deepzip.targets import (
    Skipped,
    Target,
    TargetSelection,
    check_config,
    check_module,
    layer_type,
    select_targets,
)

__all__ = [
    "LayerRecord",
    "PruneReport",
    "layer_targets",
    "mask_dict",
    "prune_",
    "pruning_report",
    "strip_",
]


@dataclass(frozen=True)
class LayerRecord:
    """One pruned (or prunable) tensor in a report."""

    name: str
    layer_type: str
    shape: tuple[int, ...]
    weights: int
    kept: int

    @property
    def kept_fraction(self) -> float:
        """Fraction of weights kept (1.0 for an empty tensor)."""
        return self.kept / self.weights if self.weights else 1.0


@dataclass(frozen=True)
class PruneReport:
    """Per-layer kept counts, and every parameter left out with its reason."""

    layers: tuple[LayerRecord, ...]
    skipped: tuple[Skipped, ...]

    @property
    def weights(self) -> int:
        """Total weights in the pruned tensors."""
        return sum(r.weights for r in self.layers)

    @property
    def kept(self) -> int:
        """Total weights kept."""
        return sum(r.kept for r in self.layers)

    @property
    def kept_fraction(self) -> float:
        """Overall fraction kept over the pruned tensors."""
        return self.kept / self.weights if self.weights else 1.0

    def kept_by_layer(self) -> dict[str, float]:
        """``{tensor name: kept fraction}``."""
        return {r.name: r.kept_fraction for r in self.layers}

    def to_dict(self) -> dict[str, object]:
        """JSON-ready form."""
        return {
            "weights": self.weights,
            "kept": self.kept,
            "kept_fraction": self.kept_fraction,
            "layers": [
                {
                    "name": r.name,
                    "type": r.layer_type,
                    "shape": list(r.shape),
                    "weights": r.weights,
                    "kept": r.kept,
                    "kept_fraction": r.kept_fraction,
                }
                for r in self.layers
            ],
            "skipped": [{"name": s.name, "reason": s.reason} for s in self.skipped],
        }


def _override_for(target: Target, overrides: tuple[LayerOverride, ...]) -> LayerOverride | None:
    found: LayerOverride | None = None
    for o in overrides:
        if target.matches(o.pattern):
            found = o
    return found


def layer_targets(
    model: nn.Module, config: PruneConfig
) -> tuple[list[tuple[Target, LayerOverride | None]], list[Skipped]]:
    """Targets of ``config`` with their effective override; skipped parameters with reasons.

    Raises:
        ConfigError: an include/exclude/override glob matches no layer.
    """
    selection: TargetSelection = select_targets(
        model, include=config.include, exclude=config.exclude
    )
    selection.check_overrides((o.pattern for o in config.overrides), "prunable layer")
    selection.check_materialized("prune")
    chosen: list[tuple[Target, LayerOverride | None]] = []
    skipped = list(selection.skipped)
    for t in selection.targets:
        override = _override_for(t, config.overrides)
        if override is not None and override.skip:
            skipped.append(Skipped(t.name, f"skipped by override {override.pattern!r}"))
        else:
            chosen.append((t, override))
    return chosen, skipped


def prune_(model: nn.Module, config: PruneConfig, *, progress: float = 1.0) -> PruneReport:
    """Prune ``model`` in place by magnitude and attach masks that keep pruned weights at zero.

    Calling it again (a later schedule step) tightens the existing masks; pruned weights never
    come back.

    Args:
        model: any ``nn.Module``.
        config: what to prune and how hard.
        progress: fraction of each layer's final target applied now, in (0, 1]: the sparsity
            (or quality multiplier) used is ``progress * target``.

    Returns:
        The per-layer report.

    Raises:
        ConfigError: ``model`` not an ``nn.Module`` or ``config`` not a :class:`PruneConfig`;
            bad ``progress``, a glob that matches nothing, or a selected tensor that
            is already quantized or carries a parametrization that is not deepzip's
            (``orthogonal``, ...).
        InvalidTensorError: a selected weight holds NaN or infinity (names the tensor).
    """
    check_module(model, "prune_")
    check_config(config, PruneConfig, "prune_")
    if (
        isinstance(progress, bool)
        or not isinstance(progress, (int, float))
        or not 0.0 < progress <= 1.0
    ):
        raise ConfigError(f"progress must be in (0, 1], got {progress!r}")
    chosen, skipped = layer_targets(model, config)
    for t, _ in chosen:  # every layer validated before any of them changes
        check_prunable(t.module, t.param_name, t.name)
        check_finite(t.name, t.tensor)
    if config.scope == "global":
        assert config.sparsity is not None
        current = {
            t.name: m.mask for t, _ in chosen if (m := get_mask(t.module, t.param_name)) is not None
        }
        masks = global_magnitude_masks(
            {t.name: t.tensor for t, _ in chosen}, config.sparsity * progress, current
        )
        for t, _ in chosen:
            attach_mask(t.module, t.param_name, masks[t.name], name=t.name)
    else:
        for t, override in chosen:
            _prune_layer(t, override, config, progress)
    return _report(chosen, skipped)


def _prune_layer(
    t: Target, override: LayerOverride | None, config: PruneConfig, progress: float
) -> None:
    sparsity, quality = config.sparsity, config.quality
    if override is not None and (override.sparsity is not None or override.quality is not None):
        sparsity, quality = override.sparsity, override.quality
    existing = get_mask(t.module, t.param_name)
    current = existing.mask if existing is not None else None
    weight = t.tensor
    if sparsity is not None:
        mask = sparsity_mask(weight, sparsity * progress, current, name=t.name)
    else:
        assert quality is not None
        std = float(existing.reference_std) if existing is not None else reference_std(weight)
        mask = quality_mask(weight, quality * progress, std, current, name=t.name)
    attach_mask(t.module, t.param_name, mask, name=t.name)


def _report(
    chosen: list[tuple[Target, LayerOverride | None]], skipped: list[Skipped]
) -> PruneReport:
    records = []
    for t, _ in chosen:
        m = get_mask(t.module, t.param_name)
        w = t.tensor
        kept = int(m.mask.sum()) if m is not None else int(w.numel())
        records.append(LayerRecord(t.name, t.layer_type, tuple(w.shape), int(w.numel()), kept))
    return PruneReport(tuple(records), tuple(skipped))


def pruning_report(model: nn.Module) -> PruneReport:
    """Report the masks currently attached to ``model`` (every masked tensor, module order).

    Raises:
        ConfigError: ``model`` is not an ``nn.Module``.
    """
    check_module(model, "pruning_report")
    selection = select_targets(model, include=(), exclude=())
    records = []
    for mod_name, module in model.named_modules():
        for attr in _masked_attrs(module):
            m = get_mask(module, attr)
            assert m is not None
            name = f"{mod_name}.{attr}" if mod_name else attr
            records.append(
                LayerRecord(
                    name,
                    layer_type(module),
                    tuple(m.mask.shape),
                    int(m.mask.numel()),
                    int(m.mask.sum()),
                )
            )
    masked = {r.name for r in records}
    skipped = tuple(s for s in selection.skipped if s.name not in masked)
    return PruneReport(tuple(records), skipped)


def _masked_attrs(module: nn.Module) -> list[str]:
    params = getattr(module, "parametrizations", None)
    if params is None:
        return []
    return [a for a in params if get_mask(module, a) is not None]


def mask_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """``{parameter name: bool keep-mask}`` for every masked tensor.

    Raises:
        ConfigError: ``model`` is not an ``nn.Module``.
    """
    check_module(model, "mask_dict")
    out: dict[str, torch.Tensor] = {}
    for mod_name, module in model.named_modules():
        for attr in _masked_attrs(module):
            m = get_mask(module, attr)
            assert m is not None
            out[f"{mod_name}.{attr}" if mod_name else attr] = m.mask.detach().clone()
    return out


def strip_(model: nn.Module) -> nn.Module:
    """Make pruning permanent: remove every mask, leaving plain weights with exact zeros.

    Returns ``model`` (modified in place) for chaining.

    Raises:
        ConfigError: ``model`` is not an ``nn.Module``.
    """
    check_module(model, "strip_")
    with tensor_order_kept(model):  # (a stripped Linear would list bias before weight)
        for _, module in list(model.named_modules()):
            for attr in _masked_attrs(module):
                strip_mask(module, attr)
    return model
