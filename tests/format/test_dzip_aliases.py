""".dzip ALIAS encoding (format 1.2): tied tensors are stored once and every name comes back;
malformed aliases are corrupt files."""

from __future__ import annotations

import contextlib
import json
import struct
from pathlib import Path

import pytest
import torch
from dzip_craft import (
    FORMAT_ERRORS,
    Tensor,
    assemble,
    entry_fields,
    fix_crcs,
    header,
    raw_f32,
    read_all,
)
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn

import deepzip as dz
from deepzip.errors import CorruptFileError, InvalidTensorError, UnsupportedVersionError
from deepzip.format import (
    DzipReader,
    DzipWriter,
    inspect,
    load_model,
    load_state_dict,
    read_compressed,
    save,
    to_safetensors,
)
from deepzip.quantize.shared import SharedTensor

ALIAS = 5


def _twice() -> nn.Sequential:
    """One pruned, quantized Linear registered under two names (``0`` and ``2``)."""
    torch.manual_seed(0)
    lin = nn.Linear(64, 64)
    net = nn.Sequential(lin, nn.ReLU(), lin)
    dz.prune_(net, dz.PruneConfig(sparsity=0.9))
    dz.quantize_(net, dz.QuantizeConfig(bits=4))
    return net.eval()


class Tied(nn.Module):
    """An embedding and an output layer sharing one ``Parameter``."""

    def __init__(self) -> None:
        super().__init__()
        self.encoder = nn.Embedding(50, 16)
        self.decoder = nn.Linear(16, 50)
        self.decoder.weight = self.encoder.weight

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.encoder(x))


class Untied(nn.Module):
    """``Tied`` without the tie."""

    def __init__(self) -> None:
        super().__init__()
        self.encoder = nn.Embedding(50, 16)
        self.decoder = nn.Linear(16, 50)


X = torch.randn(5, 64, generator=torch.Generator().manual_seed(1))
TOKENS = torch.tensor([[1, 7, 49], [0, 3, 3]])


# ------------------------------------------------------------------------------- writing


def test_a_module_registered_twice_is_stored_once(tmp_path: Path) -> None:
    net = _twice()
    path = tmp_path / "twice.dzip"
    report = save(net, path)
    rows = {t.name: t for t in report.tensors}
    assert [t.name for t in report.tensors] == ["0.weight", "0.bias", "2.weight", "2.bias"]
    assert rows["0.weight"].encoding.startswith("shared")
    assert (rows["2.weight"].encoding, rows["2.weight"].alias_of) == ("alias", "0.weight")
    assert (rows["2.bias"].encoding, rows["2.bias"].alias_of) == ("alias", "0.bias")
    assert rows["2.weight"].bytes == 0
    assert rows["2.weight"].kept == rows["0.weight"].kept
    assert path.stat().st_size == report.file_bytes < 1500  # it was 17,711 bytes
    assert header(path.read_bytes())["minor"] == 2  # ALIAS is a 1.2 encoding
    # the totals count the tensor once: the model needs 64*64 + 64 floats
    assert report.float32_bytes == report.original_bytes == 4 * (64 * 64 + 64)
    assert report.weights == 64 * 64 + 64
    assert report.kept == rows["0.weight"].kept + 64
    assert report.to_dict()["tensors"][2]["alias_of"] == "0.weight"


def test_the_second_name_decodes_exactly_the_first(tmp_path: Path) -> None:
    net = _twice()
    path = tmp_path / "twice.dzip"
    save(net, path)
    with DzipReader(path) as r:
        assert r.aliases == {"2.bias": "0.bias", "2.weight": "0.weight"}
        assert r.data_entry("2.weight") is r.entry("0.weight")
        assert torch.equal(r.tensor("2.weight"), r.tensor("0.weight"))
        assert torch.equal(r.tensor("2.weight"), net[0].weight.detach())
        a, b = r.shared("0.weight"), r.shared("2.weight")
        assert torch.equal(a.codebook, b.codebook)
        assert torch.equal(a.indices, b.indices)
        assert torch.equal(a.mask, b.mask)
        with pytest.raises(ValueError, match=r"'2\.bias' \(an alias of '0\.bias'\) is RAW"):
            r.shared("2.bias")
    state = load_state_dict(path)
    assert state["2.weight"] is state["0.weight"]  # tied, as in the model's state dict
    cf = read_compressed(path)
    assert cf.aliases == {"2.bias": "0.bias", "2.weight": "0.weight"}
    assert cf.shared["2.weight"] is cf.shared["0.weight"]
    assert cf.raw["2.bias"] is cf.raw["0.bias"]
    assert cf.order == ["0.weight", "0.bias", "2.weight", "2.bias"]


