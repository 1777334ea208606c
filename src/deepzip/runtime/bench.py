"""Per-layer latency of the runtime form against the dense layer, for a ``.dzip`` file.

:func:`benchmark_layers` decodes the file dense into one copy of the model, runs it once on an
example input to record what each compressed layer receives, then times every compressed
layer two ways on that input — the dense layer and its runtime module — interleaved, medians
(see :mod:`deepzip.runtime.timing`). It also records what the automatic policy would pick at
that batch size, so a user sees whether the rule matches their machine.

The work is timed where it runs: on CUDA (an example input or model on a CUDA device) every
timed call waits for the device before its clock starts and before it stops, so the times
cover the kernels and not only their launch.
"""

from __future__ import annotations

import copy
import functools
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.nn.utils.parametrize import type_before_parametrizations

from deepzip.errors import ConfigError
from deepzip.format.api import load_model
from deepzip.format.dzip_reader import read_compressed
from deepzip.quantize.shared import SharedTensor
from deepzip.runtime.conv import SparseConv
from deepzip.runtime.load import (
    RuntimeReport,
    _check_overrides,
    _layer_decision,
    load_compressed,
    runtime_report,
)
from deepzip.runtime.policy import (
    RuntimePolicy,
    sparse_unsupported,
    weight_reading_parents,
)
from deepzip.runtime.sparse import SharedCSRModule
from deepzip.runtime.sparse_linear import SparseLinear
from deepzip.runtime.timing import check_counts, interleaved_medians, median_ms
from deepzip.targets import check_module

__all__ = ["LayerTiming", "ModelTiming", "benchmark_layers", "benchmark_model"]


@dataclass(frozen=True)
class LayerTiming:
    """One compressed layer, timed dense and in its runtime form.

    Attributes:
        name: the weight's name.
        layer_type: class name of the module.
        shape: the weight's shape.
        density: surviving weights / all weights.
        input_shape: the shape of the input the layer was timed on (empty if never called).
        dense_ms: median latency of the dense layer (``None``: the forward pass never
            called the layer, see ``note``).
        runtime_ms: median latency of the runtime module (``None``: no sparse form, or not
            called; see ``note``).
        dense_bytes: bytes of the dense weight in its dtype (as in ``RuntimeReport``).
        runtime_bytes: bytes of the runtime module's weight arrays, plus the float CSR copy a
            batch makes it build (dense bytes if it has no runtime form).
        policy_form: what the automatic policy picks at this batch size.
        policy_reason: why.
        note: why a timing is missing, else empty.
    """

    name: str
    layer_type: str
    shape: tuple[int, ...]
    density: float
    input_shape: tuple[int, ...]
    dense_ms: float | None
    runtime_ms: float | None
    dense_bytes: int
    runtime_bytes: int
    policy_form: str
    policy_reason: str
    note: str = ""

    @property
    def speedup(self) -> float | None:
        """``dense_ms / runtime_ms`` when both were measured."""
        if self.dense_ms is None or self.runtime_ms is None or self.runtime_ms <= 0:
            return None
        return self.dense_ms / self.runtime_ms

    def to_dict(self) -> dict[str, object]:
        """JSON-ready form."""
        return {
            "name": self.name,
            "type": self.layer_type,
            "shape": list(self.shape),
            "density": self.density,
            "input_shape": list(self.input_shape),
            "dense_ms": self.dense_ms,
            "runtime_ms": self.runtime_ms,
            "speedup": self.speedup,
            "dense_bytes": self.dense_bytes,
            "runtime_bytes": self.runtime_bytes,
            "policy_form": self.policy_form,
            "policy_reason": self.policy_reason,
            "note": self.note,
        }


def _capture_inputs(
    model: nn.Module, owners: list[str], example: torch.Tensor
) -> dict[str, torch.Tensor]:
    captured: dict[str, torch.Tensor] = {}
    handles = []
    for owner in owners:
        module = model.get_submodule(owner)

        def hook(_m: nn.Module, args: tuple[Any, ...], owner: str = owner) -> None:
            if owner not in captured and args and isinstance(args[0], torch.Tensor):
                captured[owner] = args[0].detach().clone()

        handles.append(module.register_forward_pre_hook(hook))
    try:
        with torch.inference_mode():
            _first_forward(model, example)
    finally:
        for h in handles:
            h.remove()
    return captured


def _work_device(example: torch.Tensor, *modules: nn.Module) -> torch.device:
    """The device the timed work runs on: the example's if it is CUDA, else the first CUDA
    device among the modules' parameters and buffers (a model that moves its input), else
    the example's."""
    if example.device.type == "cuda":
        return example.device
    for module in modules:
        for t in (*module.parameters(), *module.buffers()):
            if t.device.type == "cuda":
                return t.device
    return example.device


