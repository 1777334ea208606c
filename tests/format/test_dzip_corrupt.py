"""Hostile input: every malformed .dzip raises CorruptFileError / UnsupportedVersionError, with
a message naming what is wrong, before anything large is allocated."""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from dzip_craft import (
    FORMAT_ERRORS,
    HEADER_SIZE,
    Tensor,
    assemble,
    entry_fields,
    fix_crcs,
    header,
    raises_small,
    raw_f32,
    read_all,
    varint,
)
from test_dzip_golden import EVERY_ENCODING

from deepzip.coding.bloomier import build_filter
from deepzip.errors import CorruptFileError, UnsupportedVersionError
from deepzip.format import DzipReader, DzipWriter, inspect, load_state_dict
from deepzip.format.dzip_spec import MAX_ELEMENTS
from deepzip.quantize.shared import SharedTensor


def _write(tmp_path: Path, data: bytes, name: str = "f.dzip") -> Path:
    path = tmp_path / name
    path.write_bytes(data)
    return path


def _patch(buf: bytes, offset: int, fmt: str, value: int) -> bytes:
    out = bytearray(buf)
    struct.pack_into(fmt, out, offset, value)
    return fix_crcs(out)


def test_assembler_agrees_with_the_writer(tmp_path: Path) -> None:
    """The crafted files below are valid except for the one field each test breaks."""
    data = assemble([raw_f32("a", [1.0, 2.0]), raw_f32("b", [3.0])])
    state = load_state_dict(_write(tmp_path, data))
    assert state["a"].tolist() == [1.0, 2.0]
    assert state["b"].tolist() == [3.0]
    read_all(_write(tmp_path, EVERY_ENCODING, "golden.dzip"))


# ------------------------------------------------------------------ truncation and bit flips


def test_truncated_at_every_length(tmp_path: Path) -> None:
    sections = inspect(_write(tmp_path, EVERY_ENCODING)).sections
    boundaries = {s.offset for s in sections} | {s.offset + s.length for s in sections}
    assert len(boundaries) > 15
    for n in range(len(EVERY_ENCODING)):  # every section boundary, and every byte between
        path = _write(tmp_path, EVERY_ENCODING[:n], "cut.dzip")
        with pytest.raises(CorruptFileError):
            read_all(path)


def test_every_byte_flipped_is_detected(tmp_path: Path) -> None:
    for i in range(len(EVERY_ENCODING)):
        data = bytearray(EVERY_ENCODING)
        data[i] ^= 0xFF
        path = _write(tmp_path, bytes(data), "flip.dzip")
        with pytest.raises(FORMAT_ERRORS):
            read_all(path)


def test_checksum_errors_name_the_section(tmp_path: Path) -> None:
    first_region = HEADER_SIZE  # tensor "b"
    h = header(EVERY_ENCODING)
    for offset, pattern in [
        (first_region, "tensor 'b': checksum mismatch"),
        (h["directory_offset"] + 5, "directory checksum mismatch"),
        (h["metadata_offset"] + 1, "metadata checksum mismatch"),
        (30, "header checksum mismatch"),
    ]:
        data = bytearray(EVERY_ENCODING)
        data[offset] ^= 0x01
        with pytest.raises(CorruptFileError, match=pattern):
            read_all(_write(tmp_path, bytes(data)))


def test_appended_bytes(tmp_path: Path) -> None:
    with pytest.raises(CorruptFileError, match="truncated or appended"):
        read_all(_write(tmp_path, EVERY_ENCODING + b"\0"))


# --------------------------------------------------------------------------- header fields


def test_bad_magic_and_not_a_dzip(tmp_path: Path) -> None:
    with pytest.raises(CorruptFileError, match=r"not a \.dzip file"):
        DzipReader(_write(tmp_path, b"PK\x03\x04" + EVERY_ENCODING[4:]))
    with pytest.raises(CorruptFileError, match="shorter than the 72-byte"):
        DzipReader(_write(tmp_path, b""))
    with pytest.raises(CorruptFileError, match="cannot open"):
        DzipReader(tmp_path / "missing.dzip")


