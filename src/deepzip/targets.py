"""The one place that walks a module and decides which parameters are compressed.

By default the ``weight`` of every ``Linear``, ``Conv1d/2d/3d``, ``ConvTranspose1d/2d/3d`` and
``Embedding`` is a target.
``include`` globs restrict the selection and may add any floating-point parameter with at least
two dimensions (for example a ``MultiheadAttention``'s ``in_proj_weight``); ``exclude`` globs
remove. Every parameter that is not selected is recorded with its reason, so nothing is skipped
silently. Globs use ``fnmatch`` syntax and are matched against both the module name
(``encoder.layers.0.linear1``) and the parameter name (``encoder.layers.0.linear1.weight``).
A module registered under several names (``nn.Sequential(lin, nn.ReLU(), lin)`` names it ``0``
and ``2``) is one target, named by its first name, that every one of its names selects:
:meth:`Target.matches` is the one test every include, exclude, override and layer list uses.
A glob that matches nothing is an error naming the names there are: it is almost always a typo.

A parameter computed by a parametrization that is not deepzip's (``weight_norm``, whose
``original0`` and ``original1`` make the weight, ``orthogonal``, one's own) is skipped with that
reason: its stored tensor is not the weight, and pruning or weight sharing would replace the
user's parametrization. An uninitialized parameter of a lazy module (``LazyLinear`` before its
first forward pass) that would be selected is an error naming it; one that would not (a
``LazyBatchNorm1d``'s) is skipped with its reason. A layer of a default type whose ``weight``
is a buffer, not a parameter, is skipped with that reason: only parameters are compressed.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import cast

import torch
from torch import nn
from torch.nn.parameter import is_lazy
from torch.nn.utils import parametrize

from deepzip.errors import ConfigError, InvalidTensorError

__all__ = [
    "CONV_LAYER_TYPES",
    "DEFAULT_LAYER_TYPES",
    "Skipped",
    "Target",
    "TargetSelection",
    "check_config",
    "check_glob_sequence",
    "check_module",
    "check_patterns_match",
    "eval_mode",
    "layer_type",
    "listing",
    "matches",
    "select_targets",
]

# names listed in the error of a glob that matches nothing
_LISTED_NAMES = 24

CONV_LAYER_TYPES: tuple[type[nn.Module], ...] = (
    nn.Conv1d,
    nn.Conv2d,
    nn.Conv3d,
    nn.ConvTranspose1d,
    nn.ConvTranspose2d,
    nn.ConvTranspose3d,
)
"""The convolutions: their weights get ``conv_bits`` and the paper's 8-bit gap field."""

DEFAULT_LAYER_TYPES: tuple[type[nn.Module], ...] = (nn.Linear, *CONV_LAYER_TYPES, nn.Embedding)
"""Module types whose ``weight`` is compressed by default."""


@dataclass(frozen=True)
class Target:
    """One parameter selected for compression.

    Attributes:
        name: full parameter name as in ``state_dict`` of the plain model (``fc1.weight``).
        module_name: name of the owning module (``fc1``; ``""`` for the root).
        param_name: attribute name on the owning module (``weight``).
        module: the owning module.
        layer_type: class name of the owning module (``Linear``).
        module_aliases: the owning module's other names, in module order, when it is
            registered under several (``nn.Sequential(lin, nn.ReLU(), lin)``: ``("2",)``).
    """

    name: str
    module_name: str
    param_name: str
    module: nn.Module
    layer_type: str
    module_aliases: tuple[str, ...] = ()

    @property
    def module_names(self) -> tuple[str, ...]:
        """Every name of the owning module, the first one (``module_name``) first."""
        return (self.module_name, *self.module_aliases)

    @property
    def aliases(self) -> tuple[str, ...]:
        """The parameter's other full names (``2.weight`` beside ``0.weight``)."""
        return tuple(_full(m, self.param_name) for m in self.module_aliases)

    def matches(self, pattern: str) -> bool:
        """Whether a glob matches this parameter under any of its names (see :func:`matches`)."""
        return _matches_any(pattern, self.module_names, self.param_name)

    @property
    def tensor(self) -> torch.Tensor:
        """The parameter's current value (masked/shared if a parametrization is attached)."""
        value = getattr(self.module, self.param_name)
        assert isinstance(value, torch.Tensor)
        return value

    @property
    def numel(self) -> int:
        """Number of elements."""
        return int(self.tensor.numel())


