"""Session 34: mutation testing of ``deepzip/format/api.py`` (save, load_model, to_safetensors).

Each test pins a documented property that no earlier test checked; expected values come from
the paper's widths, the model's own names and shapes, and the safetensors layout read back
byte by byte.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest
import torch
from torch import nn

import deepzip as dz
from deepzip.errors import CheckpointError, ConfigError
from deepzip.format import inspect, load_model, load_state_dict, save, to_safetensors
from deepzip.format.api import tie_key
from deepzip.quantize.shared import SharedTensor


def _nested() -> nn.Sequential:
    """Layers two levels deep (names ``0.0.weight``, ``0.1.weight``), pruned, not quantized."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Sequential(nn.Conv2d(2, 4, 3), nn.Linear(8, 8)))
    dz.prune_(net, dz.PruneConfig(sparsity=0.7))
    return net.eval()


def test_a_nested_pruned_layer_is_stored_sparse_with_its_paper_width(tmp_path: Path) -> None:
    """The owner of ``0.0.weight`` is ``0.0`` (everything before the last dot): its mask and
    its kind (convolution or not) are found there, so the weight is stored sparse, 8 bits for
    the convolution and 5 for the Linear."""
    net = _nested()
    path = tmp_path / "nested.dzip"
    rows = {t.name: t for t in save(net, path, index_bits="paper").tensors}
    assert (rows["0.0.weight"].encoding, rows["0.0.weight"].gap_width) == ("sparse_float", 8)
    assert (rows["0.1.weight"].encoding, rows["0.1.weight"].gap_width) == ("sparse_float", 5)
    assert (rows["0.0.bias"].encoding, rows["0.1.bias"].encoding) == ("raw", "raw")
    back = load_state_dict(path)
    for name in ("0.0.weight", "0.1.weight"):  # the pruned weight, exact zeros included
        weight = net.get_submodule(name[:3]).weight
        assert isinstance(weight, torch.Tensor)
        assert torch.equal(back[name], weight.detach())


@pytest.mark.parametrize("bits", [[5], 2.5, (5,), b"auto"])
def test_index_bits_of_another_type_is_a_config_error(bits: object, tmp_path: Path) -> None:
    """Neither bits, a name nor a mapping: refused with ConfigError naming the value (it
    escaped as AttributeError from ``.items()`` when the type check was skipped)."""
    path = tmp_path / "x.dzip"
    with pytest.raises(ConfigError, match="index_bits must be a number of bits") as err:
        save({"a": torch.ones(2)}, path, index_bits=bits)  # type: ignore[arg-type]
    assert repr(bits) in str(err.value)
    assert not path.exists()


def test_tie_key_of_one_element_and_of_empty_views() -> None:
    """A one-element tensor has a key (it can be tied); a view with no elements has none,
    even over a real storage; so has a meta tensor (no storage address)."""
    base = torch.arange(6.0)
    one = base[2:3]
    assert tie_key(one) is not None
    assert tie_key(one) == tie_key(base[2:3])  # another view object of the same element
    assert tie_key(one) != tie_key(base[3:4])
    assert base[1:1].untyped_storage().data_ptr() != 0  # the storage is real...
    assert tie_key(base[1:1]) is None  # ...but there is nothing to tie
    assert tie_key(torch.empty(3, device="meta")) is None
    assert tie_key(torch.empty(0)) is None


def test_one_element_ties_are_aliases_and_empty_views_never(tmp_path: Path) -> None:
    base = torch.arange(6.0)
    scalar = torch.tensor(7.0)
    state = {
        "one": base[2:3],
        "one_again": base[2:3],
        "scalar": scalar,
        "scalar_again": scalar,
        "empty": base[1:1],
        "empty_again": base[1:1],
    }
    path = tmp_path / "small.dzip"
    alias_of = {t.name: t.alias_of for t in save(state, path).tensors}
    assert alias_of == {
        "one": None,
        "one_again": "one",
        "scalar": None,
        "scalar_again": "scalar",
        "empty": None,
        "empty_again": None,
    }
    back = load_state_dict(path)
    assert back["one_again"] is back["one"]
    assert back["one"].tolist() == [2.0]
    assert back["scalar_again"].item() == 7.0
    assert back["empty"].shape == back["empty_again"].shape == (0,)
    assert back["empty"] is not back["empty_again"]


