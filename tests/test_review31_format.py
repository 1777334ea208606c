"""Review 31: two loose ends of the ``.dzip`` format.

1. The ``"user"`` metadata is strings to strings (docs/format.md section 9). A reader
   accepted any JSON there (``"user": 5``, ``{"a": 1}``), which each consumer then converted
   or skipped in its own way; ``DzipWriter`` wrote such a file without complaint; and a
   caller's metadata string with an unpaired surrogate reached ``save_checkpoint`` as an
   untyped ``UnicodeEncodeError`` (and ``save``/``compress_checkpoint`` only after every
   tensor was compressed).
2. Pruning or quantizing a model parametrizes its weights, which torch then lists after the
   module's other tensors: a pruned ``Linear`` was saved ``bias`` first, and a model loaded
   with ``load_model`` kept that order.
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from torch import nn
from torch.nn.utils.parametrizations import weight_norm

import deepzip as dz
from deepzip.format import DzipReader, DzipWriter, plain_state_dict
from deepzip.format.api import to_safetensors

_HEADER = struct.Struct("<8sHHIQQQQQIIII")


def _with_metadata(path: Path, meta: bytes) -> None:
    """A valid file with ``meta`` as its metadata section, every checksum right."""
    dz.save({"b": torch.zeros(2)}, path)
    data = path.read_bytes()
    fields = list(_HEADER.unpack(data[: _HEADER.size]))
    meta_off = fields[7]
    body = data[:meta_off] + meta
    fields[4] = len(body)  # file_size
    fields[8] = len(meta)  # metadata_length
    fields[11] = zlib.crc32(meta)  # metadata_crc32
    head = _HEADER.pack(*fields[:12], 0)[:68]
    fields[12] = zlib.crc32(head)
    path.write_bytes(_HEADER.pack(*fields) + body[_HEADER.size :])


# ------------------------------------------------------------------ 1. "user" metadata


@pytest.mark.parametrize(
    ("meta", "match"),
    [
        (b'{"user":5}', r'"user" is a number'),
        (b'{"user":"x"}', r'"user" is a string'),
        (b'{"user":null}', r'"user" is null'),
        (b'{"user":["a","b"]}', r'"user" is an array'),
        (b'{"user":{"a":1}}', r"key 'a' holds a number"),
        (b'{"user":{"a":"x","b":["x"]}}', r"key 'b' holds an array"),
        (b'{"user":{"a":{"b":"c"}}}', r"key 'a' holds an object"),
        (b'{"user":{"a":null}}', r"key 'a' holds null"),
        (b'{"user":{"a":true}}', r"key 'a' holds a boolean"),
    ],
)
def test_user_metadata_that_is_not_strings_to_strings_is_corrupt(
    tmp_path: Path, meta: bytes, match: str
) -> None:
    path = tmp_path / "u.dzip"
    _with_metadata(path, meta)
    for verb in (dz.load_state_dict, dz.inspect, DzipReader):
        with pytest.raises(dz.CorruptFileError, match=match) as info:
            verb(path)
        assert str(path) in str(info.value)
    with pytest.raises(dz.CorruptFileError, match=match):
        to_safetensors(path, tmp_path / "u.safetensors")
    assert not (tmp_path / "u.safetensors").exists()


@pytest.mark.parametrize(
    "meta", [b"{}", b'{"user":{}}', b'{"user":{"a":"1","":""}}', b'{"user2":5,"recipe":[1]}']
)
def test_conforming_or_absent_user_metadata_is_read(tmp_path: Path, meta: bytes) -> None:
    path = tmp_path / "ok.dzip"
    _with_metadata(path, meta)
    with DzipReader(path) as reader:
        user = reader.metadata.get("user", {})
    dest = to_safetensors(path, tmp_path / "ok.safetensors")
    with safe_open(str(dest), "pt") as fh:
        assert fh.metadata() == {**user, "format": "pt"}


@pytest.mark.parametrize(
    ("user", "match"),
    [
        (5, r'"user" must map strings to strings, got int'),
        ({"a": 1}, r"got 'a': 1 \(str: int\)"),
        ({1: "a"}, r"got 1: 'a' \(int: str\)"),
        ({"a": ["x"]}, r"got 'a': \['x'\] \(str: list\)"),
        (None, r"got NoneType"),
    ],
)
def test_dzip_writer_refuses_user_metadata_a_reader_refuses(
    tmp_path: Path, user: object, match: str
) -> None:
    path = tmp_path / "w.dzip"
    with pytest.raises(dz.ConfigError, match=match):
        DzipWriter(path, metadata={"user": user})
    writer = DzipWriter(path, metadata={"user": {"k": "v"}})
    writer.__enter__()
    writer.add_raw("b", torch.zeros(2))
    writer.metadata = {"user": user}  # replaced before closing
    with pytest.raises(dz.ConfigError, match=match):
        writer.__exit__(None, None, None)
    assert list(tmp_path.iterdir()) == []  # nor a temporary file


def test_dzip_writer_keeps_conforming_user_metadata(tmp_path: Path) -> None:
    path = tmp_path / "w.dzip"
    with DzipWriter(path, metadata={"user": {"k": "v"}, "other": {"x": [1, None]}}) as w:
        w.add_raw("b", torch.zeros(2))
    with DzipReader(path) as reader:
        assert reader.metadata == {"user": {"k": "v"}, "other": {"x": [1, None]}}


@pytest.mark.parametrize("metadata", [{"a": "x\ud800"}, {"\udc80": "x"}])
def test_metadata_string_with_unpaired_surrogate_is_a_config_error(
    tmp_path: Path, metadata: dict[str, str]
) -> None:
    model = nn.Linear(3, 2)
    # save_checkpoint raised UnicodeEncodeError from safetensors
    with pytest.raises(dz.ConfigError, match="unpaired surrogate"):
        dz.save_checkpoint(model, tmp_path / "c.safetensors", metadata=metadata)
    with pytest.raises(dz.ConfigError, match="unpaired surrogate"):
        dz.save(model, tmp_path / "m.dzip", metadata=metadata)
    # checked before the source is read (it does not even exist here)
    with pytest.raises(dz.ConfigError, match="unpaired surrogate"):
        dz.compress_checkpoint(tmp_path / "missing.safetensors", tmp_path / "p.dzip",
                               metadata=metadata)  # fmt: skip
    assert sorted(p.name for p in tmp_path.iterdir()) == []


# ------------------------------------------------------------------ 2. tensor order


def _mlp() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(12, 10), nn.BatchNorm1d(10), nn.ReLU(), nn.Linear(10, 4))


def _file_order(path: Path) -> list[str]:
    with DzipReader(path) as reader:
        return [e.name for e in reader.entries]


@pytest.mark.parametrize("stage", ["pruned", "quantized", "weightless"])
def test_compressed_model_is_saved_in_the_unpruned_state_dict_order(
    tmp_path: Path, stage: str
) -> None:
    model = _mlp()
    order = list(model.state_dict())
    dz.prune_(model, dz.PruneConfig(sparsity=0.5))
    if stage != "pruned":
        dz.quantize_(model, dz.QuantizeConfig(bits=3))
    if stage == "weightless":
        dz.weightless_(model, dz.WeightlessConfig(cell_bits=6, include=("3",)))
    assert next(iter(model.state_dict())) == "0.bias"  # what torch gives: bias first
    assert list(plain_state_dict(model)) == order
    path = tmp_path / "m.dzip"
    dz.save(model, path)
    assert _file_order(path) == order
    assert list(dz.load_state_dict(path)) == order
    assert [t.name for t in dz.inspect(path).tensors] == order
    again = tmp_path / "again.dzip"
    dz.save(model, again)
    assert again.read_bytes() == path.read_bytes()


def test_load_model_into_a_pruned_model_gives_the_usual_order(tmp_path: Path) -> None:
    model = _mlp()
    order = list(model.state_dict())
    dz.prune_(model, dz.PruneConfig(sparsity=0.5))
    dz.quantize_(model, dz.QuantizeConfig(bits=3))
    path = tmp_path / "m.dzip"
    dz.save(model, path)
    expected = dz.load_state_dict(path)
    dz.load_model(model, path)
    state = model.state_dict()
    assert list(state) == order
    for name in order:
        assert torch.equal(state[name], expected[name]), name
    fresh = _mlp()
    dz.load_model(fresh, path)
    assert list(fresh.state_dict()) == order


class _Custom(nn.Module):
    """A weight of its own beside a parameter, a buffer and a child."""

    def __init__(self) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(6, 6))
        self.scale = nn.Parameter(torch.ones(6))
        self.register_buffer("shift", torch.zeros(6))
        self.sub = nn.Linear(6, 6)


def test_a_parametrized_module_with_children_keeps_its_order(tmp_path: Path) -> None:
    torch.manual_seed(1)
    model = _Custom()
    order = list(model.state_dict())
    assert order == ["weight", "scale", "shift", "sub.weight", "sub.bias"]
    dz.prune_(model, dz.PruneConfig(sparsity=0.5, include=("weight", "sub.weight")))
    path = tmp_path / "c.dzip"
    dz.save(model, path)
    assert _file_order(path) == order
    dz.load_model(model, path)
    assert list(model.state_dict()) == order


def test_a_module_registered_twice_keeps_its_order(tmp_path: Path) -> None:
    lin = nn.Linear(4, 4)
    model = nn.Sequential(lin, nn.ReLU(), lin)
    order = list(model.state_dict())
    dz.prune_(model, dz.PruneConfig(sparsity=0.5))
    path = tmp_path / "t.dzip"
    dz.save(model, path)
    assert _file_order(path) == order == ["0.weight", "0.bias", "2.weight", "2.bias"]
    assert dz.inspect(path).tensors[2].alias_of == "0.weight"


def test_users_own_parametrization_is_listed_in_the_plain_order(tmp_path: Path) -> None:
    model = nn.Sequential(weight_norm(nn.Linear(4, 3)), nn.Linear(3, 2))
    assert list(plain_state_dict(model)) == ["0.weight", "0.bias", "1.weight", "1.bias"]
    path = tmp_path / "w.dzip"
    dz.save(model, path)
    assert _file_order(path) == ["0.weight", "0.bias", "1.weight", "1.bias"]


class _Outer(nn.Module):
    """A weight of its own and a child; its first state-dict key is its child's once pruned."""

    def __init__(self) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(6, 6))
        self.inner = nn.Sequential(nn.Linear(6, 6), nn.LayerNorm(6))