@dataclass(frozen=True)
class Skipped:
    """A parameter left out of compression, and why."""

    name: str
    reason: str


@dataclass(frozen=True)
class TargetSelection:
    """The result of :func:`select_targets`."""

    targets: tuple[Target, ...]
    skipped: tuple[Skipped, ...]

    def names(self) -> list[str]:
        """Parameter names of the targets, in module order."""
        return [t.name for t in self.targets]

    def by_name(self, name: str) -> Target:
        """The target with this parameter name, or one of its aliases (``KeyError`` if absent)."""
        for t in self.targets:
            if t.name == name or name in t.aliases:
                return t
        raise KeyError(name)

    def check_materialized(self, action: str) -> None:
        """Raise ``InvalidTensorError`` if a target is on the ``meta`` device.

        A meta tensor has a shape but no values, so there is nothing to ``action`` (``"prune"``,
        ``"quantize"``); the message names the first such tensor and how many more there are.
        """
        meta = [t.name for t in self.targets if t.tensor.is_meta]
        if meta:
            more = f" (and {len(meta) - 1} more)" if len(meta) > 1 else ""
            raise InvalidTensorError(
                f"{meta[0]}{more}: a tensor on the meta device has no values to {action}; "
                "materialize the model first (model.to_empty(device=...), then load its weights)"
            )

    def check_overrides(self, patterns: Iterable[str], what: str) -> None:
        """Raise ``ConfigError`` for an override glob that matches none of the targets under
        any of their names; ``what`` names the targets (``"prunable layer"``)."""
        for pattern in patterns:
            if not any(t.matches(pattern) for t in self.targets):
                names = [n for t in self.targets for n in (t.name, *t.aliases)]
                raise ConfigError(
                    f"override pattern {pattern!r} matches no {what} "
                    f"(layers: {listing(names) if names else 'none'})"
                )


def layer_type(module: nn.Module) -> str:
    """The module's class name, seeing through parametrize's ``Parametrized<Class>`` wrapper."""
    cls = type(module)
    if parametrize.is_parametrized(module):
        cls = cls.__bases__[0]
    return cls.__name__


def matches(pattern: str, module_name: str, param_name: str) -> bool:
    """Whether a glob matches a module name or its full parameter name.

    One name only: to match a :class:`Target` under every name of its module, use
    :meth:`Target.matches`.
    """
    full = _full(module_name, param_name)
    return fnmatch.fnmatchcase(module_name, pattern) or fnmatch.fnmatchcase(full, pattern)


def _matches_any(pattern: str, module_names: Iterable[str], param_name: str) -> bool:
    """Whether a glob matches a parameter under any name of its module: the one rule of every
    include, exclude, override and layer list."""
    return any(matches(pattern, m, param_name) for m in module_names)


def _full(module_name: str, param_name: str) -> str:
    return f"{module_name}.{param_name}" if module_name else param_name


def _modules(model: nn.Module) -> list[tuple[tuple[str, ...], nn.Module]]:
    """(every name of the module, module) in module order, parametrize's own modules left
    out. A module registered under several names comes once, at its first name, with all of
    them (first first)."""
    # parametrize's own modules (the ParametrizationList and what it holds) are not layers;
    # found by identity, since at the root their names have no leading dot
    inner = {
        id(m)
        for module in model.modules()
        if parametrize.is_parametrized(module)
        for m in module.parametrizations.modules()  # type: ignore[union-attr]
    }
    names: dict[int, list[str]] = {}
    modules: list[nn.Module] = []
    for mod_name, module in model.named_modules(remove_duplicate=False):
        if id(module) in inner:
            continue
        if id(module) not in names:
            names[id(module)] = []
            modules.append(module)
        names[id(module)].append(mod_name)
    return [(tuple(names[id(module)]), module) for module in modules]


