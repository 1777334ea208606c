"""Put runtime modules into a model: :func:`compress_modules_` and :func:`load_compressed`.

Each compressed layer either becomes a runtime module that computes from the shared, pruned
form (:class:`~deepzip.runtime.SparseLinear`, :class:`~deepzip.runtime.SparseConv`) — its
dense float weight is never built — or is decoded dense into the model, as the policy decides
(:class:`~deepzip.runtime.RuntimePolicy`). The :class:`RuntimeReport` lists every compressed
layer with its form and the reason.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path

import torch
from torch import nn
from torch.nn.utils import parametrize
from torch.nn.utils.parametrize import type_before_parametrizations

from deepzip.errors import CheckpointError, ConfigError
from deepzip.format.checkpoint import (
    check_keys_fit,
    check_loadable,
    check_not_meta,
    load_plain_,
    plain_state_dict,
)
from deepzip.format.dzip_reader import read_compressed
from deepzip.quantize.api import strip_
from deepzip.quantize.shared import SharedTensor
from deepzip.runtime.conv import SparseConv
from deepzip.runtime.policy import (
    Decision,
    LayerForm,
    RuntimePolicy,
    decide,
    weight_reading_parents,
)
from deepzip.runtime.sparse import SharedCSRModule, check_shared
from deepzip.runtime.sparse_linear import SparseLinear
from deepzip.targets import check_module

__all__ = [
    "LayerRuntime",
    "RuntimeReport",
    "compress_modules_",
    "load_compressed",
    "runtime_report",
]

_REPORT_ATTR = "_deepzip_runtime_report"


@dataclass(frozen=True)
class LayerRuntime:
    """One compressed layer in the runtime model.

    Attributes:
        name: the weight's name (``fc1.weight``).
        layer_type: class name of the original module (``Linear``).
        form: ``"sparse"`` (a runtime module) or ``"dense"`` (decoded).
        reason: why the policy picked that form.
        shape: the weight's shape.
        density: surviving weights / all weights.
        dense_bytes: bytes of the dense weight in its dtype.
        runtime_bytes: bytes of the weight as loaded (the compact sparse arrays, or dense);
            the first batch adds a float CSR copy (``SharedCSRModule.cache_nbytes``).
        aliases: the weight's other names, when its module is registered under several
            (``nn.Sequential(lin, act, lin)``): the layer is converted once, for all of them.
    """

    name: str
    layer_type: str
    form: LayerForm
    reason: str
    shape: tuple[int, ...]
    density: float
    dense_bytes: int
    runtime_bytes: int
    aliases: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, object]:
        """JSON-ready form."""
        return {
            "name": self.name,
            "aliases": list(self.aliases),
            "type": self.layer_type,
            "form": self.form,
            "reason": self.reason,
            "shape": list(self.shape),
            "density": self.density,
            "dense_bytes": self.dense_bytes,
            "runtime_bytes": self.runtime_bytes,
        }


@dataclass(frozen=True)
class RuntimeReport:
    """Every compressed layer, its form and why, and the weight memory it takes."""

    layers: tuple[LayerRuntime, ...]
    policy: RuntimePolicy

    @property
    def sparse(self) -> tuple[str, ...]:
        """Names of the layers that run sparse."""
        return tuple(layer.name for layer in self.layers if layer.form == "sparse")

    @property
    def dense(self) -> tuple[str, ...]:
        """Names of the layers decoded dense."""
        return tuple(layer.name for layer in self.layers if layer.form == "dense")

    @property
    def dense_bytes(self) -> int:
        """Bytes the compressed layers' weights take when dense."""
        return sum(layer.dense_bytes for layer in self.layers)

    @property
    def runtime_bytes(self) -> int:
        """Bytes the compressed layers' weights take in the runtime model."""
        return sum(layer.runtime_bytes for layer in self.layers)

    def to_dict(self) -> dict[str, object]:
        """JSON-ready form."""
        return {
            "layers": [layer.to_dict() for layer in self.layers],
            "dense_bytes": self.dense_bytes,
            "runtime_bytes": self.runtime_bytes,
            "batch_size": self.policy.batch_size,
            "mode": self.policy.mode,
        }


