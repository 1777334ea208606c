""".dzip BLOOMIER encoding (format 1.1): Weightless layers round trip; bad filters are rejected."""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from dzip_craft import Tensor, assemble, header, raises_small, read_all, varint
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
