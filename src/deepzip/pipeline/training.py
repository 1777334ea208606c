"""Training steps on a model and a data set: loaders, dense training, pruning with retraining,
quantization with fine-tuning, and :func:`data_trainer` (the ``train_fn`` of a run).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from deepzip.config import (
    PruneJob,
    QuantizeConfig,
    RetrainConfig,
    TrainConfig,
)
from deepzip.datasets import DataSplits, ImageDataset, TensorLoader
from deepzip.errors import ConfigError
from deepzip.pipeline.registry import TrainFn, TrainRequest
from deepzip.prune import (
    PruneReport,
    StepRecord,
    iterative_prune,
)
from deepzip.quantize import QuantizeReport, fisher_diagonal, quantize_
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

__all__ = [
    "Loaders",
    "PruneOutcome",
    "QuantizeOutcome",
    "accuracy_fn",
    "data_trainer",
    "make_loaders",
    "prune_with_retraining",
    "quantize_with_finetuning",
    "train_dense",
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
        step_seed = (seed + step) % 2**32  # seed_everything's range
        _retrain(
            m, loaders, job.retrain, epochs, device=device, callbacks=callbacks, seed=step_seed
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
                f"stage {request.stage_index + 1} ({request.stage}): the model has no "
                "trainable parameters"
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
