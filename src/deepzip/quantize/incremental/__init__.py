"""Incremental quantization: SLQ and MLQ (Xu et al., AAAI 2018) and INQ (Zhou et al., 2017).

Quantize part of each layer's weights, retrain the rest to absorb the error, repeat. The
result is the same shared-weight form every other quantizer produces
(``codebook[indices] * mask``), so export, coding and reports are shared.

    report, steps = slq_(model, SLQConfig(bits=5), retrain)      # within layers
    report, steps = mlq_(model, MLQConfig(bits="ternary"), retrain)  # across layers too
    report, steps = inq_(model, INQConfig(bits=5), retrain)      # powers of two
"""

from __future__ import annotations

from deepzip.quantize.incremental.api import IncrementalStep, inq_, mlq_, slq_, step_count
from deepzip.quantize.incremental.levels import (
    ReclusterResult,
    cluster_losses,
    inq_exponents,
    inq_levels,
    inq_round,
    recluster_1d,
    ternary_round,
    ternary_scale,
)
from deepzip.quantize.incremental.parametrization import (
    FrozenWeight,
    SymmetricSharedWeight,
    attach_frozen,
    attach_symmetric,
    get_frozen,
)

__all__ = [
    "FrozenWeight",
    "IncrementalStep",
    "ReclusterResult",
    "SymmetricSharedWeight",
    "attach_frozen",
    "attach_symmetric",
    "cluster_losses",
    "get_frozen",
    "inq_",
    "inq_exponents",
    "inq_levels",
    "inq_round",
    "mlq_",
    "recluster_1d",
    "slq_",
    "step_count",
    "ternary_round",
    "ternary_scale",
]
