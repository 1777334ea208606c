"""Review 31: tests that kill mutants the existing suite let survive.

Each test pins a behaviour that a one-token change to the code (a flipped comparison, an
off-by-one, a dropped clause of a validation check) left every existing test passing.
"""

from __future__ import annotations

import lzma
import struct

import numpy as np
import pytest

from deepzip.coding import bloomier as bl
from deepzip.coding import huffman, varint
from deepzip.coding import sparse_index as si
from deepzip.coding.bloomier import MAX_POSITIONS, BloomierFilter, build_filter
from deepzip.coding.sparse_index import RelativeIndex, decode_relative, encode_relative
from deepzip.errors import BloomierBuildError, ConfigError, CorruptFileError, InvalidTensorError

# ------------------------------------------------------------------------------- bloomier


def _build(**kwargs: object) -> BloomierFilter:
    args: dict[str, object] = {
        "keys": np.array([1, 2, 3]),
        "values": np.array([0, 1, 3]),
        "n_positions": 100,
        "num_values": 4,
        "cell_bits": 4,
        "name": "conv.weight",
    }
    args.update(kwargs)
    return build_filter(**args)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"cell_bits": 0}, r"cell_bits must be an integer from 1 to 16, got 0"),
        ({"cell_bits": True}, r"cell_bits must be an integer from 1 to 16, got True"),
        ({"cell_bits": "4"}, r"cell_bits must be an integer from 1 to 16, got '4'"),
        ({"hashes": 0}, r"hashes must be an integer from 1 to 8, got 0"),
        ({"hashes": True}, r"hashes must be an integer from 1 to 8, got True"),
        ({"num_values": 0}, r"num_values must be an integer from 1 to 2\*\*cell_bits = 16, got 0"),
        ({"num_values": True}, r"num_values must be an integer .* got True"),
        ({"num_values": "4"}, r"num_values must be an integer .* got '4'"),
        ({"ratio": True}, r"ratio must be a number in \[1, 16\.0\], got True"),
        ({"ratio": "1.5"}, r"ratio must be a number in \[1, 16\.0\], got '1\.5'"),
        ({"n_positions": True}, r"n_positions must be an integer in \[0, \d+\], got True"),
        ({"n_positions": "100"}, r"n_positions must be an integer in \[0, \d+\], got '100'"),
        ({"n_positions": -1}, r"n_positions must be an integer in \[0, \d+\], got -1"),
        ({"n_positions": MAX_POSITIONS + 1}, rf"n_positions .* got {MAX_POSITIONS + 1}"),
        ({"seed": True}, r"seed must be an integer in \[0, 2\*\*64\), got True"),
        ({"seed": "0"}, r"seed must be an integer in \[0, 2\*\*64\), got '0'"),
        ({"seed": 1 << 64}, r"seed must be an integer in \[0, 2\*\*64\), got 18446744073709551616"),
        ({"max_attempts": True}, r"max_attempts must be an integer >= 1, got True"),
        ({"max_attempts": "3"}, r"max_attempts must be an integer >= 1, got '3'"),
    ],
)
def test_bloomier_parameter_checks_name_the_parameter(
    kwargs: dict[str, object], match: str
) -> None:
    empty = np.zeros(0, dtype=np.int64)  # no keys: only the parameter itself can be refused
    with pytest.raises(ConfigError, match=rf"conv\.weight: {match}"):
        _build(**kwargs)
    with pytest.raises(ConfigError, match=rf"conv\.weight: {match}"):
        _build(keys=empty, values=empty, **kwargs)


@pytest.mark.parametrize("n_positions", [0, MAX_POSITIONS])
def test_bloomier_n_positions_bounds_are_inclusive(n_positions: int) -> None:
    empty = np.zeros(0, dtype=np.int64)
    f = _build(keys=empty, values=empty, n_positions=n_positions)
    assert f.n_positions == n_positions


def test_the_largest_seed_is_accepted_and_wraps() -> None:
    f = _build(seed=(1 << 64) - 1, max_attempts=1)
    assert f.seed == (1 << 64) - 1
    assert f.decode_indices()[0][[1, 2, 3]].tolist() == [0, 1, 3]


def test_negative_bloomier_values_are_refused() -> None:
    with pytest.raises(
        InvalidTensorError, match=r"values must lie in \[0, 4\), got range \[-1, 3\]"
    ):
        _build(values=np.array([-1, 0, 3]))


@pytest.mark.parametrize("dtype", [np.float64, np.uint64, np.int64])
def test_empty_bloomier_keys_of_any_dtype_build(dtype: type) -> None:
    """``np.array([])`` is float64: an empty key array is not refused for its dtype."""
    f = _build(keys=np.array([], dtype=dtype), values=np.array([], dtype=dtype))
    assert f.cells == 33