def test_loading_restores_ties_or_copies_the_values(tmp_path: Path) -> None:
    net = _twice()
    with torch.no_grad():
        expected = net(X)
    path = tmp_path / "twice.dzip"
    save(net, path)
    lin = nn.Linear(64, 64)
    tied = load_model(nn.Sequential(lin, nn.ReLU(), lin), path)
    assert tied[0] is tied[2]
    untied = load_model(nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 64)), path)
    assert torch.equal(untied[0].weight, untied[2].weight)
    assert torch.equal(untied[0].bias, untied[2].bias)
    with torch.no_grad():
        torch.testing.assert_close(tied(X), expected, rtol=0, atol=0)
        torch.testing.assert_close(untied(X), expected, rtol=0, atol=0)


def test_a_parameter_shared_by_two_modules_is_stored_once(tmp_path: Path) -> None:
    torch.manual_seed(3)
    net = Tied()
    path = tmp_path / "tied.dzip"
    report = save(net, path)
    rows = {t.name: t for t in report.tensors}
    assert (rows["decoder.weight"].encoding, rows["decoder.weight"].alias_of) == (
        "alias",
        "encoder.weight",
    )
    assert report.float32_bytes == 4 * (50 * 16 + 50)
    assert report.file_bytes < 4 * (50 * 16 + 50) + 400  # one copy of the weights, not two
    with torch.no_grad():
        expected = net(TOKENS)
    torch.manual_seed(4)
    fresh = load_model(Tied(), path)
    assert fresh.decoder.weight is fresh.encoder.weight  # still tied
    with torch.no_grad():
        torch.testing.assert_close(fresh(TOKENS), expected, rtol=0, atol=0)
    untied = load_model(Untied(), path)
    assert torch.equal(untied.decoder.weight, net.encoder.weight)
    assert torch.equal(untied.encoder.weight, net.encoder.weight)


def test_ties_in_a_state_dict_mapping(tmp_path: Path) -> None:
    torch.manual_seed(5)
    base = torch.randn(4, 6)
    other = base.clone()
    cb = torch.tensor([-1.0, 0.5])
    idx = torch.zeros(3, 3, dtype=torch.uint8)
    shared = SharedTensor(cb, idx, idx.bool() | True)
    state = {
        "a": base,
        "same": base,  # the same tensor object
        "view": base.view(4, 6),  # another view object of exactly the same elements
        "equal": other,  # equal values, other storage: not a tie
        "rows": base[:2],  # a partial overlap: not a tie
        "offset": base[1:],  # same storage, another offset
        "t": base.t(),  # same storage, other strides
        "flat": base.view(24),  # same storage, other shape
        "s1": shared,
        "s2": shared,
        "empty1": torch.empty(0),
        "empty2": torch.empty(0),
    }
    path = tmp_path / "map.dzip"
    report = save(state, path)
    alias_of = {t.name: t.alias_of for t in report.tensors}
    assert alias_of == {
        "a": None,
        "same": "a",
        "view": "a",
        "equal": None,
        "rows": None,
        "offset": None,
        "t": None,
        "flat": None,
        "s1": None,
        "s2": "s1",
        "empty1": None,
        "empty2": None,
    }
    back = load_state_dict(path)
    for name, value in state.items():
        want = value.dense() if isinstance(value, SharedTensor) else value
        assert torch.equal(back[name], want), name