def _split(name: str) -> tuple[str, str]:
    return (name.rsplit(".", 1)[0], name.rsplit(".", 1)[1]) if "." in name else ("", name)


def _replace_everywhere(model: nn.Module, old: nn.Module, new: nn.Module) -> None:
    """Put ``new`` wherever ``old`` is registered (a module may be shared by several parents)."""
    for parent in model.modules():
        for key, child in list(parent._modules.items()):
            if child is old:
                parent._modules[key] = new


def _decode_dense(module: nn.Module, attr: str, shared: SharedTensor) -> None:
    if parametrize.is_parametrized(module, attr):
        parametrize.remove_parametrizations(module, attr, leave_parametrized=False)
    param = getattr(module, attr)
    with torch.no_grad():
        param.copy_(shared.dense().to(device=param.device, dtype=param.dtype))


@dataclass
class _Plan:
    """One compressed layer: its weight's name, module name, attribute, module and shared
    tensor, and the other ``(module name, weight name)`` pairs of the same module (registered
    under several names, or tied by an alias of the file)."""

    name: str
    owner: str
    attr: str
    module: nn.Module
    shared: SharedTensor
    others: list[tuple[str, str]]

    def names(self) -> list[tuple[str, str]]:
        """Every ``(module name, weight name)`` of the layer, its own first."""
        return [(self.owner, self.name), *self.others]


def _as_decoded(
    shared: Mapping[str, SharedTensor], dtypes: Mapping[str, torch.dtype]
) -> dict[str, SharedTensor]:
    """``shared`` with each float16/bfloat16 tensor's float32 codebook rounded to its dtype.

    A file stores every codebook in float32 and decodes a float16 or bfloat16 tensor to that
    dtype (``load_state_dict`` rounds each value once): rounded here, a layer decoded dense
    or run sparse gets the values ``load_model`` gives, whatever dtype the model holds. An
    alias keeps its target's very object.
    """
    out: dict[str, SharedTensor] = {}
    rounded: dict[int, SharedTensor] = {}
    for name, s in shared.items():
        dtype = dtypes.get(name, torch.float32)
        if dtype in (torch.float16, torch.bfloat16):
            if id(s) not in rounded:
                cb = s.codebook.to(dtype).to(s.codebook.dtype)
                rounded[id(s)] = SharedTensor(cb, s.indices, s.mask)
            s = rounded[id(s)]
        out[name] = s
    return out


def _same_shared(a: SharedTensor, b: SharedTensor) -> bool:
    if a is b:
        return True
    return all(
        x.shape == y.shape and x.dtype == y.dtype and torch.equal(x.cpu(), y.cpu())
        for x, y in ((a.codebook, b.codebook), (a.indices, b.indices), (a.mask, b.mask))
    )


def compress_modules_(
    model: nn.Module,
    shared: Mapping[str, SharedTensor],
    *,
    policy: RuntimePolicy | None = None,
) -> RuntimeReport:
    """Replace compressed layers of ``model`` by runtime modules, in place, per ``policy``.

    A layer that goes sparse is replaced (everywhere it is registered) by a
    :class:`~deepzip.runtime.SparseLinear` or :class:`~deepzip.runtime.SparseConv` built from
    its shared form, on the device of the module it replaces, with its bias and training
    flag; no dense float weight is built for it. A layer kept dense gets the decoded weight
    (``codebook[index] * mask``) written into its parameter, in the parameter's dtype; any
    deepzip parametrization on it is removed first. The report is also kept on the model
    (see :func:`runtime_report`).

    Args:
        model: the model; its compressed layers' own weights are ignored.
        shared: ``{weight name: (codebook, indices, mask)}`` (``export_shared`` or a
            ``.dzip`` file's ``read_compressed(...).shared``).
        policy: the rule (default :class:`RuntimePolicy`: automatic, batch size 1).

    Returns:
        The per-layer report.

    A module registered under several names (``nn.Sequential(lin, act, lin)``) is one layer:
    it is replaced or decoded once, wherever it is registered, and has one row in the report
    (under the first name of ``shared`` that reaches it, the others in ``aliases``).
    ``shared`` may name it under any or all of its names (a ``.dzip`` file of such a model
    holds the second name as an alias of the first); an override glob may name any of them,
    and the last override matching one of them decides. Layers of different modules that
    share one ``Parameter`` (an alias in the file) are separate layers with the same values.

    Raises:
        CheckpointError: a name that is not a parameter of ``model``, a shape mismatch, a
            parameter on the meta device, or two names of one module's weight with different
            shared tensors (checked for every layer before the model is touched).
        InvalidTensorError: a malformed shared tensor (names it).
        ConfigError: an override glob that matches no compressed layer; ``model`` not an
            ``nn.Module``.
    """
    check_module(model, "compress_modules_")
    policy = policy if policy is not None else RuntimePolicy()
    return _apply(model, _plan(model, shared, policy), policy)


