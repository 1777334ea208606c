"""What a ``.dzip`` file holds, tensor by tensor and byte by byte: the save and inspect reports.

The writer returns a :class:`SaveReport`; :func:`deepzip.format.api.inspect` builds an
:class:`InspectReport` from a file alone. Both count every byte: the tensor rows plus the
header, directory and metadata add up exactly to the file size.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

__all__ = ["InspectReport", "PartRecord", "SaveReport", "Section", "TensorRecord"]


@dataclass(frozen=True)
class PartRecord:
    """One part of a tensor's region.

    Attributes:
        name: ``data``, ``codebook``, ``symbols``, ``gaps``, ``values``, ``filter`` or
            ``alias`` (the empty part of an alias).
        bytes: its length in the file.
        coder: ``"huffman"``, ``"ans"`` or ``"raw"`` for an entropy-coded stream; ``None`` for
            plain little-endian numbers (raw data, codebooks, sparse float values).
        symbols: symbols in the stream (``None`` for plain numbers).
        alphabet: the stream's alphabet size (``None`` for plain numbers).
    """

    name: str
    bytes: int
    coder: str | None = None
    symbols: int | None = None
    alphabet: int | None = None

    @property
    def bits_per_symbol(self) -> float | None:
        """Bits per coded symbol, everything the stream needs included (``None`` if not coded)."""
        if self.symbols is None:
            return None
        return 8.0 * self.bytes / self.symbols if self.symbols else 0.0

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return {
            "name": self.name,
            "bytes": self.bytes,
            "coder": self.coder,
            "symbols": self.symbols,
            "alphabet": self.alphabet,
            "bits_per_symbol": self.bits_per_symbol,
        }


@dataclass(frozen=True)
class TensorRecord:
    """One tensor of a ``.dzip`` file.

    Attributes:
        name: state-dict key.
        encoding: ``"raw"``, ``"shared_dense"``, ``"shared_sparse"``, ``"sparse_float"``,
            ``"bloomier"`` or ``"alias"``.
        shape: the tensor's shape.
        dtype: original dtype name (``"float32"``).
        weights: number of elements.
        kept: surviving (non-pruned) elements (an alias: its target's).
        k: codebook entries (shared encodings) or ``None``.
        gap_width: bits of the sparse index's gap field (sparse encodings) or ``None``.
        parts: the region's parts in file order (an alias: one empty ``alias`` part).
        alias_of: for an alias (tied weights), the name of the tensor whose data it shares;
            ``None`` for a tensor with its own data. The totals of :class:`SaveReport` and
            :class:`InspectReport` count an alias's elements once, with its target.
    """

    name: str
    encoding: str
    shape: tuple[int, ...]
    dtype: str
    weights: int
    kept: int
    k: int | None
    gap_width: int | None
    parts: tuple[PartRecord, ...]
    alias_of: str | None = None

    @property
    def bytes(self) -> int:
        """Bytes of the tensor's region (directory entry not included)."""
        return sum(p.bytes for p in self.parts)

    @property
    def bits_per_weight(self) -> float:
        """Region bits per element."""
        return 8.0 * self.bytes / self.weights if self.weights else 0.0

    def part(self, name: str) -> PartRecord | None:
        """The part called ``name``, or ``None``."""
        for p in self.parts:
            if p.name == name:
                return p
        return None

    @property
    def index_bits(self) -> int | None:
        """Bits of the cluster-index stream (``symbols`` or ``values``), or ``None``."""
        part = {"shared_dense": "symbols", "shared_sparse": "values"}.get(self.encoding)
        p = None if part is None else self.part(part)
        return None if p is None else 8 * p.bytes

    @property
    def gap_bits(self) -> int | None:
        """Bits of the relative index's gap stream, or ``None``."""
        p = self.part("gaps")
        return None if p is None else 8 * p.bytes

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return {
            "name": self.name,
            "encoding": self.encoding,
            "shape": list(self.shape),
            "dtype": self.dtype,
            "weights": self.weights,
            "kept": self.kept,
            "k": self.k,
            "gap_width": self.gap_width,
            "bytes": self.bytes,
            "bits_per_weight": self.bits_per_weight,
            "parts": [p.to_dict() for p in self.parts],
            "alias_of": self.alias_of,
        }


@dataclass(frozen=True)
class Section:
    """A byte range of the file.

    Attributes:
        name: ``header``, ``directory``, ``metadata`` or ``<tensor>:<part>``.
        kind: ``header``, ``tensor``, ``directory`` or ``metadata``.
        offset: first byte.
        length: byte count.
    """

    name: str
    kind: str
    offset: int
    length: int

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return {"name": self.name, "kind": self.kind, "offset": self.offset, "length": self.length}


def _float32_element_bytes(dtype: str) -> int:
    """Bytes of one element of a tensor of ``dtype`` (a name: ``"int64"``) in the model's
    float32 size: 4 for a floating-point dtype (its float32 form), the dtype's own size for
    any other (an integer or bool buffer is stored, and needed, as it is)."""
    found = getattr(torch, dtype, None)
    if isinstance(found, torch.dtype) and not found.is_floating_point:
        return found.itemsize
    return 4


def _float32_bytes(tensors: tuple[TensorRecord, ...]) -> int:
    """The float32 size of every distinct tensor (an alias is its target again): 4 bytes per
    floating-point element, an integer or bool element at its own size."""
    return sum(_float32_element_bytes(t.dtype) * t.weights for t in tensors if t.alias_of is None)


@dataclass(frozen=True)
class SaveReport:
    """What :func:`deepzip.save` / :func:`deepzip.compress_checkpoint` wrote.

    Attributes:
        path: the file written.
        tensors: one row per tensor, in file order (aliases of tied tensors included).
        skipped: ``(name, reason)`` of every tensor left uncompressed on purpose.
        file_bytes: real bytes on disk.
        overhead_bytes: header + directory + metadata.
        original_bytes: the distinct tensors' size in their original dtypes (a tensor tied
            under several names counts once).
    """

    path: str
    tensors: tuple[TensorRecord, ...]
    skipped: tuple[tuple[str, str], ...]
    file_bytes: int
    overhead_bytes: int
    original_bytes: int

    @property
    def float32_bytes(self) -> int:
        """The model's float32 size: 4 bytes per element of every distinct floating-point
        tensor, an integer or bool tensor (a buffer such as ``num_batches_tracked``) at its
        own element size (a tensor tied under several names counts once)."""
        return _float32_bytes(self.tensors)

    @property
    def ratio(self) -> float:
        """``float32_bytes / file_bytes``: what the model needs in float32 over the file."""
        return self.float32_bytes / self.file_bytes if self.file_bytes else 0.0

    @property
    def weights(self) -> int:
        """Elements over all distinct tensors (aliases not counted again)."""
        return sum(t.weights for t in self.tensors if t.alias_of is None)

    @property
    def kept(self) -> int:
        """Surviving elements over all distinct tensors (aliases not counted again)."""
        return sum(t.kept for t in self.tensors if t.alias_of is None)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return {
            "path": self.path,
            "file_bytes": self.file_bytes,
            "float32_bytes": self.float32_bytes,
            "original_bytes": self.original_bytes,
            "overhead_bytes": self.overhead_bytes,
            "ratio": self.ratio,
            "weights": self.weights,
            "kept": self.kept,
            "tensors": [t.to_dict() for t in self.tensors],
            "skipped": [{"name": n, "reason": r} for n, r in self.skipped],
        }


@dataclass(frozen=True)
class InspectReport:
    """A ``.dzip`` file described from its bytes alone (see :func:`deepzip.inspect`).

    Attributes:
        path: the file.
        version: ``(major, minor)`` of the format.
        tensors: one row per tensor, in file order.
        sections: every byte range of the file in order; their lengths sum to ``file_bytes``.
        metadata: the metadata section.
        file_bytes: the file's size.
    """

    path: str
    version: tuple[int, int]
    tensors: tuple[TensorRecord, ...]
    sections: tuple[Section, ...]
    metadata: dict[str, Any]
    file_bytes: int

    @property
    def float32_bytes(self) -> int:
        """The model's float32 size: 4 bytes per floating-point element, an integer or bool
        element at its own size (aliases not counted again)."""
        return _float32_bytes(self.tensors)

    @property
    def ratio(self) -> float:
        """``float32_bytes / file_bytes``."""
        return self.float32_bytes / self.file_bytes if self.file_bytes else 0.0

    def section_bytes(self, kind: str) -> int:
        """Total length of the sections of one kind."""
        return sum(s.length for s in self.sections if s.kind == kind)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return {
            "path": self.path,
            "version": list(self.version),
            "file_bytes": self.file_bytes,
            "float32_bytes": self.float32_bytes,
            "ratio": self.ratio,
            "sections": [s.to_dict() for s in self.sections],
            "tensors": [t.to_dict() for t in self.tensors],
            "metadata": self.metadata,
        }