def _first_forward(model: nn.Module, example: torch.Tensor) -> Any:
    """``model(example)``, the first pass on the example: a model that cannot take an input of
    that shape raises ``ConfigError`` naming the shape and the model's own message."""
    try:
        return model(example)
    except (RuntimeError, ValueError, IndexError) as exc:
        dims = tuple(int(d) for d in example.shape)
        sample = ",".join(map(str, dims[1:])) or "()"
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ConfigError(
            f"the model's forward pass fails on an example input of shape {dims} "
            f"(batch {dims[0] if dims else 0}, sample shape {sample}): {reason}"
        ) from exc


def _dense_and_policy(
    path: str | os.PathLike[str],
    model: nn.Module,
    example_input: torch.Tensor,
    policy: RuntimePolicy | None,
    repeats: int,
    warmup: int,
    verb: str,
) -> tuple[RuntimePolicy, nn.Module]:
    """The policy (default: automatic at the example's batch size) and a copy of ``model``
    with the file's weights decoded dense, in eval mode (``repeats``/``warmup`` checked
    first; ``verb`` names the caller in errors)."""
    check_module(model, verb)
    if not isinstance(example_input, torch.Tensor):
        raise ConfigError(
            f"example_input must be a tensor (one batch), got {type(example_input).__name__}"
        )
    if example_input.dim() == 0:
        raise ConfigError("example_input needs a batch dimension")
    check_counts(repeats, warmup)  # before any work, and even if no layer gets timed
    batch = max(1, int(example_input.shape[0]))
    policy = policy if policy is not None else RuntimePolicy(batch_size=batch)
    return policy, load_model(copy.deepcopy(model), path).eval()


def benchmark_layers(
    path: str | os.PathLike[str],
    model: nn.Module,
    example_input: torch.Tensor,
    *,
    repeats: int = 30,
    warmup: int = 3,
    policy: RuntimePolicy | None = None,
) -> list[LayerTiming]:
    """Time every compressed layer of a ``.dzip`` file dense and in its runtime form.

    Args:
        path: the ``.dzip`` file.
        model: a module of the file's architecture (copied; not modified).
        example_input: one batch as the model takes it (its first dimension is the batch
            size the policy is asked about).
        repeats: timed repetitions of each form.
        warmup: untimed runs of each form first.
        policy: the policy whose choice is reported (default: automatic at the example's
            batch size).

    Returns:
        One :class:`LayerTiming` per compressed layer, in file order (a module registered
        under several names is one layer, timed under its first name).

    Raises:
        CheckpointError: the file does not fit the model.
        CorruptFileError, UnsupportedVersionError: the file is damaged or too new.
        ConfigError: ``model`` not an ``nn.Module``; bad ``repeats``/``warmup``, an
            example input that is not a tensor or has no dimension, or one the
            model cannot take (its forward pass fails: the message names the shape); a
            runtime override of ``policy`` that matches no compressed layer.
    """
    policy, dense_model = _dense_and_policy(
        path, model, example_input, policy, repeats, warmup, "benchmark_layers"
    )
    cf = read_compressed(path)
    owners = [name.rsplit(".", 1)[0] if "." in name else "" for name in cf.shared]
    parents = weight_reading_parents(dense_model)
    registered: dict[int, list[str]] = {}  # every name of every module (shared ones too)
    for module_name, m in dense_model.named_modules(remove_duplicate=False):
        registered.setdefault(id(m), []).append(module_name)
    layers: list[tuple[str, SharedTensor, str, str, nn.Module, list[tuple[str, str]]]] = []
    seen: set[tuple[int, str]] = set()
    for (name, s), owner in zip(cf.shared.items(), owners, strict=True):
        attr = name.rsplit(".", 1)[-1]
        module = dense_model.get_submodule(owner)
        if (id(module), attr) in seen:  # a module registered under several names: timed once
            continue
        seen.add((id(module), attr))
        names = [(owner, name)] + [
            (o, f"{o}.{attr}" if o else attr)
            for o in registered.get(id(module), [owner])
            if o != owner
        ]
        layers.append((name, s, owner, attr, module, names))
    # as load_compressed does, before any timing: an override that matches no layer
    _check_overrides(policy, [pair for *_, names in layers for pair in names], list(cf.shared))
    captured = _capture_inputs(dense_model, owners, example_input)
    timings: list[LayerTiming] = []
    for name, s, owner, attr, module, names in layers:
        weights = int(s.mask.numel())
        density = int(s.mask.sum()) / weights if weights else 0.0
        parent = parents.get(module)
        # the form load_compressed gives the layer (an override on any of its names, the
        # model itself as the layer)
        decision = _layer_decision(
            policy, names, module, attr, density, weights, dims=s.indices.dim(), parent=parent
        )
        unsupported = sparse_unsupported(module, attr, parent=parent)
        shape = tuple(int(d) for d in s.indices.shape)
        dense_bytes = weights * getattr(module, attr).element_size()  # as runtime_report
        x = captured.get(owner)
        runtime: SharedCSRModule | None = None
        if unsupported is None:
            if isinstance(module, nn.Linear):
                runtime = SparseLinear.from_shared(
                    s, module.bias, name=name, backend=policy.backend
                )
            else:
                runtime = SparseConv.from_conv(module, s, name=name, backend=policy.backend)
            runtime.to(getattr(module, attr).device)  # built on the CPU: onto the layer's device
            runtime.eval()
        runtime_bytes = runtime.weight_nbytes if runtime is not None else dense_bytes
        if x is None:
            note = "not called by the model's forward pass on the example input"
            timings.append(
                LayerTiming(
                    name,
                    type_before_parametrizations(module).__name__,
                    shape,
                    density,
                    (),
                    None,
                    None,
                    dense_bytes,
                    runtime_bytes,
                    decision.form,
                    decision.reason,
                    note,
                )
            )
            continue
        fns: list[Callable[[], object]] = [functools.partial(module, x)]
        if runtime is not None:
            fns.append(functools.partial(runtime, x))
        with torch.inference_mode():
            times = interleaved_medians(
                fns,
                repeats=repeats,
                warmup=warmup,
                device=_work_device(x, module),
            )
        if runtime is not None:  # a batch builds the float CSR copy: count it
            runtime_bytes = runtime.weight_nbytes + runtime.cache_nbytes
        timings.append(
            LayerTiming(
                name=name,
                layer_type=type_before_parametrizations(module).__name__,
                shape=shape,
                density=density,
                input_shape=tuple(int(d) for d in x.shape),
                dense_ms=median_ms(times[0]),
                runtime_ms=median_ms(times[1]) if runtime is not None else None,
                dense_bytes=dense_bytes,
                runtime_bytes=runtime_bytes,
                policy_form=decision.form,
                policy_reason=decision.reason,
                note=unsupported or "",
            )
        )
    return timings


