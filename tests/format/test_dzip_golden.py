"""Golden bytes: the .dzip layout is pinned, and the same input always gives the same bytes."""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import torch

from deepzip.format import DzipReader, DzipWriter, load_state_dict
from deepzip.quantize.shared import SharedTensor

# docs/format.md, section 12: one RAW float32 tensor "b" = [1.0, -2.0], metadata {}
RAW_EXAMPLE = bytes.fromhex(
    "89445a49500d0a1a01000000000000007600000000000000"
    "50000000000000002400000000000000"
    "74000000000000000200000000000000"
    "01000000e571e3ff43bfa6a38e291c19"
    "0000803f000000c0"
    "010062000101010200000000000000"
    "4800000000000000562687c3"
    "00"
    "0800000000000000"
    "7b7d"
)

# every encoding: RAW (float32, int64, bool), SHARED_DENSE (Huffman; and alphabet k+1 with the
# raw coder, restoring float16), SHARED_SPARSE (ANS, 2-bit gaps), SPARSE_FLOAT (float16)
EVERY_ENCODING = bytes.fromhex(
    "89445a49500d0a1a01000000000000007002000000000000d400000000000000"
    "810100000000000055020000000000001b0000000000000007000000d1fb12bb"
    "50e8f152d993ced40000803f000000c0000000bf000000000000803e0000c03f"
    "01040c040304000f78cf5580000000bf000000000000803e0204050504182000"
    "79c00000400f02040505041820007e4000004024000000bf000000000000803e"
    "0000c03f00050c00051249209090010804050104001920207000c6003c004400"
    "45ffffffffffffffff0700000000000000010001010062000101010200000000"
    "0000004800000000000000562687c3000800000000000000050064656e736501"
    "0102020300000000000000040000000000000050000000000000001f9c76990a"
    "04000c0000000000000010000000000000000c00000000000000060073706172"
    "736502010203030000000000000004000000000000006c00000000000000bc50"
    "7b5f0b03000204000000000000000c000000000000000e000000000000000e00"
    "0000000000000c007072756e65645f64656e7365010202020300000000000000"
    "04000000000000009400000000000000cca33a4f0a0400040000000000000010"
    "000000000000000a000000000000000200736603020202030000000000000004"
    "00000000000000ae000000000000009bbe57a1090304000000000000000b0000"
    "00000000000800000000000000010069000801010200000000000000c1000000"
    "0000000076cf107100100000000000000001006d000a01010300000000000000"
    "d100000000000000b38384890003000000000000007b2275736572223a7b226d"
    "6f64656c223a22676f6c64656e227d7d"
)


def _every_encoding(path: Path) -> None:
    idx = torch.tensor([[0, 1, 2, 3], [3, 3, 3, 0], [1, 1, 1, 1]], dtype=torch.uint8)
    full = torch.ones(3, 4, dtype=torch.bool)
    mask = torch.tensor([[1, 0, 0, 0], [0, 0, 0, 1], [0, 0, 1, 1]], dtype=torch.bool)
    cb = torch.tensor([-0.5, 0.0, 0.25, 1.5])
    half = torch.arange(12, dtype=torch.float16).reshape(3, 4) - 6
    with DzipWriter(path, metadata={"user": {"model": "golden"}}) as w:
        w.add_raw("b", torch.tensor([1.0, -2.0]))
        w.add_shared("dense", SharedTensor(cb, idx, full), coder="huffman")
        sparse = SharedTensor(cb[:3], (idx % 3) * mask, mask)
        w.add_shared("sparse", sparse, gap_width=2, layout="sparse", coder="ans")
        pruned = SharedTensor(cb, idx * mask, mask)
        w.add_shared("pruned_dense", pruned, dtype=torch.float16, layout="dense", coder="raw")
        w.add_sparse_float("sf", half, mask, gap_width=3, coder="huffman")
        w.add_raw("i", torch.tensor([-1, 7], dtype=torch.int64))
        w.add_raw("m", torch.tensor([True, False, True]))


def test_raw_example_matches_the_spec(tmp_path: Path) -> None:
    path = tmp_path / "b.dzip"
    with DzipWriter(path) as w:
        w.add_raw("b", torch.tensor([1.0, -2.0]))
    assert path.read_bytes() == RAW_EXAMPLE


def test_raw_example_built_independently_from_the_spec() -> None:
    """Section 2-4 of docs/format.md, written with struct and zlib only."""
    region = struct.pack("<2f", 1.0, -2.0)
    entry = (
        struct.pack("<H", 1) + b"b" + bytes([0, 1, 1, 1]) + struct.pack("<Q", 2)
        + struct.pack("<QI", 72, zlib.crc32(region)) + bytes([0]) + struct.pack("<Q", 8)
    )  # fmt: skip
    meta = b"{}"
    d_off = 72 + len(region)
    head = b"\x89DZIP\r\n\x1a" + struct.pack(
        "<HHIQQQQQIII", 1, 0, 0, d_off + len(entry) + 2, d_off, len(entry), d_off + len(entry),
        2, 1, zlib.crc32(entry), zlib.crc32(meta),
    )  # fmt: skip
    built = head + struct.pack("<I", zlib.crc32(head)) + region + entry + meta
    assert built == RAW_EXAMPLE


def test_every_encoding_golden_bytes(tmp_path: Path) -> None:
    path = tmp_path / "golden.dzip"
    _every_encoding(path)
    assert path.read_bytes() == EVERY_ENCODING


def test_golden_file_decodes_to_the_expected_tensors(tmp_path: Path) -> None:
    path = tmp_path / "golden.dzip"
    path.write_bytes(EVERY_ENCODING)
    state = load_state_dict(path)
    assert list(state) == ["b", "dense", "sparse", "pruned_dense", "sf", "i", "m"]
    assert state["b"].tolist() == [1.0, -2.0]
    assert state["dense"].tolist() == [
        [-0.5, 0.0, 0.25, 1.5], [1.5, 1.5, 1.5, -0.5], [0.0, 0.0, 0.0, 0.0]
    ]  # fmt: skip
    assert state["sparse"].tolist() == [
        [-0.5, 0.0, 0.0, 0.0], [0.0, 0.0, 0.0, -0.5], [0.0, 0.0, 0.0, 0.0]
    ]  # fmt: skip
    assert state["pruned_dense"].dtype == torch.float16
    assert state["pruned_dense"].tolist() == [
        [-0.5, 0.0, 0.0, 0.0], [0.0, 0.0, 0.0, -0.5], [0.0, 0.0, 0.0, 0.0]
    ]  # fmt: skip
    assert state["sf"].dtype == torch.float16
    assert state["sf"].tolist() == [[-6.0, 0, 0, 0], [0, 0, 0, 1.0], [0, 0, 4.0, 5.0]]
    assert state["i"].tolist() == [-1, 7]
    assert state["i"].dtype == torch.int64
    assert state["m"].tolist() == [True, False, True]
    with DzipReader(path) as r:
        assert r.metadata == {"user": {"model": "golden"}}
        assert [e.encoding.name for e in r.entries] == [
            "RAW", "SHARED_DENSE", "SHARED_SPARSE", "SHARED_DENSE", "SPARSE_FLOAT", "RAW", "RAW"
        ]  # fmt: skip


def test_same_input_twice_gives_identical_bytes(tmp_path: Path) -> None:
    _every_encoding(tmp_path / "a.dzip")
    _every_encoding(tmp_path / "b.dzip")
    assert (tmp_path / "a.dzip").read_bytes() == (tmp_path / "b.dzip").read_bytes()
