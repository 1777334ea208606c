"""Iterative prune → retrain, and the paper's dropout adjustment.

The loop is model- and data-agnostic: the caller passes ``retrain(model, step)`` and
``evaluate(model) -> accuracy`` callables (the CLI builds them from :mod:`deepzip.train`).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

from torch import nn

from deepzip.config import PruneConfig, ScheduleConfig
from deepzip.prune.api import PruneReport, prune_
from deepzip.targets import DEFAULT_LAYER_TYPES, check_config, check_module

__all__ = [
    "StepRecord",
    "iterative_prune",
    "scale_dropout_",
]

ORIGINAL_P_ATTR = "_deepzip_original_p"
"""The attribute on a dropout module that keeps its rate before the schedule scaled it (run
state saves and restores it: ``deepzip.pipeline``)."""


def scale_dropout_(model: nn.Module, kept_by_layer: dict[str, float]) -> dict[str, float]:
    """Scale each dropout rate by ``sqrt(kept / original connections)`` (Han et al. 2015, eq. 2).

    A pruned layer has fewer connections and so less co-adaptation, so it needs less dropout.
    Each ``Dropout`` module is tied to the nearest layer before it in module order (the layer
    whose outputs it drops): a module owning a tensor of ``kept_by_layer``, or a ``Linear``,
    convolution or ``Embedding`` (see :data:`deepzip.targets.DEFAULT_LAYER_TYPES`). A dropout
    whose layer is not in ``kept_by_layer`` (left dense, excluded or skipped), or with no
    layer before it, is left unchanged. The rate is always computed from the dropout's
    original rate, so repeated calls do not compound.

    Args:
        model: the model, modified in place.
        kept_by_layer: ``{parameter name: kept fraction}``, e.g. ``PruneReport.kept_by_layer()``.

    Returns:
        ``{dropout module name: new rate}`` for every dropout changed.
    """
    last_layer: str | None = None
    changed: dict[str, float] = {}
    for name, module in model.named_modules():
        if isinstance(module, DEFAULT_LAYER_TYPES):
            last_layer = None  # a layer left dense, unless it owns a pruned tensor below
        for pname in kept_by_layer:
            if pname.rpartition(".")[0] == name:  # a root parameter ("weight") has owner ""
                last_layer = pname
        if isinstance(module, nn.modules.dropout._DropoutNd) and last_layer is not None:
            original = getattr(module, ORIGINAL_P_ATTR, module.p)
            setattr(module, ORIGINAL_P_ATTR, original)
            module.p = float(original * math.sqrt(kept_by_layer[last_layer]))
            changed[name] = module.p
    return changed


@dataclass(frozen=True)
class StepRecord:
    """What one prune → retrain step did."""

    step: int
    progress: float
    kept_fraction: float
    kept_by_layer: dict[str, float]
    accuracy_after_prune: float | None
    accuracy_after_retrain: float | None

    def to_dict(self) -> dict[str, object]:
        """JSON-ready form."""
        return {
            "step": self.step,
            "progress": self.progress,
            "kept_fraction": self.kept_fraction,
            "kept_by_layer": self.kept_by_layer,
            "accuracy_after_prune": self.accuracy_after_prune,
            "accuracy_after_retrain": self.accuracy_after_retrain,
        }


def iterative_prune(
    model: nn.Module,
    config: PruneConfig,
    schedule: ScheduleConfig,
    retrain: Callable[[nn.Module, int], None],
    *,
    evaluate: Callable[[nn.Module], float] | None = None,
    scale_dropout: bool = True,
    on_step: Callable[[StepRecord], None] | None = None,
) -> tuple[PruneReport, list[StepRecord]]:
    """Prune to the target over the schedule's steps, retraining after each one.

    Args:
        model: any ``nn.Module``; masks are attached in place and stay attached (call
            :func:`~deepzip.prune.strip_` to make them permanent).
        config: the final per-layer targets.
        schedule: the progress fractions of the steps.
        retrain: called as ``retrain(model, step_index)`` after each pruning step; it should
            train with a reduced learning rate (``RetrainConfig.retrain_lr``).
        evaluate: optional ``evaluate(model) -> accuracy`` on a validation split, recorded
            after pruning and after retraining at each step.
        scale_dropout: apply :func:`scale_dropout_` after each step.
        on_step: called with each step's record (progress display, logging).

    Returns:
        The final report and one record per step.

    Raises:
        ConfigError: ``model`` not an ``nn.Module``, ``config`` not a :class:`PruneConfig`,
            ``schedule`` not a :class:`ScheduleConfig`; and what :func:`~deepzip.prune_`
            raises.
    """
    check_module(model, "iterative_prune")
    check_config(config, PruneConfig, "iterative_prune")
    check_config(schedule, ScheduleConfig, "iterative_prune")
    records: list[StepRecord] = []
    report: PruneReport | None = None
    for i, fraction in enumerate(schedule.fractions()):
        report = prune_(model, config, progress=fraction)
        kept = report.kept_by_layer()
        if scale_dropout:
            scale_dropout_(model, kept)
        acc_pruned = evaluate(model) if evaluate is not None else None
        retrain(model, i)
        acc_retrained = evaluate(model) if evaluate is not None else None
        record = StepRecord(i, fraction, report.kept_fraction, kept, acc_pruned, acc_retrained)
        records.append(record)
        if on_step is not None:
            on_step(record)
    assert report is not None  # fractions() is never empty
    return report, records
