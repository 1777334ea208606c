"""Checkpoint behaviour that mutation testing found unchecked (review 34).

format/checkpoint.py outside ``read_checkpoint``'s own refusals: ``plain_state_dict`` leaving
out a parametrization's own parametrized tensors, ``load_plain_`` refusing a name the model does
not take, the "(and N more)" of ``check_not_meta`` and of a shape mismatch, saving and loading
pruned, quantized and Weightless layers nested below the top level, the header rewrite that is
never allowed to grow, and ``check_shared_entry``'s refusal of indices that are not uint8 of the
tensor's shape or that reach past the codebook.
"""

from __future__ import annotations

import struct
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file
from torch import nn
from torch.nn.utils import parametrize

import deepzip as dz
from deepzip import PruneConfig, QuantizeConfig, WeightlessConfig
from deepzip.errors import CheckpointError, InvalidTensorError
from deepzip.format.checkpoint import (
    CODEBOOK_PREFIX,
    INDEX_PREFIX,
    MASK_PREFIX,
    _fix_header_order,
    check_not_meta,
    check_shared_entry,
    load_plain_,
    plain_state_dict,
    read_checkpoint,
)
from deepzip.prune import get_mask, mask_dict
from deepzip.quantize import export_shared

# ------------------------------------------------------------------------ plain_state_dict


class _Scale(nn.Module):
    """A parametrization with a parameter of its own: ``weight * |s|``."""

    def __init__(self) -> None:
        super().__init__()
        self.s = nn.Parameter(torch.tensor(-2.0))

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        return w * self.s


class _Abs(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.abs()


def test_a_parametrizations_own_parametrized_tensor_is_left_out() -> None:
    # the state dict key "0.parametrizations.weight.0.parametrizations.s.original" holds the
    # separator twice; it belongs to the parametrization, not to the model
    torch.manual_seed(0)
    lin = nn.Linear(3, 2)
    scale = _Scale()
    parametrize.register_parametrization(scale, "s", _Abs())
    parametrize.register_parametrization(lin, "weight", scale)
    model = nn.Sequential(lin)
    assert "0.parametrizations.weight.0.parametrizations.s.original" in model.state_dict()
    plain = plain_state_dict(model)
    assert list(plain) == ["0.weight", "0.bias"]
    original = model.state_dict()["0.parametrizations.weight.original"]
    assert torch.equal(plain["0.weight"], original * 2.0)


# ------------------------------------------------------------------------ load_plain_


def test_load_plain_refuses_a_name_the_model_does_not_take() -> None:
    model = nn.Sequential(nn.Linear(2, 2))
    with pytest.raises(
        CheckpointError, match=r"^src\.safetensors: tensors the model did not take: "
    ):
        load_plain_(
            model, {"0.weight": torch.zeros(2, 2), "bogus": torch.ones(1)}, "src.safetensors"
        )
    with pytest.raises(CheckpointError, match=r"did not take: 0\.nothing$"):
        load_plain_(model, {"0.nothing": torch.ones(1)}, "src.safetensors")


# ------------------------------------------------------------------------ check_not_meta


def _meta(n: int) -> dict[str, torch.Tensor]:
    return {
        "real": torch.zeros(1),
        **{f"m{i}": torch.empty(2, device="meta") for i in range(n)},
    }


@pytest.mark.parametrize(("n", "more"), [(1, ""), (2, " (and 1 more)"), (3, " (and 2 more)")])
def test_meta_tensors_are_named_with_how_many_more(n: int, more: str) -> None:
    with pytest.raises(InvalidTensorError) as saving:
        check_not_meta("f.safetensors", _meta(n), saving=True)
    assert str(saving.value).startswith(f"m0{more}: a tensor on the meta device has no values")
    with pytest.raises(CheckpointError) as loading:
        check_not_meta("f.safetensors", _meta(n), saving=False)
    assert str(loading.value).startswith(
        f"f.safetensors: the model's tensor 'm0'{more} is on the meta device"
    )


def test_no_meta_tensor_is_no_error() -> None:
    check_not_meta("f.safetensors", _meta(0), saving=True)
    check_not_meta("f.safetensors", _meta(0), saving=False)


# ------------------------------------------------------------------------ nested layers


def _nested() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Sequential(nn.Linear(20, 30), nn.ReLU()),
        nn.Sequential(nn.Sequential(nn.Linear(30, 16)), nn.ReLU()),
        nn.Linear(16, 4),
    )


def test_a_model_with_nested_pruned_quantized_and_weightless_layers_round_trips(
    tmp_path: Path,
) -> None:
    # names with two or more dots ("1.0.0.weight") split into module and attribute
    model = _nested()
    dz.prune_(model, PruneConfig(sparsity=0.7))
    dz.weightless_(
        model,
        WeightlessConfig(cell_bits=4, include=("0.0",)),
        quantize=QuantizeConfig(bits=2),
    )
    dz.quantize_(model, QuantizeConfig(bits=3, include=("2",)))
    path = dz.save_checkpoint(model, tmp_path / "nested.safetensors")
    ckpt = read_checkpoint(path)
    assert set(ckpt.masks) == {"0.0.weight", "1.0.0.weight", "2.weight"}
    assert set(ckpt.shared) == {"0.0.weight", "2.weight"}
    assert set(ckpt.bloomier) == {"0.0.weight"}
    assert set(ckpt.reference_std) == {"1.0.0.weight"}
    assert ckpt.train_encoded == {"0.0.weight": False}

    fresh = _nested()
    dz.load_checkpoint(fresh, path)
    before, after = export_shared(model), export_shared(fresh)
    assert before.keys() == after.keys() == {"0.0.weight", "2.weight"}
    for k in before:
        assert torch.equal(before[k].codebook, after[k].codebook)
        assert torch.equal(before[k].indices, after[k].indices)
        assert torch.equal(before[k].mask, after[k].mask)
    masks = mask_dict(fresh)
    assert torch.equal(masks["1.0.0.weight"], mask_dict(model)["1.0.0.weight"])
    m_old = get_mask(model.get_submodule("1.0.0"))
    m_new = get_mask(fresh.get_submodule("1.0.0"))
    assert m_old is not None
    assert m_new is not None
    assert (
        float(m_new.reference_std)
        == float(m_old.reference_std)
        == ckpt.reference_std["1.0.0.weight"]
    )
    x = torch.randn(5, 20)
    assert torch.equal(fresh.eval()(x), model.eval()(x))


