"""Recipes: a whole pipeline (:class:`Recipe`) and a pruning job (:class:`PruneJob`), from
TOML and the recipes shipped with deepzip.
"""

from __future__ import annotations

import fnmatch
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any

from deepzip.config._base import _build, _check_instance, _check_keys, _check_seed, _table
from deepzip.config.encoding import IndexBitsSpec
from deepzip.config.stages import (
    EncodeStage,
    INQStage,
    LayerRule,
    MLQStage,
    PruneStage,
    QuantizeStage,
    SLQStage,
    Stage,
    TrainStage,
    WeightlessStage,
    layer_scope,
    parse_stage,
    rule_takers,
    stage_kinds,
)
from deepzip.config.techniques import PruneConfig, RetrainConfig, ScheduleConfig, TrainConfig
from deepzip.config.tomlfile import load_toml, save_toml
from deepzip.errors import ConfigError

if TYPE_CHECKING:
    from torch import nn

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised only on Python 3.10
    import tomli as tomllib


_RECIPE_KEYS = frozenset(
    {"name", "description", "model", "dataset", "seed", "defaults", "overrides", "stages"}
)


@dataclass(frozen=True)
class Recipe:
    """A whole compression pipeline: ordered stages, per-layer overrides, a seed.

    Order rules (checked on construction, each violation a ``ConfigError`` naming the stage):
    a train stage only first; prune, retrain and sensitivity stages before any quantization
    (SLQ, MLQ, INQ and Weightless stages quantize too); a retrain stage after a prune stage; a
    finetune stage after a quantize stage; the last stage encodes, and only the last. Also
    refused on construction: a setting of ``overrides`` that no stage of the recipe takes
    (``bits`` without a quantizing stage), and a stage's own override whose pattern is a
    layer name that the stage's ``exclude`` leaves out (the rest of the per-layer checks need
    the model: ``deepzip.pipeline.check_recipe``).

    Attributes:
        stages: the stages in order.
        seed: seeds every stage (stage ``i`` uses a seed derived from it and ``i``), 0 to
            ``2**31 - 1``.
        overrides: per-layer rules by glob, applied by every stage that acts on a layer they
            match (a stage's own overrides come after them and win; a stage that leaves the
            layer out does not use its rule).
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
        _check_rules_taken(self.stages, self.overrides)
        _check_own_overrides(self.stages)

    # -- per-stage views with the recipe-wide overrides merged in

    def effective(self, stage: Stage, *, overrides: tuple[LayerRule, ...] | None = None) -> Any:
        """``stage.config`` with the recipe's per-layer overrides merged in (stage's win).

        Args:
            stage: one of the recipe's stages.
            overrides: the recipe-wide rules to merge in, in the recipe's order (default:
                every one). A rule applies only to the stages that act on a layer it
                matches: ``deepzip.pipeline.stage_config`` passes the rules that match a layer
                of the stage, so that a stage that leaves a layer out does not get its rule.

        Raises:
            ConfigError: a rule that the stage cannot take (a per-layer sparsity in a prune
                stage with ``scope = 'global'``, bits below 2 in an INQ stage), naming it.
        """
        rules = self.overrides if overrides is None else overrides
        config = stage.config
        if isinstance(config, PruneStage):
            prune_rules = tuple(o for r in rules if (o := r.prune_override()) is not None)
            if config.prune.scope == "global":
                for rule in rules:
                    o = rule.prune_override()
                    if o is not None and not o.skip:
                        key = "sparsity" if o.sparsity is not None else "quality"
                        value = o.sparsity if o.sparsity is not None else o.quality
                        raise ConfigError(
                            f"overrides[{rule.pattern!r}]: {key} = {value!r} sets a per-layer "
                            "threshold, but this prune stage uses scope = 'global' (one "
                            "threshold); overrides may only skip there"
                        )
            prune = replace(config.prune, overrides=prune_rules + config.prune.overrides)
            return replace(config, prune=prune)
        if isinstance(config, QuantizeStage):
            bits = tuple(b for r in rules if (b := r.bits_override()) is not None)
            quantize = replace(config.quantize, overrides=bits + config.quantize.overrides)
            return replace(config, quantize=quantize)
        if isinstance(config, (SLQStage, MLQStage, INQStage, WeightlessStage)):
            bits = tuple(b for r in rules if (b := r.bits_override()) is not None)
            return config.with_bits_overrides(bits)
        return config

    def index_bits(self) -> dict[str, IndexBitsSpec]:
        """``{glob: index bits}`` from the overrides that set ``index_bits``, in order, a glob
        given twice where it last appears (the last matching rule wins, as ``dz.save`` reads
        the mapping)."""
        out: dict[str, IndexBitsSpec] = {}
        for r in self.overrides:
            if r.index_bits is not None:
                out.pop(r.pattern, None)
                out[r.pattern] = r.index_bits
        return out

    def prune_job(self, *, overrides: tuple[LayerRule, ...] | None = None) -> PruneJob:
        """The first prune stage (with the train stage, if any) as a :class:`PruneJob`.

        Args:
            overrides: the recipe-wide rules to merge in (default: every one; with the model
                at hand, ``deepzip.pipeline.recipe_prune_job`` passes only those that match
                a layer the stage prunes, as a run of the recipe does).
        """
        cfg = self.effective(self.stages[self.prune_index()], overrides=overrides)
        train = next((s.config for s in self.stages if isinstance(s.config, TrainStage)), None)
        return PruneJob(
            prune=cfg.prune,
            schedule=cfg.schedule,
            retrain=cfg.retrain,
            train=replace(train.train, seed=self.seed) if train is not None else None,
        )

    def prune_index(self) -> int:
        """The position of the first prune stage (the one :meth:`prune_job` takes).

        Raises:
            ConfigError: the recipe has no prune stage.
        """
        for index, stage in enumerate(self.stages):
            if isinstance(stage.config, PruneStage):
                return index
        raise ConfigError("this recipe has no prune stage")

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
                an impossible stage order, a ``[defaults]`` key or an override setting that no
                stage of the recipe takes (it would be neither used nor checked), a stage's own
                override of a layer its ``exclude`` names.
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
        known_defaults = frozenset().union(*(k.default_keys for k in stage_kinds().values()))
        _check_keys(defaults, known_defaults, "defaults")
        stages = tuple(parse_stage(i, t, defaults) for i, t in enumerate(raw_stages))
        _check_defaults_taken(defaults, stages)
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
        """train (when the job has one) → prune → encode; the job's ``train.seed`` becomes the
        recipe's seed."""
        stages: list[Stage] = []
        seed = 0
        if job.train is not None:
            seed = job.train.seed
            # the recipe's seed seeds the stages (a train stage keeps no seed of its own)
            stages.append(Stage("train", TrainStage(replace(job.train, seed=0))))
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
        data = builtin_recipe_data(name)
        try:
            return cls.from_dict(data)
        except ConfigError as exc:  # pragma: no cover - shipped recipes are tested
            raise ConfigError(f"built-in recipe {name!r}: {exc}") from exc


