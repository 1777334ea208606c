"""Reproducibility and device selection (``resolve_device`` lives in :mod:`deepzip.devices`,
which the file readers below this package use too)."""

from __future__ import annotations

import random

import numpy as np
import torch

from deepzip.devices import resolve_device
from deepzip.errors import ConfigError

__all__ = ["resolve_device", "seed_everything"]


def seed_everything(seed: int) -> None:
    """Seed Python's ``random``, NumPy's global RNG and torch's RNGs on every device.

    ``torch.manual_seed`` also seeds every CUDA device (lazily, so this is safe to call
    before CUDA is initialised or when it is absent).

    Args:
        seed: an integer in ``[0, 2**32)``.

    Raises:
        ConfigError: ``seed`` is not such an integer.
    """
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2**32:
        raise ConfigError(f"seed must be an integer in [0, 2**32), got {seed!r}")
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
