"""DzipWriter behaviour found untested by mutation testing (review 34: format/dzip_writer.py
from ``_check_codebook`` to the end: the shape, tensor and shared checks, ``_emit``,
``_finish``).

Every expected value comes from docs/format.md (its caps, section 10, and its layout),
hand-built bytes or a round trip through the reader, never from the writer's own output.
"""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from dzip_craft import HEADER_SIZE, MAGIC, header

from deepzip.coding.bloomier import build_filter
from deepzip.errors import ConfigError, DeepZipError, InvalidTensorError
from deepzip.format import DzipReader, DzipWriter, dzip_writer
from deepzip.quantize.shared import SharedTensor

MAX_ELEMENTS = 1 << 32  # docs/format.md section 10: elements of a tensor, and each dimension

# the directory entry of a RAW float32 tensor "a" of shape (1,) (docs/format.md section 4):
# name length, name, encoding, dtype, rank, part count, shape, offset, CRC, params length,
# one part length
_ENTRY_A = 2 + 1 + 4 + 8 + 8 + 4 + 1 + 8


def test_rank_at_the_cap_round_trips(tmp_path: Path) -> None:
    t = torch.arange(2.0).reshape((1,) * 7 + (2,))  # rank 8 = MAX_RANK
    path = tmp_path / "r.dzip"
    with DzipWriter(path) as w:
        w.add_raw("t", t)
    with DzipReader(path) as r:
        assert r.entry("t").shape == (1,) * 7 + (2,)
        assert torch.equal(r.tensor("t"), t)


def test_a_dimension_at_the_cap_round_trips(tmp_path: Path) -> None:
    path = tmp_path / "d.dzip"
    with DzipWriter(path) as w:
        w.add_raw("t", torch.zeros(MAX_ELEMENTS, 0))  # no elements: nothing to allocate
        with pytest.raises(InvalidTensorError, match="has a dimension outside"):
            w.add_raw("u", torch.zeros(MAX_ELEMENTS + 1, 0))
    with DzipReader(path) as r:
        assert r.entry("t").shape == (MAX_ELEMENTS, 0)
        assert r.tensor("t").shape == (MAX_ELEMENTS, 0)


def test_element_count_cap(tmp_path: Path) -> None:
    """A shape of more than 2^32 elements is refused by its product; exactly 2^32 passes the
    shape check and reaches the filter's (a filter for 2 positions does not cover it)."""
    f = build_filter(np.array([0]), np.array([0]), n_positions=2, num_values=1, cell_bits=4)
    data, cb = f.to_bytes(), torch.tensor([0.5])
    with DzipWriter(tmp_path / "e.dzip") as w:
        for shape in [(1 << 16, (1 << 16) + 1), (3, 1 << 31)]:
            n = shape[0] * shape[1]
            with pytest.raises(
                InvalidTensorError, match=f"{n} elements exceed the cap of {MAX_ELEMENTS}"
            ):
                w.add_bloomier("a", cb, data, shape)
        with pytest.raises(InvalidTensorError, match="not a valid Bloomier filter"):
            w.add_bloomier("b", cb, data, (1 << 16, 1 << 16))
        assert w.records == ()


_SPARSE = {
    "coo": lambda: torch.eye(3).to_sparse(),
    "csr": lambda: torch.eye(3).to_sparse_csr(),
    "csc": lambda: torch.eye(3).to_sparse_csc(),
    "bsr": lambda: torch.eye(4).to_sparse_bsr((2, 2)),
}


@pytest.mark.filterwarnings("ignore:Sparse (CSR|CSC|BSR) tensor support is in beta")
@pytest.mark.parametrize("layout", sorted(_SPARSE))
def test_sparse_layouts_are_refused(tmp_path: Path, layout: str) -> None:
    sparse = _SPARSE[layout]()
    path = tmp_path / "s.dzip"
    with DzipWriter(path) as w:
        with pytest.raises(InvalidTensorError, match="t: only strided"):
            w.add_raw("t", sparse)
        with pytest.raises(InvalidTensorError, match="f: only strided"):
            w.add_sparse_float("f", sparse, torch.ones(sparse.shape, dtype=torch.bool))
        assert w.records == ()
    with DzipReader(path) as r:
        assert r.entries == ()


@pytest.mark.parametrize("dtype", [torch.int64, torch.int8, torch.bool])
def test_shared_indices_must_be_uint8(tmp_path: Path, dtype: torch.dtype) -> None:
    shared = SharedTensor(
        torch.tensor([0.5, 1.0]), torch.tensor([0, 1, 1]).to(dtype), torch.ones(3, dtype=torch.bool)
    )
    with (
        DzipWriter(tmp_path / "i.dzip") as w,
        pytest.raises(InvalidTensorError, match=f"w: indices must be uint8, got {dtype}"),
    ):
        w.add_shared("w", shared)


@pytest.mark.parametrize(
    "mask",
    [torch.ones(3, dtype=torch.uint8), torch.ones(4, dtype=torch.bool), torch.ones(1, 3).bool()],
)
def test_shared_mask_must_be_bool_of_the_indices_shape(tmp_path: Path, mask: torch.Tensor) -> None:
    shared = SharedTensor(
        torch.tensor([0.5, 1.0]), torch.tensor([0, 1, 1], dtype=torch.uint8), mask
    )
    with (
        DzipWriter(tmp_path / "m.dzip") as w,
        pytest.raises(InvalidTensorError, match=r"w: mask must be bool of shape \(3,\)"),
    ):
        w.add_shared("w", shared)


