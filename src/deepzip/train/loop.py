"""The training loop and evaluation, for any model, batch iterable, loss and optimizer.

All three functions work under ``torch.distributed`` (see :func:`fit` and :func:`evaluate`):
``fit`` calls ``set_epoch`` on the loader's sampler at each epoch start, and the totals of
an evaluation over a ``DistributedSampler`` are all-reduced, so every rank reports the same
global loss and accuracy.
"""

from __future__ import annotations

import itertools
import logging
import math
from collections.abc import Callable, Iterable, Sequence, Sized
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn
from torch.optim.lr_scheduler import LRScheduler, ReduceLROnPlateau
from torch.utils.data import DistributedSampler

from deepzip.errors import ConfigError, InvalidTensorError
from deepzip.targets import eval_mode
from deepzip.train.callbacks import Callback, FitHistory, FitState
from deepzip.train.seed import resolve_device, seed_everything

__all__ = ["EvalResult", "evaluate", "fit", "predict_logits"]

logger = logging.getLogger(__name__)

_Batches = Iterable[Sequence[torch.Tensor]]
_LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class EvalResult:
    """The result of :func:`evaluate`.

    Attributes:
        loss: sample-weighted mean loss.
        accuracy: fraction of samples whose argmax over dim 1 equals the target, in ``[0, 1]``.
        n: number of samples.
    """

    loss: float
    accuracy: float
    n: int


