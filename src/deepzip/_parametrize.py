"""Finding deepzip's own parametrization on a module's tensor, and the order of a module's
tensors as it was before any parametrization."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import TypeVar, cast

from torch import nn
from torch.nn.utils import parametrize

_P = TypeVar("_P", bound=nn.Module)
_T = TypeVar("_T")

__all__ = [
    "find_parametrization",
    "own_tensor_order",
    "remember_tensor_order",
    "restore_tensor_order_",
    "tensor_order_kept",
]


def find_parametrization(module: nn.Module, attr: str, kind: type[_P]) -> _P | None:
    """The first parametrization of type ``kind`` on ``module.attr``, or ``None``."""
    if not parametrize.is_parametrized(module, attr):
        return None
    for p in module.parametrizations[attr]:  # type: ignore[index]
        if isinstance(p, kind):
            return p
    return None


def _is_parameter(plist: nn.Module) -> bool:
    """Whether a ``ParametrizationList`` stores a parameter (``original``, or ``original0``,
    ``original1``... for a ``right_inverse`` that gives several), not a buffer."""
    return any(True for _ in plist.parameters(recurse=False))


_ORDER = "_deepzip_tensor_order"
"""The module attribute where :func:`remember_tensor_order` records the order."""


def remember_tensor_order(module: nn.Module) -> None:
    """Record the names of ``module``'s own parameters and buffers, in order, before deepzip
    parametrizes one of them (registering a parametrization moves the tensor after all the
    others: a pruned ``Linear`` lists ``bias`` before ``weight``). Only the first call on a
    module that no parametrization has reordered yet records anything."""
    if _ORDER not in module.__dict__ and not parametrize.is_parametrized(module):
        module.__dict__[_ORDER] = (*module._parameters, *module._buffers)


def own_tensor_order(module: nn.Module) -> list[str]:
    """The attribute names of ``module``'s own parameters, then its own buffers, in the
    order the module had before it was parametrized.

    The order :func:`remember_tensor_order` recorded when deepzip first parametrized the
    module, when it did; names registered since come after, in the module's order. Otherwise
    (a module parametrized by someone else first, ``weight_norm`` say) where the tensor was
    is not known: a parametrized parameter is put first among the parameters (where every
    ``torch.nn`` layer deepzip compresses registers its ``weight``), a parametrized buffer
    first among the buffers, several of them in the order they were parametrized. Names of
    ``None`` parameters and buffers (``bias=False``) are included.
    """
    if not parametrize.is_parametrized(module):
        current = [*module._parameters, *module._buffers]
    else:
        plists = cast(nn.ModuleDict, module.parametrizations)
        params = [attr for attr, plist in plists.items() if _is_parameter(plist)]
        buffers = [attr for attr, plist in plists.items() if not _is_parameter(plist)]
        current = [*params, *module._parameters, *buffers, *module._buffers]
    recorded = module.__dict__.get(_ORDER)
    if recorded is None:
        return current
    present = set(current)
    first = [name for name in recorded if name in present]
    known = set(first)
    return first + [name for name in current if name not in known]


def restore_tensor_order_(module: nn.Module, order: Sequence[str]) -> None:
    """Reorder ``module``'s own parameters and buffers in place to follow ``order``.

    After a parametrization is removed, torch registers the tensor again after the others
    (a stripped ``Linear`` lists ``bias`` before ``weight``); ``order`` is what
    :func:`own_tensor_order` gave before. Names not in ``order`` keep their relative order,
    after the others. The tensors themselves are untouched.
    """
    rank = {name: i for i, name in enumerate(order)}

    def reorder(table: dict[str, _T]) -> None:
        ordered = sorted(table.items(), key=lambda item: rank.get(item[0], len(rank)))
        table.clear()
        table.update(ordered)

    reorder(module._parameters)
    reorder(module._buffers)


@contextmanager
def tensor_order_kept(model: nn.Module) -> Iterator[None]:
    """Put each parametrized module's own tensors back in their :func:`own_tensor_order` when
    the block ends (the block removes parametrizations: ``strip_``), also when it raises."""
    orders = [(m, own_tensor_order(m)) for m in model.modules() if parametrize.is_parametrized(m)]
    try:
        yield
    finally:
        for module, order in orders:
            restore_tensor_order_(module, order)
