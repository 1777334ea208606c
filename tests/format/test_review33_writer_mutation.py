"""DzipWriter behaviour found untested by mutation testing (review 33).

Every expected value comes from docs/format.md's layout, hand-built bytes, a round trip
through the reader, or a direct torch computation, never from the writer's own output.
"""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from dzip_craft import HEADER_SIZE, header

from deepzip.coding.bloomier import build_filter
from deepzip.errors import ConfigError, DeepZipError, InvalidTensorError
from deepzip.format import DzipReader, DzipWriter
from deepzip.quantize.shared import SharedTensor


def _shared(k: int, n: int, kept_every: int = 1, seed: int = 0) -> SharedTensor:
    g = torch.Generator().manual_seed(seed)
    codebook = torch.linspace(-1.0, 1.0, k)
    indices = torch.randint(0, k, (n,), generator=g, dtype=torch.uint8)
    mask = torch.arange(n) % kept_every == 0
    return SharedTensor(codebook, indices.masked_fill(~mask, 0), mask)


class _EqualsEverything:
    def __eq__(self, other: object) -> bool:
        return True

    def __hash__(self) -> int:
        return 0


@pytest.mark.parametrize("layout", ["bogus", 3, _EqualsEverything()])
def test_add_shared_refuses_an_unknown_layout(tmp_path: Path, layout: object) -> None:
    with (
        DzipWriter(tmp_path / "l.dzip") as w,
        pytest.raises(ConfigError, match="layout must be one of"),
    ):
        w.add_shared("w", _shared(4, 8), layout=layout)  # type: ignore[arg-type]


@pytest.mark.parametrize("raw", [[0, 2, 1, 255, 0, 7], [2, 0, 1, 2, 0, 1], [0, 1, 1, 1, 0, 1]])
def test_bool_tensor_from_other_bytes_is_stored_as_zero_or_one(
    tmp_path: Path, raw: list[int]
) -> None:
    path = tmp_path / "b.dzip"
    with DzipWriter(path) as w:
        w.add_raw("b", torch.tensor(raw, dtype=torch.uint8).view(torch.bool))
    # section 5: each bool byte MUST be 0 or 1; the only region starts at offset 72
    expected = [int(b != 0) for b in raw]
    assert path.read_bytes()[HEADER_SIZE : HEADER_SIZE + 6] == bytes(expected)
    with DzipReader(path) as r:
        assert torch.equal(r.tensor("b"), torch.tensor(expected, dtype=torch.bool))


def test_negative_bit_view_is_written_with_its_values(tmp_path: Path) -> None:
    c = torch.complex(torch.tensor([1.0, 2.0, 3.0]), torch.tensor([0.5, -4.0, 8.0]))
    view = c.conj().imag  # a view with the negative bit set
    assert view.is_neg()
    path = tmp_path / "n.dzip"
    with DzipWriter(path) as w:
        w.add_raw("n", view)
    assert path.read_bytes()[HEADER_SIZE : HEADER_SIZE + 12] == struct.pack("<3f", -0.5, 4, -8)


def test_size_one_dimension_with_odd_stride_is_written(tmp_path: Path) -> None:
    w0 = torch.arange(12, dtype=torch.float32).reshape(3, 4)
    col = w0[:1, 0]  # shape (1,), stride 4
    path = tmp_path / "s.dzip"
    with DzipWriter(path) as w:
        w.add_raw("c", col)
        w.add_raw("m", w0[1:, 1:3])  # not contiguous
    data = path.read_bytes()
    assert data[HEADER_SIZE : HEADER_SIZE + 4] == struct.pack("<f", 0.0)
    assert data[HEADER_SIZE + 4 : HEADER_SIZE + 20] == struct.pack("<4f", 5, 6, 9, 10)