def _output_tensors(output: object) -> list[torch.Tensor]:
    """The tensors of a model's output, in order: the output itself, or those of a tuple,
    list or dict of them (nested); anything else in it is left out."""
    if isinstance(output, torch.Tensor):
        return [output]
    if isinstance(output, Mapping):
        return [t for v in output.values() for t in _output_tensors(v)]
    if isinstance(output, (tuple, list)):
        return [t for v in output for t in _output_tensors(v)]
    return []


@dataclass(frozen=True)
class ModelTiming:
    """A whole model, decoded dense against loaded with :func:`load_compressed`.

    Attributes:
        dense_ms: median latency of the dense model.
        runtime_ms: median latency of the runtime model.
        max_abs_difference: largest difference between their outputs on the example (over
            every tensor of an output that is a tuple, list or dict of tensors).
        report: the runtime model's per-layer forms.
    """

    dense_ms: float
    runtime_ms: float
    max_abs_difference: float
    report: RuntimeReport

    @property
    def speedup(self) -> float:
        """``dense_ms / runtime_ms``."""
        return self.dense_ms / self.runtime_ms if self.runtime_ms > 0 else float("inf")

    def to_dict(self) -> dict[str, object]:
        """JSON-ready form."""
        return {
            "dense_ms": self.dense_ms,
            "runtime_ms": self.runtime_ms,
            "speedup": self.speedup,
            "max_abs_difference": self.max_abs_difference,
            "report": self.report.to_dict(),
        }


def benchmark_model(
    path: str | os.PathLike[str],
    model: nn.Module,
    example_input: torch.Tensor,
    *,
    repeats: int = 30,
    warmup: int = 3,
    policy: RuntimePolicy | None = None,
) -> ModelTiming:
    """Time the whole model decoded dense against the runtime model, interleaved.

    Args:
        path: the ``.dzip`` file.
        model: a module of the file's architecture (copied; not modified).
        example_input: one batch as the model takes it.
        repeats: timed repetitions of each.
        warmup: untimed runs of each first.
        policy: the runtime policy (default: automatic at the example's batch size).

    Raises:
        CheckpointError: the file does not fit the model.
        CorruptFileError, UnsupportedVersionError: the file is damaged or too new.
        ConfigError: ``model`` not an ``nn.Module``; bad ``repeats``/``warmup``, an
            example input that is not a tensor or has no dimension, or one the
            model cannot take (its forward pass fails: the message names the shape); a
            runtime override of ``policy`` that matches no compressed layer.
    """
    policy, dense = _dense_and_policy(
        path, model, example_input, policy, repeats, warmup, "benchmark_model"
    )
    runtime = load_compressed(path, copy.deepcopy(model), policy=policy).eval()
    with torch.inference_mode():
        expected = _output_tensors(_first_forward(dense, example_input))
        got = _output_tensors(runtime(example_input))
        difference = 0.0  # an empty batch: none
        for a, b in zip(expected, got, strict=True):
            if a.numel():
                difference = max(difference, float((a - b).abs().max()))
        times = interleaved_medians(
            [functools.partial(dense, example_input), functools.partial(runtime, example_input)],
            repeats=repeats,
            warmup=warmup,
            device=_work_device(example_input, dense, runtime),
        )
    return ModelTiming(
        median_ms(times[0]), median_ms(times[1]), difference, runtime_report(runtime)
    )
