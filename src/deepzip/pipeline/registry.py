"""What a stage runner is given and returns, the registry of runners by stage type, and the
checks of a recipe against a model and the runners.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from deepzip.config import (
    LayerRule,
    PruneJob,
    Recipe,
    RetrainConfig,
    Stage,
    stage_kinds,
)
from deepzip.config.stages import LayerScope, layer_scope
from deepzip.errors import ConfigError
from deepzip.format.dzip_report import SaveReport
from deepzip.pipeline.state import StageRecord
from deepzip.targets import Target, listing, select_targets

__all__ = [
    "Batches",
    "EvalFn",
    "PipelineEvent",
    "RecipeCheck",
    "StageCheck",
    "StageContext",
    "StageResult",
    "StageRunner",
    "TrainFn",
    "TrainRequest",
    "applicable_rules",
    "check_recipe",
    "no_validation_error",
    "recipe_prune_job",
    "register_stage_runner",
    "registered_runner",
    "stage_config",
    "stage_seed",
    "validation_stage",
]

TrainFn = Callable[[nn.Module, "TrainRequest"], None]
"""``train_fn(model, request)``: train ``model`` in place as the request says."""

EvalFn = Callable[[nn.Module], float]
"""``eval_fn(model) -> accuracy`` in [0, 1]."""

Batches = Iterable[tuple[torch.Tensor, torch.Tensor]]


def stage_seed(recipe_seed: int, index: int) -> int:
    """The seed of stage ``index`` (from 0): a fixed function of the recipe's seed."""
    return (recipe_seed * 1_000_003 + 7_919 * (index + 1)) % 2**31


@dataclass(frozen=True)
class TrainRequest:
    """What a stage asks ``train_fn`` to do.

    Attributes:
        stage: the stage type asking (``"train"``, ``"prune"``, ``"retrain"``, ``"finetune"``,
            ``"slq"``, ``"mlq"``, ``"inq"``, ``"weightless"``...).
        stage_index: the stage's position in the recipe, from 0.
        step: the step of a prune or SLQ/MLQ/INQ stage, else ``None``.
        epochs: epochs to train (always >= 1).
        lr: the learning rate to use (already scaled by ``lr_scale``).
        optimizer: ``"sgd"`` (momentum 0.9), ``"adam"`` or ``"adamw"``.
        weight_decay: weight decay.
        batch_size: mini-batch size.
        schedule: ``"cosine"`` (set once per epoch, see
            :class:`deepzip.config.RetrainConfig`) or ``"constant"``.
        seed: seed for data order and any randomness.
        distill: weight of knowledge distillation from ``teacher`` (0: off).
        temperature: distillation temperature.
        teacher: the model before compression (the run's dense reference), when distilling.
    """

    stage: str
    stage_index: int
    step: int | None
    epochs: int
    lr: float
    optimizer: str
    weight_decay: float
    batch_size: int
    schedule: str
    seed: int
    distill: float = 0.0
    temperature: float = 4.0
    teacher: nn.Module | None = None


@dataclass(frozen=True)
class PipelineEvent:
    """Progress of a run, for the caller's display (the library never prints).

    Attributes:
        kind: ``"start"``, ``"resume"``, ``"stage_start"``, ``"step"`` (a step of a prune,
            SLQ, MLQ or INQ stage, or a layer a Weightless stage encoded), ``"stage_end"`` or
            ``"done"``.
        message: one human-readable line.
        index: the stage index, when the event concerns a stage.
        record: the finished stage (``"stage_end"``).
    """

    kind: str
    message: str
    index: int | None = None
    record: StageRecord | None = None