def test_shared_index_must_be_below_the_codebook_size(tmp_path: Path) -> None:
    cb = torch.tensor([0.5, 1.0, 2.0])
    mask = torch.tensor([True, False, True])
    path = tmp_path / "k.dzip"
    with DzipWriter(path) as w:
        for kept_index in (3, 4):
            bad = SharedTensor(cb, torch.tensor([0, 0, kept_index], dtype=torch.uint8), mask)
            with pytest.raises(
                InvalidTensorError, match=f"w: an index reaches {kept_index}, the codebook has 3"
            ):
                w.add_shared("w", bad)
        # a pruned position's index is not stored: any value there is fine
        w.add_shared("w", SharedTensor(cb, torch.tensor([2, 9, 1], dtype=torch.uint8), mask))
        w.add_shared(
            "z", SharedTensor(cb, torch.tensor([9, 9], dtype=torch.uint8), torch.zeros(2).bool())
        )
    with DzipReader(path) as r:
        assert torch.equal(r.tensor("w"), torch.tensor([2.0, 0.0, 1.0]))
        assert torch.equal(r.tensor("z"), torch.zeros(2))


def test_an_empty_writer_writes_a_1_0_file_of_header_and_metadata(tmp_path: Path) -> None:
    path = tmp_path / "e.dzip"
    with DzipWriter(path):
        pass
    # docs/format.md section 2, by hand: magic, version 1.0, no flags, file size 74, an empty
    # directory at 72, the metadata "{}" at 72, no tensors, then the three CRCs
    head = MAGIC + struct.pack(
        "<HHIQQQQQIII", 1, 0, 0, 74, 72, 0, 72, 2, 0, zlib.crc32(b""), zlib.crc32(b"{}")
    )
    assert path.read_bytes() == head + struct.pack("<I", zlib.crc32(head)) + b"{}"
    with DzipReader(path) as r:
        assert (r.entries, r.metadata) == ((), {})


def test_a_raw_tensor_file_is_byte_for_byte_the_documented_layout(tmp_path: Path) -> None:
    path = tmp_path / "r.dzip"
    with DzipWriter(path, metadata={"k": "v"}) as w:
        w.add_raw("a", torch.tensor([1.5]))
    region = struct.pack("<f", 1.5)
    entry = (
        struct.pack("<H", 1)
        + b"a"
        + bytes([0, 1, 1, 1])  # RAW, float32, rank 1, one part
        + struct.pack("<QQI", 1, HEADER_SIZE, zlib.crc32(region))
        + bytes([0])  # no params
        + struct.pack("<Q", 4)
    )
    assert len(entry) == _ENTRY_A
    meta = b'{"k":"v"}'
    d0 = HEADER_SIZE + 4
    size = d0 + len(entry) + len(meta)
    fields = (1, 0, 0, size, d0, len(entry), d0 + len(entry), len(meta), 1)
    head = MAGIC + struct.pack("<HHIQQQQQI", *fields)
    head += struct.pack("<II", zlib.crc32(entry), zlib.crc32(meta))
    expected = head + struct.pack("<I", zlib.crc32(head)) + region + entry + meta
    assert path.read_bytes() == expected
    assert w.report.file_bytes == size
    assert w.report.overhead_bytes == HEADER_SIZE + len(entry) + len(meta)
    assert w.report.original_bytes == 4


def test_directory_cap(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """At the cap the file is written; one byte over, nothing is (1 << 28 is too big here)."""
    monkeypatch.setattr(dzip_writer, "MAX_DIRECTORY_BYTES", _ENTRY_A)
    with DzipWriter(tmp_path / "at.dzip") as w:
        w.add_raw("a", torch.ones(1))
    assert header((tmp_path / "at.dzip").read_bytes())["directory_length"] == _ENTRY_A
    monkeypatch.setattr(dzip_writer, "MAX_DIRECTORY_BYTES", _ENTRY_A - 1)
    over = tmp_path / "over.dzip"
    with (
        pytest.raises(DeepZipError, match=f"directory would be {_ENTRY_A} bytes, over the cap"),
        DzipWriter(over) as w,
    ):
        w.add_raw("a", torch.ones(1))
    assert list(tmp_path.iterdir()) == [tmp_path / "at.dzip"]


def test_metadata_cap(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """At the cap the file is written; one byte over, nothing is (1 << 26 is too big here)."""
    meta = {"user": {"x": "y"}}
    n = len(b'{"user":{"x":"y"}}')
    monkeypatch.setattr(dzip_writer, "MAX_METADATA_BYTES", n)
    with DzipWriter(tmp_path / "at.dzip", metadata=meta):
        pass
    with DzipReader(tmp_path / "at.dzip") as r:
        assert r.metadata == meta
    monkeypatch.setattr(dzip_writer, "MAX_METADATA_BYTES", n - 1)
    with (
        pytest.raises(ConfigError, match=f"metadata is {n} bytes, over the cap of {n - 1}"),
        DzipWriter(tmp_path / "over.dzip", metadata=meta),
    ):
        pass
    assert list(tmp_path.iterdir()) == [tmp_path / "at.dzip"]