def _own_params(module: nn.Module) -> Iterable[tuple[str, torch.Tensor]]:
    """(attribute name, tensor) of the module's own parameters, seeing through
    parametrizations; a tensor registered under several attributes comes once per attribute
    (they are tied)."""
    seen: set[str] = set()
    if parametrize.is_parametrized(module):
        for attr in cast(nn.ModuleDict, module.parametrizations):
            seen.add(attr)
            yield attr, getattr(module, attr)
    for attr, param in module.named_parameters(recurse=False, remove_duplicate=False):
        if attr not in seen:
            yield attr, param


@contextmanager
def eval_mode(model: nn.Module) -> Iterator[None]:
    """``model.eval()`` for the block, then restore each submodule's own training flag (not
    ``model.train(was_training)``, which would set every submodule to the root's flag: a
    BatchNorm the user froze in eval mode inside a model in training mode came back training).
    """
    modes = [(module, module.training) for module in model.modules()]
    model.eval()
    try:
        yield
    finally:
        for module, training in modes:
            module.training = training


def check_module(model: object, verb: str) -> None:
    """Refuse a ``model`` that is not an ``nn.Module`` (a state dict, a path, ``None``).

    Raises:
        ConfigError: naming ``verb`` and the type given.
    """
    if not isinstance(model, nn.Module):
        raise ConfigError(f"{verb}() takes an nn.Module, got {type(model).__name__}")


def check_config(config: object, expected: type, verb: str) -> None:
    """Refuse a ``config`` that is not an ``expected`` (another technique's config, a dict).

    Raises:
        ConfigError: naming ``verb``, the expected type and the type given.
    """
    if not isinstance(config, expected):
        raise ConfigError(f"{verb}() takes a {expected.__name__}, got {type(config).__name__}")


def select_targets(
    model: nn.Module,
    *,
    include: Sequence[str] = (),
    exclude: Sequence[str] = (),
    layer_types: tuple[type[nn.Module], ...] = DEFAULT_LAYER_TYPES,
) -> TargetSelection:
    """Pick the parameters to compress and record every other parameter with its reason.

    Args:
        model: any ``nn.Module``.
        include: when non-empty, only parameters matching one of these globs are selected.
        exclude: parameters matching one of these globs are never selected.
        layer_types: module types whose ``weight`` is selected by default.

    A glob matches a parameter when it matches it under any name of its module
    (:meth:`Target.matches`). A module registered under several names gives one target,
    named by its first name, with the others in ``module_aliases``; a tensor stored under two
    attributes (of one module or of two) is tied, and skipped with that reason.

    A layer of one of ``layer_types`` whose ``weight`` is a buffer, not a parameter, is
    skipped with that reason (only parameters are compressed).

    Returns:
        The selected targets (module order) and the skipped parameters with reasons.

    Raises:
        ConfigError: ``include`` or ``exclude`` is a string, not a sequence of globs, or holds
            something other than a non-empty string; a glob in them matches no parameter at
            all; a parameter that would be selected is an uninitialized parameter of a lazy
            module; ``model`` is not an ``nn.Module``.
    """
    check_module(model, "select_targets")
    check_patterns_match(model, include, "include", layer_types=layer_types)
    check_patterns_match(model, exclude, "exclude", layer_types=layer_types)
    modules = _modules(model)
    entries = [
        (mod_names, attr, module, tensor)
        for mod_names, module in modules
        for attr, tensor in _own_params(module)
    ]
    # the attributes (of one module or of several) that store one tensor are tied; the other
    # names of a module registered under several names are not: it is one layer
    tied: dict[int, list[str]] = {}
    for mod_names, attr, module, tensor in entries:
        tied.setdefault(id(_underlying(module, attr, tensor)), []).append(_full(mod_names[0], attr))
    targets: list[Target] = []
    skipped: list[Skipped] = []
    for mod_names, attr, module, tensor in entries:
        full = _full(mod_names[0], attr)
        names = tied[id(_underlying(module, attr, tensor))]
        if len(names) > 1:
            others = ", ".join(n for n in names if n != full)
            skipped.append(Skipped(full, f"tied to {others}; shared weights are not compressed"))
            continue
        reason = _skip_reason(module, mod_names, attr, tensor, include, exclude, layer_types)
        if reason is None:
            reason = _foreign_parametrization(module, attr)
        if reason is None:
            kind = layer_type(module)
            targets.append(Target(full, mod_names[0], attr, module, kind, mod_names[1:]))
        else:
            skipped.append(Skipped(full, reason))
    for mod_names, module in _buffer_weights(modules, layer_types):
        # no parameter lists it, yet it is a layer left out all the same
        reason = _pattern_reason(mod_names, "weight", include, exclude) or (
            f"{layer_type(module)}.weight: a buffer, not a parameter; only parameters "
            "are compressed"
        )
        skipped.append(Skipped(_full(mod_names[0], "weight"), reason))
    return TargetSelection(tuple(targets), tuple(skipped))


