"""Finding deepzip's own parametrization on a module's tensor."""

from __future__ import annotations

from typing import TypeVar

from torch import nn
from torch.nn.utils import parametrize

_P = TypeVar("_P", bound=nn.Module)


def find_parametrization(module: nn.Module, attr: str, kind: type[_P]) -> _P | None:
    """The first parametrization of type ``kind`` on ``module.attr``, or ``None``."""
    if not parametrize.is_parametrized(module, attr):
        return None
    for p in module.parametrizations[attr]:  # type: ignore[index]
        if isinstance(p, kind):
            return p
    return None
