"""Weightless: lossy weight encoding with a Bloomier filter, retraining around its errors.

Reagen et al. (ICML 2018) store a pruned, clustered layer as a Bloomier filter that maps each
position to its cluster index and stores no positions at all (see
``deepzip.coding.bloomier``). Positions that were pruned can decode as weights (false
positives, rate ``K / 2**t``), deterministically, so the network is retrained around them,
layer after layer:

1. the layer is pruned and clustered (``deepzip.prune_`` and ``deepzip.quantize_``; a layer
   that is pruned but not clustered yet is clustered here, just before it is encoded, so the
   layers after it keep training in float until their turn);
2. its clusters are encoded in a filter;
3. the layer is frozen as the filter decodes it, false positives included;
4. the caller's ``retrain(model, layer)`` trains the layers after it (registration order,
   ``model.named_modules()``): the parameters of every module before it are frozen meanwhile,
   except the codebooks and biases of encoded layers that keep training (``train_encoded``);
5. next layer.

The cell width ``t`` trades the filter's size against its false positives. It is fixed, or
chosen per layer: every ``t`` from small to large is tried (encode, freeze, retrain,
``evaluate``) and the smallest whose accuracy stays within the budget is kept (when none
is, the most accurate one, as its retraining left the model).

The encoded layers carry their filters (:class:`~deepzip.quantize.weightless.WeightlessWeight`);
``deepzip.save`` stores them as the ``.dzip`` Bloomier encoding.
"""

from __future__ import annotations

import math
import numbers
import re
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, replace

import numpy as np
import torch
from torch import nn
from torch.nn.utils import parametrize

from deepzip.coding.bloomier import BloomierFilter, build_filter
from deepzip.config import ACCURACY_SLACK, CellBitsOverride, QuantizeConfig, WeightlessConfig
from deepzip.errors import ConfigError, InvalidTensorError
from deepzip.quantize.api import current_mask, layer_bits, no_survivors_reason, quantize_
from deepzip.quantize.kmeans import bits_to_k
from deepzip.quantize.shared import GradRule, SharedTensor, get_shared
from deepzip.quantize.weightless import WeightlessWeight, attach_weightless, get_weightless
from deepzip.targets import Skipped, Target, select_targets

__all__ = [
    "WeightlessLayer",
    "WeightlessReport",
    "WeightlessTrial",
    "cell_bits_rule",
    "check_cell_bits",
    "decode_filter",
    "encode_shared",
    "weightless_",
]

RetrainFn = Callable[[nn.Module, str], None]
EvaluateFn = Callable[[nn.Module], float]


@dataclass(frozen=True)
class WeightlessTrial:
    """One cell width tried on a layer.

    Attributes:
        cell_bits: ``t``.
        filter_bytes: size of the serialised filter.
        false_positives: pruned positions that decode as weights.
        accuracy: accuracy after the layer's retraining (``None`` without ``evaluate``).
    """

    cell_bits: int
    filter_bytes: int
    false_positives: int
    accuracy: float | None

    def to_dict(self) -> dict[str, object]:
        """JSON-ready form."""
        return {
            "cell_bits": self.cell_bits,
            "filter_bytes": self.filter_bytes,
            "false_positives": self.false_positives,
            "accuracy": self.accuracy,
        }