def test_header_and_sections_tile_the_file(tmp_path: Path) -> None:
    path = tmp_path / "t.dzip"
    a = torch.arange(5, dtype=torch.int16)
    with DzipWriter(path, metadata={"user": {"x": "y"}}) as w:
        w.add_raw("a", a)
        w.add_raw("b", torch.tensor([1.5], dtype=torch.float64))
    data = path.read_bytes()
    h = header(path.read_bytes())
    meta = b'{"user":{"x":"y"}}'
    assert h["magic"] == b"\x89DZIP\r\n\x1a"
    assert (h["major"], h["minor"], h["flags"]) == (1, 0, 0)
    assert h["file_size"] == len(data)
    assert h["directory_offset"] == HEADER_SIZE + 10 + 8
    assert h["metadata_offset"] == h["directory_offset"] + h["directory_length"]
    assert h["metadata_length"] == len(meta)
    assert data[h["metadata_offset"] :] == meta
    assert h["tensor_count"] == 2
    directory = data[h["directory_offset"] : h["metadata_offset"]]
    assert h["directory_crc32"] == zlib.crc32(directory)
    assert h["metadata_crc32"] == zlib.crc32(meta)
    assert h["header_crc32"] == zlib.crc32(data[:68])
    # the first entry: name, RAW, int16, rank 1, one part, shape, offset 72, CRC of region
    region = struct.pack("<5h", 0, 1, 2, 3, 4)
    first = (
        struct.pack("<H", 1)
        + b"a"
        + bytes([0, 6, 1, 1])
        + struct.pack("<QQI", 5, HEADER_SIZE, zlib.crc32(region))
        + bytes([0])
        + struct.pack("<Q", 10)
    )
    assert directory.startswith(first)


def test_report_sizes(tmp_path: Path) -> None:
    path = tmp_path / "r.dzip"
    with DzipWriter(path, metadata={}) as w:
        w.add_raw("a", torch.zeros(3, dtype=torch.float64))
        w.add_raw("b", torch.zeros(2, dtype=torch.int8))
        w.add_alias("c", "a")
    h = header(path.read_bytes())
    assert w.report.file_bytes == path.stat().st_size
    assert w.report.overhead_bytes == HEADER_SIZE + h["directory_length"] + 2
    assert w.report.original_bytes == 3 * 8 + 2  # the alias counts once


@pytest.mark.parametrize(("adds", "minor"), [("raw", 0), ("bloomier", 1), ("alias", 2)])
def test_minor_version_is_the_lowest_that_defines_every_encoding(
    tmp_path: Path, adds: str, minor: int
) -> None:
    path = tmp_path / "v.dzip"
    with DzipWriter(path) as w:
        w.add_raw("a", torch.ones(2))
        if adds == "alias":
            w.add_alias("b", "a")
        if adds == "bloomier":
            filt = build_filter(
                np.array([0, 2, 3]), np.array([1, 0, 1]), n_positions=4, num_values=2, cell_bits=8
            )
            w.add_bloomier("f", torch.tensor([0.5, -0.5]), filt.to_bytes(), (4,))
    assert header(path.read_bytes())["minor"] == minor


def test_dense_layout_with_256_entries_and_pruning_round_trips(tmp_path: Path) -> None:
    shared = _shared(256, 600, kept_every=3, seed=1)
    shared.indices[0] = 255
    path = tmp_path / "d.dzip"
    with DzipWriter(path) as w:
        rec = w.add_shared("w", shared, layout="dense")
    assert rec.encoding == "shared_dense"
    with DzipReader(path) as r:
        assert torch.equal(r.tensor("w"), shared.dense())
        assert r.entry("w").param("kept") == 200


def test_alias_of_an_alias_points_at_the_data(tmp_path: Path) -> None:
    path = tmp_path / "a.dzip"
    with DzipWriter(path) as w:
        w.add_raw("x", torch.zeros(1))
        w.add_raw("a", torch.tensor([1.0, 2.0]))
        w.add_alias("b", "a")
        rec = w.add_alias("c", "b")
    assert rec.alias_of == "a"
    with DzipReader(path) as r:
        assert r.aliases == {"b": "a", "c": "a"}
        assert r.entry("c").param("target") == 1
        assert torch.equal(r.tensor("c"), torch.tensor([1.0, 2.0]))


