"""Running compression stages on a model and a data set, and whole recipes with resume.

This module joins the layers below it: a zoo or user model, a data set split into
train/validation/test, the training harness, the pruning and quantization stages and the
``.dzip`` container. Validation accuracy (never the test set) is what steps are judged by;
test accuracy is reported.

:func:`run_recipe` runs a :class:`~deepzip.config.Recipe` stage by stage with a checkpoint
after each one, so an interrupted run resumes where it stopped; :func:`register_stage_runner`
adds stage types.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn.utils import parametrize

from deepzip._atomic import atomic_write_text
from deepzip._provenance import deepzip_identity
from deepzip.config import (
    EncodeStage,
    FinetuneStage,
    INQStage,
    MLQConfig,
    MLQStage,
    PruneJob,
    PruneStage,
    QuantizeConfig,
    QuantizeStage,
    Recipe,
    RetrainConfig,
    RetrainStage,
    ScheduleConfig,
    SensitivityStage,
    SLQConfig,
    SLQStage,
    Stage,
    TrainConfig,
    TrainStage,
    WeightlessStage,
    stage_kinds,
)
from deepzip.datasets import DataSplits, ImageDataset, TensorLoader
from deepzip.errors import CheckpointError, ConfigError
from deepzip.format.api import IndexBits, load_model
from deepzip.format.api import save as save_dzip
from deepzip.format.checkpoint import (
    apply_checkpoint,
    plain_state_dict,
    read_checkpoint,
    save_checkpoint,
)
from deepzip.format.dzip_report import SaveReport
from deepzip.prune import (
    PruneReport,
    StepRecord,
    iterative_prune,
    layer_targets,
    sensitivity_analysis,
)
from deepzip.prune.schedule import _ORIGINAL_P
from deepzip.quantize import QuantizeReport, fisher_diagonal, get_shared, quantize_, strip_
from deepzip.quantize.incremental import IncrementalStep, inq_, mlq_, slq_, step_count
from deepzip.quantize.shared import attach_shared
from deepzip.targets import matches, select_targets
from deepzip.train import (
    Callback,
    DistillationLoss,
    FitHistory,
    evaluate,
    fit,
    make_optimizer,
    pack_teacher_targets,
    predict_logits,
    resolve_device,
    seed_everything,
)
from deepzip.weightless import WeightlessLayer, weightless_

__all__ = [
    "DZIP_FILE",
    "INITIAL_CHECKPOINT",
    "STATE_FILE",
    "EvalFn",
    "Loaders",
    "PipelineEvent",
    "PruneOutcome",
    "QuantizeOutcome",
    "RecipeChangedError",
    "RunResult",
    "StageContext",
    "StageRecord",
    "StageResult",
    "StageRunner",
    "TrainFn",
    "TrainRequest",
    "accuracy_fn",
    "accuracy_reference",
    "check_recipe",
    "data_fingerprint",
    "data_trainer",
    "independent_copy",
    "make_loaders",
    "model_fingerprint",
    "prune_with_retraining",
    "quantize_with_finetuning",
    "quick_recipe",
    "read_run",
    "recipe_hash",
    "register_stage_runner",
    "run_recipe",
    "stage_seed",
    "train_dense",
    "validation_stage",
]


@dataclass(frozen=True)
class Loaders:
    """Batch iterators over the three splits (validation may be ``None``)."""

    train: TensorLoader
    val: TensorLoader | None
    test: TensorLoader


def _loader(ds: ImageDataset, batch_size: int, *, shuffle: bool, seed: int) -> TensorLoader:
    return TensorLoader(ds.images, ds.labels, batch_size, shuffle=shuffle, seed=seed)


def make_loaders(data: DataSplits, batch_size: int, *, seed: int = 0) -> Loaders:
    """Shuffled training batches; fixed-order evaluation batches (size 1000)."""
    return Loaders(
        train=_loader(data.train, batch_size, shuffle=True, seed=seed),
        val=_loader(data.val, 1000, shuffle=False, seed=seed) if len(data.val) else None,
        test=_loader(data.test, 1000, shuffle=False, seed=seed),
    )


def accuracy_fn(
    loader: TensorLoader, device: torch.device | None = None
) -> Callable[[nn.Module], float]:
    """``evaluate(model) -> accuracy`` on one loader, for schedules and sensitivity."""

    def _evaluate(model: nn.Module) -> float:
        return evaluate(model, loader, device=device).accuracy

    return _evaluate


def _scheduler(
    optimizer: torch.optim.Optimizer, kind: str, epochs: int
) -> torch.optim.lr_scheduler.LRScheduler | None:
    if kind == "cosine" and epochs > 0:
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=epochs)
    return None


def train_dense(
    model: nn.Module,
    data: DataSplits,
    config: TrainConfig,
    *,
    device: torch.device | None = None,
    callbacks: Sequence[Callback] = (),
) -> FitHistory:
    """Train ``model`` from its current weights on ``data.train`` (validation each epoch)."""
    seed_everything(config.seed)
    loaders = make_loaders(data, config.batch_size, seed=config.seed)
    optimizer = make_optimizer(
        model.parameters(), config.optimizer, config.lr, weight_decay=config.weight_decay
    )
    return fit(
        model,
        loaders.train,
        optimizer=optimizer,
        epochs=config.epochs,
        device=device,
        scheduler=_scheduler(optimizer, config.schedule, config.epochs),
        callbacks=callbacks,
        eval_loader=loaders.val,
        seed=config.seed,
    )


def _retrain(
    model: nn.Module,
    loaders: Loaders,
    config: RetrainConfig,
    epochs: int,
    *,
    device: torch.device | None,
    callbacks: Sequence[Callback],
    seed: int,
) -> None:
    if epochs == 0:
        return
    loss_fn = DistillationLoss(config.distill, config.temperature) if config.distill else None
    optimizer = make_optimizer(
        [p for p in model.parameters() if p.requires_grad],
        config.optimizer,
        config.retrain_lr,
        weight_decay=config.weight_decay,
    )
    fit(
        model,
        loaders.train,
        optimizer=optimizer,
        epochs=epochs,
        loss_fn=loss_fn,
        device=device,
        scheduler=_scheduler(optimizer, config.schedule, epochs),
        callbacks=callbacks,
        eval_loader=loaders.val,
        seed=seed,
    )


def _with_teacher(
    model: nn.Module,
    data: DataSplits,
    loaders: Loaders,
    batch_size: int,
    seed: int,
    device: torch.device | None,
) -> Loaders:
    """Training batches whose targets carry the current model's logits (the teacher)."""
    plain = TensorLoader(data.train.images, data.train.labels, 1000)
    logits = predict_logits(model, plain, device=device)
    targets = pack_teacher_targets(data.train.labels, logits)
    train = TensorLoader(data.train.images, targets, batch_size, shuffle=True, seed=seed)
    return Loaders(train=train, val=loaders.val, test=loaders.test)


