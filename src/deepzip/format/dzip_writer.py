"""The ``.dzip`` writer: one tensor at a time, deterministic, atomic.

Tensors are written in the order they are added (the state-dict order); each region is
streamed to a temporary file next to the destination as soon as it is encoded, so memory holds
one tensor at a time. The directory, the metadata and finally the header are written when the
writer closes, and only then is the temporary file renamed over the destination. An exception
anywhere leaves the destination as it was (the old file, or none). See ``docs/format.md``.
"""

from __future__ import annotations

import math
import operator
import os
import sys
import zlib
from collections.abc import Iterable, Mapping, Sequence
from contextlib import ExitStack
from pathlib import Path
from types import TracebackType
from typing import Any, BinaryIO, Literal, SupportsIndex

import numpy as np
import torch

from deepzip._atomic import atomic_open
from deepzip._select import masked_values
from deepzip.coding.bloomier import BloomierFilter
from deepzip.coding.sparse_index import encode_relative, width_candidates
from deepzip.coding.streams import EncodedStream, encode_symbols, symbol_counts
from deepzip.config import CoderName, check_coder
from deepzip.errors import ConfigError, CorruptFileError, DeepZipError, InvalidTensorError
from deepzip.format.dzip_report import PartRecord, SaveReport, TensorRecord
from deepzip.format.dzip_spec import (
    DTYPE_IDS,
    ENCODING_MINOR,
    FLOAT_DTYPE_IDS,
    FORMAT_MAJOR,
    HEADER,
    HEADER_CRC_SPAN,
    HEADER_SIZE,
    MAGIC,
    MAX_DIRECTORY_BYTES,
    MAX_ELEMENTS,
    MAX_GAP_WIDTH,
    MAX_K,
    MAX_METADATA_BYTES,
    MAX_NAME_BYTES,
    MAX_RANK,
    MAX_TENSORS,
    MIN_GAP_WIDTH,
    PARAM_FIELDS,
    Encoding,
    TensorEntry,
    canonical_json,
    dtype_name,
    user_metadata_offender,
)
from deepzip.quantize.shared import SharedTensor

__all__ = [
    "CoderName",
    "DzipWriter",
    "GapWidth",
    "Layout",
    "check_layout",
    "check_little_endian",
]

Layout = Literal["auto", "dense", "sparse"]
GapWidth = int | Literal["auto"]
"""A relative index's gap width: ``1..16`` bits, or ``"auto"`` (the one giving the smallest
region: the widths are ranked by their estimated size, and the best one or two encoded
(``deepzip.coding.sparse_index.width_candidates``); exactly the best fixed width with Huffman
or raw coding, and with ANS within the few bytes its size estimate can be off on a tiny
index)."""

_LAYOUTS = ("auto", "dense", "sparse")


def check_layout(layout: object, name: str | None = None) -> None:
    """Refuse a ``layout`` that is not one of ``"auto"``, ``"dense"``, ``"sparse"``.

    Raises:
        ConfigError: naming the value (and the tensor ``name``, when given).
    """
    if not isinstance(layout, str) or layout not in _LAYOUTS:
        where = f"{name}: " if name is not None else ""
        raise ConfigError(
            f"{where}layout must be one of {', '.join(map(repr, _LAYOUTS))}, got {layout!r}"
        )


_Part = bytes | memoryview


def check_little_endian() -> None:
    """Raise ``DeepZipError`` on a big-endian host (the format is little-endian throughout)."""
    if sys.byteorder != "little":  # pragma: no cover - no big-endian CI machine
        raise DeepZipError("deepzip's .dzip I/O needs a little-endian host")


def _check_gap_width(name: str, width: GapWidth) -> None:
    if width == "auto":
        return
    if isinstance(width, bool) or not isinstance(width, int):
        raise ConfigError(f"{name}: gap width must be an integer or 'auto', got {width!r}")
    if not MIN_GAP_WIDTH <= width <= MAX_GAP_WIDTH:
        raise ConfigError(
            f"{name}: gap width must be in {MIN_GAP_WIDTH}..{MAX_GAP_WIDTH} bits, got {width}"
        )


def _check_not_meta(name: str, *tensors: torch.Tensor) -> None:
    """Refuse a tensor on the ``meta`` device: it has a shape but no values to store."""
    if any(t.is_meta for t in tensors):
        raise InvalidTensorError(
            f"{name}: a tensor on the meta device has no values to store; materialize the "
            "model first (model.to_empty(device=...) and load its weights)"
        )


