"""Optimizers by name."""

from __future__ import annotations

import math

import torch
from torch.optim.optimizer import ParamsT

from deepzip.errors import ConfigError

__all__ = ["OPTIMIZERS", "make_optimizer"]

OPTIMIZERS = ("sgd", "adam", "adamw")
"""The names :func:`make_optimizer` accepts."""


def make_optimizer(
    params: ParamsT,
    name: str,
    lr: float,
    *,
    momentum: float = 0.9,
    weight_decay: float = 0.0,
) -> torch.optim.Optimizer:
    """Build an optimizer by name.

    Args:
        params: what ``torch.optim`` optimizers take, e.g. ``model.parameters()``.
        name: ``"sgd"`` (heavy-ball momentum, not Nesterov), ``"adam"`` (``weight_decay`` is
            an L2 penalty) or ``"adamw"`` (decoupled weight decay).
        lr: learning rate, > 0.
        momentum: SGD momentum in ``[0, 1)``; ignored by Adam and AdamW.
        weight_decay: weight decay, >= 0.

    Returns:
        The optimizer.

    Raises:
        ConfigError: an unknown name, a setting that is not a number or out of range, or
            ``params`` torch refuses (none at all, a non-leaf tensor, one given twice).
    """
    if not isinstance(name, str) or name not in OPTIMIZERS:
        raise ConfigError(f"unknown optimizer {name!r}; known optimizers: {', '.join(OPTIMIZERS)}")
    for setting, value in (("lr", lr), ("momentum", momentum), ("weight_decay", weight_decay)):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{setting} must be a number, got {value!r}")
    if not (math.isfinite(lr) and lr > 0):
        raise ConfigError(f"lr must be a finite number > 0, got {lr!r}")
    if not 0 <= momentum < 1:
        raise ConfigError(f"momentum must be in [0, 1), got {momentum!r}")
    if not (math.isfinite(weight_decay) and weight_decay >= 0):
        raise ConfigError(f"weight_decay must be a finite number >= 0, got {weight_decay!r}")
    try:  # torch's ValueError/TypeError: no parameters, a non-leaf tensor, a repeated one...
        if name == "sgd":
            return torch.optim.SGD(
                params, lr=lr, momentum=momentum, weight_decay=weight_decay, nesterov=False
            )
        if name == "adam":
            return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay)
        return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"cannot build the {name} optimizer: {exc}") from exc
