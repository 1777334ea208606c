"""Tests from mutation testing of coding/bitio, format/dzip_reader, coding/huffman (decode),
coding/ans, coding/streams and coding/portable_math: each kills a mutant the suite let live.

Expected values are derived by hand (bit strings written out in comments), from
docs/format.md, or by an independent computation named beside them; never by the code under
test.
"""

from __future__ import annotations

import struct
import sys
from pathlib import Path

import numpy as np
import pytest

from deepzip.coding import bitio, huffman
from deepzip.errors import CorruptFileError
from deepzip.format import DzipReader

sys.path.insert(0, str(Path(__file__).resolve().parent / "format"))
from dzip_craft import Tensor, assemble, entry_fields, fix_crcs, header, raw_f32, varint

# ----------------------------------------------------------------------------------- bitio


def test_unpack_fixed_refuses_a_negative_count_by_name() -> None:
    with pytest.raises(ValueError, match="count must be >= 0, got -1"):
        bitio.unpack_fixed(b"\x00", -1, 3)


@pytest.mark.parametrize("dtype", [np.int8, np.int32, np.int64])
def test_unpack_fixed_refuses_a_signed_output_dtype(dtype: type) -> None:
    with pytest.raises(ValueError, match="cannot hold"):
        bitio.unpack_fixed(b"\x00", 1, 3, dtype=dtype)


@pytest.mark.parametrize(("width", "dtype"), [(9, np.uint8), (17, np.uint16), (25, np.uint16)])
def test_unpack_fixed_refuses_a_dtype_one_bit_too_narrow(width: int, dtype: type) -> None:
    with pytest.raises(ValueError, match=f"cannot hold {width}-bit values"):
        bitio.unpack_fixed(bytes(8), 1, width, dtype=dtype)


@pytest.mark.parametrize(("width", "dtype"), [(8, np.uint8), (16, np.uint16), (32, np.uint32)])
def test_unpack_fixed_accepts_a_dtype_exactly_wide_enough(width: int, dtype: type) -> None:
    # all-ones bytes: every value is 2**width - 1
    out = bitio.unpack_fixed(b"\xff" * 8, 2, width, dtype=dtype)
    assert out.dtype == np.dtype(dtype)
    assert out.tolist() == [(1 << width) - 1] * 2


def test_unpack_fixed_needs_the_byte_that_holds_a_ninth_bit() -> None:
    # 3 values of 3 bits = 9 bits: 2 bytes (111 111 11|1 0000000)
    assert bitio.unpack_fixed(b"\xff\x80", 3, 3).tolist() == [7, 7, 7]
    with pytest.raises(CorruptFileError, match="3 values of 3 bits need 2 bytes, only 1"):
        bitio.unpack_fixed(b"\xff", 3, 3)
    # 9 values of 8 bits: 9 bytes, not 8
    with pytest.raises(CorruptFileError, match="need 9 bytes, only 8"):
        bitio.unpack_fixed(bytes(8), 9, 8)


@pytest.mark.parametrize("dtype", [np.int8, np.int64, np.uint32])
def test_pack_codes_refuses_symbols_that_are_not_uint8_or_uint16(dtype: type) -> None:
    codes = np.array([0, 1], dtype=np.uint32)
    lengths = np.array([1, 1], dtype=np.uint8)
    with pytest.raises(ValueError, match="symbols must be uint8 or uint16"):
        bitio.pack_codes(np.array([0, 1], dtype=dtype), codes, lengths, 2)


def test_pack_codes_of_no_symbols_is_empty() -> None:
    # no symbols: 0 bits, whether or not there are codes
    one = (np.array([0], dtype=np.uint32), np.array([1], dtype=np.uint8))
    none = (np.array([], dtype=np.uint32), np.array([], dtype=np.uint8))
    for codes, lengths in (one, none):
        assert bitio.pack_codes(np.array([], dtype=np.uint8), codes, lengths, 0) == b""


def test_pack_codes_takes_a_32_bit_code() -> None:
    codes = np.array([0x12345678, 1], dtype=np.uint32)
    lengths = np.array([32, 1], dtype=np.uint8)
    sym = np.array([0, 1], dtype=np.uint16)
    # 0x12345678 in 32 bits, then "1" padded: 1000 0000
    assert bitio.pack_codes(sym, codes, lengths, 33) == b"\x12\x34\x56\x78\x80"


