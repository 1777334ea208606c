"""Typed, frozen configuration objects, validated on construction, with TOML in and out.

One config per technique. Every value is checked in ``__post_init__`` and a bad one raises
:class:`~deepzip.errors.ConfigError` naming the key and the value. Per-layer overrides select
layers by name glob (``fnmatch`` syntax, matched against the module name such as ``features.0``
or the parameter name such as ``features.0.weight``).
"""

from __future__ import annotations

import itertools
import math
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields, replace
from importlib import resources
from pathlib import Path
from typing import Any, Generic, Literal, TypeVar

import tomli_w

from deepzip._atomic import atomic_write_text
from deepzip.errors import ConfigError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised only on Python 3.10
    import tomli as tomllib

__all__ = [
    "BLOOMIER_RATIO",
    "CODER_NAMES",
    "INDEX_BITS_RANGE",
    "PEELING_THRESHOLD",
    "BitsOverride",
    "CellBitsOverride",
    "CoderName",
    "EncodeStage",
    "FinetuneStage",
    "INQConfig",
    "INQStage",
    "IndexBitsSpec",
    "LayerOverride",
    "LayerRule",
    "MLQConfig",
    "MLQStage",
    "PruneConfig",
    "PruneJob",
    "PruneStage",
    "QuantizeConfig",
    "QuantizeStage",
    "Recipe",
    "RetrainConfig",
    "RetrainStage",
    "SLQConfig",
    "SLQStage",
    "ScheduleConfig",
    "SensitivityStage",
    "Stage",
    "StageKind",
    "StageParseContext",
    "TrainConfig",
    "TrainStage",
    "WeightlessConfig",
    "WeightlessStage",
    "builtin_recipe",
    "builtin_recipe_names",
    "check_coder",
    "check_index_bits",
    "load_prune_job",
    "load_recipe",
    "load_toml",
    "register_stage_kind",
    "save_toml",
    "stage_kinds",
]

PruneScope = Literal["layer", "global"]
ScheduleKind = Literal["steps", "agp", "oneshot"]
OptimizerName = Literal["sgd", "adam", "adamw"]
LRSchedule = Literal["cosine", "constant"]
QuantMethod = Literal["kmeans", "uniform", "ecsq"]
KMeansInit = Literal["linear", "density", "forgy", "kmeans++"]
ImportanceKind = Literal["none", "fisher", "adam"]


def _check_sparsity(key: str, value: float | None) -> None:
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigError(f"{key} must be a number in [0, 1), got {value!r}")
    if not (0.0 <= float(value) < 1.0) or math.isnan(value):
        raise ConfigError(f"{key} must be in [0, 1), got {value!r}")


def _check_quality(key: str, value: float | None) -> None:
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigError(f"{key} must be a non-negative number, got {value!r}")
    if not math.isfinite(value) or value < 0:
        raise ConfigError(f"{key} must be a finite number >= 0, got {value!r}")


_OPTIMIZERS = ("sgd", "adam", "adamw")
_LR_SCHEDULES = ("cosine", "constant")


