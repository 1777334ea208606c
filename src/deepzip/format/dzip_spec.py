"""Constants of the ``.dzip`` container: magic, version, caps, encoding and dtype ids.

This module is the executable half of ``docs/format.md`` (the normative spec); the two change
together. Nothing here does I/O.

Byte layout (all integers little-endian)::

    header (HEADER_SIZE bytes) | tensor regions, contiguous, directory order | directory | metadata

Each tensor region is the concatenation of its *parts* (for example codebook, gap stream and
value stream); the directory records, per tensor, its name, encoding, dtype, shape, encoding
parameters, region offset, region CRC-32 and part lengths. The metadata section is canonical
UTF-8 JSON.
"""

from __future__ import annotations

import json
import math
import struct
from collections.abc import Mapping
from dataclasses import dataclass
from enum import IntEnum
from typing import Any

import torch

from deepzip.errors import ConfigError

__all__ = [
    "DIRECTORY_ENTRY_MIN_SIZE",
    "DTYPE_IDS",
    "DTYPE_OF_ID",
    "ENCODING_MINOR",
    "ENCODING_PARTS",
    "ENTRY_FIXED",
    "ENTRY_TAIL",
    "FLOAT_DTYPE_IDS",
    "FORMAT_MAJOR",
    "FORMAT_MINOR",
    "FUTURE_ENCODING_IDS",
    "HEADER",
    "HEADER_CRC_SPAN",
    "HEADER_SIZE",
    "MAGIC",
    "MAX_DIRECTORY_BYTES",
    "MAX_ELEMENTS",
    "MAX_GAP_WIDTH",
    "MAX_K",
    "MAX_METADATA_BYTES",
    "MAX_NAME_BYTES",
    "MAX_PARAMS_BYTES",
    "MAX_PARTS",
    "MAX_RANK",
    "MAX_TENSORS",
    "MIN_GAP_WIDTH",
    "PARAMS",
    "PARAM_FIELDS",
    "SAFETENSORS_DTYPE",
    "Encoding",
    "TensorEntry",
    "canonical_json",
    "dtype_itemsize",
    "dtype_name",
    "json_kind",
    "user_metadata_offender",
]

MAGIC = b"\x89DZIP\r\n\x1a"
"""The first 8 bytes of every ``.dzip`` file (a non-ASCII first byte and CR LF / Ctrl-Z catch
text-mode transfers, as in PNG)."""

FORMAT_MAJOR = 1
"""Incompatible layout changes bump the major version; readers reject a newer major."""

FORMAT_MINOR = 2
"""Compatible additions (new encodings) bump the minor version; this is the newest one read.
A writer writes the lowest minor version that defines every encoding it used
(:data:`ENCODING_MINOR`)."""

HEADER = struct.Struct("<8sHHIQQQQQIIII")
"""magic, major, minor, flags, file_size, directory_offset, directory_length, metadata_offset,
metadata_length, tensor_count, directory_crc32, metadata_crc32, header_crc32."""

HEADER_SIZE = HEADER.size  # 72
HEADER_CRC_SPAN = HEADER_SIZE - 4
"""The header CRC-32 covers every header byte before it."""

# --------------------------------------------------------------------------------------- caps

MAX_TENSORS = 1 << 20
"""Most tensors in one file."""

MAX_NAME_BYTES = 4096
"""Longest tensor name, in UTF-8 bytes."""

MAX_RANK = 8
"""Most dimensions of a tensor."""

MAX_ELEMENTS = 1 << 32
"""Most elements of one tensor (a decoded tensor is allocated only below this)."""

MAX_PARTS = 8
"""Most parts of one tensor region."""

MAX_PARAMS_BYTES = 255
"""Longest encoding-parameter block of a directory entry."""

MAX_DIRECTORY_BYTES = 1 << 28
"""Longest directory section (256 MiB)."""

MAX_METADATA_BYTES = 1 << 26
"""Longest metadata section (64 MiB)."""

