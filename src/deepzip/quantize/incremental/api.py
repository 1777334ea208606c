"""SLQ, MLQ and INQ: quantize part of the weights, retrain the rest, repeat.

Each verb takes the model, its config and the user's ``retrain(model, step)`` callable, and
ends with every selected layer as the same thing the other quantizers produce: a
``SharedWeight`` (``codebook[indices] * mask``), so :func:`~deepzip.quantize.export_shared`,
the coder, the file format and the reports work unchanged.

While a layer is in progress it carries a :class:`FrozenWeight`: frozen weights come from a
buffer (no optimizer can move them) and the free ones keep training. Pruned weights stay
exactly zero and never join a level. A layer whose levels include zero (ternary, INQ) stores
its zero weights as masked positions, so the codebook holds only the non-zero levels.

``retrain`` is called after every step, the last one included (then only codebooks and float
parameters train). Build the optimizer inside it: the parameter objects change between steps.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Literal

import torch
from torch import nn

from deepzip.config import BitsOverride, FreezeOrder, INQConfig, MLQConfig, SLQConfig
from deepzip.errors import ConfigError, InvalidTensorError
from deepzip.prune.masks import check_finite
from deepzip.prune.parametrization import get_mask
from deepzip.quantize.api import QuantizedLayer, QuantizeReport, no_survivors_reason
from deepzip.quantize.incremental.levels import (
    cluster_losses,
    inq_exponents,
    inq_levels,
    inq_round,
    recluster_1d,
    ternary_round,
    ternary_scale,
)
from deepzip.quantize.incremental.parametrization import (
    FrozenWeight,
    attach_frozen,
    attach_symmetric,
    get_frozen,
)
from deepzip.quantize.kmeans import (
    assign_nearest,
    bits_to_k,
    check_float32_range,
    kmeans_1d,
    sum_float64,
)
from deepzip.quantize.shared import SharedTensor, SharedWeight, attach_shared, get_shared
from deepzip.quantize.weightless import weightless_skip
from deepzip.targets import Skipped, Target, select_targets

__all__ = [
    "IncrementalStep",
    "inq_",
    "mlq_",
    "slq_",
    "step_count",
]

Retrain = Callable[[nn.Module, int], None]
Evaluate = Callable[[nn.Module], float]
_Kind = Literal["cluster", "ternary", "inq"]
_Config = SLQConfig | MLQConfig | INQConfig


@dataclass(frozen=True)
class IncrementalStep:
    """What one freeze → retrain step did.

    Attributes:
        index: step number, from 0.
        layers: the layers this step works on: all of them (SLQ, INQ) or the current group
            (MLQ), those already finished included.
        fraction: the schedule fraction those layers reached (of their levels for k-means
            levels, of their weights otherwise).
        frozen_fraction: share of all selected surviving weights frozen after the step.
        acc_frozen: ``evaluate(model)`` after freezing, before retraining (``None`` without
            ``evaluate``).
        acc_retrained: ``evaluate(model)`` after retraining.
    """

    index: int
    layers: tuple[str, ...]
    fraction: float
    frozen_fraction: float
    acc_frozen: float | None
    acc_retrained: float | None

    def to_dict(self) -> dict[str, object]:
        """JSON-ready form."""
        return {
            "index": self.index,
            "layers": list(self.layers),
            "fraction": self.fraction,
            "frozen_fraction": self.frozen_fraction,
            "acc_frozen": self.acc_frozen,
            "acc_retrained": self.acc_retrained,
        }


@dataclass
class _Layer:
    """The progress of one layer."""

    target: Target
    bits: int | Literal["ternary"]
    kind: _Kind
    mask: torch.Tensor
    param: FrozenWeight | None = None
    centroids: torch.Tensor | None = None  # cluster: float32 (K,), sorted
    fixed: torch.Tensor | None = None  # cluster: bool (K,), levels frozen
    scale: float | None = None  # ternary: a
    exponents: tuple[int, int] | None = None  # inq: (n1, n2)
    sse: float = 0.0
    notes: list[str] = field(default_factory=list)
    report: QuantizedLayer | None = None

    @property
    def name(self) -> str:
        return self.target.name

    @property
    def started(self) -> bool:
        return self.centroids is not None or self.scale is not None or self.exponents is not None

    @property
    def done(self) -> bool:
        return self.report is not None

    def current(self) -> torch.Tensor:
        """The layer's weight as the model sees it (flat, detached, float32)."""
        return self.target.tensor.detach().reshape(-1).to(torch.float32)


# --------------------------------------------------------------------------------------------
# selection


