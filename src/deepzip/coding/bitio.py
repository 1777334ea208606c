"""Bit I/O, MSB-first: a bit writer and reader for small headers and tables, and compiled
packing of large arrays (fixed-width values, or variable-length codes looked up per symbol).

Bit order: the first bit written is the most significant bit of the first byte; the last byte
is padded with zero bits. Readers treat their input as hostile: reading past the end raises
:class:`~deepzip.errors.CorruptFileError` naming what was being read.
"""

from __future__ import annotations

import numpy as np

from deepzip.coding._jit import kernels
from deepzip.errors import CorruptFileError

__all__ = [
    "BitReader",
    "BitWriter",
    "pack_codes",
    "pack_fixed",
    "unpack_fixed",
]

_MAX_WIDTH = 32


def _check_width(width: int) -> None:
    if not 0 <= width <= _MAX_WIDTH:
        raise ValueError(f"bit width must be in [0, {_MAX_WIDTH}], got {width}")


def _as_uint_array(values: np.ndarray, width: int) -> np.ndarray:
    """``values`` as a contiguous uint8/uint16/uint32 array, checked to fit in ``width`` bits."""
    arr = np.ascontiguousarray(values).reshape(-1)
    if arr.dtype.kind not in "ui":
        raise ValueError(f"values must be integers, got dtype {arr.dtype}")
    if arr.size and (int(arr.min()) < 0 or int(arr.max()) >= (1 << width)):
        raise ValueError(
            f"values must be in [0, 2**{width}), got range [{int(arr.min())}, {int(arr.max())}]"
        )
    target = np.uint8 if width <= 8 else np.uint16 if width <= 16 else np.uint32
    return arr.astype(target, copy=False)


def pack_fixed(values: np.ndarray, width: int) -> bytes:
    """Pack non-negative integers in ``width`` bits each (0..32), MSB-first, zero-padded.

    The result has exactly ``ceil(len(values) * width / 8)`` bytes; ``width == 0`` gives
    ``b""`` (every value must then be 0).

    Raises:
        ValueError: ``width`` out of range, non-integer values, or a value that does not fit.
    """
    _check_width(width)
    arr = _as_uint_array(values, width)
    if width == 0 or arr.size == 0:
        return b""
    if width > 16:  # only small tables are this wide: numpy, no extra compiled variant
        bits = np.unpackbits(arr.astype(">u4").view(np.uint8).reshape(-1, 4), axis=1)
        return np.packbits(bits[:, 32 - width :].reshape(-1)).tobytes()
    nbytes = (arr.size * width + 7) // 8
    out = np.empty(nbytes, dtype=np.uint8)
    codes = np.arange(1 << width, dtype=np.uint32)
    lengths = np.full(1 << width, width, dtype=np.uint8)
    written = kernels().pack_codes(arr, codes, lengths, out)
    if written != nbytes:  # pragma: no cover - the kernel's contract
        raise RuntimeError(f"pack_fixed wrote {written} bytes, expected {nbytes}")
    return out.tobytes()


def unpack_fixed(
    data: bytes | memoryview | np.ndarray,
    count: int,
    width: int,
    *,
    dtype: type[np.unsignedinteger] | np.dtype[np.unsignedinteger] = np.uint32,
    what: str = "bit field",
) -> np.ndarray:
    """Read ``count`` values of ``width`` bits (MSB-first) from the start of ``data``.

    Args:
        data: at least ``ceil(count * width / 8)`` bytes; extra bytes are ignored. An array
            is read as its bytes in row-major order (``data.tobytes()``), whatever its dtype
            and shape.
        count: how many values.
        width: bits per value, 0..32.
        dtype: the output dtype (an unsigned type wide enough for ``width`` bits).
        what: names the data in error messages.

    Raises:
        CorruptFileError: ``data`` is too short for ``count`` values.
        ValueError: ``width`` or ``count`` out of range, or ``dtype`` too narrow.
    """
    _check_width(width)
    if count < 0:
        raise ValueError(f"count must be >= 0, got {count}")
    out_dtype = np.dtype(dtype)
    if out_dtype.kind != "u" or out_dtype.itemsize * 8 < width:
        raise ValueError(f"dtype {out_dtype} cannot hold {width}-bit values")
    if isinstance(data, np.ndarray):  # its bytes (row-major), whatever its dtype and shape
        buf = np.ascontiguousarray(data).reshape(-1).view(np.uint8)
    else:
        buf = np.frombuffer(data, dtype=np.uint8)
    need = (count * width + 7) // 8
    if buf.size < need:
        raise CorruptFileError(
            f"{what}: {count} values of {width} bits need {need} bytes, only {buf.size} present"
        )
    out = np.empty(count, dtype=out_dtype)
    if count:
        kernels().unpack_fixed(buf, width, out)
    return out


