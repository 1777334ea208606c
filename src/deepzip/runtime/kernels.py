"""Compiled CPU kernels (numba) that multiply by a :class:`~deepzip.runtime.sparse.SharedCSR`.

Importing this module imports nothing heavy: :func:`kernels` imports numba and defines the
kernels the first time it is called; numba compiles each kernel for the argument types of its
first call (``uint16`` or ``int32`` column indices) and caches the machine code on disk.

The matrix layout (see :mod:`deepzip.runtime.sparse`): within each row the surviving weights
are grouped by cluster index, each group padded to a multiple of :data:`BLOCK` entries with
the padding column ``pad`` (= the number of columns), and every block of :data:`BLOCK`
entries stores its cluster index (one byte). The one-vector kernel walks a row block by
block: it reads the block's shared value once and adds ``value * x[col]`` into eight running
sums, a fixed shape with no per-group loop and no remainder handling, which LLVM turns into
one 8-wide gather and one fused multiply-add per block. (The earlier form, a per-group loop
that summed inputs and multiplied once per group, measured 1.8 to 2.2 times slower on
AlexNet's fully connected shapes: its short, variable-length inner loops ran scalar.) With
several right-hand sides (``spmm``) every weight costs a vector operation anyway, so there
each weight is one fused multiply-add over the columns and the padding is skipped.

The kernels never raise; the callers validate shapes and dtypes.

Threads: the parallel kernels (``spmv``/``spmm``) may be called from several Python threads at
once when numba's threading layer is ``omp`` or ``tbb``. Numba's fallback layer,
``workqueue`` (chosen where neither OpenMP nor TBB is installed, e.g. a plain macOS install,
or asked for with ``NUMBA_THREADING_LAYER=workqueue``), is not thread-safe: two concurrent
parallel launches abort the process. So the parallel kernels run one call at a time (behind a
lock) until the first call has shown which layer numba loaded, and from then on only if that
layer is ``workqueue``; on ``omp``/``tbb`` they run without the lock. The lock covers only
these kernels: other ``parallel=True`` numba code called at the same time on ``workqueue``
can still collide with them.
"""

from __future__ import annotations

import functools
import threading
import types
from collections.abc import Callable
from typing import Any, NamedTuple

__all__ = ["BLOCK", "Kernels", "kernels", "set_threads"]

BLOCK = 8
"""Entries per block: every group's length is a multiple of it (padding entries read a zero).

The one-vector kernel's eight running sums are written out for this width."""

_TILE = 256
"""Columns of the right-hand side processed per pass in :func:`kernels` ``.spmm``."""


class Kernels(NamedTuple):
    """The compiled functions (see :func:`kernels` for their contracts).

    ``spmv``/``spmm`` run their rows on numba's thread pool; ``spmv_serial``/``spmm_serial``
    are the same code compiled without it, for one thread: a parallel launch waits for the
    pool's threads to be scheduled, which on a busy machine can cost milliseconds.
    """

    spmv: Callable[..., Any]
    spmm: Callable[..., Any]
    spmv_serial: Callable[..., Any]
    spmm_serial: Callable[..., Any]


class _LaunchGuard:
    """Serialises parallel kernel calls unless numba's threading layer is thread-safe.

    ``numba.threading_layer()`` is only known once a parallel kernel has run, so every call
    takes the lock until then; the first call records the layer, and calls stop taking the
    lock if it is not ``workqueue``.
    """

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.lock_free = False
        """Set once the loaded threading layer is known to be thread-safe (``omp``, ``tbb``)."""
        self.layer: str | None = None
        """The threading layer numba loaded (``None`` until a parallel kernel has run)."""

    def wrap(self, fn: Callable[..., Any]) -> Callable[..., Any]:
        """``fn`` (a ``parallel=True`` kernel), serialised as described above."""
        from numba.np.ufunc.parallel import threading_layer

        @functools.wraps(fn, updated=())
        def call(*args: Any) -> Any:
            if self.lock_free:
                return fn(*args)
            with self.lock:
                out = fn(*args)
                if self.layer is None:
                    try:
                        self.layer = str(threading_layer())  # type: ignore[no-untyped-call]
                    except ValueError:  # not launched (cannot happen after a parallel call)
                        return out
                    self.lock_free = self.layer != "workqueue"
                return out

        return call


_GUARD = _LaunchGuard()