def _layer_bits(
    target: Target, default: int | Literal["ternary"], overrides: Sequence[BitsOverride]
) -> int | Literal["ternary"] | None:
    found: BitsOverride | None = None
    for o in overrides:
        if target.matches(o.pattern):
            found = o
    if found is None:
        return default
    return None if found.skip else found.bits


def _check_weights(name: str, weight: torch.Tensor) -> None:
    """Finite, and within float32 (the levels' type; a float64 weight beyond it would turn
    into infinity when quantized). Raises ``InvalidTensorError`` naming the layer."""
    check_finite(name, weight)
    check_float32_range(name, weight, noun="weight(s)", of="the levels")


def _surviving(target: Target) -> torch.Tensor:
    if get_shared(target.module, target.param_name) is not None:
        raise ConfigError(
            f"{target.name} is already quantized (shared weights); strip_ it first or exclude it"
        )
    if get_frozen(target.module, target.param_name) is not None:
        raise ConfigError(
            f"{target.name} is already being quantized incrementally (a FrozenWeight is "
            "attached from an unfinished run); strip_ it first or exclude it"
        )
    m = get_mask(target.module, target.param_name)
    if m is not None:
        return m.mask.clone()
    return target.tensor.detach() != 0


def _select(
    model: nn.Module,
    config: _Config,
    kind_of: Callable[[int | Literal["ternary"]], _Kind],
) -> tuple[list[_Layer], list[Skipped]]:
    """Pick and validate every layer before any of them changes."""
    selection = select_targets(model, include=config.include, exclude=config.exclude)
    selection.check_overrides((o.pattern for o in config.overrides), "quantizable layer")
    selection.check_materialized("quantize")
    skipped = list(selection.skipped)
    layers: list[_Layer] = []
    where = type(config).__name__.removesuffix("Config").lower()  # slq, mlq, inq
    patterns = tuple(o.pattern for o in config.overrides)
    for t in selection.targets:
        # before _surviving, which refuses any shared layer
        encoded = weightless_skip(t, config.include, patterns, where)
        if encoded is not None:
            skipped.append(encoded)
            continue
        bits = _layer_bits(t, config.bits, config.overrides)
        if bits is None:
            skipped.append(Skipped(t.name, "skipped by override (kept in float)"))
            continue
        _check_weights(t.name, t.tensor)
        mask = _surviving(t)
        if not bool(mask.any()):
            skipped.append(Skipped(t.name, no_survivors_reason(t)))
            continue
        if not bool((t.tensor.detach()[mask] != 0).any()):
            skipped.append(Skipped(t.name, "every surviving weight is zero; left as zeros"))
            continue
        kind = kind_of(bits)
        if kind == "inq":  # the levels come from the weights as they are now: check them here
            assert isinstance(bits, int)
            max_abs = float(t.tensor.detach()[mask].to(torch.float32).abs().max())
            try:
                inq_exponents(max_abs, bits)
            except InvalidTensorError as e:
                raise InvalidTensorError(f"{t.name}: {e}") from e
        layers.append(_Layer(t, bits, kind, mask))
    if not layers:
        raise ConfigError(
            "no layer to quantize: "
            + ("; ".join(f"{s.name}: {s.reason}" for s in skipped) or "the model has none")
        )
    return layers, skipped


# --------------------------------------------------------------------------------------------
# one step of one layer


def _freeze(layer: _Layer, positions: torch.Tensor, values: torch.Tensor) -> None:
    """Freeze flat ``positions`` at ``values``, adding their quantization error to the SSE."""
    if positions.numel() == 0:
        return
    assert layer.param is not None
    current = layer.current()[positions].to(torch.float64)
    layer.sse += sum_float64((current - values.to(torch.float64)) ** 2)
    layer.param.freeze_(positions, values)


def _free_positions(layer: _Layer) -> torch.Tensor:
    assert layer.param is not None
    free = layer.param.mask & ~layer.param.frozen
    return free.reshape(-1).nonzero().squeeze(1)