def test_files_without_ties_keep_their_minor_version(tmp_path: Path) -> None:
    path = tmp_path / "plain.dzip"
    save({"a": torch.ones(3), "b": torch.ones(3)}, path)  # equal, not tied
    assert header(path.read_bytes())["minor"] == 0
    assert DzipReader(path).aliases == {}


def test_inspect_lists_aliases_and_counts_them_once(tmp_path: Path) -> None:
    path = tmp_path / "twice.dzip"
    saved = save(_twice(), path)
    info = inspect(path)
    assert info.version == (1, 2)
    assert [t.to_dict() for t in info.tensors] == [t.to_dict() for t in saved.tensors]
    assert info.float32_bytes == saved.float32_bytes == 4 * (64 * 64 + 64)
    assert sum(s.length for s in info.sections) == info.file_bytes
    alias = [s for s in info.sections if s.name == "2.weight:alias"]
    assert len(alias) == 1
    assert alias[0].length == 0
    json.dumps(info.to_dict())


def test_to_safetensors_writes_every_name(tmp_path: Path) -> None:
    from safetensors.torch import load_file  # a required dependency: never skipped

    path = tmp_path / "twice.dzip"
    save(_twice(), path)
    out = load_file(str(to_safetensors(path, tmp_path / "twice.safetensors")))
    assert sorted(out) == ["0.bias", "0.weight", "2.bias", "2.weight"]
    assert torch.equal(out["2.weight"], out["0.weight"])


def test_writer_add_alias(tmp_path: Path) -> None:
    path = tmp_path / "w.dzip"
    with DzipWriter(path) as w:
        w.add_raw("a", torch.arange(6, dtype=torch.int64).reshape(2, 3))
        with pytest.raises(InvalidTensorError, match=r"cannot alias 'nope'"):
            w.add_alias("b", "nope")
        with pytest.raises(InvalidTensorError, match=r"cannot alias 'c'"):
            w.add_alias("c", "c")  # not added yet: no self-alias
        row = w.add_alias("b", "a")
        assert (row.encoding, row.alias_of, row.dtype, row.shape) == ("alias", "a", "int64", (2, 3))
        chained = w.add_alias("c", "b")  # an alias of an alias names the data
        assert chained.alias_of == "a"
        with pytest.raises(InvalidTensorError, match="added twice"):
            w.add_alias("a", "b")
    with DzipReader(path) as r:
        assert r.aliases == {"b": "a", "c": "a"}
        assert [e.target for e in r.entries] == [None, 0, 0]
        assert r.tensor("c").tolist() == [[0, 1, 2], [3, 4, 5]]
    assert w.report.original_bytes == 6 * 8


# ------------------------------------------------------------------------------ corrupt files


def _alias(name: str, target: int, shape: tuple[int, ...] = (2,), dtype: int = 1) -> Tensor:
    return Tensor(name, ALIAS, dtype, shape, [b""], struct.pack("<I", target))


def _file(tmp_path: Path, tensors: list[Tensor], minor: int = 2) -> Path:
    path = tmp_path / "crafted.dzip"
    path.write_bytes(assemble(tensors, minor=minor))
    return path


def test_crafted_alias_reads_back(tmp_path: Path) -> None:
    """The layout of docs/format.md section 6.6, built without deepzip's writer."""
    path = _file(tmp_path, [raw_f32("a", [1.0, -2.0]), _alias("b", 0)])
    assert load_state_dict(path)["b"].tolist() == [1.0, -2.0]
    written = tmp_path / "written.dzip"
    with DzipWriter(written) as w:
        w.add_raw("a", torch.tensor([1.0, -2.0]))
        w.add_alias("b", "a")
    assert written.read_bytes() == path.read_bytes()