def _plan(
    model: nn.Module, shared: Mapping[str, SharedTensor], policy: RuntimePolicy
) -> list[_Plan]:
    """Check every layer of ``shared`` against ``model`` and ``policy``, touching nothing.

    Raises:
        CheckpointError, InvalidTensorError, ConfigError: see :func:`compress_modules_`.
    """
    plans: list[_Plan] = []
    by_layer: dict[tuple[int, str], _Plan] = {}
    registered: dict[int, list[str]] = {}  # every name of every module (shared ones too)
    for module_name, m in model.named_modules(remove_duplicate=False):
        registered.setdefault(id(m), []).append(module_name)
    for name, s in shared.items():
        owner, attr = _split(name)
        try:
            module = model.get_submodule(owner)
        except AttributeError:
            raise CheckpointError(
                f"compressed tensor {name!r} names no module of the model"
            ) from None
        current = getattr(module, attr, None)
        if not isinstance(current, torch.Tensor):
            raise CheckpointError(f"compressed tensor {name!r}: the model has no such parameter")
        if current.is_meta:  # a copy into it does nothing, a runtime module would lose its data
            raise CheckpointError(
                f"compressed tensor {name!r}: the model's parameter is on the meta device, "
                "which holds no memory; materialize the model first (model.to_empty(device=...))"
            )
        if tuple(current.shape) != tuple(s.indices.shape):
            raise CheckpointError(
                f"compressed tensor {name!r} has shape {tuple(s.indices.shape)}, the model "
                f"expects {tuple(current.shape)}"
            )
        plan = by_layer.get((id(module), attr))
        if plan is None or plan.shared is not s:
            check_shared(name, s, matrix=False)  # a tensor of < 2 dimensions is decoded dense
        if plan is not None:  # the same module's weight under another name: one layer
            if not _same_shared(plan.shared, s):
                raise CheckpointError(
                    f"compressed tensors {plan.name!r} and {name!r} are the same parameter of "
                    "the model (one module registered twice) but hold different values"
                )
            continue
        others = [
            (o, f"{o}.{attr}" if o else attr)
            for o in registered.get(id(module), [owner])
            if o != owner
        ]
        plan = _Plan(name, owner, attr, module, s, others)
        by_layer[(id(module), attr)] = plan
        plans.append(plan)
    _check_overrides(policy, [pair for p in plans for pair in p.names()], list(shared))
    return plans


def _check_overrides(
    policy: RuntimePolicy, names: list[tuple[str, str]], layers: list[str]
) -> None:
    """Refuse an override of ``policy`` that matches none of ``names`` (every
    ``(module name, tensor name)`` of every compressed layer; ``layers``, the file's tensor
    names, go in the message).

    Raises:
        ConfigError: naming the override's pattern.
    """
    for o in policy.overrides:
        if not any(o.matches(*pair) for pair in names):
            raise ConfigError(
                f"runtime override {o.pattern!r} matches no compressed layer "
                f"({', '.join(layers) or 'none'})"
            )


