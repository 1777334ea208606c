"""Latency measurement for noisy, shared machines: interleaved repetitions, medians.

Each repetition runs every candidate once, in an order that rotates from one repetition to
the next, so a burst of load from another process hits every candidate alike; the reported
figure is the median of each candidate's repetitions.

CUDA runs asynchronously: a call returns once its kernels are queued. Given a CUDA
``device``, :func:`interleaved_medians` waits for the device (``torch.cuda.synchronize``)
after the warm-up, before starting each clock and before stopping it, so that a time covers
the work and not only its launch. On the CPU there is nothing to wait for.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Sequence

import numpy as np
import torch

from deepzip.errors import ConfigError

__all__ = ["CacheEvictor", "check_counts", "interleaved_medians", "median_ms"]


class CacheEvictor:
    """Reads and writes a buffer larger than the last-level cache (to time a cold start).

    Args:
        nbytes: buffer size (default 64 MiB, twice a 32 MiB L3).
    """

    def __init__(self, nbytes: int = 64 << 20) -> None:
        if nbytes < 1:
            raise ConfigError(f"nbytes must be >= 1, got {nbytes}")
        self._buf = torch.zeros(max(1, nbytes // 4), dtype=torch.float32)

    def __call__(self) -> None:
        """Touch every cache line of the buffer."""
        self._buf.add_(1.0)


def check_counts(repeats: int, warmup: int) -> None:
    """Validate the repetition counts of :func:`interleaved_medians`.

    Raises:
        ConfigError: ``repeats``/``warmup`` not an integer, ``repeats < 1`` or ``warmup < 0``.
    """
    for name, value in (("repeats", repeats), ("warmup", warmup)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
            raise ConfigError(f"{name} must be an integer, got {value!r}")
    if repeats < 1:
        raise ConfigError(f"repeats must be >= 1, got {repeats}")
    if warmup < 0:
        raise ConfigError(f"warmup must be >= 0, got {warmup}")


def interleaved_medians(
    candidates: Sequence[Callable[[], object]],
    *,
    repeats: int,
    warmup: int = 3,
    before_each: Callable[[], None] | None = None,
    device: torch.device | str | None = None,
) -> list[list[float]]:
    """Time each candidate ``repeats`` times, interleaved; return every time in milliseconds.

    Args:
        candidates: zero-argument callables (their results are discarded).
        repeats: timed repetitions of each candidate (>= 1).
        warmup: untimed runs of each candidate first.
        before_each: run (untimed) before every timed call, e.g. a :class:`CacheEvictor`.
        device: where the candidates do their work. On a CUDA device every timed call is
            bracketed by ``torch.cuda.synchronize(device)`` (after ``before_each``, before the
            clock starts; after the call, before it stops), and the warm-up is waited for;
            ``None`` or a CPU device: no synchronization.

    Returns:
        One list of times (ms) per candidate, in repetition order; take
        ``statistics.median`` of each (see :func:`median_ms`).

    Raises:
        ConfigError: ``repeats``/``warmup`` not an integer, ``repeats < 1``, ``warmup < 0``
            or a ``device`` that is not one.
    """
    check_counts(repeats, warmup)
    sync = _synchronizer(device)
    for fn in candidates:
        for _ in range(warmup):
            fn()
    sync()
    times: list[list[float]] = [[] for _ in candidates]
    n = len(candidates)
    for rep in range(repeats):
        for j in range(n):
            i = (rep + j) % n
            if before_each is not None:
                before_each()
            sync()
            start = time.perf_counter()
            candidates[i]()
            sync()
            times[i].append((time.perf_counter() - start) * 1e3)
    return times


def _no_sync() -> None:
    """Nothing to wait for (CPU work is done when the call returns)."""


def _synchronizer(device: torch.device | str | None) -> Callable[[], None]:
    """A function that waits for the work queued on ``device`` (a no-op off CUDA)."""
    if device is None:
        return _no_sync
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise ConfigError(f"device must be a torch device, got {device!r}") from exc
    if dev.type != "cuda":
        return _no_sync

    def sync() -> None:
        torch.cuda.synchronize(dev)

    return sync


def median_ms(times: Sequence[float]) -> float:
    """The median of a list of times.

    Raises:
        ConfigError: ``times`` is empty (nothing was timed).
    """
    if len(times) == 0:
        raise ConfigError("no times to take the median of: nothing was timed")
    return float(statistics.median(times))
