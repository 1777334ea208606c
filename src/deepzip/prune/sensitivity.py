"""Sensitivity analysis: prune one layer at a time over a sparsity sweep, record accuracy.

Each point prunes a single tensor by magnitude (no retraining), evaluates, and restores the
tensor exactly, so the model is unchanged afterwards. Use a validation split, never the test
set, to pick per-layer thresholds from the curves (:meth:`SensitivityResult.suggest`).
"""

from __future__ import annotations

import json
import math
import numbers
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from deepzip._atomic import atomic_write_text
from deepzip.config import ACCURACY_SLACK, PruneConfig
from deepzip.errors import ConfigError
from deepzip.prune.api import layer_targets
from deepzip.prune.masks import check_finite, sparsity_mask
from deepzip.prune.parametrization import check_prunable, get_mask
from deepzip.targets import Skipped, Target, check_glob_sequence, check_module

__all__ = [
    "DEFAULT_SWEEP",
    "SensitivityResult",
    "sensitivity_analysis",
]

DEFAULT_SWEEP: tuple[float, ...] = (0.0, 0.3, 0.5, 0.6, 0.7, 0.8, 0.85, 0.9, 0.93, 0.95, 0.97)


@dataclass(frozen=True)
class SensitivityResult:
    """Accuracy per layer per sparsity, the unpruned baseline, and the parameters not swept
    with their reasons."""

    baseline: float
    sparsities: tuple[float, ...]
    curves: dict[str, tuple[float, ...]]
    weights: dict[str, int]
    skipped: tuple[Skipped, ...] = ()

    def suggest(self, max_drop: float) -> dict[str, float]:
        """Per layer, the largest swept sparsity whose accuracy is within ``max_drop``.

        ``max_drop`` is in accuracy units (0.01 = one point). Layers never within budget get 0.

        Raises:
            ConfigError: ``max_drop`` is negative or not finite.
        """
        if (
            isinstance(max_drop, bool)
            or not isinstance(max_drop, numbers.Real)
            or not math.isfinite(max_drop)
            or max_drop < 0
        ):
            raise ConfigError(f"max_drop must be a finite number >= 0, got {max_drop!r}")
        out: dict[str, float] = {}
        for name, accs in self.curves.items():
            ok = [
                s
                for s, a in zip(self.sparsities, accs, strict=True)
                if a >= self.baseline - max_drop - ACCURACY_SLACK  # exactly max_drop is in
            ]
            out[name] = max(ok, default=0.0)
        return out

    def to_dict(self) -> dict[str, object]:
        """JSON-ready form."""
        return {
            "baseline": self.baseline,
            "sparsities": list(self.sparsities),
            "layers": {
                name: {"weights": self.weights[name], "accuracy": list(accs)}
                for name, accs in self.curves.items()
            },
            "skipped": [{"name": s.name, "reason": s.reason} for s in self.skipped],
        }

    def save_json(self, path: str | Path) -> None:
        """Write :meth:`to_dict` as JSON (atomically)."""
        atomic_write_text(path, json.dumps(self.to_dict(), indent=2) + "\n")


def _stored(target: Target) -> torch.Tensor:
    """The tensor a sweep writes: a masked layer's stored original, or the plain parameter."""
    if get_mask(target.module, target.param_name) is not None:
        original = target.module.parametrizations[target.param_name].original  # type: ignore[union-attr,index]
        assert isinstance(original, torch.Tensor)
        return original
    value = getattr(target.module, target.param_name)
    assert isinstance(value, torch.Tensor)
    return value


def _sweep(sparsities: object) -> tuple[float, ...]:
    """The sweep as floats: any iterable of real numbers (a list, a NumPy array); a string,
    a bool or an item that is not a number is a ``ConfigError``."""
    if isinstance(sparsities, (str, bytes)):
        raise ConfigError(f"sparsities must be a sequence of numbers, got {sparsities!r}")
    try:
        items = list(sparsities)  # type: ignore[call-overload]
    except TypeError:
        raise ConfigError(
            f"sparsities must be a sequence of numbers, got {type(sparsities).__name__}"
        ) from None
    sweep: list[float] = []
    for s in items:
        try:
            if isinstance(s, (bool, str, bytes)):
                raise TypeError
            sweep.append(float(s))
        except (TypeError, ValueError):
            raise ConfigError(f"sensitivity sparsity must be a number, got {s!r}") from None
    return tuple(sweep)


def sensitivity_analysis(
    model: nn.Module,
    evaluate: Callable[[nn.Module], float],
    *,
    sparsities: Sequence[float] = DEFAULT_SWEEP,
    include: Sequence[str] = (),
    exclude: Sequence[str] = (),
    on_point: Callable[[str, float, float], None] | None = None,
) -> SensitivityResult:
    """Prune each selected layer alone at each sparsity and record ``evaluate(model)``.

    Args:
        model: the trained model (left unchanged).
        evaluate: ``evaluate(model) -> accuracy`` on a validation split.
        sparsities: the sweep, each in [0, 1).
        include: globs restricting the layers (see :func:`deepzip.targets.select_targets`).
        exclude: globs of layers to leave out.
        on_point: progress callback ``(layer, sparsity, accuracy)``.

    Raises:
        ConfigError: ``model`` not an ``nn.Module``; an empty sweep, a sparsity that is not a
            number in [0, 1), ``include``/``exclude`` given
            as one string, a glob matching nothing, or a selected layer that is quantized or
            carries a parametrization that is not deepzip's.
        InvalidTensorError: a selected weight holds NaN or infinity.

    Every selected layer is checked before ``evaluate`` is first called.
    """
    check_module(model, "sensitivity_analysis")
    sweep = _sweep(sparsities)
    if not sweep:
        raise ConfigError("sensitivity sweep is empty")
    for s in sweep:
        if not 0.0 <= s < 1.0:
            raise ConfigError(f"sensitivity sparsity must be in [0, 1), got {s!r}")
    check_glob_sequence(include, "include")  # tuple("fc*") would be the globs "f", "c", "*"
    check_glob_sequence(exclude, "exclude")
    config = PruneConfig(sparsity=0.0, include=tuple(include), exclude=tuple(exclude))
    chosen, skipped = layer_targets(model, config)
    for target, _ in chosen:  # every layer checked before the first evaluation
        # pruning its stored tensor would change nothing: refuse
        check_prunable(
            target.module,
            target.param_name,
            target.name,
            "run the sensitivity analysis before quantizing, or strip_ first (or exclude it)",
        )
        check_finite(target.name, _stored(target))
    baseline = evaluate(model)
    curves: dict[str, tuple[float, ...]] = {}
    weights: dict[str, int] = {}
    for target, _ in chosen:
        mask_mod = get_mask(target.module, target.param_name)
        stored = _stored(target)
        saved = stored.detach().clone()
        current = mask_mod.mask if mask_mod is not None else None
        accs = []
        try:
            for s in sweep:
                keep = sparsity_mask(saved, s, current, name=target.name)
                with torch.no_grad():
                    stored.copy_(saved * keep.to(saved.dtype))
                acc = evaluate(model)
                accs.append(acc)
                if on_point is not None:
                    on_point(target.name, s, acc)
        finally:
            with torch.no_grad():
                stored.copy_(saved)
        curves[target.name] = tuple(accs)
        weights[target.name] = int(saved.numel())
    return SensitivityResult(baseline, sweep, curves, weights, tuple(skipped))