def test_uint64_bloomier_keys() -> None:
    small = np.array([1, 2, 3], dtype=np.uint64)
    assert _build(keys=small).decode_indices()[0][[1, 2, 3]].tolist() == [0, 1, 3]
    with pytest.raises(InvalidTensorError, match="keys: value 9223372036854775808 is too large"):
        _build(keys=np.array([1, 2, 1 << 63], dtype=np.uint64))
    # 2**63 - 1 fits int64: it is refused by the range check, not as too large
    with pytest.raises(InvalidTensorError, match=r"keys must lie in \[0, 100\)"):
        _build(keys=np.array([1, 2, (1 << 63) - 1], dtype=np.uint64))


def test_a_segment_below_2_pow_32_cells_is_not_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    """The builder refuses ``m // k >= 2**32`` only: ``2**31`` cells a segment go on to peel
    (faked to fail here: the table itself would take 2**33 bytes)."""
    monkeypatch.setattr(bl, "cell_count", lambda n, hashes, ratio: hashes << 31)
    monkeypatch.setattr(bl, "_peel", lambda cells, m: None)
    with pytest.raises(BloomierBuildError, match="peeling failed for 1 seeds"):
        _build(max_attempts=1)


@pytest.mark.parametrize("t", [7, 9, 15, 16])
def test_bit_packed_tables_of_every_width_round_trip(t: int) -> None:
    rng = np.random.default_rng(t)
    keys = rng.choice(5000, 700, replace=False)
    values = rng.integers(0, 1 << (t - 1), 700)
    f = build_filter(keys, values, n_positions=5000, num_values=1 << (t - 1), cell_bits=t)
    again = BloomierFilter.from_bytes(f.to_bytes())
    np.testing.assert_array_equal(again.table, f.table)
    np.testing.assert_array_equal(again.lookup(keys), values)


def test_a_parsed_bloomier_filter_reports_one_attempt() -> None:
    """``attempts`` is not stored: a filter read back reports the default, 1."""
    built = _build(seed=5)
    parsed = BloomierFilter.from_bytes(built.to_bytes())
    assert parsed.attempts == 1
    np.testing.assert_array_equal(parsed.table, built.table)


def test_decodes_to_rejects_indices_of_the_wrong_length() -> None:
    f = _build()
    indices, mask = f.decode_indices()
    assert f.decodes_to(mask, indices)
    assert not f.decodes_to(mask, np.append(indices, 0))  # one index too many
    assert not f.decodes_to(mask, indices[:-1])
    assert not f.decodes_to(np.append(mask, False), indices)
    wrong = indices.copy()
    wrong[mask.nonzero()[0][0]] ^= 1  # same mask, one kept index different
    assert not f.decodes_to(mask, wrong)


