"""The ``.dzip`` reader: every file is hostile until proven otherwise.

Opening a file reads and checks the header (magic, version, checksum, every length and offset
against the real file size and the caps), then the directory (each field bounds-checked before
use, regions tiling the file exactly, checksum) and the metadata (checksum, strict JSON).
Nothing whose size comes from the file is allocated before that size has been checked against
the file size or a cap. Tensors are decoded one at a time, on demand, after their region's
CRC-32 is verified. Every failure raises :class:`~deepzip.errors.CorruptFileError` or
:class:`~deepzip.errors.UnsupportedVersionError` naming the file, the section or tensor, and
the bad value. Nothing is unpickled or imported by name. See ``docs/format.md``.
"""

from __future__ import annotations

import io
import json
import math
import os
import stat
import struct
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

import numpy as np
import torch

from deepzip._atomic import os_error_reason
from deepzip.coding.bloomier import BloomierFilter
from deepzip.coding.sparse_index import RelativeIndex, decode_relative
from deepzip.coding.streams import EncodedStream, decode_symbols
from deepzip.errors import CorruptFileError, UnsupportedVersionError
from deepzip.format.dzip_report import InspectReport, PartRecord, Section, TensorRecord
from deepzip.format.dzip_spec import (
    DIRECTORY_ENTRY_MIN_SIZE,
    DTYPE_OF_ID,
    ENCODING_MINOR,
    ENCODING_PARTS,
    ENTRY_FIXED,
    ENTRY_TAIL,
    FLOAT_DTYPE_IDS,
    FORMAT_MAJOR,
    FORMAT_MINOR,
    FUTURE_ENCODING_IDS,
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
    MAX_PARAMS_BYTES,
    MAX_PARTS,
    MAX_RANK,
    MAX_TENSORS,
    MIN_GAP_WIDTH,
    PARAM_FIELDS,
    PARAMS,
    Encoding,
    TensorEntry,
    dtype_itemsize,
    dtype_name,
    json_kind,
    user_metadata_offender,
)
from deepzip.format.dzip_writer import check_little_endian
from deepzip.quantize.shared import SharedTensor

__all__ = ["CompressedFile", "DzipReader", "Header", "parse_metadata", "read_compressed"]

_CHUNK = 1 << 20
"""Elements gathered per step when a dense tensor is rebuilt from its symbols."""

_SHARED = (Encoding.SHARED_DENSE, Encoding.SHARED_SPARSE, Encoding.BLOOMIER)
"""Encodings of a codebook plus one cluster index per surviving element."""


@dataclass(frozen=True)
class Header:
    """The validated fixed header."""

    major: int
    minor: int
    file_size: int
    directory_offset: int
    directory_length: int
    metadata_offset: int
    metadata_length: int
    tensor_count: int
    directory_crc32: int
    metadata_crc32: int


class _Cursor:
    """Bounds-checked sequential reads from a byte buffer."""

    def __init__(self, buf: bytes, where: str) -> None:
        self.buf = buf
        self.pos = 0
        self.where = where

    def take(self, n: int, what: str) -> bytes:
        if n > len(self.buf) - self.pos:
            raise CorruptFileError(
                f"{self.where}: {what} needs {n} byte(s) at directory offset {self.pos}, "
                f"only {len(self.buf) - self.pos} left"
            )
        out = self.buf[self.pos : self.pos + n]
        self.pos += n
        return out

    def unpack(self, st: struct.Struct, what: str) -> tuple[Any, ...]:
        return st.unpack(self.take(st.size, what))