def test_nested_parametrized_modules_keep_their_order(tmp_path: Path) -> None:
    torch.manual_seed(2)
    model = nn.Sequential(_Outer(), nn.Linear(6, 2))
    order = list(model.state_dict())
    dz.prune_(model, dz.PruneConfig(sparsity=0.5, include=("0.weight", "*.0.weight", "1")))
    # the outer module's first key is now its child's, its own weight comes after the child
    pruned = [k.split(".parametrizations.")[0] for k in model.state_dict() if "original" in k]
    assert pruned == ["0.inner.0", "0", "1"]
    path = tmp_path / "n.dzip"
    dz.save(model, path)
    assert _file_order(path) == order
    dz.load_model(model, path)
    assert list(model.state_dict()) == order


# --- the order recorded when deepzip first parametrizes a module (exact, not a rule of thumb)


class _ScaleFirst(nn.Module):
    """Registers a parameter before the weight deepzip compresses, and a buffer after."""

    def __init__(self) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.ones(4))
        self.weight = nn.Parameter(torch.randn(4, 6))
        self.bias = nn.Parameter(torch.zeros(4))
        self.register_buffer("steps", torch.zeros(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return nn.functional.linear(x, self.weight, self.bias) * self.scale


def _order_kept(
    model: nn.Module, plain: list[str], tmp_path: Path, strip: Callable[[nn.Module], object]
) -> None:
    """The file, its decoded state dict and the stripped model list the tensors as ``plain``."""
    assert list(plain_state_dict(model)) == plain
    path = tmp_path / "m.dzip"
    dz.save(model, path)
    assert list(dz.load_state_dict(path)) == plain
    strip(model)
    assert list(model.state_dict()) == plain


@pytest.mark.parametrize("how", ["prune", "quantize", "prune+quantize"])
def test_a_custom_modules_order_is_kept_exactly(tmp_path: Path, how: str) -> None:
    from deepzip.prune.parametrization import attach_mask
    from deepzip.quantize.shared import SharedTensor, attach_shared

    torch.manual_seed(0)
    model = nn.Sequential(_ScaleFirst())
    plain = list(model.state_dict())
    assert plain == ["0.scale", "0.weight", "0.bias", "0.steps"]
    module = model[0]
    if "prune" in how:
        attach_mask(module, "weight", module.weight.detach().abs() > 0.5)
    if "quantize" in how:
        w = module.weight.detach()
        mask = w.abs() > 0.5 if "prune" in how else torch.ones_like(w, dtype=torch.bool)
        indices = (w.round().clamp(-1, 1).long() + 1).to(torch.uint8) * mask
        codebook = torch.tensor([-1.0, 0.0, 1.0])
        attach_shared(module, "weight", SharedTensor(codebook, indices, mask))
    assert list(model.state_dict())[:3] != plain[:3]  # the parametrization moved the weight
    _order_kept(model, plain, tmp_path, dz.quantize.strip_)


def test_a_multi_weight_recurrent_layer_keeps_its_order(tmp_path: Path) -> None:
    # LSTM registers weight_ih_l0, weight_hh_l0, bias_ih_l0, bias_hh_l0, then layer 1's: a
    # rule "parametrized weights first" would put layer 1's weights before layer 0's biases
    torch.manual_seed(0)
    model = nn.Sequential(nn.LSTM(4, 6, num_layers=2))
    plain = list(model.state_dict())
    dz.prune_(model, dz.PruneConfig(sparsity=0.5, include=("0.weight_*",)))
    assert list(model.state_dict()) != plain
    _order_kept(model, plain, tmp_path, dz.prune.strip_)


@pytest.mark.parametrize(
    "key", ["deepzip.format", "deepzip.version", "deepzip.reference_std", "deepzip.train_encoded"]
)
def test_save_checkpoint_refuses_a_key_it_writes_itself(tmp_path: Path, key: str) -> None:
    # the caller's value was silently overwritten (or, for train_encoded, misread on loading)
    from deepzip.errors import ConfigError

    path = tmp_path / "c.safetensors"
    with pytest.raises(ConfigError, match=rf"{path}: metadata key '{key}' is deepzip's own"):
        dz.save_checkpoint(nn.Linear(2, 2), path, metadata={"mine": "x", key: "1"})
    assert not path.exists()
    dz.save_checkpoint(nn.Linear(2, 2), path, metadata={"deepzip.mine": "x"})
    with safe_open(str(path), "pt") as f:
        assert f.metadata()["deepzip.mine"] == "x"