MAX_K = 256
"""Largest codebook (8-bit cluster indices)."""

MIN_GAP_WIDTH = 1
MAX_GAP_WIDTH = 16
"""Range of the relative sparse index's gap width, in bits."""

DIRECTORY_ENTRY_MIN_SIZE = 2 + 1 + 4 + 8 + 4 + 1 + 8
"""Smallest possible directory entry: a 1-byte name, rank 0, no parameters, one part."""

ENTRY_FIXED = struct.Struct("<BBBB")
"""encoding, dtype, rank, part_count (after the name)."""

ENTRY_TAIL = struct.Struct("<QI")
"""data_offset, data_crc32 (after the dims)."""

# ---------------------------------------------------------------------------------- encodings


class Encoding(IntEnum):
    """How a tensor's region is laid out (the directory's ``encoding`` byte).

    Ids 0-3 are defined by format 1.0, id 4 by format 1.1, id 5 by format 1.2. Ids in
    :data:`FUTURE_ENCODING_IDS`
    are reserved for encodings added by later minor versions; ids 128-255 are invalid.
    """

    RAW = 0
    """Little-endian elements of the original dtype."""
    SHARED_DENSE = 1
    """Codebook + one coded symbol per element (symbol ``k`` marks a pruned, zero element)."""
    SHARED_SPARSE = 2
    """Codebook + relative sparse index: coded gap stream and coded value stream."""
    SPARSE_FLOAT = 3
    """Relative sparse index (coded gap stream) + raw values of the original dtype."""
    BLOOMIER = 4
    """Codebook + Bloomier filter mapping every position to a cluster index (Weightless)."""
    ALIAS = 5
    """No data: the tensor is an earlier entry's tensor (tied weights), named by its index."""


FUTURE_ENCODING_IDS = range(6, 128)
"""Encoding ids reserved for later minor versions of the format."""

ENCODING_PARTS: dict[Encoding, tuple[str, ...]] = {
    Encoding.RAW: ("data",),
    Encoding.SHARED_DENSE: ("codebook", "symbols"),
    Encoding.SHARED_SPARSE: ("codebook", "gaps", "values"),
    Encoding.SPARSE_FLOAT: ("gaps", "values"),
    Encoding.BLOOMIER: ("codebook", "filter"),
    Encoding.ALIAS: ("alias",),
}
"""The names of each encoding's parts, in region order."""

ENCODING_MINOR: dict[Encoding, int] = {
    Encoding.RAW: 0,
    Encoding.SHARED_DENSE: 0,
    Encoding.SHARED_SPARSE: 0,
    Encoding.SPARSE_FLOAT: 0,
    Encoding.BLOOMIER: 1,
    Encoding.ALIAS: 2,
}
"""The minor version (of major 1) that defines each encoding."""

PARAM_FIELDS: dict[Encoding, tuple[tuple[str, str], ...]] = {
    Encoding.RAW: (),
    Encoding.SHARED_DENSE: (("k", "H"), ("kept", "Q")),
    Encoding.SHARED_SPARSE: (("k", "H"), ("gap_width", "B"), ("kept", "Q")),
    Encoding.SPARSE_FLOAT: (("gap_width", "B"), ("kept", "Q")),
    Encoding.BLOOMIER: (("k", "H"), ("kept", "Q")),
    Encoding.ALIAS: (("target", "I"),),
}
"""Each encoding's parameter block: ``(name, struct code)`` fields, little-endian, no padding;
the block's length is exact."""

PARAMS: dict[Encoding, struct.Struct] = {
    enc: struct.Struct("<" + "".join(code for _, code in fields))
    for enc, fields in PARAM_FIELDS.items()
}
"""The :mod:`struct` of each encoding's parameter block."""

# ------------------------------------------------------------------------------------- dtypes