_SPECIAL_FILES = (
    (stat.S_ISDIR, "a directory"),
    (stat.S_ISFIFO, "a FIFO (named pipe)"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
    (stat.S_ISSOCK, "a socket"),
)


def _check_regular_file(path: str | os.PathLike[str]) -> None:
    """Refuse a ``.dzip`` path that is not a regular file, before it is opened.

    Opening a FIFO for reading blocks until some process opens it for writing (a reader
    would hang), and a ``.dzip`` file is read with seeks, which no pipe or device allows. A
    missing or unreadable path is left to the reader's ``open``, which names it.

    Raises:
        CorruptFileError: ``path`` is a directory, a FIFO, a device or a socket (named).
    """
    try:
        mode = os.stat(path).st_mode
    except (OSError, ValueError):
        return
    for test, kind in _SPECIAL_FILES:
        if test(mode):
            raise CorruptFileError(
                f"{Path(path)}: cannot open: {kind}, not a .dzip file (a regular file)"
            )


class DzipReader:
    """An open, validated ``.dzip`` file; tensors are decoded on demand.

    Use as a context manager (or call :meth:`close`)::

        with DzipReader("net.dzip") as r:
            for entry in r.entries:
                t = r.tensor(entry.name)

    Args:
        path: the file.
        max_elements: refuse tensors with more elements, or a dimension larger, than this
            (default: the format's cap; lower it for untrusted files on small machines).

    Raises:
        CorruptFileError: anything malformed (names the section or tensor and the value); a
            path that cannot be opened or is not a regular file (a directory, a FIFO, whose
            open would block, a device).
        UnsupportedVersionError: a newer major version, or an encoding of a newer minor one.
    """

    def __init__(self, path: str | os.PathLike[str], *, max_elements: int = MAX_ELEMENTS) -> None:
        check_little_endian()
        self.path = Path(path)
        self.max_elements = min(int(max_elements), MAX_ELEMENTS)
        _check_regular_file(self.path)
        try:
            self._fh: io.BufferedReader = self.path.open("rb")
        except OSError as exc:
            raise CorruptFileError(f"{self.path}: cannot open: {os_error_reason(exc)}") from exc
        try:
            size = os.fstat(self._fh.fileno()).st_size
            self.header = self._read_header(size)
            self.entries = self._read_directory()
            self.metadata = self._read_metadata()
        except BaseException:
            self._fh.close()
            raise
        self._by_name = {e.name: e for e in self.entries}

    # -------------------------------------------------------------------------- lifecycle

    def close(self) -> None:
        """Close the file."""
        self._fh.close()

    def __enter__(self) -> DzipReader:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # ---------------------------------------------------------------------------- sections

    def _read_exact(self, offset: int, length: int, what: str) -> bytearray:
        """``length`` bytes at ``offset`` (both already checked against the file size)."""
        buf = bytearray(length)
        self._fh.seek(offset)
        got = self._fh.readinto(buf)
        if got != length:
            raise CorruptFileError(
                f"{self.path}: {what}: read {got} of {length} bytes at offset {offset} "
                "(the file changed while being read?)"
            )
        return buf

    def _read_header(self, size: int) -> Header:
        p = self.path
        if size < HEADER_SIZE:
            raise CorruptFileError(
                f"{p}: {size} bytes is shorter than the {HEADER_SIZE}-byte .dzip header"
            )
        raw = bytes(self._read_exact(0, HEADER_SIZE, "header"))
        fields = HEADER.unpack(raw)
        magic, major, minor, flags, file_size = fields[:5]
        dir_off, dir_len, meta_off, meta_len, count, dir_crc, meta_crc, head_crc = fields[5:]
        if magic != MAGIC:
            raise CorruptFileError(f"{p}: not a .dzip file (magic bytes {magic!r})")
        if major > FORMAT_MAJOR:
            raise UnsupportedVersionError(
                f"{p}: format version {major}.{minor} is newer than this deepzip reads "
                f"({FORMAT_MAJOR}.{FORMAT_MINOR}); upgrade deepzip"
            )
        if major < 1:
            raise CorruptFileError(f"{p}: header: invalid major version {major}")
        if zlib.crc32(raw[:HEADER_CRC_SPAN]) != head_crc:
            raise CorruptFileError(
                f"{p}: header checksum mismatch (stored {head_crc:#010x}, "
                f"computed {zlib.crc32(raw[:HEADER_CRC_SPAN]):#010x})"
            )
        if flags != 0:
            raise CorruptFileError(f"{p}: header: unknown flags {flags:#x}")
        if file_size != size:
            raise CorruptFileError(
                f"{p}: header says the file is {file_size} bytes, it is {size} "
                "(truncated or appended to)"
            )
        if count > MAX_TENSORS:
            raise CorruptFileError(f"{p}: header: {count} tensors exceed the cap of {MAX_TENSORS}")
        if dir_len > MAX_DIRECTORY_BYTES:
            raise CorruptFileError(
                f"{p}: header: directory length {dir_len} exceeds the cap of {MAX_DIRECTORY_BYTES}"
            )
        if meta_len > MAX_METADATA_BYTES:
            raise CorruptFileError(
                f"{p}: header: metadata length {meta_len} exceeds the cap of {MAX_METADATA_BYTES}"
            )
        if not HEADER_SIZE <= dir_off <= size or dir_len > size - dir_off:
            raise CorruptFileError(
                f"{p}: header: directory at offset {dir_off}, length {dir_len} lies outside "
                f"the file's {HEADER_SIZE}..{size} bytes"
            )
        if meta_off != dir_off + dir_len:
            raise CorruptFileError(
                f"{p}: header: metadata offset {meta_off} does not follow the directory "
                f"(which ends at {dir_off + dir_len})"
            )
        if meta_off + meta_len != size:
            raise CorruptFileError(
                f"{p}: header: metadata at {meta_off}, length {meta_len} does not end the "
                f"file ({size} bytes)"
            )
        if count * DIRECTORY_ENTRY_MIN_SIZE > dir_len:
            raise CorruptFileError(
                f"{p}: header: {count} tensors cannot fit a {dir_len}-byte directory"
            )
        return Header(
            major, minor, file_size, dir_off, dir_len, meta_off, meta_len, count, dir_crc, meta_crc
        )

    def _read_directory(self) -> tuple[TensorEntry, ...]:
        h = self.header
        buf = bytes(self._read_exact(h.directory_offset, h.directory_length, "directory"))
        crc = zlib.crc32(buf)
        if crc != h.directory_crc32:
            raise CorruptFileError(
                f"{self.path}: directory checksum mismatch (stored {h.directory_crc32:#010x}, "
                f"computed {crc:#010x})"
            )
        cur = _Cursor(buf, f"{self.path}: directory")
        entries: list[TensorEntry] = []
        names: set[str] = set()
        expected_offset = HEADER_SIZE
        for i in range(h.tensor_count):
            entry = self._read_entry(cur, i)
            if entry.name in names:
                raise CorruptFileError(f"{self.path}: tensor {entry.name!r} appears twice")
            names.add(entry.name)
            where = f"{self.path}: tensor {entry.name!r}"
            if entry.offset != expected_offset:
                problem = (
                    "overlaps the previous one"
                    if entry.offset < expected_offset
                    else ("leaves a gap after the previous one")
                )
                raise CorruptFileError(
                    f"{where}: region offset {entry.offset} {problem} (expected {expected_offset})"
                )
            if entry.length > h.directory_offset - entry.offset:
                raise CorruptFileError(
                    f"{where}: region of {entry.length} bytes at offset {entry.offset} runs past "
                    f"the tensor data, which ends at {h.directory_offset}"
                )
            expected_offset = entry.offset + entry.length
            if entry.target is not None:
                self._check_alias(entry, i, entries)
            entries.append(entry)
        if expected_offset != h.directory_offset:
            raise CorruptFileError(
                f"{self.path}: tensor regions end at {expected_offset}, the directory starts at "
                f"{h.directory_offset}"
            )
        if cur.pos != len(buf):
            raise CorruptFileError(
                f"{self.path}: directory has {len(buf) - cur.pos} unexplained trailing bytes"
            )
        return tuple(entries)

    def _read_entry(self, cur: _Cursor, i: int) -> TensorEntry:
        p = self.path
        cur.where = f"{p}: directory entry {i}"
        (name_len,) = cur.unpack(struct.Struct("<H"), "name length")
        if not 1 <= name_len <= MAX_NAME_BYTES:
            raise CorruptFileError(
                f"{cur.where}: name length {name_len} is outside 1..{MAX_NAME_BYTES}"
            )
        try:
            name = cur.take(name_len, "name").decode("utf-8")
        except UnicodeDecodeError as exc:
            raise CorruptFileError(f"{cur.where}: name is not valid UTF-8: {exc}") from exc
        cur.where = where = f"{p}: tensor {name!r}"
        enc_id, dtype_id, rank, n_parts = cur.unpack(ENTRY_FIXED, "encoding/dtype/rank/parts")
        encoding = self._encoding(where, enc_id)
        if dtype_id not in DTYPE_OF_ID:
            raise CorruptFileError(f"{where}: unknown dtype id {dtype_id}")
        dtype = DTYPE_OF_ID[dtype_id]
        if encoding not in (Encoding.RAW, Encoding.ALIAS) and dtype_id not in FLOAT_DTYPE_IDS:
            raise CorruptFileError(
                f"{where}: encoding {encoding.name} cannot restore dtype {dtype_name(dtype)}"
            )
        if rank > MAX_RANK:
            raise CorruptFileError(f"{where}: rank {rank} exceeds the cap of {MAX_RANK}")
        shape = cur.unpack(struct.Struct(f"<{rank}Q"), "shape")
        numel = 1
        for d in shape:
            numel *= d
        if numel > self.max_elements:
            raise CorruptFileError(
                f"{where}: shape {tuple(shape)} has {numel} elements, over the cap of "
                f"{self.max_elements}"
            )
        for axis, d in enumerate(shape):  # only a zero-element shape gets past the product
            if d > self.max_elements:
                raise CorruptFileError(
                    f"{where}: dimension {axis} of shape {tuple(shape)} is {d}, over the cap "
                    f"of {self.max_elements}"
                )
        offset, crc = cur.unpack(ENTRY_TAIL, "offset/checksum")
        (params_len,) = cur.unpack(struct.Struct("<B"), "parameter length")
        st = PARAMS[encoding]
        if params_len != st.size or params_len > MAX_PARAMS_BYTES:
            raise CorruptFileError(
                f"{where}: {encoding.name} parameters must be {st.size} bytes, got {params_len}"
            )
        values = st.unpack(cur.take(params_len, "parameters"))
        params = tuple((key, v) for (key, _), v in zip(PARAM_FIELDS[encoding], values, strict=True))
        parts = ENCODING_PARTS[encoding]
        if n_parts != len(parts) or n_parts > MAX_PARTS:
            raise CorruptFileError(
                f"{where}: {encoding.name} has {len(parts)} parts ({', '.join(parts)}), "
                f"the entry says {n_parts}"
            )
        lengths = cur.unpack(struct.Struct(f"<{n_parts}Q"), "part lengths")
        if sum(lengths) > self.header.file_size:
            raise CorruptFileError(
                f"{where}: part lengths {list(lengths)} exceed the file size "
                f"{self.header.file_size}"
            )
        entry = TensorEntry(
            name, encoding, dtype, tuple(shape), params, offset, crc, tuple(lengths)
        )
        self._check_params(entry)
        return entry

    def _encoding(self, where: str, enc_id: int) -> Encoding:
        try:
            encoding = Encoding(enc_id)
        except ValueError:
            pass
        else:
            if ENCODING_MINOR[encoding] <= self.header.minor:
                return encoding
            raise CorruptFileError(
                f"{where}: unknown encoding id {enc_id} in format {self.header.major}."
                f"{self.header.minor} ({encoding.name} is defined by format "
                f"{FORMAT_MAJOR}.{ENCODING_MINOR[encoding]})"
            )
        if enc_id in FUTURE_ENCODING_IDS and self.header.minor > FORMAT_MINOR:
            raise UnsupportedVersionError(
                f"{where}: encoding id {enc_id} comes from format "
                f"{self.header.major}.{self.header.minor}; this deepzip reads up to "
                f"{FORMAT_MAJOR}.{FORMAT_MINOR}: upgrade deepzip"
            )
        raise CorruptFileError(f"{where}: unknown encoding id {enc_id}")

    def _check_alias(self, e: TensorEntry, index: int, before: list[TensorEntry]) -> None:
        """An ``ALIAS`` entry names an earlier entry with data, of its own dtype and shape."""
        where = f"{self.path}: tensor {e.name!r}"
        t = e.target
        assert t is not None
        if t >= index:
            raise CorruptFileError(
                f"{where}: alias target {t} is not an earlier tensor (this is tensor {index} "
                f"of {self.header.tensor_count}; an alias names a tensor before it)"
            )
        target = before[t]
        if target.target is not None:
            raise CorruptFileError(
                f"{where}: alias target {t} ({target.name!r}) is itself an alias (aliases do "
                "not chain)"
            )
        if target.dtype != e.dtype or target.shape != e.shape:
            raise CorruptFileError(
                f"{where}: alias of {target.name!r} declares {dtype_name(e.dtype)} "
                f"{e.shape}, the target is {dtype_name(target.dtype)} {target.shape}"
            )

    def _check_params(self, e: TensorEntry) -> None:
        where = f"{self.path}: tensor {e.name!r}"
        n = e.numel
        lengths = dict(zip(e.part_names, e.part_lengths, strict=True))
        if e.encoding is Encoding.ALIAS:
            if lengths["alias"] != 0 or e.crc32 != 0:
                raise CorruptFileError(
                    f"{where}: an alias's region is empty with checksum 0, the entry says "
                    f"{lengths['alias']} byte(s) with checksum {e.crc32:#010x}"
                )
            return
        if e.encoding is Encoding.RAW:
            want = n * dtype_itemsize(e.dtype)
            if lengths["data"] != want:
                raise CorruptFileError(
                    f"{where}: RAW data is {lengths['data']} bytes, shape {e.shape} of "
                    f"{dtype_name(e.dtype)} needs {want}"
                )
            return
        if e.kept > n:
            raise CorruptFileError(f"{where}: kept {e.kept} exceeds the {n} elements")
        if e.encoding in (Encoding.SHARED_DENSE, Encoding.SHARED_SPARSE, Encoding.BLOOMIER):
            if not 1 <= e.k <= MAX_K:
                raise CorruptFileError(f"{where}: codebook size k={e.k} is outside 1..{MAX_K}")
            if lengths["codebook"] != 4 * e.k:
                raise CorruptFileError(
                    f"{where}: codebook is {lengths['codebook']} bytes, k={e.k} needs {4 * e.k}"
                )
        if e.encoding in (Encoding.SHARED_SPARSE, Encoding.SPARSE_FLOAT) and not (
            MIN_GAP_WIDTH <= e.gap_width <= MAX_GAP_WIDTH
        ):
            raise CorruptFileError(
                f"{where}: gap width {e.gap_width} is outside {MIN_GAP_WIDTH}..{MAX_GAP_WIDTH}"
            )
        if e.encoding is Encoding.SPARSE_FLOAT:
            item = dtype_itemsize(e.dtype)
            if lengths["values"] % item or lengths["values"] // item > n:
                raise CorruptFileError(
                    f"{where}: values part of {lengths['values']} bytes is not a whole number "
                    f"of at most {n} {dtype_name(e.dtype)} values"
                )

    def _read_metadata(self) -> dict[str, Any]:
        h = self.header
        buf = bytes(self._read_exact(h.metadata_offset, h.metadata_length, "metadata"))
        crc = zlib.crc32(buf)
        if crc != h.metadata_crc32:
            raise CorruptFileError(
                f"{self.path}: metadata checksum mismatch (stored {h.metadata_crc32:#010x}, "
                f"computed {crc:#010x})"
            )
        return parse_metadata(buf, str(self.path))

    # ------------------------------------------------------------------------------ access

    def __contains__(self, name: object) -> bool:
        return name in self._by_name

    def __iter__(self) -> Iterator[TensorEntry]:
        return iter(self.entries)

    def entry(self, name: str) -> TensorEntry:
        """The directory entry of ``name`` (``KeyError`` if absent)."""
        return self._by_name[name]

    @property
    def aliases(self) -> dict[str, str]:
        """``{alias: target}`` of every ``ALIAS`` entry (tied tensors), in file order."""
        return {e.name: self.entries[e.target].name for e in self.entries if e.target is not None}

    def data_entry(self, name: str) -> TensorEntry:
        """The entry that holds ``name``'s data: its own, or its target's if it is an alias.

        Raises:
            KeyError: no tensor ``name``.
        """
        e = self._entry(name)
        return e if e.target is None else self.entries[e.target]

    def sections(self) -> list[Section]:
        """Every byte range of the file in order; the lengths add up to the file size."""
        h = self.header
        out = [Section("header", "header", 0, HEADER_SIZE)]
        for e in self.entries:
            out.extend(
                Section(f"{e.name}:{part}", "tensor", off, n) for part, off, n in e.part_spans()
            )
        out.append(Section("directory", "directory", h.directory_offset, h.directory_length))
        out.append(Section("metadata", "metadata", h.metadata_offset, h.metadata_length))
        return out

    def read_parts(self, entry: TensorEntry) -> dict[str, memoryview]:
        """The region's parts, after checking the region's CRC-32."""
        buf = self._read_exact(entry.offset, entry.length, f"tensor {entry.name!r}")
        crc = zlib.crc32(buf)
        if crc != entry.crc32:
            raise CorruptFileError(
                f"{self.path}: tensor {entry.name!r}: checksum mismatch "
                f"(stored {entry.crc32:#010x}, computed {crc:#010x})"
            )
        view = memoryview(buf)
        out, pos = {}, 0
        for part, n in zip(entry.part_names, entry.part_lengths, strict=True):
            out[part] = view[pos : pos + n]
            pos += n
        return out

    def _stream(
        self,
        e: TensorEntry,
        data: memoryview,
        part: str,
        alphabets: tuple[int, ...],
        count: int | None,
    ) -> EncodedStream:
        what = f"{self.path}: tensor {e.name!r}: {part} stream"
        stream = EncodedStream.from_bytes(bytes(data), max_count=e.numel, what=what)
        if stream.alphabet_size not in alphabets:
            raise CorruptFileError(
                f"{what}: alphabet size {stream.alphabet_size}, expected "
                f"{' or '.join(map(str, alphabets))}"
            )
        if count is not None and stream.count != count:
            raise CorruptFileError(f"{what}: {stream.count} symbols, expected {count}")
        return stream

    def streams(self, entry: TensorEntry) -> dict[str, EncodedStream]:
        """The parsed (not decoded) entropy-coded streams of a tensor, by part name."""
        parts = self.read_parts(entry)
        return self._parse_streams(entry, parts)

    def _parse_streams(
        self, e: TensorEntry, parts: dict[str, memoryview]
    ) -> dict[str, EncodedStream]:
        if e.encoding is Encoding.SHARED_DENSE:
            return {
                "symbols": self._stream(e, parts["symbols"], "symbols", (e.k, e.k + 1), e.numel)
            }
        if e.encoding is Encoding.SHARED_SPARSE:
            gaps = self._stream(e, parts["gaps"], "gaps", (1 << e.gap_width,), None)
            values = self._stream(e, parts["values"], "values", (e.k + 1,), gaps.count)
            return {"gaps": gaps, "values": values}
        if e.encoding is Encoding.SPARSE_FLOAT:
            gaps = self._stream(e, parts["gaps"], "gaps", (1 << e.gap_width,), None)
            n_values = e.part_lengths[1] // dtype_itemsize(e.dtype)
            if gaps.count != n_values:
                raise CorruptFileError(
                    f"{self.path}: tensor {e.name!r}: {gaps.count} index entries but "
                    f"{n_values} values"
                )
            return {"gaps": gaps}
        return {}

    def _decode(self, e: TensorEntry) -> tuple[Any, ...]:
        """Decode a tensor's streams: the parts needed by :meth:`tensor` and :meth:`shared`."""
        what = f"{self.path}: tensor {e.name!r}"
        parts = self.read_parts(e)
        streams = self._parse_streams(e, parts)
        if e.encoding is Encoding.SHARED_DENSE:
            codebook = np.frombuffer(parts["codebook"], dtype="<f4").copy()
            stream = streams["symbols"]
            symbols = decode_symbols(stream, what=f"{what}: symbols")
            kept = e.numel if stream.alphabet_size == e.k else int((symbols != e.k).sum())
            if kept != e.kept:
                raise CorruptFileError(f"{what}: {kept} elements survive, the entry says {e.kept}")
            return codebook, symbols
        if e.encoding is Encoding.SHARED_SPARSE:
            codebook = np.frombuffer(parts["codebook"], dtype="<f4").copy()
            gaps = decode_symbols(streams["gaps"], what=f"{what}: gaps")
            values = decode_symbols(streams["values"], what=f"{what}: values")
            pos, vals = decode_relative(
                RelativeIndex(gaps, values, e.gap_width), e.numel, filler=e.k, what=what
            )
            if len(pos) != e.kept:
                raise CorruptFileError(
                    f"{what}: {len(pos)} elements survive, the entry says {e.kept}"
                )
            return codebook, pos, vals
        if e.encoding is Encoding.SPARSE_FLOAT:
            gaps = decode_symbols(streams["gaps"], what=f"{what}: gaps")
            pos, _ = decode_relative(
                RelativeIndex(gaps, np.zeros(len(gaps), dtype=np.uint8), e.gap_width),
                e.numel,
                filler=1,
                what=what,
            )
            if e.kept > len(pos):
                raise CorruptFileError(
                    f"{what}: kept {e.kept} exceeds the {len(pos)} index entries"
                )
            return pos, _frombuffer(parts["values"], e.dtype, (len(pos),), what)
        if e.encoding is Encoding.BLOOMIER:
            return self._decode_bloomier(e, parts, what)
        return (_frombuffer(parts["data"], e.dtype, e.shape, what),)

    def _decode_bloomier(
        self, e: TensorEntry, parts: dict[str, memoryview], what: str
    ) -> tuple[Any, ...]:
        """Codebook, indices (uint8) and mask of every position, as the filter decodes them."""
        codebook = np.frombuffer(parts["codebook"], dtype="<f4").copy()
        bloomier = BloomierFilter.from_bytes(
            parts["filter"], name=f"{what}: filter", n_positions=e.numel
        )
        if bloomier.num_values != e.k:
            raise CorruptFileError(
                f"{what}: the filter holds {bloomier.num_values} values, the codebook {e.k}"
            )
        indices = np.zeros(e.numel, dtype=np.uint8)
        mask = np.zeros(e.numel, dtype=bool)
        for start, values in bloomier.decode_blocks(_CHUNK):
            hit = values < e.k
            stop = start + len(values)
            mask[start:stop] = hit
            indices[start:stop] = np.where(hit, values, 0)
        kept = int(mask.sum())
        if kept != e.kept:
            raise CorruptFileError(f"{what}: {kept} elements decode, the entry says {e.kept}")
        return codebook, indices, mask

    def tensor(self, name: str) -> torch.Tensor:
        """The dense tensor ``name`` with its original shape and dtype (CPU).

        An alias decodes its target (a new tensor on each call).
        """
        e = self.data_entry(name)
        decoded = self._decode(e)
        if e.encoding is Encoding.RAW:
            out: torch.Tensor = decoded[0]
            return out
        if e.encoding is Encoding.SHARED_DENSE:
            codebook, symbols = decoded
            # symbol k (pruned) reads the appended +0.0; values are rounded to the dtype once
            table = torch.from_numpy(np.append(codebook, np.float32(0.0))).to(e.dtype)
            dense = torch.empty(e.numel, dtype=e.dtype)
            for start in range(0, e.numel, _CHUNK):  # bounded int64 index temporaries
                chunk = torch.from_numpy(symbols[start : start + _CHUNK]).long()
                dense[start : start + _CHUNK] = table[chunk]
            return dense.reshape(e.shape)
        if e.encoding is Encoding.SHARED_SPARSE:
            codebook, pos, vals = decoded
            table = torch.from_numpy(codebook).to(e.dtype)
            dense = torch.zeros(e.numel, dtype=e.dtype)
            dense[torch.from_numpy(pos)] = table[torch.from_numpy(vals).long()]
            return dense.reshape(e.shape)
        if e.encoding is Encoding.BLOOMIER:
            codebook, indices_np, mask_np = decoded
            table = torch.from_numpy(np.append(codebook, np.float32(0.0))).to(e.dtype)
            dense = torch.empty(e.numel, dtype=e.dtype)
            for start in range(0, e.numel, _CHUNK):  # a zero reads the appended +0.0
                stop = start + _CHUNK
                idx = np.where(mask_np[start:stop], indices_np[start:stop], len(codebook))
                dense[start:stop] = table[torch.from_numpy(idx.astype(np.int64))]
            return dense.reshape(e.shape)
        pos, values = decoded
        dense = torch.zeros(e.numel, dtype=e.dtype)
        dense[torch.from_numpy(pos)] = values
        return dense.reshape(e.shape)

    def shared(self, name: str) -> SharedTensor:
        """``(codebook, indices, mask)`` of a shared tensor, without a dense float tensor.

        Indices at pruned positions read back as 0. A ``BLOOMIER`` tensor's mask is what its
        filter decodes: the stored weights and its false positives. An alias gives its
        target's (decoded again on each call).

        Raises:
            KeyError: no tensor ``name``; ``ValueError`` if it is not a shared encoding (or an
                alias of one).
        """
        e = self.data_entry(name)
        if e.encoding not in _SHARED:
            of = "" if e.name == name else f" (an alias of {e.name!r})"
            raise ValueError(f"{self.path}: tensor {name!r}{of} is {e.encoding.name}, not shared")
        decoded = self._decode(e)
        codebook = torch.from_numpy(decoded[0])
        if e.encoding is Encoding.BLOOMIER:
            _, indices_np, mask_np = decoded
            return SharedTensor(
                codebook,
                torch.from_numpy(indices_np).reshape(e.shape),
                torch.from_numpy(mask_np).reshape(e.shape),
            )
        if e.encoding is Encoding.SHARED_DENSE:
            symbols = decoded[1]
            mask_np = symbols != e.k
            indices_np = np.where(mask_np, symbols, 0).astype(np.uint8)
            indices = torch.from_numpy(indices_np).reshape(e.shape)
            return SharedTensor(codebook, indices, torch.from_numpy(mask_np).reshape(e.shape))
        _, pos, vals = decoded
        indices = torch.zeros(e.numel, dtype=torch.uint8)
        mask = torch.zeros(e.numel, dtype=torch.bool)
        p = torch.from_numpy(pos)
        indices[p] = torch.from_numpy(vals.astype(np.uint8))
        mask[p] = True
        return SharedTensor(codebook, indices.reshape(e.shape), mask.reshape(e.shape))

    def _entry(self, name: str) -> TensorEntry:
        try:
            return self._by_name[name]
        except KeyError:
            raise KeyError(f"{self.path}: no tensor {name!r}") from None

    def inspect(self) -> InspectReport:
        """Every tensor's parts and every section, all checksums verified."""
        rows = []
        for e in self.entries:
            streams = self.streams(e)
            parts = []
            for part, n in zip(e.part_names, e.part_lengths, strict=True):
                s = streams.get(part)
                if s is None:
                    parts.append(PartRecord(part, n))
                else:
                    parts.append(
                        PartRecord(part, n, s.coder.name.lower(), s.count, s.alphabet_size)
                    )
            rows.append(
                TensorRecord(
                    name=e.name,
                    encoding=e.encoding.name.lower(),
                    shape=e.shape,
                    dtype=dtype_name(e.dtype),
                    weights=e.numel,
                    kept=self.data_entry(e.name).kept,
                    k=e.k or None,
                    gap_width=e.gap_width or None,
                    parts=tuple(parts),
                    alias_of=None if e.target is None else self.entries[e.target].name,
                )
            )
        return InspectReport(
            path=str(self.path),
            version=(self.header.major, self.header.minor),
            tensors=tuple(rows),
            sections=tuple(self.sections()),
            metadata=self.metadata,
            file_bytes=self.header.file_size,
        )


def _frombuffer(
    data: memoryview, dtype: torch.dtype, shape: tuple[int, ...], what: str
) -> torch.Tensor:
    """A tensor over a copy of ``data`` (little-endian elements of ``dtype``)."""
    if data.nbytes == 0:
        return torch.empty(shape, dtype=dtype)
    raw = torch.frombuffer(bytearray(data), dtype=torch.uint8)
    if dtype == torch.bool:
        if bool((raw > 1).any()):
            raise CorruptFileError(f"{what}: a bool element holds a value other than 0 or 1")
        return raw.view(torch.bool).reshape(shape)
    return raw.view(dtype).reshape(shape)


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise ValueError(f"duplicate key {key!r}")
        out[key] = value
    return out


def _no_constants(name: str) -> Any:
    raise ValueError(f"non-standard JSON constant {name}")


def _finite_float(text: str) -> float:
    """A JSON number with a fraction or exponent; one beyond float's range (``1e999``) would
    parse to infinity, which section 9 forbids as much as the ``Infinity`` constant."""
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"number {text[:40]} is beyond float64's range (it would be infinity)")
    return value


