"""IDX reading and writing: round trips and hostile files."""

from __future__ import annotations

import gzip
import re
import struct
import tracemalloc
from pathlib import Path

import numpy as np
import pytest

from deepzip.datasets.idx import MAX_PAYLOAD_BYTES, read_idx, write_idx
from deepzip.errors import IDXFormatError

DTYPES = [np.uint8, np.int8, np.int16, np.int32, np.float32, np.float64]


def _sample(dtype: type[np.generic], shape: tuple[int, ...]) -> np.ndarray:
    rng = np.random.default_rng(0)
    if np.issubdtype(dtype, np.integer):
        info = np.iinfo(np.dtype(dtype).str)
        return rng.integers(info.min, info.max, size=shape, endpoint=True).astype(dtype)
    return rng.standard_normal(shape).astype(dtype)


def _header(code: int, dims: tuple[int, ...]) -> bytes:
    return bytes((0, 0, code, len(dims))) + struct.pack(f">{len(dims)}I", *dims)


@pytest.mark.parametrize("compress", [False, True])
@pytest.mark.parametrize("dtype", DTYPES)
def test_round_trip(tmp_path: Path, dtype: type[np.generic], compress: bool) -> None:
    array = _sample(dtype, (3, 4, 5))
    path = tmp_path / "a.idx"
    write_idx(path, array, gzip=compress)
    assert (path.read_bytes()[:2] == b"\x1f\x8b") is compress
    back = read_idx(path)
    assert back.dtype == np.dtype(dtype)
    assert back.dtype.isnative
    assert back.flags.writeable
    np.testing.assert_array_equal(back, array)


def test_gzip_detected_by_magic_not_name(tmp_path: Path) -> None:
    array = np.arange(6, dtype=np.uint8).reshape(2, 3)
    path = tmp_path / "plain.gz"
    write_idx(path, array)
    np.testing.assert_array_equal(read_idx(path), array)
    path = tmp_path / "compressed-without-suffix"
    write_idx(path, array, gzip=True)
    np.testing.assert_array_equal(read_idx(path), array)


def test_big_endian_on_disk(tmp_path: Path) -> None:
    path = tmp_path / "a.idx"
    write_idx(path, np.array([1, 258], dtype=np.int32))
    assert path.read_bytes() == _header(0x0C, (2,)) + b"\0\0\0\x01\0\0\x01\x02"


def test_zero_dimension_allowed(tmp_path: Path) -> None:
    path = tmp_path / "empty.idx"
    path.write_bytes(_header(0x08, (0, 28, 28)))
    assert read_idx(path).shape == (0, 28, 28)


@pytest.mark.parametrize(
    ("data", "match"),
    [
        (b"\x01\x00\x08\x01\0\0\0\x01\x07", "magic"),
        (b"\x00\x00\x0a\x01\0\0\0\x01\x07", "dtype code 0x0a"),
        (b"\x00\x00\x08\x00", "dimensions 0"),
        (b"\x00\x00\x08\x05" + b"\0\0\0\x01" * 5 + b"\x07", "dimensions 5"),
        (b"\x00\x00", "header"),
        (b"\x00\x00\x08\x02\0\0\0\x01", "dimensions"),
    ],
)
def test_malformed_header(tmp_path: Path, data: bytes, match: str) -> None:
    path = tmp_path / "bad.idx"
    path.write_bytes(data)
    with pytest.raises(IDXFormatError, match=match) as info:
        read_idx(path)
    assert str(path) in str(info.value)


@pytest.mark.parametrize("compress", [False, True])
def test_truncated_payload(tmp_path: Path, compress: bool) -> None:
    path = tmp_path / "short.idx"
    data = _header(0x0B, (10,)) + b"\0" * 15
    path.write_bytes(gzip.compress(data) if compress else data)
    with pytest.raises(IDXFormatError, match="expected 20 bytes, got 15 bytes"):
        read_idx(path)


def test_trailing_bytes(tmp_path: Path) -> None:
    path = tmp_path / "long.idx"
    path.write_bytes(_header(0x08, (4,)) + b"\0" * 5)
    with pytest.raises(IDXFormatError, match="trailing bytes"):
        read_idx(path)


def test_huge_dims_rejected_before_reading(tmp_path: Path) -> None:
    path = tmp_path / "huge.idx"
    path.write_bytes(_header(0x0E, (2**31, 2**31, 2**31)))
    with pytest.raises(IDXFormatError, match=str(MAX_PAYLOAD_BYTES)):
        read_idx(path)


def test_a_zero_dimension_does_not_hide_huge_others(tmp_path: Path) -> None:
    # 16 bytes declaring 0 elements, but a shape no array can have (numpy: "array is too big")
    path = tmp_path / "zero.idx"
    path.write_bytes(_header(0x08, (0, 2**32 - 1, 2**32 - 1)))
    with pytest.raises(IDXFormatError, match=r"\(the zero aside\), more than the limit"):
        read_idx(path)


def test_corrupt_gzip(tmp_path: Path) -> None:
    path = tmp_path / "broken.idx.gz"
    path.write_bytes(gzip.compress(_header(0x08, (100,)) + bytes(100))[:-12])
    with pytest.raises(IDXFormatError, match=re.escape(str(path))):
        read_idx(path)


def test_write_rejects_unsupported(tmp_path: Path) -> None:
    with pytest.raises(IDXFormatError, match="float16"):
        write_idx(tmp_path / "a", np.zeros(3, dtype=np.float16))
    with pytest.raises(IDXFormatError, match="5-d"):
        write_idx(tmp_path / "a", np.zeros((1,) * 5, dtype=np.uint8))
    with pytest.raises(IDXFormatError, match=r"shape \(0, 4294967296\)"):
        write_idx(tmp_path / "a", np.zeros((0, 2**32), dtype=np.uint8))
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("compress", [False, True])
def test_a_header_declaring_more_than_the_file_holds_allocates_nothing(
    tmp_path: Path, compress: bool
) -> None:
    path = tmp_path / "bomb.idx"
    dims = (2048, 1024, 1023)  # 2,145,386,496 bytes, just under the limit
    assert np.prod(dims) < MAX_PAYLOAD_BYTES
    data = _header(0x08, dims) + bytes(16)
    path.write_bytes(gzip.compress(data) if compress else data)
    tracemalloc.start()
    try:
        with pytest.raises(IDXFormatError, match=f"{re.escape(str(path))}: truncated payload"):
            read_idx(path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 64 << 20
