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
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from importlib import resources
from pathlib import Path
from typing import Any, Literal, TypeVar

import tomli_w

from deepzip._atomic import atomic_write_text
from deepzip.errors import ConfigError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised only on Python 3.10
    import tomli as tomllib

__all__ = [
    "BitsOverride",
    "LayerOverride",
    "PruneConfig",
    "PruneJob",
    "QuantizeConfig",
    "RetrainConfig",
    "ScheduleConfig",
    "TrainConfig",
    "builtin_recipe",
    "builtin_recipe_names",
    "load_prune_job",
    "load_toml",
    "save_toml",
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
        if self.sparsity is not None and self.quality is not None:
            raise ConfigError(f"{key}: give sparsity or quality, not both")
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
        seed: seeds weight initialisation and data order.
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
        _check_int("train.seed", self.seed, minimum=0)
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
        if self.bits is not None:
            _check_bits(f"overrides[{self.pattern!r}].bits", self.bits)
        elif not self.skip:
            raise ConfigError(f"overrides[{self.pattern!r}]: set bits or skip = true")


@dataclass(frozen=True)
class QuantizeConfig:
    """Weight sharing: one codebook per layer plus one index per surviving weight.

    Attributes:
        bits: bits for every layer; ``None`` uses the paper's defaults ``conv_bits`` for
            convolutions and ``fc_bits`` for everything else (Linear, Embedding, ...).
        conv_bits: default bits of Conv1d/2d/3d layers (paper: 8).
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
        seed: seeds the random initialisations.
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
        _check_int("quantize.seed", self.seed, minimum=0)
        _check_selection("quantize", self.include, self.exclude, self.overrides, BitsOverride)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> QuantizeConfig:
        """Build from a TOML/JSON table; unknown keys raise ``ConfigError``."""
        return _selection_from_dict(cls, BitsOverride, data, "quantize")

    def to_dict(self) -> dict[str, Any]:
        """The TOML/JSON form (``None`` values omitted)."""
        return _selection_to_dict(self)


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
        """Build from ``[prune]``, ``[schedule]``, ``[retrain]`` and optional ``[train]``."""
        unknown = sorted(set(data) - {"prune", "schedule", "retrain", "train"})
        if unknown:
            raise ConfigError(
                f"unknown section {unknown[0]!r}; expected 'prune', 'schedule', 'retrain' "
                "or 'train'"
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


def load_toml(path: str | Path) -> dict[str, Any]:
    """Read a TOML file; a syntax error becomes ``ConfigError`` naming the file."""
    p = Path(path)
    try:
        with p.open("rb") as fh:
            return tomllib.load(fh)
    except FileNotFoundError as exc:
        raise ConfigError(f"recipe file not found: {p}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{p}: invalid TOML: {exc}") from exc


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
    try:
        return PruneJob.from_dict(load_toml(path))
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