def _step_cluster(layer: _Layer, fraction: float, config: SLQConfig | MLQConfig) -> None:
    """SLQ: (re-)cluster the free weights, freeze clusters in ``config.freeze_order``."""
    assert isinstance(layer.bits, int)
    positions = _free_positions(layer)
    if positions.numel() == 0:
        return
    values = layer.current()[positions]
    k_req = bits_to_k(layer.bits)
    if layer.centroids is None or layer.fixed is None:
        result = kmeans_1d(
            values, k_req, init=config.init, seed=config.seed, max_iter=config.max_iter
        )
        layer.notes.extend(result.notes)
        centroids, labels = result.centroids.to(torch.float32), result.labels
        fixed = torch.zeros(centroids.numel(), dtype=torch.bool, device=centroids.device)
    else:
        rc = recluster_1d(values, layer.centroids, layer.fixed, max_iter=config.max_iter)
        centroids, fixed, labels = rc.centroids, rc.fixed, rc.labels
        if not rc.converged:
            layer.notes.append(f"re-clustering stopped at max_iter={config.max_iter}")
    labels = labels.to(positions.device)
    held = fixed[labels].to(positions.device)  # free weights that fell into frozen clusters
    _freeze(layer, positions[held], centroids[labels[held]])
    k = centroids.numel()
    target = min(k, math.ceil(fraction * k - 1e-9))
    need = target - int(fixed.sum())
    if need > 0:
        if config.freeze_order == "magnitude":
            score = -centroids.to(torch.float64).abs()
        else:
            score = cluster_losses(values, labels, centroids, config.rank)
            if config.freeze_order == "high_loss":
                score = -score
        # free clusters the re-clustering left empty go last (freezing one freezes no weight
        # and would spend the step; their loss of 0 would put them first in "low_loss"),
        # frozen ones never: sort on the score, then stably on that priority
        empty = torch.bincount(labels, minlength=k).to(fixed.device) == 0
        priority = fixed.to(torch.int64) * 2 + (empty & ~fixed).to(torch.int64)
        order = torch.sort(score, stable=True).indices
        chosen = order[torch.sort(priority[order], stable=True).indices][:need]
        fixed = fixed.clone()
        fixed[chosen] = True
        pick = fixed[labels] & ~held
        _freeze(layer, positions[pick], centroids[labels[pick]])
    layer.centroids, layer.fixed = centroids, fixed


def _count(fraction: float, n: int) -> int:
    return n if fraction >= 1.0 else min(n, math.floor(fraction * n + 0.5))


def _step_ranked(layer: _Layer, fraction: float, order: FreezeOrder = "magnitude") -> None:
    """Ternary (SLQ/MLQ) and INQ: freeze the first free weights in ``order`` at their level
    (INQ always takes the largest magnitudes first)."""
    assert layer.param is not None
    if not layer.started:
        survivors = layer.current()[layer.mask.reshape(-1)]
        if layer.kind == "inq":
            assert isinstance(layer.bits, int)
            max_abs = float(survivors.abs().max())
            if max_abs == 0:
                raise InvalidTensorError(f"{layer.name}: every surviving weight is zero")
            layer.exponents = inq_exponents(max_abs, layer.bits)
        else:
            layer.scale = ternary_scale(survivors)
            if layer.scale == 0:
                raise InvalidTensorError(f"{layer.name}: every surviving weight is zero")
    need = _count(fraction, layer.param.n_surviving) - layer.param.n_frozen
    positions = _free_positions(layer)
    if need <= 0 or positions.numel() == 0:
        return
    values = layer.current()[positions]
    if layer.exponents is not None:
        levels = inq_round(values, *layer.exponents)
    else:
        assert layer.scale is not None
        levels = ternary_round(values, layer.scale)
    if order == "magnitude":
        score = -values.abs()
    else:
        score = (values - levels).abs()  # rounding error
        if order == "high_loss":
            score = -score
    chosen = torch.sort(score, stable=True).indices[:need]
    _freeze(layer, positions[chosen], levels[chosen])


# --------------------------------------------------------------------------------------------
# finishing a layer


def _finish(layer: _Layer, train_codebook: bool, grad: Literal["sum", "mean"]) -> None:
    """All weights frozen: attach the shared-weight form and write the layer's report."""
    assert layer.param is not None
    p = layer.param
    values = p.values.detach().to(torch.float32)
    mask = p.mask
    if layer.kind == "cluster":
        codebook = torch.unique(values[mask])  # sorted; unused levels dropped
        unused = (layer.centroids.numel() if layer.centroids is not None else 0) - len(codebook)
        if unused > 0:
            layer.notes.append(f"{unused} level(s) left without members were dropped")
    elif layer.kind == "inq":
        assert layer.exponents is not None
        codebook = inq_levels(*layer.exponents, device=values.device)
        mask = mask & (values != 0)
    else:
        assert layer.scale is not None
        a = layer.scale
        codebook = torch.tensor([-a, a], dtype=torch.float32, device=values.device)
        mask = mask & (values != 0)
    # Nearest level, not an exact match: a float16/bfloat16 weight stores its frozen levels
    # rounded to its dtype, so they need not equal the float32 codebook entries.
    indices = torch.zeros(values.shape, dtype=torch.uint8, device=values.device)
    indices[mask] = assign_nearest(values[mask], codebook).to(torch.uint8)
    shared = SharedTensor(codebook, indices, mask)
    t = layer.target
    zeros = int(p.mask.sum()) - int(mask.sum())
    if layer.kind != "cluster":
        layer.notes.append(f"zero level carried by the mask ({zeros} weight(s))")
    sw: SharedWeight
    if layer.kind == "ternary" and train_codebook:
        sw = attach_symmetric(t.module, t.param_name, shared, grad=grad)
    else:
        sw = attach_shared(t.module, t.param_name, shared, grad=grad)
    if not train_codebook:
        sw.codebook.requires_grad_(False)
    bits = 2 if layer.bits == "ternary" else layer.bits
    levels = codebook.numel() + (0 if layer.kind == "cluster" else 1)
    layer.param = None
    layer.report = QuantizedLayer(
        t.name,
        t.layer_type,
        bits,
        int(values.numel()),
        int(mask.sum()),
        levels,
        layer.sse,
        tuple(layer.notes),
    )