def test_add_alias_refuses_an_unknown_target(tmp_path: Path) -> None:
    with DzipWriter(tmp_path / "u.dzip") as w:
        w.add_raw("a", torch.zeros(1))
        with pytest.raises(InvalidTensorError, match="cannot alias"):
            w.add_alias("b", "nope")
        with pytest.raises(InvalidTensorError, match="cannot alias"):
            w.add_alias("b", 0)  # type: ignore[arg-type]


@pytest.mark.parametrize("width", [True, 2.0, "3"])
def test_gap_width_must_be_an_integer(tmp_path: Path, width: object) -> None:
    t = torch.tensor([1.0, 0.0, 2.0, 0.0])
    with DzipWriter(tmp_path / "g.dzip") as w:
        with pytest.raises(ConfigError, match="gap width must be an integer or 'auto'"):
            w.add_shared("s", _shared(4, 8, kept_every=2), gap_width=width)  # type: ignore[arg-type]
        with pytest.raises(ConfigError, match="gap width must be an integer or 'auto'"):
            w.add_sparse_float("f", t, t != 0, gap_width=width)  # type: ignore[arg-type]


def test_a_writer_writes_one_file(tmp_path: Path) -> None:
    w = DzipWriter(tmp_path / "o.dzip")
    with pytest.raises(DeepZipError, match="has not finished"):
        _ = w.report
    with pytest.raises(DeepZipError, match="inside a 'with' block"):
        w.add_raw("a", torch.zeros(1))
    with w:
        w.add_raw("a", torch.zeros(1))
    with pytest.raises(DeepZipError, match="already used"):
        w.__enter__()
    with pytest.raises(DeepZipError, match="inside a 'with' block"):
        w.add_raw("b", torch.zeros(1))


@pytest.mark.parametrize("width", [0, 17, -1])
def test_gap_width_out_of_range_is_refused(tmp_path: Path, width: int) -> None:
    t = torch.tensor([1.0, 0.0, 2.0, 0.0])
    with DzipWriter(tmp_path / "g.dzip") as w:
        with pytest.raises(ConfigError, match=r"gap width must be in 1\.\.16 bits"):
            w.add_shared("s", _shared(4, 8, kept_every=2), gap_width=width)
        with pytest.raises(ConfigError, match=r"gap width must be in 1\.\.16 bits"):
            w.add_sparse_float("f", t, t != 0, gap_width=width)


@pytest.mark.parametrize("width", [1, 16])
def test_extreme_gap_widths_round_trip(tmp_path: Path, width: int) -> None:
    g = torch.Generator().manual_seed(3)
    t = torch.randn(40, generator=g)
    mask = torch.zeros(40, dtype=torch.bool)
    mask[[0, 5, 6, 39]] = True
    shared = _shared(4, 40, kept_every=7, seed=3)
    path = tmp_path / "e.dzip"
    with DzipWriter(path) as w:
        w.add_sparse_float("f", t, mask, gap_width=width)
        w.add_shared("s", shared, gap_width=width, layout="sparse")
    with DzipReader(path) as r:
        assert torch.equal(r.tensor("f"), torch.where(mask, t, torch.zeros(())))
        assert torch.equal(r.tensor("s"), shared.dense())
        assert r.entry("f").param("gap_width") == width
        assert r.entry("s").param("gap_width") == width
        assert r.entry("f").param("kept") == 4
        assert r.entry("s").param("kept") == 6


def _size_with(tmp_path: Path, name: str, shared: SharedTensor, **kw: object) -> int:
    path = tmp_path / name
    with DzipWriter(path) as w:
        w.add_shared("w", shared, **kw)  # type: ignore[arg-type]
    with DzipReader(path) as r:
        assert torch.equal(r.tensor("w"), shared.dense())
    return path.stat().st_size