def test_pack_codes_refuses_the_symbol_one_past_the_codes() -> None:
    codes = np.array([0, 1], dtype=np.uint32)
    lengths = np.array([1, 1], dtype=np.uint8)
    with pytest.raises(ValueError, match=r"symbol 2 has no code \(2 codes\)"):
        bitio.pack_codes(np.array([0, 2], dtype=np.uint8), codes, lengths, 2)


def test_pack_codes_refuses_a_negative_total_by_name() -> None:
    codes = np.array([0], dtype=np.uint32)
    lengths = np.array([1], dtype=np.uint8)
    with pytest.raises(ValueError, match="total_bits must be >= 0, got -1"):
        bitio.pack_codes(np.array([], dtype=np.uint8), codes, lengths, -1)


def test_bit_writer_refuses_a_negative_width_by_name() -> None:
    with pytest.raises(ValueError, match="value 0 does not fit in -1 bits"):
        bitio.BitWriter().write(0, -1)


@pytest.mark.parametrize("values", [np.array([1.0, 2.0]), np.array([1.5]), np.array([True])])
def test_write_gammas_refuses_non_integer_arrays(values: np.ndarray) -> None:
    with pytest.raises(ValueError, match="integer values"):
        bitio.BitWriter().write_gammas(values)


def test_write_gammas_takes_values_up_to_2_to_the_32_exclusive() -> None:
    w = bitio.BitWriter()
    w.write_gammas(np.array([2**32 - 1], dtype=np.uint64))
    # gamma(2**32 - 1): 31 zeros, then 32 ones; 63 bits, one padding zero
    bits = "0" * 31 + "1" * 32 + "0"
    assert w.bit_length == 63
    assert w.getvalue() == int(bits, 2).to_bytes(8, "big")
    with pytest.raises(ValueError, match=r"\[1, 2\*\*32\)"):
        bitio.BitWriter().write_gammas(np.array([2**32], dtype=np.uint64))


def test_bit_reader_refuses_a_negative_width_by_name() -> None:
    with pytest.raises(ValueError, match="nbits must be >= 0, got -1"):
        bitio.BitReader(b"\x00", what="t").read(-1)


def test_read_gamma_boundaries() -> None:
    # max_bits=3 allows 2 leading zeros; 0001 0000 0000 0000 has 3
    with pytest.raises(CorruptFileError, match="t: x has 3 leading zeros, at most 2 are valid"):
        bitio.BitReader(b"\x10\x00", what="t").read_gamma(3, "x")
    # 0010 0000: gamma(4) = 00100 fits exactly in 3 significant bits
    assert bitio.BitReader(b"\x20", what="t").read_gamma(3) == 4
    # a code that ends exactly at the last bit: 00000 | 010 is gamma(2)
    r = bitio.BitReader(b"\x02", what="t")
    assert r.read(5) == 0
    assert r.read_gamma(17) == 2
    assert r.bits_left == 0
    # a code one bit short: 0000 | 0010 has 2 zeros and a 1, the code needs 5 bits, 4 are left
    r = bitio.BitReader(b"\x02", what="t")
    assert r.read(4) == 0
    with pytest.raises(CorruptFileError, match=r"truncated .*need 5 bits, 4 left"):
        r.read_gamma(17)


def test_finish_refuses_one_whole_zero_byte_left() -> None:
    with pytest.raises(CorruptFileError, match="t: 1 unexpected trailing bytes"):
        bitio.BitReader(b"\x00", what="t").finish()
    r = bitio.BitReader(b"\x80\x00", what="t")
    assert r.read(1) == 1
    with pytest.raises(CorruptFileError, match="t: 1 unexpected trailing bytes"):
        r.finish()  # 15 zero bits left: a whole byte beyond the padding
    r = bitio.BitReader(b"\x80", what="t")
    assert r.read(1) == 1
    r.finish()  # 7 zero bits: padding


# ----------------------------------------------------------------------------- dzip_reader


def _write(tmp_path: Path, data: bytes) -> Path:
    path = tmp_path / "f.dzip"
    path.write_bytes(data)
    return path