def _check_int(key: str, value: object, *, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ConfigError(f"{key} must be an integer >= {minimum}, got {value!r}")


def _check_flag(key: str, value: object) -> None:
    if not isinstance(value, bool):
        raise ConfigError(f"{key} must be true or false, got {value!r}")


def _check_seed(key: str, value: object, *, bits: int) -> None:
    """A seed: an integer in ``[0, 2**bits)``, the range of what it seeds (checked up front,
    not when a random generator refuses it in the middle of a run)."""
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < 2**bits:
        raise ConfigError(f"{key} must be an integer in [0, 2**{bits}), got {value!r}")


def _check_number(key: str, value: object, *, positive: bool) -> None:
    ok = not isinstance(value, bool) and isinstance(value, (int, float)) and math.isfinite(value)
    if not ok or (value <= 0 if positive else value < 0):  # type: ignore[operator]
        raise ConfigError(f"{key} must be a number {'> 0' if positive else '>= 0'}, got {value!r}")


def _check_choice(key: str, value: object, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ConfigError(f"{key} must be one of {', '.join(map(repr, choices))}, got {value!r}")


def _check_bits(key: str, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 8:
        raise ConfigError(f"{key} must be an integer from 1 to 8, got {value!r}")


def _check_patterns(key: str, value: tuple[str, ...]) -> None:
    if not isinstance(value, tuple) or not all(isinstance(p, str) and p for p in value):
        raise ConfigError(f"{key} must be a list of non-empty glob strings, got {value!r}")


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
        if self.scope == "global" and self.sparsity is None:
            raise ConfigError("prune.scope = 'global' needs prune.sparsity, not quality")
        if self.scope == "global" and any(not o.skip for o in self.overrides):
            raise ConfigError("prune.scope = 'global' sets one threshold; overrides may only skip")
        _check_selection("prune", self.include, self.exclude, self.overrides, LayerOverride)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> PruneConfig:
        """Build from a TOML/JSON table; unknown keys raise ``ConfigError``."""
        return _selection_from_dict(cls, LayerOverride, data, "prune")

    def to_dict(self) -> dict[str, Any]:
        """The TOML/JSON form (``None`` values omitted)."""
        return _selection_to_dict(self)


@dataclass(frozen=True)
class ScheduleConfig:
    """How the final sparsity is reached over iterative prune → retrain steps.

    Every step applies a *progress* fraction of each layer's final target (its sparsity, or
    its quality multiplier): layers with different targets advance together.

    Attributes:
        kind: ``"steps"`` uses ``steps`` as given; ``"agp"`` is Zhu & Gupta's polynomial
            schedule ``1 - (1 - i/n)^3`` over ``n_steps``; ``"oneshot"`` prunes once.
        steps: increasing progress fractions in (0, 1], the last one 1.0 (``kind="steps"``).
        n_steps: number of steps for ``kind="agp"``.
    """

    kind: ScheduleKind = "steps"
    steps: tuple[float, ...] = (0.5, 0.75, 0.875, 1.0)
    n_steps: int = 5

    def __post_init__(self) -> None:
        if self.kind not in ("steps", "agp", "oneshot"):
            raise ConfigError(
                f"schedule.kind must be 'steps', 'agp' or 'oneshot', got {self.kind!r}"
            )
        if isinstance(self.n_steps, bool) or not isinstance(self.n_steps, int):
            raise ConfigError(f"schedule.n_steps must be an integer, got {self.n_steps!r}")
        if self.n_steps < 1:
            raise ConfigError(f"schedule.n_steps must be >= 1, got {self.n_steps!r}")
        if self.kind == "steps":
            s = self.steps
            if not isinstance(s, tuple) or not s:
                raise ConfigError(f"schedule.steps must be a non-empty list, got {s!r}")
            for v in s:
                if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 < v <= 1:
                    raise ConfigError(f"schedule.steps values must be in (0, 1], got {v!r}")
            if any(b <= a for a, b in itertools.pairwise(s)):
                raise ConfigError(f"schedule.steps must increase strictly, got {list(s)!r}")
            if s[-1] != 1.0:
                raise ConfigError(f"schedule.steps must end at 1.0 (the target), got {s[-1]!r}")

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
        """Build from a TOML/JSON table; unknown keys raise ``ConfigError``."""
        data = dict(data)
        if "steps" in data:
            if not isinstance(data["steps"], list):
                raise ConfigError(f"schedule.steps must be a list, got {data['steps']!r}")
            data["steps"] = tuple(data["steps"])
        return _build(cls, data, "schedule")

    def to_dict(self) -> dict[str, Any]:
        """The TOML/JSON form."""
        out = _as_dict(self)
        out["steps"] = list(self.steps)
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
        schedule: learning rate within each retraining run: ``"constant"`` (the paper) or
            ``"cosine"`` (annealed to zero over that run's epochs).
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
        schedule: ``"cosine"`` anneals the learning rate to zero over the epochs;
            ``"constant"`` keeps it.
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
            ``"forgy"`` or ``"kmeans++"``.
        importance: per-weight importance used as sample weights: ``"none"``, ``"fisher"``
            (squared gradients) or ``"adam"`` (Adam's second moment). The caller supplies the
            tensors (see ``deepzip.quantize.fisher_diagonal``).
        ecsq_lambda: ECSQ's rate weight (``method="ecsq"``); 0 equals uniform quantization.
        grad: centroid gradient rule: ``"sum"`` of member gradients (the paper) or ``"mean"``.
        max_iter: most k-means / ECSQ iterations.
        seed: seeds the random initialisations (0 to ``2**64 - 1``).
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
        _check_int("quantize.max_iter", self.max_iter, minimum=1)
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


def _check_fractions(key: str, value: object) -> None:
    """Cumulative fractions: non-empty, each in (0, 1], strictly increasing, ending at 1.0."""
    if not isinstance(value, tuple) or not value:
        raise ConfigError(f"{key} must be a non-empty list of fractions, got {value!r}")
    for v in value:
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 < v <= 1:
            raise ConfigError(f"{key} values must be in (0, 1], got {v!r}")
    if any(b <= a for a, b in itertools.pairwise(value)):
        raise ConfigError(f"{key} must increase strictly, got {list(value)!r}")
    if value[-1] != 1.0:
        raise ConfigError(f"{key} must end at 1.0 (everything frozen), got {value[-1]!r}")


def _incremental_from_dict(cls: type[_T], data: Mapping[str, Any], where: str) -> _T:
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
            before that layer was clustered and encoded (or below a fixed reference).
        min_cell_bits: smallest ``t`` tried (never below the smallest with ``2**t > K``).
        max_cell_bits: largest ``t`` tried (used when no smaller one is within budget).
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


# A recipe's descriptive keys, allowed at the top of a pipeline and of a pruning recipe.
_RECIPE_INFO_KEYS = ("name", "description", "model", "dataset")


@dataclass(frozen=True)
class PruneJob:
    """An iterative pruning job: what to prune, the schedule, and how to retrain.

    ``train`` optionally describes how the dense model is trained first (the zoo recipes
    carry it; pruning an existing checkpoint ignores it).
    """

    prune: PruneConfig
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    retrain: RetrainConfig = field(default_factory=RetrainConfig)
    train: TrainConfig | None = None

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> PruneJob:
        """Build from ``[prune]``, ``[schedule]``, ``[retrain]`` and optional ``[train]``.

        A pipeline recipe (``[[stages]]``) gives its first prune stage and its train stage.
        The recipe keys ``name``, ``description``, ``model`` and ``dataset`` are accepted and
        not part of the job.
        """
        if "stages" in data:  # a pipeline recipe: its train stage and first prune stage
            return Recipe.from_dict(data).prune_job()
        # The recipe's own keys (deepzip run reads them) describe the job, they are not part.
        unknown = sorted(set(data) - {"prune", "schedule", "retrain", "train", *_RECIPE_INFO_KEYS})
        if unknown:
            raise ConfigError(
                f"unknown section {unknown[0]!r}; expected 'prune', 'schedule', 'retrain' "
                f"or 'train' (and the keys {', '.join(map(repr, _RECIPE_INFO_KEYS))})"
            )
        if "prune" not in data:
            raise ConfigError("a pruning recipe needs a [prune] section")
        return cls(
            prune=PruneConfig.from_dict(_table(data, "prune")),
            schedule=ScheduleConfig.from_dict(_table(data, "schedule")),
            retrain=RetrainConfig.from_dict(_table(data, "retrain")),
            train=TrainConfig.from_dict(_table(data, "train")) if "train" in data else None,
        )

    def to_dict(self) -> dict[str, Any]:
        """The TOML/JSON form."""
        out = {
            "prune": self.prune.to_dict(),
            "schedule": self.schedule.to_dict(),
            "retrain": self.retrain.to_dict(),
        }
        if self.train is not None:
            out["train"] = self.train.to_dict()
        return out


# ----------------------------------------------------------------------------- recipes
#
# A Recipe is an ordered list of stages (train, sensitivity, prune, retrain, quantize,
# finetune, encode), global defaults applied to every stage that takes the key (see
# Recipe.from_dict for the precedence), and per-layer overrides by glob. Stage types are
# registered in a registry (``register_stage_kind``) so that other methods (Weightless,
# SLQ/MLQ/INQ) can add their own; deepzip.pipeline runs them.

StageRole = Literal["train", "analyze", "prune", "retrain", "quantize", "finetune", "encode"]
CoderName = Literal["auto", "huffman", "ans", "raw"]
"""How streams are entropy coded: each stream's smaller of Huffman and ANS (``"auto"``), one of
them, or fixed-width packing (``"raw"``)."""
CODER_NAMES: tuple[CoderName, ...] = ("auto", "huffman", "ans", "raw")
LayoutName = Literal["auto", "sparse", "dense"]

_RETRAIN_KEYS = frozenset(f.name for f in fields(RetrainConfig))
_TRAIN_KEYS = frozenset(f.name for f in fields(TrainConfig)) - {"seed"}
_PRUNE_KEYS = frozenset(f.name for f in fields(PruneConfig))
_QUANTIZE_KEYS = frozenset(f.name for f in fields(QuantizeConfig))
# The sweep of deepzip.prune.sensitivity.DEFAULT_SWEEP (config sits below prune).
_SENSITIVITY_SWEEP = (0.0, 0.3, 0.5, 0.6, 0.7, 0.8, 0.85, 0.9, 0.93, 0.95, 0.97)


def check_coder(coder: object, where: str = "coder") -> CoderName:
    """``coder`` if it is a :data:`CoderName`, else a ``ConfigError`` naming ``where``."""
    _check_choice(where, coder, CODER_NAMES)
    return coder  # type: ignore[return-value]


IndexBitsSpec = int | Literal["auto", "paper"]
"""A relative index's gap width: 1..16 bits, ``"auto"`` (the width that makes each tensor
smallest) or ``"paper"`` (Deep Compression's 8 bits for convolutions, 5 otherwise)."""

# deepzip.format.dzip_spec's MIN_GAP_WIDTH..MAX_GAP_WIDTH (config sits below format; a test
# holds the two equal)
INDEX_BITS_RANGE = (1, 16)


def check_index_bits(where: str, value: object) -> IndexBitsSpec:
    """``value`` if it is an :data:`IndexBitsSpec`, else a ``ConfigError`` naming ``where``."""
    if value in ("auto", "paper"):
        return value
    low, high = INDEX_BITS_RANGE
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise ConfigError(
            f"{where} must be an integer from {low} to {high}, 'auto' or 'paper', got {value!r}"
        )
    return value


@dataclass(frozen=True)
class LayerRule:
    """A recipe-wide per-layer override: the layers whose name matches ``pattern``.

    Each prune stage turns ``sparsity``/``quality``/``skip`` into a :class:`LayerOverride`,
    each quantize stage turns ``bits``/``skip`` into a :class:`BitsOverride`, and the encode
    stage uses ``index_bits``; a stage's own ``overrides`` come after and win. The glob must
    match a compressible layer of the model (checked before the first stage runs).

    Attributes:
        pattern: fnmatch glob on module and parameter names (``"conv*"``, ``"fc1.weight"``).
        sparsity: pruning target of the matching layers, in [0, 1).
        quality: pruning threshold multiplier (``|w| < quality * std``), instead of sparsity.
        bits: bits per weight index when quantized (1..8).
        index_bits: width of the relative sparse index in the ``.dzip`` file: 1..16 bits,
            ``"auto"`` or ``"paper"`` (:data:`IndexBitsSpec`).
        skip: leave the matching layers uncompressed (neither pruned nor quantized).
    """

    pattern: str
    sparsity: float | None = None
    quality: float | None = None
    bits: int | None = None
    index_bits: IndexBitsSpec | None = None
    skip: bool = False

    def __post_init__(self) -> None:
        if not isinstance(self.pattern, str) or not self.pattern:
            raise ConfigError(f"override pattern must be a non-empty glob, got {self.pattern!r}")
        key = f"overrides[{self.pattern!r}]"
        _check_sparsity(f"{key}.sparsity", self.sparsity)
        _check_quality(f"{key}.quality", self.quality)
        if self.bits is not None:
            _check_bits(f"{key}.bits", self.bits)
        if self.index_bits is not None:
            check_index_bits(f"{key}.index_bits", self.index_bits)
        if not isinstance(self.skip, bool):
            raise ConfigError(f"{key}.skip must be true or false, got {self.skip!r}")
        if self.sparsity is not None and self.quality is not None:
            raise ConfigError(f"{key}: give sparsity or quality, not both")
        settings = (self.sparsity, self.quality, self.bits, self.index_bits)
        if self.skip and any(v is not None for v in settings):
            raise ConfigError(f"{key}: skip = true leaves the layer uncompressed; set nothing else")
        if not self.skip and all(v is None for v in settings):
            raise ConfigError(f"{key}: set sparsity, quality, bits, index_bits or skip = true")

    def prune_override(self) -> LayerOverride | None:
        """The pruning part of this rule, if any."""
        if self.skip or self.sparsity is not None or self.quality is not None:
            return LayerOverride(self.pattern, self.sparsity, self.quality, self.skip)
        return None

    def bits_override(self) -> BitsOverride | None:
        """The quantization part of this rule, if any."""
        if self.skip or self.bits is not None:
            return BitsOverride(self.pattern, self.bits, self.skip)
        return None

    def to_dict(self) -> dict[str, Any]:
        """The TOML/JSON form (unset values omitted)."""
        out = _as_dict(self)
        if not self.skip:
            out.pop("skip")
        return out


@dataclass(frozen=True)
class TrainStage:
    """Dense training from the model's current weights (must be the first stage)."""

    train: TrainConfig = field(default_factory=TrainConfig)

    def to_dict(self) -> dict[str, Any]:
        """The stage table (without ``type``)."""
        out = self.train.to_dict()
        out.pop("seed")
        return out


@dataclass(frozen=True)
class SensitivityStage:
    """Per-layer pruning sensitivity on the validation data (the model is left unchanged).

    Attributes:
        sparsities: the sweep, each in [0, 1).
        max_drop: accuracy budget in points for the suggested per-layer sparsity.
        include: globs restricting the layers.
        exclude: globs of layers left out.
    """

    sparsities: tuple[float, ...] = _SENSITIVITY_SWEEP
    max_drop: float = 1.0
    include: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if not isinstance(self.sparsities, tuple) or not self.sparsities:
            raise ConfigError(f"sparsities must be a non-empty list, got {self.sparsities!r}")
        for s in self.sparsities:
            _check_sparsity("sparsities", s)
        _check_number("max_drop", self.max_drop, positive=False)
        _check_patterns("include", self.include)
        _check_patterns("exclude", self.exclude)

    def to_dict(self) -> dict[str, Any]:
        """The stage table (without ``type``)."""
        return {
            "sparsities": list(self.sparsities),
            "max_drop": self.max_drop,
            "include": list(self.include),
            "exclude": list(self.exclude),
        }


@dataclass(frozen=True)
class PruneStage:
    """Iterative magnitude pruning with retraining: the same three tables as :class:`PruneJob`."""

    prune: PruneConfig
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    retrain: RetrainConfig = field(default_factory=RetrainConfig)

    def to_dict(self) -> dict[str, Any]:
        """The stage table (without ``type``)."""
        return {
            **self.prune.to_dict(),
            "schedule": self.schedule.to_dict(),
            "retrain": self.retrain.to_dict(),
        }


def _check_no_final_epochs(stage: str, cfg: RetrainConfig) -> None:
    """``final_epochs`` belongs to prune stages; a retrain or finetune stage uses ``epochs``."""
    if cfg.final_epochs:
        raise ConfigError(
            f"{stage} stage: final_epochs is for prune stages; use epochs "
            f"(got final_epochs={cfg.final_epochs!r})"
        )


def _epochs_only(cfg: RetrainConfig) -> dict[str, Any]:
    """``cfg``'s table without ``final_epochs`` (the form of retrain and finetune stages)."""
    out = cfg.to_dict()
    out.pop("final_epochs")
    return out


@dataclass(frozen=True)
class RetrainStage:
    """Retraining of a pruned model (masks kept) for ``retrain.epochs`` epochs.

    ``retrain.final_epochs`` must be 0 (it belongs to prune stages).
    """

    retrain: RetrainConfig = field(default_factory=lambda: RetrainConfig(final_epochs=0))

    def __post_init__(self) -> None:
        _check_no_final_epochs("retrain", self.retrain)

    def to_dict(self) -> dict[str, Any]:
        """The stage table (without ``type``)."""
        return _epochs_only(self.retrain)


@dataclass(frozen=True)
class QuantizeStage:
    """Weight sharing (k-means, uniform or ECSQ), without fine-tuning.

    Attributes:
        quantize: the quantizer, bits and per-layer bits.
        fisher_batches: training batches for the Fisher importance (``importance = "fisher"``).
    """

    quantize: QuantizeConfig = field(default_factory=QuantizeConfig)
    fisher_batches: int = 20

    def __post_init__(self) -> None:
        _check_int("fisher_batches", self.fisher_batches, minimum=1)
        if self.quantize.importance == "adam":
            raise ConfigError(
                "quantize.importance = 'adam' needs the optimizer state of the training run, "
                "which a recipe does not keep between stages; use 'fisher' or 'none'"
            )

    def to_dict(self) -> dict[str, Any]:
        """The stage table (without ``type``)."""
        return {**self.quantize.to_dict(), "fisher_batches": self.fisher_batches}


_FINETUNE_BASE: dict[str, Any] = {
    "epochs": 2,
    "final_epochs": 0,
    "optimizer": "adam",
    "lr": 1e-3,
    "lr_scale": 0.1,
    "weight_decay": 0.0,
}


@dataclass(frozen=True)
class FinetuneStage:
    """Fine-tuning after quantization: the codebooks and the float parameters train.

    A centroid's gradient sums its members' gradients, so Adam (whose step does not depend on
    the gradient's scale) is the default: lr 1e-3 × lr_scale 0.1.
    """

    finetune: RetrainConfig = field(default_factory=lambda: RetrainConfig(**_FINETUNE_BASE))

    def __post_init__(self) -> None:
        _check_no_final_epochs("finetune", self.finetune)

    def to_dict(self) -> dict[str, Any]:
        """The stage table (without ``type``)."""
        return _epochs_only(self.finetune)


@dataclass(frozen=True)
class EncodeStage:
    """Write the ``.dzip`` file (must be the last stage).

    Attributes:
        coder: entropy coder of every stream: ``"auto"`` (smallest per stream), ``"huffman"``
            (the paper), ``"ans"`` or ``"raw"``.
        index_bits: width of the relative sparse index for every layer: 1..16 bits,
            ``"auto"`` (each layer's smallest; what ``None`` means too) or ``"paper"`` (the
            paper's 8 bits for convolutions and 5 for the rest). Recipe overrides with
            ``index_bits`` set it per layer.
        layout: a pruned quantized tensor is stored with the relative sparse index
            (``"sparse"``, the paper), as a dense index stream (``"dense"``), or whichever is
            smaller (``"auto"``).
    """

    coder: CoderName = "auto"
    index_bits: IndexBitsSpec | None = None
    layout: LayoutName = "auto"

    def __post_init__(self) -> None:
        check_coder(self.coder)
        _check_choice("layout", self.layout, ("auto", "sparse", "dense"))
        if self.index_bits is not None:
            check_index_bits("index_bits", self.index_bits)

    def to_dict(self) -> dict[str, Any]:
        """The stage table (without ``type``)."""
        return _as_dict(self)


# Keys that are alternatives to others: a stage that sets the key drops the recipe's defaults
# for these (a stage's quality replaces a default sparsity; its fc_bits a default bits, which
# would otherwise win over fc_bits).
_ALTERNATIVES: dict[str, frozenset[str]] = {
    "sparsity": frozenset({"quality"}),
    "quality": frozenset({"sparsity"}),
    "bits": frozenset({"conv_bits", "fc_bits"}),
    "conv_bits": frozenset({"bits"}),
    "fc_bits": frozenset({"bits"}),
}


@dataclass(frozen=True)
class StageParseContext:
    """What a stage parser sees besides its own table.

    Attributes:
        where: the stage's label for error messages (``"stage 2 (quantize)"``).
        defaults: the recipe's ``[defaults]`` table.
    """

    where: str
    defaults: Mapping[str, Any]

    def pick(self, keys: frozenset[str], table: Mapping[str, Any]) -> dict[str, Any]:
        """The defaults among ``keys``, then ``table`` (the stage's own keys) over them.

        A stage's own key replaces the default of the same key, and also the defaults of its
        alternatives: ``sparsity`` and ``quality`` replace each other, and a stage's
        ``conv_bits`` or ``fc_bits`` replaces a default ``bits`` (which would otherwise apply
        to every layer and hide the stage's more specific setting).
        """
        displaced = frozenset().union(*(_ALTERNATIVES.get(k, frozenset()) for k in table))
        base = {k: v for k, v in self.defaults.items() if k in keys and k not in displaced}
        return {**base, **table}


@dataclass(frozen=True)
class StageKind:
    """A registered stage type.

    Attributes:
        name: the ``type`` value in a recipe's stage table.
        role: what it does, for the order rules: ``"train"`` (first only), ``"analyze"``
            (leaves the model unchanged), ``"prune"``, ``"retrain"`` (after a prune, before
            quantization), ``"quantize"``, ``"finetune"`` (after a quantize stage) and
            ``"encode"`` (last, exactly once).
        config_type: the class of the parsed configuration (it has ``to_dict()``).
        parse: ``parse(table, context) -> config`` for a stage table without ``type``/``name``;
            it raises ``ConfigError`` for unknown keys and bad values.
        default_keys: the ``[defaults]`` keys this stage takes.
    """

    name: str
    role: StageRole
    config_type: type
    parse: Callable[[Mapping[str, Any], StageParseContext], Any]
    default_keys: frozenset[str] = frozenset()


_STAGE_KINDS: dict[str, StageKind] = {}


def register_stage_kind(kind: StageKind, *, overwrite: bool = False) -> None:
    """Register a stage type for recipes (Weightless, SLQ/MLQ/INQ... add theirs here).

    deepzip.pipeline needs a runner for it too (``deepzip.pipeline.register_stage_runner``).

    Raises:
        ConfigError: the name is taken (unless ``overwrite``) or the role is unknown.
    """
    roles = ("train", "analyze", "prune", "retrain", "quantize", "finetune", "encode")
    _check_choice(f"stage kind {kind.name!r} role", kind.role, roles)
    if kind.name in _STAGE_KINDS and not overwrite:
        raise ConfigError(f"stage type {kind.name!r} is already registered")
    _STAGE_KINDS[kind.name] = kind


def stage_kinds() -> dict[str, StageKind]:
    """The registered stage types by name."""
    return dict(_STAGE_KINDS)


def _check_keys(table: Mapping[str, Any], known: frozenset[str], where: str) -> None:
    unknown = sorted(set(table) - known)
    if unknown:
        raise ConfigError(
            f"{where}: unknown key {unknown[0]!r} (known keys: {', '.join(sorted(known))})"
        )


def _sub_table(table: dict[str, Any], key: str, where: str) -> dict[str, Any]:
    value = table.pop(key, {})
    if not isinstance(value, Mapping):
        raise ConfigError(f"{where}: {key} must be a table, got {value!r}")
    return dict(value)


def _parse_train(table: Mapping[str, Any], ctx: StageParseContext) -> TrainStage:
    if "seed" in table:
        raise ConfigError(f"{ctx.where}: unknown key 'seed' (the recipe's seed seeds every stage)")
    _check_keys(table, _TRAIN_KEYS, ctx.where)
    return TrainStage(TrainConfig.from_dict(ctx.pick(_TRAIN_KEYS, table)))


def _parse_sensitivity(table: Mapping[str, Any], ctx: StageParseContext) -> SensitivityStage:
    keys = frozenset(f.name for f in fields(SensitivityStage))
    _check_keys(table, keys, ctx.where)
    data = ctx.pick(frozenset({"include", "exclude"}), table)
    if "sparsities" in data:
        if not isinstance(data["sparsities"], list):
            raise ConfigError(f"sparsities must be a list, got {data['sparsities']!r}")
        data["sparsities"] = tuple(data["sparsities"])
    for key in ("include", "exclude"):
        if key in data:
            data[key] = _as_str_tuple(key, data[key])
    return SensitivityStage(**data)


def _parse_prune(table: Mapping[str, Any], ctx: StageParseContext) -> PruneStage:
    _check_keys(table, _PRUNE_KEYS | {"schedule", "retrain"}, ctx.where)
    t = dict(table)
    schedule = _sub_table(t, "schedule", ctx.where)
    retrain = _sub_table(t, "retrain", ctx.where)
    _check_keys(schedule, frozenset(f.name for f in fields(ScheduleConfig)), "schedule")
    _check_keys(retrain, _RETRAIN_KEYS, "retrain")
    return PruneStage(
        prune=PruneConfig.from_dict(ctx.pick(_PRUNE_KEYS - {"overrides"}, t)),
        schedule=ScheduleConfig.from_dict(schedule),
        retrain=RetrainConfig.from_dict(ctx.pick(_RETRAIN_KEYS, retrain)),
    )


def _parse_retrain(table: Mapping[str, Any], ctx: StageParseContext) -> RetrainStage:
    keys = _RETRAIN_KEYS - {"final_epochs"}
    _check_keys(table, keys, ctx.where)
    return RetrainStage(RetrainConfig.from_dict({**ctx.pick(keys, table), "final_epochs": 0}))


def _parse_quantize(table: Mapping[str, Any], ctx: StageParseContext) -> QuantizeStage:
    _check_keys(table, _QUANTIZE_KEYS | {"fisher_batches"}, ctx.where)
    t = dict(table)
    batches = t.pop("fisher_batches", 20)
    config = QuantizeConfig.from_dict(ctx.pick(_QUANTIZE_KEYS - {"overrides"}, t))
    return QuantizeStage(config, batches)


def _parse_finetune(table: Mapping[str, Any], ctx: StageParseContext) -> FinetuneStage:
    keys = _RETRAIN_KEYS - {"final_epochs"}
    _check_keys(table, keys, ctx.where)
    data = {**_FINETUNE_BASE, **ctx.pick(keys, table), "final_epochs": 0}
    return FinetuneStage(RetrainConfig.from_dict(data))


def _parse_encode(table: Mapping[str, Any], ctx: StageParseContext) -> EncodeStage:
    keys = frozenset(f.name for f in fields(EncodeStage))
    _check_keys(table, keys, ctx.where)
    return EncodeStage(**ctx.pick(keys, table))


for _kind in (
    StageKind("train", "train", TrainStage, _parse_train, _TRAIN_KEYS),
    StageKind(
        "sensitivity",
        "analyze",
        SensitivityStage,
        _parse_sensitivity,
        frozenset({"include", "exclude"}),
    ),
    StageKind(
        "prune", "prune", PruneStage, _parse_prune, _RETRAIN_KEYS | _PRUNE_KEYS - {"overrides"}
    ),
    StageKind("retrain", "retrain", RetrainStage, _parse_retrain, _RETRAIN_KEYS),
    StageKind(
        "quantize", "quantize", QuantizeStage, _parse_quantize, _QUANTIZE_KEYS - {"overrides"}
    ),
    StageKind("finetune", "finetune", FinetuneStage, _parse_finetune, _RETRAIN_KEYS),
    StageKind(
        "encode",
        "encode",
        EncodeStage,
        _parse_encode,
        frozenset({"coder", "index_bits", "layout"}),
    ),
):
    register_stage_kind(_kind)


# Incremental quantization stages (SLQ, MLQ, INQ): quantize stages that retrain in between.

_INCREMENTAL_RETRAIN: dict[str, Any] = {
    "epochs": 1,
    "final_epochs": 0,
    "optimizer": "adam",
    "lr": 1e-3,
    "lr_scale": 0.1,
    "weight_decay": 0.0,
}


def _incremental_retrain() -> RetrainConfig:
    return RetrainConfig(**_INCREMENTAL_RETRAIN)


_Q = TypeVar("_Q", SLQConfig, MLQConfig, INQConfig)
_IS = TypeVar("_IS", bound="_IncrementalStage[Any]")


@dataclass(frozen=True)
class _IncrementalStage(Generic[_Q]):
    """What the SLQ, MLQ and INQ stages share: a quantizer config and its retraining."""

    quantize: _Q
    retrain: RetrainConfig = field(default_factory=_incremental_retrain)

    def with_bits_overrides(self: _IS, extra: tuple[BitsOverride, ...]) -> _IS:
        """A copy with ``extra`` overrides before the stage's own."""
        return replace(
            self, quantize=replace(self.quantize, overrides=extra + self.quantize.overrides)
        )

    def to_dict(self) -> dict[str, Any]:
        """The stage table (without ``type``)."""
        return {**self.quantize.to_dict(), "retrain": self.retrain.to_dict()}


@dataclass(frozen=True)
class SLQStage(_IncrementalStage[SLQConfig]):
    """SLQ as a recipe stage: ``retrain.epochs`` epochs after every freezing step and
    ``retrain.final_epochs`` more after the last (Adam, lr 1e-3 × 0.1 by default).

    The stage ends with ordinary shared weights (``SharedWeight``), exactly what its
    checkpoint reloads to, so a later finetune stage trains every codebook entry.
    """

    quantize: SLQConfig = field(default_factory=SLQConfig)


@dataclass(frozen=True)
class MLQStage(_IncrementalStage[MLQConfig]):
    """MLQ as a recipe stage: ``retrain.epochs`` epochs after every step (groups × width steps)
    and ``retrain.final_epochs`` more after the last. Ends as :class:`SLQStage` does."""

    quantize: MLQConfig = field(default_factory=MLQConfig)


@dataclass(frozen=True)
class INQStage(_IncrementalStage[INQConfig]):
    """INQ as a recipe stage: ``retrain.epochs`` epochs after every step but the last (after
    100% only biases could train) and ``retrain.final_epochs`` after the last.

    Ends with ordinary shared weights; a later finetune stage would move the levels off the
    powers of two (like any codebook).
    """

    quantize: INQConfig = field(default_factory=INQConfig)


def _incremental_kind(name: str, stage_cls: type, config_cls: type) -> StageKind:
    keys = frozenset(f.name for f in fields(config_cls))

    def parse(table: Mapping[str, Any], ctx: StageParseContext) -> Any:
        _check_keys(table, keys | {"retrain"}, ctx.where)
        t = dict(table)
        retrain = _sub_table(t, "retrain", ctx.where)
        _check_keys(retrain, _RETRAIN_KEYS, f"{ctx.where} retrain")
        config = config_cls.from_dict(ctx.pick(keys - {"overrides"}, t))  # type: ignore[attr-defined]
        data = {**_INCREMENTAL_RETRAIN, **ctx.pick(_RETRAIN_KEYS, retrain)}
        return stage_cls(config, RetrainConfig.from_dict(data))

    return StageKind(name, "quantize", stage_cls, parse, (keys - {"overrides"}) | _RETRAIN_KEYS)


for _kind in (
    _incremental_kind("slq", SLQStage, SLQConfig),
    _incremental_kind("mlq", MLQStage, MLQConfig),
    _incremental_kind("inq", INQStage, INQConfig),
):
    register_stage_kind(_kind)


_WEIGHTLESS_RETRAIN: dict[str, Any] = {"epochs": 1, "final_epochs": 0}


@dataclass(frozen=True)
class WeightlessStage:
    """Weightless as a recipe stage (Reagen et al., ICML 2018).

    Layer after layer: a layer that is not clustered yet is clustered with ``quantize`` (the
    recipe's ``bits`` overrides apply), encoded in a Bloomier filter, frozen as decoded, and the
    layers after it (module registration order; see ``deepzip.weightless_``) retrain for
    ``retrain.epochs`` epochs (after every cell width tried when the width is chosen
    automatically; the choice uses the validation accuracy). The encoded layers are
    written to the ``.dzip`` file in the Bloomier encoding.

    Attributes:
        weightless: cell widths, budget and filter parameters, which layers.
        quantize: clustering of the layers not clustered before this stage.
        retrain: retraining after each layer (``final_epochs`` must be 0).
    """

    weightless: WeightlessConfig = field(default_factory=WeightlessConfig)
    quantize: QuantizeConfig = field(default_factory=QuantizeConfig)
    retrain: RetrainConfig = field(default_factory=lambda: RetrainConfig(**_WEIGHTLESS_RETRAIN))

    def __post_init__(self) -> None:
        if self.retrain.final_epochs:
            raise ConfigError(
                f"weightless stage: retrain.final_epochs must be 0 (retraining follows every "
                f"layer), got {self.retrain.final_epochs!r}"
            )

    def with_bits_overrides(self, extra: tuple[BitsOverride, ...]) -> WeightlessStage:
        """A copy with ``extra`` clustering overrides before the stage's own."""
        return replace(
            self, quantize=replace(self.quantize, overrides=extra + self.quantize.overrides)
        )

    def to_dict(self) -> dict[str, Any]:
        """The stage table (without ``type``)."""
        out = self.retrain.to_dict()
        out.pop("final_epochs")
        return {
            **self.weightless.to_dict(),
            "quantize": self.quantize.to_dict(),
            "retrain": out,
        }


_WEIGHTLESS_KEYS = frozenset(f.name for f in fields(WeightlessConfig))


def _parse_weightless(table: Mapping[str, Any], ctx: StageParseContext) -> WeightlessStage:
    _check_keys(table, _WEIGHTLESS_KEYS | {"quantize", "retrain"}, ctx.where)
    t = dict(table)
    quantize = _sub_table(t, "quantize", ctx.where)
    retrain = _sub_table(t, "retrain", ctx.where)
    _check_keys(quantize, _QUANTIZE_KEYS, f"{ctx.where} quantize")
    _check_keys(retrain, _RETRAIN_KEYS - {"final_epochs"}, f"{ctx.where} retrain")
    data = {**_WEIGHTLESS_RETRAIN, **ctx.pick(_RETRAIN_KEYS - {"final_epochs"}, retrain)}
    # Default globs select the layers Weightless encodes (its clustering ignores globs).
    globs = frozenset({"include", "exclude"})
    return WeightlessStage(
        WeightlessConfig.from_dict(ctx.pick(globs, t)),
        QuantizeConfig.from_dict(ctx.pick(_QUANTIZE_KEYS - {"overrides"} - globs, quantize)),
        RetrainConfig.from_dict(data),
    )


register_stage_kind(
    StageKind(
        "weightless",
        "quantize",
        WeightlessStage,
        _parse_weightless,
        (_RETRAIN_KEYS - {"final_epochs"}) | (_QUANTIZE_KEYS - {"overrides"}),
    )
)


@dataclass(frozen=True)
class Stage:
    """One step of a recipe: a registered stage type and its configuration.

    Attributes:
        kind: the stage type (``"prune"``, ``"quantize"``, ...; see :func:`stage_kinds`).
        config: its configuration (``PruneStage``, ``QuantizeStage``, ...).
        name: an optional label shown in reports.
    """

    kind: str
    config: Any
    name: str | None = None

    def __post_init__(self) -> None:
        known = _STAGE_KINDS.get(self.kind)
        if known is None:
            raise ConfigError(
                f"unknown stage type {self.kind!r} (known: {', '.join(sorted(_STAGE_KINDS))})"
            )
        if not isinstance(self.config, known.config_type):
            raise ConfigError(
                f"a {self.kind!r} stage needs a {known.config_type.__name__}, "
                f"got {type(self.config).__name__}"
            )
        if self.name is not None and (not isinstance(self.name, str) or not self.name):
            raise ConfigError(f"stage name must be a non-empty string, got {self.name!r}")

    @property
    def role(self) -> StageRole:
        """The stage type's role (see :class:`StageKind`)."""
        return _STAGE_KINDS[self.kind].role

    def label(self, index: int) -> str:
        """``"stage 2 (quantize)"``, or with its name ``"stage 2 (quantize 'q5')"``."""
        return _stage_label(index, self.kind, self.name)

    def to_dict(self) -> dict[str, Any]:
        """The TOML/JSON stage table."""
        head: dict[str, Any] = {"type": self.kind}
        if self.name:
            head["name"] = self.name
        return {**head, **self.config.to_dict()}


_RECIPE_KEYS = frozenset(
    {"name", "description", "model", "dataset", "seed", "defaults", "overrides", "stages"}
)


@dataclass(frozen=True)
class Recipe:
    """A whole compression pipeline: ordered stages, per-layer overrides, a seed.

    Order rules (checked on construction, each violation a ``ConfigError`` naming the stage):
    a train stage only first; prune and retrain stages before any quantization; a retrain stage
    after a prune stage; a finetune stage after a quantize stage; the last stage encodes, and
    only the last.

    Attributes:
        stages: the stages in order.
        seed: seeds every stage (stage ``i`` uses a seed derived from it and ``i``), 0 to
            ``2**31 - 1``.
        overrides: per-layer rules by glob, applied by every stage (a stage's own overrides
            come after them and win).
        model: zoo model name, for ``deepzip run`` (Python callers pass their own model).
        dataset: data set name (``"fashion-mnist"``, ``"mnist"``), for ``deepzip run``.
        name: a title for reports.
        description: free text.
    """

    stages: tuple[Stage, ...]
    seed: int = 0
    overrides: tuple[LayerRule, ...] = ()
    model: str | None = None
    dataset: str | None = None
    name: str | None = None
    description: str | None = None

    def __post_init__(self) -> None:
        _check_seed("seed", self.seed, bits=31)  # stage seeds are taken modulo 2**31
        if not isinstance(self.stages, tuple) or not all(isinstance(s, Stage) for s in self.stages):
            raise ConfigError(f"stages must be a tuple of Stage, got {self.stages!r}")
        if not isinstance(self.overrides, tuple) or not all(
            isinstance(o, LayerRule) for o in self.overrides
        ):
            raise ConfigError(f"overrides must be LayerRule items, got {self.overrides!r}")
        for key in ("model", "dataset", "name", "description"):
            value = getattr(self, key)
            if value is not None and (not isinstance(value, str) or not value):
                raise ConfigError(f"{key} must be a non-empty string, got {value!r}")
        _check_order(self.stages)

    # -- per-stage views with the recipe-wide overrides merged in

    def effective(self, stage: Stage) -> Any:
        """``stage.config`` with the recipe's per-layer overrides merged in (stage's win)."""
        config = stage.config
        if isinstance(config, PruneStage):
            rules = tuple(o for r in self.overrides if (o := r.prune_override()) is not None)
            if rules and config.prune.scope == "global" and any(not o.skip for o in rules):
                raise ConfigError(
                    "recipe overrides set a per-layer sparsity, but a prune stage uses "
                    "scope = 'global' (one threshold); overrides may only skip there"
                )
            prune = replace(config.prune, overrides=rules + config.prune.overrides)
            return replace(config, prune=prune)
        if isinstance(config, QuantizeStage):
            bits = tuple(b for r in self.overrides if (b := r.bits_override()) is not None)
            quantize = replace(config.quantize, overrides=bits + config.quantize.overrides)
            return replace(config, quantize=quantize)
        if isinstance(config, (SLQStage, MLQStage, INQStage, WeightlessStage)):
            bits = tuple(b for r in self.overrides if (b := r.bits_override()) is not None)
            return config.with_bits_overrides(bits)
        return config

    def index_bits(self) -> dict[str, IndexBitsSpec]:
        """``{glob: index bits}`` from the overrides that set ``index_bits`` (in order)."""
        return {r.pattern: r.index_bits for r in self.overrides if r.index_bits is not None}

    def prune_job(self) -> PruneJob:
        """The first prune stage (with the train stage, if any) as a :class:`PruneJob`."""
        prune = next((s for s in self.stages if isinstance(s.config, PruneStage)), None)
        if prune is None:
            raise ConfigError("this recipe has no prune stage")
        cfg = self.effective(prune)
        train = next((s.config for s in self.stages if isinstance(s.config, TrainStage)), None)
        return PruneJob(
            prune=cfg.prune,
            schedule=cfg.schedule,
            retrain=cfg.retrain,
            train=replace(train.train, seed=self.seed) if train is not None else None,
        )

    def without(self, kind: str) -> Recipe:
        """A copy without the stages of one type (e.g. ``"train"`` to start from a checkpoint)."""
        return replace(self, stages=tuple(s for s in self.stages if s.kind != kind))

    # -- TOML

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Recipe:
        """Build from the TOML/JSON form.

        ``[defaults]`` sets keys for every stage that takes them (its retraining table
        included); a stage's own keys win. Precisely: a key the stage sets replaces the default
        of that key and of its alternatives (``sparsity`` and ``quality`` replace each other; a
        stage's ``conv_bits`` or ``fc_bits`` replaces a default ``bits``, which would otherwise
        override it); default ``include``/``exclude`` globs select the layers of every stage
        that selects layers (sensitivity, prune, quantize, SLQ/MLQ/INQ, and the layers a
        Weightless stage encodes).

        Also accepts a pruning recipe (``[prune]``, ``[schedule]``, ``[retrain]``, optional
        ``[train]``, and the recipe's ``name``, ``description``, ``model`` and ``dataset``):
        it becomes train → prune → encode.

        Raises:
            ConfigError: naming the stage and key: an unknown stage type or key, a bad value,
                an impossible stage order.
        """
        if not isinstance(data, Mapping):
            raise ConfigError(f"a recipe must be a table, got {data!r}")
        if "stages" not in data and "prune" in data:
            info = {k: data[k] for k in _RECIPE_INFO_KEYS if k in data}
            return replace(cls.from_prune_job(PruneJob.from_dict(data)), **info)
        _check_keys(data, _RECIPE_KEYS, "recipe")
        defaults = _table(data, "defaults")
        raw_stages = data.get("stages")
        if not isinstance(raw_stages, list) or not raw_stages:
            raise ConfigError(f"a recipe needs a non-empty [[stages]] list, got {raw_stages!r}")
        known_defaults = frozenset().union(*(k.default_keys for k in _STAGE_KINDS.values()))
        _check_keys(defaults, known_defaults, "defaults")
        stages = tuple(_parse_stage(i, t, defaults) for i, t in enumerate(raw_stages))
        raw_rules = data.get("overrides", [])
        if not isinstance(raw_rules, list):
            raise ConfigError(f"overrides must be a list of tables, got {raw_rules!r}")
        rules = tuple(_build(LayerRule, r, f"overrides[{i}]") for i, r in enumerate(raw_rules))
        return cls(
            stages=stages,
            seed=data.get("seed", 0),
            overrides=rules,
            model=data.get("model"),
            dataset=data.get("dataset"),
            name=data.get("name"),
            description=data.get("description"),
        )

    @classmethod
    def from_prune_job(cls, job: PruneJob, *, encode: EncodeStage | None = None) -> Recipe:
        """train (when the job has one) → prune → encode."""
        stages: list[Stage] = []
        seed = 0
        if job.train is not None:
            seed = job.train.seed
            stages.append(Stage("train", TrainStage(job.train)))
        stages.append(Stage("prune", PruneStage(job.prune, job.schedule, job.retrain)))
        stages.append(Stage("encode", encode or EncodeStage()))
        return cls(stages=tuple(stages), seed=seed)

    def to_dict(self) -> dict[str, Any]:
        """The TOML/JSON form (``from_dict(to_dict())`` gives an equal recipe)."""
        out: dict[str, Any] = {}
        for key in ("name", "description", "model", "dataset"):
            if getattr(self, key) is not None:
                out[key] = getattr(self, key)
        out["seed"] = self.seed
        if self.overrides:
            out["overrides"] = [r.to_dict() for r in self.overrides]
        out["stages"] = [s.to_dict() for s in self.stages]
        return out

    @classmethod
    def load(cls, path: str | Path) -> Recipe:
        """Read a recipe from a TOML file (errors name the file)."""
        data = load_toml(path)  # its errors name the file already
        try:
            return cls.from_dict(data)
        except ConfigError as exc:
            raise ConfigError(f"{path}: {exc}") from exc

    def save(self, path: str | Path) -> None:
        """Write the recipe as TOML (atomically)."""
        save_toml(self.to_dict(), path)

    @classmethod
    def builtin(cls, name: str) -> Recipe:
        """A recipe shipped with deepzip (see :func:`builtin_recipe_names`)."""
        names = builtin_recipe_names()
        if name not in names:
            raise ConfigError(f"no built-in recipe {name!r}; available: {', '.join(names)}")
        text = resources.files("deepzip.recipes").joinpath(f"{name}.toml").read_text("utf-8")
        try:
            return cls.from_dict(tomllib.loads(text))
        except ConfigError as exc:  # pragma: no cover - shipped recipes are tested
            raise ConfigError(f"built-in recipe {name!r}: {exc}") from exc


def _parse_stage(index: int, table: object, defaults: Mapping[str, Any]) -> Stage:
    where = f"stage {index + 1}"
    if not isinstance(table, Mapping):
        raise ConfigError(f"{where}: must be a table, got {table!r}")
    kind_name = table.get("type")
    if kind_name is None:
        raise ConfigError(f"{where}: missing key 'type' (one of {', '.join(sorted(_STAGE_KINDS))})")
    kind = _STAGE_KINDS.get(kind_name) if isinstance(kind_name, str) else None
    if kind is None:
        raise ConfigError(
            f"{where}: unknown stage type {kind_name!r} (known: {', '.join(sorted(_STAGE_KINDS))})"
        )
    name = table.get("name")
    label = _stage_label(index, kind.name, name if isinstance(name, str) else None)
    body = {k: v for k, v in table.items() if k not in ("type", "name")}
    try:
        config = kind.parse(body, StageParseContext(label, defaults))
    except ConfigError as exc:
        msg = str(exc)
        raise ConfigError(msg if msg.startswith(label) else f"{label}: {msg}") from exc
    except TypeError as exc:  # a value of the wrong type reaching a constructor
        raise ConfigError(f"{label}: {exc}") from exc
    return Stage(kind.name, config, name)


def _stage_label(index: int, kind: str, name: str | None) -> str:
    named = f" {name!r}" if name else ""
    return f"stage {index + 1} ({kind}{named})"


def _check_order(stages: tuple[Stage, ...]) -> None:
    quantized: Stage | None = None
    pruned = False
    for i, stage in enumerate(stages):
        role, where = stage.role, stage.label(i)
        if role == "train" and i != 0:
            raise ConfigError(f"{where}: a train stage can only be the first stage")
        if role in ("prune", "retrain") and quantized is not None:
            raise ConfigError(
                f"{where}: {stage.kind} after {quantized.kind} (stage "
                f"{stages.index(quantized) + 1}) cannot work: once weights are shared only "
                "the codebooks train; prune and retrain before quantizing, fine-tune after"
            )
        if role == "analyze" and quantized is not None:
            raise ConfigError(
                f"{where}: {stage.kind} after {quantized.kind} (stage "
                f"{stages.index(quantized) + 1}) cannot work: it measures pruning, and "
                "quantized layers can no longer be pruned; analyze before quantizing"
            )
        if role == "retrain" and not pruned:
            raise ConfigError(
                f"{where}: retrain needs an earlier prune stage (to train a dense model, "
                "use a train stage)"
            )
        if role == "finetune" and quantized is None:
            raise ConfigError(
                f"{where}: finetune needs an earlier quantize stage (it trains the codebooks)"
            )
        if role == "encode" and i != len(stages) - 1:
            raise ConfigError(f"{where}: encode must be the last stage")
        pruned = pruned or role == "prune"
        if role == "quantize":
            quantized = stage
    if not stages or stages[-1].role != "encode":
        last = stages[-1].label(len(stages) - 1) if stages else "none"
        raise ConfigError(f"the last stage must be an encode stage (last: {last})")


def load_recipe(path: str | Path) -> Recipe:
    """Read a pipeline recipe from TOML (see :class:`Recipe`)."""
    return Recipe.load(path)


def load_toml(path: str | Path) -> dict[str, Any]:
    """Read a TOML file.

    Raises:
        ConfigError: naming the file and the cause: it does not exist, cannot be read (a
            directory, no permission...), is not UTF-8 text, or is not valid TOML.
    """
    p = Path(path)
    try:
        with p.open("rb") as fh:
            return tomllib.load(fh)
    except FileNotFoundError as exc:
        raise ConfigError(f"recipe file not found: {p}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{p}: invalid TOML: {exc}") from exc
    except UnicodeDecodeError as exc:
        raise ConfigError(
            f"{p}: not UTF-8 text (byte 0x{exc.object[exc.start]:02x} at offset {exc.start}); "
            "TOML files must be UTF-8"
        ) from exc
    except OSError as exc:
        raise ConfigError(f"{p}: cannot read the recipe: {exc.strerror or exc}") from exc


def save_toml(data: Mapping[str, Any], path: str | Path) -> None:
    """Write a mapping as TOML (atomically: temp file then rename)."""
    atomic_write_text(path, tomli_w.dumps(dict(data)))


def builtin_recipe(name: str) -> PruneJob:
    """A recipe shipped with deepzip, by zoo model name (``"lenet-300-100"``, ``"lenet-5"``)."""
    names = builtin_recipe_names()
    if name not in names:
        raise ConfigError(f"no built-in recipe {name!r}; available: {', '.join(names)}")
    text = resources.files("deepzip.recipes").joinpath(f"{name}.toml").read_text("utf-8")
    try:
        return PruneJob.from_dict(tomllib.loads(text))
    except ConfigError as exc:  # pragma: no cover - shipped recipes are tested
        raise ConfigError(f"built-in recipe {name!r}: {exc}") from exc


def builtin_recipe_names() -> list[str]:
    """Names of the recipes shipped with deepzip."""
    files = resources.files("deepzip.recipes").iterdir()
    return sorted(f.name.removesuffix(".toml") for f in files if f.name.endswith(".toml"))


def load_prune_job(path: str | Path) -> PruneJob:
    """Load a pruning recipe (``[prune]``, ``[schedule]``, ``[retrain]``) from TOML."""
    data = load_toml(path)  # its errors name the file already
    try:
        return PruneJob.from_dict(data)
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from exc


_T = TypeVar("_T")


def _table(data: Mapping[str, Any], key: str) -> Mapping[str, Any]:
    value = data.get(key, {})
    if not isinstance(value, Mapping):
        raise ConfigError(f"[{key}] must be a table, got {value!r}")
    return value


def _build(cls: type[_T], data: Mapping[str, Any], where: str) -> _T:
    if not isinstance(data, Mapping):
        raise ConfigError(f"{where} must be a table, got {data!r}")
    names = {f.name for f in fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(data) - names)
    if unknown:
        raise ConfigError(
            f"{where}: unknown key {unknown[0]!r} (known keys: {', '.join(sorted(names))})"
        )
    return cls(**data)


def _as_dict(obj: Any) -> dict[str, Any]:
    return {f.name: getattr(obj, f.name) for f in fields(obj) if getattr(obj, f.name) is not None}


def _check_selection(
    where: str,
    include: tuple[str, ...],
    exclude: tuple[str, ...],
    overrides: tuple[Any, ...],
    override_cls: type,
) -> None:
    """Validate the include/exclude globs and the override items of a config."""
    _check_patterns(f"{where}.include", include)
    _check_patterns(f"{where}.exclude", exclude)
    if not isinstance(overrides, tuple) or not all(isinstance(o, override_cls) for o in overrides):
        raise ConfigError(
            f"{where}.overrides must be {override_cls.__name__} items, got {overrides!r}"
        )


def _selection_from_dict(
    cls: type[_T], override_cls: type, data: Mapping[str, Any], where: str
) -> _T:
    """Build a config with ``include``/``exclude`` globs and ``overrides`` tables."""
    data = dict(data)
    raw = data.pop("overrides", [])
    if not isinstance(raw, list):
        raise ConfigError(f"{where}.overrides must be a list of tables, got {raw!r}")
    overrides: tuple[Any, ...] = tuple(
        _build(override_cls, o, f"{where}.overrides[{i}]") for i, o in enumerate(raw)
    )
    for key in ("include", "exclude"):
        if key in data:
            data[key] = _as_str_tuple(f"{where}.{key}", data[key])
    return _build(cls, {**data, "overrides": overrides}, where)


def _selection_to_dict(config: Any) -> dict[str, Any]:
    """The TOML/JSON form of a config with globs and overrides (``None`` values omitted)."""
    out = _as_dict(config)
    out["overrides"] = [_as_dict(o) for o in config.overrides]
    out["include"] = list(config.include)
    out["exclude"] = list(config.exclude)
    return out


def _as_str_tuple(key: str, value: Any) -> tuple[str, ...]:
    if isinstance(value, str):
        return (value,)
    if not isinstance(value, list):
        raise ConfigError(f"{key} must be a list of globs, got {value!r}")
    return tuple(value)