@dataclass(frozen=True)
class PruneOutcome:
    """The result of :func:`prune_with_retraining`."""

    report: PruneReport
    steps: tuple[StepRecord, ...]
    test_acc_before: float
    test_acc_after: float
    val_acc_before: float | None
    val_acc_after: float | None

    def to_dict(self) -> dict[str, object]:
        """JSON-ready form."""
        return {
            "test_acc_before": self.test_acc_before,
            "test_acc_after": self.test_acc_after,
            "val_acc_before": self.val_acc_before,
            "val_acc_after": self.val_acc_after,
            "report": self.report.to_dict(),
            "steps": [s.to_dict() for s in self.steps],
        }


def prune_with_retraining(
    model: nn.Module,
    data: DataSplits,
    job: PruneJob,
    *,
    device: torch.device | None = None,
    callbacks: Sequence[Callback] = (),
    on_step: Callable[[StepRecord], None] | None = None,
    seed: int = 0,
) -> PruneOutcome:
    """Iterative magnitude pruning with retraining at a reduced learning rate.

    After each step of ``job.schedule`` the model is retrained for ``job.retrain.epochs``
    epochs at ``lr * lr_scale``; after the last step, for ``job.retrain.final_epochs`` more.
    Masks stay attached to ``model`` on return.
    """
    seed_everything(seed)
    loaders = make_loaders(data, job.retrain.batch_size, seed=seed)
    if job.retrain.distill:
        loaders = _with_teacher(model, data, loaders, job.retrain.batch_size, seed, device)
    test_acc = accuracy_fn(loaders.test, device)
    val_acc = accuracy_fn(loaders.val, device) if loaders.val is not None else None
    before_test = test_acc(model)
    before_val = val_acc(model) if val_acc is not None else None
    n_steps = len(job.schedule.fractions())

    def retrain(m: nn.Module, step: int) -> None:
        epochs = job.retrain.epochs + (job.retrain.final_epochs if step == n_steps - 1 else 0)
        _retrain(
            m, loaders, job.retrain, epochs, device=device, callbacks=callbacks, seed=seed + step
        )

    report, steps = iterative_prune(
        model,
        job.prune,
        job.schedule,
        retrain,
        evaluate=val_acc,
        scale_dropout=job.retrain.scale_dropout,
        on_step=on_step,
    )
    return PruneOutcome(
        report=report,
        steps=tuple(steps),
        test_acc_before=before_test,
        test_acc_after=test_acc(model),
        val_acc_before=before_val,
        val_acc_after=val_acc(model) if val_acc is not None else None,
    )


@dataclass(frozen=True)
class QuantizeOutcome:
    """The result of :func:`quantize_with_finetuning` (test accuracy at each point)."""

    report: QuantizeReport
    acc_before: float
    acc_clustered: float
    acc_finetuned: float

    def to_dict(self) -> dict[str, object]:
        """JSON-ready form."""
        return {
            "acc_before": self.acc_before,
            "acc_clustered": self.acc_clustered,
            "acc_finetuned": self.acc_finetuned,
            "report": self.report.to_dict(),
        }


def quantize_with_finetuning(
    model: nn.Module,
    data: DataSplits,
    config: QuantizeConfig,
    finetune: RetrainConfig,
    *,
    device: torch.device | None = None,
    callbacks: Sequence[Callback] = (),
    seed: int = 0,
    fisher_batches: int = 20,
) -> QuantizeOutcome:
    """Share weights (k-means, uniform or ECSQ), then fine-tune the codebooks with the task loss.

    With ``config.importance == "fisher"`` the importance is the empirical Fisher diagonal over
    ``fisher_batches`` training batches. Fine-tuning runs ``finetune.epochs`` epochs at
    ``finetune.retrain_lr``; indices and masks stay fixed, codebooks and float parameters train.
    """
    seed_everything(seed)
    loaders = make_loaders(data, finetune.batch_size, seed=seed)
    test_acc = accuracy_fn(loaders.test, device)
    before = test_acc(model)
    importance = None
    if config.importance == "fisher":
        importance = fisher_diagonal(
            model,
            loaders.train,
            max_batches=fisher_batches,
            include=config.include,
            exclude=config.exclude,
        )
    if finetune.distill:  # the teacher is the model before quantization
        loaders = _with_teacher(model, data, loaders, finetune.batch_size, seed, device)
    report = quantize_(model, config, importance=importance)
    clustered = test_acc(model)
    trainable = [p for p in model.parameters() if p.requires_grad]
    if finetune.epochs and trainable:
        _retrain(
            model, loaders, finetune, finetune.epochs, device=device, callbacks=callbacks, seed=seed
        )
    return QuantizeOutcome(report, before, clustered, test_acc(model))


# ============================================================================ recipe runner
#
# run_recipe() runs a Recipe's stages in order on any model. After every stage the model is
# written to a checkpoint in the run directory and read back (so an uninterrupted run continues
# from exactly what a resumed run would load), its accuracy and real .dzip size are measured,
# and state.json records the stage. Re-running the same call resumes after the last recorded
# stage; a run directory made by a different recipe, model or data is refused with
# RecipeChangedError unless restart=True.

