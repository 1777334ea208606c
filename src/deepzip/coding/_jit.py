"""The compiled inner loops of the coders (numba), built on first use.

Importing this module imports nothing heavy: :func:`kernels` imports numba and defines the
kernels the first time it is called, and numba compiles each kernel for the argument types of
its first call (``uint8`` or ``uint16`` symbols). The kernels never raise: they report what
they consumed and the Python callers validate it.

Bit order everywhere is MSB-first: the first code's first bit is the most significant bit of
the first byte; the last byte is padded with zero bits.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, NamedTuple

__all__ = ["Kernels", "kernels"]


class Kernels(NamedTuple):
    """The compiled functions (see :func:`kernels` for their contracts)."""

    histogram: Callable[..., Any]
    pack_codes: Callable[..., Any]
    unpack_fixed: Callable[..., Any]
    decode_huffman: Callable[..., Any]


@functools.cache
def kernels() -> Kernels:
    """Import numba and define the kernels (once per process).

    * ``histogram(symbols, counts)``: ``counts[s] += 1`` for every symbol (``counts`` int64,
      zeroed by the caller, long enough for every symbol).
    * ``pack_codes(symbols, codes, lengths, out, tally=None) -> nbytes``: writes ``codes[s]``
      in ``lengths[s]`` bits (MSB-first, ``lengths[s] <= 32``) for every symbol into ``out``
      (uint8) and returns the number of bytes the codes take, ``ceil(total_bits / 8)``, the
      last one zero-padded. Bytes past the end of ``out`` are counted but not written, so a
      return value above ``len(out)`` means ``out`` was too short (and holds only the start).
      Given ``tally`` (int64, 2 entries), it sets ``tally[0]`` to the bits the codes take and
      ``tally[1]`` to the number of symbols of length 0 (which write nothing).
    * ``unpack_fixed(payload, width, out)``: reads ``len(out)`` values of ``width`` bits
      (``0 <= width <= 32``); the caller checks that the payload holds them.
    * ``decode_huffman(payload, out, tsym, tlen, tbits, maxlen, limit, first, offset, syms)
      -> bits``: table-driven canonical Huffman decode of ``len(out)`` symbols; returns the
      number of bits consumed, which exceeds ``8 * len(payload)`` when the payload ran out
      (reads past the end see zero bits). ``tsym``/``tlen`` hold ``2**tbits`` entries indexed
      by the next ``tbits`` bits (``tlen == 0``: the code is longer than ``tbits``); for longer
      codes ``limit[l]`` is the exclusive end of the length-``l`` codes left-justified to
      ``maxlen`` bits, ``first[l]`` the first code of length ``l`` and ``offset[l]`` the index
      in ``syms`` (symbols sorted by code) of that first code. The code must be complete
      (``limit[maxlen] == 2**maxlen``) so the search always stops.
    """
    import numba
    import numpy as np

    njit = numba.njit(cache=False, nogil=True, boundscheck=False)

    @njit
    def histogram(symbols: Any, counts: Any) -> None:
        for i in range(symbols.shape[0]):
            counts[symbols[i]] += 1

    @njit
    def pack_codes(symbols: Any, codes: Any, lengths: Any, out: Any, tally: Any = None) -> int:
        acc = np.uint64(0)
        nacc = 0
        pos = 0
        size = out.shape[0]
        bits = np.int64(0)  # (int64: pure Python would add in the lengths' uint8)
        uncoded = 0
        for i in range(symbols.shape[0]):
            s = symbols[i]
            n = lengths[s]
            if n == 0:
                uncoded += 1
            bits += np.int64(n)
            acc = (acc << np.uint64(n)) | np.uint64(codes[s])
            nacc += n
            while nacc >= 8:
                nacc -= 8
                if pos < size:  # never write past ``out`` (bounds checks are off)
                    out[pos] = np.uint8((acc >> np.uint64(nacc)) & np.uint64(0xFF))
                pos += 1
        if nacc > 0:
            if pos < size:
                out[pos] = np.uint8((acc << np.uint64(8 - nacc)) & np.uint64(0xFF))
            pos += 1
        if tally is not None:
            tally[0] = bits
            tally[1] = uncoded
        return pos

    @njit
    def unpack_fixed(payload: Any, width: int, out: Any) -> None:
        if width == 0:
            for i in range(out.shape[0]):
                out[i] = 0
            return
        n = payload.shape[0]
        buf = np.uint64(0)
        nbits = 0
        pos = 0
        mask = (np.uint64(1) << np.uint64(width)) - np.uint64(1)
        for i in range(out.shape[0]):
            while nbits < width:
                b = payload[pos] if pos < n else np.uint8(0)
                pos += 1
                buf = (buf << np.uint64(8)) | np.uint64(b)
                nbits += 8
            nbits -= width
            out[i] = (buf >> np.uint64(nbits)) & mask

    @njit
    def decode_huffman(
        payload: Any,
        out: Any,
        tsym: Any,
        tlen: Any,
        tbits: int,
        maxlen: int,
        limit: Any,
        first: Any,
        offset: Any,
        syms: Any,
    ) -> Any:
        n = payload.shape[0]
        buf = np.uint64(0)  # MSB-aligned: the next bit is bit 63
        nbits = np.int64(0)
        pos = 0
        consumed = np.int64(0)
        tshift = np.uint64(64 - tbits)
        lshift = np.uint64(64 - maxlen)
        for i in range(out.shape[0]):
            if nbits < 32:
                while nbits <= 56:
                    b = payload[pos] if pos < n else np.uint8(0)
                    pos += 1
                    buf |= np.uint64(b) << np.uint64(56 - nbits)
                    nbits += 8
            idx = np.int64(buf >> tshift)
            length = np.int64(tlen[idx])
            if length != 0:
                out[i] = tsym[idx]
            else:
                v = np.int64(buf >> lshift)
                length = np.int64(tbits + 1)
                while v >= limit[length]:
                    length += 1
                code = v >> (maxlen - length)
                out[i] = syms[offset[length] + code - first[length]]
            buf <<= np.uint64(length)
            nbits -= length
            consumed += length
        return consumed

    return Kernels(histogram, pack_codes, unpack_fixed, decode_huffman)
