"""Training callbacks: the state they see, the base class, and the epoch history."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

__all__ = ["Callback", "EpochRecord", "FitHistory", "FitState", "LambdaCallback"]


@dataclass
class FitState:
    """The mutable state of a :func:`~deepzip.train.fit` run, passed to every hook.

    Attributes:
        epoch: index of the current epoch, from 0.
        epochs: number of epochs requested.
        step: optimizer steps done in the whole run.
        batch_in_epoch: optimizer steps done in the current epoch.
        batches_per_epoch: ``len(loader)`` taken at the current epoch's start, or ``None``
            when the loader has no length.
        last_loss: loss of the last batch (NaN before the first one).
        epoch_loss: sample-weighted mean loss over the current epoch's batches so far
            (NaN before the first one). Under ``torch.distributed`` with a
            ``DistributedSampler``, this rank's own during the epoch and the mean over all
            ranks' samples from the epoch end on (before evaluation and ``on_epoch_end``).
        metrics: evaluation results of the current epoch (``val_loss``, ``val_accuracy``),
            filled before ``on_epoch_end``; cleared at each epoch start. Callbacks may add
            their own; :class:`FitHistory` records whatever is there at the epoch end. Over a
            ``DistributedSampler`` the evaluation is all-reduced, so every rank sees the same
            values (see :func:`~deepzip.train.evaluate`).
        stop: set it to ``True`` to end training: checked after every batch (the epoch then
            ends early, with its usual evaluation and ``on_epoch_end``) and after every epoch.
            Under DDP set it on every rank or on none (decide from values the ranks share,
            such as ``metrics`` or the epoch-end ``epoch_loss``), or the ranks that go on
            block in a collective the others never join.
    """

    epochs: int
    batches_per_epoch: int | None
    epoch: int = 0
    step: int = 0
    batch_in_epoch: int = 0
    last_loss: float = math.nan
    epoch_loss: float = math.nan
    metrics: dict[str, float] = field(default_factory=dict)
    stop: bool = False


class Callback:
    """Base class of training callbacks: every hook is a no-op; override the ones needed."""

    def on_fit_start(self, state: FitState) -> None:
        """Called once, before the first epoch."""

    def on_epoch_start(self, state: FitState) -> None:
        """Called at the start of each epoch (``state.epoch`` already set)."""

    def on_batch_end(self, state: FitState) -> None:
        """Called after each optimizer step (``state.last_loss`` is that batch's loss)."""

    def on_epoch_end(self, state: FitState) -> None:
        """Called after each epoch, after evaluation and the scheduler step."""

    def on_fit_end(self, state: FitState) -> None:
        """Called once, after the last epoch (also after an early stop)."""


_Hook = Callable[[FitState], None]


class LambdaCallback(Callback):
    """A callback made of plain functions; hooks left as ``None`` do nothing.

    Args:
        on_fit_start: called as :meth:`Callback.on_fit_start`.
        on_epoch_start: called as :meth:`Callback.on_epoch_start`.
        on_batch_end: called as :meth:`Callback.on_batch_end`.
        on_epoch_end: called as :meth:`Callback.on_epoch_end`.
        on_fit_end: called as :meth:`Callback.on_fit_end`.
    """

    def __init__(
        self,
        *,
        on_fit_start: _Hook | None = None,
        on_epoch_start: _Hook | None = None,
        on_batch_end: _Hook | None = None,
        on_epoch_end: _Hook | None = None,
        on_fit_end: _Hook | None = None,
    ) -> None:
        self._fit_start = on_fit_start
        self._epoch_start = on_epoch_start
        self._batch_end = on_batch_end
        self._epoch_end = on_epoch_end
        self._fit_end = on_fit_end

    def on_fit_start(self, state: FitState) -> None:
        """Call the ``on_fit_start`` function, if any."""
        if self._fit_start is not None:
            self._fit_start(state)

    def on_epoch_start(self, state: FitState) -> None:
        """Call the ``on_epoch_start`` function, if any."""
        if self._epoch_start is not None:
            self._epoch_start(state)

    def on_batch_end(self, state: FitState) -> None:
        """Call the ``on_batch_end`` function, if any."""
        if self._batch_end is not None:
            self._batch_end(state)

    def on_epoch_end(self, state: FitState) -> None:
        """Call the ``on_epoch_end`` function, if any."""
        if self._epoch_end is not None:
            self._epoch_end(state)

    def on_fit_end(self, state: FitState) -> None:
        """Call the ``on_fit_end`` function, if any."""
        if self._fit_end is not None:
            self._fit_end(state)


@dataclass(frozen=True)
class EpochRecord:
    """One finished epoch in a :class:`FitHistory`."""

    epoch: int
    train_loss: float
    metrics: dict[str, float]

    def to_dict(self) -> dict[str, object]:
        """JSON-ready form."""
        return {"epoch": self.epoch, "train_loss": self.train_loss, "metrics": dict(self.metrics)}


class FitHistory(Callback):
    """Records each epoch's training loss and metrics; :func:`~deepzip.train.fit` returns one.

    Records accumulate when the same instance is passed to several runs.

    Attributes:
        records: one :class:`EpochRecord` per finished epoch, in order.
        stopped_early: whether the last run ended because a callback set ``state.stop``.
    """

    def __init__(self) -> None:
        self.records: list[EpochRecord] = []
        self.stopped_early = False

    def on_epoch_end(self, state: FitState) -> None:
        """Record the epoch."""
        self.records.append(EpochRecord(state.epoch, state.epoch_loss, dict(state.metrics)))

    def on_fit_end(self, state: FitState) -> None:
        """Note whether the run was stopped by a callback."""
        self.stopped_early = state.stop

    @property
    def train_loss(self) -> list[float]:
        """Mean training loss of each epoch."""
        return [r.train_loss for r in self.records]

    def metric(self, name: str) -> list[float]:
        """One metric over the epochs, NaN where an epoch did not record it."""
        return [r.metrics.get(name, math.nan) for r in self.records]

    def to_dict(self) -> dict[str, object]:
        """JSON-ready form."""
        return {
            "epochs": [r.to_dict() for r in self.records],
            "stopped_early": self.stopped_early,
        }