@pytest.mark.parametrize(
    ("tensors", "pattern"),
    [
        ([raw_f32("a", [1.0, 2.0]), _alias("b", 1)], r"'b': alias target 1 is not an earlier"),
        ([raw_f32("a", [1.0, 2.0]), _alias("b", 2)], r"'b': alias target 2 is not an earlier"),
        ([raw_f32("a", [1.0, 2.0]), _alias("b", 2**32 - 1)], r"alias target 4294967295"),
        ([_alias("b", 1), raw_f32("a", [1.0, 2.0])], r"'b': alias target 1 is not an earlier"),
        (
            [raw_f32("a", [1.0, 2.0]), _alias("b", 0), _alias("c", 1)],
            r"'c': alias target 1 \('b'\) is itself an alias",
        ),
        ([raw_f32("a", [1.0, 2.0]), _alias("b", 0, shape=(3,))], r"declares float32 \(3,\)"),
        ([raw_f32("a", [1.0, 2.0]), _alias("b", 0, shape=(2, 1))], r"declares float32 \(2, 1\)"),
        ([raw_f32("a", [1.0, 2.0]), _alias("b", 0, shape=())], r"declares float32 \(\)"),
        ([raw_f32("a", [1.0, 2.0]), _alias("b", 0, dtype=2)], r"declares float16 \(2,\)"),
        ([raw_f32("a", [1.0, 2.0]), _alias("b", 0, dtype=99)], "unknown dtype id 99"),
        ([raw_f32("a", [1.0, 2.0]), _alias("a", 0)], "tensor 'a' appears twice"),
    ],
)
def test_malformed_aliases_are_corrupt(tmp_path: Path, tensors: list[Tensor], pattern: str) -> None:
    with pytest.raises(CorruptFileError, match=pattern):
        read_all(_file(tmp_path, tensors))


def test_alias_region_and_parameters_are_checked(tmp_path: Path) -> None:
    data = _alias("b", 0)
    data.parts = [b"\x00\x00"]  # an alias stores no bytes
    with pytest.raises(CorruptFileError, match=r"'b': an alias's region is empty.*2 byte"):
        read_all(_file(tmp_path, [raw_f32("a", [1.0, 2.0]), data]))
    crc = _alias("b", 0)
    crc.crc = 1
    with pytest.raises(CorruptFileError, match=r"'b': an alias's region is empty.*0x00000001"):
        read_all(_file(tmp_path, [raw_f32("a", [1.0, 2.0]), crc]))
    params = _alias("b", 0)
    params.params = b"\x00" * 8
    with pytest.raises(CorruptFileError, match=r"ALIAS parameters must be 4 bytes, got 8"):
        read_all(_file(tmp_path, [raw_f32("a", [1.0, 2.0]), params]))
    parts = _alias("b", 0)
    parts.parts = [b"", b""]
    with pytest.raises(CorruptFileError, match=r"ALIAS has 1 parts \(alias\), the entry says 2"):
        read_all(_file(tmp_path, [raw_f32("a", [1.0, 2.0]), parts]))


def test_an_alias_needs_format_1_2(tmp_path: Path) -> None:
    tensors = [raw_f32("a", [1.0, 2.0]), _alias("b", 0)]
    with pytest.raises(CorruptFileError, match=r"unknown encoding id 5 in format 1\.1 \(ALIAS"):
        read_all(_file(tmp_path, tensors, minor=1))
    read_all(_file(tmp_path, tensors, minor=3))  # a newer minor reads the encodings it knows


def test_an_alias_of_a_non_float_tensor(tmp_path: Path) -> None:
    ints = Tensor("i", 0, 8, (2,), [struct.pack("<2q", -1, 7)])
    path = _file(tmp_path, [ints, _alias("j", 0, dtype=8)])
    assert load_state_dict(path)["j"].tolist() == [-1, 7]


_TIED = assemble(
    [
        raw_f32("a", [1.0, -2.0]),
        _alias("b", 0),
        Tensor("i", 0, 8, (1,), [struct.pack("<q", 3)]),
        _alias("j", 2, shape=(1,), dtype=8),
    ],
    minor=2,
)
_ALIAS_FIELDS = [f for f in entry_fields(_TIED) if _TIED[f["encoding"]] == ALIAS]


