"""Reference models by name: the paper's LeNets and a small residual CNN."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

from torch import nn

from deepzip.errors import ConfigError
from deepzip.zoo.lenet import LeNet5, LeNet300100
from deepzip.zoo.resnet import BasicBlock, TinyResNet

__all__ = [
    "MODELS",
    "BasicBlock",
    "LeNet5",
    "LeNet300100",
    "TinyResNet",
    "create_model",
    "model_names",
]

MODELS: dict[str, Callable[..., nn.Module]] = {
    "lenet-300-100": LeNet300100,
    "lenet-5": LeNet5,
    "tiny-resnet": TinyResNet,
}
"""Model constructors by name; :func:`create_model` looks names up here."""


def model_names() -> list[str]:
    """The names :func:`create_model` accepts, sorted."""
    return sorted(MODELS)


def create_model(name: str, **kwargs: Any) -> nn.Module:
    """Build a freshly initialised model by name.

    Args:
        name: a key of :data:`MODELS`, e.g. ``"lenet-300-100"``.
        **kwargs: constructor arguments, e.g. ``num_classes=10`` or ``dropout=0.5``.

    Returns:
        The model, on the CPU, in training mode (initialised from torch's global RNG).

    Raises:
        ConfigError: an unknown name, an argument the constructor does not take, or a bad
            argument value.
    """
    factory = MODELS.get(name) if isinstance(name, str) else None
    if factory is None:
        raise ConfigError(f"unknown model {name!r}; known models: {', '.join(model_names())}")
    try:
        inspect.signature(factory).bind(**kwargs)
    except TypeError as exc:
        raise ConfigError(f"bad arguments for model {name!r}: {exc}") from exc
    return factory(**kwargs)
