"""Stage 1 of Deep Compression: magnitude pruning with masks, schedules and sensitivity."""

from __future__ import annotations

from deepzip.prune.api import (
    LayerRecord,
    PruneReport,
    layer_targets,
    mask_dict,
    prune_,
    pruning_report,
    strip_,
)
from deepzip.prune.masks import (
    check_finite,
    global_magnitude_masks,
    quality_mask,
    sparsity_mask,
)
from deepzip.prune.parametrization import WeightMask, attach_mask, get_mask, is_masked
from deepzip.prune.schedule import StepRecord, iterative_prune, scale_dropout_
from deepzip.prune.sensitivity import DEFAULT_SWEEP, SensitivityResult, sensitivity_analysis

__all__ = [
    "DEFAULT_SWEEP",
    "LayerRecord",
    "PruneReport",
    "SensitivityResult",
    "StepRecord",
    "WeightMask",
    "attach_mask",
    "check_finite",
    "get_mask",
    "global_magnitude_masks",
    "is_masked",
    "iterative_prune",
    "layer_targets",
    "mask_dict",
    "prune_",
    "pruning_report",
    "quality_mask",
    "scale_dropout_",
    "sensitivity_analysis",
    "sparsity_mask",
    "strip_",
]