@dataclass(frozen=True)
class WeightlessLayer:
    """What Weightless did to one layer.

    Attributes:
        name: parameter name (``fc1.weight``).
        layer_type: class of the owning module.
        weights: elements of the tensor (the filter's positions).
        keys: surviving weights stored in the filter.
        clusters: codebook entries ``K``.
        cell_bits: the chosen ``t``.
        hashes: ``k``.
        cells: ``m``.
        attempts: seeds tried before peeling succeeded.
        filter_bytes: size of the serialised filter (header and table).
        codebook_bytes: the float32 codebook (``4 K``).
        false_positives: pruned positions that decode as weights.
        false_positive_rate: ``false_positives`` over the pruned positions.
        expected_false_positive_rate: ``K / 2**t``.
        accuracy: accuracy after this layer's retraining (``None`` without ``evaluate``).
        reference_accuracy: the accuracy this layer's budget was measured from (``None``
            when no budget applied: a fixed width and no ``reference`` given).
        within_budget: whether ``accuracy`` met the budget (``None`` when not judged).
        trials: every cell width tried, in order.
    """

    name: str
    layer_type: str
    weights: int
    keys: int
    clusters: int
    cell_bits: int
    hashes: int
    cells: int
    attempts: int
    filter_bytes: int
    codebook_bytes: int
    false_positives: int
    false_positive_rate: float
    expected_false_positive_rate: float
    accuracy: float | None
    reference_accuracy: float | None
    within_budget: bool | None
    trials: tuple[WeightlessTrial, ...]

    @property
    def encoded_bytes(self) -> int:
        """Filter plus codebook."""
        return self.filter_bytes + self.codebook_bytes

    @property
    def bits_per_key(self) -> float:
        """Filter bits per stored weight."""
        return 8 * self.filter_bytes / self.keys if self.keys else math.inf

    def to_dict(self) -> dict[str, object]:
        """JSON-ready form."""
        return {
            "name": self.name,
            "type": self.layer_type,
            "weights": self.weights,
            "keys": self.keys,
            "clusters": self.clusters,
            "cell_bits": self.cell_bits,
            "hashes": self.hashes,
            "cells": self.cells,
            "attempts": self.attempts,
            "filter_bytes": self.filter_bytes,
            "codebook_bytes": self.codebook_bytes,
            "encoded_bytes": self.encoded_bytes,
            "false_positives": self.false_positives,
            "false_positive_rate": self.false_positive_rate,
            "expected_false_positive_rate": self.expected_false_positive_rate,
            "accuracy": self.accuracy,
            "reference_accuracy": self.reference_accuracy,
            "within_budget": self.within_budget,
            "trials": [t.to_dict() for t in self.trials],
        }


@dataclass(frozen=True)
class WeightlessReport:
    """Per-layer results, and every parameter left out with its reason.

    Attributes:
        layers: the encoded layers, in encoding order.
        skipped: parameters not encoded, with the reason.
        reference_accuracy: the fixed accuracy every layer's budget was measured from, when
            one was given (``None``: each layer's own starting accuracy, see
            :attr:`WeightlessLayer.reference_accuracy`).
        max_drop: the budget in points.
    """

    layers: tuple[WeightlessLayer, ...]
    skipped: tuple[Skipped, ...]
    reference_accuracy: float | None
    max_drop: float

    @property
    def final_accuracy(self) -> float | None:
        """Accuracy after the last layer's retraining (``None`` without layers or evaluate)."""
        return self.layers[-1].accuracy if self.layers else None

    def to_dict(self) -> dict[str, object]:
        """JSON-ready form."""
        return {
            "reference_accuracy": self.reference_accuracy,
            "final_accuracy": self.final_accuracy,
            "max_drop_points": self.max_drop,
            "layers": [layer.to_dict() for layer in self.layers],
            "skipped": [{"name": s.name, "reason": s.reason} for s in self.skipped],
        }


def encode_shared(
    shared: SharedTensor,
    cell_bits: int,
    *,
    hashes: int = 3,
    ratio: float | None = None,
    seed: int = 0,
    max_attempts: int = 16,
    name: str = "tensor",
) -> BloomierFilter:
    """A Bloomier filter mapping each surviving position (C order) to its cluster index.

    Args:
        shared: codebook, indices (integers) and mask (of the same shape) of one clustered
            tensor.
        cell_bits: ``t``; needs ``2**t >= K`` (the codebook's size).
        hashes, ratio, seed, max_attempts: see :func:`deepzip.coding.bloomier.build_filter`.
        name: names the tensor in errors.

    Raises:
        ConfigError: ``t`` too small for the codebook, or a bad filter parameter.
        InvalidTensorError: an index outside the codebook, indices that are not integers, or
            indices and mask of different shapes.
        BloomierBuildError: no seed could be peeled.
    """
    k = int(shared.codebook.numel())
    if shared.indices.shape != shared.mask.shape:
        raise InvalidTensorError(
            f"{name}: indices of shape {tuple(shared.indices.shape)} and mask of shape "
            f"{tuple(shared.mask.shape)} differ"
        )
    if not _is_integer(shared.indices.dtype):
        raise InvalidTensorError(f"{name}: indices must be integers, got {shared.indices.dtype}")
    mask = shared.mask.detach().cpu().reshape(-1).numpy()
    indices = shared.indices.detach().cpu().reshape(-1).numpy().astype(np.int64)
    keys = np.flatnonzero(mask)
    values = indices[keys]
    if values.size and int(values.max()) >= k:
        raise InvalidTensorError(f"{name}: an index reaches {int(values.max())}, K = {k}")
    return build_filter(
        keys,
        values,
        n_positions=int(mask.size),
        num_values=k,
        cell_bits=cell_bits,
        hashes=hashes,
        ratio=ratio,
        seed=seed,
        max_attempts=max_attempts,
        name=name,
    )