TrainFn = Callable[[nn.Module, "TrainRequest"], None]
"""``train_fn(model, request)``: train ``model`` in place as the request says."""

EvalFn = Callable[[nn.Module], float]
"""``eval_fn(model) -> accuracy`` in [0, 1]."""

Batches = Iterable[tuple[torch.Tensor, torch.Tensor]]

STATE_FILE = "state.json"
DZIP_FILE = "model.dzip"
INITIAL_CHECKPOINT = "stage-00-initial.safetensors"
_STATE_FORMAT = "deepzip.run"
_STATE_VERSION = 1
_DROPOUT_KEY = "deepzip.run.dropout"
_GRAD_KEY = "deepzip.run.shared_grad"


class RecipeChangedError(ConfigError):
    """A run directory holds a run of a different recipe, model or data set, or another deepzip's.

    "Another deepzip" is another version, or the same version with other code (the run records
    a hash of the package's code): its finished stages are not what this code would compute.
    """


def stage_seed(recipe_seed: int, index: int) -> int:
    """The seed of stage ``index`` (from 0): a fixed function of the recipe's seed."""
    return (recipe_seed * 1_000_003 + 7_919 * (index + 1)) % 2**31


@dataclass(frozen=True)
class TrainRequest:
    """What a stage asks ``train_fn`` to do.

    Attributes:
        stage: the stage type asking (``"train"``, ``"prune"``, ``"retrain"``, ``"finetune"``).
        stage_index: the stage's position in the recipe, from 0.
        step: the prune schedule step (prune stages), else ``None``.
        epochs: epochs to train (always >= 1).
        lr: the learning rate to use (already scaled by ``lr_scale``).
        optimizer: ``"sgd"`` (momentum 0.9), ``"adam"`` or ``"adamw"``.
        weight_decay: weight decay.
        batch_size: mini-batch size.
        schedule: ``"cosine"`` (anneal to zero over ``epochs``) or ``"constant"``.
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
        kind: ``"start"``, ``"resume"``, ``"stage_start"``, ``"step"`` (a prune step),
            ``"stage_end"`` or ``"done"``.
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
        config: its configuration with the recipe's per-layer overrides merged in.
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
        """A :class:`TrainRequest` from a retraining config (teacher attached if distilling)."""
        return TrainRequest(
            stage=self.stage.kind,
            stage_index=self.index,
            step=step,
            epochs=epochs,
            lr=config.retrain_lr,
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


@dataclass(frozen=True)
class _Runner:
    run: StageRunner
    check: StageCheck | None
    needs_training: Callable[[Any], bool]
    needs_validation: Callable[[Any], bool]
    validation_hint: str


_RUNNERS: dict[str, _Runner] = {}


def register_stage_runner(
    kind: str,
    run: StageRunner,
    *,
    check: StageCheck | None = None,
    needs_training: Callable[[Any], bool] = lambda config: False,
    needs_validation: Callable[[Any], bool] = lambda config: False,
    validation_hint: str = "",
    overwrite: bool = False,
) -> None:
    """Register how a stage type runs (its recipe side: ``deepzip.config.register_stage_kind``).

    Args:
        kind: the stage type's name.
        run: ``run(context, config) -> StageResult``; modifies ``context.model`` in place.
        check: ``check(model, config, label)`` validates the stage against the model before
            the run starts (globs that match no layer...), raising ``ConfigError``.
        needs_training: whether a config of this stage calls ``train_fn``.
        needs_validation: whether a config of this stage needs ``eval_fn`` (validation
            accuracy).
        validation_hint: how a config of this stage can do without it (``"set cell_bits"``),
            added to the error when it is missing; ``""`` when it cannot.
        overwrite: replace an existing runner.

    Raises:
        ConfigError: the stage type is not registered in deepzip.config, or already has a
            runner.
    """
    if kind not in stage_kinds():
        raise ConfigError(f"stage type {kind!r} is not registered (deepzip.config)")
    if kind in _RUNNERS and not overwrite:
        raise ConfigError(f"stage type {kind!r} already has a runner")
    _RUNNERS[kind] = _Runner(run, check, needs_training, needs_validation, validation_hint)


@dataclass(frozen=True)
class StageRecord:
    """One finished stage (or the starting point, index -1) as recorded in ``state.json``.

    Attributes:
        index: position in the recipe, from 0 (-1 for the model the run started from).
        kind: stage type (``"initial"`` for the start).
        name: the stage's label, if any.
        seed: its seed.
        checkpoint: the checkpoint written after it, relative to the run directory.
        val_acc: validation accuracy after it (``None`` without ``eval_fn``).
        test_acc: test accuracy after it (``None`` without ``test_fn``).
        file_bytes: real ``.dzip`` bytes of the model after it.
        float32_bytes: float32 bytes of every tensor the model needs.
        kept: surviving weights of the compressed tensors / their total.
        seconds: wall time of the stage.
        details: stage-specific JSON (prune steps, per-layer reports...).
    """

    index: int
    kind: str
    name: str | None
    seed: int
    checkpoint: str
    val_acc: float | None
    test_acc: float | None
    file_bytes: int
    float32_bytes: int
    kept: float
    seconds: float
    details: dict[str, Any]

    @property
    def ratio(self) -> float:
        """``float32_bytes / file_bytes``."""
        return self.float32_bytes / self.file_bytes if self.file_bytes else 0.0

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return {
            "index": self.index,
            "kind": self.kind,
            "name": self.name,
            "seed": self.seed,
            "checkpoint": self.checkpoint,
            "val_acc": self.val_acc,
            "test_acc": self.test_acc,
            "file_bytes": self.file_bytes,
            "float32_bytes": self.float32_bytes,
            "ratio": self.ratio,
            "kept": self.kept,
            "seconds": self.seconds,
            "details": self.details,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> StageRecord:
        """Read back :meth:`to_dict` (``ConfigError`` on a malformed record)."""
        try:
            return cls(
                index=int(data["index"]),
                kind=str(data["kind"]),
                name=data.get("name"),
                seed=int(data["seed"]),
                checkpoint=str(data["checkpoint"]),
                val_acc=None if data.get("val_acc") is None else float(data["val_acc"]),
                test_acc=None if data.get("test_acc") is None else float(data["test_acc"]),
                file_bytes=int(data["file_bytes"]),
                float32_bytes=int(data["float32_bytes"]),
                kept=float(data["kept"]),
                seconds=float(data["seconds"]),
                details=dict(data.get("details") or {}),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise ConfigError(f"malformed stage record in {STATE_FILE}: {exc!r}") from exc


def accuracy_reference(
    initial: StageRecord, stages: Sequence[StageRecord]
) -> tuple[StageRecord, bool]:
    """The record a run's accuracy change is measured from, and whether it is a dense model.

    After a train stage, that stage's record (dense); otherwise the model the run started from,
    which a ``--start`` checkpoint may have pruned or quantized already, so it is not called
    dense.
    """
    if stages and stages[0].kind == "train":
        return stages[0], True
    return initial, False


@dataclass(frozen=True)
class RunResult:
    """The outcome of :func:`run_recipe`.

    Attributes:
        model: the compressed model (shared weights and masks attached).
        recipe: the recipe run.
        run_dir: the run directory.
        initial: the starting point (index -1).
        stages: one record per stage, in order.
        dzip: the ``.dzip`` file written by the encode stage.
        resumed_from: index of the first stage this call ran (0 for a fresh run; the number
            of stages when everything was already done).
    """

    model: nn.Module
    recipe: Recipe
    run_dir: Path
    initial: StageRecord
    stages: tuple[StageRecord, ...]
    dzip: Path
    resumed_from: int

    @property
    def final(self) -> StageRecord:
        """The last stage's record."""
        return self.stages[-1]

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready summary."""
        return {
            "recipe": self.recipe.to_dict(),
            "run_dir": str(self.run_dir),
            "dzip": str(self.dzip),
            "resumed_from": self.resumed_from,
            "initial": self.initial.to_dict(),
            "stages": [s.to_dict() for s in self.stages],
        }


def _canonical_json(data: Any) -> str:
    return json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def recipe_hash(recipe: Recipe) -> str:
    """SHA-256 of the recipe's canonical JSON form."""
    return hashlib.sha256(_canonical_json(recipe.to_dict()).encode("utf-8")).hexdigest()