def _buffer_weights(
    modules: list[tuple[tuple[str, ...], nn.Module]], layer_types: tuple[type[nn.Module], ...]
) -> list[tuple[tuple[str, ...], nn.Module]]:
    """The modules of ``layer_types`` whose ``weight`` is a buffer, not a parameter."""
    return [
        (mod_names, module)
        for mod_names, module in modules
        if isinstance(module, layer_types) and module._buffers.get("weight") is not None
    ]


def _plist(module: nn.Module, attr: str) -> nn.Module:
    """The ``ParametrizationList`` of a parametrized attribute."""
    return cast(nn.ModuleDict, module.parametrizations)[attr]


def _underlying(module: nn.Module, attr: str, tensor: torch.Tensor) -> object:
    """What stores an attribute: a parametrization's ``original``, the parametrization list
    itself when it stores several tensors (``original0``, ``original1``...), else the tensor."""
    if parametrize.is_parametrized(module, attr):
        plist = _plist(module, attr)
        return getattr(plist, "original", plist)
    return tensor


def _foreign_parametrization(module: nn.Module, attr: str) -> str | None:
    """The skip reason of a parameter computed by a parametrization that is not deepzip's
    (deepzip's own are the masks and quantizers its modules register); ``None`` otherwise."""
    if not parametrize.is_parametrized(module, attr):
        return None
    plist = _plist(module, attr)
    foreign = [type(p).__name__ for p in plist.children() if not _is_deepzips(p)]
    if not foreign:
        return None
    stored = ", ".join(n for n, _ in plist.named_parameters(recurse=False))
    return (
        f"{layer_type(module)}.{attr}: computed by {', '.join(foreign)} from {stored}, a "
        "parametrization deepzip does not manage; remove it first "
        "(torch.nn.utils.parametrize.remove_parametrizations) to compress this weight"
    )


def _is_deepzips(parametrization: nn.Module) -> bool:
    return type(parametrization).__module__.split(".", 1)[0] == "deepzip"


def _pattern_reason(
    mod_names: tuple[str, ...], attr: str, include: Sequence[str], exclude: Sequence[str]
) -> str | None:
    """The skip reason the globs give (excluded, or not included); ``None`` if they allow it."""
    for pattern in exclude:
        if _matches_any(pattern, mod_names, attr):
            return f"excluded by pattern {pattern!r}"
    if include and not any(_matches_any(p, mod_names, attr) for p in include):
        return "not matched by any include pattern"
    return None


