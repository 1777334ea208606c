"""Recipe stage types: their configs, the ``[defaults]`` precedence, the registry and the
parsers of stage tables.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields, replace
from typing import Any, Generic, Literal, TypeVar

from deepzip.config._base import (
    _as_dict,
    _as_str_tuple,
    _check_bits,
    _check_choice,
    _check_instance,
    _check_int,
    _check_keys,
    _check_number,
    _check_patterns,
    _check_quality,
    _check_sparsity,
)
from deepzip.config.encoding import (
    CoderName,
    IndexBitsSpec,
    LayoutName,
    check_coder,
    check_index_bits,
)
from deepzip.config.techniques import (
    BitsOverride,
    INQConfig,
    LayerOverride,
    MLQConfig,
    PruneConfig,
    QuantizeConfig,
    RetrainConfig,
    ScheduleConfig,
    SLQConfig,
    TrainConfig,
    WeightlessConfig,
)
from deepzip.errors import ConfigError

# A Recipe is an ordered list of stages (train, sensitivity, prune, retrain, quantize,
# finetune, encode), global defaults applied to every stage that takes the key (see
# Recipe.from_dict for the precedence), and per-layer overrides by glob. Stage types are
# registered in a registry (``register_stage_kind``) so that other methods (Weightless,
# SLQ/MLQ/INQ) can add their own; deepzip.pipeline runs them.

StageRole = Literal["train", "analyze", "prune", "retrain", "quantize", "finetune", "encode"]

_RETRAIN_KEYS = frozenset(f.name for f in fields(RetrainConfig))
_TRAIN_KEYS = frozenset(f.name for f in fields(TrainConfig)) - {"seed"}
_PRUNE_KEYS = frozenset(f.name for f in fields(PruneConfig))
_QUANTIZE_KEYS = frozenset(f.name for f in fields(QuantizeConfig))
# The sweep of deepzip.prune.sensitivity.DEFAULT_SWEEP (config sits below prune).
_SENSITIVITY_SWEEP = (0.0, 0.3, 0.5, 0.6, 0.7, 0.8, 0.85, 0.9, 0.93, 0.95, 0.97)


@dataclass(frozen=True)
class LayerRule:
    """A recipe-wide per-layer override: the layers whose name matches ``pattern``.

    Each prune stage turns ``sparsity``/``quality``/``skip`` into a :class:`LayerOverride`,
    each quantizing stage (quantize, SLQ/MLQ/INQ, Weightless's clustering) turns
    ``bits``/``skip`` into a :class:`BitsOverride`, and the encode stage uses ``index_bits``;
    a stage's own ``overrides`` come after and win. A rule applies to the stages that act on
    a layer it matches: a stage that leaves those layers out (``exclude``, or an ``include``
    that does not name them) does not use it. A setting that no stage of the recipe takes is
    refused when the recipe is built; against the model, before the first stage runs, the
    glob must match a layer and each setting must be used by a stage that acts on one of
    its layers (``deepzip.pipeline.check_recipe``).

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

    def settings(self) -> dict[str, Any]:
        """The settings this rule makes, by key (``skip`` only when true)."""
        out = {
            k: v
            for k, v in (
                ("sparsity", self.sparsity),
                ("quality", self.quality),
                ("bits", self.bits),
                ("index_bits", self.index_bits),
            )
            if v is not None
        }
        if self.skip:
            out["skip"] = True
        return out

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
    """Dense training from the model's current weights (must be the first stage).

    ``train.seed`` must be 0: the recipe's seed seeds every stage (a stage's own seed would be
    neither used nor kept in the recipe's TOML).
    """

    train: TrainConfig = field(default_factory=TrainConfig)

    def __post_init__(self) -> None:
        _check_instance("train", self.train, TrainConfig)
        if self.train.seed != 0:
            raise ConfigError(
                f"train stage: train.seed = {self.train.seed!r} is not used (the recipe's seed "
                "seeds every stage); leave it 0 and set Recipe.seed"
            )

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
            raise ConfigError(
                f"sparsities must be a non-empty tuple (a list in TOML), got {self.sparsities!r}"
            )
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

    def __post_init__(self) -> None:
        _check_instance("prune", self.prune, PruneConfig)
        _check_instance("schedule", self.schedule, ScheduleConfig)
        _check_instance("retrain", self.retrain, RetrainConfig)

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
        _check_instance("retrain", self.retrain, RetrainConfig)
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
        _check_instance("quantize", self.quantize, QuantizeConfig)
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
        _check_instance("finetune", self.finetune, RetrainConfig)
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
    StageKind("retrain", "retrain", RetrainStage, _parse_retrain, _RETRAIN_KEYS - {"final_epochs"}),
    StageKind(
        "quantize", "quantize", QuantizeStage, _parse_quantize, _QUANTIZE_KEYS - {"overrides"}
    ),
    StageKind(
        "finetune", "finetune", FinetuneStage, _parse_finetune, _RETRAIN_KEYS - {"final_epochs"}
    ),
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

    def __post_init__(self) -> None:
        config_type = {SLQStage: SLQConfig, MLQStage: MLQConfig, INQStage: INQConfig}
        _check_instance("quantize", self.quantize, config_type.get(type(self), object))
        _check_instance("retrain", self.retrain, RetrainConfig)

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
        quantize: clustering of the layers not clustered before this stage (each alone: its
            ``include``/``exclude`` must be empty, the stage's own select the layers, and its
            ``importance`` ``"none"``).
        retrain: retraining after each layer (``final_epochs`` must be 0).
    """

    weightless: WeightlessConfig = field(default_factory=WeightlessConfig)
    quantize: QuantizeConfig = field(default_factory=QuantizeConfig)
    retrain: RetrainConfig = field(default_factory=lambda: RetrainConfig(**_WEIGHTLESS_RETRAIN))

    def __post_init__(self) -> None:
        _check_instance("weightless", self.weightless, WeightlessConfig)
        _check_instance("quantize", self.quantize, QuantizeConfig)
        _check_instance("retrain", self.retrain, RetrainConfig)
        if self.retrain.final_epochs:
            raise ConfigError(
                f"weightless stage: retrain.final_epochs must be 0 (retraining follows every "
                f"layer), got {self.retrain.final_epochs!r}"
            )
        # weightless_ clusters each layer alone, with the stage's own selection
        for key in ("include", "exclude"):
            globs = getattr(self.quantize, key)
            if globs:
                raise ConfigError(
                    f"quantize.{key} = {list(globs)!r} is not used: the weightless stage's own "
                    "include/exclude select the layers it clusters and encodes; set them there"
                )
        if self.quantize.importance != "none":
            raise ConfigError(
                f"quantize.importance = {self.quantize.importance!r} is not available in a "
                "weightless stage (it computes no importance); use 'none'"
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


def parse_stage(index: int, table: object, defaults: Mapping[str, Any]) -> Stage:
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
    if name is not None and (not isinstance(name, str) or not name):
        raise ConfigError(
            f"{_stage_label(index, kind.name, None)}: name must be a non-empty string, got {name!r}"
        )
    label = _stage_label(index, kind.name, name)
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


@dataclass(frozen=True)
class LayerScope:
    """The layers a stage acts on, and what it takes from the recipe's per-layer rules.

    Attributes:
        include: the stage's include globs (empty: every compressible layer).
        exclude: the stage's exclude globs.
        own: the patterns of the stage's own per-layer overrides.
        takes: the :class:`LayerRule` settings the stage uses on its layers (``"sparsity"``,
            ``"quality"``, ``"bits"``, ``"index_bits"``, ``"skip"``).
    """

    include: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()
    own: tuple[str, ...] = ()
    takes: frozenset[str] = frozenset()


def layer_scope(config: object) -> LayerScope | None:
    """The layers a built-in stage configuration acts on (:class:`LayerScope`), or ``None``
    for one that selects no layers (train, retrain, finetune, or a registered type deepzip
    does not know). An encode stage acts on every layer and takes ``index_bits``."""
    takes = _rule_keys(type(config))
    if isinstance(config, SensitivityStage):
        return LayerScope(config.include, config.exclude)
    if isinstance(config, PruneStage):
        p = config.prune
        return LayerScope(p.include, p.exclude, tuple(o.pattern for o in p.overrides), takes)
    if isinstance(config, (QuantizeStage, SLQStage, MLQStage, INQStage)):
        q = config.quantize
        return LayerScope(q.include, q.exclude, tuple(o.pattern for o in q.overrides), takes)
    if isinstance(config, WeightlessStage):
        w = config.weightless
        own = tuple(o.pattern for o in w.overrides)
        own += tuple(o.pattern for o in config.quantize.overrides)
        return LayerScope(w.include, w.exclude, own, takes)
    if isinstance(config, EncodeStage):
        return LayerScope(takes=takes)
    return None


# The LayerRule settings each built-in stage type uses on its layers (LayerScope.takes).
_BITS_TAKES = frozenset({"bits", "skip"})
_RULE_KEYS: dict[type, frozenset[str]] = {
    PruneStage: frozenset({"sparsity", "quality", "skip"}),
    QuantizeStage: _BITS_TAKES,
    SLQStage: _BITS_TAKES,
    MLQStage: _BITS_TAKES,
    INQStage: _BITS_TAKES,
    WeightlessStage: _BITS_TAKES,
    EncodeStage: frozenset({"index_bits"}),
}


def _rule_keys(config_type: type) -> frozenset[str]:
    """The LayerRule settings a stage configuration of this type (or a subclass) uses."""
    return next((v for t, v in _RULE_KEYS.items() if issubclass(config_type, t)), frozenset())


def rule_takers(key: str) -> list[str]:
    """The registered stage types that use the per-layer rule setting ``key`` (sorted)."""
    return sorted(k.name for k in _STAGE_KINDS.values() if key in _rule_keys(k.config_type))