def _check_defaults_taken(defaults: Mapping[str, Any], stages: tuple[Stage, ...]) -> None:
    """A ``[defaults]`` key that no stage of the recipe takes would be neither used nor
    validated (a stage checks only the defaults it takes): refuse it, naming key and value."""
    kinds = stage_kinds()
    taken = frozenset().union(*(kinds[s.kind].default_keys for s in stages))
    for key, value in defaults.items():
        if key not in taken:
            takers = sorted(name for name, k in kinds.items() if key in k.default_keys)
            present = ", ".join(dict.fromkeys(s.kind for s in stages))
            raise ConfigError(
                f"defaults: {key} = {value!r} is taken by no stage of this recipe (its stages: "
                f"{present}; {key} is for {', '.join(takers)} stages); remove it"
            )


def _check_rules_taken(stages: tuple[Stage, ...], rules: tuple[LayerRule, ...]) -> None:
    """A recipe-wide setting that no stage of the recipe takes (``bits`` without a stage that
    quantizes, ``sparsity`` without a prune stage) would be neither used nor checked: refuse
    it, naming the rule, the setting and its value. Whether a stage that takes it acts on a
    layer the rule matches needs the model (``deepzip.pipeline.check_recipe``)."""
    scopes = [layer_scope(s.config) for s in stages]
    taken = frozenset().union(*(sc.takes for sc in scopes if sc is not None))
    for i, rule in enumerate(rules):
        for key, value in rule.settings().items():
            if key not in taken:
                takers = ", ".join(rule_takers(key))
                present = ", ".join(dict.fromkeys(s.kind for s in stages))
                raise ConfigError(
                    f"overrides[{i}] ({rule.pattern!r}): {key} = {value!r} is used by no stage "
                    f"of this recipe (its stages: {present}; {key} is for {takers} stages)"
                )


def _check_own_overrides(stages: tuple[Stage, ...]) -> None:
    """A stage's own override whose pattern is a layer name that its own ``exclude`` leaves
    out contradicts it: refuse it, naming both. (A glob that matches only excluded layers
    is refused against the model, by ``deepzip.pipeline.check_recipe``.)"""
    for i, stage in enumerate(stages):
        scope = layer_scope(stage.config)
        if scope is None:
            continue
        for pattern in scope.own:
            if any(c in pattern for c in "*?["):
                continue
            glob = next((g for g in scope.exclude if fnmatch.fnmatchcase(pattern, g)), None)
            if glob is not None:
                raise ConfigError(
                    f"{stage.label(i)}: override pattern {pattern!r} names a layer this stage "
                    f"excludes (exclude glob {glob!r}); remove the override or the exclusion"
                )