def model_fingerprint(model: nn.Module) -> str:
    """SHA-256 over the names, shapes, dtypes and bytes of the model's (plain) state dict."""
    digest = hashlib.sha256()
    for name, tensor in sorted(plain_state_dict(model).items()):
        t = tensor.detach().cpu().contiguous()
        digest.update(f"{name}:{tuple(t.shape)}:{t.dtype};".encode())
        if t.numel():
            digest.update(t.view(torch.uint8).numpy().data)
    return digest.hexdigest()


def data_fingerprint(data: DataSplits) -> str:
    """A short identity of the three splits: names, sizes and a hash of every sample."""
    digest = hashlib.sha256()
    for ds in (data.train, data.val, data.test):
        digest.update(f"{ds.name}/{ds.split}/{len(ds)}/{tuple(ds.images.shape)};".encode())
        for t in (ds.images, ds.labels):
            c = t.detach().cpu().contiguous()
            if c.numel():
                digest.update(c.view(torch.uint8).numpy().data)
    return f"{data.train.name}:{digest.hexdigest()[:32]}"


def _dropout_state(model: nn.Module) -> dict[str, list[float]]:
    out: dict[str, list[float]] = {}
    for name, module in model.named_modules():
        if isinstance(module, nn.modules.dropout._DropoutNd):
            original = getattr(module, _ORIGINAL_P, None)
            out[name] = [float(module.p), float(module.p if original is None else original)]
    return out


def _restore_dropout(model: nn.Module, state: Mapping[str, Sequence[float]]) -> None:
    for name, module in model.named_modules():
        if isinstance(module, nn.modules.dropout._DropoutNd) and name in state:
            p, original = state[name]
            module.p = float(p)
            if float(p) != float(original):
                setattr(module, _ORIGINAL_P, float(original))


def _grad_rules(model: nn.Module) -> dict[str, str]:
    out: dict[str, str] = {}
    for mod_name, module in model.named_modules():
        for attr in getattr(module, "parametrizations", {}) or {}:
            shared = get_shared(module, attr)
            if shared is not None:
                out[f"{mod_name}.{attr}" if mod_name else attr] = shared.grad
    return out


def _save_stage_checkpoint(model: nn.Module, path: Path, metadata: Mapping[str, str]) -> None:
    meta = dict(metadata)
    meta[_DROPOUT_KEY] = _canonical_json(_dropout_state(model))
    meta[_GRAD_KEY] = _canonical_json(_grad_rules(model))
    save_checkpoint(model, path, metadata=meta)


def _load_stage_checkpoint(model: nn.Module, path: Path) -> None:
    """Load a stage checkpoint into ``model``: weights, masks, codebooks, dropout, grad rules."""
    ckpt = read_checkpoint(path)
    apply_checkpoint(model, ckpt, strict=True, source=str(path))
    try:
        dropout = json.loads(ckpt.metadata.get(_DROPOUT_KEY, "{}"))
        grads = json.loads(ckpt.metadata.get(_GRAD_KEY, "{}"))
    except json.JSONDecodeError as exc:
        raise CheckpointError(f"{path}: bad run metadata: {exc}") from exc
    _restore_dropout(model, dropout)
    for name, rule in grads.items():
        owner, attr = name.rsplit(".", 1) if "." in name else ("", name)
        shared = get_shared(model.get_submodule(owner), attr)
        if shared is None or rule not in ("sum", "mean"):
            raise CheckpointError(f"{path}: grad rule for {name!r} does not fit the model")
        shared.grad = rule