def test_newer_major_version(tmp_path: Path) -> None:
    data = assemble([raw_f32("a", [1.0])], major=2)
    with pytest.raises(UnsupportedVersionError, match=r"format version 2\.0 is newer"):
        DzipReader(_write(tmp_path, data))
    with pytest.raises(CorruptFileError, match="invalid major version 0"):
        DzipReader(_write(tmp_path, assemble([raw_f32("a", [1.0])], major=0)))


def test_newer_minor_version_is_readable(tmp_path: Path) -> None:
    """A minor bump adds encodings only: a 1.7 file without new encodings reads fine."""
    data = assemble([raw_f32("a", [1.0])], minor=7)
    assert load_state_dict(_write(tmp_path, data))["a"].tolist() == [1.0]


def test_unknown_flags(tmp_path: Path) -> None:
    with pytest.raises(CorruptFileError, match="unknown flags 0x4"):
        DzipReader(_write(tmp_path, assemble([raw_f32("a", [1.0])], flags=4)))


@pytest.mark.parametrize(
    ("field", "value", "pattern"),
    [
        ("directory_length", 2**60, "directory length 1152921504606846976 exceeds the cap"),
        ("metadata_length", 2**60, "metadata length 1152921504606846976 exceeds the cap"),
        ("tensor_count", 2**32 - 1, "4294967295 tensors exceed the cap"),
        ("tensor_count", 5, "5 tensors cannot fit a 36-byte directory"),
        ("directory_offset", 2**63, "lies outside the file"),
        ("directory_offset", 10, "lies outside the file"),
        ("metadata_offset", 2**40, "does not follow the directory"),
        ("file_size", 2**62, "header says the file is 4611686018427387904 bytes"),
        ("metadata_length", 3, "does not end the file"),
    ],
)
def test_huge_or_inconsistent_header_fields(
    tmp_path: Path, field: str, value: int, pattern: str
) -> None:
    data = assemble([raw_f32("a", [1.0])], header_overrides={field: value})
    path = _write(tmp_path, data)
    err = raises_small(lambda: DzipReader(path))
    assert pattern in str(err)
    assert str(path) in str(err)


# ------------------------------------------------------------------------ directory entries


def test_overlapping_regions(tmp_path: Path) -> None:
    a, b = raw_f32("a", [1.0, 2.0]), raw_f32("b", [3.0])
    b.offset = HEADER_SIZE + 4  # inside a's region
    with pytest.raises(CorruptFileError, match=r"tensor 'b': region offset 76 overlaps"):
        DzipReader(_write(tmp_path, assemble([a, b])))
    b.offset = HEADER_SIZE
    with pytest.raises(CorruptFileError, match="overlaps the previous one"):
        DzipReader(_write(tmp_path, assemble([a, b])))


def test_gap_between_regions_and_region_out_of_range(tmp_path: Path) -> None:
    a, b = raw_f32("a", [1.0, 2.0]), raw_f32("b", [3.0])
    b.offset = HEADER_SIZE + 12
    with pytest.raises(CorruptFileError, match="leaves a gap"):
        DzipReader(_write(tmp_path, assemble([a, b])))
    a.offset = 2**62
    with pytest.raises(CorruptFileError, match="tensor 'a'"):
        DzipReader(_write(tmp_path, assemble([a])))


def test_huge_part_lengths(tmp_path: Path) -> None:
    t = raw_f32("a", [1.0])
    t.part_lengths = [2**60]
    path = _write(tmp_path, assemble([t]))
    err = raises_small(lambda: DzipReader(path))
    assert "tensor 'a'" in str(err)
    assert "1152921504606846976" in str(err)


