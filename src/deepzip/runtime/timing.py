"""Latency measurement for noisy, shared machines: interleaved repetitions, medians.

Each repetition runs every candidate once, in an order that rotates from one repetition to
the next, so a burst of load from another process hits every candidate alike; the reported
figure is the median of each candidate's repetitions.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Sequence

import torch

from deepzip.errors import ConfigError

__all__ = ["CacheEvictor", "interleaved_medians", "median_ms"]


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


def interleaved_medians(
    candidates: Sequence[Callable[[], object]],
    *,
    repeats: int,
    warmup: int = 3,
    before_each: Callable[[], None] | None = None,
) -> list[list[float]]:
    """Time each candidate ``repeats`` times, interleaved; return every time in milliseconds.

    Args:
        candidates: zero-argument callables (their results are discarded).
        repeats: timed repetitions of each candidate (>= 1).
        warmup: untimed runs of each candidate first.
        before_each: run (untimed) before every timed call, e.g. a :class:`CacheEvictor`.

    Returns:
        One list of times (ms) per candidate, in repetition order; take
        ``statistics.median`` of each (see :func:`median_ms`).

    Raises:
        ConfigError: ``repeats < 1`` or ``warmup < 0``.
    """
    if repeats < 1:
        raise ConfigError(f"repeats must be >= 1, got {repeats}")
    if warmup < 0:
        raise ConfigError(f"warmup must be >= 0, got {warmup}")
    for fn in candidates:
        for _ in range(warmup):
            fn()
    times: list[list[float]] = [[] for _ in candidates]
    n = len(candidates)
    for rep in range(repeats):
        for j in range(n):
            i = (rep + j) % n
            if before_each is not None:
                before_each()
            start = time.perf_counter()
            candidates[i]()
            times[i].append((time.perf_counter() - start) * 1e3)
    return times


def median_ms(times: Sequence[float]) -> float:
    """The median of a list of times."""
    return float(statistics.median(times))