@pytest.fixture(scope="module")
def fuzz_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("alias-fuzz") / "fuzz.dzip"


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    which=st.integers(0, 1),
    field=st.sampled_from(["encoding", "dtype", "rank", "part_count", "params", "params_length"]),
    value=st.integers(0, 255),
    offset=st.integers(0, 3),
)
def test_edited_alias_entries_raise_format_errors(
    fuzz_path: Path, which: int, field: str, value: int, offset: int
) -> None:
    data = bytearray(_TIED)
    pos = _ALIAS_FIELDS[which][field] + (offset if field == "params" else 0)
    data[pos] = value
    fuzz_path.write_bytes(fix_crcs(data))
    with contextlib.suppress(*FORMAT_ERRORS):
        read_all(fuzz_path)


def test_every_byte_of_an_alias_file_flipped_is_detected(tmp_path: Path) -> None:
    path = tmp_path / "flip.dzip"
    for i in range(len(_TIED)):
        data = bytearray(_TIED)
        data[i] ^= 0xFF
        path.write_bytes(bytes(data))
        with pytest.raises((CorruptFileError, UnsupportedVersionError)):
            read_all(path)


def test_a_weightless_module_registered_twice_is_stored_once(tmp_path: Path) -> None:
    torch.manual_seed(0)
    lin = nn.Linear(64, 64)
    net = nn.Sequential(lin, nn.ReLU(), lin)
    dz.prune_(net, dz.PruneConfig(sparsity=0.85))
    dz.quantize_(net, dz.QuantizeConfig(bits=2))
    dz.weightless_(net, dz.WeightlessConfig(cell_bits=5))
    path = tmp_path / "weightless.dzip"
    rows = {t.name: t for t in save(net, path).tensors}
    assert rows["0.weight"].encoding == "bloomier"
    assert rows["2.weight"].alias_of == "0.weight"
    with DzipReader(path) as r:
        assert torch.equal(r.tensor("2.weight"), net[0].weight.detach())
        assert torch.equal(r.shared("2.weight").mask, r.shared("0.weight").mask)


def test_an_index_bits_glob_naming_only_the_alias_sets_the_stored_width(tmp_path: Path) -> None:
    """The data of ``2.weight`` is stored under ``0.weight``: a glob naming ``2`` applies to it
    (it was ignored: the stored tensor kept its automatic width)."""
    net = _twice()
    path = tmp_path / "twice.dzip"
    cases = [
        ({"2": 3}, 3),
        ({"2.weight": 11}, 11),
        ({"2": 3, "0": 12}, 12),  # the last glob matching one of its names wins
        ({"0": 12, "2": 3}, 3),
        ({"2": "paper"}, 5),
    ]
    for bits, width in cases:
        rows = {t.name: t for t in save(net, path, index_bits=bits, layout="sparse").tensors}
        assert rows["0.weight"].gap_width == width, bits
        assert rows["2.weight"].alias_of == "0.weight"


def test_a_negated_view_is_not_an_alias(tmp_path: Path) -> None:
    """``c.conj().imag`` has ``c.imag``'s storage, offset, shape, strides and dtype, but its
    values negated (the negative bit): it was stored as an alias and read back un-negated."""
    c = torch.randn(3, dtype=torch.cfloat, generator=torch.Generator().manual_seed(2))
    state = {"im": c.imag, "neg": c.conj().imag, "neg2": c.conj().imag}
    path = tmp_path / "neg.dzip"
    alias_of = {t.name: t.alias_of for t in save(state, path).tensors}
    assert alias_of == {"im": None, "neg": None, "neg2": "neg"}
    back = load_state_dict(path)
    for name, value in state.items():
        assert torch.equal(back[name], value.resolve_neg()), name


def test_a_contiguous_negated_tensor_is_written(tmp_path: Path) -> None:
    """A one-element ``conj().imag`` is contiguous with the negative bit set: writing it
    raised RuntimeError (``view`` to bytes refuses the bit)."""
    neg = torch.tensor([1.5 + 2.0j]).conj().imag
    assert neg.is_neg()
    assert neg.is_contiguous()
    path = tmp_path / "neg.dzip"
    save({"neg": neg}, path)
    assert load_state_dict(path)["neg"].tolist() == [-2.0]