@dataclass
class StageContext:
    """Everything a stage runner may use.

    Attributes:
        model: the model, modified in place.
        recipe: the whole recipe.
        stage: this stage.
        index: its position, from 0.
        config: its configuration with the recipe's per-layer overrides that apply to it
            merged in (:func:`stage_config`: the rules that match a layer the stage acts on).
        seed: its seed (already applied with ``seed_everything`` before the runner starts).
        run_dir: the run directory (a runner may write files there, named after its index).
        device: where to run (``None``: where the model is).
        train_fn: trains the model (``None`` when the caller gave no training).
        eval_fn: validation accuracy (``None`` when not given).
        test_fn: test accuracy, for reporting only (``None`` when not given).
        batches: ``(inputs, targets)`` batches for statistics such as the Fisher importance.
        teacher: returns the run's dense reference model (for distillation).
        emit: sends a progress event.
        write_dzip: writes the model as a ``.dzip`` file with the recipe's encode options
            and metadata (deterministic bytes); returns the container's report.
    """

    model: nn.Module
    recipe: Recipe
    stage: Stage
    index: int
    config: Any
    seed: int
    run_dir: Path
    device: torch.device | None
    train_fn: TrainFn | None
    eval_fn: EvalFn | None
    test_fn: EvalFn | None
    batches: Callable[[], Batches] | None
    teacher: Callable[[], nn.Module]
    emit: Callable[[PipelineEvent], None]
    write_dzip: Callable[[Path], SaveReport]

    @property
    def label(self) -> str:
        """``"stage 2 (quantize)"``."""
        return self.stage.label(self.index)

    def train(self, request: TrainRequest) -> None:
        """Call ``train_fn`` (``ConfigError`` naming the stage when there is none)."""
        if self.train_fn is None:
            raise ConfigError(f"{self.label} trains the model: pass train_fn= or data=")
        self.train_fn(self.model, request)

    def request(
        self,
        config: RetrainConfig,
        epochs: int,
        *,
        step: int | None = None,
        lr: float | None = None,
    ) -> TrainRequest:
        """A :class:`TrainRequest` from a retraining config (teacher attached if distilling).

        ``lr``: the learning rate to train at instead of ``config.retrain_lr``.
        """
        return TrainRequest(
            stage=self.stage.kind,
            stage_index=self.index,
            step=step,
            epochs=epochs,
            lr=config.retrain_lr if lr is None else lr,
            optimizer=config.optimizer,
            weight_decay=config.weight_decay,
            batch_size=config.batch_size,
            schedule=config.schedule,
            seed=(self.seed + (step or 0)) % 2**31,
            distill=config.distill,
            temperature=config.temperature,
            teacher=self.teacher() if config.distill else None,
        )


@dataclass(frozen=True)
class StageResult:
    """What a runner returns.

    Attributes:
        details: JSON-ready details for the state file and the report.
        save_report: the report of a ``.dzip`` file the stage wrote with
            :meth:`StageContext.write_dzip` (then the run measures the size from it).
    """

    details: dict[str, Any] = field(default_factory=dict)
    save_report: SaveReport | None = None


StageRunner = Callable[[StageContext, Any], StageResult]
StageCheck = Callable[[nn.Module, Any, str], None]
RecipeCheck = Callable[[nn.Module, Recipe, int], None]
RecipeNeedsValidation = Callable[[nn.Module, Recipe, int], bool]


@dataclass(frozen=True)
class _Runner:
    run: StageRunner
    check: StageCheck | None
    needs_training: Callable[[Any], bool]
    needs_validation: Callable[[Any], bool]
    validation_hint: str
    recipe_check: RecipeCheck | None = None
    needs_batches: Callable[[Any], str | None] = lambda config: None
    recipe_needs_validation: RecipeNeedsValidation | None = None


_RUNNERS: dict[str, _Runner] = {}


def register_stage_runner(
    kind: str,
    run: StageRunner,
    *,
    check: StageCheck | None = None,
    needs_training: Callable[[Any], bool] = lambda config: False,
    needs_validation: Callable[[Any], bool] = lambda config: False,
    validation_hint: str = "",
    recipe_check: RecipeCheck | None = None,
    needs_batches: Callable[[Any], str | None] = lambda config: None,
    recipe_needs_validation: RecipeNeedsValidation | None = None,
    overwrite: bool = False,
) -> None:
    """Register how a stage type runs (its recipe side: ``deepzip.config.register_stage_kind``).

    Args:
        kind: the stage type's name.
        run: ``run(context, config) -> StageResult``; modifies ``context.model`` in place.
        check: ``check(model, config, label)`` validates the stage against the model before
            the run starts (globs that match no layer...), raising ``ConfigError``.
        needs_training: whether a config of this stage calls ``train_fn``.
        needs_validation: whether a config of this stage may need ``eval_fn`` (validation
            accuracy), when the model is not at hand.
        validation_hint: how a config of this stage can do without it (``"set cell_bits"``),
            added to the error when it is missing; ``""`` when it cannot.
        recipe_check: ``recipe_check(model, recipe, index)``, for a check that needs the
            stages before this one (what an earlier stage will have done to a layer); runs
            after ``check``, before the run starts, raising ``ConfigError``.
        needs_batches: what in a config of this stage needs ``batches`` (training batches
            for statistics), such as ``"importance = 'fisher'"``, or ``None`` when nothing
            does; checked before the run starts.
        recipe_needs_validation: ``recipe_needs_validation(model, recipe, index)``: with
            the model at hand, whether stage ``index`` needs ``eval_fn`` (a Weightless
            stage whose every layer has a fixed cell width does not); by default
            ``needs_validation`` of its configuration.
        overwrite: replace an existing runner.

    Raises:
        ConfigError: the stage type is not registered in deepzip.config, or already has a
            runner.
    """
    if kind not in stage_kinds():
        raise ConfigError(f"stage type {kind!r} is not registered (deepzip.config)")
    if kind in _RUNNERS and not overwrite:
        raise ConfigError(f"stage type {kind!r} already has a runner")
    _RUNNERS[kind] = _Runner(
        run,
        check,
        needs_training,
        needs_validation,
        validation_hint,
        recipe_check,
        needs_batches,
        recipe_needs_validation,
    )