def test_directory_entry_cut_short_is_named(tmp_path: Path) -> None:
    # rank 8 within the cap: the shape needs 64 bytes, the rest of the 2-element RAW entry
    # (shape 8 + offset/crc 12 + params length 1 + one part length 8) holds only 29
    data = bytearray(assemble([raw_f32("a", [1.0, 2.0])]))
    data[entry_fields(bytes(data))[0]["rank"]] = 8
    with pytest.raises(CorruptFileError, match=r"tensor 'a': shape needs 64 byte\(s\)"):
        DzipReader(_write(tmp_path, fix_crcs(data)))


def test_a_file_that_shrinks_while_open_is_named(tmp_path: Path) -> None:
    path = _write(tmp_path, assemble([raw_f32("a", [1.0, 2.0])]))
    with DzipReader(path) as r:
        path.write_bytes(path.read_bytes()[:72])  # the 8-byte region at offset 72 is gone
        with pytest.raises(CorruptFileError, match="read 0 of 8 bytes at offset 72"):
            r.tensor("a")


def test_a_72_byte_file_is_not_called_shorter_than_the_header(tmp_path: Path) -> None:
    data = assemble([raw_f32("a", [1.0])])[:72]  # the whole header, nothing after it
    with pytest.raises(CorruptFileError, match="truncated or appended"):
        DzipReader(_write(tmp_path, data))


def test_a_file_without_tensors_is_read(tmp_path: Path) -> None:
    # docs/format.md: the directory starts right after the 72-byte header, here empty
    with DzipReader(_write(tmp_path, assemble([], b'{"x": 1}'))) as r:
        assert r.entries == ()
        assert r.metadata == {"x": 1}
        assert r.header.directory_offset == 72


def test_a_directory_of_exactly_28_bytes_per_tensor_is_read(tmp_path: Path) -> None:
    # docs/format.md section 4: the smallest entry is 28 bytes (1-byte name, rank 0, one part)
    t = Tensor("a", 0, 1, (), [struct.pack("<f", 1.5)])
    data = assemble([t])
    assert header(data)["directory_length"] == 28
    with DzipReader(_write(tmp_path, data)) as r:
        assert r.tensor("a").item() == 1.5


@pytest.mark.parametrize(
    ("field", "value", "pattern"),
    [
        # at each cap exactly: not over the cap, refused by the next check
        ("tensor_count", 1 << 20, "1048576 tensors cannot fit a"),
        ("directory_length", 1 << 28, "lies outside the file"),
        ("metadata_length", 1 << 26, "does not end the file"),
        # one over each cap
        ("tensor_count", (1 << 20) + 1, "exceed the cap of 1048576"),
        ("directory_length", (1 << 28) + 1, "exceeds the cap of 268435456"),
        ("metadata_length", (1 << 26) + 1, "exceeds the cap of 67108864"),
    ],
)
def test_header_caps_are_inclusive(tmp_path: Path, field: str, value: int, pattern: str) -> None:
    data = assemble([raw_f32("a", [1.0])], header_overrides={field: value})
    with pytest.raises(CorruptFileError, match=pattern):
        DzipReader(_write(tmp_path, data))


def test_directory_past_the_end_of_the_file_is_named(tmp_path: Path) -> None:
    data = assemble([raw_f32("a", [1.0])])
    h = header(data)
    past = len(data) - h["directory_offset"] + 1  # one byte more than is left
    bad = assemble([raw_f32("a", [1.0])], header_overrides={"directory_length": past})
    with pytest.raises(CorruptFileError, match=f"length {past} lies outside"):
        DzipReader(_write(tmp_path, bad))


def test_a_directory_that_ends_the_file_leaves_an_empty_metadata(tmp_path: Path) -> None:
    # the directory may reach the end of the file; the empty metadata is then not JSON
    data = assemble([raw_f32("a", [1.0])], b"")
    with pytest.raises(CorruptFileError, match="metadata is not valid UTF-8 JSON"):
        DzipReader(_write(tmp_path, data))


def test_a_region_running_into_the_directory_is_named(tmp_path: Path) -> None:
    # shape (3,) float32 needs 12 bytes; only 8 are stored before the directory (at 80)
    t = Tensor("a", 0, 1, (3,), [struct.pack("<2f", 1.0, 2.0)], part_lengths=[12])
    with pytest.raises(CorruptFileError, match="region of 12 bytes at offset 72 runs past"):
        DzipReader(_write(tmp_path, assemble([t])))