# --------------------------------------------------------------------------------------------
# the driver


def _run(
    model: nn.Module,
    layers: list[_Layer],
    skipped: list[Skipped],
    plan: list[tuple[list[_Layer], float]],
    step_fn: Callable[[_Layer, float], None],
    finish_fn: Callable[[_Layer], None],
    retrain: Retrain,
    evaluate: Evaluate | None,
    on_step: Callable[[IncrementalStep], None] | None,
) -> tuple[QuantizeReport, list[IncrementalStep]]:
    for layer in layers:  # every layer validated; now they change
        layer.param = attach_frozen(layer.target.module, layer.target.param_name, layer.mask)
    total = sum(int(layer.mask.sum()) for layer in layers)
    records: list[IncrementalStep] = []
    for i, (group, fraction) in enumerate(plan):
        for layer in group:
            if layer.done:  # a small codebook can finish before the schedule does
                continue
            # retraining may have diverged: a NaN would be frozen at a level (the 0 level of
            # INQ and ternary, where it silently becomes a pruned position)
            _check_weights(layer.name, layer.target.tensor)
            step_fn(layer, fraction)
            assert layer.param is not None
            if layer.param.n_frozen == layer.param.n_surviving:
                finish_fn(layer)
        frozen = sum(_n_frozen(layer) for layer in layers)
        acc_frozen = evaluate(model) if evaluate is not None else None
        retrain(model, i)
        acc_retrained = evaluate(model) if evaluate is not None else None
        record = IncrementalStep(
            i,
            tuple(layer.name for layer in group),
            float(fraction),
            frozen / total,
            acc_frozen,
            acc_retrained,
        )
        records.append(record)
        if on_step is not None:
            on_step(record)
    reports = [layer.report for layer in layers if layer.report is not None]
    assert len(reports) == len(layers)  # the last fraction is 1.0 for every layer
    return QuantizeReport(tuple(reports), tuple(skipped)), records


def _n_frozen(layer: _Layer) -> int:
    if layer.param is None:  # finished (or not attached yet)
        return int(layer.mask.sum()) if layer.done else 0
    return layer.param.n_frozen


def _kind_levels(bits: int | Literal["ternary"]) -> _Kind:
    return "ternary" if bits == "ternary" else "cluster"


def _kind_inq(bits: int | Literal["ternary"]) -> _Kind:
    return "inq"


def _step_fn(config: SLQConfig | MLQConfig) -> Callable[[_Layer, float], None]:
    def step(layer: _Layer, fraction: float) -> None:
        if layer.kind == "cluster":
            _step_cluster(layer, fraction, config)
        else:
            _step_ranked(layer, fraction, config.freeze_order)

    return step