def test_huge_shapes_are_refused_before_allocation(tmp_path: Path) -> None:
    t = Tensor("w", 1, 1, (2**31, 2**31), [struct.pack("<f", 0.5), b"\x00"], b"")
    t.params = struct.pack("<HQ", 1, 2**62)
    path = _write(tmp_path, assemble([t]))
    err = raises_small(lambda: read_all(path))
    assert "tensor 'w'" in str(err)
    assert "over the cap" in str(err)


def _zero_element_tensors(tmp_path: Path) -> bytes:
    """A valid file with one (2, 0) tensor of every encoding."""
    empty = np.zeros(0, dtype=np.int64)
    bloomier = build_filter(empty, empty, n_positions=0, num_values=1, cell_bits=4).to_bytes()
    cb, idx, mask = torch.tensor([0.5]), torch.zeros(2, 0, dtype=torch.uint8), torch.zeros(2, 0)
    shared = SharedTensor(cb, idx, mask.bool())
    path = tmp_path / "empty.dzip"
    with DzipWriter(path) as w:
        w.add_raw("raw", mask)
        w.add_shared("dense", shared, layout="dense")
        w.add_shared("sparse", shared, layout="sparse")
        w.add_sparse_float("float", mask, mask.bool())
        w.add_bloomier("bloomier", cb, bloomier, (2, 0))
    return path.read_bytes()


@pytest.mark.parametrize("dim", [2**64 - 1, 2**63, 2**32 + 1])
def test_huge_dimension_beside_a_zero_one(tmp_path: Path, dim: int) -> None:
    """A zero dimension makes numel 0: every other dimension is still capped."""
    base = _zero_element_tensors(tmp_path)
    read_all(_write(tmp_path, base))  # valid as written
    for i, fields in enumerate(entry_fields(base)):
        name = ["raw", "dense", "sparse", "float", "bloomier"][i]
        path = _write(tmp_path, _patch(base, fields["shape"], "<Q", dim))
        pattern = rf"tensor '{name}': dimension 0 of shape \({dim}, 0\) is {dim}, over the cap of"
        with (
            pytest.raises(CorruptFileError, match=f"{pattern} {MAX_ELEMENTS}"),
            DzipReader(path) as r,
        ):
            r.tensor(name)  # (opening fails: the reader's default cap)
    crafted = Tensor("w", 0, 1, (2**62, 0, 2**62), [b""])  # the zero dimension in the middle
    with pytest.raises(CorruptFileError, match="dimension 0 of shape"):
        DzipReader(_write(tmp_path, assemble([crafted])))
    lowered = Tensor("w", 0, 1, (100, 0), [b""])
    with pytest.raises(CorruptFileError, match=r"shape \(100, 0\) is 100, over the cap of 50"):
        DzipReader(_write(tmp_path, assemble([lowered])), max_elements=50)


def test_huge_stream_count_is_refused_before_allocation(tmp_path: Path) -> None:
    """A Huffman stream claiming 2**40 symbols for a 1000-element tensor."""
    stream = b"\x01" + varint(2) + varint(2**40) + varint(0) + varint(0)
    t = Tensor("w", 1, 1, (1000,), [struct.pack("<2f", 0.0, 1.0), stream])
    t.params = struct.pack("<HQ", 2, 1000)
    path = _write(tmp_path, assemble([t]))
    err = raises_small(lambda: read_all(path))
    assert "tensor 'w'" in str(err)
    assert "symbols stream" in str(err)


def test_huge_name_length(tmp_path: Path) -> None:
    t = raw_f32("a", [1.0])
    t.name_bytes = b"x" * 5000
    with pytest.raises(CorruptFileError, match="name length 5000 is outside"):
        DzipReader(_write(tmp_path, assemble([t])))


