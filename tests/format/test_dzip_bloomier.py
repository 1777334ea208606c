""".dzip BLOOMIER encoding (format 1.1): Weightless layers round trip; bad filters are rejected."""

from __future__ import annotations

import lzma
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from dzip_craft import (
    Tensor,
    assemble,
    entry_fields,
    header,
    raises_small,
    read_all,
    varint,
)
from torch import nn

import deepzip as dz
from deepzip.coding.bloomier import MAX_RATIO, BloomierFilter, build_filter, cell_count
from deepzip.config import PruneConfig, QuantizeConfig, WeightlessConfig
from deepzip.errors import CorruptFileError, InvalidTensorError
from deepzip.format import DzipReader, inspect, load_model, load_state_dict, read_compressed
from deepzip.format.checkpoint import plain_state_dict
from deepzip.format.dzip_writer import DzipWriter
from deepzip.quantize.weightless import get_weightless
from deepzip.weightless import weightless_


def small_net(seed: int = 0, inputs: int = 30) -> nn.Sequential:
    """A seeded 3-layer MLP (inputs → 50 → 20 → 3); also fuzz_dzip.py's corpus."""
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Linear(inputs, 50), nn.ReLU(), nn.Linear(50, 20), nn.ReLU(), nn.Linear(20, 3)
    )


def weightless_net(*, lzma: bool = False, inputs: int = 30) -> nn.Sequential:
    """Pruned, clustered to 2 bits, layers 0 and 2 in Bloomier filters (5-bit cells); with
    200 inputs LZMA shrinks layer 0's table, not layer 2's (also fuzz_dzip.py's corpus)."""
    net = small_net(inputs=inputs)
    dz.prune_(net, PruneConfig(sparsity=0.85))
    dz.quantize_(net, QuantizeConfig(bits=2))
    weightless_(net, WeightlessConfig(cell_bits=5, lzma=lzma, include=("0", "2")))
    return net


def filter_flags(net: nn.Sequential) -> list[int]:
    """The flags byte of layers 0 and 2's filters (bit 0: the table is LZMA-compressed)."""
    flags = []
    for i in (0, 2):
        p = get_weightless(net[i])
        assert p is not None
        flags.append(p.filter_bytes()[3])
    return flags


@pytest.mark.parametrize("lzma", [False, True])
def test_weightless_layers_round_trip(tmp_path: Path, lzma: bool) -> None:
    # With 200 inputs LZMA shrinks layer 0's table (its unowned cells are zero) but not layer
    # 2's: the LZMA file holds both forms of the table.
    net = weightless_net(lzma=lzma, inputs=200)
    assert filter_flags(net) == ([1, 0] if lzma else [0, 0])
    path = tmp_path / "net.dzip"
    report = dz.save(net, path)
    assert header(path.read_bytes())["minor"] == 1  # the file uses a 1.1 encoding
    rows = {t.name: t for t in report.tensors}
    assert rows["0.weight"].encoding == "bloomier"
    assert rows["2.weight"].encoding == "bloomier"
    assert rows["4.weight"].encoding != "bloomier"  # clustered, not encoded with Weightless
    expected = plain_state_dict(net)
    state = load_state_dict(path)
    assert list(state) == list(expected)
    for name, value in expected.items():
        assert torch.equal(state[name], value), name
    with DzipReader(path) as r:
        for i in (0, 2):
            p = get_weightless(net[i])
            assert p is not None
            shared = r.shared(f"{i}.weight")
            assert torch.equal(shared.indices, p.indices)
            assert torch.equal(shared.mask, p.mask)
            assert rows[f"{i}.weight"].kept == int(p.mask.sum())  # stored + false positives
            parts = r.read_parts(r.entry(f"{i}.weight"))
            assert bytes(parts["filter"]) == p.filter_bytes()
    described = {t.name: t for t in inspect(path).tensors}
    assert [p.name for p in described["0.weight"].parts] == ["codebook", "filter"]
    fresh = small_net(seed=1, inputs=200)
    load_model(fresh, path, strict=True)
    x = torch.randn(5, 200)
    assert torch.equal(fresh(x), net(x))
    compressed = read_compressed(path)
    assert "0.weight" in compressed.shared


def test_files_without_weightless_layers_stay_format_1_0(tmp_path: Path) -> None:
    net = small_net()
    dz.prune_(net, PruneConfig(sparsity=0.5))
    dz.quantize_(net, QuantizeConfig(bits=3))
    dz.save(net, tmp_path / "plain.dzip")
    assert header((tmp_path / "plain.dzip").read_bytes())["minor"] == 0