def _unpaired_surrogate(obj: Any) -> str | None:
    """The first string (key or value) of a parsed JSON value that is not Unicode text: a
    ``\\u`` escape of an unpaired surrogate (``"\\ud800"``) parses to a string that cannot
    be encoded as UTF-8. Iterative: nesting as deep as ``json.loads`` accepts is fine."""
    stack = [obj]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
        elif isinstance(item, str):
            try:
                item.encode("utf-8")
            except UnicodeEncodeError:
                return item
    return None


def parse_metadata(buf: bytes, where: str) -> dict[str, Any]:
    """Strictly parse a metadata section: UTF-8 JSON object, no duplicate keys, no NaN or
    infinity (neither as a constant nor as a number that overflows to it), no string with an
    unpaired surrogate (which every later UTF-8 encoding of the metadata would fail on), and
    a ``"user"`` value, when there is one, that is an object of strings to strings (what a
    writer stores there; its readers take it as such)."""
    try:
        obj = json.loads(
            buf.decode("utf-8"),
            object_pairs_hook=_no_duplicates,
            parse_constant=_no_constants,
            parse_float=_finite_float,
        )
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise CorruptFileError(f"{where}: metadata is not valid UTF-8 JSON: {exc}") from exc
    if not isinstance(obj, dict):
        raise CorruptFileError(f"{where}: metadata must be a JSON object, got {type(obj).__name__}")
    if b"\\u" in buf:  # a surrogate can only come from an escape (raw UTF-8 cannot hold one)
        bad = _unpaired_surrogate(obj)
        if bad is not None:
            raise CorruptFileError(
                f"{where}: metadata string {bad[:40]!a} holds an unpaired surrogate "
                "(a \\u escape that is not Unicode text)"
            )
    offender = user_metadata_offender(obj)
    if offender is not None:
        key, value = offender
        if key is None:
            raise CorruptFileError(
                f'{where}: metadata "user" is {json_kind(value)}, not an object of strings '
                "to strings"
            )
        raise CorruptFileError(
            f'{where}: metadata "user" key {str(key)[:60]!r} holds {json_kind(value)}, not a '
            "string (the user key/values are strings to strings)"
        )
    return obj