def independent_copy(model: nn.Module) -> nn.Module:
    """A deep copy that can be stripped or re-parametrized without touching ``model``.

    ``copy.deepcopy`` of a parametrized module shares its generated ``Parametrized<Class>``
    class, on which ``torch.nn.utils.parametrize`` stores the tensor properties: removing a
    parametrization from the copy would delete the original's property too. Each parametrized
    module of the copy gets its own class.
    """
    clone = copy.deepcopy(model)
    for module in clone.modules():
        if parametrize.is_parametrized(module):
            cls = type(module)
            body = {k: v for k, v in vars(cls).items() if k not in ("__dict__", "__weakref__")}
            module.__class__ = type(cls.__name__, cls.__bases__, body)
    return clone


def _encode_options(recipe: Recipe) -> EncodeStage:
    return next(
        (s.config for s in recipe.stages if isinstance(s.config, EncodeStage)), EncodeStage()
    )


def validation_stage(recipe: Recipe) -> tuple[str, str] | None:
    """The first stage that needs validation accuracy (``eval_fn``), or ``None``.

    A sensitivity stage does, and so does a Weightless stage that chooses its cell widths.
    Stage types without a runner are left out (:func:`check_recipe` reports them).

    Returns:
        ``(label, hint)``: the stage's label and how it could do without validation data
        (``"set cell_bits"``; ``""`` when it cannot).
    """
    for i, stage in enumerate(recipe.stages):
        runner = _RUNNERS.get(stage.kind)
        if runner is not None and runner.needs_validation(recipe.effective(stage)):
            return stage.label(i), runner.validation_hint
    return None


def check_recipe(model: nn.Module, recipe: Recipe) -> None:
    """Validate a recipe against a model before anything runs.

    Every glob (recipe overrides, each stage's include/exclude/overrides) must match a layer,
    and every stage type must have a runner.

    Raises:
        ConfigError: naming the stage or override and the glob.
    """
    selection = select_targets(model)
    names = ", ".join(selection.names()) or "none"
    for i, rule in enumerate(recipe.overrides):
        if not any(matches(rule.pattern, t.module_name, t.param_name) for t in selection.targets):
            raise ConfigError(
                f"overrides[{i}]: pattern {rule.pattern!r} matches no compressible layer "
                f"(layers: {names})"
            )
    for i, stage in enumerate(recipe.stages):
        runner = _RUNNERS.get(stage.kind)
        if runner is None:
            raise ConfigError(
                f"{stage.label(i)}: stage type {stage.kind!r} has no runner; import the module "
                "that provides it (deepzip.pipeline.register_stage_runner)"
            )
        if runner.check is not None:
            try:
                runner.check(model, recipe.effective(stage), stage.label(i))
            except ConfigError as exc:
                msg = str(exc)
                label = stage.label(i)
                raise ConfigError(msg if msg.startswith(label) else f"{label}: {msg}") from exc


# -------------------------------------------------------------------- built-in stage runners


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


def _no_validation(label: str, hint: str = "") -> ConfigError:
    return ConfigError(
        f"{label} needs validation accuracy: pass eval_fn=, or data= with a non-empty "
        f"validation split{f'; or {hint}' if hint else ''}"
    )


def _run_sensitivity(ctx: StageContext, config: SensitivityStage) -> StageResult:
    if ctx.eval_fn is None:
        raise _no_validation(ctx.label)
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
    for o in q.overrides:
        if not any(matches(o.pattern, t.module_name, t.param_name) for t in selection.targets):
            raise ConfigError(
                f"override pattern {o.pattern!r} matches no quantizable layer "
                f"(layers: {', '.join(selection.names()) or 'none'})"
            )


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
    # End as a stage checkpoint reloads: plain SharedWeights with trainable codebooks.
    for layer in report.layers:
        owner, attr = layer.name.rsplit(".", 1) if "." in layer.name else ("", layer.name)
        module = ctx.model.get_submodule(owner)
        shared = get_shared(module, attr)
        if shared is not None:
            attach_shared(module, attr, shared.export(), grad=shared.grad)
    return StageResult({"report": report.to_dict(), "steps": [s.to_dict() for s in steps]})


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
register_stage_runner("quantize", _run_quantize, check=_check_quantize)
register_stage_runner("finetune", _run_finetune, needs_training=lambda c: bool(c.finetune.epochs))
register_stage_runner("encode", _run_encode)


def _check_weightless(model: nn.Module, config: WeightlessStage, label: str) -> None:
    w = config.weightless
    selection = select_targets(model, include=w.include, exclude=w.exclude)
    for o in w.overrides:  # clustering overrides may name layers other stages compress
        if not any(matches(o.pattern, t.module_name, t.param_name) for t in selection.targets):
            raise ConfigError(
                f"override pattern {o.pattern!r} matches no layer Weightless encodes "
                f"(layers: {', '.join(selection.names()) or 'none'})"
            )


_CELL_BITS_HINT = "set cell_bits"  # a fixed cell width needs no validation accuracy


def _run_weightless(ctx: StageContext, config: WeightlessStage) -> StageResult:
    w, r = config.weightless, config.retrain
    auto = w.cell_bits is None
    if auto and ctx.eval_fn is None:
        raise _no_validation(ctx.label, _CELL_BITS_HINT)

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
    needs_training=lambda c: bool(c.retrain.epochs),
    needs_validation=lambda c: c.weightless.cell_bits is None,
    validation_hint=_CELL_BITS_HINT,
)
for _name in ("slq", "mlq", "inq"):
    register_stage_runner(
        _name,
        _run_incremental,
        check=_check_incremental,
        needs_training=_incremental_needs_training,
    )


# ------------------------------------------------------------------------ training from data


