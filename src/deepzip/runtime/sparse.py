"""The runtime's weight format: a value-grouped CSR built straight from shared weights.

A quantized, pruned weight is ``codebook[index] * mask``. :func:`build_shared_csr` turns it
into a matrix of ``rows = shape[0]`` and ``columns = prod(shape[1:])`` that keeps only what
the product needs, and never a float value per weight:

* within each row the surviving weights are sorted by cluster index into *groups*, and each
  group's column indices (``cols``: uint16 when the columns fit, else int32) are padded to a
  whole number of blocks of 8 entries with the padding column ``columns``, which multiplies
  a zero;
* every block stores the cluster index of its group (``block_code``, uint8);
* ``row_ptr`` (int64, ``rows + 1``) gives each row's first entry (a multiple of 8).

A row then costs one gather and one multiply-add per entry, with the shared value read once
per block: ``y[r] = sum over blocks b of codebook[code[b]] * x[cols in b]``. At 9% density
and a 5-bit codebook that is about 2.4 bytes per surviving weight, 0.2 bytes per dense
weight, 1/17 of float32 (every array counted, see :attr:`SharedCSRArrays.nbytes`).

:class:`SharedCSRModule` holds those arrays as buffers (they move with ``.to(device)``) and
multiplies. By default (``backend="auto"``) a single input vector on the CPU goes through the
compiled gather kernel of :mod:`deepzip.runtime.kernels`, which reads only the compact arrays;
a batch (or a convolution's patches), and any input on another device (CUDA), goes through
``torch.sparse.mm`` (MKL on the CPU, cuSPARSE on CUDA) on a float32 CSR copy with int32
indices (an ordinary CSR: columns ascending within each row) that the module builds once per
device, 8 bytes per surviving weight, reported by :attr:`SharedCSRModule.cache_nbytes` and
dropped when the module moves, is copied or pickled, or loads a state dict.
``benchmarks/runtime.py`` measured why: at batch 1 the block kernel beat MKL's CSR product 2.8
to 3.5 times on AlexNet's fully connected layers, while at batch 8 and 64 MKL was 3.9 to 4.8
times faster than the compiled batch kernel (``backend="numba"`` keeps every product, and the
memory, on the compact arrays).
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch
from torch import nn

from deepzip.errors import ConfigError, InvalidTensorError
from deepzip.quantize.shared import SharedTensor
from deepzip.runtime.kernels import BLOCK, kernels, set_threads

__all__ = [
    "Backend",
    "SharedCSRArrays",
    "SharedCSRModule",
    "build_shared_csr",
    "check_shared",
]

Backend = Literal["auto", "numba", "torch"]
"""How a runtime module multiplies: ``"numba"`` (compiled CPU kernels on the compact arrays,
CPU tensors only), ``"torch"`` (``torch.sparse.mm`` on a float CSR copy, any device) or
``"auto"`` (numba for one input vector on the CPU, torch for batches and other devices)."""

_UINT16_MAX = 65535
_PARALLEL_MIN_WORK = 1 << 18
"""Entries × right-hand columns below which the kernels run on the calling thread only."""


@dataclass(frozen=True)
class SharedCSRArrays:
    """The arrays of one value-grouped CSR matrix (see the module docstring).

    Attributes:
        rows: number of rows (output features / channels).
        columns: number of columns (input features, or channels × kernel size).
        nnz: surviving weights (padding entries not counted).
        row_ptr: int64, ``rows + 1`` (first entry of each row; multiples of 8).
        block_code: uint8, one per block of 8 entries (its group's cluster index).
        cols: int16 holding uint16 bits (``columns < 65535``) or int32, one per entry.
        codebook: float32, ``(k,)``.
    """

    rows: int
    columns: int
    nnz: int
    row_ptr: torch.Tensor
    block_code: torch.Tensor
    cols: torch.Tensor
    codebook: torch.Tensor

    @property
    def nbytes(self) -> int:
        """Bytes of every array (row pointers, block codes, columns, codebook)."""
        return sum(
            t.numel() * t.element_size()
            for t in (self.row_ptr, self.block_code, self.cols, self.codebook)
        )


def check_shared(name: str, shared: SharedTensor, *, matrix: bool = True) -> None:
    """Validate a :class:`SharedTensor` before anything is built from it.

    Args:
        name: the tensor's name, for error messages.
        shared: ``(codebook, indices, mask)``.
        matrix: also require at least 2 dimensions (what a runtime matrix needs); ``False``
            for a tensor that may be decoded dense instead (a 1-D one always is).

    Raises:
        InvalidTensorError: a codebook that is not 1-D float with 1..256 finite values,
            indices that are not uint8 or reach past the codebook, a mask of another shape
            or not bool, or (with ``matrix``) fewer than 2 dimensions (names the tensor and
            the bad value).
    """
    cb, idx, mask = shared.codebook, shared.indices, shared.mask
    if cb.dim() != 1 or not 1 <= cb.numel() <= 256 or not cb.is_floating_point():
        raise InvalidTensorError(
            f"{name}: the codebook must be 1-D float with 1..256 entries, "
            f"got {cb.dtype} of shape {tuple(cb.shape)}"
        )
    if not bool(torch.isfinite(cb).all()):
        raise InvalidTensorError(f"{name}: the codebook holds NaN or inf values")
    if idx.dtype != torch.uint8:
        raise InvalidTensorError(f"{name}: indices must be uint8, got {idx.dtype}")
    if mask.dtype != torch.bool or mask.shape != idx.shape:
        raise InvalidTensorError(
            f"{name}: the mask must be bool of the indices' shape {tuple(idx.shape)}, "
            f"got {mask.dtype} {tuple(mask.shape)}"
        )
    if matrix and idx.dim() < 2:
        raise InvalidTensorError(
            f"{name}: a runtime matrix needs at least 2 dimensions, got shape {tuple(idx.shape)}"
        )
    if idx.numel() and bool(mask.any()):
        top = int(idx[mask].max())
        if top >= cb.numel():
            raise InvalidTensorError(
                f"{name}: an index reaches {top}, the codebook has {cb.numel()} entries"
            )


def build_shared_csr(shared: SharedTensor, *, name: str = "weight") -> SharedCSRArrays:
    """Build the value-grouped CSR of a shared tensor, on the CPU, without dense floats.

    The first dimension becomes the rows, the others are flattened into the columns (as a
    convolution's im2col product needs).

    Args:
        shared: ``(codebook, indices, mask)``; validated with :func:`check_shared`.
        name: the tensor's name, for error messages.

    Raises:
        InvalidTensorError: see :func:`check_shared`.
    """
    check_shared(name, shared)
    rows = int(shared.indices.shape[0])
    columns = math.prod(int(d) for d in shared.indices.shape[1:])
    k = int(shared.codebook.numel())
    mask = shared.mask.detach().cpu().reshape(rows, columns).numpy()
    index = shared.indices.detach().cpu().reshape(rows, columns).numpy()
    r_idx, c_idx = np.nonzero(mask)  # row-major: columns ascend within a row
    codes = index[r_idx, c_idx].astype(np.int64)
    nnz = int(r_idx.shape[0])
    key = r_idx.astype(np.int64) * k + codes
    order = np.argsort(key, kind="stable")  # by (row, code); columns stay ascending
    key = key[order]
    c_sorted = c_idx[order]
    starts = np.ones(nnz, dtype=bool)
    starts[1:] = key[1:] != key[:-1]
    group_of = np.cumsum(starts) - 1
    first = np.flatnonzero(starts)
    counts = np.diff(np.append(first, nnz))
    blocks = (counts + BLOCK - 1) // BLOCK
    group_key = key[first]
    group_row = group_key // k
    block_start = np.concatenate(([0], np.cumsum(blocks)[:-1])).astype(np.int64)
    total = BLOCK * int(blocks.sum())
    col_dtype = np.uint16 if columns < _UINT16_MAX else np.int32
    cols = np.full(total, columns, dtype=col_dtype)
    cols[BLOCK * block_start[group_of] + (np.arange(nnz) - first[group_of])] = c_sorted
    row_ptr = np.zeros(rows + 1, dtype=np.int64)
    np.cumsum(
        BLOCK * np.bincount(group_row, weights=blocks, minlength=rows).astype(np.int64),
        out=row_ptr[1:],
    )
    cols_t = torch.from_numpy(cols.view(np.int16) if col_dtype == np.uint16 else cols)
    return SharedCSRArrays(
        rows=rows,
        columns=columns,
        nnz=nnz,
        row_ptr=torch.from_numpy(row_ptr),
        block_code=torch.from_numpy(np.repeat(group_key % k, blocks).astype(np.uint8)),
        cols=cols_t,
        codebook=shared.codebook.detach().cpu().to(torch.float32).clone(),
    )


_EMPTY = np.empty(0, dtype=np.float32)


def _float32_numpy(t: torch.Tensor) -> np.ndarray:
    """A CPU tensor as a float32 numpy array (a view when it already is float32)."""
    t = t.detach()
    return (t if t.dtype == torch.float32 else t.to(torch.float32)).numpy()


def _check_backend(backend: str) -> None:
    if backend not in ("auto", "numba", "torch"):
        raise ConfigError(f"backend must be 'auto', 'numba' or 'torch', got {backend!r}")


class _SparseMatmul(torch.autograd.Function):
    """``W @ xt + bias`` with the gradient for ``xt`` only (the weights are fixed)."""

    @staticmethod
    def forward(
        ctx: Any, xt: torch.Tensor, bias: torch.Tensor | None, module: SharedCSRModule
    ) -> torch.Tensor:
        ctx.module = module
        return module._matmul_t(xt, bias)

    @staticmethod
    def backward(ctx: Any, *grads: torch.Tensor) -> tuple[torch.Tensor, None, None]:
        module: SharedCSRModule = ctx.module
        grad = grads[0].to(torch.float32)
        csr = module._torch_csr(grad.device)
        n = math.prod(grad.shape[1:])  # not -1: there may be no rows (no output features)
        flat = torch.sparse.mm(csr.t(), grad.reshape(module.rows, n))
        return flat.reshape(module.columns, *grad.shape[1:]), None, None


class SharedCSRModule(nn.Module):
    """Base of the runtime modules: the CSR arrays as buffers, and the product with them.

    Buffers (move with ``.to(device)``; saved in ``state_dict``): ``row_ptr``,
    ``block_code``, ``cols``, ``codebook``. The product is computed in
    float32 whatever the input's dtype; the output is cast back to it.
    """

    row_ptr: torch.Tensor
    block_code: torch.Tensor
    cols: torch.Tensor
    codebook: torch.Tensor

    def __init__(self, arrays: SharedCSRArrays, *, backend: Backend = "auto") -> None:
        super().__init__()
        _check_backend(backend)
        self.backend: Backend = backend
        self.rows = arrays.rows
        self.columns = arrays.columns
        self.nnz = arrays.nnz
        self.register_buffer("row_ptr", arrays.row_ptr)
        self.register_buffer("block_code", arrays.block_code)
        self.register_buffer("cols", arrays.cols)
        self.register_buffer("codebook", arrays.codebook)
        self._csr_cache: dict[torch.device, torch.Tensor] = {}
        self._numpy_cache: tuple[tuple[Any, ...], tuple[np.ndarray, ...]] | None = None

    # ------------------------------------------------------------------ sizes

    @property
    def density(self) -> float:
        """Surviving weights / all weights."""
        total = self.rows * self.columns
        return self.nnz / total if total else 0.0

    @property
    def weight_nbytes(self) -> int:
        """Bytes of the weight arrays (pointers, block codes, columns, codebook; not the bias)."""
        return sum(t.numel() * t.element_size() for t in self._weight_buffers())

    def _weight_buffers(self) -> tuple[torch.Tensor, ...]:
        """The weight arrays in the kernels' argument order."""
        return (self.row_ptr, self.block_code, self.cols, self.codebook)

    @property
    def cache_nbytes(self) -> int:
        """Bytes of the float CSR copies built for batches and other devices (0 until then)."""
        total = 0
        for csr in self._csr_cache.values():
            for t in (csr.crow_indices(), csr.col_indices(), csr.values()):
                total += t.numel() * t.element_size()
        return total

    def _apply(self, fn: Any, recurse: bool = True) -> SharedCSRModule:
        self._csr_cache = {}
        self._numpy_cache = None
        super()._apply(fn, recurse)  # type: ignore[no-untyped-call]
        return self

    def __getstate__(self) -> dict[str, Any]:
        # the float CSR copies are rebuilt on demand; a sparse CSR tensor cannot be deep-copied
        state = self.__dict__.copy()
        state["_csr_cache"] = {}
        state["_numpy_cache"] = None
        return state

    def _load_from_state_dict(self, *args: Any, **kwargs: Any) -> None:
        # new buffers (a codebook, columns) make the float CSR copies stale
        self._csr_cache = {}
        self._numpy_cache = None
        super()._load_from_state_dict(*args, **kwargs)

    # ------------------------------------------------------------------ products

    def _label(self) -> str:
        """The layer's name for error messages (``name`` of a subclass), else the class name."""
        name = getattr(self, "name", "")
        return name if isinstance(name, str) and name else type(self).__name__

    def _use_numba(self, device: torch.device, n: int) -> bool:
        """Whether the product with ``n`` right-hand columns on ``device`` runs in numba."""
        if self.backend == "numba":
            if device.type != "cpu":
                raise InvalidTensorError(
                    f"{self._label()}: the numba backend runs on the CPU only; got an input "
                    f"on {device}"
                )
            return True
        return self.backend == "auto" and device.type == "cpu" and n == 1

    def _torch_csr(self, device: torch.device) -> torch.Tensor:
        """The float32 CSR copy of the weight on ``device`` (built once per device)."""
        cached = self._csr_cache.get(device)
        if cached is not None:
            return cached
        cols = self.cols.to(device=device, dtype=torch.int64)
        if self.cols.dtype == torch.int16:
            cols = cols & _UINT16_MAX
        codes = torch.repeat_interleave(self.block_code.to(device).long(), BLOCK)
        row_lengths = torch.diff(self.row_ptr.to(device))
        row_of = torch.repeat_interleave(torch.arange(self.rows, device=device), row_lengths)
        keep = cols != self.columns
        row_of, cols, codes = row_of[keep], cols[keep], codes[keep]
        # a CSR tensor (MKL, cuSPARSE) wants each row's columns ascending, the groups order
        # them by cluster: sort by (row, column), each pair is there once
        order = torch.argsort(row_of * self.columns + cols)
        cols, codes = cols[order], codes[order]
        crow = torch.zeros(self.rows + 1, dtype=torch.int64, device=device)
        crow[1:] = torch.cumsum(torch.bincount(row_of, minlength=self.rows), 0)
        values = self.codebook.to(device=device, dtype=torch.float32)[codes]
        index = torch.int32 if max(self.nnz, self.columns) < 2**31 - 1 else torch.int64
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta")
            csr = torch.sparse_csr_tensor(
                crow.to(index),
                cols.to(index),
                values,
                size=(self.rows, self.columns),
                device=device,
                check_invariants=False,  # valid by construction (sorted, unique, in range)
            )
        self._csr_cache[device] = csr
        return csr

    def _matmul_t(self, xt: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        """``W @ xt + bias`` over the first dimension of float32 ``xt`` (``columns × ...``)."""
        rest = xt.shape[1:]
        n = math.prod(rest)
        if not self._use_numba(xt.device, n):
            csr = self._torch_csr(xt.device)
            flat = xt.reshape(self.columns, n).to(torch.float32)
            out: torch.Tensor = (
                torch.sparse.mm(csr, flat)
                if bias is None
                else torch.sparse.addmm(bias.to(torch.float32).unsqueeze(1), csr, flat)
            )
            return out.reshape(self.rows, *rest)
        k = kernels()
        # the thread pool only for enough work: a parallel launch costs tens of microseconds
        # (milliseconds on a busy machine, waiting for the pool's threads to be scheduled)
        threads = torch.get_num_threads()
        parallel = threads > 1 and self.cols.numel() * n >= _PARALLEL_MIN_WORK
        if parallel:
            set_threads(threads)
        spmv, spmm = (k.spmv, k.spmm) if parallel else (k.spmv_serial, k.spmm_serial)
        args = self._numpy_args()
        b = _EMPTY if bias is None else _float32_numpy(bias)
        # one copy of the input, with a zero row for the padding column (numpy: a few
        # microseconds less per call than the same steps in torch)
        x = _float32_numpy(xt).reshape(self.columns, n)
        padded = np.empty((self.columns + 1, n), dtype=np.float32)
        padded[: self.columns] = x
        padded[self.columns] = 0.0
        if n == 1:
            y = np.empty(self.rows, dtype=np.float32)
            spmv(*args, padded.reshape(-1), b, y)
        else:
            y = np.empty((self.rows, n), dtype=np.float32)
            spmm(*args, padded, b, y)
        return torch.from_numpy(y).reshape(self.rows, *rest)

    def _numpy_args(self) -> tuple[np.ndarray, ...]:
        """The buffers as numpy arrays for the kernels (cached while the buffers stay put)."""
        buffers = self._weight_buffers()
        key = tuple((t.data_ptr(), t.dtype) for t in buffers)
        if self._numpy_cache is not None and self._numpy_cache[0] == key:
            return self._numpy_cache[1]
        arrays = [t.detach().contiguous().numpy() for t in buffers[:2]]
        cols = buffers[2].detach().contiguous().numpy()
        arrays.append(cols.view(np.uint16) if cols.dtype == np.int16 else cols)
        arrays.append(_float32_numpy(buffers[3]))
        out = tuple(arrays)
        self._numpy_cache = (key, out)
        return out

    def matmul_t(self, xt: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
        """``W @ xt + bias`` over the first dimension of ``xt`` (``columns × ...``), in float32.

        ``xt`` may have any number of trailing dimensions (a strided view is fine: it is
        copied once); the result is ``rows × ...`` with the same trailing dimensions. The
        gradient flows to ``xt`` (the weights and the bias are fixed).

        Raises:
            InvalidTensorError: ``xt`` has the wrong shape, is not floating-point or is on
                another device than the module, or the numba backend was asked to run on a
                non-CPU tensor (names the layer).
        """
        if xt.dim() < 2 or xt.shape[0] != self.columns:
            raise InvalidTensorError(
                f"{self._label()}: expected an input of {self.columns} rows (× N), got shape "
                f"{tuple(xt.shape)}"
            )
        if not xt.is_floating_point():
            raise InvalidTensorError(
                f"{self._label()}: expected a floating-point input, got {xt.dtype}"
            )
        if xt.device != self.cols.device:
            raise InvalidTensorError(
                f"{self._label()}: the input is on {xt.device}, the module on "
                f"{self.cols.device}: move one with .to(device)"
            )
        if torch.is_grad_enabled() and xt.requires_grad:
            out: torch.Tensor = _SparseMatmul.apply(xt, bias, self)  # type: ignore[no-untyped-call]
            return out
        return self._matmul_t(xt.detach(), None if bias is None else bias.detach())
