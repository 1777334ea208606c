"""The built-in stage runners: train, sensitivity, prune, retrain, quantize, finetune, encode,
SLQ/MLQ/INQ and Weightless (registered on import).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from torch import nn

from deepzip.config import (
    BitsOverride,
    EncodeStage,
    FinetuneStage,
    INQStage,
    MLQConfig,
    MLQStage,
    PruneStage,
    QuantizeStage,
    Recipe,
    RetrainStage,
    SensitivityStage,
    SLQConfig,
    SLQStage,
    TrainStage,
    WeightlessStage,
)
from deepzip.errors import ConfigError
from deepzip.format.api import load_model
from deepzip.pipeline.registry import (
    PipelineEvent,
    StageContext,
    StageResult,
    TrainRequest,
    no_validation_error,
    register_stage_runner,
    stage_config,
)
from deepzip.pipeline.state import DZIP_FILE, independent_copy
from deepzip.prune import (
    StepRecord,
    iterative_prune,
    layer_targets,
    sensitivity_analysis,
)
from deepzip.quantize import (
    bits_to_k,
    fisher_diagonal,
    get_shared,
    layer_bits,
    quantize_,
    strip_,
)
from deepzip.quantize.api import current_mask
from deepzip.quantize.incremental import IncrementalStep, inq_, mlq_, slq_, step_count
from deepzip.quantize.shared import attach_shared
from deepzip.quantize.weightless import get_weightless
from deepzip.targets import Target, select_targets
from deepzip.weightless import WeightlessLayer, cell_bits_rule, check_cell_bits, weightless_

__all__: list[str] = []


def _run_train(ctx: StageContext, config: TrainStage) -> StageResult:
    t = config.train
    if t.epochs:
        ctx.train(
            TrainRequest(
                stage="train",
                stage_index=ctx.index,
                step=None,
                epochs=t.epochs,
                lr=t.lr,
                optimizer=t.optimizer,
                weight_decay=t.weight_decay,
                batch_size=t.batch_size,
                schedule=t.schedule,
                seed=ctx.seed,
            )
        )
    return StageResult({"epochs": t.epochs})


def _check_sensitivity(model: nn.Module, config: SensitivityStage, label: str) -> None:
    select_targets(model, include=config.include, exclude=config.exclude)


def _run_sensitivity(ctx: StageContext, config: SensitivityStage) -> StageResult:
    if ctx.eval_fn is None:
        raise no_validation_error(ctx.label)
    result = sensitivity_analysis(
        ctx.model,
        ctx.eval_fn,
        sparsities=config.sparsities,
        include=config.include,
        exclude=config.exclude,
    )
    name = f"sensitivity-{ctx.index + 1:02d}.json"
    result.save_json(ctx.run_dir / name)
    return StageResult(
        {
            "file": name,
            "baseline": result.baseline,
            "suggested": result.suggest(config.max_drop / 100),
            "max_drop_points": config.max_drop,
        }
    )


def _check_prune(model: nn.Module, config: PruneStage, label: str) -> None:
    layer_targets(model, config.prune)


def _run_prune(ctx: StageContext, config: PruneStage) -> StageResult:
    fractions = config.schedule.fractions()
    retrain_cfg = config.retrain

    def retrain(model: nn.Module, step: int) -> None:
        last = step == len(fractions) - 1
        epochs = retrain_cfg.epochs + (retrain_cfg.final_epochs if last else 0)
        if epochs:
            ctx.train(ctx.request(retrain_cfg, epochs, step=step))

    def on_step(record: StepRecord) -> None:
        acc = record.accuracy_after_retrain
        suffix = f", validation {100 * acc:.2f}%" if acc is not None else ""
        ctx.emit(
            PipelineEvent(
                "step",
                f"{ctx.label} step {record.step + 1}/{len(fractions)}: kept "
                f"{100 * record.kept_fraction:.2f}%{suffix}",
                ctx.index,
            )
        )

    report, steps = iterative_prune(
        ctx.model,
        config.prune,
        config.schedule,
        retrain,
        evaluate=ctx.eval_fn,
        scale_dropout=retrain_cfg.scale_dropout,
        on_step=on_step,
    )
    return StageResult({"report": report.to_dict(), "steps": [s.to_dict() for s in steps]})


def _prune_needs_training(config: PruneStage) -> bool:
    return bool(config.retrain.epochs or config.retrain.final_epochs)


def _run_retrain(ctx: StageContext, config: RetrainStage) -> StageResult:
    if config.retrain.epochs:
        ctx.train(ctx.request(config.retrain, config.retrain.epochs))
    return StageResult({"epochs": config.retrain.epochs})


def _check_quantize(model: nn.Module, config: QuantizeStage, label: str) -> None:
    q = config.quantize
    selection = select_targets(model, include=q.include, exclude=q.exclude)
    selection.check_overrides((o.pattern for o in q.overrides), "quantizable layer")


def _run_quantize(ctx: StageContext, config: QuantizeStage) -> StageResult:
    q = config.quantize
    importance = None
    if q.importance == "fisher":
        if ctx.batches is None:
            raise ConfigError(
                f"{ctx.label}: importance = 'fisher' needs training batches: pass batches= or data="
            )
        importance = fisher_diagonal(
            ctx.model,
            ctx.batches(),
            max_batches=config.fisher_batches,
            include=q.include,
            exclude=q.exclude,
        )
    report = quantize_(ctx.model, q, importance=importance)
    return StageResult({"report": report.to_dict()})


def _run_finetune(ctx: StageContext, config: FinetuneStage) -> StageResult:
    if config.finetune.epochs:
        ctx.train(ctx.request(config.finetune, config.finetune.epochs))
    return StageResult({"epochs": config.finetune.epochs})


def _run_encode(ctx: StageContext, config: EncodeStage) -> StageResult:
    report = ctx.write_dzip(ctx.run_dir / DZIP_FILE)
    # the path relative to the run directory, which may move (a committed report names no
    # machine's directories)
    details: dict[str, Any] = {"file": DZIP_FILE, "save": {**report.to_dict(), "path": DZIP_FILE}}
    # Decode the file into a fresh copy of the model: the accuracy that counts is the file's.
    decoded = independent_copy(ctx.model)
    strip_(decoded)
    load_model(decoded, ctx.run_dir / DZIP_FILE, strict=True)
    if ctx.eval_fn is not None:
        details["decoded_val_acc"] = ctx.eval_fn(decoded)
    if ctx.test_fn is not None:
        details["decoded_test_acc"] = ctx.test_fn(decoded)
    return StageResult(details, save_report=report)


_IncrementalStage = SLQStage | MLQStage | INQStage
_INCREMENTAL = (SLQStage, MLQStage, INQStage)


def _check_incremental(model: nn.Module, config: _IncrementalStage, label: str) -> None:
    step_count(model, config.quantize)  # selection, overrides and layer state, as the verb


def _run_incremental(ctx: StageContext, config: _IncrementalStage) -> StageResult:
    q, r = config.quantize, config.retrain
    n = step_count(ctx.model, q)

    def retrain(model: nn.Module, step: int) -> None:
        last = step == n - 1
        epochs = (0 if last and isinstance(config, INQStage) else r.epochs) + (
            r.final_epochs if last else 0
        )
        if epochs:
            ctx.train(ctx.request(r, epochs, step=step))

    def on_step(record: IncrementalStep) -> None:
        acc = record.acc_retrained
        suffix = f", validation {100 * acc:.2f}%" if acc is not None else ""
        ctx.emit(
            PipelineEvent(
                "step",
                f"{ctx.label} step {record.index + 1}/{n}: "
                f"{100 * record.frozen_fraction:.1f}% of the weights frozen{suffix}",
                ctx.index,
            )
        )

    if isinstance(q, SLQConfig):
        report, steps = slq_(ctx.model, q, retrain, evaluate=ctx.eval_fn, on_step=on_step)
    elif isinstance(q, MLQConfig):
        report, steps = mlq_(ctx.model, q, retrain, evaluate=ctx.eval_fn, on_step=on_step)
    else:
        report, steps = inq_(ctx.model, q, retrain, evaluate=ctx.eval_fn, on_step=on_step)
    # End as a stage checkpoint reloads: plain SharedWeights (a ternary layer's tied codebook
    # untied), whose codebooks train unless the stage left them frozen (INQ's powers of two,
    # SLQ/MLQ with train_codebook = false): later stages must not move those.
    for layer in report.layers:
        owner, attr = layer.name.rsplit(".", 1) if "." in layer.name else ("", layer.name)
        module = ctx.model.get_submodule(owner)
        shared = get_shared(module, attr)
        if shared is not None:
            trains = shared.codebook.requires_grad
            plain = attach_shared(module, attr, shared.export(), grad=shared.grad)
            plain.codebook.requires_grad_(trains)
    return StageResult({"report": report.to_dict(), "steps": [s.to_dict() for s in steps]})


def _quantized_by(
    target: Target,
    config: QuantizeStage | _IncrementalStage | WeightlessStage,
    selected: frozenset[str],
    state: str | None,
) -> str | None:
    """What a quantize-role stage (which selects the layers named ``selected``) leaves
    ``target`` as, from ``state`` before it (``None``: float, ``"shared"``: clustered,
    ``"weightless"``: encoded with Weightless)."""
    if state == "weightless":  # every quantizer skips (or refuses) an encoded layer
        return state
    if isinstance(config, WeightlessStage):
        w = config.weightless
        if target.name not in selected:
            return state
        rule = cell_bits_rule(target, w.overrides)
        if (rule is not None and rule.skip) or (
            state is None and layer_bits(target, config.quantize) is None
        ):
            return state
        return "weightless"
    if state is not None:
        return state
    q = config.quantize
    if target.name not in selected:
        return state
    if isinstance(config, QuantizeStage):
        kept = layer_bits(target, config.quantize) is None
    else:  # SLQ, MLQ, INQ
        kept = _last_override_skips(target, q.overrides)
    return state if kept else "shared"


@dataclass(frozen=True)
class _Quantizer:
    """A stage before the one checked that quantizes: its index, its configuration (with the
    recipe's rules that apply to it) and the names of the layers it selects."""

    index: int
    config: QuantizeStage | _IncrementalStage | WeightlessStage
    selected: frozenset[str]


def _quantizers_before(model: nn.Module, recipe: Recipe, index: int) -> list[_Quantizer]:
    """The stages before ``index`` that quantize (what :func:`_state_before` goes through),
    computed once for all the layers a check looks at."""
    out = []
    for j in range(index):
        config = stage_config(model, recipe, j)
        if not isinstance(config, (QuantizeStage, *_INCREMENTAL, WeightlessStage)):
            continue  # not a quantizer (or one this check does not know)
        scope = config.weightless if isinstance(config, WeightlessStage) else config.quantize
        selection = select_targets(model, include=scope.include, exclude=scope.exclude)
        out.append(_Quantizer(j, config, frozenset(selection.names())))
    return out


def _state_before(
    model: nn.Module, quantizers: Sequence[_Quantizer], target: Target
) -> tuple[str | None, int | None, int | None]:
    """What the stages before the checked one (``quantizers``, from
    :func:`_quantizers_before`) leave ``target`` as (see :func:`_quantized_by`).

    Returns:
        ``(state, by, k)``: the state; the index of the last earlier stage that changed it
        (``None``: the model came so); and the layer's codebook size as far as known before
        it is encoded (``None`` when float, or when levels an incremental stage chooses, or
        the model's own codebook with no earlier stage, decide it: the verbs check those).
        A quantize stage clusters a selected layer again, so its bits set ``k`` (at most
        ``2**bits``).
    """
    state: str | None = None
    k: int | None = None
    shared = get_shared(target.module, target.param_name)
    if get_weightless(target.module, target.param_name) is not None:
        state = "weightless"
    elif shared is not None:
        state, k = "shared", int(shared.codebook.numel())
    by: int | None = None
    for quantizer in quantizers:
        j, config = quantizer.index, quantizer.config
        after = _quantized_by(target, config, quantizer.selected, state)
        if isinstance(config, QuantizeStage) and state != "weightless":
            bits = layer_bits(target, config.quantize)
            if target.name in quantizer.selected and bits is not None:
                k, by = bits_to_k(bits), j  # clustered (again) with these bits
        elif after != state and not isinstance(config, WeightlessStage):
            k = None  # incremental levels: the verb checks the layer itself
        if after != state:
            state, by = after, j
    return state, by, k


def _encoded_named(
    model: nn.Module,
    recipe: Recipe,
    index: int,
    targets: Sequence[Target],
    patterns: tuple[str, ...],
) -> None:
    """A layer an earlier stage encodes with Weightless (or the model came so) that ``patterns``
    (the stage's ``include`` globs and override patterns) name would make the quantizer raise
    when the stage starts; refuse it before the run starts."""
    quantizers = _quantizers_before(model, recipe, index)
    for t in targets:
        if not any(t.matches(p) for p in patterns):
            continue
        state, by, _ = _state_before(model, quantizers, t)
        if state != "weightless":
            continue
        where = "the starting model" if by is None else recipe.stages[by].label(by)
        raise ConfigError(
            f"{t.name} is encoded with Weightless by {where}: quantizing it again would "
            "drop its Bloomier filter; leave it out of this stage's include and overrides"
        )


def _check_quantize_order(model: nn.Module, recipe: Recipe, index: int) -> None:
    """A quantize stage whose ``include`` or overrides name a layer encoded with Weightless
    (by an earlier stage) is refused before the run starts, as ``quantize_`` refuses it."""
    config = stage_config(model, recipe, index)
    q = config.quantize
    targets = select_targets(model, include=q.include, exclude=q.exclude).targets
    _encoded_named(model, recipe, index, targets, (*q.include, *(o.pattern for o in q.overrides)))


def _check_incremental_order(model: nn.Module, recipe: Recipe, index: int) -> None:
    """A layer an earlier stage quantizes cannot be quantized incrementally again: checked
    before the run starts (the verb refuses it only when the stage starts, after the earlier
    stages have run). A layer encoded with Weightless is refused when an ``include`` glob or
    an override names it, and otherwise skipped, as the verb does."""
    config = stage_config(model, recipe, index)
    q = config.quantize
    patterns = (*q.include, *(o.pattern for o in q.overrides))
    targets = select_targets(model, include=q.include, exclude=q.exclude).targets
    quantizers = _quantizers_before(model, recipe, index)
    for t in targets:
        if _last_override_skips(t, q.overrides):
            continue
        state, by, _ = _state_before(model, quantizers, t)
        if by is None or state != "shared":
            continue  # as the model is now: the stage's own check covers it
        earlier = recipe.stages[by].label(by)
        raise ConfigError(
            f"{t.name} is quantized by {earlier} before it; exclude it here or leave it "
            "in float there"
        )
    _encoded_named(model, recipe, index, targets, patterns)


def _last_override_skips(target: Target, overrides: tuple[BitsOverride, ...]) -> bool:
    found: BitsOverride | None = None
    for o in overrides:
        if target.matches(o.pattern):
            found = o
    return found is not None and found.skip


def _incremental_needs_training(config: _IncrementalStage) -> bool:
    return bool(config.retrain.epochs or config.retrain.final_epochs)


register_stage_runner("train", _run_train, needs_training=lambda c: bool(c.train.epochs))
register_stage_runner(
    "sensitivity",
    _run_sensitivity,
    check=_check_sensitivity,
    needs_validation=lambda config: True,
)
register_stage_runner("prune", _run_prune, check=_check_prune, needs_training=_prune_needs_training)
register_stage_runner("retrain", _run_retrain, needs_training=lambda c: bool(c.retrain.epochs))
register_stage_runner(
    "quantize",
    _run_quantize,
    check=_check_quantize,
    recipe_check=_check_quantize_order,
    needs_batches=lambda c: "importance = 'fisher'" if c.quantize.importance == "fisher" else None,
)
register_stage_runner("finetune", _run_finetune, needs_training=lambda c: bool(c.finetune.epochs))
register_stage_runner("encode", _run_encode)


def _check_weightless(model: nn.Module, config: WeightlessStage, label: str) -> None:
    w = config.weightless
    selection = select_targets(model, include=w.include, exclude=w.exclude)
    selection.check_overrides((o.pattern for o in w.overrides), "layer Weightless encodes")
    # the clustering's overrides too: weightless_ applies each to the layers it matches
    # and would ignore one that matches none
    patterns = (o.pattern for o in config.quantize.overrides)
    selection.check_overrides(patterns, "layer Weightless encodes (quantize.overrides)")


def _check_weightless_widths(model: nn.Module, recipe: Recipe, index: int) -> None:
    """A fixed cell width must leave a code for zero: ``2**t > K`` for the K clusters a layer
    can have, checked before the run starts (``weightless_`` checks it only when the stage
    starts, after the earlier stages have run).

    A layer's K is at most ``2**bits`` of the last earlier quantize stage that clusters it,
    else the size of the codebook the model came with, else (a float layer) at most
    ``2**bits`` of the Weightless stage's own ``quantize``. A layer an earlier Weightless
    stage encodes is skipped (as the stage skips it), and one an earlier incremental stage
    (SLQ, MLQ, INQ) quantizes is left to ``weightless_``'s own check.
    """
    config = stage_config(model, recipe, index)
    assert isinstance(config, WeightlessStage)
    w = config.weightless
    quantizers = _quantizers_before(model, recipe, index)
    for t in select_targets(model, include=w.include, exclude=w.exclude).targets:
        rule = cell_bits_rule(t, w.overrides)
        if rule is not None and rule.skip:
            continue
        fixed = rule.cell_bits if rule is not None else w.cell_bits
        if fixed is None:
            continue
        state, _, k = _state_before(model, quantizers, t)
        if state == "weightless":
            continue  # encoded already: this stage skips it
        if state is None and (bits := layer_bits(t, config.quantize)) is not None:
            k = bits_to_k(bits)  # clustered by this stage
        if k is not None:
            check_cell_bits(t.name, fixed, k)


_CELL_BITS_HINT = "set cell_bits"  # a fixed cell width needs no validation accuracy


def _chooses_width(
    model: nn.Module, config: WeightlessStage, state_of: Callable[[Target], str | None]
) -> bool:
    """Whether the stage chooses some layer's cell width (with validation accuracy): one it
    encodes has no fixed width, neither ``cell_bits`` nor an override's. ``state_of(t)``
    says what ``t`` is when the stage starts (see :func:`_quantized_by`)."""
    w = config.weightless
    if w.cell_bits is not None:
        return False
    for t in select_targets(model, include=w.include, exclude=w.exclude).targets:
        if cell_bits_rule(t, w.overrides) is not None:
            continue  # a fixed width, or skipped
        state = state_of(t)
        if state == "weightless" or (state is None and layer_bits(t, config.quantize) is None):
            continue  # encoded already, or kept in float: the stage skips it
        return True
    return False


def _weightless_needs_validation(model: nn.Module, recipe: Recipe, index: int) -> bool:
    """Validation accuracy is needed when a layer's cell width is chosen automatically."""
    config = stage_config(model, recipe, index)
    assert isinstance(config, WeightlessStage)
    quantizers = _quantizers_before(model, recipe, index)
    return _chooses_width(model, config, lambda t: _state_before(model, quantizers, t)[0])


def _state_now(target: Target) -> str | None:
    """What ``target`` is now: ``"weightless"``, ``"shared"``, or ``None`` (float); a layer
    with no surviving weight counts as encoded (``weightless_`` skips it)."""
    if get_weightless(target.module, target.param_name) is not None:
        return "weightless"
    if not bool(current_mask(target).any()):
        return "weightless"
    return "shared" if get_shared(target.module, target.param_name) is not None else None


def _run_weightless(ctx: StageContext, config: WeightlessStage) -> StageResult:
    w, r = config.weightless, config.retrain
    auto = w.cell_bits is None
    if auto and ctx.eval_fn is None and _chooses_width(ctx.model, config, _state_now):
        raise no_validation_error(ctx.label, _CELL_BITS_HINT)

    def retrain(model: nn.Module, layer: str) -> None:
        if r.epochs and any(p.requires_grad for p in model.parameters()):
            ctx.train(ctx.request(r, r.epochs))

    def on_layer(layer: WeightlessLayer) -> None:
        acc = layer.accuracy
        suffix = f", validation {100 * acc:.2f}%" if acc is not None else ""
        ctx.emit(
            PipelineEvent(
                "step",
                f"{ctx.label} {layer.name}: t = {layer.cell_bits}, {layer.encoded_bytes:,} B, "
                f"false positives {100 * layer.false_positive_rate:.2f}%{suffix}",
                ctx.index,
            )
        )

    report = weightless_(
        ctx.model,
        w,
        retrain=retrain,
        evaluate=ctx.eval_fn if auto else None,
        quantize=config.quantize,
        on_layer=on_layer,
    )
    return StageResult({"report": report.to_dict()})


register_stage_runner(
    "weightless",
    _run_weightless,
    check=_check_weightless,
    recipe_check=_check_weightless_widths,
    needs_training=lambda c: bool(c.retrain.epochs),
    needs_validation=lambda c: c.weightless.cell_bits is None,
    validation_hint=_CELL_BITS_HINT,
    recipe_needs_validation=_weightless_needs_validation,
)
for _name in ("slq", "mlq", "inq"):
    register_stage_runner(
        _name,
        _run_incremental,
        check=_check_incremental,
        recipe_check=_check_incremental_order,
        needs_training=_incremental_needs_training,
    )
