"""ANS via constriction: integer models, near-entropy size, exact round trips, bad payloads."""

from __future__ import annotations

import heapq
from fractions import Fraction

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from deepzip.coding import ans
from deepzip.errors import ConfigError, CorruptFileError


@settings(max_examples=80, deadline=None)
@given(
    st.lists(st.integers(0, 10**12), min_size=1, max_size=200).filter(any),
    st.integers(0, 24),
)
def test_quantized_weights_sum_to_the_precision(counts: list[int], precision: int) -> None:
    c = np.array(counts, dtype=np.int64)
    used = int(np.count_nonzero(c))
    if used > 1 << precision or (used > 1 and precision == 0):
        with pytest.raises(ValueError, match="cannot hold"):
            ans.quantize_counts(c, precision)
        return
    w = ans.quantize_counts(c, precision)
    assert int(w.sum()) == 1 << precision
    assert np.array_equal(w > 0, c > 0)
    # proportional up to the rounding: each weight within 1 of its share, or raised to 1
    share = c.astype(np.float64) * (1 << precision) / c.sum()
    if used <= (1 << precision) // 4:
        assert np.all(np.abs(w - share)[c > 0] <= np.maximum(1.0, 0.25 * share[c > 0]) + 1)


def test_quantization_is_exact_when_counts_are_powers_of_two() -> None:
    c = np.array([8, 4, 2, 0, 1, 1])
    assert ans.quantize_counts(c, 4).tolist() == [8, 4, 2, 0, 1, 1]
    assert ans.quantize_counts(c, 5).tolist() == [16, 8, 4, 0, 2, 2]
    # raising a tiny count to 1 takes the unit back from the largest weight
    assert ans.quantize_counts(np.array([1000, 1]), 1).tolist() == [1, 1]
    assert ans.quantize_counts(np.array([1000, 1, 1]), 2).tolist() == [2, 1, 1]