@functools.cache
def kernels() -> Kernels:
    """Import numba and define the kernels (once per process).

    Arguments common to both: ``row_ptr`` (int64, rows + 1: first entry of each row, a
    multiple of :data:`BLOCK`), ``block_code`` (uint8: the cluster index of each block of
    :data:`BLOCK` entries), ``cols`` (uint16 or int32: the column of each entry, ``pad`` for
    padding), ``codebook`` (float32), ``bias`` (float32, ``rows`` values, or empty for no
    bias).

    * ``spmv(row_ptr, block_code, cols, codebook, x, bias, y)``:
      ``y[r] = sum_j W[r, j] x[j] + bias[r]``; ``x`` is float32 of length ``columns + 1``
      whose last value (the padding column) must be 0.
    * ``spmm(row_ptr, block_code, cols, codebook, xt, bias, y)``:
      ``y[r, n] = sum_j W[r, j] xt[j, n] + bias[r]``; ``xt`` is C-contiguous float32
      ``(columns + 1) × N`` whose last row (the padding column) must be 0, ``y`` is
      C-contiguous float32 ``rows × N``. The right-hand side is processed 256 columns at a
      time so that a row's partial sums stay in the L1 cache. Each weight costs one fused
      multiply-add over the columns, and a block stops at its first padding entry (padding
      only ever ends a group, so it fills the end of a block).

    ``spmv``/``spmm`` run their rows in parallel on numba's threads (see
    :func:`set_threads`; one call at a time on numba's ``workqueue`` threading layer, which
    is not thread-safe, see the module docstring); the ``_serial`` versions on the calling
    thread.
    """
    import numba
    import numpy as np

    def njit(fn: Callable[..., Any]) -> tuple[Callable[..., Any], Callable[..., Any]]:
        """Compile ``fn`` twice: with and without the thread pool (separate disk caches)."""
        # reassociation lets LLVM interleave the sums; NaN and inf keep their IEEE meaning
        opts: dict[str, Any] = {
            "fastmath": {"reassoc", "contract", "nsz"},
            "nogil": True,
            "cache": True,
            "boundscheck": False,
        }
        serial = types.FunctionType(
            fn.__code__, fn.__globals__, f"{fn.__name__}_serial", fn.__defaults__, fn.__closure__
        )
        serial.__qualname__ = f"{fn.__qualname__}_serial"
        parallel = _GUARD.wrap(numba.njit(parallel=True, **opts)(fn))
        return parallel, numba.njit(parallel=False, **opts)(serial)

    tile = _TILE

    def spmv(
        row_ptr: Any,
        block_code: Any,
        cols: Any,
        codebook: Any,
        x: Any,
        bias: Any,
        y: Any,
    ) -> None:
        has_bias = bias.shape[0] > 0
        for r in numba.prange(row_ptr.shape[0] - 1):
            s0 = np.float32(0.0)
            s1 = np.float32(0.0)
            s2 = np.float32(0.0)
            s3 = np.float32(0.0)
            s4 = np.float32(0.0)
            s5 = np.float32(0.0)
            s6 = np.float32(0.0)
            s7 = np.float32(0.0)
            for b in range(np.intp(row_ptr[r]) // BLOCK, np.intp(row_ptr[r + 1]) // BLOCK):
                v = codebook[np.intp(block_code[b])]
                p = BLOCK * b
                s0 += v * x[np.intp(cols[p])]
                s1 += v * x[np.intp(cols[p + 1])]
                s2 += v * x[np.intp(cols[p + 2])]
                s3 += v * x[np.intp(cols[p + 3])]
                s4 += v * x[np.intp(cols[p + 4])]
                s5 += v * x[np.intp(cols[p + 5])]
                s6 += v * x[np.intp(cols[p + 6])]
                s7 += v * x[np.intp(cols[p + 7])]
            acc = ((s0 + s1) + (s2 + s3)) + ((s4 + s5) + (s6 + s7))
            if has_bias:
                acc += bias[r]
            y[r] = acc

    def spmm(
        row_ptr: Any,
        block_code: Any,
        cols: Any,
        codebook: Any,
        xt: Any,
        bias: Any,
        y: Any,
    ) -> None:
        n_total = xt.shape[1]
        has_bias = bias.shape[0] > 0
        pad = xt.shape[0] - 1
        for r in numba.prange(row_ptr.shape[0] - 1):
            acc = np.empty(min(n_total, tile), np.float32)  # private: the loops vectorize
            b = bias[r] if has_bias else np.float32(0.0)
            for n0 in range(0, n_total, tile):
                w = min(tile, n_total - n0)
                for n in range(w):
                    acc[n] = b
                for blk in range(np.intp(row_ptr[r]) // BLOCK, np.intp(row_ptr[r + 1]) // BLOCK):
                    v = codebook[np.intp(block_code[blk])]
                    for p in range(BLOCK * blk, BLOCK * blk + BLOCK):
                        c = np.intp(cols[p])
                        if c == pad:  # the rest of the block is padding
                            break
                        for n in range(w):
                            acc[n] += v * xt[c, n0 + n]
                for n in range(w):
                    y[r, n0 + n] = acc[n]

    spmv_parallel, spmv_serial = njit(spmv)
    spmm_parallel, spmm_serial = njit(spmm)
    return Kernels(spmv_parallel, spmm_parallel, spmv_serial, spmm_serial)


def set_threads(n: int) -> int:
    """Run the parallel kernels on ``n`` threads (capped at numba's pool size; at least 1).

    Returns the number of threads set.
    """
    import numba

    n = max(1, min(int(n), int(getattr(numba.config, "NUMBA_NUM_THREADS", 1))))
    if numba.get_num_threads() != n:
        numba.set_num_threads(n)
    return n