def _layer_decision(
    policy: RuntimePolicy,
    names: list[tuple[str, str]],
    module: nn.Module,
    attr: str,
    density: float,
    weights: int,
    *,
    dims: int,
    parent: str | None = None,
) -> Decision:
    """The form :func:`compress_modules_` gives one layer: :func:`decide`, then what no
    runtime module can do.

    Args:
        policy: the rule.
        names: every ``(module name, tensor name)`` of the layer, its own first; an override
            that matches any of them applies (the name the last matching override matches
            decides).
        module, attr: the layer and its tensor's attribute name.
        density, weights: surviving weights / all weights, and all weights.
        dims: the tensor's number of dimensions (a runtime matrix needs at least 2).
        parent: see :func:`decide`.
    """
    owner = names[0][0]
    deciding = names[0]
    for o in policy.overrides:
        deciding = next((pair for pair in names if o.matches(*pair)), deciding)
    decision = decide(policy, *deciding, module, attr, density, weights, parent=parent)
    if decision.form == "sparse" and owner == "":
        decision = replace(
            decision,
            form="dense",
            reason="the model itself is the layer: a runtime module cannot replace it",
        )
    if decision.form == "sparse" and dims < 2:
        decision = replace(
            decision,
            form="dense",
            reason=f"a {dims}-D tensor has no sparse runtime form (a runtime "
            "matrix needs at least 2 dimensions)",
        )
    return decision


def _apply(model: nn.Module, plans: list[_Plan], policy: RuntimePolicy) -> RuntimeReport:
    """Replace or decode the layers of checked ``plans`` in ``model`` (see :func:`_plan`).

    Every dense decode runs before any runtime module is built, so that a runtime module
    takes the decoded tensors of its layer (a quantized bias) whatever the plans' order.
    """
    parents = weight_reading_parents(model)
    decisions: list[Decision] = []
    densities: list[float] = []
    dense_bytes: list[int] = []
    for plan in plans:
        attr, module, s = plan.attr, plan.module, plan.shared
        weights = int(s.mask.numel())
        density = int(s.mask.sum()) / weights if weights else 0.0
        densities.append(density)
        dense_bytes.append(weights * getattr(module, attr).element_size())
        decisions.append(
            _layer_decision(
                policy,
                plan.names(),
                module,
                attr,
                density,
                weights,
                dims=s.indices.dim(),
                parent=parents.get(module),
            )
        )
    for plan, decision in zip(plans, decisions, strict=True):
        if decision.form == "dense":
            _decode_dense(plan.module, plan.attr, plan.shared)
    runtime_bytes = list(dense_bytes)
    for i, (plan, decision) in enumerate(zip(plans, decisions, strict=True)):
        if decision.form != "sparse":
            continue
        name, attr, module, s = plan.name, plan.attr, plan.module, plan.shared
        bias = getattr(module, "bias", None)
        runtime: SharedCSRModule
        if isinstance(module, nn.Linear):
            runtime = SparseLinear.from_shared(s, bias, name=name, backend=policy.backend)
        else:
            runtime = SparseConv.from_conv(module, s, name=name, backend=policy.backend)
        runtime.to(getattr(module, attr).device)
        runtime.train(module.training)
        _replace_everywhere(model, module, runtime)
        runtime_bytes[i] = runtime.weight_nbytes
    layers = tuple(
        LayerRuntime(
            name=plan.name,
            layer_type=type_before_parametrizations(plan.module).__name__,
            form=decision.form,
            reason=decision.reason,
            shape=tuple(int(d) for d in plan.shared.indices.shape),
            density=density,
            dense_bytes=dense,
            runtime_bytes=used,
            aliases=tuple(name for _, name in plan.others),
        )
        for plan, decision, density, dense, used in zip(
            plans, decisions, densities, dense_bytes, runtime_bytes, strict=True
        )
    )
    report = RuntimeReport(layers, policy)
    object.__setattr__(model, _REPORT_ATTR, report)
    return report


