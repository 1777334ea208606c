"""Unsigned LEB128 varints, shared by the stream and Bloomier-filter serialisations.

7 bits per byte, least significant group first, the high bit set on every byte but the last.
The reader is for hostile input: it rejects a truncated varint, one longer than 10 bytes, one
with superfluous high zero groups (not minimally encoded, so every value has one encoding)
and a value above 64 bits, each with a :class:`~deepzip.errors.CorruptFileError` that names
the field.
"""

from __future__ import annotations

from deepzip.errors import CorruptFileError

__all__ = ["MAX_BYTES", "MAX_VALUE", "encode", "encoded_len", "read"]

MAX_BYTES = 10
MAX_VALUE = (1 << 64) - 1


def encode(value: int) -> bytes:
    """The varint of ``0 <= value <= MAX_VALUE``."""
    if not 0 <= value <= MAX_VALUE:
        raise ValueError(f"varint value {value} is outside [0, 2**64)")
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def encoded_len(value: int) -> int:
    """Bytes :func:`encode` writes for ``value``."""
    return len(encode(value))


def read(buf: bytes | memoryview, pos: int, where: str, field: str) -> tuple[int, int]:
    """Read the varint at ``buf[pos:]``: ``(value, position after it)``.

    Args:
        buf: the serialised data.
        pos: where the varint starts.
        where: what is being read, for the error (a tensor or stream name).
        field: the field, for the error (``"payload length"``).

    Raises:
        CorruptFileError: truncated, longer than 10 bytes, not minimally encoded, or above
            64 bits.
    """
    value = 0
    for i in range(MAX_BYTES):
        if pos + i >= len(buf):
            raise CorruptFileError(f"{where}: truncated while reading {field} (offset {pos})")
        byte = buf[pos + i]
        value |= (byte & 0x7F) << (7 * i)
        if not byte & 0x80:
            if i and byte == 0:
                raise CorruptFileError(
                    f"{where}: {field} is an over-long varint (not minimally encoded)"
                )
            if value > MAX_VALUE:
                raise CorruptFileError(f"{where}: {field} exceeds 64 bits")
            return value, pos + i + 1
    raise CorruptFileError(f"{where}: {field} is a varint longer than {MAX_BYTES} bytes")