DTYPE_IDS: dict[torch.dtype, int] = {
    torch.float32: 1,
    torch.float16: 2,
    torch.bfloat16: 3,
    torch.float64: 4,
    torch.int8: 5,
    torch.int16: 6,
    torch.int32: 7,
    torch.int64: 8,
    torch.uint8: 9,
    torch.bool: 10,
    torch.uint16: 11,
    torch.uint32: 12,
    torch.uint64: 13,
    torch.float8_e4m3fn: 14,
    torch.float8_e5m2: 15,
}
"""The dtype byte of each supported torch dtype."""

DTYPE_OF_ID: dict[int, torch.dtype] = {v: k for k, v in DTYPE_IDS.items()}

FLOAT_DTYPE_IDS = frozenset({1, 2, 3, 4})
"""Dtypes that the shared and sparse-float encodings may restore (float32/16, bfloat16, 64)."""

SAFETENSORS_DTYPE: dict[torch.dtype, str] = {
    torch.float32: "F32",
    torch.float16: "F16",
    torch.bfloat16: "BF16",
    torch.float64: "F64",
    torch.int8: "I8",
    torch.int16: "I16",
    torch.int32: "I32",
    torch.int64: "I64",
    torch.uint8: "U8",
    torch.bool: "BOOL",
    torch.uint16: "U16",
    torch.uint32: "U32",
    torch.uint64: "U64",
    torch.float8_e4m3fn: "F8_E4M3",
    torch.float8_e5m2: "F8_E5M2",
}
"""The safetensors name of each supported dtype."""


def dtype_itemsize(dtype: torch.dtype) -> int:
    """Bytes per element of ``dtype``."""
    return torch.empty((), dtype=dtype).element_size()


def dtype_name(dtype: torch.dtype) -> str:
    """``"float32"`` for ``torch.float32``."""
    return str(dtype).removeprefix("torch.")


def canonical_json(obj: Any) -> bytes:
    """The canonical UTF-8 JSON of ``obj``: sorted keys, no spaces, no NaN/infinity.

    Every object key, at any depth, must be a ``str``: ``json.dumps`` would write an ``int``
    key as a string but sort it as a number (``{9: .., 10: ..}`` gives ``"9"`` before
    ``"10"``, not the code-point order of section 1 of ``docs/format.md``), and two keys such
    as ``1`` and ``"1"`` would give a duplicate key.

    Raises:
        ConfigError: a key that is not a string (names it and where it is).
        TypeError, ValueError, RecursionError: what ``json.dumps`` raises for a value JSON
            cannot hold (NaN or infinity, an unknown type, a cycle, too deep a nesting) or a
            string that is not valid UTF-8 (a lone surrogate).
    """
    _check_keys(obj)
    return json.dumps(
        obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
    ).encode("utf-8")


def user_metadata_offender(metadata: Mapping[str, Any]) -> tuple[object, object] | None:
    """What keeps ``metadata["user"]`` from being an object of strings to strings
    (``docs/format.md`` section 9), or ``None`` when it is one or is absent.

    Returns:
        ``(None, user)`` when ``"user"`` is not a mapping; else ``(key, value)`` of its first
        key or value that is not a ``str``.
    """
    if "user" not in metadata:
        return None
    user = metadata["user"]
    if not isinstance(user, Mapping):
        return None, user
    for key, value in user.items():
        if not isinstance(key, str) or not isinstance(value, str):
            return key, value
    return None