@pytest.mark.parametrize("kept_every", [1, 2, 9])
@pytest.mark.parametrize("coder", ["huffman", "raw", "auto"])
def test_auto_layout_writes_the_smaller_file(tmp_path: Path, kept_every: int, coder: str) -> None:
    shared = _shared(16, 3000, kept_every=kept_every, seed=kept_every)
    auto = _size_with(tmp_path, "a.dzip", shared, coder=coder)
    dense = _size_with(tmp_path, "d.dzip", shared, coder=coder, layout="dense")
    sparse = [
        _size_with(tmp_path, f"s{g}.dzip", shared, coder=coder, layout="sparse", gap_width=g)
        for g in range(1, 17)
    ]
    if kept_every == 1:  # nothing pruned: dense (section 6.2)
        assert auto == dense
    else:
        assert auto == min(dense, *sparse)


@pytest.mark.parametrize("coder", ["huffman", "raw"])
def test_sparse_float_auto_width_writes_the_smallest_region(tmp_path: Path, coder: str) -> None:
    g = torch.Generator().manual_seed(5)
    t = torch.randn(2000, generator=g, dtype=torch.float64)
    mask = torch.rand(2000, generator=g) < 0.1

    def size(width: object) -> int:
        path = tmp_path / f"f{width}.dzip"
        with DzipWriter(path, coder=coder) as w:  # type: ignore[arg-type]
            w.add_sparse_float("f", t, mask, gap_width=width)  # type: ignore[arg-type]
        with DzipReader(path) as r:
            assert torch.equal(r.tensor("f"), torch.where(mask, t, torch.zeros((), dtype=t.dtype)))
        return path.stat().st_size

    assert size("auto") == min(size(w) for w in range(1, 17))


def test_meta_tensors_are_refused(tmp_path: Path) -> None:
    meta = torch.empty(4, device="meta")
    ok = torch.ones(4)
    s = _shared(4, 4)
    with DzipWriter(tmp_path / "m.dzip") as w:
        for add in (
            lambda: w.add_raw("a", meta),
            lambda: w.add_sparse_float("b", ok, torch.empty(4, dtype=torch.bool, device="meta")),
            lambda: w.add_shared("c", SharedTensor(s.codebook, s.indices.to("meta"), s.mask)),
            lambda: w.add_shared("d", SharedTensor(s.codebook.to("meta"), s.indices, s.mask)),
        ):
            with pytest.raises(InvalidTensorError, match="meta device"):
                add()
        assert w.records == ()


@pytest.mark.parametrize("coder", ["huffman", "raw"])
def test_forced_dense_layout_is_kept_when_sparse_would_be_smaller(
    tmp_path: Path, coder: str
) -> None:
    shared = _shared(16, 5000, kept_every=100, seed=7)
    sparse = _size_with(tmp_path, "s.dzip", shared, coder=coder, layout="sparse")
    dense = _size_with(tmp_path, "d.dzip", shared, coder=coder, layout="dense")
    assert sparse < dense  # the premise: sparse would win under "auto"
    with DzipReader(tmp_path / "d.dzip") as r:
        assert r.entry("w").encoding.name == "SHARED_DENSE"
        assert r.entry("w").param("kept") == 50


@pytest.mark.parametrize("dtype", [torch.int32, torch.uint8, torch.bool, torch.float8_e4m3fn])
def test_sparse_float_refuses_a_non_float_tensor(tmp_path: Path, dtype: torch.dtype) -> None:
    t = torch.ones(4).to(dtype)
    with (
        DzipWriter(tmp_path / "i.dzip") as w,
        pytest.raises(InvalidTensorError, match="SPARSE_FLOAT needs a float tensor"),
    ):
        w.add_sparse_float("i", t, torch.ones(4, dtype=torch.bool))


@pytest.mark.parametrize(
    "mask",
    [torch.ones(5, dtype=torch.bool), torch.ones(2, 2, dtype=torch.bool), torch.ones(4)],
)
def test_sparse_float_refuses_a_bad_mask(tmp_path: Path, mask: torch.Tensor) -> None:
    with (
        DzipWriter(tmp_path / "k.dzip") as w,
        pytest.raises(InvalidTensorError, match=r"mask must be bool of shape \(4,\)"),
    ):
        w.add_sparse_float("k", torch.ones(4), mask)