def data_trainer(
    data: DataSplits,
    *,
    device: str | torch.device | None = None,
    callbacks: Sequence[Callback] = (),
) -> TrainFn:
    """A ``train_fn`` that trains on ``data.train`` as each :class:`TrainRequest` says.

    Shuffling is seeded by the request; the validation split is evaluated after each epoch
    (for progress callbacks); distillation packs the teacher's logits beside the labels
    (computed once per teacher).
    """
    dev = None if device is None else resolve_device(device)
    cached: list[tuple[nn.Module, torch.Tensor]] = []

    def teacher_targets(teacher: nn.Module) -> torch.Tensor:
        if cached and cached[0][0] is teacher:
            return cached[0][1]
        plain = TensorLoader(data.train.images, data.train.labels, 1000)
        targets = pack_teacher_targets(
            data.train.labels, predict_logits(teacher, plain, device=dev)
        )
        cached[:] = [(teacher, targets)]
        return targets

    def train(model: nn.Module, request: TrainRequest) -> None:
        loaders = make_loaders(data, request.batch_size, seed=request.seed)
        train_loader, loss_fn = loaders.train, None
        if request.distill and request.teacher is not None:
            targets = teacher_targets(request.teacher)
            train_loader = TensorLoader(
                data.train.images, targets, request.batch_size, shuffle=True, seed=request.seed
            )
            loss_fn = DistillationLoss(request.distill, request.temperature)
        params = [p for p in model.parameters() if p.requires_grad]
        if not params:
            raise ConfigError(
                f"{request.stage} stage {request.stage_index + 1}: the model has no trainable "
                "parameters"
            )
        optimizer = make_optimizer(
            params, request.optimizer, request.lr, weight_decay=request.weight_decay
        )
        fit(
            model,
            train_loader,
            optimizer=optimizer,
            epochs=request.epochs,
            loss_fn=loss_fn,
            device=dev,
            scheduler=_scheduler(optimizer, request.schedule, request.epochs),
            callbacks=callbacks,
            eval_loader=loaders.val,
            seed=request.seed,
        )

    return train


# ------------------------------------------------------------------------------- the runner


def _read_state(path: Path) -> dict[str, Any]:
    try:
        state = json.loads(path.read_text("utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise ConfigError(f"{path}: unreadable run state ({exc}); rerun with restart") from exc
    if not isinstance(state, dict) or state.get("format") != _STATE_FORMAT:
        raise ConfigError(f"{path}: not a deepzip run state file")
    if state.get("version") != _STATE_VERSION:
        raise ConfigError(
            f"{path}: run state version {state.get('version')!r}, this deepzip reads "
            f"{_STATE_VERSION}; rerun with restart"
        )
    return state


def read_run(run_dir: str | os.PathLike[str]) -> tuple[Recipe, StageRecord, list[StageRecord]]:
    """The recipe, starting point and finished stages recorded in a run directory.

    Raises:
        ConfigError: no run there, or an unreadable state file.
    """
    path = Path(run_dir) / STATE_FILE
    if not path.is_file():
        raise ConfigError(f"{Path(run_dir)}: no deepzip run here (no {STATE_FILE})")
    state = _read_state(path)
    recipe = Recipe.from_dict(state["recipe"])
    initial = StageRecord.from_dict(state["initial"])
    return recipe, initial, [StageRecord.from_dict(r) for r in state["stages"]]


def _describe_change(old: Mapping[str, Any], new: Mapping[str, Any]) -> str:
    """The first difference between two recipes' dict forms, in words."""
    old_stages, new_stages = old.get("stages", []), new.get("stages", [])
    for i, (a, b) in enumerate(zip(old_stages, new_stages, strict=False)):
        if a != b:
            keys = sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))
            parts = [f"{k}: {a.get(k)!r} → {b.get(k)!r}" for k in keys[:3]]
            return f"stage {i + 1} ({b.get('type')}) changed ({'; '.join(parts)})"
    if len(old_stages) != len(new_stages):
        return f"the number of stages changed ({len(old_stages)} → {len(new_stages)})"
    keys = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
    return "recipe " + "; ".join(f"{k}: {old.get(k)!r} → {new.get(k)!r}" for k in keys[:3])


def _clear_run(run_dir: Path) -> None:
    """Remove what an earlier run wrote (only the files a run writes)."""
    for pattern in (STATE_FILE, DZIP_FILE, "stage-*.safetensors", "sensitivity-*.json"):
        for path in run_dir.glob(pattern):
            path.unlink()