def pack_codes(
    symbols: np.ndarray, codes: np.ndarray, lengths: np.ndarray, total_bits: int
) -> bytes:
    """Concatenate the code of every symbol: ``codes[s]`` in ``lengths[s]`` bits, MSB-first.

    Args:
        symbols: uint8 or uint16 symbols, each a valid index into ``codes`` and ``lengths``
            with a non-zero length.
        codes: uint32 code values, ``codes[s] < 2**lengths[s]``.
        lengths: uint8 code lengths, at most 32.
        total_bits: ``sum(lengths[symbols])``, which sizes the output.

    Returns:
        ``ceil(total_bits / 8)`` bytes, the last one zero-padded.

    Raises:
        ValueError: symbols that are not uint8/uint16, that index past ``codes`` or whose
            length is 0, ``codes`` and ``lengths`` of different sizes, a length above 32, a
            code wider than its length, or a ``total_bits`` that is not the codes' total
            (checked bit for bit, without writing past the output).
    """
    sym = np.ascontiguousarray(symbols).reshape(-1)
    if sym.dtype not in (np.uint8, np.uint16):
        raise ValueError(f"symbols must be uint8 or uint16, got {sym.dtype}")
    code_arr = np.ascontiguousarray(codes, dtype=np.uint32).reshape(-1)
    len_arr = np.ascontiguousarray(lengths, dtype=np.uint8).reshape(-1)
    if code_arr.size != len_arr.size:
        raise ValueError(f"{code_arr.size} codes but {len_arr.size} lengths")
    if len_arr.size and int(len_arr.max()) > _MAX_WIDTH:
        raise ValueError(f"code lengths must be at most {_MAX_WIDTH}, got {int(len_arr.max())}")
    if np.any(code_arr.astype(np.uint64) >> len_arr.astype(np.uint64)):
        raise ValueError("every code must fit in its length (codes[s] < 2**lengths[s])")
    if sym.size and int(sym.max()) >= len_arr.size:
        raise ValueError(f"symbol {int(sym.max())} has no code ({len_arr.size} codes)")
    if total_bits < 0:
        raise ValueError(f"total_bits must be >= 0, got {total_bits}")
    nbytes = (total_bits + 7) // 8
    out = np.empty(nbytes, dtype=np.uint8)
    tally = np.zeros(2, dtype=np.int64)  # the codes' bits, the symbols of length 0
    written = kernels().pack_codes(sym, code_arr, len_arr, out, tally)  # never past ``out``
    if int(tally[1]):
        raise ValueError(f"{int(tally[1])} symbol(s) of length 0: a symbol used has no code")
    if int(tally[0]) != total_bits:  # bit for bit: a byte count hides a total a few bits off
        raise ValueError(
            f"total_bits {total_bits} does not match the codes ({int(tally[0])} bits, "
            f"{written} bytes)"
        )
    return out.tobytes()


