"""Bit I/O: MSB-first order, fixed-width packing, Elias-gamma, hostile readers."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from deepzip.coding.bitio import BitReader, BitWriter, pack_codes, pack_fixed, unpack_fixed
from deepzip.errors import CorruptFileError


def test_msb_first_layout() -> None:
    w = BitWriter()
    w.write(1, 1)
    w.write(0b010, 3)
    w.write(0xABC, 12)
    w.write(0b11, 2)
    # 1 010 1010 1011 1100 11 -> 10101010 10111100 11000000
    assert w.getvalue() == bytes([0b10101010, 0b10111100, 0b11000000])
    assert w.bit_length == 18


def test_pack_fixed_literal() -> None:
    assert pack_fixed(np.array([1, 2, 3, 0, 7]), 3) == bytes([0b00101001, 0b10001110])
    assert pack_fixed(np.array([0xFFFF, 1]), 16) == b"\xff\xff\x00\x01"
    assert pack_fixed(np.array([5, 1]), 20) == bytes([0, 0, 0x50, 0, 0x01])
    assert pack_fixed(np.zeros(9, dtype=np.int64), 0) == b""
    assert pack_fixed(np.array([], dtype=np.uint8), 5) == b""


def test_pack_codes_literal() -> None:
    codes = np.array([0b0, 0b10, 0b11], dtype=np.uint32)
    lengths = np.array([1, 2, 2], dtype=np.uint8)
    sym = np.array([0, 1, 2, 0, 2], dtype=np.uint8)
    # 0 10 11 0 11 -> 01011011
    assert pack_codes(sym, codes, lengths, 8) == bytes([0b01011011])
    with pytest.raises(ValueError, match="total_bits"):
        pack_codes(sym, codes, lengths, 9)


@settings(max_examples=60, deadline=None)
@given(
    width=st.integers(0, 32),
    data=st.data(),
)
def test_fixed_round_trip(width: int, data: st.DataObject) -> None:
    hi = (1 << width) - 1
    values = data.draw(st.lists(st.integers(0, hi), max_size=300))
    arr = np.array(values, dtype=np.uint64)
    packed = pack_fixed(arr, width)
    assert len(packed) == (len(values) * width + 7) // 8
    # an independent unpacking through a Python big integer
    big = int.from_bytes(packed, "big") if packed else 0
    total = 8 * len(packed)
    expect = [(big >> (total - (i + 1) * width)) & hi for i in range(len(values))]
    assert expect == values
    out = unpack_fixed(packed, len(values), width, dtype=np.uint32 if width > 16 else np.uint16)
    assert out.tolist() == values


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 40), st.integers(0, 2**40)), max_size=60))
def test_writer_reader_round_trip(fields: list[tuple[int, int]]) -> None:
    fields = [(n, v & ((1 << n) - 1)) for n, v in fields]
    w = BitWriter()
    for n, v in fields:
        w.write(v, n)
    r = BitReader(w.getvalue(), what="fields")
    assert [r.read(n) for n, _ in fields] == [v for _, v in fields]
    r.finish()


@settings(max_examples=40, deadline=None)
@given(
    lead=st.integers(0, 7),
    width=st.integers(1, 24),
    values=st.lists(st.integers(0, 2**24 - 1), max_size=50),
    gammas=st.lists(st.integers(1, 70000), max_size=10),
)
def test_mixed_fields_aligned_and_unaligned(
    lead: int, width: int, values: list[int], gammas: list[int]
) -> None:
    values = [v & ((1 << width) - 1) for v in values]
    w = BitWriter()
    w.write(0b1010101 & ((1 << lead) - 1), lead)
    w.write_fixed(np.array(values, dtype=np.uint32), width)
    for g in gammas:
        w.write_gamma(g)
    w.write_fixed(np.array(values, dtype=np.uint32), width)
    r = BitReader(w.getvalue(), what="mixed")
    assert r.read(lead) == 0b1010101 & ((1 << lead) - 1)
    assert r.read_fixed(len(values), width).tolist() == values
    assert [r.read_gamma(18) for _ in gammas] == gammas
    assert r.read_fixed(len(values), width).tolist() == values
    r.finish()


@settings(max_examples=60, deadline=None)
@given(
    lead=st.integers(0, 15),
    gammas=st.lists(st.integers(1, 2**32 - 1), max_size=40),
    tail=st.integers(0, 9),
)
def test_gamma_array_writes_the_same_bits_as_one_at_a_time(
    lead: int, gammas: list[int], tail: int
) -> None:
    one, many = BitWriter(), BitWriter()
    for w in (one, many):
        w.write((1 << lead) - 1, lead)  # ones, so a shifted-in zero would show
    for g in gammas:
        one.write_gamma(g)
    many.write_gammas(np.array(gammas, dtype=np.uint64))
    for w in (one, many):
        w.write((1 << tail) - 1, tail)
    assert many.bit_length == one.bit_length
    assert many.getvalue() == one.getvalue()
    r = BitReader(many.getvalue(), what="gammas")
    r.read(lead)
    assert [r.read_gamma(33) for _ in gammas] == gammas


def test_gamma_codes() -> None:
    w = BitWriter()
    for v in (1, 2, 3, 4, 9):
        w.write_gamma(v)
    # 1 | 010 | 011 | 00100 | 0001001
    bits = "1" + "010" + "011" + "00100" + "0001001"
    assert w.getvalue() == int(bits.ljust(24, "0"), 2).to_bytes(3, "big")
    with pytest.raises(ValueError, match=">= 1"):
        w.write_gamma(0)
    with pytest.raises(ValueError, match=r"got range \[0, 5\]"):
        w.write_gammas(np.array([5, 0]))


def test_reader_rejects_overruns_and_bad_padding() -> None:
    r = BitReader(b"\xf0", what="tiny table")
    assert r.read(4) == 0xF
    with pytest.raises(CorruptFileError, match="tiny table: truncated"):
        r.read(5)
    with pytest.raises(CorruptFileError, match="truncated"):
        BitReader(b"\x00\x00", what="t").read_fixed(3, 6)
    with pytest.raises(CorruptFileError, match="leading zeros"):
        BitReader(b"\x00\x00\x00\x01", what="t").read_gamma(17)
    with pytest.raises(CorruptFileError, match="truncated"):
        BitReader(b"\x00", what="t").read_gamma(17)
    bad_pad = BitReader(b"\x81", what="t")
    bad_pad.read(1)
    with pytest.raises(CorruptFileError, match="padding"):
        bad_pad.finish()
    trailing = BitReader(b"\x80\x00", what="t")
    trailing.read(1)
    with pytest.raises(CorruptFileError, match="trailing"):
        trailing.finish()
    with pytest.raises(CorruptFileError, match="need 2 bytes"):
        unpack_fixed(b"\x00", 3, 5)


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match=r"2\*\*3"):
        pack_fixed(np.array([8]), 3)
    with pytest.raises(ValueError, match="width"):
        pack_fixed(np.array([1]), 33)
    with pytest.raises(ValueError, match="integers"):
        pack_fixed(np.array([1.0]), 3)
    with pytest.raises(ValueError, match="fit"):
        BitWriter().write(4, 2)
    with pytest.raises(ValueError, match="cannot hold"):
        unpack_fixed(b"\x00\x00", 1, 12, dtype=np.uint8)
