"""Review 34: mutation testing of ``runtime/load.py``; each test killed a surviving mutant.

The files are hand-built state dicts (a 2 x 3 shared weight with a two-value codebook, plain
LayerNorm tensors), so every expected value below is written out by hand.
"""

from __future__ import annotations

import re
import warnings
from pathlib import Path

import pytest
import torch
from torch import nn

from deepzip.errors import CheckpointError
from deepzip.format import save
from deepzip.quantize.shared import SharedTensor
from deepzip.runtime import RuntimePolicy, load_compressed, runtime_report
from deepzip.runtime.policy import LayerForm

CODEBOOK = torch.tensor([-1.0, 2.0])
INDICES = torch.tensor([[1, 0, 1], [0, 1, 1]], dtype=torch.uint8)
MASK = torch.tensor([[True, False, True], [False, True, True]])
WEIGHT = [[2.0, 0.0, 2.0], [0.0, 2.0, 2.0]]  # codebook[index] * mask, by hand
BIAS = [0.5, -0.5]
NORM_WEIGHT = [1.5, 2.5]
NORM_BIAS = [0.25, 0.75]


@pytest.fixture
def lin_norm(tmp_path: Path) -> Path:
    """``Sequential(Linear(3, 2), LayerNorm(2))``: a shared ``0.weight``, the rest plain."""
    path = tmp_path / "lin_norm.dzip"
    state: dict[str, torch.Tensor | SharedTensor] = {
        "0.weight": SharedTensor(CODEBOOK, INDICES, MASK),
        "0.bias": torch.tensor(BIAS),
        "1.weight": torch.tensor(NORM_WEIGHT),
        "1.bias": torch.tensor(NORM_BIAS),
    }
    save(state, path)
    return path


def _snapshot(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.state_dict().items()}


def _assert_untouched(model: nn.Module, before: dict[str, torch.Tensor]) -> None:
    after = model.state_dict()
    assert after.keys() == before.keys()
    for key, value in before.items():
        assert torch.equal(after[key], value), key


# ------------------------------------------------------- strict=False: names and shapes


@pytest.mark.parametrize("mode", ["sparse", "dense"])
def test_not_strict_leaves_the_models_extra_tensors_alone(lin_norm: Path, mode: LayerForm) -> None:
    # a tensor of the model that the file lacks has no shape to compare: it is not an error
    torch.manual_seed(0)
    norm, unsaved = nn.LayerNorm(2), nn.Linear(2, 2)
    model = nn.Sequential(nn.Linear(3, 2), norm, unsaved)
    extra = {k: v.clone() for k, v in unsaved.state_dict().items()}
    load_compressed(lin_norm, model, policy=RuntimePolicy(mode=mode), strict=False)
    assert runtime_report(model).layers[0].form == mode
    assert norm.weight.tolist() == NORM_WEIGHT
    assert norm.bias.tolist() == NORM_BIAS
    for key, value in extra.items():
        assert torch.equal(unsaved.state_dict()[key], value), key
    x = torch.tensor([[1.0, 2.0, 3.0]])
    h = [2.0 * 1 + 2.0 * 3 + 0.5, 2.0 * 2 + 2.0 * 3 - 0.5]  # WEIGHT @ x + BIAS = [8.5, 9.5]
    with torch.no_grad():
        torch.testing.assert_close(model[0](x), torch.tensor([h]), rtol=0, atol=1e-6)


def test_not_strict_refuses_a_plain_tensor_of_another_shape_naming_the_file(
    lin_norm: Path,
) -> None:
    # only load_compressed's own check sees a plain tensor's shape: without it the model was
    # stripped and half-loaded before torch's load_state_dict raised a RuntimeError
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 2), nn.LayerNorm(3))
    linear = model[0]
    before = _snapshot(model)
    message = f"{lin_norm}: tensor '1.weight' has shape (2,), the model expects (3,)"
    with pytest.raises(CheckpointError, match=re.escape(message)):
        load_compressed(lin_norm, model, policy=RuntimePolicy(mode="sparse"), strict=False)
    assert model[0] is linear
    _assert_untouched(model, before)


def test_not_strict_refuses_a_shared_tensor_of_another_shape_naming_the_file(
    lin_norm: Path,
) -> None:
    model = nn.Sequential(nn.Linear(4, 2), nn.LayerNorm(2))
    before = _snapshot(model)
    message = f"{lin_norm}: tensor '0.weight' has shape (2, 3), the model expects (2, 4)"
    with pytest.raises(CheckpointError, match=re.escape(message)):
        load_compressed(lin_norm, model, strict=False)
    _assert_untouched(model, before)


# ----------------------------------------------------------------- the meta device


def test_a_plain_tensor_on_the_meta_device_is_refused(lin_norm: Path) -> None:
    # the compressed layer is real, only the LayerNorm (plain tensors) is on meta: a copy
    # into it would do nothing, so the model would silently keep no values
    torch.manual_seed(0)
    linear = nn.Linear(3, 2)
    model = nn.Sequential(linear, nn.LayerNorm(2, device="meta"))
    weight = linear.weight.detach().clone()
    message = f"{lin_norm}: the model's tensor '1.weight' (and 1 more) is on the meta device"
    with pytest.raises(CheckpointError, match=re.escape(message)):
        load_compressed(lin_norm, model, policy=RuntimePolicy(mode="sparse"))
    assert model[0] is linear
    assert torch.equal(linear.weight, weight)
    assert model[1].weight.is_meta


def test_a_meta_model_is_refused_naming_the_file_and_every_tensor(lin_norm: Path) -> None:
    with torch.device("meta"):
        model = nn.Sequential(nn.Linear(3, 2), nn.LayerNorm(2))
    message = f"{lin_norm}: the model's tensor '0.weight' (and 3 more) is on the meta device"
    with pytest.raises(CheckpointError, match=re.escape(message)):
        load_compressed(lin_norm, model)
    assert all(t.is_meta for t in model.state_dict().values())


# ---------------------------------------------------------- a layer with no weights


@pytest.mark.parametrize("mode", ["sparse", "dense"])
def test_a_layer_with_no_weights_has_density_zero(tmp_path: Path, mode: LayerForm) -> None:
    # surviving weights / all weights with no weights at all: 0 of 0 survive, density 0.0
    empty = torch.zeros(2, 0, dtype=torch.uint8)
    path = tmp_path / "empty.dzip"
    state: dict[str, torch.Tensor | SharedTensor] = {
        "0.weight": SharedTensor(CODEBOOK, empty, empty.bool()),
        "0.bias": torch.tensor(BIAS),
    }
    save(state, path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # torch: initializing 0 elements
        model = nn.Sequential(nn.Linear(0, 2))
    load_compressed(path, model, policy=RuntimePolicy(mode=mode))
    (layer,) = runtime_report(model).layers
    assert layer.form == mode
    assert layer.shape == (2, 0)
    assert layer.density == 0.0
    assert layer.dense_bytes == 0
    assert layer.to_dict()["density"] == 0.0
    with torch.no_grad():
        assert model(torch.zeros(3, 0)).tolist() == [BIAS] * 3