@pytest.mark.parametrize("lzma", [False, True])
def test_same_model_gives_the_same_bytes(tmp_path: Path, lzma: bool) -> None:
    dz.save(weightless_net(lzma=lzma, inputs=200), tmp_path / "a.dzip")
    dz.save(weightless_net(lzma=lzma, inputs=200), tmp_path / "b.dzip")
    assert (tmp_path / "a.dzip").read_bytes() == (tmp_path / "b.dzip").read_bytes()


def test_writer_checks_the_filter(tmp_path: Path) -> None:
    f = build_filter(np.array([1, 5]), np.array([0, 1]), n_positions=12, num_values=2, cell_bits=3)
    data = f.to_bytes()
    cb = torch.tensor([-1.0, 1.0])
    with DzipWriter(tmp_path / "w.dzip") as w:
        with pytest.raises(InvalidTensorError, match="covers 12 positions, the tensor has 10"):
            w.add_bloomier("a", cb, data, (2, 5))
        with pytest.raises(InvalidTensorError, match="holds 2 values, the codebook 3"):
            w.add_bloomier("b", torch.tensor([-1.0, 0.5, 1.0]), data, (3, 4))
        with pytest.raises(InvalidTensorError, match="bad magic"):
            w.add_bloomier("c", cb, b"XX" + data[2:], (3, 4))
        with pytest.raises(InvalidTensorError, match="float32/float16"):
            w.add_bloomier("d", cb, data, (3, 4), dtype=torch.int8)
        with pytest.raises(InvalidTensorError, match=r"d: codebook must be 1-D float"):
            w.add_bloomier("d", cb.reshape(1, 2), data, (3, 4))
        with pytest.raises(InvalidTensorError, match="d: codebook holds NaN"):
            w.add_bloomier("d", torch.tensor([-1.0, float("nan")]), data, (3, 4))
        rec = w.add_bloomier("e", cb, data, (3, 4), dtype=torch.float16)
    indices, mask = f.decode_indices()
    assert rec.kept == int(mask.sum())
    got = load_state_dict(tmp_path / "w.dzip")["e"]
    want = torch.where(torch.from_numpy(mask), cb[torch.from_numpy(indices)], torch.tensor(0.0))
    assert got.dtype == torch.float16
    assert torch.equal(got, want.to(torch.float16).reshape(3, 4))


def test_writer_checks_the_shape_when_the_tensor_is_added(tmp_path: Path) -> None:
    """A bad shape is refused by the add (the file goes on), not by struct at close."""
    f = build_filter(np.array([0]), np.array([0]), n_positions=2, num_values=1, cell_bits=4)
    data, cb = f.to_bytes(), torch.tensor([0.5])
    path = tmp_path / "w.dzip"
    with DzipWriter(path) as w:
        outside = r"shape \(-1, -2\) has a dimension outside 0\.\.4294967296"
        with pytest.raises(InvalidTensorError, match=f"a: {outside}"):
            w.add_bloomier("a", cb, data, (-1, -2))
        for shape in [(2.0, 1), (True, 2), 2, ("2", 1)]:
            with pytest.raises(
                InvalidTensorError, match=r"b: shape .* is not a sequence of integers"
            ):
                w.add_bloomier("b", cb, data, shape)  # type: ignore[arg-type]
        with pytest.raises(InvalidTensorError, match=r"c: shape \(8589934592, 0\) has a dimension"):
            w.add_raw("c", torch.zeros(2**33, 0))
        w.add_bloomier("d", cb, data, (np.int64(1), torch.tensor(2)))  # integers of any kind
    assert list(load_state_dict(path)) == ["d"]
    assert load_state_dict(path)["d"].shape == (1, 2)


def test_writer_refuses_a_table_the_reader_would_refuse(tmp_path: Path) -> None:
    """At most ``h * ceil((16 n + 32) / h)`` cells for n positions (docs/format.md, 6.5)."""

    def table(m: int) -> bytes:  # t = 8, h = 1, 12 positions, 2 values, all cells zero
        return struct.pack("<2sBBBBQ", b"BF", 1, 0, 8, 1, 0) + b"".join(
            [varint(12), varint(m), varint(2), bytes(m)]
        )

    cap = cell_count(12, hashes=1, ratio=MAX_RATIO)
    with DzipWriter(tmp_path / "w.dzip") as w:
        with pytest.raises(InvalidTensorError, match=f"at most {cap} for 12 positions"):
            w.add_bloomier("w", torch.tensor([1.0, 2.0]), table(cap + 1), (3, 4))
        w.add_bloomier("w", torch.tensor([1.0, 2.0]), table(cap), (3, 4))
    assert load_state_dict(tmp_path / "w.dzip")["w"].shape == (3, 4)


# --------------------------------------------------------------------------- hostile files