def _is_integer(dtype: torch.dtype) -> bool:
    return not (dtype.is_floating_point or dtype.is_complex or dtype == torch.bool)


def _accuracy(value: object, what: str) -> float:
    """``value`` as an accuracy in ``[0, 1]``.

    Raises:
        ConfigError: ``value`` is not a number in ``[0, 1]`` (``what`` says where it came from).
    """
    if isinstance(value, torch.Tensor) and value.numel() == 1 and _is_integer_or_float(value):
        value = value.item()  # a one-element tensor, such as ``correct.float().mean()``
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ConfigError(f"{what} must be an accuracy in [0, 1], got {value!r}")
    acc = float(value)
    if not 0.0 <= acc <= 1.0:  # NaN fails too
        hint = " (a fraction, not a percentage)" if acc > 1.0 else ""
        raise ConfigError(f"{what} must be an accuracy in [0, 1]{hint}, got {value!r}")
    return acc


def _is_integer_or_float(value: torch.Tensor) -> bool:
    return value.dtype.is_floating_point or _is_integer(value.dtype)


def decode_filter(
    bloomier: BloomierFilter,
    codebook: torch.Tensor,
    shape: tuple[int, ...] | torch.Size,
) -> SharedTensor:
    """The shared tensor a filter decodes to: every position, false positives included.

    Raises:
        InvalidTensorError: the codebook's size differs from the filter's ``K``, or the shape
            from its number of positions.
    """
    if int(codebook.numel()) != bloomier.num_values:
        raise InvalidTensorError(
            f"the codebook has {codebook.numel()} entries, the filter {bloomier.num_values}"
        )
    if math.prod(shape) != bloomier.n_positions:
        raise InvalidTensorError(
            f"shape {tuple(shape)} has {math.prod(shape)} positions, "
            f"the filter {bloomier.n_positions}"
        )
    indices, mask = bloomier.decode_indices()
    return SharedTensor(
        codebook.detach().to(torch.float32).cpu(),
        torch.from_numpy(indices.astype(np.uint8)).reshape(tuple(shape)),
        torch.from_numpy(mask).reshape(tuple(shape)),
    )


def cell_bits_rule(
    target: Target, overrides: tuple[CellBitsOverride, ...]
) -> CellBitsOverride | None:
    """The last of ``overrides`` whose glob matches ``target``, or ``None``."""
    found: CellBitsOverride | None = None
    for o in overrides:
        if target.matches(o.pattern):
            found = o
    return found


def check_cell_bits(name: str, cell_bits: int, k: int) -> None:
    """A fixed width needs ``2**t > K``: with ``2**t = K`` every position decodes as a weight."""
    if 1 << cell_bits <= k:
        raise ConfigError(
            f"{name}: cell_bits = {cell_bits} with K = {k} clusters; 2**t must exceed the K "
            "clusters: one code must mean zero"
        )


def _candidates(config: WeightlessConfig, fixed: int | None, k: int) -> list[int]:
    """Cell widths to try for a layer with ``k`` clusters, smallest first."""
    if fixed is not None:
        return [fixed]
    # 2**t > K: with 2**t = K every position would decode as a weight
    start = max(config.min_cell_bits or 1, k.bit_length())
    return list(range(start, max(start, config.max_cell_bits) + 1))


def _layer_keys(target: Target) -> list[str]:
    """State-dict prefixes of the target's parametrization, under every name of its module
    (a module registered twice appears twice in a state dict)."""
    return [
        f"{n}.parametrizations.{target.param_name}."
        if n
        else f"parametrizations.{target.param_name}."
        for n in target.module_names
    ]