def registered_runner(kind: str) -> _Runner:
    """The runner of stage type ``kind`` (:func:`check_recipe` has checked that there is one)."""
    return _RUNNERS[kind]


def no_validation_error(label: str, hint: str = "") -> ConfigError:
    """The error for a stage that needs validation accuracy and has none."""
    return ConfigError(
        f"{label} needs validation accuracy: pass eval_fn=, or data= with a non-empty "
        f"validation split{f'; or {hint}' if hint else ''}"
    )


def validation_stage(recipe: Recipe, model: nn.Module | None = None) -> tuple[str, str] | None:
    """The first stage that needs validation accuracy (``eval_fn``), or ``None``.

    A sensitivity stage does, and so does a Weightless stage that chooses a cell width: one
    whose ``cell_bits`` is not set, unless (known only with ``model``) every layer it
    encodes has a fixed width from its overrides. Stage types without a runner are left out
    (:func:`check_recipe` reports them).

    Args:
        recipe: the recipe.
        model: the model it will run on (as it starts); without it, a stage that may need
            validation accuracy is taken to need it.

    Returns:
        ``(label, hint)``: the stage's label and how it could do without validation data
        (``"set cell_bits"``; ``""`` when it cannot).
    """
    for i, stage in enumerate(recipe.stages):
        runner = _RUNNERS.get(stage.kind)
        if runner is None:
            continue
        if model is not None and runner.recipe_needs_validation is not None:
            needs = runner.recipe_needs_validation(model, recipe, i)
        else:
            config = recipe.effective(stage) if model is None else stage_config(model, recipe, i)
            needs = runner.needs_validation(config)
        if needs:
            return stage.label(i), runner.validation_hint
    return None


def _stage_targets(model: nn.Module, scope: LayerScope) -> tuple[Target, ...]:
    """The layers a stage with ``scope`` acts on."""
    return select_targets(model, include=scope.include, exclude=scope.exclude).targets


def applicable_rules(model: nn.Module, recipe: Recipe, index: int) -> tuple[LayerRule, ...]:
    """The recipe-wide rules that apply to stage ``index``: those that match a layer it acts
    on (every one for a stage that selects no layers).

    Raises:
        ConfigError: a glob of the stage that matches no layer.
    """
    scope = layer_scope(recipe.stages[index].config)
    if scope is None or not recipe.overrides:
        return recipe.overrides
    return _rules_matching(recipe, _stage_targets(model, scope))


def _rules_matching(recipe: Recipe, targets: tuple[Target, ...]) -> tuple[LayerRule, ...]:
    """The recipe-wide rules that match one of ``targets`` (a stage's layers), in order."""
    return tuple(r for r in recipe.overrides if any(t.matches(r.pattern) for t in targets))


def recipe_prune_job(model: nn.Module, recipe: Recipe) -> PruneJob:
    """:meth:`Recipe.prune_job` for ``model``: the first prune stage gets only the recipe-wide
    rules that match a layer it prunes (a rule for a layer it excludes is not its own).

    Raises:
        ConfigError: the recipe has no prune stage; a glob of it matches no layer.
    """
    return recipe.prune_job(overrides=applicable_rules(model, recipe, recipe.prune_index()))


def stage_config(model: nn.Module, recipe: Recipe, index: int) -> Any:
    """Stage ``index``'s configuration with the recipe-wide overrides that apply to it merged
    in: those that match a layer the stage acts on (:meth:`Recipe.effective`). A stage that
    leaves a layer out (``exclude``, or an ``include`` that does not name it) does not get
    the rules of that layer; a rule that no stage uses is refused by :func:`check_recipe`.

    Raises:
        ConfigError: a rule that the stage cannot take (see :meth:`Recipe.effective`), or a
            glob of the stage that matches no layer.
    """
    return recipe.effective(recipe.stages[index], overrides=applicable_rules(model, recipe, index))