@pytest.mark.parametrize(
    ("shape", "width"), [((6,), 5), ((3, 4), 5), ((2, 3, 4), 8), ((2, 2, 2, 3), 8)]
)
def test_paper_width_of_a_shared_tensor_from_a_mapping(
    shape: tuple[int, ...], width: int, tmp_path: Path
) -> None:
    """From a mapping, tensors of 3 or more dimensions count as convolutions: 8 bits, else 5."""
    mask = (torch.arange(24)[: torch.Size(shape).numel()] % 3 == 0).reshape(shape)
    idx = mask.to(torch.uint8)
    shared = SharedTensor(torch.tensor([-0.5, 1.5]), idx, mask)
    path = tmp_path / "s.dzip"
    rows = save({"w": shared}, path, index_bits="paper", layout="sparse").tensors
    assert (rows[0].encoding, rows[0].gap_width) == ("shared_sparse", width)
    assert torch.equal(load_state_dict(path)["w"], shared.dense())


def test_load_model_refuses_a_shape_mismatch_with_the_shapes(tmp_path: Path) -> None:
    """Names agree, one shape does not: CheckpointError naming the tensor and both shapes,
    and the model is left as it was."""
    torch.manual_seed(0)
    path = tmp_path / "m.dzip"
    save(nn.Sequential(nn.Linear(3, 4)), path)
    model = nn.Sequential(nn.Linear(3, 5))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(
        CheckpointError,
        match=r"m\.dzip: tensor '0\.weight' has shape \(4, 3\), the model "
        r"expects \(5, 3\)",
    ):
        load_model(model, path)
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k


def test_load_model_not_strict_checks_only_the_shared_names(tmp_path: Path) -> None:
    """With ``strict=False`` a name only the file has, or only the model, is no error; the
    shapes of the names both have are still checked."""
    path = tmp_path / "m.dzip"
    save({"0.weight": torch.full((4, 3), 2.0), "extra": torch.ones(5)}, path)
    lin = nn.Linear(3, 4)
    bias = lin.bias.detach().clone()
    load_model(nn.Sequential(lin), path, strict=False)
    assert torch.equal(lin.weight.detach(), torch.full((4, 3), 2.0))
    assert torch.equal(lin.bias.detach(), bias)
    with pytest.raises(CheckpointError, match=r"'0\.weight' has shape \(4, 3\)"):
        load_model(nn.Sequential(nn.Linear(3, 2)), path, strict=False)


def _read_safetensors(path: Path) -> tuple[int, dict[str, dict[str, object]], bytes]:
    raw = path.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    return n, json.loads(raw[8 : 8 + n]), raw[8 + n :]