def _snapshot(model: nn.Module, skip: list[str]) -> dict[str, torch.Tensor]:
    return {
        k: v.detach().clone()
        for k, v in model.state_dict().items()
        if not any(k.startswith(p) for p in skip)
    }


def _restore(model: nn.Module, state: Mapping[str, torch.Tensor], skip: list[str]) -> None:
    result = model.load_state_dict(dict(state), strict=False)
    missing = [k for k in result.missing_keys if not any(k.startswith(p) for p in skip)]
    if missing or result.unexpected_keys:  # pragma: no cover - the structure never changes
        raise InvalidTensorError(
            f"model structure changed during Weightless: missing {missing[:3]}, "
            f"unexpected {result.unexpected_keys[:3]}"
        )


def _attach(
    target: Target, decoded: SharedTensor, data: bytes, grad: GradRule, train_encoded: bool
) -> WeightlessWeight:
    """Freeze the layer as decoded; its codebook and bias train only with ``train_encoded``."""
    return attach_weightless(
        target.module, target.param_name, decoded, data, grad=grad, train_encoded=train_encoded
    )


@contextmanager
def _only_later_layers(model: nn.Module, target: Target) -> Iterator[None]:
    """Freeze the modules registered before ``target``'s meanwhile; restore their flags after.

    The codebook and bias of an encoded layer with ``train_encoded`` keep training. Earlier
    normalization layers (BatchNorm, InstanceNorm) are also kept in eval mode, so that their
    running statistics do not move under the frozen part of the network while later layers
    retrain in train mode.
    """
    keep: set[int] = set()
    frozen: list[nn.Parameter] = []
    norms: list[nn.Module] = []
    for _, module in model.named_modules():
        if module is target.module:
            break
        if isinstance(module, nn.modules.batchnorm._NormBase):
            norms.append(module)
        if parametrize.is_parametrized(module):
            for attr in module.parametrizations:
                encoded = get_weightless(module, attr)
                if encoded is None or not encoded.train_encoded:
                    continue
                keep.add(id(encoded.codebook))
                bias = getattr(module, "bias", None)
                if attr == "weight" and isinstance(bias, nn.Parameter):
                    keep.add(id(bias))
        frozen.extend(
            p for p in module.parameters(recurse=False) if p.requires_grad and id(p) not in keep
        )
    try:
        for p in frozen:
            p.requires_grad_(False)
        with _norms_in_eval(norms):
            yield
    finally:
        for p in frozen:
            p.requires_grad_(True)


@contextmanager
def _norms_in_eval(norms: list[nn.Module]) -> Iterator[None]:
    """Keep ``norms`` in eval mode although the training loop calls ``model.train()``; their
    modes are restored after."""

    def to_eval(module: nn.Module, _args: object) -> None:
        module.train(False)  # returns the module, which a pre-hook must not (it means "input")

    modes = [m.training for m in norms]
    hooks = [m.register_forward_pre_hook(to_eval) for m in norms]
    try:
        for m in norms:
            m.eval()
        yield
    finally:
        for h in hooks:
            h.remove()
        for m, mode in zip(norms, modes, strict=True):
            m.train(mode)