def _groups(layers: list[_Layer], config: MLQConfig) -> list[list[_Layer]]:
    ordered = list(layers)
    if config.order == "backward":
        ordered.reverse()
    elif config.order == "size":
        ordered.sort(key=lambda layer: -layer.mask.numel())  # stable: module order on ties
    n, g = len(ordered), min(config.groups, len(ordered))
    sizes = [n // g + (1 if i < n % g else 0) for i in range(g)]
    out, start = [], 0
    for size in sizes:
        out.append(ordered[start : start + size])
        start += size
    return out


def slq_(
    model: nn.Module,
    config: SLQConfig,
    retrain: Retrain,
    *,
    evaluate: Evaluate | None = None,
    on_step: Callable[[IncrementalStep], None] | None = None,
) -> tuple[QuantizeReport, list[IncrementalStep]]:
    """Single-level incremental quantization (Xu et al. 2018), in place.

    Per layer: k-means into ``2 ** bits`` clusters; freeze clusters at their centroids in
    ``config.freeze_order`` (by default the highest quantization loss first; ``config.steps``
    gives the cumulative share of clusters); ``retrain(model, step)``; re-cluster the free
    weights with the frozen centroids held (clusters this leaves empty freeze last); repeat
    until every cluster is frozen. Ternary layers freeze single weights, by default those with
    the largest rounding error to ``{-a, 0, +a}`` first. All layers advance together.

    Args:
        model: any ``nn.Module``, pruned or not (pruned weights stay zero).
        config: bits, schedule, ranking and layer selection.
        retrain: ``retrain(model, step_index)``, called after every step (the last one too);
            it should build its optimizer from ``model.parameters()`` each time.
        evaluate: optional ``evaluate(model) -> accuracy`` recorded before and after each
            retraining (use a validation split).
        on_step: called with each step's record.

    Returns:
        The per-layer report (as :func:`~deepzip.quantize.quantize_`) and one record per step.

    Raises:
        ConfigError: a glob or override that matches nothing, a layer already quantized, or
            no layer left to quantize.
        InvalidTensorError: non-finite weights, or float64 weights beyond the float32 range
            of the levels (checked before anything changes, and again before each step).
    """
    layers, skipped = _select(model, config, _kind_levels)
    plan = [(layers, float(f)) for f in config.steps]
    return _run(
        model,
        layers,
        skipped,
        plan,
        _step_fn(config),
        lambda layer: _finish(layer, config.train_codebook, config.grad),
        retrain,
        evaluate,
        on_step,
    )


def mlq_(
    model: nn.Module,
    config: MLQConfig,
    retrain: Retrain,
    *,
    evaluate: Evaluate | None = None,
    on_step: Callable[[IncrementalStep], None] | None = None,
) -> tuple[QuantizeReport, list[IncrementalStep]]:
    """Multi-level incremental quantization (Xu et al. 2018), in place.

    The layers are split into ``config.groups`` groups in ``config.order``. For each group in
    turn, its layers go through SLQ's width steps (``config.steps``) while all layers not yet
    quantized keep training in float and compensate; a layer whose weights are all frozen
    becomes shared weights at once (with ``train_codebook``, its codebook trains in the later
    steps). ``len(groups) * len(steps)`` steps in all. Ternary is the intended use: levels
    ``{-a, 0, +a}`` fitted by least squares when the layer starts, ``a`` learned once the
    layer is frozen.

    Arguments, return value and errors as :func:`slq_`.
    """
    layers, skipped = _select(model, config, _kind_levels)
    plan = [(group, float(f)) for group in _groups(layers, config) for f in config.steps]
    return _run(
        model,
        layers,
        skipped,
        plan,
        _step_fn(config),
        lambda layer: _finish(layer, config.train_codebook, config.grad),
        retrain,
        evaluate,
        on_step,
    )


def inq_(
    model: nn.Module,
    config: INQConfig,
    retrain: Retrain,
    *,
    evaluate: Evaluate | None = None,
    on_step: Callable[[IncrementalStep], None] | None = None,
) -> tuple[QuantizeReport, list[IncrementalStep]]:
    """Incremental network quantization (Zhou et al. 2017), in place.

    Per layer the levels ``{±2**n1, ..., ±2**n2, 0}`` are set once from ``max |w|`` (see
    :func:`~deepzip.quantize.incremental.inq_exponents`); after each step of ``config.steps``
    that share of the layer's weights, largest magnitudes first, is frozen at its level
    (the paper's rounding), and the rest retrain. The final codebooks hold the non-zero
    powers of two and do not train; zero weights are masked positions.

    Arguments, return value and errors as :func:`slq_`; also ``InvalidTensorError`` (before
    anything changes) for a layer whose levels float32 cannot hold (``max |w|`` near the
    float32 limits).
    """
    layers, skipped = _select(model, config, _kind_inq)
    plan = [(layers, float(f)) for f in config.steps]
    return _run(
        model,
        layers,
        skipped,
        plan,
        _step_ranked,
        lambda layer: _finish(layer, False, "sum"),
        retrain,
        evaluate,
        on_step,
    )


def step_count(model: nn.Module, config: SLQConfig | MLQConfig | INQConfig) -> int:
    """How many times the verb for ``config`` will call ``retrain`` on ``model``.

    Useful to split a training budget over the steps. Changes nothing; raises as the verbs do.
    """
    layers, _ = _select(model, config, _kind_inq if isinstance(config, INQConfig) else _kind_levels)
    if isinstance(config, MLQConfig):
        return min(config.groups, len(layers)) * len(config.steps)
    return len(config.steps)