@pytest.mark.parametrize(
    ("change", "pattern"),
    [
        ({"encoding": 200}, "tensor 'a': unknown encoding id 200"),
        ({"encoding": 4}, "tensor 'a': unknown encoding id 4"),
        ({"dtype": 99}, "tensor 'a': unknown dtype id 99"),
        ({"dtype": 0}, "unknown dtype id 0"),
        ({"rank": 9}, "rank 9 exceeds the cap of 8"),
        ({"part_count": 2}, "RAW has 1 parts"),
        ({"params_length": 3}, "RAW parameters must be 0 bytes, got 3"),
    ],
)
def test_bad_entry_bytes(tmp_path: Path, change: dict[str, int], pattern: str) -> None:
    data = bytearray(assemble([raw_f32("a", [1.0, 2.0])]))
    fields = entry_fields(bytes(data))[0]
    for key, value in change.items():
        data[fields[key]] = value
    with pytest.raises(CorruptFileError, match=pattern):
        read_all(_write(tmp_path, fix_crcs(data)))


def test_future_encoding_in_a_newer_minor_is_unsupported(tmp_path: Path) -> None:
    t = Tensor("w", 6, 1, (3,), [b"\x00" * 7], b"")  # 6: the first id no minor defines yet
    path = _write(tmp_path, assemble([t], minor=3))
    with pytest.raises(UnsupportedVersionError, match=r"tensor 'w': encoding id 6 comes from"):
        DzipReader(path)
    with pytest.raises(CorruptFileError, match="unknown encoding id 6"):
        DzipReader(_write(tmp_path, assemble([t], minor=2)))
    t.encoding = 130
    with pytest.raises(CorruptFileError, match="unknown encoding id 130"):
        DzipReader(_write(tmp_path, assemble([t], minor=3)))


def test_duplicate_names_and_bad_utf8(tmp_path: Path) -> None:
    with pytest.raises(CorruptFileError, match="tensor 'a' appears twice"):
        DzipReader(_write(tmp_path, assemble([raw_f32("a", [1.0]), raw_f32("a", [2.0])])))
    t = raw_f32("a", [1.0])
    t.name_bytes = b"\xff\xfe"
    with pytest.raises(CorruptFileError, match="not valid UTF-8"):
        DzipReader(_write(tmp_path, assemble([t])))


def _shared(
    params: tuple[int, ...], parts: list[bytes], encoding: int = 1, dtype: int = 1
) -> Tensor:
    fmt = {1: "<HQ", 2: "<HBQ", 3: "<BQ"}[encoding]
    return Tensor("w", encoding, dtype, (4,), parts, struct.pack(fmt, *params))


STREAM4 = b"\x00" + varint(2) + varint(4) + varint(0) + varint(1) + b"\x50"  # RAW 0,1,0,1


@pytest.mark.parametrize(
    ("tensor", "pattern"),
    [
        (_shared((0, 4), [b"", STREAM4]), "codebook size k=0 is outside 1..256"),
        (_shared((300, 4), [b"\0" * 1200, STREAM4]), "k=300 is outside"),
        (_shared((2, 4), [b"\0" * 12, STREAM4]), "codebook is 12 bytes, k=2 needs 8"),
        (_shared((2, 5), [b"\0" * 8, STREAM4]), "kept 5 exceeds the 4 elements"),
        (_shared((2, 3), [b"\0" * 8, STREAM4]), "4 elements survive, the entry says 3"),
        (_shared((3, 4), [b"\0" * 12, STREAM4]), "alphabet size 2, expected 3 or 4"),
        (_shared((2, 4), [b"\0" * 8, STREAM4], dtype=5), "cannot restore dtype int8"),
        (_shared((2, 0, 4), [b"\0" * 8, STREAM4, STREAM4], 2), "gap width 0 is outside"),
        (_shared((17, 4), [STREAM4, b""], 3), "gap width 17 is outside"),
        (_shared((2, 4), [STREAM4, b"\0" * 3], 3), "not a whole number"),
        (_shared((1, 4), [STREAM4, b"\0" * 12], 3), "4 index entries but 3 values"),
        # consistent SPARSE_FLOAT whose 1-bit gaps 0,1,0,1 reach positions 0,2,3,5 of 4
        (_shared((1, 4), [STREAM4, b"\0" * 16], 3), "reaches position 5, the tensor has 4"),
        (_shared((2, 1, 4), [b"\0" * 8, STREAM4, STREAM4], 2), "alphabet size 2, expected 3"),
    ],
)
def test_bad_encoding_parameters(tmp_path: Path, tensor: Tensor, pattern: str) -> None:
    path = _write(tmp_path, assemble([tensor]))
    with pytest.raises(CorruptFileError, match=pattern) as info:
        read_all(path)
    assert "tensor 'w'" in str(info.value)