def test_trailing_bytes_after_the_last_directory_entry_are_refused(tmp_path: Path) -> None:
    data = bytearray(assemble([raw_f32("a", [1.0])]))
    h = header(bytes(data))
    end = h["directory_offset"] + h["directory_length"]
    data[end:end] = bytes(3)
    # header layout (docs/format.md section 2): file_size @16, directory_length @32,
    # metadata_offset @40
    struct.pack_into("<Q", data, 16, h["file_size"] + 3)
    struct.pack_into("<Q", data, 32, h["directory_length"] + 3)
    struct.pack_into("<Q", data, 40, h["metadata_offset"] + 3)
    with pytest.raises(CorruptFileError, match="directory has 3 unexplained trailing bytes"):
        DzipReader(_write(tmp_path, fix_crcs(data)))


def test_name_length_cap_is_inclusive(tmp_path: Path) -> None:
    # docs/format.md: names are at most 4096 UTF-8 bytes
    with DzipReader(_write(tmp_path, assemble([raw_f32("n" * 4096, [1.0])]))) as r:
        assert r.tensor("n" * 4096).tolist() == [1.0]
    with pytest.raises(CorruptFileError, match=r"name length 4097 is outside 1\.\.4096"):
        DzipReader(_write(tmp_path, assemble([raw_f32("n" * 4097, [1.0])])))


def test_rank_cap_is_inclusive(tmp_path: Path) -> None:
    # docs/format.md: rank at most 8
    t = Tensor("a", 0, 1, (1,) * 8, [struct.pack("<f", 2.5)])
    with DzipReader(_write(tmp_path, assemble([t]))) as r:
        out = r.tensor("a")
    assert tuple(out.shape) == (1,) * 8
    assert out.flatten().tolist() == [2.5]


def test_a_dimension_equal_to_the_element_cap_is_read(tmp_path: Path) -> None:
    t = Tensor("a", 0, 1, (50, 0), [b""])
    with DzipReader(_write(tmp_path, assemble([t])), max_elements=50) as r:
        assert tuple(r.tensor("a").shape) == (50, 0)


def test_part_lengths_beyond_the_file_size_are_named(tmp_path: Path) -> None:
    # a RAW entry consistent with its shape (2**30 float32 = 2**32 bytes), far past the file
    t = Tensor("a", 0, 1, (1 << 30,), [b"\0" * 4], part_lengths=[1 << 32])
    with pytest.raises(CorruptFileError, match=r"part lengths \[4294967296\] exceed the file"):
        DzipReader(_write(tmp_path, assemble([t])))


def test_an_alias_with_a_non_empty_region_and_checksum_0_is_refused(tmp_path: Path) -> None:
    # docs/format.md section 6.6: an ALIAS (id 5, minor 2) region is empty, checksum 0
    alias = Tensor("b", 5, 1, (2,), [b"\0" * 4], struct.pack("<I", 0), crc=0)
    data = assemble([raw_f32("a", [1.0, 2.0]), alias], minor=2)
    with pytest.raises(CorruptFileError, match=r"the entry says 4 byte\(s\) with checksum 0x0"):
        DzipReader(_write(tmp_path, data))