def _skip_reason(
    module: nn.Module,
    mod_names: tuple[str, ...],
    attr: str,
    tensor: torch.Tensor,
    include: Sequence[str],
    exclude: Sequence[str],
    layer_types: tuple[type[nn.Module], ...],
) -> str | None:
    reason = _pattern_reason(mod_names, attr, include, exclude)
    if reason is not None:
        return reason
    explicitly_included = bool(include)  # what is left of a non-empty include matched it
    default_target = isinstance(module, layer_types) and attr == "weight"
    if is_lazy(tensor):
        if not (default_target or explicitly_included):
            # never selected whatever its shape, which is unknown until the forward pass
            kind = "bias/normalization vector" if attr == "bias" else "not a default target"
            return (
                f"{layer_type(module)}.{attr}: {kind} (an uninitialized parameter of a lazy module)"
            )
        full = _full(mod_names[0], attr)
        raise ConfigError(
            f"{full} is an uninitialized parameter of a lazy module ({layer_type(module)}); "
            "run a forward pass first, or exclude it"
        )
    if not tensor.is_floating_point():
        return f"not a floating-point tensor ({tensor.dtype})"
    if default_target:
        return None
    if explicitly_included:
        if tensor.dim() < 2:
            return (
                f"included by pattern but has {tensor.dim()} dimension(s); only weights "
                "with 2 or more dimensions are compressed"
            )
        return None
    if attr == "bias" or tensor.dim() < 2:
        return f"{layer_type(module)}.{attr}: bias/normalization vector (kept in float)"
    return f"{layer_type(module)}.{attr}: not a default target type; name it in include"


def check_glob_sequence(globs: Sequence[str], what: str) -> None:
    """Raise ``ConfigError`` for globs given as one string (it would be read as one glob per
    character), or for an item that is not a non-empty string (``""`` would match the root
    module's own parameters only; ``None`` or ``b"fc*"`` cannot be matched)."""
    if isinstance(globs, str):
        raise ConfigError(
            f"{what} must be a sequence of globs, got the string {globs!r} "
            f"(write ({globs!r},) or [{globs!r}])"
        )
    for glob in globs:
        if not isinstance(glob, str) or not glob:
            raise ConfigError(f"{what} globs must be non-empty strings, got {glob!r}")


def check_patterns_match(
    model: nn.Module,
    patterns: Sequence[str],
    what: str,
    *,
    layer_types: tuple[type[nn.Module], ...] = DEFAULT_LAYER_TYPES,
) -> None:
    """Raise ``ConfigError`` for a glob that matches no module or parameter of ``model`` under
    any of their names, naming the ones there are; or for ``patterns`` given as one string
    (see :func:`check_glob_sequence`). The ``weight`` buffer of a layer of ``layer_types``
    counts as a parameter (:func:`select_targets` lists it as skipped)."""
    check_glob_sequence(patterns, what)
    if not patterns:
        return
    modules = _modules(model)
    entries = [(mod_names, a) for mod_names, module in modules for a, _ in _own_params(module)]
    entries += [(mod_names, "weight") for mod_names, _ in _buffer_weights(modules, layer_types)]
    for pattern in patterns:
        if not any(_matches_any(pattern, mod_names, a) for mod_names, a in entries):
            names = [(m, a) for mod_names, a in entries for m in mod_names]
            layers = list(dict.fromkeys(m for m, _ in names if m))
            own = [a for m, a in names if not m]  # the root's own parameters
            parts = [f"layers: {listing(layers)}"] if layers else []
            parts += [f"parameters: {listing(own)}"] if own else []
            sample = "; ".join(parts) or "the model has no parameters"
            raise ConfigError(f"{what} pattern {pattern!r} matches no layer ({sample})")


def listing(names: Sequence[str]) -> str:
    """``names`` comma-separated, the first ``_LISTED_NAMES`` of them and a count of the rest."""
    shown = ", ".join(names[:_LISTED_NAMES])
    rest = len(names) - _LISTED_NAMES
    return f"{shown}, ... ({rest} more)" if rest > 0 else shown