def test_bool_bytes_must_be_0_or_1(tmp_path: Path) -> None:
    t = Tensor("m", 0, 10, (3,), [b"\x01\x02\x00"])
    with pytest.raises(CorruptFileError, match=r"tensor 'm'.*other than 0 or 1"):
        read_all(_write(tmp_path, assemble([t])))


def test_raw_length_must_match_shape(tmp_path: Path) -> None:
    t = Tensor("a", 0, 1, (3,), [b"\0" * 8])
    with pytest.raises(CorruptFileError, match=r"RAW data is 8 bytes, shape \(3,\) of float32"):
        DzipReader(_write(tmp_path, assemble([t])))


def test_trailing_directory_bytes(tmp_path: Path) -> None:
    data = assemble(
        [raw_f32("a", [1.0])], header_overrides={"tensor_count": 0, "directory_offset": 76}
    )
    with pytest.raises(CorruptFileError, match="tensor regions end at 72"):
        DzipReader(_write(tmp_path, data))


# ------------------------------------------------------------------------------- metadata


@pytest.mark.parametrize(
    ("metadata", "pattern"),
    [
        (b"{", "not valid UTF-8 JSON"),
        (b"\xff{}", "not valid UTF-8 JSON"),
        (b'{"a":1,"a":2}', "duplicate key 'a'"),
        (b'{"a":NaN}', "NaN"),
        (b'{"a":Infinity}', "Infinity"),
        (b'{"a":1e999}', "number 1e999 is beyond float64's range"),  # parses to inf
        (b'{"a":[-1.5E400]}', "number -1.5E400 is beyond float64's range"),
        (b"[1,2]", "must be a JSON object, got list"),
        (b"[" * 100_000 + b"]" * 100_000, "not valid UTF-8 JSON"),
    ],
)
def test_bad_metadata(tmp_path: Path, metadata: bytes, pattern: str) -> None:
    with pytest.raises(CorruptFileError, match=pattern):
        DzipReader(_write(tmp_path, assemble([raw_f32("a", [1.0])], metadata)))


def test_finite_metadata_numbers_are_read(tmp_path: Path) -> None:
    data = assemble([raw_f32("a", [1.0])], b'{"x":[1e308,-2.5e-320,0.5,7,1E2]}')
    with DzipReader(_write(tmp_path, data)) as r:
        assert r.metadata == {"x": [1e308, -2.5e-320, 0.5, 7, 100.0]}


def test_unknown_metadata_keys_are_kept(tmp_path: Path) -> None:
    data = assemble([raw_f32("a", [1.0])], b'{"future":{"x":1},"user":{}}')
    with DzipReader(_write(tmp_path, data)) as r:
        assert r.metadata == {"future": {"x": 1}, "user": {}}


def test_reader_caps_are_adjustable(tmp_path: Path) -> None:
    from deepzip.format import DzipWriter

    path = tmp_path / "big.dzip"
    with DzipWriter(path) as w:
        w.add_raw("t", torch.zeros(100))
    with pytest.raises(CorruptFileError, match="100 elements, over the cap of 50"):
        DzipReader(path, max_elements=50)