def _check_order(stages: tuple[Stage, ...]) -> None:
    quantized: Stage | None = None
    at = 0  # the most recent quantizing stage's number (stages may be equal: not .index)
    pruned = False
    for i, stage in enumerate(stages):
        role, where = stage.role, stage.label(i)
        if role == "train" and i != 0:
            raise ConfigError(f"{where}: a train stage can only be the first stage")
        if role in ("prune", "retrain") and quantized is not None:
            raise ConfigError(
                f"{where}: {stage.kind} after {quantized.kind} (stage "
                f"{at}) cannot work: once weights are shared only "
                "the codebooks train; prune and retrain before quantizing, fine-tune after"
            )
        if role == "analyze" and quantized is not None:
            raise ConfigError(
                f"{where}: {stage.kind} after {quantized.kind} (stage "
                f"{at}) cannot work: it measures pruning, and "
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
            quantized, at = stage, i + 1
    if not stages or stages[-1].role != "encode":
        last = stages[-1].label(len(stages) - 1) if stages else "none"
        raise ConfigError(f"the last stage must be an encode stage (last: {last})")


def load_recipe(path: str | Path) -> Recipe:
    """Read a pipeline recipe from TOML (see :class:`Recipe`)."""
    return Recipe.load(path)


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

    def __post_init__(self) -> None:
        _check_instance("prune", self.prune, PruneConfig)
        _check_instance("schedule", self.schedule, ScheduleConfig)
        _check_instance("retrain", self.retrain, RetrainConfig)
        if self.train is not None:
            _check_instance("train", self.train, TrainConfig)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> PruneJob:
        """Build from ``[prune]``, ``[schedule]``, ``[retrain]`` and optional ``[train]``.

        A pipeline recipe (``[[stages]]``) gives its first prune stage and its train stage,
        with every recipe-wide rule merged in (:func:`load_prune_job` with ``model`` gives
        only the rules of the layers the stage prunes). The recipe keys ``name``,
        ``description``, ``model`` and ``dataset`` are accepted and not part of the job.
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


def builtin_recipe(name: str) -> PruneJob:
    """A recipe shipped with deepzip, by zoo model name (``"lenet-300-100"``, ``"lenet-5"``)."""
    data = builtin_recipe_data(name)
    try:
        return PruneJob.from_dict(data)
    except ConfigError as exc:  # pragma: no cover - shipped recipes are tested
        raise ConfigError(f"built-in recipe {name!r}: {exc}") from exc


def builtin_recipe_data(name: str) -> dict[str, Any]:
    """The TOML table of a recipe shipped with deepzip (what :meth:`Recipe.builtin` and
    :func:`builtin_recipe` build from).

    Raises:
        ConfigError: no built-in recipe of that name (the names are listed).
    """
    names = builtin_recipe_names()
    if name not in names:
        raise ConfigError(f"no built-in recipe {name!r}; available: {', '.join(names)}")
    text = resources.files("deepzip.recipes").joinpath(f"{name}.toml").read_text("utf-8")
    return tomllib.loads(text)


def builtin_recipe_names() -> list[str]:
    """Names of the recipes shipped with deepzip."""
    files = resources.files("deepzip.recipes").iterdir()
    return sorted(f.name.removesuffix(".toml") for f in files if f.name.endswith(".toml"))


def load_prune_job(path: str | Path, *, model: nn.Module | None = None) -> PruneJob:
    """Load a pruning recipe (``[prune]``, ``[schedule]``, ``[retrain]``) from TOML.

    A pipeline recipe (``[[stages]]``) gives its first prune stage and its train stage. Its
    recipe-wide ``[[overrides]]`` rules apply to the prune stage only where they match a layer
    it prunes, which needs the model: with ``model``, the job gets exactly the rules a run of
    the recipe prunes with (``deepzip.pipeline.recipe_prune_job``); without it, every rule is
    merged in, and a rule for a layer the stage excludes then fails when the job prunes.

    Raises:
        ConfigError: naming the file: a recipe that is not valid; with ``model``, a glob of
            the prune stage that matches no layer of it.
    """
    if model is not None:
        from torch import nn as torch_nn  # config needs no torch otherwise

        if not isinstance(model, torch_nn.Module):
            raise ConfigError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    data = load_toml(path)  # its errors name the file already
    try:
        if model is not None and "stages" in data:
            # the pipeline imports config, not the other way round: import it here
            from deepzip.pipeline.registry import recipe_prune_job

            return recipe_prune_job(model, Recipe.from_dict(data))
        return PruneJob.from_dict(data)
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from exc