def runtime_report(model: nn.Module) -> RuntimeReport:
    """The report of the last :func:`compress_modules_`/:func:`load_compressed` on ``model``.

    Raises:
        ConfigError: the model has no runtime modules from deepzip.
    """
    report = getattr(model, _REPORT_ATTR, None)
    if not isinstance(report, RuntimeReport):
        raise ConfigError(
            f"{type(model).__name__} has no runtime report: it was not built by "
            "deepzip.runtime.load_compressed or compress_modules_"
        )
    return report


def load_compressed(
    path: str | os.PathLike[str],
    model: nn.Module,
    *,
    policy: RuntimePolicy | None = None,
    batch_size_hint: int | None = None,
    strict: bool = True,
) -> nn.Module:
    """Load a ``.dzip`` file into ``model`` so that its compressed layers run sparse.

    The file's plain tensors (biases, buffers, unquantized weights) are loaded like
    ``load_state_dict``; each quantized layer becomes a runtime module or is decoded dense as
    ``policy`` decides (see :func:`compress_modules_`). A tied tensor (an alias in the file)
    gives all its names the same values; a module registered under two names is one layer.
    Dense float weights are never built for the layers that go sparse. Any deepzip masks or
    shared weights on ``model`` are removed first. ``runtime_report(model)`` gives the
    per-layer report.

    Args:
        path: the ``.dzip`` file.
        model: a module of the architecture the file was saved from, on the device to run on.
        policy: the rule (default :class:`RuntimePolicy`).
        batch_size_hint: the batch size the model will mostly run at; replaces
            ``policy.batch_size``.
        strict: the file's tensor names must equal the model's exactly.

    Returns:
        ``model``, modified in place.

    Raises:
        CheckpointError: missing or unexpected keys (with ``strict``), a shape mismatch, or
            a tensor of ``model`` on the meta device (loading into it would copy nothing),
            named.
        CorruptFileError, UnsupportedVersionError: the file is damaged or too new.
        InvalidTensorError: a malformed shared tensor (names it).
        ConfigError: a bad ``batch_size_hint`` or override; ``model`` not an ``nn.Module``.

        All of these are checked before the model is touched: a failed load leaves it as it
        was.
    """
    check_module(model, "load_compressed")
    policy = policy if policy is not None else RuntimePolicy()
    if batch_size_hint is not None:
        policy = replace(policy, batch_size=batch_size_hint)  # validated by __post_init__
    source = Path(path)
    cf = read_compressed(source)
    shared = _as_decoded(cf.shared, cf.dtypes)
    expected = plain_state_dict(model)
    names = list(cf.order)
    missing = [n for n in expected if n not in cf.raw and n not in shared]
    unexpected = [n for n in names if n not in expected]
    if strict:
        check_keys_fit(source, missing, unexpected)
    for name, tensor in expected.items():
        found = cf.raw.get(name)
        shape = (
            tuple(found.shape)
            if found is not None
            else tuple(shared[name].indices.shape)
            if name in shared
            else None
        )
        if shape is not None and shape != tuple(tensor.shape):
            raise CheckpointError(
                f"{source}: tensor {name!r} has shape {shape}, the model expects "
                f"{tuple(tensor.shape)}"
            )
    check_not_meta(
        source, {n: t for n, t in expected.items() if n in cf.raw or n in shared}, saving=False
    )
    for name, s in shared.items():  # only a layer made sparse needs >= 2 dimensions
        if name not in cf.aliases:  # an alias is its target's very object: checked once
            check_shared(f"{source}: {name}", s, matrix=False)
    # everything compress_modules_ checks (overrides too), before strip_ touches the model;
    # strip_ and load_state_dict keep the module objects the plans hold
    plans = _plan(model, {k: v for k, v in shared.items() if k in expected}, policy)
    raw = {k: v for k, v in cf.raw.items() if k in expected}
    check_loadable(source, model, raw)  # a parametrization of the model's own (weight_norm)
    strip_(model)
    load_plain_(model, raw, source)  # through such a parametrization's right_inverse
    _apply(model, plans, policy)
    return model