def _one_unit_at_a_time(counts: np.ndarray, precision: int) -> list[int]:
    """quantize_counts's documented rule, literally: floors, then unit by unit (a heap)."""
    used = np.flatnonzero(counts)
    c = [int(v) for v in counts[used]]
    total = sum(c)
    w = [max(1, v * (1 << precision) // total) for v in c]
    rem = [v * (1 << precision) - (v * (1 << precision) // total) * total for v in c]
    diff = (1 << precision) - sum(w)
    if diff > 0:
        for i in sorted(range(len(c)), key=lambda i: (-rem[i], i))[:diff]:
            w[i] += 1
    heap = [(Fraction(2 * c[i], 2 * w[i] - 1), i) for i in range(len(c)) if w[i] > 1]
    heapq.heapify(heap)
    for _ in range(-diff):
        _, i = heapq.heappop(heap)
        w[i] -= 1
        if w[i] > 1:
            heapq.heappush(heap, (Fraction(2 * c[i], 2 * w[i] - 1), i))
    out = [0] * counts.size
    for i, v in zip(used, w, strict=True):
        out[int(i)] = v
    return out


@settings(max_examples=120, deadline=None)
@given(
    alphabet=st.sampled_from([2, 5, 300, 4000]),
    kind=st.sampled_from(["zipf", "ties", "spread"]),
    seed=st.integers(0, 2**32 - 1),
    precision_step=st.integers(0, 11),
)
def test_taking_units_back_matches_one_at_a_time(
    alphabet: int, kind: str, seed: int, precision_step: int
) -> None:
    """The vectorised take-back picks exactly the units the one-at-a-time rule picks."""
    rng = np.random.default_rng(seed)
    if kind == "zipf":  # a few large counts and a long tail of ones
        counts = np.bincount(rng.zipf(1.3, 20_000) % alphabet, minlength=alphabet)
    elif kind == "ties":  # many equal keys: the tie-break decides
        counts = rng.integers(0, 4, alphabet)
    else:  # counts far apart, below the scaling threshold
        counts = rng.integers(0, 2, alphabet) * rng.choice([1, 3, 1000, 10**9], alphabet)
    if not counts.any():
        counts[0] = 1
    used = int(np.count_nonzero(counts))
    lowest = max(1, (used - 1).bit_length()) if used > 1 else 0
    precision = min(ans.MAX_PRECISION, lowest + precision_step)
    assert ans.quantize_counts(counts, precision).tolist() == _one_unit_at_a_time(counts, precision)


def _entropy_bits(symbols: np.ndarray) -> float:
    counts = np.bincount(symbols)
    p = counts[counts > 0] / symbols.size
    return float(-np.sum(counts[counts > 0] * np.log2(p)))


def test_large_stream_within_one_percent_of_entropy() -> None:
    rng = np.random.default_rng(5)
    p = rng.dirichlet(np.full(32, 0.7))
    symbols = rng.choice(32, size=300_000, p=p).astype(np.uint8)
    counts = np.bincount(symbols, minlength=32)
    precision, weights = ans.choose_precision(counts)
    payload = ans.encode(symbols, weights, precision)
    model_bits = 32 * 25  # a generous bound on any stored table of 32 weights
    assert 8 * len(payload) + model_bits <= 1.01 * _entropy_bits(symbols)
    out = ans.decode(payload, weights, precision, symbols.size)
    assert np.array_equal(out, symbols)


@settings(max_examples=40, deadline=None)
@given(
    alphabet=st.sampled_from([2, 3, 31, 256, 5000]),
    n=st.integers(1, 500),
    skew=st.floats(0.05, 5.0),
    seed=st.integers(0, 2**32 - 1),
)
def test_round_trip(alphabet: int, n: int, skew: float, seed: int) -> None:
    rng = np.random.default_rng(seed)
    dtype = np.uint8 if alphabet <= 256 else np.uint16
    symbols = rng.choice(alphabet, size=n, p=rng.dirichlet(np.full(alphabet, skew)))
    symbols = symbols.astype(dtype)
    counts = np.bincount(symbols, minlength=alphabet)
    precision, weights = ans.choose_precision(counts)
    payload = ans.encode(symbols, weights, precision)
    assert len(payload) % 4 == 0
    out = ans.decode(payload, weights, precision, n, dtype=dtype)
    assert out.dtype == dtype
    assert np.array_equal(out, symbols)


def test_chunked_coding_matches_one_piece() -> None:
    """More symbols than one conversion chunk: still one ANS stack, decoded in order."""
    rng = np.random.default_rng(1)
    symbols = rng.integers(0, 7, (1 << 20) + 12345).astype(np.uint8)
    counts = np.bincount(symbols, minlength=7)
    weights = ans.quantize_counts(counts, 12)
    payload = ans.encode(symbols, weights, 12)
    assert np.array_equal(ans.decode(payload, weights, 12, symbols.size), symbols)


def test_one_symbol_model_codes_nothing() -> None:
    w = ans.quantize_counts(np.array([0, 0, 9]), 0)
    assert w.tolist() == [0, 0, 1]
    assert ans.encode(np.full(9, 2, dtype=np.uint8), w, 0) == b""
    assert ans.decode(b"", w, 0, 4).tolist() == [2, 2, 2, 2]
    with pytest.raises(CorruptFileError, match="no payload"):
        ans.decode(b"\x01\x00\x00\x00", w, 0, 4)


def test_decode_rejects_bad_payloads() -> None:
    w = np.array([8, 4, 4])
    symbols = np.array([0, 1, 2, 0, 0, 1] * 50, dtype=np.uint8)
    payload = ans.encode(symbols, w, 4)
    with pytest.raises(CorruptFileError, match="whole 32-bit words"):
        ans.decode(payload[:-1], w, 4, symbols.size)
    # not a bad payload: the same words code the stream followed by any run of symbol 0
    longer = ans.decode(payload, w, 4, 100 * symbols.size)
    assert np.array_equal(longer[: symbols.size], symbols)
    assert not longer[symbols.size :].any()
    with pytest.raises(CorruptFileError, match="left"):
        ans.decode(payload, w, 4, symbols.size - 10)  # data left over
    with pytest.raises(CorruptFileError, match="invalid ANS payload"):
        ans.decode(payload[:-4] + b"\x00\x00\x00\x00", w, 4, symbols.size)  # ends in a 0 word
    with pytest.raises(CorruptFileError, match="empty ANS stream"):
        ans.decode(payload, w, 4, 0)


@settings(max_examples=60, deadline=None)
@given(st.binary(max_size=64).map(lambda b: b[: len(b) - len(b) % 4]), st.integers(0, 300))
def test_garbage_payload_raises_only_corrupt_file_error(payload: bytes, count: int) -> None:
    w = np.array([5, 0, 2, 1])
    try:
        out = ans.decode(payload, w, 3, count)
    except CorruptFileError:
        return
    assert out.size == count
    assert set(out.tolist()) <= {0, 2, 3}


def test_the_coded_model_has_exactly_the_stored_weights() -> None:
    """Symbol 1 of weight 1 in 2**24 costs 24 bits; weight 2 would cost 23 (up to one word
    of coder state)."""
    w = np.array([(1 << 24) - 2, 1, 1])
    payload = ans.encode(np.ones(100, dtype=np.uint8), w, 24)
    assert 100 * 24 // 8 <= len(payload) <= 100 * 24 // 8 + 4
    # a lower precision is scaled up exactly: weight 1 in 2**4 is 2**20 in 2**24, 4 bits each
    w4 = np.array([14, 1, 1])
    payload = ans.encode(np.full(800, 2, dtype=np.uint8), w4, 4)
    assert 800 * 4 // 8 <= len(payload) <= 800 * 4 // 8 + 4


def test_decode_default_dtype_fits_the_alphabet() -> None:
    """Symbols >= 256 come back whole by default (uint16), never wrapped to uint8."""
    sym = np.array([0, 300, 300, 5, 300], dtype=np.uint16)
    counts = np.bincount(sym, minlength=301)
    precision, weights = ans.choose_precision(counts)
    payload = ans.encode(sym, weights, precision)
    out = ans.decode(payload, weights, precision, sym.size)
    assert out.dtype == np.uint16
    assert out.tolist() == sym.tolist()
    one = ans.quantize_counts(np.bincount([300], minlength=301), 0)  # one-symbol model
    assert ans.decode(b"", one, 0, 2).tolist() == [300, 300]
    wide = ans.decode(payload, weights, precision, sym.size, dtype=np.uint32)
    assert wide.dtype == np.uint32
    assert wide.tolist() == sym.tolist()


def test_decode_rejects_a_dtype_too_small_for_the_alphabet() -> None:
    sym = np.array([0, 300, 300, 5, 300], dtype=np.uint16)
    counts = np.bincount(sym, minlength=301)
    precision, weights = ans.choose_precision(counts)
    payload = ans.encode(sym, weights, precision)
    with pytest.raises(ConfigError, match=r"dtype uint8 cannot hold symbol 300"):
        ans.decode(payload, weights, precision, sym.size, dtype=np.uint8)
    w = np.zeros(70000, dtype=np.int64)
    w[[0, 69999]] = 2
    with pytest.raises(ConfigError, match=r"dtype uint16 cannot hold symbol 69999"):
        ans.decode(b"", w, 2, 0)  # the default is at most uint16
    assert ans.decode(b"", w, 2, 0, dtype=np.uint32).dtype == np.uint32