def run_recipe(
    model: nn.Module,
    recipe: Recipe,
    run_dir: str | os.PathLike[str],
    *,
    data: DataSplits | None = None,
    train_fn: TrainFn | None = None,
    eval_fn: EvalFn | None = None,
    test_fn: EvalFn | None = None,
    batches: Callable[[], Batches] | None = None,
    data_id: str | None = None,
    model_name: str | None = None,
    restart: bool = False,
    device: str | torch.device | None = None,
    callbacks: Sequence[Callback] = (),
    on_event: Callable[[PipelineEvent], None] | None = None,
) -> RunResult:
    """Run a recipe's stages on ``model``, checkpointing after each one; resume if interrupted.

    Give either ``data`` (train, validation and test splits: training, validation accuracy,
    test accuracy and Fisher batches are built from it) or your own callables. Stage ``i`` runs
    after ``seed_everything(stage_seed(recipe.seed, i))``. After each stage the model is
    written to ``run_dir/stage-NN-<type>.safetensors`` and read back, evaluated, and encoded
    to measure its real ``.dzip`` size; ``run_dir/state.json`` then records the stage. The
    encode stage writes ``run_dir/model.dzip`` and checks the accuracy of the model decoded
    from it. Calling again with the same arguments resumes after the last recorded stage (an
    interrupted stage reruns from its start) and gives a byte-identical ``.dzip``; when every
    stage is done the model is loaded from the last checkpoint and nothing reruns.

    Args:
        model: any ``nn.Module`` (modified in place). On resume, pass the same starting model.
        recipe: the stages.
        run_dir: the run directory (created if needed).
        data: a data set's splits (see :func:`deepzip.datasets.load_dataset`).
        train_fn: ``train_fn(model, request)`` (default: built from ``data``).
        eval_fn: validation accuracy, used to judge steps (default: from ``data``).
        test_fn: test accuracy, reported only (default: from ``data``).
        batches: returns ``(inputs, targets)`` batches for Fisher importance (default: from
            ``data``).
        data_id: identity of your data (recorded; a resume with another id is refused).
        model_name: recorded in the checkpoints and the ``.dzip`` metadata.
        restart: discard a previous run in ``run_dir`` instead of resuming it.
        device: where to train and evaluate (``None``: where the model is).
        callbacks: training callbacks (progress display), for training from ``data``.
        on_event: receives :class:`PipelineEvent` progress.

    Returns:
        The run's records and the ``.dzip`` path.

    Raises:
        ConfigError: a glob matching no layer, a stage that needs ``train_fn``/``eval_fn``
            that were not given (checked before anything runs), a stage that needs
            ``batches`` that were not given.
        RecipeChangedError: ``run_dir`` holds a run of another recipe, model or data set, or
            one started by another deepzip (version or code).
    """
    out = Path(run_dir)
    emit = on_event if on_event is not None else (lambda event: None)
    dev = resolve_device(device) if device is not None else _model_device(model)
    if data is not None:
        loaders = make_loaders(data, 1000)
        train_fn = train_fn or data_trainer(data, device=dev, callbacks=callbacks)
        if eval_fn is None and loaders.val is not None:
            eval_fn = accuracy_fn(loaders.val, dev)
        test_fn = test_fn or accuracy_fn(loaders.test, dev)
        if batches is None:

            def _data_batches() -> Batches:
                return make_loaders(data, 128, seed=recipe.seed).train

            batches = _data_batches
        data_id = data_id or data_fingerprint(data)
    model.to(dev)
    check_recipe(model, recipe)
    for i, stage in enumerate(recipe.stages):
        if train_fn is None and _RUNNERS[stage.kind].needs_training(recipe.effective(stage)):
            raise ConfigError(f"{stage.label(i)} trains the model: pass train_fn= or data=")
    needs_val = validation_stage(recipe)
    if eval_fn is None and needs_val is not None:
        raise _no_validation(*needs_val)
    identity: dict[str, Any] = {
        "recipe_sha256": recipe_hash(recipe),
        "model": model_name or f"{type(model).__module__}.{type(model).__qualname__}",
        "model_sha256": model_fingerprint(model),
        "data": data_id,
        "seed": recipe.seed,
        "deepzip": deepzip_identity(),
    }
    encode = _encode_options(recipe)
    base_meta = {
        "deepzip.model": identity["model"],
        "deepzip.recipe_sha256": identity["recipe_sha256"],
    }
    if data_id is not None:
        base_meta["deepzip.data"] = data_id

    def write_dzip(path: Path) -> SaveReport:
        return save_dzip(
            model,
            path,
            coder=encode.coder,
            index_bits=_index_bits(recipe, encode),
            layout=encode.layout,
            metadata=base_meta,
            recipe=recipe.to_dict(),
        )

    def measure(index: int) -> SaveReport:
        with tempfile.TemporaryDirectory(dir=out, prefix=f".measure-{index + 1:02d}-") as tmp:
            return write_dzip(Path(tmp) / DZIP_FILE)

    state_path = out / STATE_FILE
    for stale in out.glob(".measure-*"):  # left by a run killed while measuring a size
        shutil.rmtree(stale, ignore_errors=True)
    records: list[StageRecord] = []
    initial: StageRecord | None = None
    if state_path.is_file() and restart:
        _clear_run(out)
    if state_path.is_file():
        state = _read_state(state_path)
        if state.get("identity") != identity:
            raise RecipeChangedError(_mismatch(out, state, identity, recipe))
        initial = StageRecord.from_dict(state["initial"])
        records = [StageRecord.from_dict(r) for r in state["stages"]]
        last = out / (records[-1].checkpoint if records else initial.checkpoint)
        _load_stage_checkpoint(model, last)
        model.to(dev)
        emit(
            PipelineEvent(
                "resume",
                f"resuming {out}: {len(records)} of {len(recipe.stages)} stage(s) already done",
            )
        )
    else:
        out.mkdir(parents=True, exist_ok=True)
        emit(PipelineEvent("start", f"run directory {out}"))
    resumed_from = len(records)

    def save_state(finished: bool) -> None:
        assert initial is not None
        state = {
            "format": _STATE_FORMAT,
            "version": _STATE_VERSION,
            "identity": identity,
            "recipe": recipe.to_dict(),
            "initial": initial.to_dict(),
            "stages": [r.to_dict() for r in records],
            "finished": finished,
        }
        atomic_write_text(state_path, json.dumps(state, indent=2, sort_keys=True) + "\n")

    teacher_box: list[nn.Module] = []

    def teacher() -> nn.Module:
        """The dense reference: the model after the train stage, or as the run started."""
        if not teacher_box:
            ref = INITIAL_CHECKPOINT
            if recipe.stages[0].kind == "train" and records:
                ref = records[0].checkpoint
            t = independent_copy(model)
            _load_stage_checkpoint(t, out / ref)
            t.to(dev).eval()
            for p in t.parameters():
                p.requires_grad_(False)
            teacher_box.append(t)
        return teacher_box[0]

    def evaluate_now() -> tuple[float | None, float | None]:
        return (
            eval_fn(model) if eval_fn is not None else None,
            test_fn(model) if test_fn is not None else None,
        )

    if initial is None:
        t0 = time.perf_counter()
        _save_stage_checkpoint(model, out / INITIAL_CHECKPOINT, base_meta)
        _load_stage_checkpoint(model, out / INITIAL_CHECKPOINT)
        model.to(dev)
        size = measure(-1)
        val, test = evaluate_now()
        initial = StageRecord(
            -1, "initial", None, recipe.seed, INITIAL_CHECKPOINT, val, test,
            size.file_bytes, size.float32_bytes, _kept(size), time.perf_counter() - t0, {},
        )  # fmt: skip
        save_state(False)
    for index in range(len(records), len(recipe.stages)):
        stage = recipe.stages[index]
        seed = stage_seed(recipe.seed, index)
        label = stage.label(index)
        emit(PipelineEvent("stage_start", f"{label} started", index))
        t0 = time.perf_counter()
        seed_everything(seed)
        ctx = StageContext(
            model=model,
            recipe=recipe,
            stage=stage,
            index=index,
            config=recipe.effective(stage),
            seed=seed,
            run_dir=out,
            device=dev,
            train_fn=train_fn,
            eval_fn=eval_fn,
            test_fn=test_fn,
            batches=batches,
            teacher=teacher,
            emit=emit,
            write_dzip=write_dzip,
        )
        result = _RUNNERS[stage.kind].run(ctx, ctx.config)
        name = f"stage-{index + 1:02d}-{stage.kind}.safetensors"
        _save_stage_checkpoint(model, out / name, base_meta)
        _load_stage_checkpoint(model, out / name)
        model.to(dev)
        size = result.save_report if result.save_report is not None else measure(index)
        val, test = evaluate_now()
        record = StageRecord(
            index, stage.kind, stage.name, seed, name, val, test, size.file_bytes,
            size.float32_bytes, _kept(size), time.perf_counter() - t0, result.details,
        )  # fmt: skip
        records.append(record)
        save_state(index == len(recipe.stages) - 1)
        emit(PipelineEvent("stage_end", _stage_line(label, record), index, record))
    emit(PipelineEvent("done", f"{out / DZIP_FILE}: ratio {records[-1].ratio:.1f}×"))
    return RunResult(model, recipe, out, initial, tuple(records), out / DZIP_FILE, resumed_from)