class BitWriter:
    """Accumulates bit fields MSB-first; :meth:`getvalue` returns them zero-padded to bytes.

    Meant for headers and tables (a Python call per field); :meth:`write_fixed` and
    :meth:`write_gammas` write a whole array at once, at any bit alignment.
    """

    def __init__(self) -> None:
        self._out = bytearray()
        self._acc = 0
        self._nacc = 0

    @property
    def bit_length(self) -> int:
        """The number of bits written so far."""
        return 8 * len(self._out) + self._nacc

    def write(self, value: int, nbits: int) -> None:
        """Append ``value`` in ``nbits`` bits (``0 <= value < 2**nbits``)."""
        if nbits < 0 or value < 0 or value >> nbits:
            raise ValueError(f"value {value} does not fit in {nbits} bits")
        self._acc = (self._acc << nbits) | value
        self._nacc += nbits
        if self._nacc >= 8:
            full = self._nacc // 8
            self._nacc -= 8 * full
            self._out += (self._acc >> self._nacc).to_bytes(full, "big")
            self._acc &= (1 << self._nacc) - 1

    def write_gamma(self, value: int) -> None:
        """Append ``value >= 1`` as an Elias-gamma code: ``n`` zeros, then ``value`` in
        ``n + 1`` bits, where ``n = floor(log2(value))``."""
        if value < 1:
            raise ValueError(f"Elias-gamma codes need a value >= 1, got {value}")
        n = value.bit_length() - 1
        self.write(0, n)
        self.write(value, n + 1)

    def write_gammas(self, values: np.ndarray) -> None:
        """Append every value as :meth:`write_gamma` would, in one call (for tables: it
        spells the codes out one byte per bit)."""
        v = np.asarray(values).reshape(-1)
        if v.size == 0:
            return
        if v.dtype.kind not in "ui" or int(v.min()) < 1 or int(v.max()) >= 1 << 32:
            raise ValueError(
                "Elias-gamma codes need integer values in [1, 2**32), "
                f"got range [{int(v.min())}, {int(v.max())}] ({v.dtype})"
            )
        v = v.astype(np.int64)
        # a gamma code is the value itself in 2 * bit_length - 1 bits (its zeros lead)
        widths = 2 * np.frexp(v.astype(np.float64))[1].astype(np.int64) - 1
        ends = np.cumsum(widths)
        shift = np.repeat(ends - 1, widths) - np.arange(int(ends[-1]))  # bits left of each
        bits = (np.repeat(v, widths) >> shift) & 1
        self._append_packed(np.packbits(bits.astype(np.uint8)).tobytes(), int(ends[-1]))

    def write_fixed(self, values: np.ndarray, width: int) -> None:
        """Append every value in ``width`` bits (compiled packing, at any alignment)."""
        packed = pack_fixed(values, width)
        self._append_packed(packed, np.asarray(values).size * width)

    def _append_packed(self, packed: bytes, nbits: int) -> None:
        """Append the first ``nbits`` bits of ``packed`` (MSB-first, zero bits after them)."""
        if nbits == 0:
            return
        s = self._nacc
        a = np.frombuffer(packed, dtype=np.uint8, count=(nbits + 7) // 8)
        if s:  # shift every byte right by s bits, the pending bits in front
            wide = np.append(a, 0).astype(np.uint16)
            prev = np.concatenate(([self._acc], wide[:-1]))
            a = (((prev << (8 - s)) & 0xFF) | (wide >> s)).astype(np.uint8)
        total = s + nbits
        full = total // 8
        self._out += a[:full].tobytes()
        self._nacc = total - 8 * full
        self._acc = int(a[full]) >> (8 - self._nacc) if self._nacc else 0

    def getvalue(self) -> bytes:
        """Everything written, the last byte padded with zero bits."""
        if self._nacc == 0:
            return bytes(self._out)
        return bytes(self._out) + bytes([(self._acc << (8 - self._nacc)) & 0xFF])


class BitReader:
    """Reads bit fields MSB-first from hostile data.

    Args:
        data: the bytes to read.
        what: names the data in error messages (e.g. ``"tensor 'fc1.weight' index stream"``).
    """

    def __init__(self, data: bytes | memoryview, *, what: str) -> None:
        self._data = bytes(data)
        self._pos = 0
        self._nbits = 8 * len(self._data)
        self.what = what

    @property
    def position(self) -> int:
        """Bits read so far."""
        return self._pos

    @property
    def bits_left(self) -> int:
        """Bits not read yet (padding included)."""
        return self._nbits - self._pos

    def _need(self, nbits: int, field: str) -> None:
        if nbits > self.bits_left:
            raise CorruptFileError(
                f"{self.what}: truncated while reading {field} "
                f"(need {nbits} bits, {self.bits_left} left)"
            )

    def _peek(self, nbits: int) -> int:
        """The next ``nbits`` bits (all present) without consuming them."""
        if nbits == 0:
            return 0
        start, end = self._pos // 8, (self._pos + nbits + 7) // 8
        chunk = int.from_bytes(self._data[start:end], "big")
        shift = 8 * (end - start) - (self._pos % 8) - nbits
        return (chunk >> shift) & ((1 << nbits) - 1)

    def read(self, nbits: int, field: str = "a bit field") -> int:
        """The next ``nbits`` bits as an unsigned integer."""
        if nbits < 0:
            raise ValueError(f"nbits must be >= 0, got {nbits}")
        self._need(nbits, field)
        value = self._peek(nbits)
        self._pos += nbits
        return value

    def read_gamma(self, max_bits: int, field: str = "an Elias-gamma code") -> int:
        """An Elias-gamma coded value ``>= 1`` of at most ``max_bits`` significant bits."""
        window = min(2 * max_bits - 1, self.bits_left)  # the longest valid code
        peek = self._peek(window)
        zeros = window - peek.bit_length()
        if zeros >= max_bits:
            raise CorruptFileError(
                f"{self.what}: {field} has {zeros} leading zeros, at most {max_bits - 1} are valid"
            )
        self._need(2 * zeros + 1, field)
        self._pos += 2 * zeros + 1
        return peek >> (window - 2 * zeros - 1)

    def read_fixed(
        self,
        count: int,
        width: int,
        field: str = "packed values",
        *,
        dtype: type[np.unsignedinteger] | np.dtype[np.unsignedinteger] = np.uint32,
    ) -> np.ndarray:
        """The next ``count`` values of ``width`` bits each (checked before allocating)."""
        if count < 0:
            raise ValueError(f"count must be >= 0, got {count}")
        _check_width(width)
        self._need(count * width, field)
        if self._pos % 8 == 0:
            start = self._pos // 8
            out = unpack_fixed(
                memoryview(self._data)[start:], count, width, dtype=dtype, what=self.what
            )
        else:
            start = self._pos // 8
            end = (self._pos + count * width + 7) // 8
            flat = np.unpackbits(np.frombuffer(self._data[start:end], dtype=np.uint8))
            off = self._pos % 8
            bits = flat[off : off + count * width].reshape(count, width).astype(np.uint64)
            weights = np.left_shift(np.uint64(1), np.arange(width - 1, -1, -1, dtype=np.uint64))
            out = (bits @ weights).astype(dtype) if width else np.zeros(count, dtype=dtype)
        self._pos += count * width
        return out

    def finish(self) -> None:
        """Check that only zero padding (fewer than 8 bits) is left."""
        left = self.bits_left
        if left >= 8:
            raise CorruptFileError(f"{self.what}: {left // 8} unexpected trailing bytes")
        if left and self.read(left, "padding"):
            raise CorruptFileError(f"{self.what}: non-zero padding bits")