def weightless_(
    model: nn.Module,
    config: WeightlessConfig,
    *,
    retrain: RetrainFn | None = None,
    evaluate: EvaluateFn | None = None,
    quantize: QuantizeConfig | None = None,
    reference: float | None = None,
    on_layer: Callable[[WeightlessLayer], None] | None = None,
) -> WeightlessReport:
    """Encode layer after layer in Bloomier filters, retraining around the false positives.

    Args:
        model: any ``nn.Module`` whose target layers are clustered (``deepzip.quantize_``) or
            pruned (a layer not clustered yet is clustered with ``quantize`` just before it
            is encoded). Modified in place: each encoded layer becomes a frozen
            :class:`~deepzip.quantize.weightless.WeightlessWeight`.
        config: cell widths, budget, filter parameters, which layers.
        retrain: ``retrain(model, layer_name)`` trains the layers after the one just encoded
            (give it the trainable parameters only); ``None`` skips retraining. "After" is
            registration order (``model.named_modules()``): during the call the encoded layer
            is frozen (its codebook and bias train with ``config.train_encoded`` only), and
            ``requires_grad`` is ``False`` on every parameter of the modules registered before
            it (layers encoded earlier, excluded or skipped ones alike) except the codebook and
            bias of an encoded layer with ``train_encoded``; those modules' flags are restored
            when it returns or raises.
        evaluate: ``evaluate(model) -> accuracy`` in ``[0, 1]`` on validation data; needed
            when the cell width is chosen automatically.
        quantize: how to cluster the layers that are not clustered yet (bits, method); its
            include/exclude are ignored (Weightless's own selection applies), and its
            ``importance`` must be ``"none"`` (no importance tensors are passed).
        reference: a fixed accuracy in ``[0, 1]`` every layer's budget is measured from (for
            a budget on the whole model, e.g. the model's accuracy before the first layer). By
            default each layer is measured from ``evaluate(model)`` just before it is
            clustered and encoded, so each layer may cost up to ``config.max_drop`` points.
        on_layer: called with each layer's record once it is encoded (progress display).

    Returns:
        The per-layer report.

    Raises:
        ConfigError: a glob or override that matches no layer; an automatic cell width
            without ``evaluate``; a ``reference`` or an ``evaluate`` result that is not a
            number in ``[0, 1]``; a ``quantize`` with ``importance`` other than ``"none"``; a
            layer neither clustered nor given ``quantize``; a fixed ``t`` with ``2**t <= K``
            for a layer's ``K`` clusters (one code must mean zero).
        BloomierBuildError: a filter could not be built (raise ``config.ratio``).
    """
    if reference is not None:
        reference = _accuracy(reference, "reference")
    if quantize is not None and quantize.importance != "none":
        # checked here: quantize_ would refuse it only when the first unclustered layer's turn
        # comes, after the layers before it were encoded and retrained
        raise ConfigError(
            f"quantize.importance = {quantize.importance!r} is not available in weightless_ "
            "(it passes no importance tensors to the layers it clusters); use 'none'"
        )
    selection = select_targets(model, include=config.include, exclude=config.exclude)
    selection.check_overrides((o.pattern for o in config.overrides), "layer")
    selection.check_materialized("encode")
    skipped = list(selection.skipped)
    plans: list[tuple[Target, int | None]] = []
    for t in selection.targets:
        rule = cell_bits_rule(t, config.overrides)
        if rule is not None and rule.skip:
            skipped.append(Skipped(t.name, "skipped by override (not encoded with Weightless)"))
            continue
        shared = get_shared(t.module, t.param_name)
        if get_weightless(t.module, t.param_name) is not None:
            skipped.append(Skipped(t.name, "already encoded with Weightless"))
            continue
        if not bool(current_mask(t).any()):
            # quantize_ leaves such a layer unclustered, and a filter without keys would decode
            # its false positives as weights: there is nothing to encode either way
            skipped.append(Skipped(t.name, no_survivors_reason(t)))
            continue
        if shared is None and quantize is None:
            raise ConfigError(
                f"{t.name} is not clustered: run deepzip.quantize_ first or pass quantize="
            )
        if shared is None and quantize is not None and layer_bits(t, quantize) is None:
            skipped.append(Skipped(t.name, "kept in float by a quantize override (not encoded)"))
            continue
        fixed = rule.cell_bits if rule is not None else config.cell_bits
        if fixed is not None:  # every layer checked before the first one is encoded
            if shared is not None:
                check_cell_bits(t.name, fixed, int(shared.codebook.numel()))
            elif quantize is not None and (bits := layer_bits(t, quantize)) is not None:
                check_cell_bits(t.name, fixed, bits_to_k(bits))  # K at most 2**bits
        plans.append((t, fixed))
    if evaluate is None and any(fixed is None for _, fixed in plans):
        raise ConfigError("choosing the cell width automatically needs evaluate=; or set cell_bits")
    layers: list[WeightlessLayer] = []
    for target, fixed in plans:
        start = reference
        if start is None and evaluate is not None and fixed is None:
            start = _accuracy(evaluate(model), f"evaluate(model) before {target.name}")
        record = _encode_layer(model, target, fixed, config, retrain, evaluate, quantize, start)
        layers.append(record)
        if on_layer is not None:
            on_layer(record)
    return WeightlessReport(tuple(layers), tuple(skipped), reference, config.max_drop)