def json_kind(value: object) -> str:
    """The JSON type of a parsed JSON value, with its article: ``"a number"``, ``"null"``..."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, (list, tuple)):
        return "an array"
    if isinstance(value, Mapping):
        return "an object"
    return f"a {type(value).__name__}"


def _check_keys(obj: Any) -> None:
    """Raise ``ConfigError`` for the first non-``str`` dict key in ``obj`` (depth first).

    Iterative, so that depth is no problem here; each container is visited once, so that a
    cycle ends the walk (``json.dumps`` then reports it).
    """
    stack: list[tuple[Any, str]] = [(obj, "$")]
    seen: set[int] = set()
    while stack:
        value, where = stack.pop()
        if not isinstance(value, (dict, list, tuple)) or id(value) in seen:
            continue
        seen.add(id(value))
        if isinstance(value, dict):
            for key in value:
                if not isinstance(key, str):
                    raise ConfigError(
                        f"object key {key!r} in {where} is not a string (it is of type "
                        f"{type(key).__name__}; JSON object keys must be strings)"
                    )
            stack.extend((v, f"{where}[{k!r}]") for k, v in reversed(value.items()))
        else:
            stack.extend((v, f"{where}[{i}]") for i, v in reversed(list(enumerate(value))))


# ------------------------------------------------------------------------- directory entries


@dataclass(frozen=True)
class TensorEntry:
    """One directory entry: where a tensor's region is and how to decode it.

    Attributes:
        name: the state-dict key.
        encoding: how the region is laid out.
        dtype: the tensor's original dtype (what decoding restores).
        shape: the tensor's shape.
        params: the encoding's parameters, ``(name, value)`` in :data:`PARAM_FIELDS` order.
        offset: byte offset of the region in the file.
        crc32: CRC-32 of the whole region.
        part_lengths: byte length of each part, in :data:`ENCODING_PARTS` order.
    """

    name: str
    encoding: Encoding
    dtype: torch.dtype
    shape: tuple[int, ...]
    params: tuple[tuple[str, int], ...]
    offset: int
    crc32: int
    part_lengths: tuple[int, ...]

    def param(self, key: str, default: int = 0) -> int:
        """The parameter called ``key`` (``default`` if the encoding has none)."""
        for name, value in self.params:
            if name == key:
                return value
        return default

    @property
    def k(self) -> int:
        """Codebook entries (0 for encodings without a codebook)."""
        return self.param("k")

    @property
    def gap_width(self) -> int:
        """Gap field bits of the relative index (0 for encodings without one)."""
        return self.param("gap_width")

    @property
    def kept(self) -> int:
        """Surviving elements (``numel`` for encodings without pruning)."""
        return self.param("kept", self.numel)

    @property
    def target(self) -> int | None:
        """Directory index of the tensor an ``ALIAS`` entry stands for (``None`` otherwise).

        An alias has no parameters of its own: its ``k``, ``gap_width`` and ``kept`` are its
        target's (``DzipReader.data_entry``).
        """
        return self.param("target") if self.encoding is Encoding.ALIAS else None

    @property
    def numel(self) -> int:
        """Number of elements."""
        return math.prod(self.shape)

    @property
    def length(self) -> int:
        """Byte length of the region."""
        return sum(self.part_lengths)

    @property
    def part_names(self) -> tuple[str, ...]:
        """Names of the parts, in region order."""
        return ENCODING_PARTS[self.encoding]

    def part_spans(self) -> list[tuple[str, int, int]]:
        """``(part name, absolute offset, length)`` of every part."""
        out, pos = [], self.offset
        for part, n in zip(self.part_names, self.part_lengths, strict=True):
            out.append((part, pos, n))
            pos += n
        return out

    def pack(self) -> bytes:
        """The entry's bytes in the directory (see ``docs/format.md``)."""
        name = self.name.encode("utf-8")
        params = PARAMS[self.encoding].pack(*(v for _, v in self.params))
        rank, n_parts = len(self.shape), len(self.part_lengths)
        return b"".join(
            [
                struct.pack("<H", len(name)),
                name,
                ENTRY_FIXED.pack(int(self.encoding), DTYPE_IDS[self.dtype], rank, n_parts),
                struct.pack(f"<{rank}Q", *self.shape),
                ENTRY_TAIL.pack(self.offset, self.crc32),
                struct.pack("<B", len(params)),
                params,
                struct.pack(f"<{n_parts}Q", *self.part_lengths),
            ]
        )
