"""``dz.save`` stores a Weightless layer only if its filter decodes to the layer as it is in
memory (a checkpoint already checked this; the ``.dzip`` writer did not)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

import deepzip as dz
from deepzip.errors import InvalidTensorError
from deepzip.quantize import SharedTensor
from deepzip.quantize.weightless import attach_weightless
from deepzip.weightless import decode_filter, encode_shared


def _layer() -> tuple[nn.Linear, SharedTensor]:
    torch.manual_seed(0)
    lin = nn.Linear(16, 8)
    codebook = torch.tensor([-0.5, -0.1, 0.2, 0.6])
    indices = torch.randint(0, 4, (8, 16), dtype=torch.uint8)
    mask = torch.rand(8, 16) < 0.3
    return lin, SharedTensor(codebook, torch.where(mask, indices, 0).to(torch.uint8), mask)


def _encoded(shared: SharedTensor) -> tuple[bytes, SharedTensor]:
    bloomier = encode_shared(shared, 4)
    return bloomier.to_bytes(), decode_filter(bloomier, shared.codebook, shared.indices.shape)


def test_a_filter_that_decodes_to_the_layer_is_saved_and_loads_back(tmp_path: Path) -> None:
    lin, shared = _layer()
    data, decoded = _encoded(shared)
    attach_weightless(lin, "weight", decoded, data)
    dz.save(lin, tmp_path / "ok.dzip")
    fresh = nn.Linear(16, 8)
    dz.load_model(fresh, tmp_path / "ok.dzip", strict=True)
    assert torch.equal(fresh.weight, lin.weight.detach())


def test_a_filter_of_another_layer_is_refused_by_name(tmp_path: Path) -> None:
    # the file decoded to the other layer's weights while the model in memory had these
    lin, shared = _layer()
    mask = torch.roll(shared.mask, 1, 1)
    other = SharedTensor(shared.codebook, torch.where(mask, 1, 0).to(torch.uint8), mask)
    data_other, _ = _encoded(other)
    _, decoded = _encoded(shared)
    attach_weightless(lin, "weight", decoded, data_other)
    with pytest.raises(InvalidTensorError, match=r"weight: the Bloomier filter does not decode"):
        dz.save(lin, tmp_path / "bad.dzip")
    assert not (tmp_path / "bad.dzip").exists()
