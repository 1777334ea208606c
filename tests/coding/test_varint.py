"""The shared LEB128 varint: known encodings, round trips and the hostile-input checks."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from deepzip.coding import varint
from deepzip.errors import CorruptFileError

# Standard unsigned LEB128 encodings (624485 is the example of the DWARF specification).
KNOWN = [
    (0, b"\x00"),
    (1, b"\x01"),
    (127, b"\x7f"),
    (128, b"\x80\x01"),
    (300, b"\xac\x02"),
    (624485, b"\xe5\x8e\x26"),
    ((1 << 64) - 1, b"\xff" * 9 + b"\x01"),
]


@pytest.mark.parametrize(("value", "encoded"), KNOWN)
def test_known_encodings(value: int, encoded: bytes) -> None:
    assert varint.encode(value) == encoded
    assert varint.encoded_len(value) == len(encoded)
    assert varint.read(b"\x99" + encoded + b"\x05", 1, "t", "f") == (value, 1 + len(encoded))


@given(st.integers(min_value=0, max_value=varint.MAX_VALUE))
def test_round_trip(value: int) -> None:
    data = varint.encode(value)
    assert varint.read(memoryview(data), 0, "t", "f") == (value, len(data))


@pytest.mark.parametrize("value", [-1, 1 << 64])
def test_encode_rejects_values_outside_64_bits(value: int) -> None:
    with pytest.raises(ValueError, match="outside"):
        varint.encode(value)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"", "layer.w: truncated while reading cells (offset 0)"),
        (b"\x80\x80", "layer.w: truncated while reading cells (offset 0)"),
        (b"\x80\x00", "layer.w: cells is an over-long varint"),
        (b"\xff" * 9 + b"\x02", "layer.w: cells exceeds 64 bits"),
        (b"\x80" * 10 + b"\x01", "layer.w: cells is a varint longer than 10 bytes"),
    ],
)
def test_read_rejects_corrupt_varints(data: bytes, message: str) -> None:
    with pytest.raises(CorruptFileError) as info:
        varint.read(data, 0, "layer.w", "cells")
    assert message in str(info.value)