# ------------------------------------------------------------------------ the header rewrite


def test_a_header_that_would_grow_is_not_rewritten(tmp_path: Path) -> None:
    # a hand-built header whose shape is written 1E1: read back as 10.0, it is written longer
    # ("10.0"), which would run into the data; the file is left as it was
    header = b'{"w":{"dtype":"U8","shape":[1E1],"data_offsets":[0,10]}}'
    data = struct.pack("<Q", len(header)) + header + bytes(range(10))
    path = tmp_path / "grow.safetensors"
    path.write_bytes(data)
    with pytest.raises(CheckpointError, match=rf"header is {len(header) + 1} bytes, the written"):
        _fix_header_order(path)
    assert path.read_bytes() == data


# ------------------------------------------------------------------------ check_shared_entry


_SHARED = {
    MASK_PREFIX + "w": torch.ones(2, 3, dtype=torch.bool),
    CODEBOOK_PREFIX + "w": torch.tensor([1.0, 2.0]),
}


@pytest.mark.parametrize(
    ("index", "got"),
    [
        (torch.zeros(2, 3, dtype=torch.int64), r"got torch\.int64 \(2, 3\)"),
        (torch.zeros(2, 3, dtype=torch.int8), r"got torch\.int8 \(2, 3\)"),
        (torch.zeros(6, dtype=torch.uint8), r"got torch\.uint8 \(6,\)"),
        (torch.zeros(3, 2, dtype=torch.uint8), r"got torch\.uint8 \(3, 2\)"),
    ],
)
def test_indices_that_are_not_uint8_of_the_tensors_shape_are_refused(
    tmp_path: Path, index: torch.Tensor, got: str
) -> None:
    path = tmp_path / "m.safetensors"
    save_file({"w": torch.ones(2, 3), **_SHARED, INDEX_PREFIX + "w": index}, str(path))
    with pytest.raises(
        CheckpointError,
        match=rf"tensor 'w': its indices must be uint8 of shape \(2, 3\), {got}",
    ):
        read_checkpoint(path)


def test_check_shared_entry_takes_uint8_indices_of_the_shape() -> None:
    index = torch.tensor([[0, 1, 1], [1, 0, 0]], dtype=torch.uint8)
    shared = check_shared_entry(
        "f", "w", torch.tensor([1.0, 2.0], dtype=torch.float64), index, torch.ones(2, 3), (2, 3)
    )
    assert shared.codebook.dtype == torch.float32
    assert torch.equal(shared.codebook, torch.tensor([1.0, 2.0]))
    assert torch.equal(shared.indices, index)
    assert shared.mask.dtype == torch.bool
    assert bool(shared.mask.all())


def test_an_index_equal_to_the_codebook_size_is_refused_and_one_below_is_taken() -> None:
    codebook, mask = torch.tensor([1.0, 2.0]), torch.ones(3, dtype=torch.bool)
    last = torch.tensor([0, 1, 1], dtype=torch.uint8)
    assert torch.equal(check_shared_entry("f", "w", codebook, last, mask, (3,)).indices, last)
    past = torch.tensor([0, 2, 1], dtype=torch.uint8)
    with pytest.raises(
        CheckpointError, match=r"^f: tensor 'w': an index reaches 2, the codebook has 2 entries$"
    ):
        check_shared_entry("f", "w", codebook, past, mask, (3,))


def test_a_quantized_tensor_with_no_elements_is_read(tmp_path: Path) -> None:
    path = tmp_path / "empty.safetensors"
    save_file(
        {
            "w": torch.ones(0, 4),
            MASK_PREFIX + "w": torch.ones(0, 4, dtype=torch.bool),
            CODEBOOK_PREFIX + "w": torch.tensor([0.5]),
            INDEX_PREFIX + "w": torch.zeros(0, 4, dtype=torch.uint8),
        },
        str(path),
    )
    shared = read_checkpoint(path).shared["w"]
    assert shared.indices.shape == (0, 4)
    assert torch.equal(shared.codebook, torch.tensor([0.5]))


# ------------------------------------------------------------------------ apply_checkpoint


def test_one_tensor_of_another_shape_is_named_without_a_count(tmp_path: Path) -> None:
    path = dz.save_checkpoint(nn.Sequential(nn.Linear(4, 3)), tmp_path / "c.safetensors")
    with pytest.raises(CheckpointError) as one:
        dz.load_checkpoint(nn.Sequential(nn.Linear(5, 3)), path)
    assert str(one.value) == (
        f"{path}: tensor '0.weight' has shape (3, 4), the model expects (3, 5)"
    )
    with pytest.raises(CheckpointError) as two:
        dz.load_checkpoint(nn.Sequential(nn.Linear(5, 2)), path)
    assert str(two.value) == (
        f"{path}: tensor '0.weight' has shape (3, 4), the model expects (2, 5) (and 1 more)"
    )