def _split(batch: Sequence[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    if isinstance(batch, torch.Tensor) or len(batch) != 2:
        raise ConfigError(
            f"a batch must be an (inputs, targets) pair, got {type(batch).__name__} "
            f"of length {len(batch)}"
        )
    inputs, targets = batch
    return inputs, targets


def _to_device(
    batch: Sequence[torch.Tensor], device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    inputs, targets = _split(batch)
    # asynchronous only towards an accelerator: a non-blocking copy from a GPU into host
    # memory may still be running when the CPU reads it
    fast = device.type != "cpu"
    return inputs.to(device, non_blocking=fast), targets.to(device, non_blocking=fast)


def _follow_parameters(optimizer: torch.optim.Optimizer) -> None:
    """Move the optimizer's state (momentum, Adam's moments) to its parameters' devices.

    ``model.to`` moves the parameters in place but not the state an optimizer keeps for them,
    so a model trained on the CPU and then moved to a GPU had its momentum left on the CPU
    (``optimizer.step`` then failed). The rule is ``Optimizer.load_state_dict``'s: a ``step``
    count stays where it is unless the group is ``capturable`` or ``fused``.
    """
    for group in optimizer.param_groups:
        keep_step = not (group.get("capturable") or group.get("fused"))
        for p in group["params"]:
            state = optimizer.state.get(p)
            if not state:
                continue
            for key, value in state.items():
                if key == "step" and keep_step:
                    continue
                if isinstance(value, torch.Tensor) and value.device != p.device:
                    state[key] = value.to(p.device)


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _tensor_output(output: object, what: str) -> torch.Tensor:
    """``output`` when it is a tensor, else an :class:`InvalidTensorError` naming ``what``."""
    if not isinstance(output, torch.Tensor):
        raise InvalidTensorError(
            f"{what}: the model returned {type(output).__name__}, not a tensor of logits"
        )
    return output


def _batches_per_epoch(loader: object) -> int | None:
    if not isinstance(loader, Sized):
        return None
    try:
        return len(loader)
    except TypeError:  # e.g. a DataLoader over an IterableDataset without __len__
        return None


def _model_device(model: nn.Module, device: str | torch.device | None) -> torch.device:
    """``device`` resolved; ``None`` for the device of the model's first parameter or buffer
    (the CPU for a model with neither). Never CUDA merely because it is available."""
    if device is not None:
        return resolve_device(device)
    for tensor in itertools.chain(model.parameters(), model.buffers()):
        return tensor.device
    return torch.device("cpu")


def _samplers(loader: object) -> list[object]:
    """The loader's ``sampler``, ``batch_sampler`` and ``batch_sampler.sampler``, each once.

    A ``DataLoader`` built with ``sampler=`` holds it in both ``loader.sampler`` and
    ``loader.batch_sampler.sampler``; one built with ``batch_sampler=`` holds a
    ``SequentialSampler`` in ``loader.sampler`` and the real one inside the batch sampler.
    """
    found: list[object] = []
    batch_sampler = getattr(loader, "batch_sampler", None)
    for candidate in (
        getattr(loader, "sampler", None),
        batch_sampler,
        getattr(batch_sampler, "sampler", None),
    ):
        if candidate is not None and not any(candidate is seen for seen in found):
            found.append(candidate)
    return found


def _set_epoch(loader: object, epoch: int) -> None:
    """``set_epoch(epoch)`` on each of the loader's samplers that has one (a
    ``DistributedSampler`` seeds its shuffle with ``seed + epoch``)."""
    for sampler in _samplers(loader):
        set_epoch = getattr(sampler, "set_epoch", None)
        if callable(set_epoch):
            set_epoch(epoch)


def _is_shard(loader: object) -> bool:
    """Whether ``loader`` yields one rank's shard of the data, so that totals over it must be
    all-reduced: ``torch.distributed`` is initialised and the loader's sampler is a
    ``DistributedSampler`` over more than one replica.

    Raises:
        ConfigError: the sampler's ``num_replicas`` is not the default group's world size
            (an all-reduce over that group would not add up the sampler's shards).
    """
    if not (dist.is_available() and dist.is_initialized()):
        return False
    for sampler in _samplers(loader):
        if isinstance(sampler, DistributedSampler) and sampler.num_replicas > 1:
            world = dist.get_world_size()
            if sampler.num_replicas != world:
                raise ConfigError(
                    f"the loader's DistributedSampler splits the data into "
                    f"{sampler.num_replicas} shards, but the default process group has "
                    f"{world} ranks"
                )
            return True
    return False


def fit(
    model: nn.Module,
    loader: _Batches,
    *,
    optimizer: torch.optim.Optimizer,
    epochs: int,
    loss_fn: _LossFn | None = None,
    device: str | torch.device | None = None,
    scheduler: LRScheduler | ReduceLROnPlateau | None = None,
    callbacks: Sequence[Callback] = (),
    eval_loader: _Batches | None = None,
    max_grad_norm: float | None = None,
    seed: int | None = None,
) -> FitHistory:
    """Train ``model`` for a number of epochs.

    Each epoch puts the model in training mode and runs, per batch: ``zero_grad``, forward,
    loss, backward, optional gradient-norm clipping, ``optimizer.step()``. At the end of each
    epoch ``eval_loader`` is evaluated (``val_loss`` and ``val_accuracy`` go into
    ``state.metrics``), then the scheduler is stepped, then the callbacks' ``on_epoch_end``
    hooks run. A callback may end training early by setting ``state.stop``.

    Each epoch starts by calling ``set_epoch(epoch)`` (``epoch`` counted from 0 in this call)
    on every sampler of ``loader`` that has that method: ``loader.sampler``,
    ``loader.batch_sampler`` and ``loader.batch_sampler.sampler``, each once.

    Distributed data parallel: run ``fit`` on every rank with the model wrapped in
    ``torch.nn.parallel.DistributedDataParallel`` (CUDA: ``device_ids=[local_rank]``, the
    module moved there first, and ``device`` left ``None`` or that same device), the
    optimizer built over the wrapped model's parameters, and ``loader`` a ``DataLoader``
    with a ``torch.utils.data.DistributedSampler``. The ``set_epoch`` call gives every epoch
    a new shuffle on which all ranks agree, and DDP averages the gradients in ``backward``,
    so the ranks' parameters stay identical (``max_grad_norm`` clips the averaged gradients,
    the same on every rank). When ``torch.distributed`` is initialised and ``loader``'s
    sampler is a ``DistributedSampler`` over more than one replica, the epoch's training
    loss is all-reduced at the epoch end (one collective per epoch): ``state.epoch_loss``
    then holds the mean over all ranks' samples, as do the history and what a
    ``ReduceLROnPlateau`` without ``eval_loader`` is stepped with, so that every rank makes
    the same learning-rate decision; ``state.last_loss`` and the running ``epoch_loss``
    during the epoch are the rank's own. ``eval_loader`` is evaluated as :func:`evaluate`
    does, global metrics included. Every rank must run the same number of batches: stop
    (``state.stop``) on every rank or on none, from a value the ranks share such as
    ``val_loss``.

    A non-finite loss raises :class:`InvalidTensorError` after ``backward`` and before the
    optimizer step, on the rank that saw it only; no extra collective tells the others (it
    would cost one per batch). Under DDP that rank's gradients were already averaged into
    the others', which step on (onto non-finite parameters when that gradient was NaN or
    infinite) and then block in their next collective (DDP's gradient
    all-reduce) until the failing process exits (a launcher such as ``torchrun`` then ends
    the job, and gloo or NCCL report the lost peer) or the process group's timeout expires,
    as with any DDP loop; let the exception end the process rather than catching it and
    carrying on.

    Args:
        model: any module; it is moved to ``device``, and the optimizer's state (momentum,
            moments) with it. The optimizer must hold its parameters.
        loader: an iterable of ``(inputs, targets)`` batches, iterated once per epoch (a
            ``DataLoader``, a ``TensorLoader``, a list).
        optimizer: the optimizer.
        epochs: number of epochs, >= 0.
        loss_fn: ``loss_fn(outputs, targets) -> scalar``; default ``nn.CrossEntropyLoss()``.
        device: where to train; ``None`` (the default) for the device the model is on: that
            of its first parameter or buffer, the CPU for a model with neither, as in
            :func:`evaluate`. CUDA is used only when asked for or when the model is there.
        scheduler: a learning-rate scheduler stepped once per epoch. ``ReduceLROnPlateau``
            is stepped with ``val_loss`` (the epoch's training loss without ``eval_loader``).
        callbacks: hooks called in order (see :class:`~deepzip.train.Callback`).
        eval_loader: ``(inputs, targets)`` batches evaluated at each epoch end.
        max_grad_norm: clip the total gradient norm of the optimizer's parameters to this
            value (> 0) before each step.
        seed: when given, :func:`~deepzip.train.seed_everything` is called with it first
            (initialise the model before, under your own seed, for reproducible weights).

    Returns:
        The per-epoch history (it also ran as the last callback).

    Raises:
        ConfigError: ``epochs < 0``, a ``max_grad_norm`` that is not a finite number > 0, a
            bad device or seed, a batch that is not a pair, a loader that yields no batch
            in an epoch, or a ``DistributedSampler`` whose ``num_replicas`` is not the
            default process group's world size.
        InvalidTensorError: the loss is NaN or infinite (no optimizer step is taken then).
    """
    if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 0:
        raise ConfigError(f"epochs must be an integer >= 0, got {epochs!r}")
    if max_grad_norm is not None and not (
        _is_number(max_grad_norm) and math.isfinite(max_grad_norm) and max_grad_norm > 0
    ):
        raise ConfigError(f"max_grad_norm must be a finite number > 0, got {max_grad_norm!r}")
    if seed is not None:
        seed_everything(seed)
    dev = _model_device(model, device)
    model.to(dev)
    _follow_parameters(optimizer)
    criterion: _LossFn = loss_fn if loss_fn is not None else nn.CrossEntropyLoss()
    # what the optimizer steps: what it zeroes each batch, and what max_grad_norm clips
    stepped = [p for group in optimizer.param_groups for p in group["params"]]
    history = FitHistory()
    hooks = [*callbacks, history]
    state = FitState(epochs=epochs, batches_per_epoch=_batches_per_epoch(loader))
    for cb in hooks:
        cb.on_fit_start(state)
    for epoch in range(epochs):
        if state.stop:
            break
        state.epoch, state.batch_in_epoch = epoch, 0
        state.epoch_loss, state.metrics = math.nan, {}
        state.batches_per_epoch = _batches_per_epoch(loader)  # a loader may change length
        _set_epoch(loader, epoch)
        sharded = _is_shard(loader)
        model.train()
        for cb in hooks:
            cb.on_epoch_start(state)
        loss_sum, samples = 0.0, 0
        for batch in loader:
            inputs, targets = _to_device(batch, dev)
            optimizer.zero_grad(set_to_none=True)
            loss = criterion(model(inputs), targets)
            torch.autograd.backward(loss)
            value = loss.item()
            if not math.isfinite(value):
                raise InvalidTensorError(
                    f"training loss is {value} at epoch {epoch + 1}/{epochs}, "
                    f"batch {state.batch_in_epoch + 1} of the epoch (step {state.step + 1})"
                )
            if max_grad_norm is not None:
                nn.utils.clip_grad_norm_(stepped, max_grad_norm)
            optimizer.step()
            loss_sum += value * inputs.shape[0]
            samples += inputs.shape[0]
            state.step += 1
            state.batch_in_epoch += 1
            state.last_loss, state.epoch_loss = value, loss_sum / samples
            for cb in hooks:
                cb.on_batch_end(state)
            if state.stop:
                break
        if state.batch_in_epoch == 0:
            raise ConfigError(f"the training loader yielded no batches in epoch {epoch + 1}")
        if sharded:
            totals = torch.tensor([loss_sum, samples], dtype=torch.float64, device=dev)
            dist.all_reduce(totals)
            state.epoch_loss = totals[0].item() / totals[1].item()
        if eval_loader is not None:
            result = evaluate(model, eval_loader, loss_fn=criterion, device=dev)
            state.metrics.update(val_loss=result.loss, val_accuracy=result.accuracy)
        if isinstance(scheduler, ReduceLROnPlateau):
            scheduler.step(state.metrics.get("val_loss", state.epoch_loss))
        elif scheduler is not None:
            scheduler.step()
        logger.info(
            "epoch %d/%d: train loss %.4f %s", epoch + 1, epochs, state.epoch_loss, state.metrics
        )
        for cb in hooks:
            cb.on_epoch_end(state)
    for cb in hooks:
        cb.on_fit_end(state)
    return history


def evaluate(
    model: nn.Module,
    loader: _Batches,
    *,
    loss_fn: _LossFn | None = None,
    device: str | torch.device | None = None,
) -> EvalResult:
    """Mean loss and accuracy of ``model`` over a loader, without gradients.

    Runs in eval mode under ``torch.no_grad`` (not ``inference_mode``: a tensor a module makes
    during the forward, such as a lazy module's parameters or a cache, would be an inference
    tensor that training can never update); each submodule's training flag is restored
    afterwards. Totals are accumulated on the device, so there is a single
    host synchronisation at the end.

    Under ``torch.distributed``: when it is initialised and the loader's sampler (``sampler``
    or ``batch_sampler.sampler``) is a ``torch.utils.data.DistributedSampler`` over more than
    one replica, the loss sum, the correct count and the sample count are all-reduced over
    the default process group at the end, so every rank returns the same global loss,
    accuracy and ``n``. Every rank must call ``evaluate`` then (it is a collective; an error
    on one rank leaves the others waiting in the all-reduce until that process exits or the
    group's timeout expires). The counts are those of the samples the sampler yields: unless
    it was built with ``drop_last=True``, a ``DistributedSampler`` pads its shards to equal
    length by repeating samples from the start of its order, so ``n`` may exceed the data
    set's length by up to ``num_replicas - 1`` and those samples count twice; with
    ``drop_last=True`` up to ``num_replicas - 1`` samples are left out instead. Any other
    loader (no sampler, another sampler, a ``DistributedSampler`` with ``num_replicas=1``,
    or ``torch.distributed`` not initialised) is evaluated on this process alone. A model
    wrapped in ``DistributedDataParallel`` may be passed as it is when every rank evaluates,
    but its first forward after a training one broadcasts the module's buffers (BatchNorm
    statistics) from rank 0, itself a collective: to evaluate on some ranks only, pass the
    wrapped ``model.module``.

    Args:
        model: a classifier returning ``N×C`` logits; it is moved to ``device``.
        loader: ``(inputs, targets)`` batches with class-index targets.
        loss_fn: ``loss_fn(outputs, targets) -> mean loss``; default ``nn.CrossEntropyLoss()``.
        device: where to run; ``None`` for the device the model is on (that of its first
            parameter or buffer; the CPU for a model with neither).

    Returns:
        The sample-weighted mean loss, accuracy and sample count.

    Raises:
        ConfigError: the loader yields no samples (on all ranks together, when all-reduced), a
            batch is not a pair, a bad device, or a ``DistributedSampler`` whose ``num_replicas``
            is not the default process group's world size.
        InvalidTensorError: a batch's outputs are not an ``N×C`` tensor (a tuple, a
            dictionary) or its targets not ``N`` class indices (packed distillation targets,
            one-hot rows).
    """
    dev = _model_device(model, device)
    sharded = _is_shard(loader)
    model.to(dev)
    criterion: _LossFn = loss_fn if loss_fn is not None else nn.CrossEntropyLoss()
    loss_sum = torch.zeros((), device=dev)
    correct = torch.zeros((), dtype=torch.long, device=dev)
    samples = 0
    with eval_mode(model), torch.no_grad():
        for index, batch in enumerate(loader):
            inputs, targets = _to_device(batch, dev)
            logits = _tensor_output(model(inputs), f"evaluation batch {index + 1}")
            if logits.dim() != 2 or targets.shape != logits.shape[:1]:
                # (N, 1 + C) distillation rows against N×C logits broadcast to an N×N
                # comparison: a wrong accuracy, not an error, when N == 1 + C
                raise InvalidTensorError(
                    f"evaluation batch {index + 1}: outputs {tuple(logits.shape)} and targets "
                    f"{tuple(targets.shape)} are not N×C logits and N class indices"
                )
            n = targets.shape[0]
            loss_sum += criterion(logits, targets).float() * n
            correct += (logits.argmax(dim=1) == targets).sum()
            samples += n
    if sharded:
        counts = torch.stack([correct, torch.tensor(samples, device=dev)])
        dist.all_reduce(loss_sum)
        dist.all_reduce(counts)
        correct, samples = counts[0], int(counts[1].item())
    if samples == 0:
        raise ConfigError("the evaluation loader yielded no samples")
    return EvalResult(loss=loss_sum.item() / samples, accuracy=correct.item() / samples, n=samples)


def predict_logits(
    model: nn.Module, loader: _Batches, device: str | torch.device | None = None
) -> torch.Tensor:
    """The model's outputs over a loader, concatenated along dim 0, on the CPU.

    Runs in eval mode without gradients (the result is an ordinary tensor); each
    submodule's training flag is restored afterwards.

    Under ``torch.distributed`` nothing is gathered: over a loader with a
    ``DistributedSampler`` each rank gets the outputs of its own shard, in its sampler's
    order (padding repeats included), which is what per-sample work on that rank (such as
    distillation targets for its own batches) needs. For the whole data set on one rank, use
    a loader without a ``DistributedSampler``. A model wrapped in ``DistributedDataParallel``
    broadcasts its buffers (BatchNorm statistics) from rank 0 in its first forward after a
    training one, a collective: pass ``model.module`` unless every rank runs the prediction.

    Args:
        model: any module; it is moved to ``device``.
        loader: ``(inputs, targets)`` batches; the targets are ignored.
        device: where to run; ``None`` for the device the model is on (that of its first
            parameter or buffer; the CPU for a model with neither).

    Returns:
        The outputs of all batches, in loader order.

    Raises:
        ConfigError: the loader yields no batches, a batch is not a pair, or a bad device.
        InvalidTensorError: the model returns something other than a tensor (a tuple, a
            dictionary).
    """
    dev = _model_device(model, device)
    model.to(dev)
    outputs: list[torch.Tensor] = []
    with eval_mode(model), torch.no_grad():
        for index, batch in enumerate(loader):
            inputs, _ = _split(batch)
            output = model(inputs.to(dev, non_blocking=dev.type != "cpu"))
            outputs.append(_tensor_output(output, f"prediction batch {index + 1}"))
    if not outputs:
        raise ConfigError("the prediction loader yielded no batches")
    return torch.cat(outputs).cpu()