def _left_out(pattern: str, scope: LayerScope, targets: list[Target]) -> str:
    """Why the layers ``pattern`` matches are not among a stage's: its globs, named."""
    excluded = [
        g for g in scope.exclude if any(t.matches(g) and t.matches(pattern) for t in targets)
    ]
    if excluded:
        return f"exclude = {excluded!r}"
    return f"include = {list(scope.include)!r}"


def check_recipe(model: nn.Module, recipe: Recipe) -> None:
    """Validate a recipe against a model before anything runs.

    Every glob (recipe overrides, each stage's include/exclude/overrides) must match a layer,
    a stage's own override must name a layer the stage acts on (not one it leaves out), every
    setting of a recipe-wide override must be used by a stage that acts on a layer it
    matches, and every stage type must have a runner.

    Raises:
        ConfigError: naming the stage or override and the glob.
    """
    selection = select_targets(model)
    scopes = [layer_scope(s.config) for s in recipe.stages]
    stage_targets: list[tuple[Target, ...] | None] = [None] * len(recipe.stages)
    for i, stage in enumerate(recipe.stages):
        runner = _RUNNERS.get(stage.kind)
        if runner is None:
            raise ConfigError(
                f"{stage.label(i)}: stage type {stage.kind!r} has no runner; import the module "
                "that provides it (deepzip.pipeline.register_stage_runner)"
            )
    # every layer some stage may act on: the compressible ones, and those an include names
    known = {t.name: t for t in selection.targets}
    for i, scope in enumerate(scopes):
        if scope is None:
            continue
        label = recipe.stages[i].label(i)
        try:
            stage_targets[i] = _stage_targets(model, scope)
            for t in select_targets(model, include=scope.include).targets:
                known.setdefault(t.name, t)
        except ConfigError as exc:
            msg = str(exc)
            raise ConfigError(msg if msg.startswith(label) else f"{label}: {msg}") from exc
    layers = list(known.values())
    names = listing([n for t in layers for n in (t.name, *t.aliases)]) or "none"
    for i, rule in enumerate(recipe.overrides):
        if not any(t.matches(rule.pattern) for t in layers):
            raise ConfigError(
                f"overrides[{i}]: pattern {rule.pattern!r} matches no compressible layer "
                f"(layers: {names})"
            )
    for i, stage in enumerate(recipe.stages):
        runner = _RUNNERS[stage.kind]
        label = stage.label(i)
        scope, targets = scopes[i], stage_targets[i]
        try:
            if scope is not None and targets is not None:
                for pattern in scope.own:
                    if any(t.matches(pattern) for t in targets):
                        continue
                    named = [t.name for t in layers if t.matches(pattern)]
                    if named:  # (one that matches nothing at all is the stage check's)
                        raise ConfigError(
                            f"override pattern {pattern!r} names {listing(named)}, which this "
                            f"stage leaves out ({_left_out(pattern, scope, layers)}); remove "
                            "the override or select the layer here"
                        )
            if runner.check is not None:
                # stage_config's rules, from the layers selected above
                rules = None if targets is None else _rules_matching(recipe, targets)
                runner.check(model, recipe.effective(stage, overrides=rules), label)
            if runner.recipe_check is not None:
                runner.recipe_check(model, recipe, i)
        except ConfigError as exc:
            msg = str(exc)
            raise ConfigError(msg if msg.startswith(label) else f"{label}: {msg}") from exc
    _check_rules_used(recipe, scopes, stage_targets, layers)


def _check_rules_used(
    recipe: Recipe,
    scopes: list[LayerScope | None],
    stage_targets: list[tuple[Target, ...] | None],
    layers: list[Target],
) -> None:
    """Each setting of a recipe-wide override must be taken by a stage that acts on a layer
    the override matches; one that none uses would be ignored (``Recipe`` already refuses a
    setting that no stage of the recipe takes at all)."""
    for i, rule in enumerate(recipe.overrides):
        for key, value in rule.settings().items():
            if key == "index_bits":
                continue  # the encode stage writes every layer the rule matches
            takers = [j for j, sc in enumerate(scopes) if sc is not None and key in sc.takes]
            if any(any(t.matches(rule.pattern) for t in stage_targets[j] or ()) for j in takers):
                continue
            matched = listing([t.name for t in layers if t.matches(rule.pattern)])
            stages = ", ".join(recipe.stages[j].label(j) for j in takers) or "none"
            raise ConfigError(
                f"overrides[{i}] ({rule.pattern!r}): {key} = {value!r} is used by no stage: "
                f"the stages that take {key} ({stages}) leave out {matched}"
            )
