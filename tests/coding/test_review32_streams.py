"""Session 32, from mutation testing of coding/streams.py: the symbol table's layout choice
and the reader's checks of a crafted (hostile) table, each of which a mutant survived."""

from __future__ import annotations

import numpy as np
import pytest

from deepzip.coding.bitio import BitWriter
from deepzip.coding.streams import (
    Coder,
    EncodedStream,
    _table_bits,
    decode_symbols,
    encode_symbols,
    estimated_size,
)
from deepzip.errors import CorruptFileError


def _table(sparse: int, vbits: int, n: int, gaps: list[int] | None, vals: list[int]) -> bytes:
    """A Huffman model: a symbol table as docs/format.md section 7 lays it out."""
    w = BitWriter()
    w.write(sparse, 1)
    w.write(vbits - 1, 5)
    w.write(n - 1, 16)
    if gaps is not None:
        w.write_gammas(np.array(gaps))
    w.write_fixed(np.array(vals), vbits)
    return w.getvalue()


def test_table_bits_by_hand() -> None:
    # one used symbol at 19 of 20, value 1: dense = 22 + 20·1 = 42 bits; sparse = 22 +
    # gamma(20) (2·4 + 1 = 9 bits) + 1·1 = 32 bits
    assert _table_bits(np.array([0] * 19 + [1])) == (True, 1, 32)
    # used 2 and 4 (values 3, 1; 2 bits each): dense = 22 + 5·2 = 32; sparse = 22 + gamma(3)
    # + gamma(2) (3 + 3) + 2·2 = 32: a tie keeps the dense table
    assert _table_bits(np.array([0, 0, 3, 0, 1])) == (False, 2, 32)
    # used 0 and 1 (values 5, 4; 3 bits each): dense = 22 + 2·3 = 28; sparse = 22 + gamma(1)
    # + gamma(1) (1 + 1) + 2·3 = 30
    assert _table_bits(np.array([5, 4])) == (False, 3, 28)


@pytest.mark.parametrize(
    ("model", "match"),
    [
        (_table(1, 1, 2, [1, 4], [1, 1]), "symbol table names symbol 4, alphabet size is 4"),
        (_table(1, 1, 2, [1, 5], [1, 1]), "symbol table names symbol 5, alphabet size is 4"),
        (_table(1, 1, 2, [1, 3], [1, 0]), "sparse symbol table has a zero value"),
        (_table(0, 2, 3, None, [1, 1, 0]), "dense symbol table ends with an unused symbol"),
        (_table(1, 1, 2, [1, 1 << 17], [1, 1]), "symbol table gap has 17 leading zeros"),
    ],
)
def test_a_crafted_symbol_table_is_refused_naming_the_stream(model: bytes, match: str) -> None:
    stream = EncodedStream(Coder.HUFFMAN, 4, 3, model, b"\x00")
    with pytest.raises(CorruptFileError, match=f"^layer 'x': {match}"):
        decode_symbols(stream, what="layer 'x'")


def test_an_alphabet_of_256_decodes_to_uint8_and_257_to_uint16() -> None:
    for size, dtype in ((256, np.uint8), (257, np.uint16)):
        symbols = np.arange(size, dtype=np.int64) % size
        for coder in ("huffman", "ans", "raw"):
            out = decode_symbols(encode_symbols(symbols, size, coder=coder))
            assert out.dtype == dtype
            assert np.array_equal(out, symbols)


def test_a_stream_needs_a_coder_member() -> None:
    with pytest.raises(TypeError, match="coder must be a Coder, got 0"):
        EncodedStream(0, 4, 0, b"", b"")  # type: ignore[arg-type]


# --- sizes: the estimates are the real sizes, and "auto" takes the smallest ----------------


