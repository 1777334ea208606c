"""One typed, frozen config per technique: pruning, its schedule, (re)training, weight
sharing, SLQ/MLQ/INQ incremental quantization and Weightless.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from deepzip.config._base import (
    _T,
    _as_dict,
    _build,
    _check_bits,
    _check_choice,
    _check_flag,
    _check_int,
    _check_number,
    _check_quality,
    _check_seed,
    _check_selection,
    _check_sparsity,
    _check_table,
    _selection_from_dict,
    _selection_to_dict,
)
from deepzip.errors import ConfigError

PruneScope = Literal["layer", "global"]
ScheduleKind = Literal["steps", "agp", "oneshot"]
OptimizerName = Literal["sgd", "adam", "adamw"]
LRSchedule = Literal["cosine", "constant"]
QuantMethod = Literal["kmeans", "uniform", "ecsq"]
KMeansInit = Literal["linear", "density", "forgy", "kmeans++"]
ImportanceKind = Literal["none", "fisher", "adam"]

_OPTIMIZERS = ("sgd", "adam", "adamw")
_LR_SCHEDULES = ("cosine", "constant")


@dataclass(frozen=True)
class LayerOverride:
    """Per-layer settings for the layers whose name matches ``pattern``.

    Attributes:
        pattern: fnmatch glob matched against module and parameter names. It must match at
            least one selected layer, otherwise pruning raises ``ConfigError``.
        sparsity: target fraction of weights removed in the matching layers.
        quality: threshold multiplier; weights with ``|w| < quality * std(w)`` are removed.
        skip: leave the matching layers unpruned (recorded in the report as skipped).
    """

    pattern: str
    sparsity: float | None = None
    quality: float | None = None
    skip: bool = False

    def __post_init__(self) -> None:
        key = f"overrides[{self.pattern!r}]"
        if not isinstance(self.pattern, str) or not self.pattern:
            raise ConfigError(f"override pattern must be a non-empty glob, got {self.pattern!r}")
        _check_sparsity(f"{key}.sparsity", self.sparsity)
        _check_quality(f"{key}.quality", self.quality)
        _check_flag(f"{key}.skip", self.skip)
        if self.sparsity is not None and self.quality is not None:
            raise ConfigError(f"{key}: give sparsity or quality, not both")
        if self.skip and (self.sparsity is not None or self.quality is not None):
            raise ConfigError(f"{key}: skip = true leaves the layer unpruned; set nothing else")
        if not self.skip and self.sparsity is None and self.quality is None:
            raise ConfigError(f"{key}: set sparsity, quality or skip = true")


@dataclass(frozen=True)
class PruneConfig:
    """Magnitude pruning.

    Exactly one of ``sparsity`` and ``quality`` sets the default threshold of every selected
    layer; ``overrides`` change it per layer.

    Attributes:
        sparsity: fraction of each layer's weights to remove, in [0, 1).
        quality: Han et al.'s rule: remove weights with ``|w| < quality * std(layer weights)``.
            The standard deviation is that of the dense layer when pruning first attached.
        scope: ``"layer"`` ranks weights within each layer; ``"global"`` ranks all selected
            weights together (one threshold across layers; needs ``sparsity``).
        include: globs; when given, only matching layers/parameters are pruned. A glob may name
            any floating-point parameter with at least two dimensions, such as a
            ``MultiheadAttention``'s ``in_proj_weight``.
        exclude: globs of layers/parameters never pruned.
        overrides: per-layer sparsity/quality/skip, the last matching override wins.
    """

    sparsity: float | None = None
    quality: float | None = None
    scope: PruneScope = "layer"
    include: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()
    overrides: tuple[LayerOverride, ...] = ()

    def __post_init__(self) -> None:
        _check_sparsity("prune.sparsity", self.sparsity)
        _check_quality("prune.quality", self.quality)
        if (self.sparsity is None) == (self.quality is None):
            raise ConfigError(
                "prune: give exactly one of sparsity and quality, got "
                f"sparsity={self.sparsity!r}, quality={self.quality!r}"
            )
        if self.scope not in ("layer", "global"):
            raise ConfigError(f"prune.scope must be 'layer' or 'global', got {self.scope!r}")
        # before the overrides are read below
        _check_selection("prune", self.include, self.exclude, self.overrides, LayerOverride)
        if self.scope == "global" and self.sparsity is None:
            raise ConfigError("prune.scope = 'global' needs prune.sparsity, not quality")
        if self.scope == "global" and any(not o.skip for o in self.overrides):
            raise ConfigError("prune.scope = 'global' sets one threshold; overrides may only skip")

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> PruneConfig:
        """Build from a TOML/JSON table; unknown keys raise ``ConfigError``."""
        return _selection_from_dict(cls, LayerOverride, data, "prune")

    def to_dict(self) -> dict[str, Any]:
        """The TOML/JSON form (``None`` values omitted)."""
        return _selection_to_dict(self)


_SCHEDULE_KINDS = ("steps", "agp", "oneshot")
_DEFAULT_STEPS = (0.5, 0.75, 0.875, 1.0)
_DEFAULT_N_STEPS = 5


def _check_unused_schedule_keys(kind: object, values: Mapping[str, Any]) -> None:
    """Refuse ``steps``/``n_steps`` beside a kind that does not use them, unless at the default.

    Earlier versions wrote every key whatever the kind (run directories keep those recipes),
    so an unused key holding its default value is let through.
    """
    unused: tuple[tuple[str, str, object], ...] = (
        ("steps", "steps", list(_DEFAULT_STEPS)),
        ("n_steps", "agp", _DEFAULT_N_STEPS),
    )
    for key, used_by, default in unused:
        if key not in values or kind not in _SCHEDULE_KINDS or kind == used_by:
            continue
        value = values[key]
        if isinstance(value, tuple):
            value = list(value)
        if value != default:
            raise ConfigError(
                f'schedule.{key} is only used with kind = "{used_by}", got kind = '
                f"{kind!r} and {key} = {value!r}; remove {key} or change the kind"
            )


@dataclass(frozen=True)
class ScheduleConfig:
    """How the final sparsity is reached over iterative prune → retrain steps.

    Every step applies a *progress* fraction of each layer's final target (its sparsity, or
    its quality multiplier): layers with different targets advance together.

    Attributes:
        kind: ``"steps"`` uses ``steps`` as given; ``"agp"`` is Zhu & Gupta's polynomial
            schedule ``1 - (1 - i/n)^3`` over ``n_steps``; ``"oneshot"`` prunes once.
        steps: increasing progress fractions in (0, 1], the last one 1.0 (``kind="steps"``;
            refused beside another kind unless left at its default).
        n_steps: number of steps for ``kind="agp"`` (refused beside another kind unless left
            at its default).
    """

    kind: ScheduleKind = "steps"
    steps: tuple[float, ...] = _DEFAULT_STEPS
    n_steps: int = _DEFAULT_N_STEPS

    def __post_init__(self) -> None:
        if self.kind not in _SCHEDULE_KINDS:
            raise ConfigError(
                f"schedule.kind must be 'steps', 'agp' or 'oneshot', got {self.kind!r}"
            )
        if isinstance(self.n_steps, bool) or not isinstance(self.n_steps, int):
            raise ConfigError(f"schedule.n_steps must be an integer, got {self.n_steps!r}")
        if self.n_steps < 1:
            raise ConfigError(f"schedule.n_steps must be >= 1, got {self.n_steps!r}")
        # steps are checked whatever the kind (the default is valid): a bad value is never kept
        _check_fractions("schedule.steps", self.steps, end="the target")
        # to_dict drops a key the kind does not use, so a value set there would be lost
        # from the recipe a run records
        _check_unused_schedule_keys(self.kind, {"steps": self.steps, "n_steps": self.n_steps})

    def fractions(self) -> tuple[float, ...]:
        """Progress fraction of the final target at each step (last is 1.0)."""
        if self.kind == "oneshot":
            return (1.0,)
        if self.kind == "agp":
            n = self.n_steps
            return tuple(1.0 - (1.0 - i / n) ** 3 for i in range(1, n + 1))
        return tuple(float(v) for v in self.steps)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ScheduleConfig:
        """Build from a TOML/JSON table.

        Raises:
            ConfigError: an unknown key, a bad value, or a key the kind does not use
                (``steps`` only with ``kind = "steps"``, ``n_steps`` only with ``"agp"``)
                set to other than its default (older versions wrote every key).
        """
        _check_table(data, "schedule")
        data = dict(data)
        _check_unused_schedule_keys(data.get("kind", "steps"), data)
        if "steps" in data:
            if not isinstance(data["steps"], list):
                raise ConfigError(f"schedule.steps must be a list, got {data['steps']!r}")
            data["steps"] = tuple(data["steps"])
        return _build(cls, data, "schedule")

    def to_dict(self) -> dict[str, Any]:
        """The TOML/JSON form (only the keys the kind uses)."""
        out: dict[str, Any] = {"kind": self.kind}
        if self.kind == "steps":
            out["steps"] = list(self.steps)
        if self.kind == "agp":
            out["n_steps"] = self.n_steps
        return out


@dataclass(frozen=True)
class RetrainConfig:
    """Retraining after each pruning step.

    Attributes:
        epochs: epochs of retraining after each pruning step.
        final_epochs: extra epochs after the last step.
        lr: base learning rate (that of dense training).
        lr_scale: retraining uses ``lr * lr_scale`` (the paper: 1/10 for LeNet).
        optimizer: ``"sgd"`` (momentum 0.9), ``"adam"`` or ``"adamw"``.
        weight_decay: L2 / decoupled weight decay.
        batch_size: mini-batch size.
        scale_dropout: scale dropout rates by ``sqrt(kept / original)`` (Han et al. 2015).
        schedule: learning rate within each retraining run (of ``E`` epochs):
            ``"constant"`` (the paper) or ``"cosine"``, set once per epoch: epoch ``e``
            (from 0) trains at ``lr * (1 + cos(pi * e / E)) / 2``, so the first epoch at the
            full rate and the last above zero; with ``E = 1`` it is the same as
            ``"constant"``.
        distill: weight ``α`` of knowledge distillation from the model as it was before
            compression (its logits on the training set are computed once); 0 turns it off.
        temperature: distillation temperature.
    """

    epochs: int = 2
    final_epochs: int = 2
    lr: float = 0.01
    lr_scale: float = 0.1
    optimizer: OptimizerName = "sgd"
    weight_decay: float = 0.0
    batch_size: int = 128
    scale_dropout: bool = True
    schedule: LRSchedule = "constant"
    distill: float = 0.0
    temperature: float = 4.0

    def __post_init__(self) -> None:
        _check_int("retrain.epochs", self.epochs, minimum=0)
        _check_int("retrain.final_epochs", self.final_epochs, minimum=0)
        _check_int("retrain.batch_size", self.batch_size, minimum=1)
        _check_number("retrain.lr", self.lr, positive=True)
        _check_number("retrain.lr_scale", self.lr_scale, positive=True)
        _check_number("retrain.weight_decay", self.weight_decay, positive=False)
        _check_choice("retrain.optimizer", self.optimizer, _OPTIMIZERS)
        _check_choice("retrain.schedule", self.schedule, _LR_SCHEDULES)
        _check_number("retrain.distill", self.distill, positive=False)
        if self.distill > 1:
            raise ConfigError(f"retrain.distill must be in [0, 1], got {self.distill!r}")
        _check_number("retrain.temperature", self.temperature, positive=True)
        if not isinstance(self.scale_dropout, bool):
            raise ConfigError(
                f"retrain.scale_dropout must be true or false, got {self.scale_dropout!r}"
            )

    @property
    def retrain_lr(self) -> float:
        """The learning rate used while retraining."""
        return float(self.lr * self.lr_scale)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> RetrainConfig:
        """Build from a TOML/JSON table; unknown keys raise ``ConfigError``."""
        _check_table(data, "retrain")
        return _build(cls, dict(data), "retrain")

    def to_dict(self) -> dict[str, Any]:
        """The TOML/JSON form."""
        return _as_dict(self)


@dataclass(frozen=True)
class TrainConfig:
    """Dense training of a model (the baseline that compression starts from).

    Attributes:
        epochs: training epochs.
        lr: peak learning rate.
        optimizer: ``"sgd"`` (momentum 0.9), ``"adam"`` or ``"adamw"``.
        weight_decay: L2 / decoupled weight decay.
        batch_size: mini-batch size.
        schedule: ``"constant"`` keeps the learning rate; ``"cosine"`` sets it once per
            epoch: epoch ``e`` (from 0) of ``epochs`` trains at
            ``lr * (1 + cos(pi * e / epochs)) / 2``, so the first epoch at the full rate and
            the last above zero (with ``epochs = 1`` it is the same as ``"constant"``).
        seed: seeds weight initialisation and data order (0 to ``2**32 - 1``).
    """

    epochs: int = 6
    lr: float = 0.02
    optimizer: OptimizerName = "sgd"
    weight_decay: float = 5e-4
    batch_size: int = 128
    schedule: LRSchedule = "cosine"
    seed: int = 0

    def __post_init__(self) -> None:
        _check_int("train.epochs", self.epochs, minimum=0)
        _check_int("train.batch_size", self.batch_size, minimum=1)
        _check_seed("train.seed", self.seed, bits=32)  # seed_everything's range
        _check_number("train.lr", self.lr, positive=True)
        _check_number("train.weight_decay", self.weight_decay, positive=False)
        _check_choice("train.optimizer", self.optimizer, _OPTIMIZERS)
        _check_choice("train.schedule", self.schedule, _LR_SCHEDULES)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> TrainConfig:
        """Build from a TOML/JSON table; unknown keys raise ``ConfigError``."""
        _check_table(data, "train")
        return _build(cls, dict(data), "train")

    def to_dict(self) -> dict[str, Any]:
        """The TOML/JSON form."""
        return _as_dict(self)


@dataclass(frozen=True)
class BitsOverride:
    """Per-layer bit width for the layers whose name matches ``pattern``.

    Attributes:
        pattern: fnmatch glob on module and parameter names; it must match a selected layer.
        bits: bits per weight index (1..8, k = 2^bits levels).
        skip: leave the matching layers in float (recorded in the report as skipped).
    """

    pattern: str
    bits: int | None = None
    skip: bool = False

    def __post_init__(self) -> None:
        if not isinstance(self.pattern, str) or not self.pattern:
            raise ConfigError(f"override pattern must be a non-empty glob, got {self.pattern!r}")
        key = f"overrides[{self.pattern!r}]"
        _check_flag(f"{key}.skip", self.skip)
        if self.bits is not None:
            _check_bits(f"{key}.bits", self.bits)
            if self.skip:
                raise ConfigError(f"{key}: skip = true leaves the layer in float; set nothing else")
        elif not self.skip:
            raise ConfigError(f"{key}: set bits or skip = true")


@dataclass(frozen=True)
class QuantizeConfig:
    """Weight sharing: one codebook per layer plus one index per surviving weight.

    Attributes:
        bits: bits for every layer; ``None`` uses the paper's defaults ``conv_bits`` for
            convolutions and ``fc_bits`` for everything else (Linear, Embedding, ...).
        conv_bits: default bits of convolutions, Conv and ConvTranspose 1d/2d/3d (paper: 8).
        fc_bits: default bits of the other layers (paper: 5).
        method: ``"kmeans"`` (Deep Compression), ``"uniform"`` or ``"ecsq"`` (Choi et al.).
        init: k-means initialisation: ``"linear"`` (the paper's winner), ``"density"``,
            ``"forgy"`` or ``"kmeans++"``; another than ``"linear"`` needs ``method="kmeans"``.
        importance: per-weight importance used as sample weights: ``"none"``, ``"fisher"``
            (squared gradients) or ``"adam"`` (the square root of Adam's second moment, as
            Choi et al. use it). The caller supplies the tensors (see
            ``deepzip.quantize.fisher_diagonal`` and ``adam_second_moment``).
        ecsq_lambda: ECSQ's rate weight (``method="ecsq"``): 0 is (importance-weighted)
            k-means started from the uniform quantizer's centres; a larger value trades
            distortion for a lower entropy of the indices.
        grad: centroid gradient rule: ``"sum"`` of member gradients (the paper) or ``"mean"``.
        max_iter: most k-means / ECSQ iterations (``"uniform"`` takes none: only the
            default is accepted with it).
        seed: seeds the random initialisations (0 to ``2**64 - 1``); it has no effect on
            ``"linear"``/``"density"`` k-means, ``"uniform"`` or ``"ecsq"``, which draw
            nothing at random (the CLI's ``--seed`` also seeds the training).
        include: globs; when given, only matching layers are quantized.
        exclude: globs of layers left in float.
        overrides: per-layer bits or skip; the last matching override wins.
    """

    bits: int | None = None
    conv_bits: int = 8
    fc_bits: int = 5
    method: QuantMethod = "kmeans"
    init: KMeansInit = "linear"
    importance: ImportanceKind = "none"
    ecsq_lambda: float = 0.0
    grad: Literal["sum", "mean"] = "sum"
    max_iter: int = 100
    seed: int = 0
    include: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()
    overrides: tuple[BitsOverride, ...] = ()

    def __post_init__(self) -> None:
        if self.bits is not None:
            _check_bits("quantize.bits", self.bits)
        _check_bits("quantize.conv_bits", self.conv_bits)
        _check_bits("quantize.fc_bits", self.fc_bits)
        _check_choice("quantize.method", self.method, ("kmeans", "uniform", "ecsq"))
        _check_choice("quantize.init", self.init, ("linear", "density", "forgy", "kmeans++"))
        _check_choice("quantize.importance", self.importance, ("none", "fisher", "adam"))
        _check_choice("quantize.grad", self.grad, ("sum", "mean"))
        _check_number("quantize.ecsq_lambda", self.ecsq_lambda, positive=False)
        if self.ecsq_lambda != 0 and self.method != "ecsq":
            raise ConfigError(
                f"quantize.ecsq_lambda = {self.ecsq_lambda!r} is only used with method 'ecsq', "
                f"got method {self.method!r}"
            )
        _check_int("quantize.max_iter", self.max_iter, minimum=1)
        # settings the chosen method has no use for are refused, not ignored
        if self.init != "linear" and self.method != "kmeans":
            raise ConfigError(
                f"quantize.init = {self.init!r} is a k-means initialisation: it needs method "
                f"'kmeans', got method {self.method!r}"
            )
        if self.max_iter != 100 and self.method == "uniform":
            raise ConfigError(
                f"quantize.max_iter = {self.max_iter!r} is not used with method 'uniform' "
                "(it does not iterate)"
            )
        _check_seed("quantize.seed", self.seed, bits=64)  # torch.Generator's range
        _check_selection("quantize", self.include, self.exclude, self.overrides, BitsOverride)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> QuantizeConfig:
        """Build from a TOML/JSON table; unknown keys raise ``ConfigError``."""
        return _selection_from_dict(cls, BitsOverride, data, "quantize")

    def to_dict(self) -> dict[str, Any]:
        """The TOML/JSON form (``None`` values omitted)."""
        return _selection_to_dict(self)


IncrementalLevels = int | Literal["ternary"]
SLQRank = Literal["sse", "mse"]
FreezeOrder = Literal["high_loss", "low_loss", "magnitude"]
MLQOrder = Literal["forward", "backward", "size"]


def _check_levels(key: str, value: object) -> None:
    if value == "ternary":
        return
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 8:
        raise ConfigError(f"{key} must be an integer from 1 to 8 or 'ternary', got {value!r}")


def _check_fractions(key: str, value: object, *, end: str = "everything frozen") -> None:
    """Cumulative fractions: non-empty, each in (0, 1], strictly increasing, ending at 1.0
    (``end`` says what 1.0 means, for the message)."""
    if not isinstance(value, tuple):  # from_dict turns a TOML list into one
        raise ConfigError(f"{key} must be a tuple of fractions, got {value!r}")
    if not value:
        raise ConfigError(f"{key} must not be empty")
    for v in value:
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 < v <= 1:
            raise ConfigError(f"{key} values must be in (0, 1], got {v!r}")
    if any(b <= a for a, b in itertools.pairwise(value)):
        raise ConfigError(f"{key} must increase strictly, got {list(value)!r}")
    if value[-1] != 1.0:
        raise ConfigError(f"{key} must end at 1.0 ({end}), got {value[-1]!r}")


def _incremental_from_dict(cls: type[_T], data: Mapping[str, Any], where: str) -> _T:
    _check_table(data, where)
    data = dict(data)
    if "steps" in data:
        if not isinstance(data["steps"], list):
            raise ConfigError(f"{where}.steps must be a list, got {data['steps']!r}")
        data["steps"] = tuple(data["steps"])
    return _selection_from_dict(cls, BitsOverride, data, where)


def _incremental_to_dict(config: Any) -> dict[str, Any]:
    out = _selection_to_dict(config)
    out["steps"] = list(config.steps)
    return out


@dataclass(frozen=True)
class SLQConfig:
    """Single-level incremental quantization (SLQ, Xu et al. AAAI 2018), within each layer.

    Each layer is clustered (k-means, ``2 ** bits`` levels); a share of the clusters, chosen by
    ``freeze_order``, is snapped to their centroids and frozen, the free weights retrain, the
    free weights are re-clustered around the frozen centroids, and so on until every cluster
    is frozen. With ``bits = "ternary"`` the levels are ``{-a, 0, +a}`` (``a`` fitted to the
    layer, learned afterwards) and single weights freeze, in ``freeze_order`` too.

    Attributes:
        bits: index bits per layer (1..8, ``2 ** bits`` levels) or ``"ternary"``.
        steps: cumulative fraction of each layer's levels frozen after each step (of its
            weights when ternary); increasing, ending at 1.0.
        rank: how a cluster's quantization loss is measured: ``"sse"`` (the summed squared
            error its members would take on) or ``"mse"`` (the mean per member).
        freeze_order: what freezes first. ``"high_loss"``: the clusters with the highest loss
            (ternary: the weights with the largest rounding error to ``{-a, 0, +a}``), so
            the weights that lose most are fixed while the free ones can still compensate,
            and the last step only snaps weights already close to a level. ``"low_loss"``:
            the lowest loss first (Xu et al.'s order: each freeze changes the network least).
            ``"magnitude"``: the largest ``|centroid|`` (ternary: ``|w|``) first, INQ's order.
        init: k-means initialisation of the first clustering.
        max_iter: most Lloyd iterations of each (re-)clustering.
        seed: seeds random k-means initialisations (0 to ``2**64 - 1``).
        train_codebook: once a layer is fully frozen its levels become a trainable codebook
            (``SharedWeight``; ternary layers keep ``-a`` and ``+a`` tied); ``False`` keeps
            them fixed.
        grad: centroid gradient rule of the final codebooks: ``"sum"`` or ``"mean"``.
        include: globs; when given, only matching layers are quantized.
        exclude: globs of layers left in float.
        overrides: per-layer bits or skip (``BitsOverride``); the last matching one wins.
    """

    bits: IncrementalLevels = 5
    steps: tuple[float, ...] = (0.5, 0.75, 0.875, 1.0)
    rank: SLQRank = "sse"
    freeze_order: FreezeOrder = "high_loss"
    init: KMeansInit = "linear"
    max_iter: int = 100
    seed: int = 0
    train_codebook: bool = True
    grad: Literal["sum", "mean"] = "sum"
    include: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()
    overrides: tuple[BitsOverride, ...] = ()

    def __post_init__(self) -> None:
        _check_incremental(self, "slq")

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> SLQConfig:
        """Build from a TOML/JSON table; unknown keys raise ``ConfigError``."""
        return _incremental_from_dict(cls, data, "slq")

    def to_dict(self) -> dict[str, Any]:
        """The TOML/JSON form."""
        return _incremental_to_dict(self)


@dataclass(frozen=True)
class MLQConfig:
    """Multi-level incremental quantization (MLQ, Xu et al. AAAI 2018): across layers too.

    The layers are split into ``groups`` consecutive groups in ``order``. Group after group,
    each layer of the current group is quantized incrementally in width (SLQ's steps) while
    every layer not yet quantized keeps training in float and compensates ("incremental layer
    compensation"). Meant for very low bit widths: ternary, 2 and 3 bits.

    Attributes:
        bits: ``"ternary"`` (``{-a, 0, +a}``, ``a`` learned once the layer is frozen) or index
            bits (1..8, k-means levels).
        steps: the width steps of each group, as in :class:`SLQConfig`.
        groups: number of layer groups (depth steps); capped at the number of layers.
        order: ``"forward"`` (input layers first), ``"backward"`` (output layers first) or
            ``"size"`` (largest layers first).
        rank, freeze_order, init, max_iter, seed, train_codebook, grad, include, exclude,
            overrides: as in :class:`SLQConfig`.
    """

    bits: IncrementalLevels = "ternary"
    steps: tuple[float, ...] = (0.5, 0.75, 1.0)
    groups: int = 2
    order: MLQOrder = "forward"
    rank: SLQRank = "sse"
    freeze_order: FreezeOrder = "high_loss"
    init: KMeansInit = "linear"
    max_iter: int = 100
    seed: int = 0
    train_codebook: bool = True
    grad: Literal["sum", "mean"] = "sum"
    include: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()
    overrides: tuple[BitsOverride, ...] = ()

    def __post_init__(self) -> None:
        _check_incremental(self, "mlq")
        _check_int("mlq.groups", self.groups, minimum=1)
        _check_choice("mlq.order", self.order, ("forward", "backward", "size"))

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> MLQConfig:
        """Build from a TOML/JSON table; unknown keys raise ``ConfigError``."""
        return _incremental_from_dict(cls, data, "mlq")

    def to_dict(self) -> dict[str, Any]:
        """The TOML/JSON form."""
        return _incremental_to_dict(self)


@dataclass(frozen=True)
class INQConfig:
    """Incremental network quantization (INQ, Zhou et al. ICLR 2017): power-of-two levels.

    Per layer, with ``s = max |w|``: ``n1 = floor(log2(4s/3))``, ``n2 = n1 + 1 - 2**(b-1)/2``
    and the levels are ``{±2**n1, ..., ±2**n2, 0}`` (``b`` bits, one of them for the zero
    level). The largest-magnitude weights are frozen first, on the cumulative ``steps``; the
    rest retrain in between. The levels stay fixed powers of two (the codebook does not train).

    Attributes:
        bits: bits per weight, 2..8 (2 is ternary ``{-2**n1, 0, +2**n1}``).
        steps: cumulative fraction of each layer's weights frozen after each step (the paper:
            50%, 75%, 87.5%, 100%).
        include: globs; when given, only matching layers are quantized.
        exclude: globs of layers left in float.
        overrides: per-layer bits (2..8) or skip; the last matching one wins.
    """

    bits: int = 5
    steps: tuple[float, ...] = (0.5, 0.75, 0.875, 1.0)
    include: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()
    overrides: tuple[BitsOverride, ...] = ()

    def __post_init__(self) -> None:
        if isinstance(self.bits, bool) or not isinstance(self.bits, int) or not 2 <= self.bits <= 8:
            raise ConfigError(f"inq.bits must be an integer from 2 to 8, got {self.bits!r}")
        _check_fractions("inq.steps", self.steps)
        _check_selection("inq", self.include, self.exclude, self.overrides, BitsOverride)
        for o in self.overrides:
            if o.bits is not None and o.bits < 2:
                raise ConfigError(
                    f"inq.overrides[{o.pattern!r}].bits must be from 2 to 8, got {o.bits!r}"
                )

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> INQConfig:
        """Build from a TOML/JSON table; unknown keys raise ``ConfigError``."""
        return _incremental_from_dict(cls, data, "inq")

    def to_dict(self) -> dict[str, Any]:
        """The TOML/JSON form."""
        return _incremental_to_dict(self)


def _check_incremental(config: SLQConfig | MLQConfig, where: str) -> None:
    _check_levels(f"{where}.bits", config.bits)
    _check_fractions(f"{where}.steps", config.steps)
    _check_choice(f"{where}.rank", config.rank, ("sse", "mse"))
    _check_choice(
        f"{where}.freeze_order", config.freeze_order, ("high_loss", "low_loss", "magnitude")
    )
    _check_choice(f"{where}.init", config.init, ("linear", "density", "forgy", "kmeans++"))
    _check_int(f"{where}.max_iter", config.max_iter, minimum=1)
    _check_seed(f"{where}.seed", config.seed, bits=64)  # torch.Generator's range
    _check_flag(f"{where}.train_codebook", config.train_codebook)
    _check_choice(f"{where}.grad", config.grad, ("sum", "mean"))
    _check_selection(where, config.include, config.exclude, config.overrides, BitsOverride)


@dataclass(frozen=True)
class CellBitsOverride:
    """Per-layer Bloomier cell width for the layers whose name matches ``pattern``.

    Attributes:
        pattern: fnmatch glob on module and parameter names; it must match a selected layer.
        cell_bits: a fixed cell width ``t`` (1..16) instead of the automatic choice; ``2**t``
            must exceed the layer's ``K`` clusters (one code must mean zero).
        skip: leave the matching layers out of Weightless (recorded as skipped).
    """

    pattern: str
    cell_bits: int | None = None
    skip: bool = False

    def __post_init__(self) -> None:
        if not isinstance(self.pattern, str) or not self.pattern:
            raise ConfigError(f"override pattern must be a non-empty glob, got {self.pattern!r}")
        key = f"overrides[{self.pattern!r}]"
        _check_flag(f"{key}.skip", self.skip)
        if self.cell_bits is not None:
            _check_cell_bits(f"{key}.cell_bits", self.cell_bits)
            if self.skip:
                raise ConfigError(
                    f"{key}: skip = true leaves the layer out of Weightless; set nothing else"
                )
        elif not self.skip:
            raise ConfigError(f"{key}: set cell_bits or skip = true")


def _check_cell_bits(key: str, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 16:
        raise ConfigError(f"{key} must be an integer from 1 to 16, got {value!r}")


ACCURACY_SLACK = 1e-9
"""Allowance for float rounding in accuracy budgets: an accuracy exactly ``max_drop`` below
its reference (``0.8924 - 0.003`` rounds above ``0.8894``) is within the budget. Accuracies
are fractions of a test set, far coarser than this."""


PEELING_THRESHOLD: dict[int, float] = {
    2: 2.0, 3: 1.222, 4: 1.295, 5: 1.425, 6: 1.570, 7: 1.719, 8: 1.870,
}  # fmt: skip
"""Cells per key above which a random ``k``-hypergraph peels, for ``k`` = 2..8 hashes:
``1 / c*_k`` (Molloy, "Cores in random hypergraphs and Boolean formulas", 2005), rounded up.
Below it Bloomier construction fails whatever the seed."""

BLOOMIER_RATIO: dict[int, float] = {
    1: 16.0, 2: 2.5, 3: 1.23, 4: 1.32, 5: 1.45, 6: 1.62, 7: 1.77, 8: 1.93,
}  # fmt: skip
"""Default cells per key for ``k`` = 1..8 hashes: just above :data:`PEELING_THRESHOLD`, where
one seed peels almost always (``python benchmarks/bloomier_peeling.py`` measures it). ``k = 2``
is an exception: a random graph is a forest only with probability about
``sqrt(1 - (2 / ratio)**2)``, 0.6 at 2.5, so it leans on retried seeds. ``k = 1`` peels only
when no two keys share a cell, which at the largest ratio (16) needs a small layer."""


@dataclass(frozen=True)
class WeightlessConfig:
    """Weightless (Reagen et al., ICML 2018): each layer's shared weights in a Bloomier filter.

    Layer after layer (module order): cluster it if it is not yet, store position → cluster
    index in a Bloomier filter, freeze the layer as the filter decodes it (false positives
    included), retrain the layers after it, go on. The cell width ``t`` sets the
    false-positive rate ``K / 2**t`` (``K`` clusters) and the size (about ``ratio * t`` bits
    per surviving weight).

    Attributes:
        cell_bits: one fixed cell width ``t`` (1..16) for every layer, with ``2**t`` above
            every layer's ``K`` clusters (one code must mean zero); ``None`` chooses it per
            layer: the smallest ``t`` from ``min_cell_bits`` up whose accuracy after the
            layer's retraining is at most ``max_drop`` points below the accuracy the model had
            before that layer was clustered and encoded (or below a fixed reference). When no
            ``t`` up to ``max_cell_bits`` is within the budget, the layer keeps the most
            accurate one tried (the smallest of equals), as its retraining left the model,
            and its report says it is over budget.
        min_cell_bits: smallest ``t`` tried (never below the smallest with ``2**t > K``);
            only with ``cell_bits = None``.
        max_cell_bits: largest ``t`` tried; it is not kept by default when no width is
            within budget (the most accurate one is). A layer whose ``K`` clusters need more
            (``2**t > K``) is tried at that smallest possible width only, above
            ``max_cell_bits``; its report records the width.
        max_drop: accuracy budget in points (``0.3`` = 0.3 percentage points).
        hashes: cells per position ``k`` (2..8); 3 needs the fewest cells. (With one cell per
            position two weights that share it can never both be stored.)
        ratio: cells per stored weight (up to 16); it must exceed the peeling threshold for
            ``k`` hashes: 2.0 for ``k = 2``, 1.222 for 3, 1.295 for 4, 1.425 for 5, 1.570 for
            6, 1.719 for 7, 1.870 for 8 (below it construction fails whatever the seed; just
            above it, it may take several seeds, with ``k = 2`` most of all). ``None`` (the
            default) means ``k``'s default, :data:`BLOOMIER_RATIO`: 2.5, 1.23, 1.32, 1.45,
            1.62, 1.77, 1.93 for ``k`` = 2..8. It is filled in on construction, so a
            config's ``ratio`` (and its TOML) always holds the number used; to change
            ``hashes`` with ``dataclasses.replace``, pass ``ratio=None`` too.
        seed: first hash seed tried (construction retries with the following seeds), 0 to
            ``2**64 - 1``.
        max_attempts: seeds tried before construction gives up.
        lzma: compress each filter's table with LZMA when that is smaller.
        train_encoded: after a layer is encoded its codebook and bias keep training (its
            positions and cluster indices never change); ``False`` freezes the whole layer,
            as in the paper. A centroid's gradient sums over every position that decodes to
            it, false positives included, so retrain with Adam (whose step does not scale
            with the gradient): SGD at a float layer's learning rate diverges.
        include: globs; when given, only matching layers are encoded.
        exclude: globs of layers left out.
        overrides: per-layer fixed ``cell_bits`` or skip; the last matching one wins.
    """

    cell_bits: int | None = None
    min_cell_bits: int | None = None
    max_cell_bits: int = 12
    max_drop: float = 0.3
    hashes: int = 3
    ratio: float | None = None
    seed: int = 0
    max_attempts: int = 16
    lzma: bool = False
    train_encoded: bool = False
    include: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()
    overrides: tuple[CellBitsOverride, ...] = ()

    def __post_init__(self) -> None:
        if self.cell_bits is not None:
            _check_cell_bits("weightless.cell_bits", self.cell_bits)
        if self.min_cell_bits is not None:
            _check_cell_bits("weightless.min_cell_bits", self.min_cell_bits)
        _check_cell_bits("weightless.max_cell_bits", self.max_cell_bits)
        if self.cell_bits is not None and self.min_cell_bits is not None:
            raise ConfigError(
                f"weightless.min_cell_bits = {self.min_cell_bits!r} is only used when cell_bits "
                f"is chosen automatically, got cell_bits = {self.cell_bits!r}; remove one"
            )
        if self.min_cell_bits is not None and self.min_cell_bits > self.max_cell_bits:
            raise ConfigError(
                f"weightless.min_cell_bits ({self.min_cell_bits}) must not exceed "
                f"max_cell_bits ({self.max_cell_bits})"
            )
        _check_number("weightless.max_drop", self.max_drop, positive=False)
        if (
            isinstance(self.hashes, bool)
            or not isinstance(self.hashes, int)
            or not (2 <= self.hashes <= 8)
        ):
            raise ConfigError(
                f"weightless.hashes must be an integer from 2 to 8 (with 1, two weights hashed "
                f"to the same cell can never both be stored), got {self.hashes!r}"
            )
        ratio = BLOOMIER_RATIO[self.hashes] if self.ratio is None else self.ratio
        object.__setattr__(self, "ratio", ratio)
        _check_number("weightless.ratio", ratio, positive=True)
        if not 1.0 <= ratio <= 16.0:
            raise ConfigError(f"weightless.ratio must be in [1, 16], got {ratio!r}")
        minimum = PEELING_THRESHOLD[self.hashes]
        if ratio <= minimum:
            raise ConfigError(
                f"weightless.ratio = {self.ratio!r} is too low for hashes = {self.hashes}: "
                f"a layer's filter cannot be built (peeled) unless the ratio exceeds {minimum}"
            )
        _check_seed("weightless.seed", self.seed, bits=64)  # a u64 in the filter's header
        _check_int("weightless.max_attempts", self.max_attempts, minimum=1)
        _check_flag("weightless.lzma", self.lzma)
        _check_flag("weightless.train_encoded", self.train_encoded)
        _check_selection("weightless", self.include, self.exclude, self.overrides, CellBitsOverride)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> WeightlessConfig:
        """Build from a TOML/JSON table; unknown keys raise ``ConfigError``."""
        return _selection_from_dict(cls, CellBitsOverride, data, "weightless")

    def to_dict(self) -> dict[str, Any]:
        """The TOML/JSON form (``None`` values omitted)."""
        return _selection_to_dict(self)