def _mismatch(
    out: Path, state: Mapping[str, Any], identity: Mapping[str, Any], recipe: Recipe
) -> str:
    old = state.get("identity") or {}
    what = []
    if old.get("recipe_sha256") != identity["recipe_sha256"]:
        what.append(_describe_change(state.get("recipe") or {}, recipe.to_dict()))
    if old.get("model") != identity["model"]:
        what.append(f"model {old.get('model')!r} → {identity['model']!r}")
    elif old.get("model_sha256") != identity["model_sha256"]:
        what.append("the starting model's weights differ")
    if old.get("data") != identity["data"]:
        what.append(f"data {old.get('data')!r} → {identity['data']!r}")
    if old.get("seed") != identity["seed"] and not what:
        what.append(f"seed {old.get('seed')!r} → {identity['seed']!r}")
    if what:
        return (
            f"{out} holds a run of a different recipe, model or data: {'; '.join(what)}. "
            "Use another run directory, or restart (restart=True; --restart on the command "
            "line) to discard it"
        )
    return (
        f"{out} holds a run made by {_made_by(old.get('deepzip'))}, and this is "
        f"{_made_by(identity['deepzip'])}. Its finished stages may differ from what this "
        "code computes, so the resumed run's .dzip may not be the one a fresh run writes. "
        "Restart it (restart=True; --restart on the command line) to run it again with this "
        "deepzip, or finish it with the deepzip that started it"
    )


def _made_by(made: Any) -> str:
    if not isinstance(made, Mapping) or "version" not in made:
        return "a deepzip that did not record its version"
    code = str(made.get("code_sha256", ""))[:12] or "unrecorded"
    return f"deepzip {made['version']} (code {code})"


def _kept(report: SaveReport) -> float:
    compressed = [t for t in report.tensors if t.encoding != "raw"]
    weights = sum(t.weights for t in compressed)
    return sum(t.kept for t in compressed) / weights if weights else 1.0


def _stage_line(label: str, record: StageRecord) -> str:
    parts = [f"{label} done in {record.seconds:.0f} s"]
    if record.val_acc is not None:
        parts.append(f"validation {100 * record.val_acc:.2f}%")
    if record.test_acc is not None:
        parts.append(f"test {100 * record.test_acc:.2f}%")
    parts.append(f"{record.file_bytes:,} B ({record.ratio:.1f}×)")
    return ", ".join(parts)


def _index_bits(recipe: Recipe, encode: EncodeStage) -> IndexBits:
    """dz.save's ``index_bits``: the stage's width for all, then the per-layer overrides."""
    per_layer = recipe.index_bits()
    if not per_layer:
        return encode.index_bits
    base = {"*": encode.index_bits} if encode.index_bits is not None else {}
    return {**base, **per_layer}


def _model_device(model: nn.Module) -> torch.device:
    for tensor in model.parameters():
        return tensor.device
    return torch.device("cpu")


def quick_recipe(recipe: Recipe, *, epochs: int = 1) -> Recipe:
    """The same recipe with at most ``epochs`` epochs per training and two prune steps.

    For smoke runs (``--quick``): every training of every built-in stage type is shortened
    (dense training, prune retraining, retrain, finetune, the retraining of SLQ/MLQ/INQ and
    Weightless stages); every stage keeps its targets, bits and coder.
    """

    def short(r: RetrainConfig) -> RetrainConfig:
        return replace(r, epochs=min(r.epochs, epochs), final_epochs=min(r.final_epochs, epochs))

    stages = []
    for stage in recipe.stages:
        c = stage.config
        if isinstance(c, TrainStage):
            c = TrainStage(replace(c.train, epochs=min(c.train.epochs, epochs)))
        elif isinstance(c, PruneStage):
            steps = (0.6, 1.0) if len(c.schedule.fractions()) > 1 else (1.0,)
            c = replace(
                c, schedule=ScheduleConfig(kind="steps", steps=steps), retrain=short(c.retrain)
            )
        elif isinstance(c, RetrainStage):
            c = RetrainStage(short(c.retrain))
        elif isinstance(c, FinetuneStage):
            c = FinetuneStage(short(c.finetune))
        elif isinstance(c, (SLQStage, MLQStage, INQStage, WeightlessStage)):
            c = replace(c, retrain=short(c.retrain))
        stages.append(replace(stage, config=c))
    return replace(recipe, stages=tuple(stages))