def test_sparse_float_record_has_no_codebook_size(tmp_path: Path) -> None:
    t = torch.tensor([0.0, 3.0, 0.0, 0.0, -1.0])
    with DzipWriter(tmp_path / "r.dzip") as w:
        rec = w.add_sparse_float("f", t, t != 0, gap_width=2)
    assert (rec.encoding, rec.k, rec.gap_width, rec.kept, rec.weights) == (
        "sparse_float",
        None,
        2,
        2,
        5,
    )


def test_bloomier_kept_counts_values_below_k(tmp_path: Path) -> None:
    keys = np.array([3, 10, 50, 77])
    filt = build_filter(keys, np.array([0, 1, 1, 0]), n_positions=100, num_values=2, cell_bits=2)
    lookups = filt.decode_all()
    assert (lookups == 2).any()  # the premise: a non-weight value equal to k
    path = tmp_path / "f.dzip"
    with DzipWriter(path) as w:
        rec = w.add_bloomier("f", torch.tensor([0.25, -0.5]), filt.to_bytes(), (10, 10))
    expected = int((lookups < 2).sum())
    assert (rec.encoding, rec.kept, rec.k, rec.gap_width) == ("bloomier", expected, 2, None)
    with DzipReader(path) as r:
        assert r.entry("f").param("kept") == expected
        table = torch.tensor([0.25, -0.5, 0.0, 0.0])
        assert torch.equal(r.tensor("f"), table[torch.from_numpy(lookups)].reshape(10, 10))


@pytest.mark.parametrize("name", ["", 3, None, b"a"])
def test_a_name_must_be_a_non_empty_string(tmp_path: Path, name: object) -> None:
    with DzipWriter(tmp_path / "n.dzip") as w:
        with pytest.raises(InvalidTensorError, match="tensor name must be a non-empty string"):
            w.add_raw(name, torch.ones(1))  # type: ignore[arg-type]
        with pytest.raises(InvalidTensorError, match="tensor name must be a non-empty string"):
            w.add_alias(name, "x")  # type: ignore[arg-type]
        assert w.records == ()


def test_name_length_is_capped_in_utf8_bytes(tmp_path: Path) -> None:
    path = tmp_path / "n.dzip"
    longest = "a" * 4095 + "b"  # MAX_NAME_BYTES, docs/format.md section 4
    with DzipWriter(path) as w:
        for name in ("a" * 4097, "\u00e9" * 2049):  # 4097 and 4098 UTF-8 bytes
            with pytest.raises(InvalidTensorError, match="longer than 4096 UTF-8 bytes"):
                w.add_raw(name, torch.ones(1))
        w.add_raw(longest, torch.ones(1))
    with DzipReader(path) as r:
        assert [e.name for e in r] == [longest]


def test_tensor_count_cap(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from deepzip.format import dzip_writer

    monkeypatch.setattr(dzip_writer, "MAX_TENSORS", 3)  # 1 << 20 is too many for a test
    with DzipWriter(tmp_path / "c.dzip") as w:
        w.add_raw("a", torch.ones(1))
        w.add_raw("b", torch.ones(1))
        w.add_alias("c", "a")
        with pytest.raises(InvalidTensorError, match="holds at most 3 tensors"):
            w.add_raw("d", torch.ones(1))
        with pytest.raises(InvalidTensorError, match="holds at most 3 tensors"):
            w.add_alias("d", "a")
    with DzipReader(tmp_path / "c.dzip") as r:
        assert [e.name for e in r] == ["a", "b", "c"]


@pytest.mark.parametrize("dtype", [torch.complex64, torch.int8])
def test_shared_decode_dtype_must_be_a_stored_float(tmp_path: Path, dtype: torch.dtype) -> None:
    filt = build_filter(np.array([0]), np.array([0]), n_positions=2, num_values=1, cell_bits=4)
    with DzipWriter(tmp_path / "d.dzip") as w:
        with pytest.raises(InvalidTensorError, match="decodes to float32/float16"):
            w.add_shared("s", _shared(4, 8), dtype=dtype)
        with pytest.raises(InvalidTensorError, match="decodes to float32/float16"):
            w.add_bloomier("b", torch.ones(1), filt.to_bytes(), (2,), dtype=dtype)
