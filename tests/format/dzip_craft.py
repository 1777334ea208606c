"""Test helpers: build and patch .dzip files byte by byte, independently of deepzip's writer.

:func:`assemble` writes the layout of docs/format.md from explicit fields (so tests can craft
any hostile file), :func:`entry_fields` locates the fields of each directory entry, and
:func:`fix_crcs` recomputes every checksum after a patch (so a test reaches the checks behind
the checksums).
"""

from __future__ import annotations

import struct
import tracemalloc
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import pytest

from deepzip.errors import CorruptFileError, UnsupportedVersionError
from deepzip.format import DzipReader

MAGIC = b"\x89DZIP\r\n\x1a"
HEADER = struct.Struct("<8sHHIQQQQQIIII")
HEADER_SIZE = 72
FORMAT_ERRORS = (CorruptFileError, UnsupportedVersionError)


def varint(value: int) -> bytes:
    """Unsigned LEB128."""
    out = bytearray()
    while True:
        byte, value = value & 0x7F, value >> 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


@dataclass
class Tensor:
    """One tensor to assemble; ``None`` fields are derived from the parts."""

    name: str
    encoding: int
    dtype: int
    shape: tuple[int, ...]
    parts: Sequence[bytes]
    params: bytes = b""
    offset: int | None = None
    crc: int | None = None
    part_lengths: Sequence[int] | None = None
    name_bytes: bytes | None = None
    extra: dict[str, int] = field(default_factory=dict)


def raw_f32(name: str, values: Sequence[float]) -> Tensor:
    """A RAW float32 1-D tensor."""
    return Tensor(name, 0, 1, (len(values),), [struct.pack(f"<{len(values)}f", *values)])


def assemble(
    tensors: Sequence[Tensor],
    metadata: bytes = b"{}",
    *,
    major: int = 1,
    minor: int = 0,
    flags: int = 0,
    header_overrides: dict[str, int] | None = None,
) -> bytes:
    """The bytes of a .dzip file with exactly these fields (docs/format.md, sections 2-4)."""
    regions, entries = [], []
    pos = HEADER_SIZE
    for t in tensors:
        region = b"".join(t.parts)
        name = t.name.encode() if t.name_bytes is None else t.name_bytes
        lengths = [len(p) for p in t.parts] if t.part_lengths is None else list(t.part_lengths)
        entry = (
            struct.pack("<H", len(name)) + name
            + bytes([t.encoding, t.dtype, len(t.shape), len(lengths)])
            + struct.pack(f"<{len(t.shape)}Q", *t.shape)
            + struct.pack("<QI", pos if t.offset is None else t.offset,
                          zlib.crc32(region) if t.crc is None else t.crc)
            + bytes([len(t.params)]) + t.params
            + struct.pack(f"<{len(lengths)}Q", *lengths)
        )  # fmt: skip
        regions.append(region)
        entries.append(entry)
        pos += len(region)
    directory = b"".join(entries)
    fields = {
        "file_size": pos + len(directory) + len(metadata),
        "directory_offset": pos,
        "directory_length": len(directory),
        "metadata_offset": pos + len(directory),
        "metadata_length": len(metadata),
        "tensor_count": len(tensors),
        "directory_crc32": zlib.crc32(directory),
        "metadata_crc32": zlib.crc32(metadata),
    }
    fields.update(header_overrides or {})
    head = HEADER.pack(MAGIC, major, minor, flags, *fields.values(), 0)[:68]
    return head + struct.pack("<I", zlib.crc32(head)) + b"".join(regions) + directory + metadata


def header(buf: bytes) -> dict[str, int]:
    """The header's fields by name."""
    names = [
        "magic",
        "major",
        "minor",
        "flags",
        "file_size",
        "directory_offset",
        "directory_length",
        "metadata_offset",
        "metadata_length",
        "tensor_count",
        "directory_crc32",
        "metadata_crc32",
        "header_crc32",
    ]
    return dict(zip(names, HEADER.unpack_from(buf), strict=True))


def entry_fields(buf: bytes) -> list[dict[str, int]]:
    """Byte offsets of each directory entry's fields (stops at the first unparsable one)."""
    h = header(buf)
    pos, end = h["directory_offset"], h["directory_offset"] + h["directory_length"]
    out: list[dict[str, int]] = []
    for _ in range(h["tensor_count"]):
        try:
            e = {"name_length": pos}
            (n,) = struct.unpack_from("<H", buf, pos)
            e["name"] = pos + 2
            pos += 2 + n
            e["encoding"], e["dtype"], e["rank"], e["part_count"] = pos, pos + 1, pos + 2, pos + 3
            rank, n_parts = buf[pos + 2], buf[pos + 3]
            pos += 4
            e["shape"] = pos
            pos += 8 * rank
            e["data_offset"], e["data_crc32"], e["params_length"] = pos, pos + 8, pos + 12
            params_len = buf[pos + 12]
            e["params"] = pos + 13
            pos += 13 + params_len
            e["part_lengths"] = pos
            e["n_parts"] = n_parts
            pos += 8 * n_parts
        except (struct.error, IndexError, OverflowError):
            break
        if pos > min(end, len(buf)):
            break
        out.append(e)
    return out


def fix_crcs(data: bytes | bytearray) -> bytes:
    """Recompute every checksum that can be located (regions, directory, metadata, header)."""
    buf = bytearray(data)
    if len(buf) < HEADER_SIZE:
        return bytes(buf)
    h = header(bytes(buf))
    for e in entry_fields(bytes(buf)):
        (offset,) = struct.unpack_from("<Q", buf, e["data_offset"])
        lengths = struct.unpack_from(f"<{e['n_parts']}Q", buf, e["part_lengths"])
        if offset + sum(lengths) <= len(buf):
            crc = zlib.crc32(bytes(buf[offset : offset + sum(lengths)]))
            struct.pack_into("<I", buf, e["data_crc32"], crc)
    d0, d1 = h["directory_offset"], h["directory_offset"] + h["directory_length"]
    if d1 <= len(buf):
        struct.pack_into("<I", buf, 60, zlib.crc32(bytes(buf[d0:d1])))
    m0, m1 = h["metadata_offset"], h["metadata_offset"] + h["metadata_length"]
    if m1 <= len(buf):
        struct.pack_into("<I", buf, 64, zlib.crc32(bytes(buf[m0:m1])))
    struct.pack_into("<I", buf, 68, zlib.crc32(bytes(buf[:68])))
    return bytes(buf)


def read_all(path: object, max_elements: int = 1 << 16) -> None:
    """Open, inspect, and decode every tensor (dense, and compressed where shared or Bloomier,
    or an alias of such a tensor).

    ``max_elements`` bounds what a valid-looking mutated file may make the reader allocate
    (a sparse tensor may legitimately declare a huge shape); the test files are far smaller.
    """
    with DzipReader(path, max_elements=max_elements) as r:  # type: ignore[arg-type]
        r.inspect()
        for e in r.entries:
            r.tensor(e.name)
            data = r.data_entry(e.name)  # an alias decodes its target
            if data.encoding.name.startswith("SHARED") or data.encoding.name == "BLOOMIER":
                r.shared(e.name)


def raises_small(fn: Callable[[], object], limit: int = 1 << 20) -> BaseException:
    """``fn()`` raises a format error, and Python allocated less than ``limit`` bytes first."""
    tracemalloc.start()
    try:
        with pytest.raises(FORMAT_ERRORS) as info:
            fn()
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < limit, f"{peak} bytes allocated before the error"
    return info.value