# ---------------------------------------------------------------------------- runtime view


@dataclass(frozen=True)
class CompressedFile:
    """A whole ``.dzip`` file in memory in its compressed form (see :func:`read_compressed`).

    Attributes:
        shared: quantized tensors as ``(codebook, indices, mask)``; no dense float tensor is
            built for them.
        raw: every other tensor, dense (sparse-float tensors decoded to dense).
        dtypes: the original dtype of every tensor.
        metadata: the metadata section.
        order: every tensor name in state-dict (file) order.
        aliases: ``{alias: target}`` of the tied tensors (``ALIAS`` entries). An alias is in
            ``shared`` or ``raw`` like its target, as the very same object (decoded once).
    """

    shared: dict[str, SharedTensor]
    raw: dict[str, torch.Tensor]
    dtypes: dict[str, torch.dtype]
    metadata: dict[str, Any]
    order: list[str]
    aliases: dict[str, str] = field(default_factory=dict)


def read_compressed(
    path: str | os.PathLike[str], *, max_elements: int = MAX_ELEMENTS
) -> CompressedFile:
    """Read every tensor of a ``.dzip`` file, keeping quantized tensors in shared form.

    Raises:
        CorruptFileError, UnsupportedVersionError: see :class:`DzipReader`.
    """
    with DzipReader(path, max_elements=max_elements) as r:
        shared: dict[str, SharedTensor] = {}
        raw: dict[str, torch.Tensor] = {}
        aliases = r.aliases
        for e in r.entries:
            target = aliases.get(e.name)
            if target is not None:  # the same object as its (earlier) target's
                if target in shared:
                    shared[e.name] = shared[target]
                else:
                    raw[e.name] = raw[target]
            elif e.encoding in _SHARED:
                shared[e.name] = r.shared(e.name)
            else:
                raw[e.name] = r.tensor(e.name)
        return CompressedFile(
            shared=shared,
            raw=raw,
            dtypes={e.name: e.dtype for e in r.entries},
            metadata=r.metadata,
            order=[e.name for e in r.entries],
            aliases=aliases,
        )