def tensor_bytes(tensor: torch.Tensor) -> memoryview:
    """The little-endian bytes of a CPU tensor, without a copy when it is contiguous.

    A bool element is written as 0 or 1 (section 5 of ``docs/format.md``) whatever its storage
    byte: a bool tensor viewed from other bytes (``uint8_tensor.view(torch.bool)``) reads as
    ``True`` for any non-zero byte, so such bytes are normalised to 1 (a copy, only then). A
    view with the negative bit (``c.conj().imag``) is written with its values, negated.
    """
    t = tensor.detach().cpu().resolve_neg().contiguous()
    if t.numel() == 0:
        return memoryview(b"")
    if t.dtype == torch.bool:
        t = t.view(torch.uint8)
        if bool((t > 1).any()):
            t = (t != 0).to(torch.uint8)
    # contiguous, so the elements are consecutive in the storage, but a dimension of size 1
    # may have any stride (``w[:1, 0]`` has stride 4), which a view to bytes refuses
    flat = t.as_strided((t.numel(),), (1,))
    return flat.view(torch.uint8).numpy().data


class DzipWriter:
    """Write a ``.dzip`` file tensor by tensor.

    Use as a context manager; on a clean exit the file is completed (directory, metadata,
    header) and renamed over ``path``; on an exception nothing at ``path`` changes::

        with DzipWriter("net.dzip", metadata={"user": {"task": "demo"}}) as w:
            w.add_raw("fc.bias", bias)
            w.add_shared("fc.weight", shared)
        report = w.report

    Args:
        path: destination file.
        coder: default entropy coder of every stream: ``"auto"`` (the smaller of Huffman and
            ANS, per stream), ``"huffman"``, ``"ans"`` or ``"raw"`` (fixed width).
        metadata: the JSON object stored in the metadata section (canonical JSON; may be
            replaced through :attr:`metadata` before the writer closes). Its ``"user"``
            value, when there is one, must map strings to strings (``docs/format.md`` section
            9), else ``ConfigError`` (here, or on closing for a replaced one; nothing is
            written).
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        coder: CoderName = "auto",
        metadata: Mapping[str, Any] | None = None,
    ) -> None:
        check_little_endian()
        check_coder(coder)
        self.path = Path(path)
        self.coder: CoderName = coder
        self.metadata: dict[str, Any] = dict(metadata or {})
        self._check_user_metadata()
        self.skipped: list[tuple[str, str]] = []
        self._entries: list[TensorEntry] = []
        self._records: list[TensorRecord] = []
        self._names: set[str] = set()
        self._index: dict[str, int] = {}
        self._offset = HEADER_SIZE
        self._stack = ExitStack()
        self._fh: BinaryIO | None = None
        self._report: SaveReport | None = None
        self._used = False

    # ------------------------------------------------------------------ context management

    def __enter__(self) -> DzipWriter:
        """Open the temporary file. A writer writes one file: it cannot be entered again.

        Raises:
            DeepZipError: the writer was already entered (it is open, finished or failed).
        """
        if self._used:
            raise DeepZipError(
                f"{self.path}: this DzipWriter was already used (a writer writes one file; "
                "make a new one)"
            )
        fh = self._stack.enter_context(atomic_open(self.path))
        self._used = True
        try:
            fh.write(bytes(HEADER_SIZE))  # the header is written last
        except BaseException as err:
            self._stack.__exit__(type(err), err, err.__traceback__)  # removes the temp file
            raise
        self._fh = fh
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        try:
            if exc is None:
                self._finish()
        except BaseException as err:
            self._fh = None
            self._stack.__exit__(type(err), err, err.__traceback__)  # removes the temp file
            raise
        self._fh = None
        self._stack.__exit__(exc_type, exc, tb)

    @property
    def report(self) -> SaveReport:
        """The report of the finished file (after the ``with`` block)."""
        if self._report is None:
            raise DeepZipError(f"{self.path}: the writer has not finished yet")
        return self._report

    @property
    def records(self) -> tuple[TensorRecord, ...]:
        """Rows of the tensors added so far."""
        return tuple(self._records)

    # ------------------------------------------------------------------------ adding tensors

    def add_raw(self, name: str, tensor: torch.Tensor) -> TensorRecord:
        """Store ``tensor`` as its little-endian elements (encoding ``RAW``)."""
        t = tensor.detach()
        self._check_tensor(name, t)
        parts = [(PartRecord("data", 0), tensor_bytes(t))]
        return self._emit(name, Encoding.RAW, t.dtype, tuple(t.shape), 0, 0, t.numel(), parts)

    def add_shared(
        self,
        name: str,
        shared: SharedTensor,
        *,
        dtype: torch.dtype = torch.float32,
        gap_width: GapWidth = "auto",
        layout: Layout = "auto",
        coder: CoderName | None = None,
    ) -> TensorRecord:
        """Store a quantized tensor ``codebook[indices] * mask`` (shared encodings).

        Args:
            name: state-dict key.
            shared: float codebook of 1..256 entries, uint8 indices and bool mask (same
                shape). Indices at pruned positions are not stored (they read back as 0).
            dtype: the dtype decoding restores (float32, float16, bfloat16 or float64).
            gap_width: gap field bits of the relative sparse index (``SHARED_SPARSE``), or
                ``"auto"`` for the width that makes the region smallest (see :data:`GapWidth`).
            layout: ``"dense"`` codes one symbol per element (symbol ``k`` = pruned);
                ``"sparse"`` codes Deep Compression's relative index (gaps + values);
                ``"auto"`` writes dense when nothing is pruned, else the one that adds fewer
                bytes to the file (its region and its directory entry).
            coder: entropy coder of the streams (default: the writer's).

        Raises:
            InvalidTensorError: codebook, indices or mask malformed (names the tensor).
            ConfigError: bad ``gap_width``, ``layout`` or ``coder``.
        """
        coder = self.coder if coder is None else coder
        check_coder(coder)
        check_layout(layout, name)
        _check_gap_width(name, gap_width)
        codebook, indices, mask = self._check_shared(name, shared, dtype)
        k = codebook.size
        kept = int(mask.sum())
        shape = tuple(shared.indices.shape)
        cb_part = (PartRecord("codebook", 0), memoryview(codebook.astype("<f4").tobytes()))
        candidates: list[tuple[Encoding, int, list[tuple[PartRecord, _Part]]]] = []
        if layout == "sparse" or (layout == "auto" and kept < mask.size):
            kept_indices = indices[mask]  # C order
            if gap_width == "auto":
                counts = symbol_counts(kept_indices, k)
                widths = width_candidates(mask, counts, coder=coder)
            else:
                widths = [gap_width]
            for width in widths:
                sparse = self._sparse(kept_indices, mask, k, width, coder)
                candidates.append((Encoding.SHARED_SPARSE, width, [cb_part, *sparse]))
        if layout in ("dense", "auto"):
            dense = self._dense(indices, mask, k, coder)
            candidates.append((Encoding.SHARED_DENSE, 0, [cb_part, dense]))

        def stored(c: tuple[Encoding, int, list[tuple[PartRecord, _Part]]]) -> int:
            lengths = [_nbytes(p) for _, p in c[2]]
            entry = _entry(name, c[0], dtype, shape, k, c[1], kept, lengths)
            return sum(lengths) + len(entry.pack())

        # the fewest bytes in the file (region and directory entry: a sparse entry has one
        # more part and a gap width) win; on a tie the first (sparse, best-ranked width)
        encoding, width, parts = min(candidates, key=stored)
        return self._emit(name, encoding, dtype, shape, k, width, kept, parts)

    def add_sparse_float(
        self,
        name: str,
        tensor: torch.Tensor,
        mask: torch.Tensor,
        *,
        gap_width: GapWidth = "auto",
        coder: CoderName | None = None,
    ) -> TensorRecord:
        """Store a pruned, unquantized float tensor: relative index + values (``SPARSE_FLOAT``).

        The values at ``mask == False`` are not stored; they read back as zeros. ``gap_width``
        is as for :meth:`add_shared` (every filler entry costs a stored float value too).
        """
        coder = self.coder if coder is None else coder
        check_coder(coder)
        _check_gap_width(name, gap_width)
        _check_not_meta(name, tensor, mask)
        t = tensor.detach().cpu()
        self._check_tensor(name, t)
        if DTYPE_IDS[t.dtype] not in FLOAT_DTYPE_IDS:
            raise InvalidTensorError(f"{name}: SPARSE_FLOAT needs a float tensor, got {t.dtype}")
        if mask.shape != t.shape or mask.dtype != torch.bool:
            raise InvalidTensorError(
                f"{name}: mask must be bool of shape {tuple(t.shape)}, "
                f"got {mask.dtype} {tuple(mask.shape)}"
            )
        m = mask.detach().cpu().contiguous().numpy()
        kept = int(m.sum())
        kept_values = masked_values(t, mask.cpu())
        if gap_width == "auto":
            value_bits = 8 * t.element_size()
            widths = width_candidates(m, value_bits=value_bits, coder=coder)
        else:
            widths = [gap_width]
        best: tuple[int, int, list[tuple[PartRecord, _Part]]] | None = None
        for width in widths:  # one candidate's values in memory besides the best so far
            index = encode_relative(m, np.zeros(kept, dtype=np.uint8), width, filler=1)
            is_value = np.asarray(index.values) == 0
            values = torch.zeros(len(is_value), dtype=t.dtype)
            values[torch.from_numpy(is_value)] = kept_values
            gaps = encode_symbols(np.asarray(index.gaps), 1 << width, coder=coder)
            parts = [_stream_part("gaps", gaps), (PartRecord("values", 0), tensor_bytes(values))]
            size = sum(_nbytes(p) for _, p in parts)
            if best is None or size < best[0]:  # on a tie the best-ranked width
                best = (size, width, parts)
            del index, is_value, values, gaps, parts
        assert best is not None
        _, width, parts = best
        shape = tuple(t.shape)
        return self._emit(name, Encoding.SPARSE_FLOAT, t.dtype, shape, 0, width, kept, parts)

    def add_bloomier(
        self,
        name: str,
        codebook: torch.Tensor,
        filter_bytes: bytes,
        shape: tuple[int, ...],
        *,
        dtype: torch.dtype = torch.float32,
        decoded: SharedTensor | None = None,
    ) -> TensorRecord:
        """Store a Weightless layer: codebook + Bloomier filter (``BLOOMIER``, format 1.1).

        The filter maps every position (C order) to a value: below the codebook's size ``k``
        it is a cluster index, anything else is a zero. No position is stored.

        Args:
            name: state-dict key.
            codebook: float codebook of 1..256 entries, as many as the filter's values.
            filter_bytes: the serialised filter (``deepzip.coding.bloomier``) covering exactly
                ``prod(shape)`` positions.
            shape: the tensor's shape.
            dtype: the dtype decoding restores (float32, float16, bfloat16 or float64).
            decoded: the indices and mask the layer has in memory, when known: the filter must
                decode to exactly them (else the file would decode to another layer).

        Raises:
            InvalidTensorError: a bad codebook, dtype or shape, or a filter that does not parse,
                does not cover the shape, has another number of values than the codebook, or
                does not decode to ``decoded``'s indices and mask.
        """
        cb = codebook.detach()
        self._check_codebook(name, "a Bloomier tensor", dtype, cb)
        dims = self._check_shape(name, shape)
        k = cb.numel()
        try:
            bloomier = BloomierFilter.from_bytes(
                filter_bytes, name=name, n_positions=math.prod(dims)
            )
        except CorruptFileError as exc:
            raise InvalidTensorError(f"not a valid Bloomier filter: {exc}") from exc
        if bloomier.num_values != k:
            raise InvalidTensorError(
                f"{name}: the filter holds {bloomier.num_values} values, the codebook {k}"
            )
        if decoded is None:
            kept = sum(int((values < k).sum()) for _, values in bloomier.decode_blocks())
        elif bloomier.decodes_to(
            decoded.mask.detach().cpu().numpy(), decoded.indices.detach().cpu().numpy()
        ):
            kept = int(decoded.mask.sum())
        else:
            raise InvalidTensorError(
                f"{name}: the Bloomier filter does not decode to the layer's indices and mask "
                "(the file would decode to other weights)"
            )
        table = cb.cpu().to(torch.float32).numpy().astype("<f4")
        parts = [
            (PartRecord("codebook", 0), memoryview(table.tobytes())),
            (PartRecord("filter", 0), memoryview(bytes(filter_bytes))),
        ]
        return self._emit(name, Encoding.BLOOMIER, dtype, dims, k, 0, kept, parts)

    def add_alias(self, name: str, target: str) -> TensorRecord:
        """Record ``name`` as another name of the tensor ``target`` (``ALIAS``, format 1.2).

        For tied weights: one tensor under two state-dict keys (a module registered twice, an
        embedding and an output layer sharing a ``Parameter``). The data is stored once, under
        ``target``; ``name`` costs only its directory entry and decodes to exactly ``target``'s
        value, shape and dtype. ``target`` must have been added before; if it is itself an
        alias, ``name`` aliases the tensor it stands for (the format has no chains).

        Raises:
            InvalidTensorError: a bad or repeated ``name``, or no tensor ``target`` yet.
        """
        self._check_name(name)
        index = self._index.get(target) if isinstance(target, str) else None
        if index is None:
            raise InvalidTensorError(
                f"{name}: cannot alias {target!r}: no such tensor was added before it"
            )
        entry, record = self._entries[index], self._records[index]
        if entry.target is not None:  # an alias of an alias: point at the data itself
            index = entry.target
            entry, record = self._entries[index], self._records[index]
        return self._emit(
            name,
            Encoding.ALIAS,
            entry.dtype,
            entry.shape,
            0,
            0,
            record.kept,
            [(PartRecord("alias", 0), memoryview(b""))],
            target=index,
        )

    def skip(self, name: str, reason: str) -> None:
        """Record that ``name`` was left uncompressed on purpose (listed in the report)."""
        self.skipped.append((name, reason))

    # ------------------------------------------------------------------------------- internals

    @staticmethod
    def _dense(
        indices: np.ndarray[Any, Any], mask: np.ndarray[Any, Any], k: int, coder: CoderName
    ) -> tuple[PartRecord, _Part]:
        if bool(mask.all()):
            return _stream_part("symbols", encode_symbols(indices.reshape(-1), k, coder=coder))
        symbols = indices.reshape(-1).astype(np.uint16 if k >= 256 else np.uint8)
        symbols[~mask.reshape(-1)] = k
        return _stream_part("symbols", encode_symbols(symbols, k + 1, coder=coder))

    @staticmethod
    def _sparse(
        kept_indices: np.ndarray[Any, Any],
        mask: np.ndarray[Any, Any],
        k: int,
        width: int,
        coder: CoderName,
    ) -> list[tuple[PartRecord, _Part]]:
        index = encode_relative(mask, kept_indices, width, filler=k)
        gaps = encode_symbols(np.asarray(index.gaps), 1 << width, coder=coder)
        vals = encode_symbols(np.asarray(index.values), k + 1, coder=coder)
        return [_stream_part("gaps", gaps), _stream_part("values", vals)]

    def _check_name(self, name: str) -> None:
        if not isinstance(name, str) or not name:
            raise InvalidTensorError(f"tensor name must be a non-empty string, got {name!r}")
        try:
            encoded = name.encode("utf-8")
        except UnicodeEncodeError as exc:
            raise InvalidTensorError(
                f"tensor name {name!r} is not valid Unicode: {exc.object[exc.start]!r} at "
                f"position {exc.start} is a lone surrogate (no UTF-8 encoding)"
            ) from None
        if len(encoded) > MAX_NAME_BYTES:
            raise InvalidTensorError(
                f"tensor name {name[:40]!r}... is longer than {MAX_NAME_BYTES} UTF-8 bytes"
            )
        if name in self._names:
            raise InvalidTensorError(f"tensor {name!r} is added twice")
        if len(self._names) >= MAX_TENSORS:
            raise InvalidTensorError(f"{name}: a .dzip file holds at most {MAX_TENSORS} tensors")

    def _check_codebook(self, name: str, what: str, dtype: torch.dtype, cb: torch.Tensor) -> None:
        """The name, the float dtype the tensor decodes to, and a 1-D float codebook.

        The codebook must be finite once cast to float32, the dtype it is stored in: a float64
        value beyond float32's range is refused rather than stored as infinity.
        """
        self._check_name(name)
        if dtype not in DTYPE_IDS or DTYPE_IDS[dtype] not in FLOAT_DTYPE_IDS:
            raise InvalidTensorError(
                f"{name}: {what} decodes to float32/float16/bfloat16/float64, not {dtype}"
            )
        if cb.dim() != 1 or not 1 <= cb.numel() <= MAX_K or not cb.is_floating_point():
            raise InvalidTensorError(
                f"{name}: codebook must be 1-D float with 1..{MAX_K} entries, "
                f"got {cb.dtype} {tuple(cb.shape)}"
            )
        _check_not_meta(name, cb)
        bad = torch.nonzero(~torch.isfinite(cb.to(torch.float32)))
        if bad.numel():
            i = int(bad[0, 0])
            value = float(cb[i])
            if not math.isfinite(value):
                raise InvalidTensorError(f"{name}: codebook holds NaN or infinity (entry {i})")
            raise InvalidTensorError(
                f"{name}: codebook entry {i} is {value!r}, beyond float32's range (codebooks "
                "are stored as float32: it would become infinity)"
            )

    def _check_shape(self, name: str, shape: Iterable[SupportsIndex]) -> tuple[int, ...]:
        """``shape`` as ints, within the caps: the rank, each dimension and the product."""
        bad = f"{name}: shape {shape!r} is not a sequence of integers"
        try:
            dims = tuple(shape)
            ints = tuple(operator.index(d) for d in dims)
        except TypeError:
            raise InvalidTensorError(bad) from None
        if any(isinstance(d, bool) for d in dims):
            raise InvalidTensorError(bad)
        if len(ints) > MAX_RANK:
            raise InvalidTensorError(f"{name}: rank {len(ints)} exceeds the cap of {MAX_RANK}")
        if any(not 0 <= d <= MAX_ELEMENTS for d in ints):
            raise InvalidTensorError(
                f"{name}: shape {ints} has a dimension outside 0..{MAX_ELEMENTS}"
            )
        if math.prod(ints) > MAX_ELEMENTS:
            raise InvalidTensorError(
                f"{name}: {math.prod(ints)} elements exceed the cap of {MAX_ELEMENTS}"
            )
        return ints

    def _check_tensor(self, name: str, t: torch.Tensor) -> None:
        self._check_name(name)
        _check_not_meta(name, t)
        if t.dtype not in DTYPE_IDS:
            raise InvalidTensorError(f"{name}: dtype {t.dtype} cannot be stored in a .dzip file")
        if t.is_sparse or t.layout != torch.strided:
            raise InvalidTensorError(f"{name}: only strided (dense) tensors can be stored")
        self._check_shape(name, tuple(t.shape))

    def _check_shared(
        self, name: str, shared: SharedTensor, dtype: torch.dtype
    ) -> tuple[np.ndarray[Any, Any], np.ndarray[Any, Any], np.ndarray[Any, Any]]:
        cb, idx, mask = shared.codebook.detach(), shared.indices.detach(), shared.mask.detach()
        _check_not_meta(name, idx, mask)
        self._check_codebook(name, "a shared tensor", dtype, cb)
        if idx.dtype != torch.uint8:
            raise InvalidTensorError(f"{name}: indices must be uint8, got {idx.dtype}")
        if mask.dtype != torch.bool or mask.shape != idx.shape:
            raise InvalidTensorError(
                f"{name}: mask must be bool of shape {tuple(idx.shape)}, "
                f"got {mask.dtype} {tuple(mask.shape)}"
            )
        self._check_shape(name, tuple(idx.shape))
        idx_np = idx.cpu().contiguous().numpy()
        mask_np = mask.cpu().contiguous().numpy()
        k = cb.numel()
        if mask_np.any() and int(idx_np[mask_np].max()) >= k:
            raise InvalidTensorError(
                f"{name}: an index reaches {int(idx_np[mask_np].max())}, "
                f"the codebook has {k} entries"
            )
        return cb.cpu().to(torch.float32).numpy(), idx_np, mask_np

    def _emit(
        self,
        name: str,
        encoding: Encoding,
        dtype: torch.dtype,
        shape: tuple[int, ...],
        k: int,
        gap_width: int,
        kept: int,
        parts: Iterable[tuple[PartRecord, _Part]],
        *,
        target: int = 0,
    ) -> TensorRecord:
        if self._fh is None:
            raise DeepZipError(f"{self.path}: use the writer inside a 'with' block")
        crc, lengths, records = 0, [], []
        for record, data in parts:
            self._fh.write(data)
            crc = zlib.crc32(data, crc)
            lengths.append(_nbytes(data))
            records.append(_with_bytes(record, lengths[-1]))
        entry = _entry(
            name, encoding, dtype, shape, k, gap_width, kept, lengths, self._offset, crc, target
        )
        self._offset += entry.length
        self._names.add(name)
        self._index[name] = len(self._entries)
        self._entries.append(entry)
        row = TensorRecord(
            name=name,
            encoding=encoding.name.lower(),
            shape=shape,
            dtype=dtype_name(dtype),
            weights=entry.numel,
            kept=kept,
            k=k or None,
            gap_width=gap_width or None,
            parts=tuple(records),
            alias_of=None if entry.target is None else self._entries[entry.target].name,
        )
        self._records.append(row)
        return row

    def _check_user_metadata(self) -> None:
        """Refuse a ``"user"`` metadata value that is not strings to strings, which a reader
        refuses as corrupt (``docs/format.md`` section 9).

        Raises:
            ConfigError: naming the file and the first bad key or value, with their types.
        """
        bad = user_metadata_offender(self.metadata)
        if bad is None:
            return
        key, value = bad
        got = (
            type(value).__name__
            if key is None
            else f"{key!r}: {value!r} ({type(key).__name__}: {type(value).__name__})"
        )
        raise ConfigError(f'{self.path}: metadata "user" must map strings to strings, got {got}')

    def _finish(self) -> None:
        assert self._fh is not None
        directory = b"".join(e.pack() for e in self._entries)
        if len(directory) > MAX_DIRECTORY_BYTES:
            raise DeepZipError(
                f"{self.path}: the directory would be {len(directory)} bytes, over the cap of "
                f"{MAX_DIRECTORY_BYTES}"
            )
        if not isinstance(self.metadata, Mapping):  # it may have been replaced
            raise ConfigError(
                f"{self.path}: metadata must be a mapping (a JSON object), got "
                f"{type(self.metadata).__name__}"
            )
        self._check_user_metadata()
        try:
            metadata = canonical_json(dict(self.metadata))
        except (TypeError, ValueError, RecursionError) as exc:
            raise ConfigError(f"{self.path}: metadata is not JSON-serialisable: {exc}") from exc
        if len(metadata) > MAX_METADATA_BYTES:
            raise ConfigError(
                f"{self.path}: metadata is {len(metadata)} bytes, over the cap of "
                f"{MAX_METADATA_BYTES}"
            )
        dir_offset = self._offset
        meta_offset = dir_offset + len(directory)
        file_size = meta_offset + len(metadata)
        self._fh.write(directory)
        self._fh.write(metadata)
        # the lowest minor version that defines every encoding used (older readers read the
        # rest: a file without aliases or Bloomier tensors is a 1.0 file)
        minor = max((ENCODING_MINOR[e.encoding] for e in self._entries), default=0)
        fields = (
            MAGIC,
            FORMAT_MAJOR,
            minor,
            0,
            file_size,
            dir_offset,
            len(directory),
            meta_offset,
            len(metadata),
            len(self._entries),
            zlib.crc32(directory),
            zlib.crc32(metadata),
        )
        head = HEADER.pack(*fields, 0)[:HEADER_CRC_SPAN]
        self._fh.seek(0)
        self._fh.write(HEADER.pack(*fields, zlib.crc32(head)))
        self._fh.seek(file_size)
        self._report = SaveReport(
            path=str(self.path),
            tensors=tuple(self._records),
            skipped=tuple(self.skipped),
            file_bytes=file_size,
            overhead_bytes=HEADER_SIZE + len(directory) + len(metadata),
            # an alias is the same tensor again: the model needs its bytes once
            original_bytes=sum(
                e.numel * _itemsize(e.dtype) for e in self._entries if e.target is None
            ),
        )


def _entry(
    name: str,
    encoding: Encoding,
    dtype: torch.dtype,
    shape: tuple[int, ...],
    k: int,
    gap_width: int,
    kept: int,
    lengths: Sequence[int],
    offset: int = 0,
    crc: int = 0,
    target: int = 0,
) -> TensorEntry:
    """The directory entry of a tensor (offset and CRC do not change its size)."""
    values = {"k": k, "gap_width": gap_width, "kept": kept, "target": target}
    params = tuple((key, values[key]) for key, _ in PARAM_FIELDS[encoding])
    return TensorEntry(name, encoding, dtype, shape, params, offset, crc, tuple(lengths))


def _nbytes(data: _Part) -> int:
    return memoryview(data).nbytes


def _itemsize(dtype: torch.dtype) -> int:
    return torch.empty((), dtype=dtype).element_size()


def _with_bytes(record: PartRecord, n: int) -> PartRecord:
    return PartRecord(record.name, n, record.coder, record.symbols, record.alphabet)


def _stream_part(name: str, stream: EncodedStream) -> tuple[PartRecord, _Part]:
    data = stream.to_bytes()
    coder = stream.coder.name.lower()
    return PartRecord(name, len(data), coder, stream.count, stream.alphabet_size), data