def _cluster(model: nn.Module, target: Target, quantize: QuantizeConfig) -> None:
    overrides = tuple(o for o in quantize.overrides if target.matches(o.pattern))
    # the name as a glob that matches only itself ("fc[1].weight" would match "fc1.weight")
    only = re.sub(r"([*?[])", r"[\1]", target.name)
    cfg = replace(quantize, include=(only,), exclude=(), overrides=overrides)
    quantize_(model, cfg)


def _encode_layer(
    model: nn.Module,
    target: Target,
    fixed: int | None,
    config: WeightlessConfig,
    retrain: RetrainFn | None,
    evaluate: EvaluateFn | None,
    quantize: QuantizeConfig | None,
    reference: float | None,
) -> WeightlessLayer:
    shared_p = get_shared(target.module, target.param_name)
    if shared_p is None:  # weightless_ planned it: surviving weights and bits to cluster with
        assert quantize is not None
        _cluster(model, target, quantize)
        shared_p = get_shared(target.module, target.param_name)
        assert shared_p is not None
    shared = shared_p.export()
    grad = shared_p.grad
    k = int(shared.codebook.numel())
    if fixed is not None:
        check_cell_bits(target.name, fixed, k)
    keys = int(shared.mask.sum())
    weights = int(shared.mask.numel())
    shape = tuple(shared.indices.shape)
    skip = _layer_keys(target)
    snapshot = _snapshot(model, skip)
    # less a hair for float rounding: a drop of exactly max_drop points is within the budget
    budget = None if reference is None else reference - config.max_drop / 100 - ACCURACY_SLACK
    candidates = _candidates(config, fixed, k)
    trials: list[WeightlessTrial] = []
    fallback: tuple[BloomierFilter, bytes, dict[str, torch.Tensor], float] | None = None
    within: bool | None = None
    for i, t in enumerate(candidates):
        if i:
            _restore(model, snapshot, skip)
        bloomier = encode_shared(
            shared,
            t,
            hashes=config.hashes,
            ratio=config.ratio,
            seed=config.seed,
            max_attempts=config.max_attempts,
            name=target.name,
        )
        data = bloomier.to_bytes(compress=config.lzma)
        decoded = decode_filter(bloomier, shared.codebook, shape)
        _attach(target, decoded, data, grad, config.train_encoded)
        if retrain is not None:
            with _only_later_layers(model, target):
                retrain(model, target.name)
        acc = None
        if evaluate is not None:
            acc = _accuracy(evaluate(model), f"evaluate(model) after {target.name} at t = {t}")
        trials.append(WeightlessTrial(t, len(data), int(decoded.mask.sum()) - keys, acc))
        within = None if budget is None or acc is None else acc >= budget
        if within is not False or len(candidates) == 1:
            break
        assert acc is not None
        if fallback is None or acc > fallback[3]:
            fallback = (bloomier, data, _snapshot(model, []), acc)
        if i == len(candidates) - 1 and fallback[0] is not bloomier:
            # no width met the budget: keep the most accurate one, as its retraining left it
            bloomier, data, state, acc = fallback
            decoded = decode_filter(bloomier, shared.codebook, shape)
            _attach(target, decoded, data, grad, config.train_encoded)
            model.load_state_dict(state)
    p_final = get_weightless(target.module, target.param_name)
    assert p_final is not None
    fps = int(p_final.mask.sum()) - keys
    non_keys = weights - keys
    return WeightlessLayer(
        name=target.name,
        layer_type=target.layer_type,
        weights=weights,
        keys=keys,
        clusters=k,
        cell_bits=bloomier.cell_bits,
        hashes=bloomier.hashes,
        cells=bloomier.cells,
        attempts=bloomier.attempts,
        filter_bytes=len(data),
        codebook_bytes=4 * k,
        false_positives=fps,
        false_positive_rate=fps / non_keys if non_keys else 0.0,
        expected_false_positive_rate=bloomier.expected_false_positive_rate,
        accuracy=acc,
        reference_accuracy=reference,
        within_budget=within,
        trials=tuple(trials),
    )
