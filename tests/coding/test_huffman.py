"""Canonical length-limited Huffman: optimal lengths, limits, Kraft, canonical codes, decode."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from deepzip.coding import huffman
from deepzip.errors import ConfigError, CorruptFileError
from huffman_reference import reference_huffman_cost


def kraft_sum(lengths: np.ndarray) -> float:
    used = lengths[lengths > 0].astype(np.float64)
    return float(np.sum(2.0**-used))


def prefix_free(codes: np.ndarray, lengths: np.ndarray) -> bool:
    words = [format(int(c), f"0{int(n)}b") for c, n in zip(codes, lengths, strict=True) if n]
    words.sort()
    return all(not b.startswith(a) for a, b in itertools.pairwise(words))


counts_strategy = st.lists(st.integers(0, 10**6), min_size=1, max_size=300)


@settings(max_examples=80, deadline=None)
@given(counts_strategy)
def test_lengths_are_optimal_complete_and_monotone(counts: list[int]) -> None:
    c = np.array(counts, dtype=np.int64)
    lengths = huffman.code_lengths(c)
    used = c > 0
    assert np.array_equal(lengths > 0, used)
    if used.sum() == 0:
        return
    assert int(lengths.max()) <= huffman.MAX_CODE_LENGTH
    if used.sum() == 1:
        assert int(lengths[used][0]) == 1
        return
    assert kraft_sum(lengths) == 1.0
    if int(lengths.max()) < huffman.MAX_CODE_LENGTH:  # the limit never bit: exactly optimal
        assert int(np.dot(c, lengths.astype(np.int64))) == reference_huffman_cost(counts)
    # a more frequent symbol never has a longer code
    order = np.argsort(-c[used], kind="stable")
    assert np.all(np.diff(lengths[used][order].astype(int)) >= 0)


@settings(max_examples=40, deadline=None)
@given(st.lists(st.integers(1, 10**9), min_size=2, max_size=200), st.integers(8, 24))
def test_length_limit_is_never_exceeded(counts: list[int], max_length: int) -> None:
    c = np.array(counts, dtype=np.int64)
    lengths = huffman.code_lengths(c, max_length)
    assert int(lengths.max()) <= max_length
    assert kraft_sum(lengths) == 1.0


def test_fibonacci_counts_need_limiting() -> None:
    fib = [1, 1]
    while len(fib) < 40:
        fib.append(fib[-1] + fib[-2])
    c = np.array(fib, dtype=np.int64)
    unlimited_depth = len(fib) - 1  # a Fibonacci distribution gives a maximally skewed tree
    assert reference_huffman_cost(fib) < int(np.dot(c, huffman.code_lengths(c, 24)))
    for limit in (6, 10, 24):
        lengths = huffman.code_lengths(c, limit)
        assert int(lengths.max()) == limit < unlimited_depth
        assert kraft_sum(lengths) == 1.0
    assert huffman.code_lengths(np.ones(64, dtype=np.int64), 6).tolist() == [6] * 64
    with pytest.raises(ValueError, match="do not fit"):
        huffman.code_lengths(np.ones(65, dtype=np.int64), 6)


def test_canonical_codes_literal() -> None:
    # DEFLATE's example (RFC 1951, 3.2.2): lengths (3,3,3,3,3,2,4,4) for A..H
    lengths = np.array([3, 3, 3, 3, 3, 2, 4, 4], dtype=np.uint8)
    codes = huffman.canonical_codes(lengths)
    assert codes.tolist() == [0b010, 0b011, 0b100, 0b101, 0b110, 0b00, 0b1110, 0b1111]


@settings(max_examples=60, deadline=None)
@given(counts_strategy)
def test_canonical_codes_are_prefix_free_and_ordered(counts: list[int]) -> None:
    lengths = huffman.code_lengths(np.array(counts, dtype=np.int64))
    codes = huffman.canonical_codes(lengths)
    assert prefix_free(codes, lengths)
    used = np.flatnonzero(lengths)
    order = used[np.lexsort((used, lengths[used]))]
    top = int(lengths.max()) if used.size else 0
    left_justified = [int(codes[s]) << (top - int(lengths[s])) for s in order]
    assert left_justified == sorted(left_justified)


def test_within_one_bit_of_entropy_on_random_streams() -> None:
    rng = np.random.default_rng(3)
    for alphabet in (2, 5, 32, 256):
        p = rng.dirichlet(np.full(alphabet, 0.5))
        symbols = rng.choice(alphabet, size=20000, p=p).astype(np.uint16)
        counts = np.bincount(symbols, minlength=alphabet)
        freq = counts[counts > 0] / symbols.size
        entropy = float(-np.sum(freq * np.log2(freq)))  # independent of deepzip
        lengths = huffman.code_lengths(counts)
        bps = huffman.encoded_bits(counts, lengths) / symbols.size
        assert entropy <= bps + 1e-12
        if (counts > 0).sum() > 1:
            assert bps < entropy + 1


def _round_trip(symbols: np.ndarray, alphabet: int) -> None:
    dtype = np.uint8 if alphabet <= 256 else np.uint16
    sym = symbols.astype(dtype)
    counts = np.bincount(sym, minlength=alphabet)
    lengths = huffman.code_lengths(counts)
    payload = huffman.encode(sym, lengths, counts)
    assert len(payload) == (int(np.dot(counts, lengths.astype(np.int64))) + 7) // 8 or (
        np.count_nonzero(counts) == 1 and payload == b""
    )
    out = huffman.decode(payload, lengths, sym.size, dtype=dtype)
    assert out.dtype == dtype
    assert np.array_equal(out, sym)


def test_round_trip_with_long_codes() -> None:
    """Codes longer than the 11-bit table take the slow path; lengths up to 24."""
    fib = [1, 1]
    while len(fib) < 30:
        fib.append(fib[-1] + fib[-2])
    symbols = np.repeat(np.arange(30), fib)
    rng = np.random.default_rng(0)
    rng.shuffle(symbols)
    counts = np.bincount(symbols)
    assert int(huffman.code_lengths(counts).max()) == 24
    _round_trip(symbols, 30)
    _round_trip(rng.integers(0, 3000, 50000) * 20, 65536)


@settings(max_examples=40, deadline=None)
@given(
    alphabet=st.sampled_from([1, 2, 3, 17, 256, 4096]),
    data=st.data(),
)
def test_round_trip(alphabet: int, data: st.DataObject) -> None:
    n = data.draw(st.integers(1, 400))
    skew = data.draw(st.floats(0.05, 5.0))
    seed = data.draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    p = rng.dirichlet(np.full(alphabet, skew)) if alphabet > 1 else np.ones(1)
    _round_trip(rng.choice(alphabet, size=n, p=p), alphabet)


def test_decode_rejects_bad_payloads() -> None:
    lengths = np.array([1, 2, 2], dtype=np.uint8)  # codes 0, 10, 11
    assert huffman.decode(b"\x5b", lengths, 5).tolist() == [0, 1, 2, 0, 2]
    with pytest.raises(CorruptFileError, match="cannot hold"):
        huffman.decode(b"\x5b", lengths, 9)  # 9 codes need at least 9 bits
    with pytest.raises(CorruptFileError, match="payload ends"):
        huffman.decode(b"\xff", lengths, 5)  # 11 11 11 11 | needs 10 bits
    with pytest.raises(CorruptFileError, match="trailing"):
        huffman.decode(b"\x00\x00", lengths, 8)  # 8 one-bit codes, then a spare byte
    with pytest.raises(CorruptFileError, match="padding"):
        huffman.decode(b"\x5d", lengths, 4)  # 0 10 11 10, then a padding bit of 1
    with pytest.raises(CorruptFileError, match="no payload"):
        huffman.decode(b"\x00", np.array([0, 1], dtype=np.uint8), 3)


@pytest.mark.parametrize(
    ("lengths", "message"),
    [
        ([0, 0], "no symbols"),
        ([1, 2], "complete"),  # Kraft 3/4
        ([1, 1, 1], "complete"),  # Kraft 3/2
        ([2], "length 1"),
        ([25, 25], "exceeds"),
    ],
)
def test_check_lengths(lengths: list[int], message: str) -> None:
    with pytest.raises(CorruptFileError, match=message):
        huffman.check_lengths(np.array(lengths), what="layer x")


def test_decode_default_dtype_fits_the_alphabet() -> None:
    """Symbols >= 256 come back whole by default (uint16), never wrapped to uint8."""
    sym = np.array([0, 300, 300, 5, 300], dtype=np.uint16)
    counts = np.bincount(sym, minlength=301)
    lengths = huffman.code_lengths(counts)
    payload = huffman.encode(sym, lengths, counts)
    out = huffman.decode(payload, lengths, sym.size)
    assert out.dtype == np.uint16
    assert out.tolist() == sym.tolist()
    # 256 symbols (largest 255) still fit uint8; an explicit wider dtype is honoured
    small = np.array([0, 255, 255], dtype=np.uint8)
    c256 = np.bincount(small, minlength=256)
    l256 = huffman.code_lengths(c256)
    p256 = huffman.encode(small, l256, c256)
    assert huffman.decode(p256, l256, small.size).dtype == np.uint8
    wide = huffman.decode(p256, l256, small.size, dtype=np.uint32)
    assert wide.dtype == np.uint32
    assert wide.tolist() == small.tolist()


def test_decode_rejects_a_dtype_too_small_for_the_alphabet() -> None:
    sym = np.array([0, 300, 300, 5, 300], dtype=np.uint16)
    counts = np.bincount(sym, minlength=301)
    lengths = huffman.code_lengths(counts)
    payload = huffman.encode(sym, lengths, counts)
    with pytest.raises(ConfigError, match=r"dtype uint8 cannot hold symbol 300"):
        huffman.decode(payload, lengths, sym.size, dtype=np.uint8)
    with pytest.raises(ConfigError, match=r"dtype int8 cannot hold symbol 300"):
        huffman.decode(payload, lengths, sym.size, dtype=np.int8)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="at most 65536 symbols, got 65537"):
        huffman.decode(b"", np.ones(65537, dtype=np.uint8), 0, dtype=np.uint32)
