"""A training harness for any model, batch iterable, loss and optimizer.

The library never prints: progress display is a :class:`Callback` supplied by the caller,
and epoch summaries go to the ``deepzip.train.loop`` logger.
"""

from __future__ import annotations

from deepzip.train.callbacks import Callback, EpochRecord, FitHistory, FitState, LambdaCallback
from deepzip.train.distill import DistillationLoss, pack_teacher_targets
from deepzip.train.loop import EvalResult, evaluate, fit, predict_logits
from deepzip.train.optim import OPTIMIZERS, make_optimizer
from deepzip.train.seed import resolve_device, seed_everything

__all__ = [
    "OPTIMIZERS",
    "Callback",
    "DistillationLoss",
    "EpochRecord",
    "EvalResult",
    "FitHistory",
    "FitState",
    "LambdaCallback",
    "evaluate",
    "fit",
    "make_optimizer",
    "pack_teacher_targets",
    "predict_logits",
    "resolve_device",
    "seed_everything",
]