def _raw_stream(alphabet: int, symbols: list[int]) -> bytes:
    """A RAW-coded stream part (docs/format.md section 7): coder 0, alphabet, count, no
    model, then every symbol in ceil(log2(alphabet)) bits, MSB-first, zero-padded."""
    width = (alphabet - 1).bit_length()
    bits = "".join(format(s, f"0{width}b") for s in symbols) if width else ""
    payload = int(bits.ljust(-(-len(bits) // 8) * 8, "0") or "0", 2).to_bytes(
        -(-len(bits) // 8), "big"
    )
    head = b"\x00" + varint(alphabet) + varint(len(symbols)) + varint(0)
    return head + varint(len(payload)) + payload


def test_raw_stream_helper_matches_the_known_stream() -> None:
    # tests/format/test_dzip_corrupt.py's STREAM4, written out by hand there
    assert _raw_stream(2, [0, 1, 0, 1]) == b"\x00\x02\x04\x00\x01\x50"


CODEBOOK2 = struct.pack("<2f", -1.0, 3.0)


def test_shared_dense_symbol_count_must_be_the_element_count(tmp_path: Path) -> None:
    t = Tensor("w", 1, 1, (4,), [CODEBOOK2, _raw_stream(2, [0, 1, 1])], struct.pack("<HQ", 2, 4))
    with (
        DzipReader(_write(tmp_path, assemble([t]))) as r,
        pytest.raises(CorruptFileError, match="symbols stream: 3 symbols, expected 4"),
    ):
        r.tensor("w")


def test_shared_sparse_kept_must_be_the_decoded_positions(tmp_path: Path) -> None:
    # 1-bit gaps 0, 0: positions 0 and 1; values 0, 1 (alphabet k + 1 = 3)
    parts = [CODEBOOK2, _raw_stream(2, [0, 0]), _raw_stream(3, [0, 1])]
    good = Tensor("w", 2, 1, (4,), parts, struct.pack("<HBQ", 2, 1, 2))
    with DzipReader(_write(tmp_path, assemble([good]))) as r:
        assert r.tensor("w").tolist() == [-1.0, 3.0, 0.0, 0.0]
    bad = Tensor("w", 2, 1, (4,), parts, struct.pack("<HBQ", 2, 1, 3))
    with (
        DzipReader(_write(tmp_path, assemble([bad]))) as r,
        pytest.raises(CorruptFileError, match="2 elements survive, the entry says 3"),
    ):
        r.tensor("w")


def test_sparse_float_kept_must_not_exceed_the_index_entries(tmp_path: Path) -> None:
    # 1-bit gaps 0, 0: positions 0 and 1, two float32 values
    parts = [_raw_stream(2, [0, 0]), struct.pack("<2f", 0.5, -2.0)]
    good = Tensor("w", 3, 1, (4,), parts, struct.pack("<BQ", 1, 2))
    with DzipReader(_write(tmp_path, assemble([good]))) as r:
        assert r.tensor("w").tolist() == [0.5, -2.0, 0.0, 0.0]
    bad = Tensor("w", 3, 1, (4,), parts, struct.pack("<BQ", 1, 3))
    with (
        DzipReader(_write(tmp_path, assemble([bad]))) as r,
        pytest.raises(CorruptFileError, match="kept 3 exceeds the 2 index entries"),
    ):
        r.tensor("w")


def test_sparse_float_values_beyond_the_element_count_are_refused_on_open(
    tmp_path: Path,
) -> None:
    # 5 float32 values for 4 elements: a whole number of values, but more than the tensor has
    parts = [_raw_stream(2, [0, 0, 0, 0]), struct.pack("<5f", 1, 2, 3, 4, 5)]
    t = Tensor("w", 3, 1, (4,), parts, struct.pack("<BQ", 1, 4))
    with pytest.raises(CorruptFileError, match="values part of 20 bytes is not a whole number"):
        DzipReader(_write(tmp_path, assemble([t])))


def test_read_fixed_refuses_a_negative_count_off_a_byte_boundary() -> None:
    r = bitio.BitReader(b"\x00\x00", what="t")
    r.read(3)
    with pytest.raises(ValueError, match="count must be >= 0, got -1"):
        r.read_fixed(-1, 3)


def test_an_empty_name_is_refused(tmp_path: Path) -> None:
    t = raw_f32("a", [1.0])
    t.name_bytes = b""
    with pytest.raises(CorruptFileError, match=r"name length 0 is outside 1\.\.4096"):
        DzipReader(_write(tmp_path, assemble([t])))


def test_a_codebook_of_256_entries_is_read(tmp_path: Path) -> None:
    # docs/format.md: k in 1..256; RAW symbols of alphabet 256 are 8 bits each
    codebook = struct.pack("<256f", *[float(i) for i in range(256)])
    parts = [codebook, _raw_stream(256, [255, 0, 7, 128])]
    t = Tensor("w", 1, 1, (4,), parts, struct.pack("<HQ", 256, 4))
    with DzipReader(_write(tmp_path, assemble([t]))) as r:
        assert r.tensor("w").tolist() == [255.0, 0.0, 7.0, 128.0]


def test_second_directory_entry_cut_short_is_named(tmp_path: Path) -> None:
    # two 28-byte scalar entries; the second's rank set to 8 needs a 64-byte shape at
    # directory offset 35, where 21 bytes are left
    scalars = [Tensor(n, 0, 1, (), [struct.pack("<f", 1.0)]) for n in "ab"]
    data = bytearray(assemble(scalars))
    data[entry_fields(bytes(data))[1]["rank"]] = 8
    with pytest.raises(
        CorruptFileError, match=r"tensor 'b': shape needs 64 byte\(s\) at directory offset 35"
    ):
        DzipReader(_write(tmp_path, fix_crcs(data)))


def test_an_empty_directory_may_end_the_file_before_an_empty_metadata(tmp_path: Path) -> None:
    # directory offset == file size (no tensors, 0-byte metadata): the offset is in range,
    # the empty metadata is what is wrong
    with pytest.raises(CorruptFileError, match="metadata is not valid UTF-8 JSON"):
        DzipReader(_write(tmp_path, assemble([], b"")))


# ----------------------------------------------------------------------------- huffman


@pytest.mark.parametrize(
    "counts", [np.ones((2, 2), dtype=np.int64), np.array([1.0, 2.0]), np.array(["1", "2"])]
)
def test_code_lengths_refuses_counts_that_are_not_a_1d_integer_array(
    counts: np.ndarray,
) -> None:
    with pytest.raises(ValueError, match="counts must be a 1-D integer array"):
        huffman.code_lengths(counts)


def test_code_lengths_refuses_a_negative_count() -> None:
    with pytest.raises(ValueError, match="counts must be non-negative"):
        huffman.code_lengths(np.array([3, -1, 2]))


def test_code_lengths_of_no_symbols_is_empty() -> None:
    out = huffman.code_lengths(np.array([], dtype=np.int64))
    assert out.dtype == np.uint8
    assert out.size == 0


def test_code_lengths_max_length_range_is_inclusive() -> None:
    top = huffman.MAX_CODE_LENGTH
    two = np.array([5, 3])
    assert huffman.code_lengths(two, max_length=1).tolist() == [1, 1]
    assert huffman.code_lengths(two, max_length=top).tolist() == [1, 1]
    for bad in (0, top + 1):
        with pytest.raises(ValueError, match=rf"max_length must be in \[1, {top}\], got {bad}"):
            huffman.code_lengths(two, max_length=bad)


def test_code_lengths_limits_a_tree_one_level_too_deep() -> None:
    # Huffman depths of counts 1, 1, 2, 4 are 3, 3, 2, 1; in at most 2 bits, four symbols
    # have only one complete code: every length 2
    assert huffman.code_lengths(np.array([1, 1, 2, 4]), max_length=3).tolist() == [3, 3, 2, 1]
    assert huffman.code_lengths(np.array([1, 1, 2, 4]), max_length=2).tolist() == [2, 2, 2, 2]


def test_check_lengths_of_an_empty_alphabet_is_corrupt() -> None:
    with pytest.raises(CorruptFileError, match="t: Huffman code has no symbols"):
        huffman.check_lengths(np.array([], dtype=np.uint8), what="t")


def test_encoded_bits_of_a_one_symbol_code_is_zero() -> None:
    # docs: a one-symbol code writes nothing; two symbols of 1 bit: 5 + 3 bits
    assert huffman.encoded_bits(np.array([5, 0]), np.array([1, 0])) == 0
    assert huffman.encoded_bits(np.array([5, 3]), np.array([1, 1])) == 8


def test_one_symbol_encode_checks_the_symbols() -> None:
    lengths, counts = np.array([1, 0], dtype=np.uint8), np.array([1, 0])
    assert huffman.encode(np.array([0, 0], dtype=np.uint8), lengths, counts) == b""
    assert huffman.encode(np.array([], dtype=np.uint8), np.zeros(2, np.uint8), counts * 0) == b""
    with pytest.raises(ValueError, match="a symbol has no code"):
        huffman.encode(np.array([0, 1], dtype=np.uint8), lengths, counts)


def test_huffman_payload_size_upper_bound_is_exact() -> None:
    one_bit = np.array([1, 1], dtype=np.uint8)
    huffman.check_payload_size(1, one_bit, 8, what="t")  # 8 bits: 1 byte
    huffman.check_payload_size(2, one_bit, 9, what="t")  # 9 bits: 2 bytes
    with pytest.raises(CorruptFileError, match="t: Huffman payload of 2 bytes cannot hold 8"):
        huffman.check_payload_size(2, one_bit, 8, what="t")


def test_huffman_decodes_a_single_symbol() -> None:
    # lengths 1, 1: canonical codes 0 -> "0", 1 -> "1"; "1" padded is 0x80
    assert huffman.decode(b"\x80", np.array([1, 1]), 1).tolist() == [1]
    assert huffman.decode(b"\x00", np.array([1, 1]), 1).tolist() == [0]