def _filter(n_positions: int = 12, k: int = 2, t: int = 3) -> tuple[BloomierFilter, bytes]:
    f = build_filter(
        np.array([1, 5, 7]), np.array([0, 1, 1]) % k, n_positions=n_positions, num_values=k,
        cell_bits=t,
    )  # fmt: skip
    return f, f.to_bytes()


def _kept(f: BloomierFilter) -> int:
    return int(f.decode_indices()[1].sum())


def _bloomier(
    data: bytes, *, k: int = 2, kept: int, shape: tuple[int, ...] = (3, 4), cb: bytes | None = None
) -> Tensor:
    codebook = struct.pack(f"<{k}f", *range(1, k + 1)) if cb is None else cb
    return Tensor("w", 4, 1, shape, [codebook, data], struct.pack("<HQ", k, kept))


def _write(tmp_path: Path, data: bytes) -> Path:
    path = tmp_path / "f.dzip"
    path.write_bytes(data)
    return path


def test_crafted_file_decodes(tmp_path: Path) -> None:
    f, data = _filter()
    path = _write(tmp_path, assemble([_bloomier(data, kept=_kept(f))], minor=1))
    indices, mask = f.decode_indices()
    want = np.where(mask, indices + 1.0, 0.0).reshape(3, 4)  # codebook [1, 2]
    assert torch.equal(load_state_dict(path)["w"], torch.from_numpy(want).float())


def test_bloomier_in_a_format_1_0_file_is_corrupt(tmp_path: Path) -> None:
    f, data = _filter()
    path = _write(tmp_path, assemble([_bloomier(data, kept=_kept(f))], minor=0))
    with pytest.raises(CorruptFileError, match=r"unknown encoding id 4 in format 1\.0"):
        DzipReader(path)


@pytest.mark.parametrize(
    ("make", "match"),
    [
        (lambda f, d: _bloomier(d, kept=_kept(f) + 1), r"elements decode, the entry says"),
        (lambda f, d: _bloomier(d, kept=_kept(f), shape=(4, 4)), "covers 12 positions"),
        (lambda f, d: _bloomier(d, k=3, kept=_kept(f)), "holds 2 values, the codebook 3"),
        (lambda f, d: _bloomier(d[:-1], kept=_kept(f)), "bytes, .* follow"),
        (lambda f, d: _bloomier(b"BF\x07" + d[3:], kept=_kept(f)), "unknown filter version"),
        (lambda f, d: _bloomier(d, kept=_kept(f), cb=b"\x00" * 4), "codebook is 4 bytes"),
        (lambda f, d: _bloomier(d, k=0, kept=0, cb=b""), "codebook size k=0"),
        (lambda f, d: _bloomier(d, kept=13), "kept 13 exceeds the 12 elements"),
    ],
)
def test_bad_bloomier_entries_are_rejected(tmp_path: Path, make: object, match: str) -> None:
    f, data = _filter()
    tensor = make(f, data)  # type: ignore[operator]
    path = _write(tmp_path, assemble([tensor], minor=1))
    err = raises_small(lambda: read_all(path))
    assert isinstance(err, CorruptFileError)
    assert "tensor 'w'" in str(err)
    with pytest.raises(CorruptFileError, match=match):
        read_all(path)


def test_a_filter_claiming_a_huge_table_is_rejected_before_allocating(tmp_path: Path) -> None:
    # a filter header for 2**31 positions and as many cells, behind a valid shape and CRC
    head = struct.pack("<2sBBBBQ", b"BF", 1, 1, 8, 1, 0)  # LZMA, t = 8, one hash
    huge = head + bytes([0x80, 0x80, 0x80, 0x80, 0x08]) * 2 + b"\x02" + b"\x04" + b"\x00" * 4
    path = _write(tmp_path, assemble([_bloomier(huge, kept=0, shape=(1 << 15, 1 << 16))], minor=1))
    err = raises_small(lambda: read_all(path, max_elements=1 << 31))
    assert "claim to expand" in str(err) or "exceeds" in str(err)


# ------------------------------------------------- an independent decoder of docs/format.md 6.5
#
# Written from the spec alone (no deepzip code): the filter layout, minimal LEB128 varints,
# the bit-packed or LZMA table and the splitmix64 hashes. A change to deepzip's hashing,
# packing or layout that the spec does not describe makes these tests fail.

_M64 = (1 << 64) - 1
_G = 0x9E3779B97F4A7C15


def _spec_mix(z: int) -> int:
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _M64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _M64
    return z ^ (z >> 31)


