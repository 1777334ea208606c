from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from deepzip import ConfigError, PruneConfig, prune_
from deepzip.config import QuantizeConfig, SLQConfig
from deepzip.format import load_checkpoint, save_checkpoint
from deepzip.prune import attach_mask, get_mask
from deepzip.quantize import quantize_
from deepzip.quantize.incremental import get_frozen, slq_
from deepzip.quantize.shared import get_shared


def _interrupted(model: nn.Module, step: int) -> None:
    raise KeyboardInterrupt


@pytest.mark.parametrize("how", ["quantize", "slq-unfinished"])
def test_a_quantized_layer_cannot_be_pruned(mlp: nn.Module, how: str) -> None:
    if how == "quantize":
        quantize_(mlp, QuantizeConfig(bits=3, include=("3",)))
        assert get_shared(mlp[3]) is not None
    else:
        with pytest.raises(KeyboardInterrupt):
            slq_(mlp, SLQConfig(bits=2, include=("3",)), _interrupted)
        assert get_frozen(mlp[3]) is not None
    before = {k: v.clone() for k, v in mlp.state_dict().items()}
    with pytest.raises(ConfigError, match=r"^3\.weight is quantized \(\w+\); prune before"):
        prune_(mlp, PruneConfig(sparsity=0.9))
    assert get_mask(mlp[0]) is None  # refused before 0.weight was pruned
    assert mlp.state_dict().keys() == before.keys()
    for k, v in mlp.state_dict().items():
        assert torch.equal(v, before[k]), k
    with pytest.raises(ConfigError, match=r"^3\.weight is quantized"):
        prune_(mlp, PruneConfig(sparsity=0.9, scope="global"))
    with pytest.raises(ConfigError, match=r"^weight is quantized"):
        attach_mask(mlp[3], "weight", torch.ones(4, 64, dtype=torch.bool))
    prune_(mlp, PruneConfig(sparsity=0.9, exclude=("3",)))  # the other layer still can
    assert get_mask(mlp[0]) is not None


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_reference_std_keeps_full_precision_through_dtype_changes(
    dtype: torch.dtype, tmp_path: Path
) -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(256, 256))
    prune_(model, PruneConfig(quality=0.5), progress=0.5)
    std = float(get_mask(model[0]).reference_std)  # type: ignore[union-attr]
    model.to(dtype)
    ref = get_mask(model[0]).reference_std  # type: ignore[union-attr]
    assert ref.dtype == torch.float64
    assert float(ref) == std
    assert model[0].weight.dtype == dtype
    model.to(torch.float32)
    save_checkpoint(model, tmp_path / "m.safetensors")
    fresh = nn.Sequential(nn.Linear(256, 256))
    load_checkpoint(fresh, tmp_path / "m.safetensors")
    assert float(get_mask(fresh[0]).reference_std) == std  # type: ignore[union-attr]