def _filter_bytes(
    *,
    t: int = 4,
    k: int = 3,
    n_positions: int = 100,
    m: int = 33,
    num_values: int = 4,
    lzma_payload: bytes | None = None,
    table: bool = True,
) -> bytes:
    """A hand-made all-zero filter, bit-packed or with the given LZMA payload (format.md);
    ``table=False``: the header and fields only."""
    head = struct.pack("<2sBBBBQ", b"BF", 1, 0 if lzma_payload is None else 1, t, k, 0)
    fields = varint.encode(n_positions) + varint.encode(m) + varint.encode(num_values)
    if lzma_payload is not None:
        return head + fields + varint.encode(len(lzma_payload)) + lzma_payload
    return head + fields + (bytes(-(-m * t // 8)) if table else b"")


def test_a_filter_may_cover_exactly_max_positions() -> None:
    f = BloomierFilter.from_bytes(_filter_bytes(n_positions=MAX_POSITIONS))
    assert f.n_positions == MAX_POSITIONS


def test_a_filter_of_exactly_k_cells_parses() -> None:
    f = BloomierFilter.from_bytes(_filter_bytes(m=3, k=3, n_positions=1))
    assert f.cells == 3
    assert f.decode_all().tolist() == [int(f.lookup(np.array([0]))[0])]


def test_an_lzma_table_of_wide_cells_round_trips() -> None:
    """``t > 8`` stores two bytes per cell under LZMA: built, and made by hand."""
    rng = np.random.default_rng(0)
    keys = rng.choice(20_000, 500, replace=False)
    f = build_filter(
        keys, rng.integers(0, 300, 500), n_positions=20_000, num_values=300, cell_bits=9, ratio=16.0
    )
    blob = f.to_bytes(compress=True)
    assert blob[3] == 1  # LZMA won (most cells are zero)
    np.testing.assert_array_equal(BloomierFilter.from_bytes(blob).table, f.table)
    payload = lzma.compress(bytes(66), format=lzma.FORMAT_RAW, filters=bl._LZMA_FILTERS)
    hand = BloomierFilter.from_bytes(_filter_bytes(t=9, m=33, lzma_payload=payload))
    assert hand.cells == 33
    assert hand.table.dtype == np.uint16


def test_a_table_over_the_byte_cap_is_refused_by_its_header() -> None:
    """2**30 + 3 cells of 16 bits: refused as too large before the payload is looked at."""
    m = (1 << 30) + 3
    over = _filter_bytes(t=16, k=1, m=m, n_positions=1 << 27, table=False)
    with pytest.raises(CorruptFileError, match=rf"a table of {m} cells exceeds 2147483648 bytes"):
        BloomierFilter.from_bytes(over)
    # exactly 2**31 bytes is within the cap: the error is then about the missing table
    at_cap = _filter_bytes(t=16, k=1, m=1 << 30, n_positions=1 << 27, table=False)
    with pytest.raises(CorruptFileError, match=r"needs 2147483648 bytes, 0 follow"):
        BloomierFilter.from_bytes(at_cap)


def test_lzma_expansion_exactly_at_the_limit_is_not_refused_as_expansion() -> None:
    """4 payload bytes may claim ``64 * 4 + 4096 = 4352`` table bytes, not one more."""
    at_limit = _filter_bytes(t=4, k=1, m=4352, n_positions=4352, lzma_payload=b"junk")
    with pytest.raises(CorruptFileError, match=r"does not decode|truncated") as info:
        BloomierFilter.from_bytes(at_limit)
    assert "claim to expand" not in str(info.value)
    over = _filter_bytes(t=4, k=1, m=4353, n_positions=4353, lzma_payload=b"junk")
    with pytest.raises(CorruptFileError, match="4 LZMA bytes claim to expand to 4353"):
        BloomierFilter.from_bytes(over)


# --------------------------------------------------------------------------- sparse index


def test_the_largest_filler_symbol_round_trips() -> None:
    mask = np.array([0, 1, 0, 0, 1], dtype=bool)
    index = encode_relative(mask, np.array([3, 65534]), 2, filler=65535)
    assert index.values.dtype == np.uint16
    positions, values = decode_relative(index, 5, filler=65535, what="t")
    assert positions.tolist() == [1, 4]
    assert values.tolist() == [3, 65534]


@pytest.mark.parametrize(
    ("width", "filler", "match"),
    [
        (True, 4, "index width must be an integer, got True"),
        (3.0, 4, "index width must be an integer, got 3.0"),
        ("3", 4, "index width must be an integer, got '3'"),
        (2, True, "filler must be an integer, got True"),
        (2, 2.0, "filler must be an integer, got 2.0"),
        (2, 65536, r"filler symbol must be in \[0, 65535\], got 65536"),
        (2, -1, r"filler symbol must be in \[0, 65535\], got -1"),
    ],
)
def test_relative_index_width_and_filler_are_checked(
    width: object, filler: object, match: str
) -> None:
    mask = np.array([0, 1, 0, 0, 1], dtype=bool)
    with pytest.raises(ConfigError, match=rf"relative index: {match}"):
        encode_relative(mask, np.array([0, 1]), width, filler=filler)  # type: ignore[arg-type]
    stored = RelativeIndex(np.array([1, 2], np.uint8), np.array([0, 1], np.uint8), width)  # type: ignore[arg-type]
    with pytest.raises(CorruptFileError, match=rf"fc\.idx: {match}"):
        decode_relative(stored, 5, filler=filler, what="fc.idx")  # type: ignore[arg-type]


def test_a_zero_filler_indexes_an_all_pruned_tensor() -> None:
    index = encode_relative(np.zeros(6, dtype=bool), np.zeros(0, np.int64), 3, filler=0)
    assert index.entries == 0
    positions, values = decode_relative(index, 6, filler=0, what="t")
    assert positions.size == 0
    assert values.size == 0


def test_raw_values_cost_their_bits_in_the_width_ranking() -> None:
    """Stored raw, every entry (fillers too) costs ``value_bits``, rounded up to a byte."""
    for seed in range(3):
        mask = np.random.default_rng(seed).random(3000) < 0.05
        kept = int(mask.sum())
        without = dict(si._ranked(mask, None, 0, "huffman"))
        for bits in range(1, 9):
            with_values = dict(si._ranked(mask, None, bits, "huffman"))
            for width in range(1, 17):
                entries = kept + si.filler_count(mask, width)
                assert with_values[width] - without[width] == (entries * bits + 7) // 8


@pytest.mark.parametrize(
    ("second_size", "coder", "want"),
    [
        (108.0, "ans", [3, 4]),
        (108.0, "auto", [3, 4]),
        (108.5, "ans", [3]),
        (108.0, "huffman", [3]),
        (108.0, "raw", [3]),
    ],
)
def test_width_candidates_keep_the_second_width_within_ans_slack(
    monkeypatch: pytest.MonkeyPatch, second_size: float, coder: str, want: list[int]
) -> None:
    ranked = [(3, 100.0), (4, second_size), (5, 130.0)]
    monkeypatch.setattr(si, "_ranked", lambda *args: ranked)
    assert si.ANS_SLACK == 8
    mask = np.ones(4, dtype=bool)
    assert si.width_candidates(mask, coder=coder) == want  # type: ignore[arg-type]


def test_relative_index_streams_use_the_documented_dtypes() -> None:
    mask = np.array([1, 0, 1], dtype=bool)
    at_8 = encode_relative(mask, np.array([0, 254]), 8, filler=255)
    assert (at_8.gaps.dtype, at_8.values.dtype) == (np.dtype(np.uint8),) * 2
    at_9 = encode_relative(mask, np.array([0, 255]), 9, filler=256)
    assert (at_9.gaps.dtype, at_9.values.dtype) == (np.dtype(np.uint16),) * 2


def test_decode_relative_refuses_a_negative_size_and_non_integer_streams() -> None:
    ok = RelativeIndex(np.array([1, 0], np.uint8), np.array([0, 1], np.uint8), 3)
    with pytest.raises(CorruptFileError, match="fc: negative element count -1"):
        decode_relative(ok, -1, filler=2, what="fc")
    float_gaps = RelativeIndex(np.array([1.0, 0.0]), np.array([0, 1], np.uint8), 3)
    float_values = RelativeIndex(np.array([1, 0], np.uint8), np.array([0.0, 1.0]), 3)
    for index in (float_gaps, float_values):
        with pytest.raises(CorruptFileError, match="fc: gaps and values must be integers"):
            decode_relative(index, 4, filler=2, what="fc")


def test_decode_relative_refuses_negative_values_and_gaps() -> None:
    """Signed streams: a negative value or gap is refused (it would yield a negative symbol or
    positions that go backwards)."""
    negative_value = RelativeIndex(np.array([1, 0], np.uint8), np.array([-1, 0], np.int64), 3)
    negative_gap = RelativeIndex(np.array([2, -1], np.int64), np.array([0, 1], np.uint8), 3)
    with pytest.raises(CorruptFileError, match=r"^fc: negative index value -1$"):
        decode_relative(negative_value, 4, filler=2, what="fc")
    with pytest.raises(CorruptFileError, match=r"^fc: negative gap -1$"):
        decode_relative(negative_gap, 4, filler=2, what="fc")


# -------------------------------------------------------------------------------- huffman


@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.bool_])
def test_huffman_refuses_a_non_integer_output_dtype(dtype: type) -> None:
    counts = np.array([3, 1, 1, 2])
    lengths = huffman.code_lengths(counts)
    symbols = np.array([0, 0, 0, 1, 2, 3, 3], dtype=np.uint8)
    payload = huffman.encode(symbols, lengths, counts)
    with pytest.raises(ConfigError, match=r"cannot hold symbol 3 of an alphabet of 4 symbols"):
        huffman.decode(payload, lengths, symbols.size, dtype=dtype)
    assert huffman.decode(payload, lengths, symbols.size).tolist() == symbols.tolist()


@pytest.mark.parametrize(
    ("counts", "max_length", "want"),
    [
        # a tie between a leaf and a merged node: the leaf goes first (no longer codes)
        ([1, 1, 2, 2], 24, [2, 2, 2, 2]),
        # the JPEG limiting step (Annex K.3) on Fibonacci counts
        ([1, 1, 2, 3, 5, 8, 13, 21, 34, 55, 89, 144], 4, [4] * 10 + [3, 2]),
        ([1, 1, 2, 3, 5, 8, 13, 21, 34, 55, 89, 144], 5, [5] * 8 + [4, 4, 3, 1]),
        ([1, 1, 2, 3, 5, 8, 13, 21, 34, 55, 89, 144], 6, [6] * 8 + [4, 4, 2, 1]),
        ([1, 1, 2, 3, 5, 8, 13, 21, 34, 55, 89, 144], 7, [7] * 8 + [4, 3, 2, 1]),
    ],
)
def test_huffman_code_lengths_are_pinned(
    counts: list[int], max_length: int, want: list[int]
) -> None:
    """The lengths are stored in every file: equally good other lengths change output bytes.
    (The expected lengths agree with a separate implementation of the tie rule and of Annex
    K.3's limiting, written for this review.)"""
    assert huffman.code_lengths(np.array(counts), max_length).tolist() == want
