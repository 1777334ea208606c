"""Reading and writing IDX files, the format of MNIST and Fashion-MNIST.

An IDX file is a 4-byte magic ``00 00 <dtype code> <ndim>``, then ``ndim`` big-endian uint32
dimensions, then the elements in C order, big-endian. Files may be gzip-compressed; gzip is
detected by its ``1f 8b`` magic, not by the file name. The reader treats every file as
hostile: the header is checked and the payload size is bounded before anything is allocated,
and the payload is only allocated as far as the file holds it (a raw file's size is checked
first; a gzip stream is read in chunks of :data:`_CHUNK` bytes).
"""

from __future__ import annotations

import gzip as _gzip
import io
import math
import os
import struct
import zlib
from pathlib import Path

import numpy as np
from numpy.typing import NDArray

from deepzip._atomic import atomic_open
from deepzip.errors import IDXFormatError

__all__ = ["IDX_DTYPES", "MAX_NDIM", "MAX_PAYLOAD_BYTES", "read_idx", "write_idx"]

IDX_DTYPES: dict[int, np.dtype[np.generic]] = {
    0x08: np.dtype(np.uint8),
    0x09: np.dtype(np.int8),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}
"""IDX dtype code -> on-disk numpy dtype (big-endian)."""

MAX_NDIM = 4
"""Largest number of dimensions accepted."""

MAX_PAYLOAD_BYTES = 2**31
"""Largest payload accepted, in bytes, checked before reading it."""

_GZIP_MAGIC = b"\x1f\x8b"
_CHUNK = 1 << 20
"""Bytes read from a gzip stream at a time: a header declaring more than the stream holds
costs at most what it holds plus one chunk."""


def _open(path: Path) -> io.BufferedIOBase:
    stream = path.open("rb")
    if stream.read(2) == _GZIP_MAGIC:
        stream.close()
        return _gzip.GzipFile(path, "rb")
    stream.seek(0)
    return stream


def _read_exact(stream: io.BufferedIOBase, size: int, path: Path, what: str) -> bytes:
    data = stream.read(size)
    if len(data) != size:
        raise IDXFormatError(
            f"{path}: truncated {what}: expected {size} bytes, got {len(data)} bytes"
        )
    return data


def _read_payload(stream: io.BufferedIOBase, size: int, path: Path) -> bytes | bytearray:
    """The ``size``-byte payload, checked against what the file holds before it is allocated."""
    if not isinstance(stream, _gzip.GzipFile):
        held = max(0, os.fstat(stream.fileno()).st_size - stream.tell())
        if held < size:
            raise IDXFormatError(
                f"{path}: truncated payload: expected {size} bytes, got {held} bytes"
            )
        return _read_exact(stream, size, path, "payload")
    data = bytearray()
    while len(data) < size:
        chunk = stream.read(min(_CHUNK, size - len(data)))
        if not chunk:
            raise IDXFormatError(
                f"{path}: truncated payload: expected {size} bytes, got {len(data)} bytes"
            )
        data += chunk
    return data


def _parse(stream: io.BufferedIOBase, path: Path) -> NDArray[np.generic]:
    zero0, zero1, code, ndim = _read_exact(stream, 4, path, "header")
    if zero0 != 0 or zero1 != 0:
        raise IDXFormatError(
            f"{path}: not an IDX file: magic starts with {zero0:#04x} {zero1:#04x}, "
            "expected 0x00 0x00"
        )
    if code not in IDX_DTYPES:
        known = ", ".join(f"{c:#04x}" for c in IDX_DTYPES)
        raise IDXFormatError(f"{path}: unknown IDX dtype code {code:#04x} (known: {known})")
    if not 1 <= ndim <= MAX_NDIM:
        raise IDXFormatError(f"{path}: number of dimensions {ndim} not in 1..{MAX_NDIM}")
    dims = struct.unpack(f">{ndim}I", _read_exact(stream, 4 * ndim, path, "dimensions"))
    dtype = IDX_DTYPES[code]
    # the non-zero dimensions' product: (0, 2**32-1, 2**32-1) declares 0 bytes, yet no array
    # has that shape
    spanned = math.prod(d for d in dims if d) * dtype.itemsize
    if spanned > MAX_PAYLOAD_BYTES:
        raise IDXFormatError(
            f"{path}: dimensions {dims} of {dtype.itemsize}-byte elements declare {spanned} "
            f"bytes{' (the zero aside)' if 0 in dims else ''}, more than the limit of "
            f"{MAX_PAYLOAD_BYTES}"
        )
    size = 0 if 0 in dims else spanned
    payload = _read_payload(stream, size, path)
    if stream.read(1):
        raise IDXFormatError(f"{path}: trailing bytes after the {size}-byte payload of {dims}")
    return np.frombuffer(payload, dtype=dtype).reshape(dims).astype(dtype.newbyteorder("="))


def read_idx(path: str | os.PathLike[str]) -> NDArray[np.generic]:
    """Read an IDX file, raw or gzip-compressed.

    Args:
        path: The file to read.

    Returns:
        A writable array with the file's shape, in native byte order.

    Raises:
        IDXFormatError: The file is malformed (bad magic, unknown dtype, bad dimensions, too
            large, truncated, trailing bytes, broken gzip stream); the message names the file.
        OSError: The file cannot be opened.
    """
    path = Path(path)
    with _open(path) as stream:
        try:
            return _parse(stream, path)
        except (_gzip.BadGzipFile, EOFError, zlib.error) as exc:
            raise IDXFormatError(f"{path}: corrupt gzip stream: {exc}") from exc


def _code_for(dtype: np.dtype[np.generic]) -> int:
    for code, idx_dtype in IDX_DTYPES.items():
        if idx_dtype.kind == dtype.kind and idx_dtype.itemsize == dtype.itemsize:
            return code
    raise IDXFormatError(
        f"dtype {dtype} cannot be stored in IDX (uint8, int8, int16, int32, float32, float64)"
    )


def write_idx(
    path: str | os.PathLike[str], array: NDArray[np.generic], *, gzip: bool = False
) -> None:
    """Write an array as an IDX file, atomically.

    Args:
        path: Destination; written through a temporary file in the same directory.
        array: Array of an IDX dtype (uint8, int8, int16, int32, float32, float64) with
            1 to :data:`MAX_NDIM` dimensions.
        gzip: Compress the file with gzip (with a zero timestamp, so output is reproducible).

    Raises:
        IDXFormatError: The array's dtype, number of dimensions or a dimension (2**32 or
            more) cannot be stored in IDX.
    """
    array = np.asarray(array)
    code = _code_for(array.dtype)
    if not 1 <= array.ndim <= MAX_NDIM:
        raise IDXFormatError(f"cannot write a {array.ndim}-d array as IDX (1..{MAX_NDIM})")
    if any(d >= 1 << 32 for d in array.shape):
        raise IDXFormatError(
            f"cannot write shape {array.shape} as IDX: each dimension must be below 2**32"
        )
    header = bytes((0, 0, code, array.ndim)) + struct.pack(f">{array.ndim}I", *array.shape)
    data = header + np.ascontiguousarray(array, dtype=IDX_DTYPES[code]).tobytes()
    with atomic_open(Path(path)) as stream:
        stream.write(_gzip.compress(data, mtime=0) if gzip else data)