def _streams(seed: int, count: int) -> list[tuple[np.ndarray, int]]:
    """Small random streams of skewed symbols (the near-ties between coders are common)."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(count):
        size = int(rng.integers(1, 24))
        n = int(rng.integers(1, 60))
        p = rng.dirichlet(np.full(size, 0.4))
        out.append((rng.choice(size, n, p=p).astype(np.int64), size))
    return out


def test_auto_is_the_smallest_of_the_three_coders_simplest_on_a_tie() -> None:
    for symbols, size in _streams(0, 300):
        each = [encode_symbols(symbols, size, coder=c) for c in ("raw", "huffman", "ans")]
        best = min(range(3), key=lambda i: (each[i].nbytes, i))
        auto = encode_symbols(symbols, size)
        assert auto.to_bytes() == each[best].to_bytes(), (symbols.tolist(), size)


def test_estimated_size_is_exact_for_raw_and_huffman_and_close_for_ans() -> None:
    for symbols, size in _streams(1, 300):
        counts = np.bincount(symbols, minlength=size)
        for coder in ("raw", "huffman"):
            real = encode_symbols(symbols, size, coder=coder).nbytes
            assert estimated_size(counts, coder=coder) == real, (symbols.tolist(), size, coder)
        real = encode_symbols(symbols, size, coder="ans").nbytes
        assert abs(estimated_size(counts, coder="ans") - real) <= 5, (symbols.tolist(), size)
        if np.count_nonzero(counts) == 1:  # no payload: exact
            assert estimated_size(counts, coder="ans") == real


def test_the_ans_precision_minimises_payload_plus_the_stored_model() -> None:
    from deepzip.coding import ans
    from deepzip.coding.streams import _ANS_PRECISION_BITS, _ans_model

    for symbols, size in _streams(2, 200):
        counts = np.bincount(symbols, minlength=size)
        m = int(np.count_nonzero(counts))
        if m < 2:
            continue
        costs = {}
        for p in range((m - 1).bit_length() or 1, ans.MAX_PRECISION + 1):
            w = ans.quantize_counts(counts, p)
            model = _ANS_PRECISION_BITS + _table_bits(w)[2]
            costs[p] = ans.estimated_bits(counts, w, p) + model
        best = min(costs, key=lambda p: (costs[p], p))
        _, precision, model_bytes = _ans_model(counts)
        assert precision == best
        assert (
            len(model_bytes)
            == (_ANS_PRECISION_BITS + _table_bits(_ans_model(counts)[0])[2] + 7) // 8
        )


@pytest.mark.parametrize(
    ("counts", "match"),
    [
        (np.array([2.0**63]), r"counts must be whole numbers, got counts\[0\] = 9\.2"),
        (np.array([1.0, 2.0**64]), r"counts must be whole numbers, got counts\[1\]"),
        (np.array([2**63], dtype=np.uint64), r"counts must be below 2\*\*63, got counts\[0\]"),
        (
            np.array([2**63 - 1], dtype=np.uint64),
            r"counts must sum to less than 2\*\*58, got 9223372036854775807",
        ),
        (
            np.array([1 << 57, 1 << 57]),
            r"counts must sum to less than 2\*\*58, got 288230376151711744",
        ),
        (np.array([0, -1]), r"counts must be non-negative, got counts\[1\] = -1"),
    ],
)
def test_bad_counts_are_refused(counts: np.ndarray, match: str) -> None:
    from deepzip.errors import ConfigError

    with pytest.raises(ConfigError, match=match):
        estimated_size(counts)


def test_counts_just_below_the_caps_are_taken() -> None:
    big = np.array([(1 << 58) - 2, 1])  # the sum is 2**58 - 1
    assert estimated_size(big, coder="raw") > 0
    assert estimated_size(np.array([2.0**62 / 2**5]), coder="raw") > 0
    assert (
        estimated_size(np.array([1], dtype=np.uint64), coder="huffman")
        == encode_symbols(np.zeros(1, dtype=np.int64), 1, coder="huffman").nbytes
    )


# --- a hostile stream's header and model: each check, by its message ---------------------


def _header(coder: int, alphabet: int, count: int, model_len: int, payload_len: int) -> bytes:
    from deepzip.coding import varint

    fields = (alphabet, count, model_len, payload_len)
    return bytes([coder]) + b"".join(varint.encode(v) for v in fields)


def test_a_stream_needs_a_non_negative_count_and_cap() -> None:
    with pytest.raises(ValueError, match="count must be >= 0, got -1"):
        EncodedStream(Coder.RAW, 4, -1, b"", b"")
    with pytest.raises(ValueError, match="max_count must be >= 0, got -1"):
        EncodedStream.read_from(b"\x00\x04\x00\x00\x00", max_count=-1, what="s")


def test_declared_lengths_past_the_bytes_present_are_refused_by_name() -> None:
    raw = int(Coder.RAW)
    data = _header(raw, 4, 8, 100, 2) + b"\x00" * 10  # the model alone is too long
    with pytest.raises(
        CorruptFileError,
        match=r"^s: declared model \(100 bytes\) and payload \(2 bytes\) exceed the 10 bytes",
    ):
        EncodedStream.from_bytes(data, max_count=100, what="s")
    data = _header(raw, 4, 8, 0, 11) + b"\x00" * 10  # the payload is one byte too long
    with pytest.raises(CorruptFileError, match=r"payload \(11 bytes\) exceed the 10 bytes"):
        EncodedStream.from_bytes(data, max_count=100, what="s")
    ans_ = int(Coder.ANS)
    data = _header(ans_, 4, 8, 6, 5) + b"\x00" * 10  # model 6 + payload 5 = 11 > 10
    with pytest.raises(CorruptFileError, match=r"model \(6 bytes\) and payload \(5 bytes\) exceed"):
        EncodedStream.from_bytes(data, max_count=100, what="s")


def test_a_stream_is_read_from_a_memoryview_of_any_item_size() -> None:
    stream = encode_symbols(np.array([0, 1, 1, 2, 3, 3, 3]), 4, coder="huffman")
    data = stream.to_bytes()
    padded = data + b"\x00" * (-len(data) % 4)
    words = memoryview(np.frombuffer(padded, dtype=np.uint32))  # format "I", 4 bytes an item
    got, end = EncodedStream.read_from(words, max_count=100, what="s")
    assert end == len(data)
    assert got == stream


@pytest.mark.parametrize(
    ("coder", "count", "match"),
    [
        (Coder.HUFFMAN, 0, "an empty stream must have an empty model, got 3 bytes"),
        (Coder.RAW, 5, "a RAW stream must have an empty model, got 3 bytes"),
    ],
)
def test_a_model_where_none_belongs_is_refused(coder: Coder, count: int, match: str) -> None:
    with pytest.raises(CorruptFileError, match=f"^s: {match}"):
        decode_symbols(EncodedStream(coder, 4, count, b"\x01\x02\x03", b"\x00" * 2), what="s")


def _ans_model(precision: int, vbits: int, weights: list[int]) -> bytes:
    """An ANS model: the precision, then a dense symbol table (docs/format.md section 7)."""
    w = BitWriter()
    w.write(precision, 5)
    w.write(0, 1)
    w.write(vbits - 1, 5)
    w.write(len(weights) - 1, 16)
    w.write_fixed(np.array(weights), vbits)
    return w.getvalue()


def test_ans_models_at_and_past_their_limits() -> None:
    from deepzip.coding import ans
    from deepzip.coding.streams import _parse_model

    top = ans.MAX_PRECISION
    half = 1 << (top - 1)
    model = _ans_model(top, top, [half, 0, half])  # the largest precision: taken
    values, precision = _parse_model(Coder.ANS, 4, 10, model, "s")
    assert precision == top
    assert values.tolist() == [half, 0, half, 0]
    with pytest.raises(CorruptFileError, match=f"^s: ANS precision {top + 1} exceeds {top}"):
        _parse_model(Coder.ANS, 4, 10, _ans_model(top + 1, top, [half, 0, half]), "s")
    # one used symbol: precision 0 and weight 1 only (zeros in the table change nothing)
    assert _parse_model(Coder.ANS, 4, 10, _ans_model(0, 1, [0, 1]), "s")[1] == 0
    for p, weight in ((1, 2), (0, 2)):
        with pytest.raises(
            CorruptFileError,
            match=f"^s: a one-symbol ANS model must have precision 0 and weight 1, got "
            f"precision {p} and weight {weight}",
        ):
            _parse_model(Coder.ANS, 4, 10, _ans_model(p, 2, [0, weight]), "s")


def test_entropy_bits_ignores_unused_symbols() -> None:
    from deepzip.coding.streams import entropy_bits

    assert entropy_bits(np.array([0, 1, 0, 1]), 4) == 4.0  # two symbols, 1 bit each
    # counts 1, 1, 2 of 4: 2 + 2 + 1 + 1 bits (symbols seen once count too)
    assert entropy_bits(np.array([0, 1, 2, 2]), 4) == 6.0
    assert entropy_bits(np.array([3, 3, 3]), 4) == 0.0
    assert entropy_bits(np.zeros(0, dtype=np.int64), 4) == 0.0


@pytest.mark.parametrize("size", [4.0, True, "4", None])
def test_the_alphabet_size_must_be_an_integer(size: object) -> None:
    from deepzip.errors import ConfigError

    with pytest.raises(ConfigError, match=f"alphabet_size must be an integer, got {size!r}"):
        encode_symbols(np.array([0, 1]), size)  # type: ignore[arg-type]


def test_a_numpy_integer_alphabet_size_is_taken_by_every_coder() -> None:
    # the check took numpy integers, and then RAW (and auto) failed on np.int64.bit_length
    for coder in ("raw", "huffman", "ans", "auto"):
        stream = encode_symbols(np.array([0, 1, 3]), np.int64(4), coder=coder)
        assert type(stream.alphabet_size) is int
        assert decode_symbols(stream).tolist() == [0, 1, 3]
        assert EncodedStream.from_bytes(stream.to_bytes(), max_count=3, what="s") == stream


def test_a_one_symbol_stream_is_estimated_exactly_quick_or_not() -> None:
    counts = np.array([0, 7, 0])
    real = encode_symbols(np.full(7, 1), 3, coder="ans").nbytes
    assert estimated_size(counts, coder="ans") == real
    assert estimated_size(counts, coder="ans", quick=True) == real


def test_the_total_count_cap_counts_the_ones() -> None:
    from deepzip.errors import ConfigError

    with pytest.raises(
        ConfigError, match=r"counts must sum to less than 2\*\*58, got 288230376151711744$"
    ):
        estimated_size(np.array([(1 << 58) - 1, 1]))