def test_to_safetensors_layout_byte_by_byte(tmp_path: Path) -> None:
    """The header is padded with spaces to a multiple of 8 bytes (the data starts 8-byte
    aligned), offsets run from 0 without gaps in file order, and the data is each tensor's
    little-endian bytes."""
    state = {
        "a": torch.tensor([1, -2, 3], dtype=torch.int8),  # 3 bytes
        "b": torch.tensor([0.5], dtype=torch.float16),  # 2 bytes
        "c": torch.tensor([[1.0, 2.0]]),  # 8 bytes
    }
    src, dest = tmp_path / "t.dzip", tmp_path / "t.safetensors"
    for user in ({}, {"k": "v"}, {"key": "a longer value"}):  # several header lengths
        save(state, src, metadata=user)
        to_safetensors(src, dest)
        n, header, data = _read_safetensors(dest)
        assert n % 8 == 0
        text = dest.read_bytes()[8 : 8 + n].decode("utf-8")
        assert len(text) - len(text.rstrip(" ")) < 8  # spaces, no more than needed
        assert header["__metadata__"] == {"format": "pt", **user}
        assert [k for k in header if k != "__metadata__"] == ["a", "b", "c"]
        assert header["a"] == {"dtype": "I8", "shape": [3], "data_offsets": [0, 3]}
        assert header["b"] == {"dtype": "F16", "shape": [1], "data_offsets": [3, 5]}
        assert header["c"] == {"dtype": "F32", "shape": [1, 2], "data_offsets": [5, 13]}
        assert data == b"\x01\xfe\x03" + struct.pack("<e", 0.5) + struct.pack("<2f", 1.0, 2.0)


def test_save_checks_its_arguments_before_the_tensors(tmp_path: Path) -> None:
    """A bad ``coder`` is the error even where a tensor is bad too (the arguments are checked
    whatever tensors there are), and nothing is written."""
    path = tmp_path / "x.dzip"
    bad_key: dict[object, torch.Tensor] = {1: torch.ones(2)}
    with pytest.raises(ConfigError, match="coder"):
        save(bad_key, path, coder="zip")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="layout"):
        save(bad_key, path, layout="diagonal")  # type: ignore[arg-type]
    assert not path.exists()


class _Recipe:
    """An object that is not JSON-ready itself but has ``to_dict()``."""

    def to_dict(self) -> dict[str, object]:
        return {"stages": [{"bits": 4}], "name": "demo"}


def test_a_recipe_and_report_with_to_dict_are_stored_as_their_dicts(tmp_path: Path) -> None:
    path = tmp_path / "r.dzip"
    save({"a": torch.ones(2)}, path, recipe=_Recipe(), report=_Recipe())
    meta = inspect(path).metadata
    assert meta["recipe"] == meta["report"] == {"stages": [{"bits": 4}], "name": "demo"}
    save({"a": torch.ones(2)}, path)  # none given: no key at all
    assert set(inspect(path).metadata) == {"user"}


def test_to_safetensors_reports_progress_before_each_tensor(tmp_path: Path) -> None:
    src, dest = tmp_path / "p.dzip", tmp_path / "p.safetensors"
    save({"z": torch.ones(2), "a": torch.zeros(3), "m": torch.ones(1)}, src)
    calls: list[tuple[str, int, int, bool]] = []
    to_safetensors(
        src, dest, progress=lambda name, i, total: calls.append((name, i, total, dest.exists()))
    )
    assert calls == [("z", 0, 3, False), ("a", 1, 3, False), ("m", 2, 3, False)]


def test_load_model_refuses_a_model_on_the_meta_device(tmp_path: Path) -> None:
    """Loading into meta tensors would copy nothing: CheckpointError naming the tensor (and
    the model stays on meta)."""
    path = tmp_path / "m.dzip"
    save({"weight": torch.ones(2, 3), "bias": torch.ones(2)}, path)
    model = nn.Linear(3, 2, device="meta")
    with pytest.raises(CheckpointError, match=r"m\.dzip: the model's tensor 'weight' .*meta"):
        load_model(model, path)
    assert model.weight.is_meta


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_load_state_dict_puts_every_tensor_on_the_device_ties_kept(tmp_path: Path) -> None:
    base = torch.arange(4.0)
    path = tmp_path / "d.dzip"
    save({"a": base, "b": base, "c": torch.ones(2, dtype=torch.int8)}, path)
    state = load_state_dict(path, device="cuda")
    assert {t.device.type for t in state.values()} == {"cuda"}
    assert state["b"] is state["a"]
    assert state["a"].cpu().tolist() == [0.0, 1.0, 2.0, 3.0]
    assert state["c"].dtype == torch.int8
