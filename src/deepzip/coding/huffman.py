"""Canonical, length-limited Huffman codes: code lengths, codes, compiled encode and decode.

* :func:`code_lengths` builds an optimal Huffman code from symbol counts (two-queue
  construction over the counts sorted by ``(count, symbol)``), limits it to ``max_length``
  bits with the JPEG rebalancing step (ITU T.81 Annex K.3, which keeps the Kraft sum at
  exactly 1), and hands the lengths out again to the symbols sorted by decreasing count
  (ties: smaller symbol first), so more frequent symbols never get longer codes. Every used
  symbol gets a length in ``[1, max_length]``; unused symbols get 0. A single used symbol gets
  length 1.
* :func:`canonical_codes` assigns the canonical (DEFLATE-style) codes: the used symbols sorted
  by ``(length, symbol)`` receive consecutive code values, shifted left whenever the length
  grows. Only the lengths need to be stored.
* :func:`encode` packs the codes (compiled); :func:`decode` is table-driven and compiled: an
  ``2**min(11, max length)`` entry table resolves short codes in one lookup, longer codes by a
  search over the canonical length limits.

A set of lengths is *valid* (:func:`check_lengths`) when no length is negative, every used
(non-zero) length is in ``[1, MAX_CODE_LENGTH]`` and the code is complete (Kraft sum exactly
1), or when exactly one symbol is used and its length is 1. Complete codes make every bit
pattern decodable, so a decoder needs no "invalid code" state.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from deepzip.coding._jit import kernels
from deepzip.coding.bitio import pack_codes
from deepzip.errors import ConfigError, CorruptFileError

__all__ = [
    "MAX_CODE_LENGTH",
    "canonical_codes",
    "check_lengths",
    "check_payload_size",
    "code_lengths",
    "decode",
    "encode",
    "encoded_bits",
    "output_dtype",
]

MAX_CODE_LENGTH = 24
"""The longest code deepzip writes or accepts."""

_TABLE_BITS = 11
_MAX_ALPHABET = 1 << 16  # the decode tables hold symbols as uint16


def output_dtype(dtype: type[np.unsignedinteger] | None, alphabet_size: int) -> np.dtype[Any]:
    """The dtype a decoder returns for ``alphabet_size`` symbols (the ``dtype`` argument).

    ``None`` means uint8 for alphabets of up to 256 symbols, else uint16.

    Raises:
        ConfigError: the dtype is not an integer type or cannot hold symbol
            ``alphabet_size - 1``.
    """
    out = np.dtype(dtype if dtype is not None else np.uint8 if alphabet_size <= 256 else np.uint16)
    top = alphabet_size - 1
    if out.kind not in "ui" or top > int(np.iinfo(out).max):
        raise ConfigError(
            f"dtype {out} cannot hold symbol {top} of an alphabet of {alphabet_size} symbols"
        )
    return out


def _huffman_depths(sorted_counts: list[int]) -> list[int]:
    """Leaf depths of a Huffman tree over counts sorted ascending (two-queue method)."""
    m = len(sorted_counts)
    # node ids: leaves 0..m-1, internal nodes m..2m-2 (created in non-decreasing weight order)
    weight = [*sorted_counts, *([0] * (m - 1))]
    parent = [0] * (2 * m - 1)
    leaf, internal, new = 0, m, m

    def pop() -> int:
        nonlocal leaf, internal
        # prefer the leaf on ties: fewer long codes for the same cost
        if leaf < m and (internal >= new or weight[leaf] <= weight[internal]):
            leaf += 1
            return leaf - 1
        internal += 1
        return internal - 1

    for _ in range(m - 1):
        a = pop()
        b = pop()
        weight[new] = weight[a] + weight[b]
        parent[a] = parent[b] = new
        new += 1
    depth = [0] * (2 * m - 1)
    for node in range(2 * m - 3, -1, -1):  # the root (2m-2) has depth 0
        depth[node] = depth[parent[node]] + 1
    return depth[:m]


def _limit(bl_count: list[int], max_length: int) -> list[int]:
    """Move codes longer than ``max_length`` up, keeping the Kraft sum (JPEG Annex K.3)."""
    bits = list(bl_count)
    for i in range(len(bits) - 1, max_length, -1):
        while bits[i] > 0:
            j = i - 2
            while bits[j] == 0:
                j -= 1
            bits[i] -= 2
            bits[i - 1] += 1
            bits[j + 1] += 2
            bits[j] -= 1
    return bits[: max_length + 1]


def code_lengths(counts: np.ndarray, max_length: int = MAX_CODE_LENGTH) -> np.ndarray:
    """Length-limited Huffman code lengths for symbol counts.

    Args:
        counts: non-negative integer count per symbol (1-D, any length up to 65536).
        max_length: longest allowed code, ``1..MAX_CODE_LENGTH``; must leave room for every
            used symbol (``2**max_length >= number of used symbols``).

    Returns:
        uint8 lengths, one per symbol: 0 for unused symbols, else ``1..max_length``.

    Raises:
        ValueError: negative counts, ``max_length`` out of range or too small.
    """
    c = np.asarray(counts)
    if c.ndim != 1 or c.dtype.kind not in "ui":
        raise ValueError(f"counts must be a 1-D integer array, got {c.dtype} {c.shape}")
    if c.size and int(c.min()) < 0:
        raise ValueError("counts must be non-negative")
    if not 1 <= max_length <= MAX_CODE_LENGTH:
        raise ValueError(f"max_length must be in [1, {MAX_CODE_LENGTH}], got {max_length}")
    lengths = np.zeros(c.size, dtype=np.uint8)
    used = np.flatnonzero(c)
    m = used.size
    if m == 0:
        return lengths
    if m == 1:
        lengths[used[0]] = 1
        return lengths
    if m > (1 << max_length):
        raise ValueError(f"{m} symbols do not fit in codes of at most {max_length} bits")
    used_counts = c[used].astype(np.int64)
    # ascending by (count, symbol): lexsort's last key is the primary one
    asc = used[np.lexsort((used, used_counts))]
    depths = _huffman_depths([int(x) for x in c[asc]])
    bl_count = [0] * (max(depths) + 1)
    for d in depths:
        bl_count[d] += 1
    if len(bl_count) - 1 > max_length:
        bl_count = _limit(bl_count, max_length)
    # hand the lengths, shortest first, to the symbols by decreasing count (ties: lower symbol)
    desc = used[np.lexsort((used, -used_counts))]
    sorted_lengths = np.repeat(np.arange(len(bl_count), dtype=np.uint8), bl_count)
    lengths[desc] = sorted_lengths
    return lengths


def check_lengths(lengths: np.ndarray, *, what: str) -> None:
    """Raise :class:`CorruptFileError` unless ``lengths`` is a valid set (module docstring)."""
    lens = np.asarray(lengths)
    if lens.size and int(lens.min()) < 0:
        raise CorruptFileError(f"{what}: negative Huffman code length {int(lens.min())}")
    used = lens[lens > 0].astype(np.int64)
    if used.size == 0:
        raise CorruptFileError(f"{what}: Huffman code has no symbols")
    top = int(used.max())
    if top > MAX_CODE_LENGTH:
        raise CorruptFileError(
            f"{what}: Huffman code length {top} exceeds the maximum {MAX_CODE_LENGTH}"
        )
    if used.size == 1:
        if top != 1:
            raise CorruptFileError(
                f"{what}: a one-symbol Huffman code must have length 1, not {top}"
            )
        return
    kraft = int(np.sum(np.left_shift(np.int64(1), MAX_CODE_LENGTH - used)))
    if kraft != 1 << MAX_CODE_LENGTH:
        raise CorruptFileError(
            f"{what}: Huffman code lengths are not a complete prefix code "
            f"(Kraft sum {kraft / (1 << MAX_CODE_LENGTH):.9g}, must be 1)"
        )


def canonical_codes(lengths: np.ndarray) -> np.ndarray:
    """Canonical code values (uint32) for code lengths (0 = unused symbol, code 0)."""
    lens = np.asarray(lengths).astype(np.int64)
    codes = np.zeros(lens.size, dtype=np.uint32)
    used = np.flatnonzero(lens)
    if used.size == 0:
        return codes
    order = used[np.lexsort((used, lens[used]))]
    sl = lens[order]
    # code_i = (code_{i-1} + 1) << (l_i - l_{i-1}); in left-justified form (to L bits) the
    # codes are the running sum of 2**(L - l) over the previous symbols.
    top = int(sl.max())
    step = np.left_shift(np.int64(1), top - sl)
    start = np.concatenate(([0], np.cumsum(step)[:-1]))
    codes[order] = (start >> (top - sl)).astype(np.uint32)
    return codes


def encoded_bits(counts: np.ndarray, lengths: np.ndarray) -> int:
    """The payload size in bits: ``sum(counts * lengths)`` (0 for a one-symbol code)."""
    if np.count_nonzero(np.asarray(lengths)) <= 1:
        return 0
    return int(np.dot(np.asarray(counts, dtype=np.int64), np.asarray(lengths, dtype=np.int64)))


def encode(symbols: np.ndarray, lengths: np.ndarray, counts: np.ndarray) -> bytes:
    """Huffman-code ``symbols`` (uint8/uint16, every one with a non-zero length).

    ``counts`` is the symbols' histogram (it sizes the output). A one-symbol code writes
    nothing: the count alone says how often the symbol repeats.

    Raises:
        ValueError: ``counts`` is not the histogram of ``symbols`` under these lengths, or a
            symbol has no code (see ``deepzip.coding.bitio.pack_codes``).
    """
    if np.count_nonzero(np.asarray(lengths)) <= 1:  # nothing written: every symbol is the one
        used = np.flatnonzero(np.asarray(lengths))
        sym = np.asarray(symbols).reshape(-1)
        if sym.size and (used.size == 0 or bool(np.any(sym != used[0]))):
            raise ValueError("a symbol has no code (a one-symbol code codes only its symbol)")
        return b""
    total = encoded_bits(counts, lengths)
    return pack_codes(symbols, canonical_codes(lengths), np.asarray(lengths, np.uint8), total)


def check_payload_size(nbytes: int, lengths: np.ndarray, count: int, *, what: str) -> None:
    """Reject a payload size that cannot be ``count`` codes of these lengths plus padding.

    Raises:
        CorruptFileError: naming ``what`` and the sizes.
    """
    lens = np.asarray(lengths)
    used = lens[lens > 0].astype(np.int64)
    if used.size <= 1:
        if nbytes:
            raise CorruptFileError(f"{what}: a one-symbol Huffman stream must have no payload")
        return
    lo, hi = int(used.min()), int(used.max())
    if count * lo > 8 * nbytes or nbytes > (count * hi + 7) // 8:
        raise CorruptFileError(
            f"{what}: Huffman payload of {nbytes} bytes cannot hold {count} codes of "
            f"{lo}..{hi} bits"
        )


def decode(
    payload: bytes | memoryview,
    lengths: np.ndarray,
    count: int,
    *,
    dtype: type[np.unsignedinteger] | None = None,
    what: str = "Huffman stream",
) -> np.ndarray:
    """Decode ``count`` symbols; ``lengths`` must be valid (:func:`check_lengths`).

    The payload must be exactly the coded bits plus zero padding to a byte.

    Args:
        payload: the coded bits.
        lengths: one code length per symbol of the alphabet (at most 65536 symbols).
        count: how many symbols to decode.
        dtype: the integer dtype of the result; it must hold every symbol of the alphabet
            (``len(lengths) - 1``). ``None``: uint8 for alphabets of up to 256 symbols, else
            uint16.
        what: names the stream in error messages.

    Raises:
        ConfigError: more than 65536 lengths, or a ``dtype`` that cannot hold the alphabet's
            largest symbol.
        CorruptFileError: the lengths are invalid, or the payload is too short, too long, or
            has non-zero padding.
    """
    lens = np.asarray(lengths).astype(np.int64)
    if lens.size > _MAX_ALPHABET:
        raise ConfigError(
            f"a Huffman alphabet has at most {_MAX_ALPHABET} symbols, got {lens.size} lengths"
        )
    out_dtype = output_dtype(dtype, lens.size)
    check_lengths(lengths, what=what)
    buf = np.frombuffer(payload, dtype=np.uint8)
    used = np.flatnonzero(lens)
    check_payload_size(buf.size, lens, count, what=what)
    out = np.empty(count, dtype=out_dtype)
    if used.size == 1:
        out.fill(used[0])
        return out
    max_len = int(lens[used].max())
    if count == 0:
        return out
    codes = canonical_codes(lens).astype(np.int64)
    tbits = min(_TABLE_BITS, max_len)
    tsym = np.zeros(1 << tbits, dtype=np.uint16)
    tlen = np.zeros(1 << tbits, dtype=np.uint8)
    short = used[lens[used] <= tbits]
    span = np.left_shift(1, tbits - lens[short])
    begin = codes[short] << (tbits - lens[short])
    idx = np.repeat(begin, span) + (
        np.arange(int(span.sum())) - np.repeat(np.cumsum(span) - span, span)
    )
    tsym[idx] = np.repeat(short, span)
    tlen[idx] = np.repeat(lens[short], span)
    order = used[np.lexsort((used, lens[used]))]
    bl_count = np.bincount(lens[used], minlength=max_len + 2)
    first = np.zeros(max_len + 2, dtype=np.int64)
    offset = np.zeros(max_len + 2, dtype=np.int64)
    limit = np.zeros(max_len + 2, dtype=np.int64)
    for length in range(1, max_len + 1):  # DEFLATE's first code of each length
        first[length] = (int(first[length - 1]) + int(bl_count[length - 1])) << 1
        offset[length] = int(offset[length - 1]) + int(bl_count[length - 1])
        limit[length] = (int(first[length]) + int(bl_count[length])) << (max_len - length)
    syms = order.astype(np.uint16)
    consumed = int(
        kernels().decode_huffman(buf, out, tsym, tlen, tbits, max_len, limit, first, offset, syms)
    )
    if consumed > 8 * buf.size:
        raise CorruptFileError(
            f"{what}: payload ends after {8 * buf.size} bits, the codes need {consumed}"
        )
    if (consumed + 7) // 8 != buf.size:
        raise CorruptFileError(
            f"{what}: {buf.size - (consumed + 7) // 8} unexpected trailing payload bytes"
        )
    if consumed % 8 and int(buf[-1]) & ((1 << (8 - consumed % 8)) - 1):
        raise CorruptFileError(f"{what}: non-zero padding bits")
    return out