def _spec_varint(buf: bytes, pos: int) -> tuple[int, int]:
    value = shift = 0
    for _ in range(10):
        byte = buf[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        shift += 7
        if not byte & 0x80:
            assert byte or shift == 7, "varint not minimally encoded"
            return value, pos
    raise AssertionError("varint longer than 10 bytes")


def _spec_decode(data: bytes) -> list[int]:
    """The value of every position of a serialised filter, per docs/format.md section 6.5."""
    magic, version, flags, t, h, seed = struct.unpack_from("<2sBBBBQ", data, 0)
    assert (magic, version) == (b"BF", 1)
    assert flags in (0, 1)
    assert 1 <= t <= 16
    assert 1 <= h <= 8
    pos = 14
    n, pos = _spec_varint(data, pos)
    m, pos = _spec_varint(data, pos)
    _values, pos = _spec_varint(data, pos)
    assert m > 0
    assert m % h == 0
    if flags & 1:
        payload_len, pos = _spec_varint(data, pos)
        assert pos + payload_len == len(data)
        table = lzma.decompress(
            data[pos:],
            format=lzma.FORMAT_RAW,
            filters=[{"id": lzma.FILTER_LZMA2, "dict_size": 4 << 20}],
        )
        cells = list(table) if t <= 8 else list(struct.unpack(f"<{m}H", table))
        assert len(cells) == m
    else:
        assert len(data) - pos == (m * t + 7) // 8
        bits = int.from_bytes(data[pos:], "little")
        assert bits >> (m * t) == 0, "padding bits must be zero"
        cells = [(bits >> (i * t)) & ((1 << t) - 1) for i in range(m)]
    assert all(c < (1 << t) for c in cells)
    segment = m // h
    s = [_spec_mix((seed + (i + 1) * _G) & _M64) for i in range(h + 1)]
    out = []
    for x in range(n):
        value = _spec_mix((x * _G + s[h]) & _M64) >> (64 - t)
        for i in range(h):
            hashed = _spec_mix((x * _G + s[i]) & _M64)
            value ^= cells[i * segment + (((hashed >> 32) * segment) >> 32)]
        out.append(value)
    return out


@pytest.mark.parametrize(
    ("t", "n", "k", "hashes", "seed"),
    [(3, 200, 4, 3, 0), (5, 1000, 8, 3, 12345), (12, 500, 256, 3, 0), (4, 300, 16, 1, 7),
     (6, 300, 2, 2, 0), (8, 400, 200, 8, (1 << 64) - 2)],
)  # fmt: skip
@pytest.mark.parametrize("compress", [False, True])
def test_filters_decode_by_the_spec(
    t: int, n: int, k: int, hashes: int, seed: int, compress: bool
) -> None:
    rng = np.random.default_rng(t * 1000 + n)
    keys = np.sort(rng.choice(n, n // 5, replace=False))
    values = rng.integers(0, k, len(keys))
    # a large ratio leaves most cells zero, so that LZMA shrinks the table and is kept
    ratio = 16.0 if compress or hashes < 3 else None
    f = build_filter(
        keys, values, n_positions=n, num_values=k, cell_bits=t, hashes=hashes, ratio=ratio,
        seed=seed,
    )  # fmt: skip
    data = f.to_bytes(compress=compress)
    assert data[3] == int(compress)  # the flags byte: the table form under test
    want = np.array(_spec_decode(data))
    assert np.array_equal(want[keys], values)  # every stored position decodes to its value
    got = np.concatenate([v for _, v in BloomierFilter.from_bytes(data).decode_blocks()])
    assert np.array_equal(got, want)  # false positives too


@pytest.mark.parametrize("lzma_table", [False, True])
def test_dzip_bloomier_tensors_decode_by_the_spec(tmp_path: Path, lzma_table: bool) -> None:
    # the whole path: a Weightless model saved by dz.save, its regions decoded with the
    # spec's decoder (codebook[v] for v < k, else +0.0), equal to what deepzip reads back
    net = weightless_net(lzma=lzma_table, inputs=200)
    path = tmp_path / "net.dzip"
    dz.save(net, path)
    buf = path.read_bytes()
    state = load_state_dict(path)
    decoded = 0
    for e in entry_fields(buf):
        if buf[e["encoding"]] != 4:  # BLOOMIER
            continue
        (name_len,) = struct.unpack_from("<H", buf, e["name_length"])
        name = buf[e["name"] : e["name"] + name_len].decode()
        rank = buf[e["rank"]]
        shape = struct.unpack_from(f"<{rank}Q", buf, e["shape"])
        (offset,) = struct.unpack_from("<Q", buf, e["data_offset"])
        cb_len, filter_len = struct.unpack_from("<2Q", buf, e["part_lengths"])
        codebook = struct.unpack_from(f"<{cb_len // 4}f", buf, offset)
        values = _spec_decode(buf[offset + cb_len : offset + cb_len + filter_len])
        k = len(codebook)
        want = torch.tensor([codebook[v] if v < k else 0.0 for v in values]).reshape(shape)
        assert torch.equal(state[name], want), name
        decoded += 1
    assert decoded == 2  # layers 0 and 2
